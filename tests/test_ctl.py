"""dlba-ctl as a person runs it: probe against real servers on 127.0.0.1, logstats on files.

The probe's servers are plain sockets in a thread, each connection answered by the next
step of a script, so a test says exactly which tries fail and how.  The command itself runs
in this process through ``dlba.ctl.main`` (its stdout and stderr captured), or as a child
``python -m dlba.ctl`` where what matters is what a shell sees: exit status, one line on
stderr, no traceback, Ctrl-C.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from dlba import __version__, ctl
from dlba.certs import make_ca, make_cert
from tests.array_support import node_tables

REPO = str(Path(__file__).resolve().parent.parent)
# The installed dlba may be older than this tree: children import this one.
CHILD_ENV = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
WAIT = 20.0  # the longest any child or server thread may take

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
CLOSE = b"close"  # read the request, close without answering
HANG = b"hang"  # read the request, never answer


def tempdir(case: SynchronousTestCase) -> str:
    d = tempfile.mkdtemp(prefix="dlba-test-")
    case.addCleanup(shutil.rmtree, d, True)
    return d


class ScriptedServer:
    """127.0.0.1, port 0: connection N gets ``script[N]`` (bytes to send, CLOSE or HANG)."""

    def __init__(
        self, case: SynchronousTestCase, script: Sequence[bytes], tls: ssl.SSLContext | None = None
    ) -> None:
        self.script = list(script)
        self.tls = tls
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        case.addCleanup(self.stop)

    def _serve(self) -> None:
        for step in self.script:
            conn, _ = self.listener.accept()
            if self.stopped.is_set():
                conn.close()
                return
            try:
                self._answer(conn, step)
            except (OSError, ssl.SSLError):
                pass  # the client gave up (a failed TLS check, a timeout): that is the test
            finally:
                conn.close()

    def _answer(self, conn: socket.socket, step: bytes) -> None:
        conn.settimeout(WAIT)
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            data = conn.recv(4096)
            if not data:
                return
            head += data
        self.requests.append(head)
        if step == HANG:
            self.stopped.wait(WAIT)
        elif step != CLOSE:
            conn.sendall(step)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            # Wake a blocking accept() with one last connection.
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                pass
        self.thread.join(WAIT)
        self.listener.close()


def run_ctl(case: SynchronousTestCase, *argv: str) -> tuple[int, str, str]:
    """``dlba-ctl ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    case.patch(sys, "stdout", out)
    case.patch(sys, "stderr", err)
    status = ctl.main(list(argv))
    return status, out.getvalue(), err.getvalue()


