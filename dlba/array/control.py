"""The node's side of the control plane: what each sync command does here.

A pushed config is validated as this node would load it and staged under its digest; a
commit names that digest, replaces the file on disk atomically (so a restart comes up
with it), records its serial in the state directory and hands the config to ``apply``
(the node's hot reload).  The serial says which of two configs is newer: a node that was
down takes a peer's config only if its serial is higher.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from dlba.array import commands as c
from dlba.config import Config, parse
from dlba.errors import ConfigError, ConfigErrors
from dlba.files import write_atomically
from dlba.reload import check_reloadable
from dlba.report import NodeReport
from dlba.tables import NodeStatusTable

log = Logger(namespace="dlba.array.control")

SERIAL_FILE = "config.serial"
BACKEND_STATES = ("enabled", "disabled", "drain")
NODE_STATES = ("enabled", "disabled")


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class BackendControl(Protocol):
    """What the proxy offers (``dlba.proxy.service.ProxyService``)."""

    def enable_backend(self, number: int) -> None: ...
    def disable_backend(self, number: int) -> None: ...
    def drain_backend(self, number: int, grace: float) -> None: ...


@dataclass(frozen=True)
class Committed:
    text: str
    serial: int


def read_committed(config_path: str, state_dir: str) -> Committed:
    """The config file as it is on disk, and its serial.  A file edited by hand since the
    last commit (its digest is not the recorded one) has serial 0: any pushed config is
    newer."""
    with open(config_path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        with open(os.path.join(state_dir, SERIAL_FILE)) as f:
            recorded = json.load(f)
        if recorded.get("digest") == digest_of(text):
            return Committed(text, int(recorded["serial"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return Committed(text, 0)


class ControlPlane:
    """Answers the sync commands for one node (``dlba.array.sync.SyncHandler``)."""

    def __init__(
        self,
        config: Config,
        committed: Committed,
        report: NodeReport,
        *,
        apply: Callable[[Config], object],
        backends: BackendControl | None = None,
        nodes: NodeStatusTable | None = None,
        clock: Any,
        scheduler: Callable[[], tuple[int, int]] = lambda: (-1, 0),
        ping: Callable[[int, int, int], None] = lambda node, scheduler, term: None,
        client_table: Callable[[int, str], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.committed = committed
        self.report = report
        self.apply = apply
        self.backends = backends
        self.nodes = nodes if nodes is not None else NodeStatusTable()
        self.clock = clock
        self.scheduler = scheduler
        self.heard_ping = ping
        self.table = client_table
        self._staged: tuple[str, Config, str, int] | None = None  # digest, config, text, serial
        # Merges the scheduler's session-ticket keys, answers the generation held after;
        # None: no HTTPS listener here (set by the node).
        self.ticket_keys: Callable[[bytes], str] | None = None

    @property
    def number(self) -> int:
        return self.config.node.number

    def ping(self, node: int, scheduler: int, term: int) -> tuple[int, int, int]:
        if node:
            self.heard_ping(node, scheduler, term)
        own_scheduler, own_term = self.scheduler()
        return self.number, own_scheduler, own_term

    def who_is_scheduler(self) -> tuple[int, int]:
        return self.scheduler()

    def client_table(self, since_version: int, table_id: str) -> dict[str, Any]:
        if self.table is None:
            raise c.UnknownTarget(f"node {self.number} holds no client table yet")
        return self.table(since_version, table_id)

    def set_ticket_keys(self, keys: bytes) -> str:
        if self.ticket_keys is None:
            raise c.UnknownTarget(f"node {self.number} serves no HTTPS: it keeps no ticket keys")
        try:
            return self.ticket_keys(keys)
        except ValueError as e:
            raise c.BadState(f"node {self.number}: {e}") from None

    # -- config -------------------------------------------------------------------------

    def push_config(self, text: str, serial: int) -> str:
        if serial <= self.committed.serial:
            raise c.ConfigRefused(
                f"node {self.number}: serial {serial} is not newer than the committed "
                f"serial {self.committed.serial}; push again (dlba-ctl picks the next serial)"
            )
        try:
            config = parse(text, self.config.path, node=self.number)
        except ConfigErrors as e:
            raise c.ConfigRefused(e.report()) from None
        except ConfigError as e:
            raise c.ConfigRefused(str(e)) from None
        # Refused now, not at the commit: by then the file is replaced and every node of
        # the array committed, while this one could not take it without a restart.
        problems = check_reloadable(self.config, config)
        if problems:
            raise c.ConfigRefused(f"node {self.number}: " + "; ".join(problems))
        digest = digest_of(text)
        self._staged = (digest, config, text, serial)
        log.info(
            "config serial {serial} validated and staged ({digest})",
            serial=serial,
            digest=digest[:12],
        )
        return digest

    def adopt(self, text: str, serial: int) -> None:
        """A peer's newer committed config (this node was down during its push): checked
        as a push is, then installed."""
        self.commit_config(self.push_config(text, serial))

    def commit_config(self, digest: str) -> int:
        staged = self._staged
        if staged is None or staged[0] != digest:
            raise c.NothingStaged(
                f"node {self.number} has no validated config {digest[:12]}: push it first"
            )
        self._staged = None
        _, config, text, serial = staged
        self.install(config, text, serial)
        return serial

    def install(self, config: Config, text: str, serial: int) -> None:
        """Make ``text`` the committed config: on disk first, then in the running node."""
        write_atomically(self.config.path, text.encode("utf-8"))
        state_dir = config.node.state_dir
        os.makedirs(state_dir, exist_ok=True)
        write_atomically(
            os.path.join(state_dir, SERIAL_FILE),
            json.dumps({"serial": serial, "digest": digest_of(text)}).encode(),
        )
        self.committed = Committed(text, serial)
        self.config = config
        log.info("config serial {serial} committed", serial=serial)
        self.apply(config)

    def config_text(self) -> tuple[str, int]:
        return self.committed.text, self.committed.serial

    def status(self) -> bytes:
        return json.dumps(self.report.report(self.clock.seconds())).encode()

    # -- states ---------------------------------------------------------------------------

    def set_backend_state(self, pool: str, backend: int, state: str, grace: float) -> str:
        if state not in BACKEND_STATES:
            raise c.BadState(f"{state!r}: a back end is one of " + ", ".join(BACKEND_STATES))
        pools = [p for p in self.config.pools if not pool or p.name == pool]
        if not pools:
            raise c.UnknownTarget(f"node {self.number}: no pool {pool!r}")
        if not any(b.number == backend for p in pools for b in p.backends):
            where = f"pool {pool!r}" if pool else "any pool"
            raise c.UnknownTarget(f"node {self.number}: no back end {backend} in {where}")
        if self.backends is None:
            raise c.UnknownTarget(f"node {self.number} runs no proxy")
        if state == "enabled":
            self.backends.enable_backend(backend)
        elif state == "disabled":
            self.backends.disable_backend(backend)
        else:
            self.backends.drain_backend(backend, grace)
        return state

    def set_node_state(self, node: int, state: str) -> str:
        if state not in NODE_STATES:
            raise c.BadState(f"{state!r}: a node is one of " + ", ".join(NODE_STATES))
        row = self.nodes.get(node)
        if row is None:
            raise c.UnknownTarget(f"node {node} is not in [[array.node]]")
        row.enabled = state == "enabled"
        log.info("node {node} {state}", node=node, state=state)
        return state
