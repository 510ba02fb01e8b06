"""dlba.config: the DESIGN §10 schema, its defaults, and errors that name file, line and key."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from textwrap import dedent
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from dlba.config import (
    ArrayNode,
    ArraySection,
    BackendConfig,
    Config,
    LimitsSection,
    ListenSection,
    LogSection,
    NodeSection,
    PersistenceSection,
    PoolConfig,
    RuleConfig,
    TLSSection,
    _Locator,
    load,
    parse,
    with_node,
)
from dlba.errors import ConfigError, ConfigErrors

# The example in DESIGN.md §10, verbatim.
DESIGN_EXAMPLE = """\
[node]
number = 1                         # which [[array.node]] this process is; --node overrides
state_dir = "/var/lib/dlba"        # generated certificates, pid files, logs

[listen]                           # Twisted endpoint strings; leave a key out to disable it
                                   # a listener without interface= binds to this node's own ip
http   = "tcp:80"
https  = "tcp:443"                 # TLS comes from [tls]
status = "tcp:7701"                # read-only status daemon (line protocol)
sync   = "tcp:7702"                # AMP control plane, mutual TLS from [tls]
admin  = "tcp:7780:interface=127.0.0.1"

[tls]
certificates = ["etc/tls/www.pem"] # PEM key + chain each; SNI picks by name; first is default
ca = "etc/tls/array-ca.pem"        # the array's own CA: sync peers and dlba-ctl must present a cert it signed
node_certificate = "etc/tls/node{number}.pem"   # {number} is this node's number
admin_certificate = "etc/tls/admin.pem"         # what dlba-ctl presents

[limits]
max_header_bytes = 8192
max_body_bytes = 10485760
header_timeout = 10.0              # seconds to receive a whole request head
idle_timeout = 60.0                # keep-alive idle
backend_connect_timeout = 3.0
backend_response_timeout = 30.0
max_client_connections = 10000
shutdown_grace = 10.0              # seconds in-flight requests may finish after SIGTERM

[array]
vip = "10.77.0.100"
interface = "eth0"                 # the interface facing the switch
table_size = 4093                  # client table buckets, fixed at start (prime)
bucket_idle_timeout = 300.0
sweep_delay = 2.0                  # pause after each full status sweep
sweep_timeout = 1.0
sweep_retries = 3
ping_interval = 0.5
ping_misses = 3                    # missed pings before an election

[[array.node]]                     # one per DLBA node; order = scheduler priority
number = 1
mac = "02:00:0a:4d:00:0b"
ip = "10.77.0.11"
weight = 1
enabled = true

[persistence]
cookie = "SpServer"                # the injected cookie
session_cookies = ["JSESSIONID", "PHPSESSID", "sessionid"]
session_params = ["jsessionid", "sid"]   # session ids carried in the URL
session_table_size = 100000        # learned session → back end entries, LRU + expiry
session_ttl = 1800.0

[[pool]]
name = "app"
policy = "cookie"                  # cookie | session | url-hash | least-load | round-robin
max_concurrent = 64                # per back end: the controlled-loading limit (start value)
adaptive = true                    # let the feedback controller move the limit
target = "latency"                 # latency | throughput: the metric kept in its band
queue_limit = 1024
queue_timeout = 5.0
backend_keepalive = true           # pooled persistent back-end connections

[[pool.backend]]
number = 1                         # the value the injected cookie carries
address = "127.0.0.1:9001"
weight = 1
enabled = true

[[rule]]                           # first match wins; no match → the first pool
pool = "app"
host = "shop.example.com"          # optional matchers: host, path_prefix, header, cookie
path_prefix = "/"
"""  # noqa: E501 (verbatim from DESIGN.md)

# A small valid file the error tests add to: one pool, one back end, an HTTP listener.
BASE = """\
[listen]
http = "tcp:8080"

[[pool]]
name = "app"

[[pool.backend]]
number = 1
address = "127.0.0.1:9001"
"""

THREE_NODES = """\
[[array.node]]
number = 1
mac = "02:00:00:00:00:01"
ip = "127.0.0.11"

[[array.node]]
number = 2
mac = "02:00:00:00:00:02"
ip = "127.0.0.12"

[[array.node]]
number = 3
mac = "02:00:00:00:00:03"
ip = "127.0.0.13"
"""

MARK = "# <--"


class TemporaryFiles(SynchronousTestCase):
    def temporary_directory(self) -> Path:
        # Not self.mktemp(): under pytest that lands in the working tree, not _trial_temp.
        directory = tempfile.mkdtemp(prefix="dlba-config-")
        self.addCleanup(shutil.rmtree, directory, True)
        return Path(directory)


class ErrorAssertions(TemporaryFiles):
    """Error tests mark the line the error must name with a ``# <--`` comment."""

    def assertConfigError(self, text: str, key: str, hint: str = "") -> ConfigError:
        text = dedent(text)
        marked = [n for n, line in enumerate(text.split("\n"), start=1) if MARK in line]
        expected_line = marked[0] if marked else None
        error: ConfigError = self.assertRaises(ConfigError, parse, text, "dlba.toml")
        where = "dlba.toml" if expected_line is None else f"dlba.toml:{expected_line}"
        prefix = f"{where}: {key}: " if key else f"{where}: "
        self.assertTrue(str(error).startswith(prefix), f"{str(error)!r} lacks {prefix!r}")
        self.assertEqual((error.line, error.key), (expected_line, key))
        self.assertIn(hint, error.hint)
        self.assertTrue(error.hint, "every error says what to do")
        return error

    def parses(self, text: str, path: str = "/etc/dlba/dlba.toml") -> Config:
        return parse(dedent(text), path)


