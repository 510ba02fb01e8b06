"""What each ``dlba-lab`` command does: build and start the lab, report it, take it down.

Every step that creates something is recorded in the state file first (``DIR/state.json``),
so ``down`` after a crash (of ``up`` itself, or of the machine's patience) removes what was
made.  ``down`` also finds the lab's namespaces by name when the state file is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from dlba.certs import ca_key_path, init_array_certificates, make_ca, make_cert
from dlba.files import write_atomically
from dlba.lab import netns, procs
from dlba.lab.wait import NOT_ANSWERED
from dlba.labplan import (
    ADMIN_CERTIFICATE,
    ARRAY_CA,
    BACKEND_PORT,
    CONFIG_FILE,
    MAX_NODES,
    NODE_CERTIFICATE,
    STATE_FILE,
    VIP,
    WEB_CA,
    WEB_CERTIFICATE,
    Host,
    HostStatus,
    LabError,
    Plan,
    Process,
    State,
    append_node,
    config_text,
    grown,
    is_lab_namespace,
    make_plan,
    node_ip,
    not_reached,
    overall,
    parse_state,
    prefix_for,
    push_problem,
    render_status,
)

DEFAULT_DIR = "/tmp/dlba-lab"
START_TIMEOUT = 30.0  # every node and back end answering, from the first start
LOG_TAIL = 5  # lines of a log shown when its process failed to start


@dataclass
class Output:
    """Where the commands write: stdout for results, stderr for progress and problems."""

    out: TextIO
    err: TextIO

    def say(self, text: str) -> None:
        self.err.write(f"dlba-lab: {text}\n")
        self.err.flush()


class StartFailed(LabError):
    """A process of the lab did not come up; ``detail`` holds its log's last lines."""

    def __init__(self, message: str, detail: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.detail = list(detail)


# -- the state file --------------------------------------------------------------------------


def state_path(directory: str) -> str:
    return os.path.join(directory, STATE_FILE)


def load_state(directory: str) -> State | None:
    path = state_path(directory)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LabError(f"{path}: cannot read: {e.strerror}") from None
    return parse_state(text, path)


def save_state(state: State) -> None:
    write_atomically(state_path(state.directory), state.dumps().encode(), 0o644)


@contextlib.contextmanager
def exclusive(directory: str) -> Iterator[None]:
    """One up or down at a time per lab directory: two would build or remove the same
    namespaces under each other."""
    # Root writes keys here, and the default is in /tmp: a directory someone else made
    # (or a symlink they planted) would let them choose where those files go.
    if not os.path.lexists(directory):
        os.makedirs(directory, mode=0o700)
    found = os.lstat(directory)
    if stat.S_ISLNK(found.st_mode) or found.st_uid != os.geteuid():
        raise LabError(
            f"{directory} is a symlink or belongs to another user (uid {found.st_uid}): "
            "remove it or pick another --dir"
        )
    if not stat.S_ISDIR(found.st_mode):
        raise LabError(f"{directory} is not a directory: pick another --dir")
    with open(os.path.join(directory, ".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabError(f"another dlba-lab up or down is running on {directory}") from None
        yield


def hint_args(directory: str, name: str = "") -> str:
    """The options a follow-up command needs to find this lab again."""
    args = "" if directory == DEFAULT_DIR else f" --dir {directory}"
    return args + (f" --name {name}" if name else "")


def lab_name(prefix: str) -> str:
    return prefix[len("dlbalab-") :].rstrip("-")


# -- up ------------------------------------------------------------------------------------------


@dataclass
class Started:
    """The processes ``up`` started and still holds (to see one exit at once)."""

    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def up(
    directory: str,
    nodes: int,
    backends: int,
    name: str,
    timeout: float,
    wait_vip: bool,
    io: Output,
    fast_path: str = "auto",
) -> int:
    netns.preflight()
    d = os.path.abspath(directory)
    plan = make_plan(nodes, backends, name, fast_path)
    with exclusive(d):
        return _up(d, plan, timeout, wait_vip, io)


def _up(d: str, plan: Plan, timeout: float, wait_vip: bool, io: Output) -> int:
    nodes, backends = plan.nodes, plan.backends
    name = lab_name(plan.prefix)
    existing = load_state(d)
    if existing is not None:
        verdict = overall(inspect(existing))
        if existing.phase == "up" and verdict == "up":
            io.say(
                f"already up in {d} ({existing.nodes} nodes, {existing.backends} web servers); "
                f"dlba-lab down{hint_args(d)} first to build another"
            )
            return 0
        if existing.phase != "up":
            raise LabError(
                f"an earlier dlba-lab up in {d} did not finish (it was stopped or crashed): "
                f"run dlba-lab down{hint_args(d)} first"
            )
        raise LabError(
            f"the lab in {d} is {verdict} (see dlba-lab status{hint_args(d)}): "
            f"run dlba-lab down{hint_args(d)} first"
        )
    leftovers = [n for n in netns.namespaces() if is_lab_namespace(n, plan.prefix)]
    if leftovers:
        raise LabError(
            f"namespaces {', '.join(leftovers)} exist already but {d} holds no lab: another "
            f"lab of this name runs from another --dir, or a crash left them (dlba-lab down"
            f"{hint_args(d, name)} removes them), or pick another --name"
        )
    state = State(d, plan.prefix, nodes, backends)
    save_state(state)
    started = Started()
    try:
        io.say(f"building {len(plan.hosts)} namespaces on one bridge ({plan.prefix}*)")
        build(state)
        write_files(plan, d)
        start_processes(state, started, io)
        io.say("waiting for every node and web server to answer from the client")
        wait_for_array(state, started, timeout)
        if wait_vip:
            io.say(f"waiting for the VIP {VIP} to answer from the client")
            wait_for_vip(state, started, timeout)
    except BaseException as e:
        # Up either finishes or leaves nothing behind but its logs: a half-built lab
        # would only make the next up refuse.
        failure: BaseException = e
        if isinstance(e, StartFailed):
            io.say(f"up: {e}")
            for line in e.detail:
                io.err.write(f"    {line}\n")
            failure = LabError(f"the lab did not come up; its logs stay in {d}")
        elif isinstance(e, KeyboardInterrupt):
            io.say("interrupted")
        elif not isinstance(e, LabError):
            io.say(f"unexpected {type(e).__name__} (a bug in dlba-lab)")
        io.say("taking down what was built")
        with contextlib.suppress(LabError):
            _down(d, plan.prefix, io)
        if failure is e:
            raise
        raise failure from None
    state.phase = "up"
    save_state(state)
    more = hint_args(d)
    first = plan.node(1)
    io.out.write(
        f"up: {nodes} node(s), {backends} web server(s) in {d} (config {d}/{CONFIG_FILE})\n"
        f"  try:   dlba-lab exec{more} client -- curl --cacert {d}/{WEB_CA} "
        f"https://{first.ip}/\n"
        f"  VIP:   dlba-lab exec{more} client -- curl --cacert {d}/{WEB_CA} https://{VIP}/\n"
        f"  see:   dlba-lab status{more}    stop: dlba-lab down{more}\n"
    )
    return 0


def build(state: State) -> None:
    plan = state.plan
    for host in plan.hosts:
        state.namespaces.append(host.namespace)
        save_state(state)  # before it exists: a crash now still leaves a record of it
        netns.add_namespace(host.namespace)
        netns.quiet_ipv6(host.namespace)
    netns.build_bridge(plan)
    for host in plan.attached:
        netns.attach(plan, host)


def write_files(plan: Plan, d: str) -> None:
    """The config, the array's certificates (control plane) and the HTTPS certificate the
    proxies serve, signed by a CA of its own that curl can be told to trust."""
    nodes = [
        (h.number, os.path.join(d, NODE_CERTIFICATE.format(number=h.number)), h.ip or "")
        for h in plan.node_hosts
    ]
    init_array_certificates(
        os.path.join(d, ARRAY_CA), os.path.join(d, ADMIN_CERTIFICATE), nodes, force=True
    )
    # Not signed by the array CA: a key the proxies show to every client must not also be
    # a client certificate the control plane accepts.
    os.makedirs(os.path.dirname(os.path.join(d, WEB_CA)), exist_ok=True)
    web_ca = make_ca("dlba-lab web CA")
    ca_cert = web_ca[web_ca.index(b"-----BEGIN CERTIFICATE") :]
    # Every node the lab could grow to (add-node), so the certificate never changes.
    ips = [VIP, *(node_ip(n) for n in range(1, MAX_NODES + 1))]
    write_atomically(os.path.join(d, WEB_CA), ca_cert, 0o644)
    write_atomically(
        os.path.join(d, WEB_CERTIFICATE),
        make_cert(["www.dlba-lab.test"], ca=web_ca, ips=ips),
        0o600,
    )
    for h in plan.node_hosts:  # an earlier lab's requests would read as this one's
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(d, f"node{h.number}-access.log"))
    path = os.path.join(d, CONFIG_FILE)
    write_atomically(path, config_text(plan, d).encode(), 0o644)
    from dlba.config import load
    from dlba.errors import ConfigError

    try:
        load(path)
    except ConfigError as e:  # a bug of dlba-lab's, not the user's: say so plainly
        raise LabError(f"dlba-lab wrote a config dlba refuses: {e}") from None


def node_argv(d: str, number: int) -> list[str]:
    return [
        *procs.python(),
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--nodaemon",
        "--pidfile=",
        f"--logfile={d}/node{number}.log",
        "dlba",
        "--config",
        f"{d}/{CONFIG_FILE}",
        "--node",
        str(number),
    ]


def web_argv(host: Host) -> list[str]:
    listen = f"tcp:{BACKEND_PORT}:interface={host.ip}"
    return [
        *procs.python(),
        "-m",
        "dlba.lab.backend",
        "--number",
        str(host.number),
        "--listen",
        listen,
    ]


def start_processes(state: State, started: Started, io: Output) -> None:
    plan = state.plan
    d = state.directory
    # The web servers first: they start quicker, and the nodes' first requests find them.
    for host in plan.web_hosts:
        start(state, started, host, "demo back end", web_argv(host))
    for host in plan.node_hosts:
        start(state, started, host, "twistd dlba", node_argv(d, host.number))
    io.say(f"started {len(state.processes)} processes (logs in {d})")


def start(
    state: State, started: Started, host: Host, what: str, argv: list[str], again: bool = False
) -> None:
    """Start one process of the lab and record it (replacing an earlier one of the host)."""
    log = f"{state.directory}/{host.name}.log"
    process, child = procs.spawn(
        host.name, host.namespace, what, argv, log, state.directory, state.prefix, append=again
    )
    state.processes = [p for p in state.processes if p.host != host.name] + [process]
    save_state(state)
    started.children[host.name] = child


def array_urls(plan: Plan) -> dict[str, str]:
    """URL -> the host that must answer it: each web server directly, each node's proxy
    over HTTP and HTTPS on the node's own ip."""
    urls = {f"http://{h.ip}:{BACKEND_PORT}/": h.name for h in plan.web_hosts}
    for h in plan.node_hosts:
        urls[f"http://{h.ip}/"] = h.name
        urls[f"https://{h.ip}/"] = h.name
    return urls


def wait_for_array(state: State, started: Started, timeout: float) -> None:
    wait_until_answered(state, started, array_urls(state.plan), timeout)


def wait_for_vip(state: State, started: Started, timeout: float) -> None:
    """The VIP answers over HTTP and HTTPS: the packet scheduler delivers the client's
    frames to some node (``up`` waits for it unless ``--no-wait-vip``)."""
    urls = {f"http://{VIP}/": "the VIP", f"https://{VIP}/": "the VIP"}
    wait_until_answered(state, started, urls, timeout)


def wait_until_answered(
    state: State, started: Started, urls: dict[str, str], timeout: float
) -> None:
    """Poll ``urls`` from the client namespace until each answers; fail at ``timeout``, or
    at once when a process of the lab exits, naming it and its log."""
    d = state.directory
    argv = [
        "ip",
        "netns",
        "exec",
        state.plan.client.namespace,
        *procs.python(),
        "-m",
        "dlba.lab.wait",
        "--cafile",
        f"{d}/{WEB_CA}",
        "--deadline",
        str(timeout),
        *urls,
    ]
    waiter = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=procs.child_env(state.prefix),
        cwd=d,
    )
    assert waiter.stdout is not None
    results: dict[str, dict[str, object]] = {}
    said: list[str] = []  # anything else it printed: a traceback if it broke
    pending = b""
    deadline = time.monotonic() + timeout + 10.0  # the waiter's own deadline comes first
    try:
        while True:
            check_children(state, started)
            ready, _, _ = select.select([waiter.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(waiter.stdout.fileno(), 65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        event = None
                    if isinstance(event, dict) and "url" in event:
                        results[str(event["url"])] = event
                    else:
                        said.append(line.decode("utf-8", "replace"))
            if time.monotonic() > deadline:
                break
    finally:
        if waiter.poll() is None:
            waiter.kill()
        waiter.wait()
        waiter.stdout.close()
    check_children(state, started)
    failed = {
        u: results.get(u, {}).get("error", "no answer")
        for u in urls
        if "status" not in results.get(u, {})
    }
    if waiter.returncode not in (0, NOT_ANSWERED):
        said.append(pending.decode("utf-8", "replace"))
        raise StartFailed(
            f"the readiness check itself failed (`{' '.join(argv[:7])}` exited with status "
            f"{waiter.returncode})",
            [line for line in said if line][-LOG_TAIL:],
        )
    if failed:
        url, error = next(iter(failed.items()))
        who = urls[url]
        process = state.process(who)
        where = f"; see {process.log}" if process is not None else ""
        others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise StartFailed(
            f"{who} did not answer {url} within {timeout:g}s: {error}{others}{where}",
            tail(process.log) if process is not None else [],
        )


def check_children(state: State, started: Started) -> None:
    for host, child in started.children.items():
        code = child.poll()
        if code is not None:
            process = state.process(host)
            log = process.log if process is not None else "?"
            what = process.what if process is not None else "process"
            raise StartFailed(
                f"{host}'s {what} exited with status {code} while starting; see {log}",
                tail(log),
            )


def tail(path: str, lines: int = LOG_TAIL) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


# -- down ----------------------------------------------------------------------------------------


def down(directory: str, name: str, io: Output) -> int:
    netns.preflight()
    d = os.path.abspath(directory)
    if not os.path.isdir(d):
        prefix = prefix_for(name)
        if not any(is_lab_namespace(n, prefix) for n in netns.namespaces()):
            io.say(f"already down: no lab in {d} and no {prefix}* namespaces")
            return 0
    with exclusive(d):
        return _down(d, prefix_for(name), io)


def _down(d: str, default_prefix: str, io: Output) -> int:
    try:
        state = load_state(d)
    except LabError as e:
        # A damaged record must not keep the lab up: go by name instead.
        io.say(f"{e}; taking the lab down by namespace name")
        state = None
    prefix = state.prefix if state is not None else default_prefix
    found = [n for n in netns.namespaces() if is_lab_namespace(n, prefix)]
    recorded = [p for p in state.processes if procs.alive(p)] if state is not None else []
    known = {p.pid for p in recorded}
    strays: list[Process] = []
    foreign: list[tuple[int, str]] = []
    for ns in found:
        for pid in netns.pids_in(ns):
            if pid in known:
                continue
            found_stat = procs.stat(pid)
            if found_stat is None or found_stat[0] in ("Z", "X"):
                continue  # gone, or ended and waiting for a parent to reap it
            if procs.marked(pid, prefix):
                # Started by an up that crashed before it could record it.
                strays.append(Process(ns[len(prefix) :], "unrecorded", pid, found_stat[1], ""))
            else:
                foreign.append((pid, ns))
    if state is None and not found:
        io.say(f"already down: no lab in {d} and no {prefix}* namespaces")
        return 0
    left = procs.stop([*recorded, *strays])
    for ns in found:
        netns.delete_namespace(ns)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path(d))
    io.say(
        f"down: stopped {len(recorded) + len(strays) - len(left)} process(es), removed "
        f"{len(found)} namespace(s); logs stay in {d}"
    )
    for pid, ns in foreign:
        io.say(
            f"left alone: process {pid} in {ns} was not started by dlba-lab up "
            "(a dlba-lab exec shell?); it keeps its network until it exits"
        )
    if left:
        pids = ", ".join(str(p.pid) for p in left)
        raise LabError(f"processes {pids} did not end even after SIGKILL")
    return 0


# -- status, kill, exec --------------------------------------------------------------------------


def inspect(state: State) -> list[HostStatus]:
    listed = set(netns.namespaces())
    found = []
    for h in state.plan.hosts:
        exists = h.namespace in listed
        ip, mac = netns.addresses(h.namespace) if exists and h.ip else (None, None)
        p = state.process(h.name)
        found.append(
            HostStatus(
                name=h.name,
                namespace=h.namespace,
                exists=exists,
                ip=ip,
                mac=mac,
                what=p.what if p else None,
                pid=p.pid if p else None,
                alive=procs.alive(p) if p else None,
                log=p.log if p else None,
            )
        )
    return found


# Exit statuses of status, like systemctl's: 0 up, 1 degraded, 3 down.
STATUS_EXIT = {"up": 0, "degraded": 1, "down": 3}


def status(directory: str, name: str, as_json: bool, io: Output) -> int:
    netns.preflight()
    d = os.path.abspath(directory)
    state = load_state(d)
    if state is None:
        prefix = prefix_for(name)
        leftovers = [n for n in netns.namespaces() if is_lab_namespace(n, prefix)]
        verdict = "degraded" if leftovers else "down"
        if as_json:
            report: dict[str, object] = {
                "state": verdict,
                "directory": d,
                "prefix": prefix,
                "leftovers": leftovers,
            }
            io.out.write(json.dumps(report, indent=2) + "\n")
        elif leftovers:
            io.out.write(
                f"no lab in {d}, but {', '.join(leftovers)} exist (left by a crash?): "
                f"dlba-lab down{hint_args(d, name)} removes them\n"
            )
        else:
            io.out.write(f"down: no lab in {d}\n")
        return STATUS_EXIT[verdict]
    hosts = inspect(state)
    verdict = overall(hosts)
    if state.phase != "up" and verdict == "up":
        verdict = "degraded"  # up is still building it, or died while it did
    if as_json:
        report = {
            "state": verdict,
            "phase": state.phase,
            "directory": d,
            "config": f"{d}/{CONFIG_FILE}",
            "web_ca": f"{d}/{WEB_CA}",
            "prefix": state.prefix,
            "vip": VIP,
            "nodes": state.nodes,
            "backends": state.backends,
            "hosts": [asdict(h) for h in hosts],
        }
        io.out.write(json.dumps(report, indent=2) + "\n")
    else:
        header = [
            f"{verdict}: {state.nodes} node(s), {state.backends} web server(s) in {d}",
            f"config {d}/{CONFIG_FILE}; VIP {VIP}; HTTPS CA {d}/{WEB_CA}",
        ]
        io.out.write(render_status(hosts, header))
    return STATUS_EXIT[verdict]


def need_state(directory: str) -> State:
    d = os.path.abspath(directory)
    state = load_state(d)
    if state is None:
        raise LabError(f"no lab in {d}: run dlba-lab up{hint_args(d)} first")
    return state


def kill(directory: str, node: str, io: Output) -> int:
    """SIGKILL one node's twistd (the process only: its namespace and kernel stay, as a
    machine whose daemon crashed)."""
    netns.preflight()
    state = need_state(directory)
    name = f"node{node}" if node.isdigit() else node
    host = state.plan.host(name)
    if host.role != "node":
        raise LabError(f"kill takes a node (node1..node{state.nodes}), not {name}", status=2)
    p = state.process(host.name)
    if p is None or not procs.alive(p):
        io.say(f"{name}'s twistd is not running (already killed?)")
        return 0
    procs.send(p, signal.SIGKILL)
    if procs.wait_gone([p], procs.KILL_GRACE):
        raise LabError(f"{name}'s twistd (pid {p.pid}) still runs after SIGKILL")
    io.say(f"killed {name}'s twistd (pid {p.pid}) with SIGKILL; its namespace stays up")
    return 0


def restart(directory: str, node: str, timeout: float, io: Output) -> int:
    """Start a node's twistd again (after ``kill``): it rejoins the array as a node that
    starts does, asking its peers who is scheduler."""
    netns.preflight()
    d = os.path.abspath(directory)
    with exclusive(d):
        state = need_state(d)
        host = state.plan.host(f"node{node}" if node.isdigit() else node)
        if host.role != "node":
            raise LabError(
                f"start takes a node (node1..node{state.nodes}), not {host.name}", status=2
            )
        p = state.process(host.name)
        if p is not None and procs.alive(p):
            io.say(f"{host.name}'s twistd runs already (pid {p.pid})")
            return 0
        if host.namespace not in netns.namespaces():
            raise LabError(f"{host.namespace} is gone: dlba-lab down, then up again")
        started = Started()
        start(state, started, host, "twistd dlba", node_argv(d, host.number), again=True)
        urls = {u: h for u, h in array_urls(state.plan).items() if h == host.name}
        try:
            wait_until_answered(state, started, urls, timeout)
        except StartFailed as e:
            for line in e.detail:
                io.err.write(f"    {line}\n")
            raise LabError(str(e)) from None
        new = state.process(host.name)
        assert new is not None
        io.say(f"started {host.name}'s twistd again (pid {new.pid}); it answers")
        return 0


def add_node(directory: str, timeout: float, io: Output) -> int:
    """Grow a running lab by one node, as an operator grows an array: its namespace and
    link, its control-plane certificate (the array CA signs it), the config with it
    appended pushed to the running nodes (dlba-ctl push: they validate, then commit), and
    only then its twistd, which asks its peers who is scheduler and follows.  In that
    order, so it never starts alone (a node that hears no peer elects itself)."""
    netns.preflight()
    d = os.path.abspath(directory)
    with exclusive(d):
        state = need_state(d)
        plan, host = grown(state)
        if host.namespace in netns.namespaces():
            raise LabError(
                f"{host.namespace} exists already (left by an add-node that failed?): "
                f"dlba-lab down{hint_args(d)}, then up"
            )
        io.say(f"adding {host.name} ({host.ip}) to the running array")
        state.namespaces.append(host.namespace)
        save_state(state)  # before it exists, as up does
        netns.add_namespace(host.namespace)
        netns.quiet_ipv6(host.namespace)
        netns.attach(plan, host)
        write_node_certificate(d, host)
        new_config = os.path.join(d, CONFIG_FILE + ".new")
        write_atomically(new_config, grown_config(d, host).encode(), 0o644)
        report = push(state, new_config)
        problem = push_problem(report)
        if problem is not None:
            # Nothing runs there yet: take the namespace away again, keep the old config.
            netns.delete_namespace(host.namespace)
            state.namespaces.remove(host.namespace)
            save_state(state)
            os.unlink(new_config)
            raise LabError(f"push: {problem}; the lab stays as it was")
        for n in not_reached(report, host.number):
            io.say(f"node{n} was not reached: it takes the new config when it returns")
        os.replace(new_config, os.path.join(d, CONFIG_FILE))
        state.nodes = plan.nodes
        save_state(state)
        started = Started()
        start(state, started, host, "twistd dlba", node_argv(d, host.number))
        urls = {u: h for u, h in array_urls(plan).items() if h == host.name}
        try:
            wait_until_answered(state, started, urls, timeout)
        except StartFailed as e:
            for line in e.detail:
                io.err.write(f"    {line}\n")
            raise LabError(f"{e} (the array has its config: dlba-lab start {host.name})") from None
        p = state.process(host.name)
        assert p is not None
        io.out.write(
            f"add-node: {host.name} ({host.ip}) joined (pid {p.pid}, config serial "
            f"{report.get('serial')}); it gets new and idle buckets once the scheduler's "
            "sweep hears it\n"
        )
        return 0


def grown_config(d: str, host: Host) -> str:
    """The config the array runs now (pushes included) with ``host`` appended; refused if
    it does not describe the lab's nodes before it."""
    from dlba.config import parse
    from dlba.errors import ConfigError, ConfigErrors

    path = os.path.join(d, CONFIG_FILE)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LabError(f"{path}: cannot read: {e.strerror}") from None
    grown_text = append_node(text, host)
    try:
        numbers = [n.number for n in parse(grown_text, path).array.nodes]
    except (ConfigError, ConfigErrors) as e:
        raise LabError(f"{path} with {host.name} appended is refused: {e}") from None
    if numbers != list(range(1, host.number + 1)):
        raise LabError(
            f"{path} names the nodes {numbers[:-1]}, not 1..{host.number - 1}: "
            "it is not this lab's array (edit it back, or dlba-lab down, then up)"
        )
    return grown_text


def write_node_certificate(d: str, host: Host) -> None:
    """``node<N>``'s control-plane certificate, signed by the lab's array CA."""
    ca = os.path.join(d, ARRAY_CA)
    try:
        ca_pem = Path(ca_key_path(ca)).read_bytes() + Path(ca).read_bytes()
    except OSError as e:
        raise LabError(f"{e.filename}: cannot read the array CA: {e.strerror}") from None
    path = os.path.join(d, NODE_CERTIFICATE.format(number=host.number))
    cert = make_cert([f"node{host.number}"], ca=ca_pem, ips=[host.ip or ""], days=825)
    write_atomically(path, cert, 0o600)


def push(state: State, config: str) -> dict[str, object]:
    """``dlba-ctl push --json`` of ``config`` from the client namespace: its report."""
    argv = [
        "ip",
        "netns",
        "exec",
        state.plan.client.namespace,
        *procs.python(),
        "-m",
        "dlba.ctl",
        "push",
        "--config",
        config,
        "--json",
        config,
    ]
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=procs.child_env(state.prefix),
        cwd=state.directory,
        timeout=60,
        check=False,
    )
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        said = (done.stderr or done.stdout).strip().splitlines()
        raise LabError(
            f"dlba-ctl push failed (status {done.returncode}): {said[-1] if said else 'no output'}"
        )
    return report


def exec_in(
    directory: str, name: str, argv: Sequence[str], execvp: Callable[[str, list[str]], object]
) -> int:
    """Replace this process with ``ip netns exec NAMESPACE ARGV``: stdio and the exit
    status are the command's own."""
    netns.preflight()
    state = need_state(directory)
    host = state.plan.host(name)
    if not argv:
        raise LabError("give the command to run after --, e.g. exec client -- curl ...", status=2)
    if host.namespace not in netns.namespaces():
        raise LabError(f"{host.namespace} does not exist (the lab is not whole: dlba-lab status)")
    execvp("ip", ["ip", "netns", "exec", host.namespace, *argv])
    return 0  # only reached with a fake execvp
