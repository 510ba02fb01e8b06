"""The lab's network, through ``ip`` (iproute2): namespaces, the bridge, veth links.

Every command names a namespace of the lab (``ip -n NS ...``, ``ip netns add|del NS``),
so nothing here can change the machine's own interfaces or routes.  The veth pairs are
made inside the bridge namespace with their peer created straight in the host's
namespace (``peer name eth0 netns NS``): neither end ever exists in the machine's own
namespace, not even for a moment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from dlba.labplan import BRIDGE, INTERFACE, PREFIX_LENGTH, Host, LabError, Plan

IP_TIMEOUT = 10.0  # one ip command; they take milliseconds unless the kernel is stuck


def preflight(geteuid: Any = os.geteuid, which: Any = shutil.which) -> None:
    """What the lab needs before it touches anything: root, ``ip``, network namespaces."""
    if geteuid() != 0:
        raise LabError(
            "needs root: it makes network namespaces and links (run it as root, e.g. sudo dlba-lab)"
        )
    if which("ip") is None:
        raise LabError("needs the ip command of iproute2 (apt-get install iproute2)")
    if not os.path.exists("/proc/self/ns/net"):
        raise LabError(
            "this kernel has no network namespaces (/proc/self/ns/net is missing: CONFIG_NET_NS)"
        )


def ip(*args: str, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; on failure a LabError saying ``what`` failed and ip's own words."""
    argv = ["ip", *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=IP_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"cannot {what}: `{' '.join(argv)}` took over {IP_TIMEOUT}s") from None
    if check and done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise LabError(f"cannot {what}: `{' '.join(argv)}`: {said[0]}")
    return done


def namespaces() -> list[str]:
    """Every named network namespace on the machine (``ip netns list``)."""
    out = ip("netns", "list", what="list the network namespaces").stdout
    # Lines are "NAME" or "NAME (id: N)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def add_namespace(name: str) -> None:
    done = ip("netns", "add", name, what=f"make the network namespace {name}", check=False)
    if done.returncode != 0:
        reason = done.stderr.strip()
        hint = ""
        if "Operation not permitted" in reason:
            hint = " (namespaces may be disabled here, e.g. inside an unprivileged container)"
        raise LabError(f"cannot make the network namespace {name}: {reason}{hint}")
    # lo up: a process in the namespace can reach its own addresses (the VIP on lo, too).
    ip("-n", name, "link", "set", "lo", "up", what=f"bring up lo in {name}")


def delete_namespace(name: str) -> None:
    """Remove ``name``; its links go with it (a veth pair dies with either end)."""
    ip("netns", "delete", name, what=f"remove the network namespace {name}")


def quiet_ipv6(namespace: str) -> None:
    """No IPv6 on the lab's links: no router solicitations or MLD reports on the bridge,
    so a capture there holds the traffic a test made.  Set before the links exist, so
    ``default`` covers them."""
    if shutil.which("sysctl") is None:
        return  # noisier captures, nothing worse
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            namespace,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
        capture_output=True,
        timeout=IP_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def build_bridge(plan: Plan) -> None:
    ns = plan.bridge.namespace
    ip("-n", ns, "link", "add", BRIDGE, "type", "bridge", what=f"make the bridge in {ns}")
    ip("-n", ns, "link", "set", BRIDGE, "up", what=f"bring up the bridge in {ns}")


def attach(plan: Plan, host: Host) -> None:
    """A veth pair from the bridge to ``host``: ``host.port`` on the bridge, ``eth0``
    with the host's MAC and address in the host's namespace."""
    bridge = plan.bridge.namespace
    assert host.ip is not None and host.mac is not None
    what = f"link {host.name} to the bridge"
    ip(
        "-n",
        bridge,
        "link",
        "add",
        host.port,
        "type",
        "veth",
        "peer",
        "name",
        INTERFACE,
        "address",
        host.mac,
        "netns",
        host.namespace,
        what=what,
    )
    ip("-n", bridge, "link", "set", host.port, "master", BRIDGE, "up", what=what)
    ip(
        "-n",
        host.namespace,
        "addr",
        "add",
        f"{host.ip}/{PREFIX_LENGTH}",
        "dev",
        INTERFACE,
        what=f"give {host.name} its address",
    )
    ip("-n", host.namespace, "link", "set", INTERFACE, "up", what=f"bring up {host.name}'s eth0")


def addresses(namespace: str) -> tuple[str | None, str | None]:
    """(IPv4 address, MAC) of ``eth0`` in ``namespace`` as the kernel has them."""
    done = ip("-j", "-n", namespace, "addr", "show", "dev", INTERFACE, what="read", check=False)
    if done.returncode != 0:
        return None, None
    try:
        found: Sequence[dict[str, Any]] = json.loads(done.stdout or "[]")
    except ValueError:
        return None, None
    for link in found:
        mac = link.get("address")
        ips = [a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"]
        return (ips[0] if ips else None), mac
    return None, None


def pids_in(namespace: str) -> list[int]:
    """The processes whose network namespace is ``namespace`` (``ip netns pids``)."""
    done = ip("netns", "pids", namespace, what="list processes", check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]