class DesignExampleTests(SynchronousTestCase):
    def test_parses_to_expected_values(self) -> None:
        config = parse(DESIGN_EXAMPLE, "/srv/dlba/dlba.toml")
        self.assertEqual(
            config,
            Config(
                path="/srv/dlba/dlba.toml",
                node=NodeSection(number=1, state_dir="/var/lib/dlba"),
                listen=ListenSection(
                    http="tcp:80",
                    https="tcp:443",
                    status="tcp:7701",
                    sync="tcp:7702",
                    admin="tcp:7780:interface=127.0.0.1",
                ),
                tls=TLSSection(
                    certificates=("/srv/dlba/etc/tls/www.pem",),
                    ca="/srv/dlba/etc/tls/array-ca.pem",
                    node_certificate="/srv/dlba/etc/tls/node1.pem",
                    admin_certificate="/srv/dlba/etc/tls/admin.pem",
                ),
                limits=LimitsSection(),
                log=LogSection(access_log=None, json=False),
                array=ArraySection(
                    vip="10.77.0.100",
                    interface="eth0",
                    table_size=4093,
                    bucket_idle_timeout=300.0,
                    sweep_delay=2.0,
                    sweep_timeout=1.0,
                    sweep_retries=3,
                    ping_interval=0.5,
                    ping_misses=3,
                    nodes=(ArrayNode(number=1, mac="02:00:0a:4d:00:0b", ip="10.77.0.11"),),
                ),
                persistence=PersistenceSection(),
                pools=(
                    PoolConfig(
                        name="app",
                        backends=(BackendConfig(number=1, host="127.0.0.1", port=9001),),
                        policy="cookie",
                        max_concurrent=64,
                        adaptive=True,
                        target="latency",
                        queue_limit=1024,
                        queue_timeout=5.0,
                        backend_keepalive=True,
                    ),
                ),
                rules=(RuleConfig(pool="app", host="shop.example.com", path_prefix="/"),),
            ),
        )
        self.assertEqual(config.node_ip(), "10.77.0.11")
        self.assertEqual(config.pools[0].backends[0].address, "127.0.0.1:9001")

    def test_annotated_example_parses(self) -> None:
        """etc/dlba.toml, the file operators copy, is valid and uses every section."""
        path = Path(__file__).parent.parent / "etc" / "dlba.toml"
        config = load(str(path))
        self.assertEqual(config.path, str(path))
        self.assertTrue(config.listen.https)
        self.assertTrue(config.tls.certificates)
        self.assertTrue(config.array.nodes)
        self.assertTrue(config.pools)
        self.assertTrue(config.rules)
        self.assertIsNotNone(config.log.access_log)

    def test_annotated_example_names_every_key(self) -> None:
        """Every key the schema knows appears (set or commented out) in etc/dlba.toml."""
        text = (Path(__file__).parent.parent / "etc" / "dlba.toml").read_text()
        keys: dict[str, type[Any]] = {
            "node": NodeSection,
            "listen": ListenSection,
            "tls": TLSSection,
            "limits": LimitsSection,
            "log": LogSection,
            "array": ArraySection,
            "array.node": ArrayNode,
            "persistence": PersistenceSection,
            "pool": PoolConfig,
            "rule": RuleConfig,
        }
        for section, cls in keys.items():
            for name in (f.name for f in dataclasses.fields(cls)):
                if name in ("nodes", "backends"):
                    continue
                self.assertRegex(text, rf"(?m)^#? ?{name} *=", f"{section}.{name}")
        for name in ("number", "address", "weight", "enabled"):
            self.assertRegex(text, rf"(?m)^#? ?{name} *=")


class DefaultTests(SynchronousTestCase):
    def test_empty_file(self) -> None:
        """An empty file is every default: no listeners, so nothing is required."""
        self.assertEqual(parse("", "dlba.toml"), Config(path="dlba.toml"))

    def test_pool_and_backend_defaults(self) -> None:
        config = parse(BASE, "dlba.toml")
        self.assertEqual(
            config.pools,
            (PoolConfig(name="app", backends=(BackendConfig(1, "127.0.0.1", 9001),)),),
        )
        pool = config.pools[0]
        self.assertEqual(
            (pool.policy, pool.max_concurrent, pool.adaptive, pool.target),
            ("round-robin", 64, False, "latency"),
        )
        self.assertEqual(
            (pool.queue_limit, pool.queue_timeout, pool.backend_keepalive), (1024, 5.0, True)
        )
        backend = pool.backends[0]
        self.assertEqual((backend.weight, backend.enabled), (1, True))
        self.assertEqual(config.rules, ())

    def test_limits_extensions(self) -> None:
        config = parse(
            "[limits]\nbody_timeout = 7\nbackend_idle_timeout = 1.5\nbackend_failure_backoff = 2\n",
            "dlba.toml",
        )
        self.assertEqual(config.limits.body_timeout, 7.0)
        self.assertIsInstance(config.limits.body_timeout, float)
        self.assertEqual(config.limits.backend_idle_timeout, 1.5)
        self.assertEqual(config.limits.backend_failure_backoff, 2.0)

    def test_integer_accepted_as_float(self) -> None:
        config = parse("[limits]\nheader_timeout = 10\n", "dlba.toml")
        self.assertEqual(config.limits.header_timeout, 10.0)
        self.assertIsInstance(config.limits.header_timeout, float)

    def test_zero_where_zero_means_something(self) -> None:
        config = parse(
            "[limits]\nshutdown_grace = 0\nmax_body_bytes = 0\n"
            "[array]\nsweep_delay = 0\nsweep_retries = 1\n",
            "dlba.toml",
        )
        self.assertEqual(config.limits.shutdown_grace, 0.0)
        self.assertEqual(config.limits.max_body_bytes, 0)
        self.assertEqual((config.array.sweep_delay, config.array.sweep_retries), (0.0, 1))

    def test_node_number_free_without_array_nodes(self) -> None:
        self.assertEqual(parse("[node]\nnumber = 7\n", "x.toml").node.number, 7)


class LogTests(ErrorAssertions):
    def test_access_log_empty_is_off(self) -> None:
        self.assertIsNone(self.parses('[log]\naccess_log = ""\n').log.access_log)

    def test_access_log_and_json(self) -> None:
        config = self.parses('[log]\naccess_log = "/var/log/dlba/access.log"\njson = true\n')
        self.assertEqual(config.log, LogSection("/var/log/dlba/access.log", True))

    def test_json_must_be_bool(self) -> None:
        self.assertConfigError(
            """\
            [log]
            json = "yes"  # <--
            """,
            "log.json",
            "json = false",
        )

    def test_access_log_must_be_string(self) -> None:
        self.assertConfigError(
            """\
            [log]
            access_log = false  # <--
            """,
            "log.access_log",
        )


