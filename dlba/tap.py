"""``twistd dlba``: options, and the service they describe."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from dlba import __version__
from dlba.errors import ConfigError, ConfigErrors


def _fail(message: str) -> None:
    """A user's mistake: one line on stderr and a non-zero exit, no help text, no traceback."""
    sys.stderr.write(f"dlba: {message}\n")
    raise SystemExit(2)


class Options(usage.Options):
    synopsis = "[--config FILE [--node N] | --demo [--state-dir DIR]]"
    longdesc = (
        "Runs one node of a Decrypting Load Balancing Array: a TLS-terminating HTTP "
        "proxy that spreads requests over back-end web servers. Give --config for a "
        "real node or --demo for a one-node array with three built-in back ends "
        "(HTTP on 127.0.0.1:8080, HTTPS on 127.0.0.1:8443, back ends on 9001-9003)."
    )
    optFlags = [
        ["demo", None, "Run the demo: a one-node array and three demo back ends, no file needed."],
    ]
    optParameters = [
        ["config", "c", None, "The node's TOML config file (see etc/dlba.toml)."],
        ["node", "n", None, "Which [[array.node]] this process is; overrides [node] number.", int],
        [
            "state-dir",
            None,
            None,
            "Where generated certificates and state go; overrides [node] state_dir "
            "(demo default: $XDG_STATE_HOME/dlba-demo or ~/.local/state/dlba-demo).",
        ],
    ]

    def opt_version(self) -> None:
        """Print dlba's version and exit."""
        print(f"dlba {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:

        if self["demo"] and self["config"]:
            _fail("give --config FILE or --demo, not both")
        if not self["demo"] and not self["config"]:
            _fail("give --config FILE (see etc/dlba.toml) or --demo")
        if self["demo"]:
            from dlba.certs import ensure_self_signed
            from dlba.demo import default_state_dir, demo_config

            state_dir = self["state-dir"] or default_state_dir()
            try:
                cert = ensure_self_signed(state_dir)
            except OSError as e:
                _fail(
                    f"cannot make the demo certificate in {state_dir}: {e.strerror} "
                    "(pass --state-dir DIR with a writable DIR)"
                )
            self.config = demo_config(state_dir, cert)
            return
        try:
            self.config = self.read_config()
        except ConfigErrors as e:
            _fail("\ndlba: ".join(str(one) for one in e.errors))
        except ConfigError as e:
            _fail(str(e))

    def read_config(self) -> Any:
        """The config file as these options read it (``--node``, ``--state-dir``): at
        start, and again on SIGHUP.  Raises ``ConfigError`` or ``ConfigErrors``."""
        from dlba import config as configmod

        cfg = configmod.load(self["config"], node=self["node"])
        if self["state-dir"]:
            from dataclasses import replace

            cfg = replace(cfg, node=replace(cfg.node, state_dir=os.path.abspath(self["state-dir"])))
        return cfg


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from dlba.proxy.reactor import node_reactor

        reactor = node_reactor()
    from dlba.node import make_node_service

    config = options.config
    extra: list[tuple[str, str, Any]] = []
    if options["demo"]:
        from dlba.demo import DEMO_PORTS, demo_site

        extra = [
            (f"demo-backend-{i + 1}", f"tcp:{port}:interface=127.0.0.1", demo_site(i + 1))
            for i, port in enumerate(DEMO_PORTS)
        ]
    tls_context = None
    if config.listen.https:
        from dlba.tls import ServerTLSContextFactory, TicketKeys

        try:
            # One ring of ticket keys for the process, kept across reloads.
            tls_context = ServerTLSContextFactory(config.tls.certificates, TicketKeys(reactor))
        except ConfigError as e:
            _fail(str(e))
    json_log = None
    if config.log.json:
        from dlba.logs import json_observer

        json_log = json_observer()
    node = make_node_service(
        config, reactor, tls_context=tls_context, extra=extra, json_log=json_log
    )
    if not options["demo"]:
        node.reread = options.read_config
    # SIGHUP (systemctl reload) reads the file again and reloads; the demo logs that
    # there is nothing to read.  Once running: twistd's own handlers are in place then.
    reactor.callWhenRunning(node.reload_on_hangup)
    return node
