"""A node that comes back asks its peers for their committed config and takes the newest,
if it is newer than its own: how a node that was down during a push catches up.

It asks as itself (its node certificate); ``GetConfig`` is a command nodes may ask.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dlba.array.control import ControlPlane
from dlba.client import ArrayClient, ClientError
from dlba.config import Config

log = Logger(namespace="dlba.array.catchup")


async def catch_up(config: Config, plane: ControlPlane, reactor: Any) -> int | None:
    """The serial adopted from a peer, or None when no peer had a newer one."""
    own = config.node.number
    peers = [n.number for n in config.array.nodes if n.number != own]
    if not peers or not config.tls.node_certificate:
        return None
    try:
        client = ArrayClient(config, reactor, certificate=config.tls.node_certificate)
    except ClientError as e:
        log.warn("catch-up skipped: {why}", why=str(e))
        return None
    try:
        answers = await client.gather(peers, client.config_text)
    finally:
        await client.close()
    found = [got for got in answers if not isinstance(got, BaseException)]
    if not found:
        return None
    text, serial = max(found, key=lambda got: int(got[1]))
    serial = int(serial)
    if serial <= plane.committed.serial:
        return None
    try:
        plane.adopt(text, serial)
    except Exception as e:  # refused here: the node runs on with its own config
        log.warn(
            "a peer's config serial {serial} is newer but refused here: {why}",
            serial=serial,
            why=str(e),
        )
        return None
    log.info("caught up: took config serial {serial} from a peer", serial=serial)
    return serial