class HSTSTests(ErrorAssertions):
    def hsts(self, value: str) -> str | None:
        return self.parses(f"[tls]\nhsts = {value}\n").tls.hsts

    def test_off_by_default(self) -> None:
        self.assertIsNone(self.parses("").tls.hsts)
        self.assertIsNone(self.parses('[tls]\ncertificates = ["a.pem"]\n').tls.hsts)

    def test_good_values_are_sent_the_usual_way(self) -> None:
        for value, sent in [
            ('"max-age=31536000"', "max-age=31536000"),
            ('"max-age=0"', "max-age=0"),
            ('"max-age=300; includeSubDomains"', "max-age=300; includeSubDomains"),
            ('"max-age=300; preload"', "max-age=300; preload"),
            (
                '"MAX-AGE = 63072000 ;includesubdomains;PRELOAD"',
                "max-age=63072000; includeSubDomains; preload",
            ),
            (
                '" preload ; max-age=10 ; includeSubDomains ; "',
                "max-age=10; includeSubDomains; preload",
            ),
            ("'max-age=\"600\"'", "max-age=600"),  # RFC 6797's quoted form
        ]:
            self.assertEqual(self.hsts(value), sent, value)

    def test_bad_values(self) -> None:
        for value, problem in [
            ('"includeSubDomains"', "max-age is missing"),
            ('"max-age"', "max-age is nothing"),
            ('"max-age="', 'max-age is ""'),
            ('"max-age=-1"', 'max-age is "-1"'),
            ('"max-age=1.5"', 'max-age is "1.5"'),
            ('"max-age=a year"', 'max-age is "a year"'),
            ('"max-age=1; max-age=2"', "max-age is given twice"),
            ('"max-age=1; preload; PRELOAD"', "PRELOAD is given twice"),
            ('"max-age=1; preload=yes"', "preload takes no value"),
            ('"max-age=1; includeSubDomains=1"', "includeSubDomains takes no value"),
            ('"max-age=1, includeSubDomains"', 'max-age is "1, includeSubDomains"'),
            ('"max-age=1; =2"', "a directive without a name"),
            ('"max-age=1; report-uri=x"', 'unknown directive "report-uri"'),
            ('""', "is empty"),
            ('"  "', "is empty"),
        ]:
            error = self.assertConfigError(
                f"[tls]\ncertificates = []\nhsts = {value}  # <--\n", "tls.hsts", "hsts = "
            )
            self.assertIn(problem, error.problem, value)

    def test_near_miss_is_named(self) -> None:
        error = self.assertConfigError(
            '[tls]\nhsts = "max-age=1; includeSubDomain"  # <--\n',
            "tls.hsts",
            "did you mean includeSubDomains?",
        )
        self.assertEqual(
            str(error).split(" (")[0],
            'dlba.toml:2: tls.hsts: "max-age=1; includeSubDomain": unknown directive'
            ' "includeSubDomain"',
        )

    def test_annotated_example_value_parses(self) -> None:
        text = (Path(__file__).parent.parent / "etc" / "dlba.toml").read_text()
        [line] = [x for x in text.splitlines() if x.startswith("# hsts = ")]
        self.assertEqual(self.parses(f"[tls]\n{line[2:]}\n").tls.hsts, line[10:-1])

    def test_must_be_a_string(self) -> None:
        self.assertConfigError(
            "[tls]\nhsts = 31536000  # <--\n", "tls.hsts", 'hsts = "max-age=31536000'
        )
        self.assertConfigError("[tls]\nhsts = true  # <--\n", "tls.hsts")


class PathTests(TemporaryFiles):
    def test_relative_paths_resolve_against_config_directory(self) -> None:
        directory = self.temporary_directory()
        (directory / "dlba.toml").write_text(
            dedent(
                """\
                [node]
                number = 2
                state_dir = "state/node{number}"
                [tls]
                certificates = ["tls/www.pem", "/abs/other.pem"]
                ca = "tls/../tls/ca.pem"
                node_certificate = "tls/node{number}.pem"
                admin_certificate = "/etc/dlba/admin.pem"
                [log]
                access_log = "logs/access-{number}.log"
                """
            )
        )
        config = load(str(directory / "dlba.toml"))
        base = os.path.abspath(directory)
        self.assertEqual(config.node.state_dir, os.path.join(base, "state", "node2"))
        self.assertEqual(
            config.tls.certificates, (os.path.join(base, "tls", "www.pem"), "/abs/other.pem")
        )
        self.assertEqual(config.tls.ca, os.path.join(base, "tls", "ca.pem"))
        self.assertEqual(config.tls.node_certificate, os.path.join(base, "tls", "node2.pem"))
        self.assertEqual(config.tls.admin_certificate, "/etc/dlba/admin.pem")
        self.assertEqual(config.log.access_log, os.path.join(base, "logs", "access-2.log"))

    def test_files_need_not_exist(self) -> None:
        """Existence is the TLS loader's business, not the parser's."""
        config = parse('[tls]\ncertificates = ["nowhere/x.pem"]\n', "/nonexistent/dlba.toml")
        self.assertEqual(config.tls.certificates, ("/nonexistent/nowhere/x.pem",))


class NodeOverrideTests(ErrorAssertions):
    TEXT = '[node]\nnumber = 1\n[tls]\nnode_certificate = "/t/node{number}.pem"\n' + THREE_NODES

    def test_with_node(self) -> None:
        config = parse(self.TEXT, "x.toml")
        self.assertEqual(config.tls.node_certificate, "/t/node1.pem")
        second = with_node(config, 2)
        self.assertEqual(second.node.number, 2)
        self.assertEqual(second.node_ip(), "127.0.0.12")
        self.assertEqual(second.tls.node_certificate, "/t/node2.pem")
        # The placeholders survive a second override.
        self.assertEqual(with_node(second, 3).tls.node_certificate, "/t/node3.pem")

    def test_with_node_unknown_number(self) -> None:
        config = parse(self.TEXT, "x.toml")
        error = self.assertRaises(ConfigError, with_node, config, 4)
        self.assertEqual(
            str(error), "x.toml: --node: node 4 is not in [[array.node]] (use one of 1, 2, 3)"
        )

    def test_with_node_not_a_number(self) -> None:
        config = parse(self.TEXT, "x.toml")
        error = self.assertRaises(ConfigError, with_node, config, 0)
        self.assertEqual((error.line, error.key), (None, "--node"))

    def test_with_node_without_array_nodes(self) -> None:
        config = with_node(parse("", "x.toml"), 9)
        self.assertEqual(config.node.number, 9)

    def test_with_node_substitutes_every_placeholder(self) -> None:
        """state_dir, node_certificate and access_log of a parsed config follow the new
        number; the templates are a real field, not an attribute hung on the frozen Config."""
        text = self.TEXT.replace(
            "[tls]", '[log]\naccess_log = "/l/access-{number}.log"\n[tls]'
        ).replace("number = 1\n[log]", 'number = 1\nstate_dir = "/s/node{number}"\n[log]')
        config = parse(text, "x.toml")
        self.assertEqual(
            (config.node.state_dir, config.tls.node_certificate, config.log.access_log),
            ("/s/node1", "/t/node1.pem", "/l/access-1.log"),
        )
        third = with_node(config, 3)
        self.assertEqual(
            (third.node.state_dir, third.tls.node_certificate, third.log.access_log),
            ("/s/node3", "/t/node3.pem", "/l/access-3.log"),
        )
        self.assertEqual(third.placeholders, config.placeholders)
        assert third.placeholders is not None
        self.assertEqual(third.placeholders.state_dir, "/s/node{number}")
        self.assertEqual(set(vars(third)), {f.name for f in dataclasses.fields(Config)})
        # Back to node 1: equal to what parse gave, templates or not.
        self.assertEqual(with_node(third, 1), config)
        self.assertEqual(dataclasses.replace(config, placeholders=None), config)

    def test_with_node_on_a_hand_built_config(self) -> None:
        config = Config(path="x", tls=TLSSection(node_certificate="/t/n{number}.pem"))
        self.assertEqual(with_node(config, 5).tls.node_certificate, "/t/n5.pem")

    def test_parse_with_override_rescues_a_shared_file(self) -> None:
        """One file for every node: its own number may fit none, --node decides."""
        text = self.TEXT.replace("number = 1\n[tls]", "number = 9\n[tls]")
        self.assertRaises(ConfigError, parse, text, "x.toml")
        config = parse(text, "x.toml", node=3)
        self.assertEqual(config.node.number, 3)
        self.assertEqual(config.tls.node_certificate, "/t/node3.pem")

    def test_parse_with_unknown_override(self) -> None:
        error = self.assertRaises(ConfigError, parse, self.TEXT, "x.toml", node=5)
        self.assertEqual((error.line, error.key), (None, "--node"))

    def test_load_with_override(self) -> None:
        path = str(self.temporary_directory() / "dlba.toml")
        Path(path).write_text(self.TEXT)
        self.assertEqual(load(path, node=2).node.number, 2)


