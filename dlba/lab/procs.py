"""The lab's processes: started inside a namespace, recorded, and signalled only when
/proc shows they are still the process that was recorded.

A pid alone is not enough to kill by: once a process has exited the kernel may give its
pid to another.  Each record carries the process's start time (clock ticks since boot,
/proc/PID/stat field 22), and each process ``up`` starts carries ``DLBA_LAB=<prefix>`` in
its environment, so ``down`` can also recognise, in a lab namespace, one that a crash kept
from being recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from dlba.labplan import LabError, Process, parse_proc_stat

MARKER = "DLBA_LAB"
STOP_GRACE = 10.0  # SIGTERM to exit (twistd waits [limits] shutdown_grace: 1 s in the lab)
KILL_GRACE = 5.0  # SIGKILL to gone


def code_root() -> str | None:
    """The repository this dlba runs from, when it is a working tree (not installed):
    children then get it as PYTHONPATH, so they run this tree's code and find its
    twisted/plugins/dlba_plugin.py."""
    import dlba

    root = Path(dlba.__file__).resolve().parent.parent
    if (root / "setup.cfg").exists() and (root / "twisted" / "plugins").is_dir():
        return str(root)
    return None


def child_env(prefix: str) -> dict[str, str]:
    # Only what the children need: a stray http_proxy or PYTHONSTARTUP must not change
    # what the lab runs.
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LC_ALL": "C.UTF-8",
        MARKER: prefix,
    }
    root = code_root()
    if root is not None:
        env["PYTHONPATH"] = root
    return env


def stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time) of ``pid``, or None if there is no such process."""
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError, IndexError):
        return None


def starttime(pid: int) -> int:
    found = stat(pid)
    if found is None:
        raise LabError(f"process {pid} ended as soon as it started")
    return found[1]


def alive(p: Process) -> bool:
    """Whether the recorded process still runs (a zombie has ended: it only waits to be
    reaped, which a container's init may never do)."""
    found = stat(p.pid)
    return found is not None and found[1] == p.starttime and found[0] not in ("Z", "X")


def marked(pid: int, prefix: str) -> bool:
    """Whether ``pid`` is a process some ``up`` of the lab ``prefix`` started."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{MARKER}={prefix}".encode() in environ


def spawn(
    host: str,
    namespace: str,
    what: str,
    argv: Sequence[str],
    log: str,
    cwd: str,
    prefix: str,
    append: bool = False,
) -> tuple[Process, subprocess.Popen[bytes]]:
    """Start ``argv`` inside ``namespace``.  ``ip netns exec`` execs the command in its
    own process (it does not fork), so the pid is the command's.  The child gets a new
    session: a Ctrl-C at the terminal that ran ``up`` does not reach the lab, and it
    outlives ``up``.  The log starts empty, so it shows this lab's process, unless
    ``append`` (a restart: the crash before it stays readable)."""
    with open(log, "ab" if append else "wb") as out:
        child = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(prefix),
            start_new_session=True,
        )
    return Process(host, what, child.pid, starttime(child.pid), log), child


def python() -> list[str]:
    return [sys.executable]


def send(p: Process, sig: int) -> bool:
    """Signal the recorded process if it is still that process; whether it was sent."""
    if not alive(p):
        return False
    try:
        os.kill(p.pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(processes: Iterable[Process], seconds: float) -> list[Process]:
    """Poll until every one has ended or ``seconds`` pass; the ones still running.
    (Not our children once ``up`` has exited, so there is nothing to wait() on.)"""
    left = [p for p in processes if alive(p)]
    deadline = time.monotonic() + seconds
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if alive(p)]
    return left


def stop(processes: Sequence[Process]) -> list[Process]:
    """SIGTERM, then SIGKILL after STOP_GRACE; the ones that would not die."""
    for p in processes:
        send(p, signal.SIGTERM)
    left = wait_gone(processes, STOP_GRACE)
    for p in left:
        send(p, signal.SIGKILL)
    return wait_gone(left, KILL_GRACE)