def child(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m dlba.ctl ARGV`` as a separate process, from this tree."""
    return subprocess.run(
        [sys.executable, "-m", "dlba.ctl", *argv],
        cwd=REPO,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (just released by us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class ProbeTests(SynchronousTestCase):
    def test_three_failures_page_once_and_recovery_once(self) -> None:
        server = ScriptedServer(self, [CLOSE, ERROR, ERROR, OK, OK])
        record = os.path.join(tempdir(self), "alerts")
        alert = f'echo "$DLBA_PROBE_STATE $DLBA_PROBE_FAILURES $DLBA_PROBE_STATUS" >> {record}'
        url = f"http://127.0.0.1:{server.port}/health?x=1"
        status, out, err = run_ctl(
            self, "probe", url, "--count", "5", "--interval", "0", "--alert", alert
        )
        self.assertEqual(status, 0)
        with open(record) as f:
            self.assertEqual(f.read(), "down 3 500\nup 3 200\n")
        lines = out.splitlines()
        self.assertEqual(len(lines), 6, out)
        self.assertIn("connect", lines[0])
        self.assertIn("FAIL bad answer: closed without answering", lines[1])
        self.assertTrue(lines[2].endswith("FAIL status 500"), lines[2])
        self.assertTrue(lines[3].endswith("FAIL status 500"), lines[3])
        self.assertTrue(lines[4].endswith("ok"), lines[4])
        self.assertIn(" 200 ", lines[4])
        self.assertIn(" 5 ", lines[4])  # body bytes
        self.assertIn("DOWN", err)
        self.assertIn("UP", err)
        self.assertEqual(len(err.splitlines()), 2, err)
        # What the server saw: one plain HTTP/1.1 GET per try, closing.
        first = server.requests[0]
        self.assertTrue(first.startswith(b"GET /health?x=1 HTTP/1.1\r\n"), first)
        self.assertIn(b"\r\nHost: 127.0.0.1:%d\r\n" % server.port, first)
        self.assertIn(b"\r\nConnection: close\r\n", first)

    def test_exit_status_is_the_last_try(self) -> None:
        server = ScriptedServer(self, [OK, ERROR])
        url = f"http://127.0.0.1:{server.port}/"
        status, out, _ = run_ctl(self, "probe", url, "--count", "2", "--interval", "0")
        self.assertEqual(status, 1)
        self.assertEqual(len(out.splitlines()), 3)

    def test_json_lines(self) -> None:
        server = ScriptedServer(self, [CHUNKED])
        url = f"http://127.0.0.1:{server.port}/"
        status, out, _ = run_ctl(self, "probe", url, "--count", "1", "--json")
        self.assertEqual(status, 0)
        record = json.loads(out)
        self.assertEqual((record["status"], record["bytes"], record["ok"]), (200, 7, True))
        self.assertIsNone(record["tls_ms"])
        self.assertLessEqual(record["connect_ms"], record["first_byte_ms"])
        self.assertLessEqual(record["first_byte_ms"], record["last_byte_ms"])

    def test_refused(self) -> None:
        url = f"http://127.0.0.1:{closed_port()}/"
        status, out, _ = run_ctl(self, "probe", url, "--count", "1", "--json")
        self.assertEqual(status, 1)
        record = json.loads(out)
        self.assertIn("refused", record["error"])
        self.assertIsNone(record["connect_ms"])

    def test_timeout(self) -> None:
        server = ScriptedServer(self, [HANG])
        url = f"http://127.0.0.1:{server.port}/"
        status, out, _ = run_ctl(self, "probe", url, "--count", "1", "--timeout", "0.3", "--json")
        self.assertEqual(status, 1)
        record = json.loads(out)
        self.assertEqual(record["error"], "timeout: no first byte within 0.3 s")
        self.assertIsNotNone(record["connect_ms"])
        self.assertIsNone(record["first_byte_ms"])

    def test_no_alert_command_still_says_down_on_stderr(self) -> None:
        url = f"http://127.0.0.1:{closed_port()}/"
        status, _, err = run_ctl(self, "probe", url, "--count", "3", "--interval", "0")
        self.assertEqual(status, 1)
        self.assertIn("DOWN", err)

    def test_a_failing_alert_command_is_reported(self) -> None:
        url = f"http://127.0.0.1:{closed_port()}/"
        status, _, err = run_ctl(
            self, "probe", url, "--count", "3", "--interval", "0", "--alert", "exit 7"
        )
        self.assertEqual(status, 1)
        self.assertIn("the alert command exited with status 7", err)


class ProbeTLSTests(SynchronousTestCase):
    def setUp(self) -> None:
        d = tempdir(self)
        ca = make_ca()
        self.cafile = os.path.join(d, "ca.pem")
        with open(self.cafile, "wb") as f:
            f.write(ca)
        server_pem = os.path.join(d, "server.pem")
        with open(server_pem, "wb") as f:
            f.write(make_cert(["localhost"], ips=["127.0.0.1"], ca=ca))
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(server_pem)

    def probe(self, host: str, *options: str) -> tuple[int, dict[str, object]]:
        server = ScriptedServer(self, [OK], tls=self.tls)
        status, out, _ = run_ctl(
            self, "probe", f"https://{host}:{server.port}/", "--count", "1", "--json", *options
        )
        return status, json.loads(out)

    def test_verified_and_the_tls_column_filled(self) -> None:
        status, record = self.probe("127.0.0.1", "--cacert", self.cafile)
        self.assertEqual(status, 0, record)
        self.assertEqual((record["status"], record["bytes"]), (200, 5))
        times = [record[k] for k in ("connect_ms", "tls_ms", "first_byte_ms", "last_byte_ms")]
        self.assertNotIn(None, times)
        self.assertEqual(times, sorted(times))  # type: ignore[type-var]

    def test_by_name(self) -> None:
        status, record = self.probe("localhost", "--cacert", self.cafile)
        self.assertEqual(status, 0, record)

    def test_unknown_ca_fails(self) -> None:
        status, record = self.probe("127.0.0.1")
        self.assertEqual(status, 1)
        self.assertIn("certificate verify failed", str(record["error"]))
        self.assertIn("--cacert", str(record["error"]))

    def test_insecure_skips_the_check(self) -> None:
        status, record = self.probe("127.0.0.1", "--insecure")
        self.assertEqual(status, 0, record)
        self.assertIsNotNone(record["tls_ms"])

    def test_plain_http_server_on_an_https_url(self) -> None:
        server = ScriptedServer(self, [OK])
        url = f"https://127.0.0.1:{server.port}/"
        status, out, _ = run_ctl(self, "probe", url, "--count", "1", "--json")
        self.assertEqual(status, 1)
        self.assertIn("TLS", json.loads(out)["error"])

    def test_unreadable_cacert(self) -> None:
        status, _, err = run_ctl(self, "probe", "https://127.0.0.1:1/", "--cacert", "/nonexistent")
        self.assertEqual(status, 2)
        self.assertEqual(
            err,
            "dlba-ctl: probe: cannot read the CA file /nonexistent: No such file or directory\n",
        )


class TargetTests(SynchronousTestCase):
    def test_request(self) -> None:
        t = ctl.target("http://Example.com:8080/a%20b?q=1#frag")
        self.assertEqual((t.host, t.port, t.tls), ("example.com", 8080, False))
        self.assertEqual(
            t.request,
            b"GET /a%20b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\n"
            b"User-Agent: dlba-ctl/" + __version__.encode() + b" probe\r\n"
            b"Accept: */*\r\nConnection: close\r\n\r\n",
        )

    def test_default_ports_and_ipv6(self) -> None:
        t = ctl.target("https://[::1]")
        self.assertEqual((t.host, t.port, t.tls), ("::1", 443, True))
        self.assertIn(b"\r\nHost: [::1]\r\n", t.request)
        self.assertTrue(t.request.startswith(b"GET / HTTP/1.1\r\n"))
        self.assertIn(b"\r\nHost: h\r\n", ctl.target("http://h:80/").request)

    def test_bad_urls(self) -> None:
        for url in ("ftp://h/", "127.0.0.1:80", "http:///x", "http://h:99999/", "http://u:p@h/"):
            with self.assertRaises(ctl.CtlError) as e:
                ctl.target(url)
            self.assertEqual(e.exception.status, 2)
            self.assertIn(repr(url), str(e.exception))
        self.assertRaises(ctl.CtlError, ctl.target, "http://h/é")


LINE = '192.0.2.1 - - [10/Mar/2025:10:{m:02d}:00 +0100] "GET /{path} HTTP/1.1" 200 10 "-" "ua"\n'


def write_log(path: str, minutes: Sequence[int], path_name: str = "p") -> None:
    data = "".join(LINE.format(m=m, path=path_name) for m in minutes).encode()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


class LogstatsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = tempdir(self)

    def test_plain_and_gzip_together(self) -> None:
        plain = os.path.join(self.dir, "access.log")
        packed = os.path.join(self.dir, "access.log.1.gz")
        write_log(plain, [1, 2, 2], "a")
        write_log(packed, [2, 2, 3], "b")
        status, out, err = run_ctl(self, "logstats", plain, packed, "--json", "--top", "1")
        self.assertEqual((status, err), (0, ""))
        report = json.loads(out)
        self.assertEqual(report["logs"], [plain, packed])
        self.assertEqual((report["lines"], report["hits"], report["bytes"]), (6, 6, 60))
        self.assertEqual(
            report["busiest_minutes"],
            [{"start": "2025-03-10T10:02:00+01:00", "hits": 4, "bytes": 40}],
        )
        self.assertEqual(report["busiest_hours"][0]["hits"], 6)
        self.assertEqual(report["urls"]["top"], [{"url": "/a", "hits": 3}])

    def test_gzip_found_by_its_magic_not_its_name(self) -> None:
        packed = os.path.join(self.dir, "access.log.gz")
        write_log(packed, [1])
        renamed = os.path.join(self.dir, "access-log")
        os.rename(packed, renamed)
        status, out, _ = run_ctl(self, "logstats", renamed, "--json")
        self.assertEqual((status, json.loads(out)["hits"]), (0, 1))

    def test_truncated_gzip_counts_what_it_read_and_says_so(self) -> None:
        packed = os.path.join(self.dir, "access.log.gz")
        write_log(packed, list(range(60)) * 50)
        with open(packed, "rb") as f:
            data = f.read()
        with open(packed, "wb") as f:
            f.write(data[: len(data) // 2])
        status, out, err = run_ctl(self, "logstats", packed, "--json")
        self.assertEqual(status, 1)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn(packed, err)
        self.assertIn("cut short", err)
        hits = json.loads(out)["hits"]
        self.assertGreater(hits, 0)
        self.assertLess(hits, 3000)

    def test_text_report(self) -> None:
        plain = os.path.join(self.dir, "access.log")
        write_log(plain, [5, 5, 7])
        status, out, _ = run_ctl(self, "logstats", plain)
        self.assertEqual(status, 0)
        self.assertIn(
            "busiest minutes         hits  bytes\n2025-03-10 10:05 +0100     2     20\n", out
        )

    def test_stdin_gzip_and_malformed_lines(self) -> None:
        data = gzip.compress(b"garbage\n" + LINE.format(m=1, path="x").encode() + b"\n")
        proc = subprocess.run(
            [sys.executable, "-m", "dlba.ctl", "logstats", "-", "--json"],
            cwd=REPO,
            env=CHILD_ENV,
            input=data,
            capture_output=True,
            timeout=WAIT,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        report = json.loads(proc.stdout)
        self.assertEqual((report["lines"], report["hits"]), (3, 1))
        self.assertEqual(
            report["malformed"],
            {"count": 2, "first": [{"log": "stdin", "line": n} for n in (1, 3)]},
        )


class CommandLineTests(SynchronousTestCase):
    """What a shell sees: one line on stderr, a non-zero status, never a traceback."""

    def assertOneLineError(self, result: subprocess.CompletedProcess[str], status: int) -> str:
        self.assertEqual(result.returncode, status, result.stderr)
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        return lines[0]

    def test_missing_log(self) -> None:
        line = self.assertOneLineError(child("logstats", "/nonexistent/access.log"), 1)
        self.assertEqual(
            line,
            "dlba-ctl: logstats: cannot read /nonexistent/access.log: No such file or directory",
        )

    def test_missing_log_among_good_ones_fails_before_reading(self) -> None:
        good = os.path.join(tempdir(self), "a.log")
        write_log(good, [1])
        result = child("logstats", good, "/nonexistent.log")
        self.assertOneLineError(result, 1)
        self.assertEqual(result.stdout, "")

    def test_bad_url(self) -> None:
        line = self.assertOneLineError(child("probe", "ftp://example.com/"), 2)
        self.assertIn("ftp://example.com/", line)
        self.assertIn("http:// or https://", line)

    def test_bad_option(self) -> None:
        line = self.assertOneLineError(child("probe", "http://127.0.0.1/", "--count", "0"), 2)
        self.assertIn("--count", line)
        self.assertOneLineError(child("frobnicate"), 2)
        self.assertOneLineError(child(), 2)

    def test_unreachable(self) -> None:
        result = child("probe", f"http://127.0.0.1:{closed_port()}/", "--count", "1")
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stderr)
        self.assertIn("refused", result.stdout)

    def test_help(self) -> None:
        result = child("--help")
        self.assertEqual(result.returncode, 0)
        self.assertIn("probe", result.stdout)
        self.assertIn("logstats", result.stdout)
        result = child("probe", "--help")
        self.assertIn("5xx", result.stdout)

    def test_ctrl_c_exits_0_without_a_traceback(self) -> None:
        server = ScriptedServer(self, [OK])
        proc = subprocess.Popen(
            [sys.executable, "-m", "dlba.ctl", "probe", f"http://127.0.0.1:{server.port}/"],
            cwd=REPO,
            env=CHILD_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(proc.stderr.close)  # type: ignore[union-attr]
        self.addCleanup(proc.stdout.close)  # type: ignore[union-attr]
        assert proc.stdout is not None
        # Wait (bounded) for the first try's line: the probe is then between tries.
        out = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while out.count(b"\n") < 2 and sel.select(WAIT):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        self.assertEqual(out.count(b"\n"), 2, out)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
        self.assertEqual(proc.returncode, 0)
        self.assertNotIn(b"Traceback", err)
        self.assertEqual(err, b"")


class CertsInitTests(SynchronousTestCase):
    def config(self, d: str) -> str:
        path = os.path.join(d, "dlba.toml")
        with open(path, "w") as f:
            f.write(
                '[tls]\nca = "tls/ca.pem"\nnode_certificate = "tls/node{number}.pem"\n'
                'admin_certificate = "tls/admin.pem"\n' + node_tables((1, 2))
            )
        return path

    def test_init_writes_where_the_config_says_and_refuses_to_overwrite(self) -> None:
        import io
        from contextlib import redirect_stderr, redirect_stdout

        from dlba.ctl import main

        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = self.config(d)
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["certs", "init", "--config", path]), 0)
        names = sorted(os.path.basename(p) for p in out.getvalue().split())
        self.assertEqual(names, ["admin.pem", "ca.pem", "ca.pem.key", "node1.pem", "node2.pem"])
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertEqual(main(["certs", "init", "--config", path]), 1)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("pass --force", err.getvalue())
        with redirect_stdout(io.StringIO()):
            self.assertEqual(main(["certs", "init", "--config", path, "--force"]), 0)

    def test_init_needs_the_tls_paths(self) -> None:
        import io
        from contextlib import redirect_stderr

        from dlba.ctl import main

        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = os.path.join(d, "dlba.toml")
        with open(path, "w") as f:
            f.write(node_tables((1,)))
        err = io.StringIO()
        with redirect_stderr(err):
            self.assertEqual(main(["certs", "init", "--config", path]), 2)
        self.assertIn("tls.ca, tls.node_certificate, tls.admin_certificate", err.getvalue())