class LoadTests(TemporaryFiles):
    def test_missing_file(self) -> None:
        path = str(self.temporary_directory() / "dlba.toml")
        error = self.assertRaises(ConfigError, load, path)
        self.assertIsNone(error.line)
        self.assertTrue(str(error).startswith(f"{path}: cannot read the config file"))

    def test_byte_order_mark(self) -> None:
        path = str(self.temporary_directory() / "dlba.toml")
        Path(path).write_bytes(b"\xef\xbb\xbf[node]\nnumber = 2\n")
        self.assertEqual(load(path).node.number, 2)

    def test_not_utf8(self) -> None:
        path = str(self.temporary_directory() / "dlba.toml")
        Path(path).write_bytes(b"[node]\nstate_dir = '\xff'\n")
        error = self.assertRaises(ConfigError, load, path)
        self.assertEqual(error.line, 2)
        self.assertIn("UTF-8", str(error))


class SyntaxErrorTests(ErrorAssertions):
    def test_syntax_error_line(self) -> None:
        error = self.assertConfigError(
            """\
            [limits]
            header_timeout = 10
            idle_timeout = = 3  # <--
            """,
            "",
        )
        self.assertIn("TOML syntax: Invalid value", str(error))
        self.assertNotIn("column", str(error).split("(")[0])

    def test_duplicate_key_is_a_syntax_error(self) -> None:
        self.assertConfigError(
            """\
            [limits]
            header_timeout = 10
            header_timeout = 11  # <--
            """,
            "",
        )

    def test_error_at_end_of_document(self) -> None:
        error = self.assertRaises(ConfigError, parse, "[limits]\nx = [1,\n2,\n", "d.toml")
        self.assertEqual(error.line, 3)
        self.assertTrue(str(error).startswith("d.toml:3: TOML syntax"))


class LocatorTests(SynchronousTestCase):
    TEXT = dedent(
        """\
        # a comment = not a key
        [node]            # trailing [comment]
        number = 1
        [listen]
          http = "tcp:80"  # indented
        "https" = "tcp:443"
        [tls]
        certificates = [
            "a.pem",      # key = value inside an array is not a key
            "[b].pem",
        ]
        ca = '''
        [not.a.table]
        x = 1
        '''
        [[pool]]
        name = "a"
        [[pool.backend]]
        number = 1
        [[pool.backend]]
        number = 2
        [[pool]]
        name = "b"
        [[pool.backend]]
        address = "x:1"
        [pool.inline]
        sub.key = { a = 1 }
        [[rule]]
        pool = "a"
        [[rule]]
        pool = "b"
        """
    )

    def test_positions(self) -> None:
        locate = _Locator(self.TEXT).line
        self.assertEqual(locate(("node",)), 2)
        self.assertEqual(locate(("node", "number")), 3)
        self.assertEqual(locate(("listen", "http")), 5)
        self.assertEqual(locate(("listen", "https")), 6)
        self.assertEqual(locate(("tls", "certificates")), 8)
        self.assertEqual(locate(("tls", "certificates", 1)), 8)
        self.assertEqual(locate(("tls", "ca")), 12)
        self.assertEqual(locate(("not",)), None)
        self.assertEqual(locate(("tls", "x")), 7)
        self.assertEqual(locate(("pool", 0)), 16)
        self.assertEqual(locate(("pool", 0, "backend", 0, "number")), 19)
        self.assertEqual(locate(("pool", 0, "backend", 1, "number")), 21)
        self.assertEqual(locate(("pool", 1, "backend", 0)), 24)
        self.assertEqual(locate(("pool", 1, "backend", 0, "address")), 25)
        self.assertEqual(locate(("pool", 1, "backend", 0, "number")), 24)
        self.assertEqual(locate(("pool", 1, "inline", "sub", "key")), 27)
        self.assertEqual(locate(("pool", 1, "inline", "sub", "key", "a")), 27)
        self.assertEqual(locate(("rule", 1, "pool")), 31)
        self.assertEqual(locate(("rule", 0)), 28)

    def test_unknown_key_in_later_pool(self) -> None:
        text = BASE + '[[pool]]\nname = "b"\n[[pool.backend]]\nnumber = 2\nadress = "x:1"\n'
        error = self.assertRaises(ConfigError, parse, text, "dlba.toml")
        self.assertEqual(
            str(error),
            "dlba.toml:14: pool[2].backend[1].adress: unknown key (did you mean address?)",
        )


class UnknownKeyTests(ErrorAssertions):
    def test_unknown_section_with_suggestion(self) -> None:
        self.assertConfigError(
            """\
            [limit]  # <--
            header_timeout = 1
            """,
            "limit",
            "did you mean [limits]?",
        )

    def test_unknown_array_section_with_suggestion(self) -> None:
        self.assertConfigError(
            """\
            [[pools]]  # <--
            name = "x"
            """,
            "pools",
            "did you mean [[pool]]?",
        )

    def test_unknown_section_without_suggestion(self) -> None:
        error = self.assertConfigError("[frobnicate]  # <--\n", "frobnicate", "sections are")
        self.assertIn("[node]", error.hint)

    def test_unknown_top_level_list(self) -> None:
        self.assertConfigError("pools = [1]  # <--\n", "pools", "did you mean pool?")

    def test_unknown_top_level_key(self) -> None:
        self.assertConfigError("nmber = 3  # <--\n[node]\n", "nmber", "put keys under a [section]")

    def test_unknown_key_with_suggestion(self) -> None:
        self.assertConfigError(
            """\
            [limits]
            max_header_bytes = 100
            header_timout = 10  # <--
            """,
            "limits.header_timout",
            "did you mean header_timeout?",
        )

    def test_unknown_key_without_suggestion(self) -> None:
        error = self.assertConfigError(
            """\
            [node]
            colour = "blue"  # <--
            """,
            "node.colour",
            "[node] takes number, state_dir",
        )
        self.assertEqual(
            str(error).split(": ", 2)[2], "unknown key ([node] takes number, state_dir)"
        )

    def test_unknown_key_in_backend(self) -> None:
        self.assertConfigError(
            BASE + "weigth = 2  # <--\n", "pool[1].backend[1].weigth", "did you mean weight?"
        )

    def test_unknown_key_in_array_node(self) -> None:
        self.assertConfigError(
            THREE_NODES + 'macaddr = "x"  # <--\n', "array.node[3].macaddr", "did you mean mac?"
        )

    def test_unknown_key_in_rule(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\nhosts = "x"  # <--\n',
            "rule[1].hosts",
            "did you mean host?",
        )

    def test_misspelt_sub_table(self) -> None:
        self.assertConfigError(
            BASE + "[[pool.backends]]  # <--\nnumber = 2\n",
            "pool[1].backends",
            "did you mean backend?",
        )

    def test_quoted_key(self) -> None:
        self.assertConfigError('[listen]\n"ht tp" = "tcp:1"  # <--\n', 'listen."ht tp"')

    def test_dotted_key(self) -> None:
        self.assertConfigError('[node]\nstate.dir = "x"  # <--\n', "node.state")


class StructureTests(ErrorAssertions):
    def test_section_must_be_table(self) -> None:
        self.assertConfigError("limits = 5  # <--\n", "limits", "write [limits]")

    def test_pool_must_be_array_of_tables(self) -> None:
        self.assertConfigError(
            """\
            [pool]  # <--
            name = "app"
            """,
            "pool",
            "write [[pool]] (double brackets)",
        )

    def test_array_node_must_be_array_of_tables(self) -> None:
        self.assertConfigError(
            "[array.node]  # <--\nnumber = 1\n", "array.node", "write [[array.node]]"
        )

    def test_inline_array_of_non_tables(self) -> None:
        self.assertConfigError("rule = [1, 2]  # <--\n", "rule[1]", "[[rule]]")

    def test_missing_required_key_points_at_its_table(self) -> None:
        self.assertConfigError(
            BASE + "[[pool.backend]]  # <--\nnumber = 2\n",
            "pool[1].backend[2].address",
            "add address = ... under this [[pool.backend]]",
        )

    def test_missing_pool_name(self) -> None:
        self.assertConfigError(
            """\
            [[pool]]  # <--
            policy = "cookie"
            [[pool.backend]]
            number = 1
            address = "a:1"
            """,
            "pool[1].name",
        )

    def test_missing_array_node_mac(self) -> None:
        self.assertConfigError(
            """\
            [[array.node]]
            number = 1
            mac = "02:00:00:00:00:01"
            ip = "10.0.0.1"
            [[array.node]]  # <--
            number = 2
            ip = "10.0.0.2"
            """,
            "array.node[2].mac",
        )


class TypeTests(ErrorAssertions):
    def test_quoted_number(self) -> None:
        self.assertConfigError(
            '[limits]\nmax_header_bytes = "8192"  # <--\n',
            "limits.max_header_bytes",
            "remove the quotes: max_header_bytes = 8192",
        )

    def test_bool_is_not_an_integer(self) -> None:
        error = self.assertConfigError(
            "[limits]\nmax_client_connections = true  # <--\n", "limits.max_client_connections"
        )
        self.assertIn("must be a whole number, not true", str(error))
        self.assertEqual(error.hint, "e.g. max_client_connections = 10000")

    def test_bool_is_not_a_float(self) -> None:
        self.assertConfigError("[limits]\nidle_timeout = false  # <--\n", "limits.idle_timeout")

    def test_float_is_not_an_integer(self) -> None:
        self.assertConfigError("[array]\nping_misses = 2.5  # <--\n", "array.ping_misses")

    def test_string_expected(self) -> None:
        self.assertConfigError("[node]\nstate_dir = 5  # <--\n", "node.state_dir")

    def test_list_of_strings_expected(self) -> None:
        self.assertConfigError(
            '[tls]\ncertificates = "www.pem"  # <--\n', "tls.certificates", "certificates = ["
        )

    def test_list_item_must_be_string(self) -> None:
        self.assertConfigError('[tls]\ncertificates = ["a.pem", 3]  # <--\n', "tls.certificates[2]")
        # In a multi-line list the key's own line is named.
        self.assertConfigError(
            '[tls]\ncertificates = [  # <--\n  "a.pem",\n  3,\n]\n', "tls.certificates[2]"
        )

    def test_list_item_must_not_be_empty(self) -> None:
        self.assertConfigError(
            '[persistence]\nsession_params = ["sid", ""]  # <--\n', "persistence.session_params[2]"
        )

    def test_string_for_bool(self) -> None:
        self.assertConfigError(
            BASE.replace('name = "app"', 'name = "app"\nadaptive = "true"  # <--'),
            "pool[1].adaptive",
        )

    def test_not_finite(self) -> None:
        self.assertConfigError("[limits]\nheader_timeout = nan  # <--\n", "limits.header_timeout")
        self.assertConfigError("[limits]\nheader_timeout = inf  # <--\n", "limits.header_timeout")

    def test_datetime(self) -> None:
        self.assertConfigError(
            "[limits]\nidle_timeout = 1979-05-27  # <--\n", "limits.idle_timeout"
        )


class ValueTests(ErrorAssertions):
    def test_negative_timeout(self) -> None:
        error = self.assertConfigError(
            "[limits]\nheader_timeout = -1  # <--\n", "limits.header_timeout", "seconds"
        )
        self.assertIn("must be more than 0, not -1", str(error))

    def test_zero_timeout(self) -> None:
        for key in (
            "header_timeout",
            "body_timeout",
            "idle_timeout",
            "backend_connect_timeout",
            "backend_response_timeout",
            "backend_idle_timeout",
            "backend_failure_backoff",
        ):
            self.assertConfigError(f"[limits]\n{key} = 0  # <--\n", f"limits.{key}")
        for key in ("bucket_idle_timeout", "sweep_timeout", "ping_interval"):
            self.assertConfigError(f"[array]\n{key} = 0.0  # <--\n", f"array.{key}")
        self.assertConfigError("[persistence]\nsession_ttl = 0  # <--\n", "persistence.session_ttl")
        self.assertConfigError(
            BASE.replace('name = "app"', 'name = "app"\nqueue_timeout = 0  # <--'),
            "pool[1].queue_timeout",
        )

    def test_negative_grace(self) -> None:
        self.assertConfigError("[limits]\nshutdown_grace = -0.5  # <--\n", "limits.shutdown_grace")

    def test_sizes(self) -> None:
        self.assertConfigError("[limits]\nmax_header_bytes = 0  # <--\n", "limits.max_header_bytes")
        self.assertConfigError("[limits]\nmax_body_bytes = -1  # <--\n", "limits.max_body_bytes")
        self.assertConfigError(
            "[limits]\nmax_client_connections = 0  # <--\n", "limits.max_client_connections"
        )
        self.assertConfigError(
            "[persistence]\nsession_table_size = 0  # <--\n", "persistence.session_table_size"
        )
        self.assertConfigError("[array]\nping_misses = 0  # <--\n", "array.ping_misses")
        self.assertConfigError("[array]\nsweep_retries = 0  # <--\n", "array.sweep_retries")
        self.assertConfigError("[node]\nnumber = 0  # <--\n", "node.number")

    def test_table_size_prime(self) -> None:
        error = self.assertConfigError(
            "[array]\ntable_size = 4096  # <--\n", "array.table_size", "e.g. 4099"
        )
        self.assertIn("4096 is not a prime number", str(error))
        self.assertConfigError("[array]\ntable_size = 2  # <--\n", "array.table_size")
        self.assertConfigError("[array]\ntable_size = 1  # <--\n", "array.table_size")
        for prime in (3, 65521, 1000000007, 2305843009213693951):
            self.assertEqual(parse(f"[array]\ntable_size = {prime}\n", "x").array.table_size, prime)
        # A big composite with no small factor answers at once too.
        self.assertConfigError(
            f"[array]\ntable_size = {1000000007 * 998244353}  # <--\n", "array.table_size"
        )

    def test_interface_name(self) -> None:
        self.assertConfigError('[array]\ninterface = "eth 0"  # <--\n', "array.interface")
        self.assertConfigError('[array]\ninterface = ""  # <--\n', "array.interface")


class ArrayNodeTests(ErrorAssertions):
    def test_node_number_must_be_an_array_node(self) -> None:
        self.assertConfigError(
            "[node]\nnumber = 4  # <--\n" + THREE_NODES,
            "node.number",
            "set it to one of 1, 2, 3 or pass --node",
        )

    def test_default_node_number_must_be_an_array_node(self) -> None:
        """With no [node] section the error points at the first [[array.node]]."""
        text = THREE_NODES.replace("number = 1", "number = 5").replace(
            "[[array.node]]\nnumber = 5", "[[array.node]]  # <--\nnumber = 5"
        )
        self.assertConfigError(text, "node.number")

    def test_mac_syntax(self) -> None:
        self.assertConfigError(
            THREE_NODES.replace('"02:00:00:00:00:02"', '"02:00:00:00:00"  # <--'),
            "array.node[2].mac",
            "six hex pairs",
        )
        self.assertConfigError(
            THREE_NODES.replace('"02:00:00:00:00:02"', '"02:00:00-00:00:02"  # <--'),
            "array.node[2].mac",
        )

    def test_multicast_mac(self) -> None:
        self.assertConfigError(
            THREE_NODES.replace('"02:00:00:00:00:03"', '"ff:ff:ff:ff:ff:ff"  # <--'),
            "array.node[3].mac",
        )

    def test_mac_normalised(self) -> None:
        text = THREE_NODES.replace('"02:00:00:00:00:02"', '"02-0A-00-00-00-02"')
        self.assertEqual(parse(text, "x").array.nodes[1].mac, "02:0a:00:00:00:02")

    def test_ip_syntax(self) -> None:
        self.assertConfigError(
            THREE_NODES.replace('"127.0.0.12"', '"127.0.0.300"  # <--'), "array.node[2].ip"
        )

    def test_ipv6_node(self) -> None:
        text = THREE_NODES.replace('"127.0.0.12"', '"fd00:0::12"')
        self.assertEqual(parse(text, "x").array.nodes[1].ip, "fd00::12")

    def test_vip_syntax(self) -> None:
        self.assertConfigError('[array]\nvip = "10.77.0"  # <--\n', "array.vip", "IPv4 or IPv6")

    def test_vip_is_not_a_node_ip(self) -> None:
        self.assertConfigError(
            '[array]\nvip = "127.0.0.12"\n'
            + THREE_NODES.replace('"127.0.0.12"', '"127.0.0.12"  # <--'),
            "array.node[2].ip",
        )

    def test_duplicates(self) -> None:
        for attr, old, new in (
            ("number", "number = 3", "number = 1  # <--"),
            ("mac", '"02:00:00:00:00:03"', '"02:00:00:00:00:01"  # <--'),
            ("ip", '"127.0.0.13"', '"127.0.0.11"  # <--'),
        ):
            error = self.assertConfigError(
                THREE_NODES.replace(old, new), f"array.node[3].{attr}", f"its own {attr}"
            )
            self.assertIn("array.node[1] (line ", str(error))

    def test_weight(self) -> None:
        self.assertConfigError(
            THREE_NODES.replace('ip = "127.0.0.12"', 'ip = "127.0.0.12"\nweight = 0  # <--'),
            "array.node[2].weight",
            "enabled = false",
        )


class ListenTests(ErrorAssertions):
    def test_good_endpoints(self) -> None:
        config = self.parses(
            BASE.replace('http = "tcp:8080"', 'http = "tcp:port=8080:interface=10.0.0.1"')
        )
        self.assertEqual(config.listen.http, "tcp:port=8080:interface=10.0.0.1")
        text = (
            '[listen]\nstatus = "tcp:0"\nsync = "tcp6:7702:interface=\\\\:\\\\:1"\n'
            'admin = "unix:/run/dlba/admin.sock"\n'
            '[tls]\nca = "ca.pem"\nnode_certificate = "node{number}.pem"\n'
        )
        config = parse(text, "x")
        self.assertEqual(config.listen.sync, "tcp6:7702:interface=\\:\\:1")
        self.assertEqual(config.listen.admin, "unix:/run/dlba/admin.sock")
        config = parse('[listen]\nstatus = "systemd:domain=INET:index=0"\n', "x")
        self.assertEqual(config.listen.status, "systemd:domain=INET:index=0")

    def test_sync_needs_the_array_certificates(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse('[listen]\nsync = "tcp:7702"\n[tls]\nca = "ca.pem"\n', "x")
        self.assertEqual(caught.exception.key, "tls.node_certificate")
        self.assertIn("dlba-ctl certs init", str(caught.exception))

    def test_bare_port(self) -> None:
        self.assertConfigError(
            '[listen]\nstatus = "7701"  # <--\n', "listen.status", 'write status = "tcp:7701"'
        )

    def test_integer_port(self) -> None:
        self.assertConfigError(
            "[listen]\nstatus = 7701  # <--\n", "listen.status", 'status = "tcp:7701"'
        )

    def test_unknown_type(self) -> None:
        self.assertConfigError(
            '[listen]\nadmin = "http:8080"  # <--\n', "listen.admin", "start it with one of tcp:"
        )

    def test_empty(self) -> None:
        self.assertConfigError(
            '[listen]\nadmin = ""  # <--\n', "listen.admin", "leave the key out to disable"
        )

    def test_tcp_without_port(self) -> None:
        self.assertConfigError('[listen]\nstatus = "tcp:"  # <--\n', "listen.status")
        self.assertConfigError(
            '[listen]\nstatus = "tcp:interface=1.2.3.4"  # <--\n', "listen.status"
        )

    def test_port_out_of_range(self) -> None:
        self.assertConfigError('[listen]\nstatus = "tcp:70000"  # <--\n', "listen.status")

    def test_unix_without_path(self) -> None:
        self.assertConfigError('[listen]\nstatus = "unix:"  # <--\n', "listen.status")

    def test_http_needs_a_pool(self) -> None:
        self.assertConfigError(
            '[listen]\nhttp = "tcp:80"  # <--\n', "listen.http", "add a [[pool]]"
        )

    def test_https_needs_a_pool(self) -> None:
        self.assertConfigError(
            '[listen]\nhttps = "tcp:443"  # <--\n[tls]\ncertificates = ["x.pem"]\n',
            "listen.https",
        )

    def test_https_needs_certificates(self) -> None:
        text = BASE.replace('http = "tcp:8080"', 'https = "tcp:8443"  # <--')
        self.assertConfigError(text, "tls.certificates", "list at least one PEM file")
        self.assertConfigError(
            text.replace("  # <--", "") + "[tls]\ncertificates = []  # <--\n", "tls.certificates"
        )

    def test_same_endpoint_twice(self) -> None:
        self.assertConfigError(
            '[listen]\nstatus = "tcp:7701"\nsync = "tcp:7701"  # <--\n',
            "listen.sync",
            "its own port",
        )

    def test_status_alone_needs_no_pool(self) -> None:
        self.assertEqual(parse('[listen]\nstatus = "tcp:1"\n', "x").pools, ())


class PoolTests(ErrorAssertions):
    def test_policy(self) -> None:
        for policy in ("cookie", "session", "url-hash", "least-load", "round-robin"):
            text = BASE.replace('name = "app"', f'name = "app"\npolicy = "{policy}"')
            self.assertEqual(self.parses(text).pools[0].policy, policy)
        self.assertConfigError(
            BASE.replace('name = "app"', 'name = "app"\npolicy = "url_hash"  # <--'),
            "pool[1].policy",
            'did you mean "url-hash"?',
        )

    def test_target(self) -> None:
        text = BASE.replace('name = "app"', 'name = "app"\ntarget = "throughput"')
        self.assertEqual(self.parses(text).pools[0].target, "throughput")
        self.assertConfigError(
            BASE.replace('name = "app"', 'name = "app"\ntarget = "speed"  # <--'),
            "pool[1].target",
            '"latency", "throughput"',
        )

    def test_max_concurrent(self) -> None:
        self.assertConfigError(
            BASE.replace('name = "app"', 'name = "app"\nmax_concurrent = 0  # <--'),
            "pool[1].max_concurrent",
        )

    def test_queue_limit(self) -> None:
        text = BASE.replace('name = "app"', 'name = "app"\nqueue_limit = 0')
        self.assertEqual(self.parses(text).pools[0].queue_limit, 0)
        self.assertConfigError(
            BASE.replace('name = "app"', 'name = "app"\nqueue_limit = -1  # <--'),
            "pool[1].queue_limit",
        )

    def pool_with(self, lines: str) -> str:
        return BASE.replace('name = "app"', 'name = "app"\nqueue_limit = 100\n' + lines)

    def test_admission_thresholds(self) -> None:
        pool = self.parses(BASE).pools[0]
        self.assertEqual((pool.refuse_connections_at, pool.accept_connections_at), (0.75, 0.375))
        for lines, expected in [
            ("refuse_connections_at = 0.5\naccept_connections_at = 0.25", (0.5, 0.25)),
            ("refuse_connections_at = 1\naccept_connections_at = 0", (1.0, 0.0)),
            ("refuse_connections_at = 0", (0.0, 0.375)),  # never refuse connections
            ("refuse_connections_at = 0\naccept_connections_at = 0.9", (0.0, 0.9)),
            ("accept_connections_at = 0.5", (0.75, 0.5)),
        ]:
            pool = self.parses(self.pool_with(lines)).pools[0]
            self.assertEqual(
                (pool.refuse_connections_at, pool.accept_connections_at), expected, lines
            )

    def test_admission_thresholds_reach_the_router(self) -> None:
        from dlba.routing import backend_table, build_router

        config = self.parses(
            self.pool_with("refuse_connections_at = 0.5\naccept_connections_at = 0.1")
        )
        admission = build_router(config, backend_table(config)).pools[0].admission
        self.assertEqual((admission.high, admission.low), (50, 10))
        config = self.parses(self.pool_with("refuse_connections_at = 0"))
        admission = build_router(config, backend_table(config)).pools[0].admission
        self.assertTrue(admission.accept_connections(100))

    def test_admission_threshold_errors(self) -> None:
        key = "pool[1].refuse_connections_at"
        self.assertConfigError(self.pool_with("refuse_connections_at = 1.5  # <--"), key, "0 to 1")
        self.assertConfigError(self.pool_with("refuse_connections_at = -0.5  # <--"), key, "0 to 1")
        self.assertConfigError(
            self.pool_with('refuse_connections_at = "0.5"  # <--'), key, "remove the quotes"
        )
        error = self.assertConfigError(
            self.pool_with("refuse_connections_at = 0.25  # <--"),
            key,
            "add accept_connections_at = 0.125",
        )
        self.assertIn("above accept_connections_at (0.375, its default)", error.problem)
        key = "pool[1].accept_connections_at"
        self.assertConfigError(self.pool_with("accept_connections_at = 2  # <--"), key, "0 to 1")
        error = self.assertConfigError(
            self.pool_with("refuse_connections_at = 0.5\naccept_connections_at = 0.5  # <--"),
            key,
            "accept_connections_at = 0.25",
        )
        self.assertEqual(error.problem, "must be below refuse_connections_at (0.5), not 0.5")
        self.assertConfigError(
            self.pool_with("accept_connections_at = 0.8  # <--"), key, "e.g. accept_connections_at"
        )

    def test_pool_without_backends(self) -> None:
        self.assertConfigError(
            BASE + '[[pool]]  # <--\nname = "empty"\n', "pool[2].backend", "add a [[pool.backend]]"
        )

    def test_duplicate_pool_name(self) -> None:
        error = self.assertConfigError(
            BASE + '[[pool]]\nname = "app"  # <--\n[[pool.backend]]\nnumber = 2\naddress = "b:1"\n',
            "pool[2].name",
            "its own name",
        )
        self.assertIn("(line 5)", str(error))

    def test_empty_pool_name(self) -> None:
        self.assertConfigError(BASE.replace('"app"', '""  # <--'), "pool[1].name")


class BackendTests(ErrorAssertions):
    def backend(self, address: str) -> BackendConfig:
        return self.parses(BASE.replace('"127.0.0.1:9001"', f'"{address}"')).pools[0].backends[0]

    def bad_address(self, address: str, problem: str) -> None:
        error = self.assertConfigError(
            BASE.replace('"127.0.0.1:9001"', f'"{address}"  # <--'),
            "pool[1].backend[1].address",
            "host:port",
        )
        self.assertIn(problem, str(error))

    def test_addresses(self) -> None:
        self.assertEqual(
            self.backend("web-1.example.com:80"), BackendConfig(1, "web-1.example.com", 80)
        )
        self.assertEqual(
            self.backend("[2001:db8:0::5]:8080"), BackendConfig(1, "2001:db8::5", 8080)
        )
        self.assertEqual(self.backend("[2001:db8::5]:8080").address, "[2001:db8::5]:8080")
        self.assertEqual(self.backend("10.0.0.5:65535").port, 65535)

    def test_bad_addresses(self) -> None:
        self.bad_address("10.0.0.5", "there is no port")
        self.bad_address("10.0.0.5:0", "not a number from 1 to 65535")
        self.bad_address("10.0.0.5:65536", "not a number from 1 to 65535")
        self.bad_address("10.0.0.5:http", "not a number from 1 to 65535")
        self.bad_address("2001:db8::5:80", "an IPv6 address needs brackets")
        self.bad_address("[2001:db8::zz]:80", "is not an IPv6 address")
        self.bad_address("10.0.0.256:80", "is not an IPv4 address")
        self.bad_address("web_1 .example:80", "is not a host name")
        self.bad_address(":80", "is not a host name")

    def test_number_at_least_one(self) -> None:
        self.assertConfigError(
            BASE.replace("number = 1", "number = 0  # <--"), "pool[1].backend[1].number"
        )

    def test_number_required(self) -> None:
        self.assertConfigError(
            BASE.replace("[[pool.backend]]\nnumber = 1\n", "[[pool.backend]]  # <--\n"),
            "pool[1].backend[1].number",
        )

    def test_weight_at_least_one(self) -> None:
        self.assertConfigError(
            BASE + "weight = 0  # <--\n", "pool[1].backend[1].weight", "enabled = false"
        )

    def test_duplicate_number_in_pool(self) -> None:
        error = self.assertConfigError(
            BASE + '[[pool.backend]]\nnumber = 1  # <--\naddress = "127.0.0.1:9002"\n',
            "pool[1].backend[2].number",
            "its own number",
        )
        self.assertIn("used twice in this pool (also line 8)", str(error))

    def test_same_number_across_pools(self) -> None:
        second = '[[pool]]\nname = "b"\n[[pool.backend]]\nnumber = 1\naddress = "{}"\n'
        config = self.parses(BASE + second.format("127.0.0.1:9001"))
        self.assertEqual(config.pools[1].backends[0].number, 1)
        error = self.assertConfigError(
            BASE + second.format("127.0.0.1:9002").replace("number = 1\n", "number = 1  # <--\n"),
            "pool[2].backend[1].number",
            "one server in every pool",
        )
        self.assertIn("127.0.0.1:9001 in pool[1].backend[1] but 127.0.0.1:9002 here", str(error))

    def test_disabled(self) -> None:
        self.assertFalse(self.parses(BASE + "enabled = false\n").pools[0].backends[0].enabled)


class RuleTests(ErrorAssertions):
    def test_catch_all(self) -> None:
        config = self.parses(BASE + '[[rule]]\npool = "app"\n')
        self.assertEqual(config.rules, (RuleConfig(pool="app"),))

    def test_matchers(self) -> None:
        config = self.parses(
            BASE
            + '[[rule]]\npool = "app"\nhost = "shop.example.com"\npath_prefix = "/api/"\n'
            + 'header = "X-Canary=1"\ncookie = "beta"\n'
            + '[[rule]]\npool = "app"\nheader = "X-Empty="\ncookie = "v=a=b"\n'
        )
        self.assertEqual(
            config.rules,
            (
                RuleConfig("app", "shop.example.com", "/api/", "X-Canary=1", "beta"),
                RuleConfig("app", header="X-Empty=", cookie="v=a=b"),
            ),
        )

    def test_unknown_pool(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "ap"  # <--\n', "rule[1].pool", 'did you mean "app"?'
        )

    def test_pool_required(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]  # <--\nhost = "x"\n',
            "rule[1].pool",
            "add pool = ... under this [[rule]]",
        )

    def test_bad_header_name(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\nheader = "X Canary=1"  # <--\n',
            "rule[1].header",
            "or just the name",
        )
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\nheader = "X-Canary: 1"  # <--\n', "rule[1].header"
        )
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\nheader = "=1"  # <--\n', "rule[1].header"
        )

    def test_bad_header_value(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\nheader = "X=a\\r\\nB: c"  # <--\n', "rule[1].header"
        )

    def test_bad_cookie_name(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\ncookie = "a;b=1"  # <--\n', "rule[1].cookie"
        )

    def test_path_prefix(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\npath_prefix = "api"  # <--\n',
            "rule[1].path_prefix",
            'path_prefix = "/api"',
        )

    def test_host(self) -> None:
        self.assertConfigError(
            BASE + '[[rule]]\npool = "app"\nhost = "http://x/"  # <--\n', "rule[1].host"
        )


class PersistenceTests(ErrorAssertions):
    def test_cookie_name(self) -> None:
        self.assertConfigError('[persistence]\ncookie = "Sp Server"  # <--\n', "persistence.cookie")

    def test_session_cookie_name(self) -> None:
        self.assertConfigError(
            '[persistence]\nsession_cookies = ["JSESSIONID", "a=b"]  # <--\n',
            "persistence.session_cookies[2]",
        )

    def test_injected_cookie_is_not_a_session_cookie(self) -> None:
        self.assertConfigError(
            '[persistence]\ncookie = "sid"\nsession_cookies = ["sid"]  # <--\n',
            "persistence.session_cookies[1]",
        )

    def test_session_param(self) -> None:
        self.assertConfigError(
            '[persistence]\nsession_params = ["sid="]  # <--\n', "persistence.session_params[1]"
        )


class EveryErrorTests(SynchronousTestCase):
    """A push names every broken part at once, each with its line and key."""

    def test_mistakes_in_several_places(self) -> None:
        text = (
            "[limits]\n"
            "header_timeout = -1\n"  # line 2
            "[array]\n"
            "table_size = 4000\n"  # line 4
            "[[pool]]\n"
            'name = "a"\n'
            'policy = "fastest"\n'  # line 7
            "[[pool.backend]]\n"
            "number = 1\n"
            'address = "127.0.0.1:9001"\n'
            "[[pool]]\n"
            'name = "b"\n'
            "[[pool.backend]]\n"
            "number = 1\n"
            'adress = "127.0.0.1:9002"\n'  # line 15
        )
        with self.assertRaises(ConfigErrors) as caught:
            parse(text, "dlba.toml")
        found = [(e.line, e.key) for e in caught.exception.errors]
        self.assertEqual(
            found,
            [
                (2, "limits.header_timeout"),
                (4, "array.table_size"),
                (7, "pool[1].policy"),
                (15, "pool[2].backend[1].adress"),
                (13, "pool[2].backend[1].address"),
            ],
        )
        self.assertEqual(str(caught.exception), str(caught.exception.errors[0]))
        self.assertEqual(len(caught.exception.report().splitlines()), 5)

    def test_one_mistake_is_a_plain_config_error(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse("[limits]\nheader_timeout = -1\n", "dlba.toml")
        self.assertNotIsInstance(caught.exception, ConfigErrors)

    def test_cross_checks_wait_for_sound_parts(self) -> None:
        # A broken pool is not reported again as an unknown pool in the rule naming it.
        text = (
            '[[pool]]\nname = "a"\npolicy = "fastest"\n'
            '[[pool.backend]]\nnumber = 1\naddress = "127.0.0.1:9001"\n'
            '[[rule]]\npool = "a"\nhost = "x"\n'
        )
        with self.assertRaises(ConfigError) as caught:
            parse(text, "dlba.toml")
        self.assertEqual(caught.exception.key, "pool[1].policy")
