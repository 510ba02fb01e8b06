"""The config file (DESIGN.md §10): parse TOML, validate, and say exactly where it is wrong.

Pure: no reactor, no sockets.  ``load(path)`` returns a frozen ``Config`` or raises
``dlba.errors.ConfigError`` naming the file, the line and the key.

Keys in error messages are written the way the file spells them, with 1-based positions for
arrays of tables: ``limits.header_timeout``, ``pool[2].backend[1].address``,
``array.node[3].mac``, ``rule[1].pool``, ``tls.certificates[2]``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeVar

from dlba.errors import ConfigError, ConfigErrors
from dlba.hashing import is_prime, next_prime


@dataclass(frozen=True)
class NodeSection:
    number: int = 1
    state_dir: str = "/var/lib/dlba"


@dataclass(frozen=True)
class ListenSection:
    """Twisted endpoint strings; None disables a listener."""

    http: str | None = None
    https: str | None = None
    status: str | None = None
    sync: str | None = None
    admin: str | None = None


@dataclass(frozen=True)
class TLSSection:
    certificates: tuple[str, ...] = ()
    ca: str | None = None
    node_certificate: str | None = None
    admin_certificate: str | None = None
    # Strict-Transport-Security sent on HTTPS answers, normalised ("max-age=N[;
    # includeSubDomains][; preload]"); None: off.
    hsts: str | None = None


@dataclass(frozen=True)
class LimitsSection:
    max_header_bytes: int = 8192
    max_body_bytes: int = 10485760
    header_timeout: float = 10.0
    body_timeout: float = 30.0  # longest silence while a request body is arriving
    min_body_rate: float = 500.0  # bytes/s a body must average after body_timeout; 0: off
    idle_timeout: float = 60.0
    backend_connect_timeout: float = 3.0
    backend_response_timeout: float = 30.0
    backend_idle_timeout: float = 4.0  # pooled connection unused this long is closed
    backend_failure_backoff: float = 5.0  # a failed back end is skipped this long
    max_client_connections: int = 10000
    shutdown_grace: float = 10.0


@dataclass(frozen=True)
class LogSection:
    access_log: str | None = None  # path of the combined-format access log; None = off
    json: bool = False  # twisted.logger events as JSON lines instead of text


@dataclass(frozen=True)
class ArrayNode:
    number: int
    mac: str
    ip: str
    weight: int = 1
    enabled: bool = True


@dataclass(frozen=True)
class ArraySection:
    vip: str | None = None
    interface: str = "eth0"
    table_size: int = 4093
    bucket_idle_timeout: float = 300.0
    sweep_delay: float = 2.0
    sweep_timeout: float = 1.0
    sweep_retries: int = 3
    ping_interval: float = 0.5
    ping_misses: int = 3
    # Where the scheduler forwards: "auto" (the kernel's nftables where it can, else
    # Python), "nftables" (the kernel or nothing), "off" (Python reads every frame).
    fast_path: str = "auto"
    # scapy's one-line dissection of every frame the Python path drops, in the debug log.
    debug_frames: bool = False
    nodes: tuple[ArrayNode, ...] = ()


@dataclass(frozen=True)
class PersistenceSection:
    cookie: str = "SpServer"
    session_cookies: tuple[str, ...] = ("JSESSIONID", "PHPSESSID", "sessionid")
    session_params: tuple[str, ...] = ("jsessionid", "sid")
    session_table_size: int = 100000
    session_ttl: float = 1800.0


@dataclass(frozen=True)
class BackendConfig:
    number: int
    host: str
    port: int
    weight: int = 1
    enabled: bool = True

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PoolConfig:
    name: str
    backends: tuple[BackendConfig, ...]
    policy: str = "round-robin"
    max_concurrent: int = 64
    adaptive: bool = False
    target: str = "latency"
    queue_limit: int = 1024
    queue_timeout: float = 5.0
    # New client connections are refused once the queue holds this fraction of queue_limit
    # (0: never), and accepted again once it has fallen to accept_connections_at of it.
    refuse_connections_at: float = 0.75
    accept_connections_at: float = 0.375
    backend_keepalive: bool = True
    hash_query: bool = False  # url-hash: hash the query string with the path


@dataclass(frozen=True)
class RuleConfig:
    pool: str
    host: str | None = None
    path_prefix: str | None = None
    header: str | None = None  # "Name=value" or "Name" (present)
    cookie: str | None = None  # "name=value" or "name" (present)


@dataclass(frozen=True)
class Placeholders:
    """The paths that may hold ``{number}``, as written in the file (made absolute)."""

    state_dir: str
    node_certificate: str | None
    access_log: str | None

    @classmethod
    def of(cls, config: Config) -> Placeholders:
        """``config``'s templates, or for a hand-built one whatever placeholders it holds."""
        if config.placeholders is not None:
            return config.placeholders
        return cls(config.node.state_dir, config.tls.node_certificate, config.log.access_log)

    def fill(self, config: Config) -> Config:
        """``config`` with these templates substituted for its node number, and kept."""
        number = config.node.number
        cert = self.node_certificate
        log = self.access_log
        return dataclasses.replace(
            config,
            node=dataclasses.replace(config.node, state_dir=_fill(self.state_dir, number)),
            tls=dataclasses.replace(
                config.tls, node_certificate=None if cert is None else _fill(cert, number)
            ),
            log=dataclasses.replace(
                config.log, access_log=None if log is None else _fill(log, number)
            ),
            placeholders=self,
        )


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeSection = field(default_factory=NodeSection)
    listen: ListenSection = field(default_factory=ListenSection)
    tls: TLSSection = field(default_factory=TLSSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    log: LogSection = field(default_factory=LogSection)
    array: ArraySection = field(default_factory=ArraySection)
    persistence: PersistenceSection = field(default_factory=PersistenceSection)
    pools: tuple[PoolConfig, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    # The paths as the file wrote them, before {number} was substituted: what with_node
    # substitutes again.  None for a Config built by hand.  Not compared, not shown: two
    # configs that resolve to the same values are equal whatever their templates.
    # dataclasses.replace keeps them: replacing one of those paths, pass placeholders=None.
    placeholders: Placeholders | None = field(default=None, compare=False, repr=False)

    def node_ip(self) -> str | None:
        """This node's own ip from [[array.node]], where listeners bind by default."""
        for n in self.array.nodes:
            if n.number == self.node.number:
                return n.ip
        return None


def endpoint_option(description: str, key: str, position: int) -> str | None:
    """A tcp endpoint string's ``key`` (``port``, ``interface``), by name or position."""
    parts = re.split(r"(?<!\\):", description)
    if not parts or parts[0] not in ("tcp", "tcp6"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    for p in parts[1:]:
        name, eq, value = p.partition("=")
        if eq and name == key:
            return value.replace("\\:", ":")
    return positional[position - 1] if len(positional) >= position else None


def bind_to(description: str, ip: str | None) -> str:
    """A tcp listener without ``interface=`` binds to this node's own ip (DESIGN.md §10)."""
    if ip is None or not re.match(r"tcp6?:", description) or "interface=" in description:
        return description
    return f"{description}:interface={ip.replace(':', chr(92) + ':')}"


def scheduler_of(config: Config) -> int:
    """Until the control plane elects one: the first node of ``[[array.node]]``."""
    return config.array.nodes[0].number if config.array.nodes else config.node.number


# --- the schema's closed vocabularies --------------------------------------------------------

POLICIES: Final = ("cookie", "session", "url-hash", "least-load", "round-robin")
TARGETS: Final = ("latency", "throughput")
# Server endpoint types Twisted knows without extra plugins; systemd: is for socket activation.
ENDPOINT_TYPES: Final = ("tcp", "tcp6", "ssl", "unix", "systemd")


def load(path: str, *, node: int | None = None) -> Config:
    """Read and validate the config file at ``path``; ``node`` is the ``--node`` override."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(
            path, None, "", f"cannot read the config file: {e.strerror or e}", _READ_HINT
        ) from None
    try:
        # utf-8-sig: editors that save a byte-order mark would otherwise break line 1.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            path, line, "", "the file is not UTF-8 text", "TOML files must be saved as UTF-8"
        ) from None
    return parse(text, path, node=node)


def parse(text: str, path: str, *, node: int | None = None) -> Config:
    """Validate TOML ``text`` as if read from ``path`` (used for messages and relative paths).

    ``node`` is the ``--node`` override: it replaces ``[node] number`` before anything is
    checked against it, so one file can serve every node even if its own number fits none.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        found = _TOML_POSITION.search(message)
        if found is not None:
            line: int | None = int(found.group(1))
        elif message.endswith("(at end of document)"):
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
        else:
            line = None
        problem = _TOML_SUFFIX.sub("", message)
        raise ConfigError(
            path, line, "", f"TOML syntax: {problem}", "fix the TOML syntax at that line"
        ) from None
    return _Checker(path, _Locator(text)).build(data, node)


def with_node(config: Config, number: int) -> Config:
    """``config`` as node ``number`` sees it: the ``--node`` override after parsing.

    ``{number}`` in ``tls.node_certificate``, ``node.state_dir`` and ``log.access_log`` is
    substituted again for the new number.
    """
    _check_node_override(config.path, number, config.array.nodes)
    renumbered = dataclasses.replace(config, node=dataclasses.replace(config.node, number=number))
    return Placeholders.of(config).fill(renumbered)


# --- finding the line of a key ---------------------------------------------------------------
#
# tomllib returns plain dicts with no positions, so the text is scanned a second time, just
# well enough to map each table header and each ``key =`` line to a key path such as
# ("pool", 0, "backend", 1, "address").  The text is already known to be valid TOML.

_Path = tuple[str | int, ...]

_TOML_POSITION: Final = re.compile(r"\(at line (\d+), column \d+\)$")
_TOML_SUFFIX: Final = re.compile(r"\s*\(at (line \d+, column \d+|end of document)\)$")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_READ_HINT: Final = "check the path given to --config and that this user may read it"


def _read_key(line: str, i: int) -> tuple[list[str], int]:
    """The dotted key starting at ``line[i]`` and the index just after it."""
    parts: list[str] = []
    n = len(line)
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        quote = line[i]
        if quote in "\"'":
            end = i + 1
            while end < n and line[end] != quote:
                end += 2 if quote == '"' and line[end] == "\\" else 1
            inner = line[i + 1 : end]
            parts.append(_unescape(inner) if quote == '"' else inner)
            i = end + 1
        else:
            bare = _BARE_KEY.match(line, i)
            if bare is None:
                break
            parts.append(bare.group())
            i = bare.end()
        while i < n and line[i] in " \t":
            i += 1
        if i < n and line[i] == ".":
            i += 1
            continue
        break
    return parts, i


def _unescape(inner: str) -> str:
    # TOML basic strings escape like JSON except for \UXXXXXXXX; close enough for key names.
    try:
        result = json.loads(f'"{inner}"')
    except ValueError:
        return inner
    return result if isinstance(result, str) else inner


class _ValueScanner:
    """Follows a value across lines so that lines inside a multi-line array or string are
    not mistaken for keys or table headers."""

    def __init__(self) -> None:
        self.depth = 0
        self.quote = ""

    @property
    def open(self) -> bool:
        return self.depth > 0 or len(self.quote) == 3

    def feed(self, line: str, i: int) -> None:
        n = len(line)
        while i < n:
            if self.quote:
                if line[i] == "\\" and self.quote[0] == '"':
                    i += 2
                elif line.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = ""
                else:
                    i += 1
                continue
            c = line[i]
            if c == "#":
                break
            if c in "\"'":
                self.quote = c * 3 if line.startswith(c * 3, i) else c
                i += len(self.quote)
                continue
            if c in "[{":
                self.depth += 1
            elif c in "]}":
                self.depth = max(0, self.depth - 1)
            i += 1
        if len(self.quote) == 1:
            self.quote = ""


class _Locator:
    """Key path → line number (1-based) for one config text."""

    def __init__(self, text: str) -> None:
        self._lines: dict[_Path, int] = {}
        counts: dict[_Path, int] = {}  # array of tables → how many elements so far
        table: _Path = ()
        value = _ValueScanner()
        # Split on \n only: tomllib counts lines that way, str.splitlines() does not.
        for number, line in enumerate(text.split("\n"), start=1):
            if value.open:
                value.feed(line, 0)
                continue
            start = len(line) - len(line.lstrip())
            if start == len(line) or line[start] == "#":
                continue
            if line[start] == "[":
                is_array = line.startswith("[[", start)
                parts, _ = _read_key(line, start + (2 if is_array else 1))
                if not parts:
                    continue
                if is_array:
                    array = (*self._resolve(parts[:-1], counts), parts[-1])
                    index = counts.get(array, 0)
                    counts[array] = index + 1
                    table = (*array, index)
                else:
                    table = self._resolve(parts, counts)
                self._mark(table, number)
                continue
            parts, end = _read_key(line, start)
            if parts and line.startswith("=", end):
                self._mark((*table, *parts), number)
                value.feed(line, end + 1)

    @staticmethod
    def _resolve(parts: list[str], counts: dict[_Path, int]) -> _Path:
        # In [pool.backend], "pool" means the latest [[pool]]: name its element.
        path: _Path = ()
        for part in parts:
            path = (*path, part)
            if path in counts:
                path = (*path, counts[path] - 1)
        return path

    def _mark(self, path: _Path, line: int) -> None:
        for end in range(1, len(path)):
            self._lines.setdefault(path[:end], line)
        self._lines[path] = line

    def line(self, path: _Path) -> int | None:
        """The line of ``path``, else of the nearest enclosing table or key that is written."""
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return None


# --- how keys and values are shown to a person ------------------------------------------------


def _dotted(path: _Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part + 1}]"
        else:
            shown = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text


def _header(table: _Path) -> str:
    names = ".".join(p for p in table if isinstance(p, str))
    return f"[[{names}]]" if table and isinstance(table[-1], int) else f"[{names}]"


def _toml(value: object) -> str:
    """``value`` as TOML would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    return str(value)


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "a table"
    text = _toml(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _closest(word: str, choices: Collection[str]) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


# --- value syntax ----------------------------------------------------------------------------

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: header names
_MAC: Final = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
_LABEL: Final = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME: Final = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")
_UNESCAPED_COLON: Final = re.compile(r"(?<!\\):")


_HSTS_EXAMPLE: Final = '"max-age=31536000; includeSubDomains"'
_HSTS_HINT: Final = (
    f"e.g. hsts = {_HSTS_EXAMPLE}: max-age in seconds, then"
    ' "; includeSubDomains" and "; preload" if wanted; leave the key out to send none'
)
_HSTS_FLAGS: Final = {"includesubdomains": "includeSubDomains", "preload": "preload"}


def _hsts(text: str) -> str | tuple[str, str]:
    """The Strict-Transport-Security value ``text`` means, else (problem, hint)."""
    max_age: int | None = None
    flags: set[str] = set()
    for part in text.split(";"):
        name, equals, value = (s.strip() for s in part.partition("="))
        directive = name.lower()
        if not name:
            if equals or value:
                return "a directive without a name", _HSTS_HINT
            continue  # empty directives between semicolons are allowed (RFC 6797 §6.1)
        if directive in flags or (directive == "max-age" and max_age is not None):
            return f"{name} is given twice", f"give each directive once; {_HSTS_HINT}"
        if directive == "max-age":
            if len(value) > 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # RFC 6797 allows the quoted-string form
            if not value.isascii() or not value.isdigit():
                shown = json.dumps(value) if equals else "nothing"
                return (
                    f"max-age is {shown}, not a whole number of seconds",
                    'in seconds, e.g. hsts = "max-age=31536000" (a year);'
                    " max-age=0 tells browsers to forget the policy",
                )
            max_age = int(value)
        elif directive in _HSTS_FLAGS:
            if equals:
                return f"{_HSTS_FLAGS[directive]} takes no value", _HSTS_HINT
            flags.add(directive)
        else:
            close = _closest(directive, ["max-age", *_HSTS_FLAGS])
            return (
                f"unknown directive {json.dumps(name)}",
                f"did you mean {_HSTS_FLAGS.get(close, close)}? {_HSTS_HINT}"
                if close
                else _HSTS_HINT,
            )
    if max_age is None:
        return "max-age is missing", _HSTS_HINT
    return "; ".join(
        [f"max-age={max_age}", *(spelt for key, spelt in _HSTS_FLAGS.items() if key in flags)]
    )


def _host_port(text: str) -> tuple[str, int] | str:
    """``(host, port)`` from "host:port" or "[v6]:port", else what is wrong with it."""
    bracketed = re.fullmatch(r"\[([^\]]*)\]:([^:]*)", text)
    if bracketed is not None:
        host, port_text = bracketed.group(1), bracketed.group(2)
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            return f"[{host}] is not an IPv6 address"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                return f"{host} is not an IPv4 address"
        elif not _HOSTNAME.fullmatch(host):
            return f"{json.dumps(host)} is not a host name"
    elif ":" in text:
        return "an IPv6 address needs brackets"
    else:
        return "there is no port"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return f"the port {json.dumps(port_text)} is not a number from 1 to 65535"
    return host, int(port_text)


# --- {number} placeholders -------------------------------------------------------------------


def _fill(template: str, number: int) -> str:
    return template.replace("{number}", str(number))


def _check_node_override(path: str, number: object, nodes: tuple[ArrayNode, ...]) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ConfigError(
            path,
            None,
            "--node",
            f"{number!r} is not a node number",
            "give a whole number, 1 or more",
        )
    known = [n.number for n in nodes]
    if known and number not in known:
        raise ConfigError(
            path,
            None,
            "--node",
            f"node {number} is not in [[array.node]]",
            "use one of " + ", ".join(map(str, known)),
        )


# --- validation ------------------------------------------------------------------------------

_REQUIRED: Final = object()


def _names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_SECTIONS: Final = {
    "node": "[node]",
    "listen": "[listen]",
    "tls": "[tls]",
    "limits": "[limits]",
    "log": "[log]",
    "array": "[array]",
    "persistence": "[persistence]",
    "pool": "[[pool]]",
    "rule": "[[rule]]",
}
FAST_PATHS: Final = ("auto", "nftables", "off")
_ARRAY_KEYS: Final = (*(k for k in _names(ArraySection) if k != "nodes"), "node")
_POOL_KEYS: Final = (*(k for k in _names(PoolConfig) if k != "backends"), "backend")
_BACKEND_KEYS: Final = ("number", "address", "weight", "enabled")

_T = TypeVar("_T")

_SECONDS: Final = "a time in seconds"
_PATH_HINT: Final = "a file path; relative paths are taken from the config file's directory"


class _Checker:
    """Turns tomllib's dicts into a Config, or raises every mistake it finds.

    Each section, each entry of an array of tables and each unknown key is checked on its
    own, so one push names every broken part (an entry stops at its first mistake).
    The checks across sections run only when every part is sound: a broken pool would
    otherwise show up again as an unknown pool in every rule that names it.
    """

    def __init__(self, path: str, locator: _Locator) -> None:
        self.path = path
        self.locator = locator
        self.base_dir = os.path.dirname(os.path.abspath(path))
        self.errors: list[ConfigError] = []

    def attempt(self, fallback: _T, check: Callable[..., _T], *args: Any) -> _T:
        """``check(*args)``, or ``fallback`` with its mistake recorded."""
        try:
            return check(*args)
        except ConfigError as e:
            self.errors.append(e)
            return fallback

    def raise_recorded(self) -> None:
        if not self.errors:
            return
        # In the order found: an unknown key comes before the "is missing" it may explain.
        found = self.errors
        if len(found) == 1:
            raise found[0]
        raise ConfigErrors(found)

    # -- failing

    def fail(self, where: _Path, problem: str, hint: str = "", *also: _Path) -> NoReturn:
        line = None
        for candidate in (where, *also):
            line = self.locator.line(candidate)
            if line is not None:
                break
        raise ConfigError(self.path, line, _dotted(where), problem, hint)

    def wrong_type(self, where: _Path, value: object, expected: str, example: str) -> NoReturn:
        hint = f"e.g. {example}" if example else ""
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9_.]+", value.strip()):
            hint = f"remove the quotes: {where[-1]} = {value.strip()}"
        elif isinstance(value, list) and expected.startswith("a string"):
            hint = f"give one value, not a list{': ' + hint if hint else ''}"
        raise ConfigError(
            self.path,
            self.locator.line(where),
            _dotted(where),
            f"must be {expected}, not {_show(value)}",
            hint,
        )

    # -- structure

    def known(self, data: Mapping[str, object], where: _Path, keys: Collection[str]) -> None:
        """Every unknown key is recorded; the known ones are checked all the same."""
        for key in data:
            if key in keys:
                continue
            close = _closest(key, keys)
            if close is not None:
                hint = f"did you mean {close}?"
            else:
                hint = f"{_header(where)} takes " + ", ".join(keys)
            self.attempt(None, self.fail, (*where, key), "unknown key", hint)

    def table(self, data: Mapping[str, object], where: _Path, key: str) -> dict[str, object]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            header = _header((*where, key))
            self.fail(
                (*where, key),
                f"must be a table, not {_show(value)}",
                f"write {header} on a line of its own, then its keys one per line",
            )
        return value

    def tables(self, data: Mapping[str, object], where: _Path, key: str) -> list[dict[str, object]]:
        value = data.get(key, [])
        header = _header((*where, key, 0))
        if not isinstance(value, list):
            self.fail(
                (*where, key),
                f"must be an array of tables, not {_show(value)}",
                f"write {header} (double brackets) once for each entry",
            )
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(
                    (*where, key, index),
                    f"must be a table, not {_show(item)}",
                    f"write {header} (double brackets) once for each entry",
                )
        return value

    # -- scalar values

    def _get(self, data: Mapping[str, object], where: _Path, key: str, default: object) -> object:
        if key in data:
            return data[key]
        if default is _REQUIRED:
            self.fail((*where, key), "is missing", f"add {key} = ... under this {_header(where)}")
        return default

    def integer(
        self,
        data: Mapping[str, object],
        where: _Path,
        key: str,
        default: object,
        minimum: int,
        meaning: str,
    ) -> int:
        value = self._get(data, where, key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            example = default if isinstance(default, int) else max(minimum, 1)
            self.wrong_type((*where, key), value, "a whole number", f"{key} = {example}")
        if value < minimum:
            self.fail((*where, key), f"must be at least {minimum}, not {value}", meaning)
        return value

    def number(
        self,
        data: Mapping[str, object],
        where: _Path,
        key: str,
        default: float,
        meaning: str = _SECONDS,
        allow_zero: bool = False,
    ) -> float:
        value = self._get(data, where, key, default)
        # TOML makes 10 an integer and 10.0 a float; a person means the same number.
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type((*where, key), value, "a number", f"{key} = {default}")
        result = float(value)
        if not math.isfinite(result):
            self.fail((*where, key), f"must be a finite number, not {_show(value)}", meaning)
        if result < 0 or (result == 0 and not allow_zero):
            bound = "0 or more" if allow_zero else "more than 0"
            self.fail((*where, key), f"must be {bound}, not {_show(value)}", meaning)
        return result

    def flag(self, data: Mapping[str, object], where: _Path, key: str, default: bool) -> bool:
        value = self._get(data, where, key, default)
        if not isinstance(value, bool):
            self.wrong_type((*where, key), value, "true or false", f"{key} = {_toml(default)}")
        return value

    def text(
        self,
        data: Mapping[str, object],
        where: _Path,
        key: str,
        default: object,
        example: str,
        allow_empty: bool = False,
    ) -> str:
        value = self._get(data, where, key, default)
        if not isinstance(value, str):
            self.wrong_type((*where, key), value, "a string", f"{key} = {example}")
        if not value and not allow_empty:
            self.fail((*where, key), "is empty", f"e.g. {key} = {example}")
        return value

    def optional_text(
        self, data: Mapping[str, object], where: _Path, key: str, example: str
    ) -> str | None:
        if key not in data:
            return None
        return self.text(data, where, key, _REQUIRED, example)

    def texts(
        self,
        data: Mapping[str, object],
        where: _Path,
        key: str,
        default: tuple[str, ...],
        example: str,
    ) -> tuple[str, ...]:
        value = self._get(data, where, key, default)
        if isinstance(value, tuple):
            return value
        if not isinstance(value, list):
            self.wrong_type((*where, key), value, "a list of strings", f"{key} = {example}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.wrong_type((*where, key, index), item, "a string", f"{key} = {example}")
            if not item:
                self.fail((*where, key, index), "is empty", f"e.g. {key} = {example}")
        return tuple(value)

    def choice(
        self,
        data: Mapping[str, object],
        where: _Path,
        key: str,
        default: str,
        choices: tuple[str, ...],
    ) -> str:
        value = self.text(data, where, key, default, json.dumps(default))
        if value not in choices:
            close = _closest(value, choices)
            hint = f'did you mean "{close}"? ' if close else ""
            self.fail(
                (*where, key),
                f"{json.dumps(value)} is not one of " + " | ".join(choices),
                f"{hint}use one of " + ", ".join(f'"{c}"' for c in choices),
            )
        return value

    def file_path(self, text: str) -> str:
        return os.path.normpath(os.path.join(self.base_dir, text))

    def ip(self, data: Mapping[str, object], where: _Path, key: str, required: bool) -> str | None:
        example = '"10.77.0.11"'
        value = (
            self.text(data, where, key, _REQUIRED, example)
            if required
            else self.optional_text(data, where, key, example)
        )
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.fail(
                (*where, key),
                f"{json.dumps(value)} is not an IP address",
                f'write an IPv4 or IPv6 address, e.g. {key} = "10.77.0.11"',
            )

    def endpoint(self, data: Mapping[str, object], where: _Path, key: str) -> str | None:
        if key not in data:
            return None
        value = data[key]
        example = '"tcp:8080"'
        if isinstance(value, int) and not isinstance(value, bool):
            self.wrong_type((*where, key), value, "a string", f'{key} = "tcp:{value}"')
        value = self.text(data, where, key, _REQUIRED, example, allow_empty=True)
        hint = "leave the key out to disable this listener"
        if not value.strip():
            self.fail((*where, key), "is blank", hint)
        fields = _UNESCAPED_COLON.split(value)
        kind = fields[0]
        if kind not in ENDPOINT_TYPES:
            problem = f"{json.dumps(value)} is not a Twisted endpoint string"
            if value.isdigit():
                hint = f'write {key} = "tcp:{value}"'
            else:
                hint = "start it with one of " + ", ".join(f"{t}:" for t in ENDPOINT_TYPES)
                hint += ', e.g. "tcp:8080:interface=127.0.0.1"'
            self.fail((*where, key), problem, hint)
        if kind in ("tcp", "tcp6", "ssl"):
            positional = [f for f in fields[1:] if "=" not in f]
            keyword = [f.partition("=")[2] for f in fields[1:] if f.startswith("port=")]
            ports = positional[:1] or keyword
            if not ports:
                self.fail((*where, key), f"{json.dumps(value)} has no port", f'e.g. "{kind}:8080"')
            if not ports[0].isdigit() or int(ports[0]) > 65535:
                self.fail(
                    (*where, key),
                    f"port {json.dumps(ports[0])} is not a number from 0 to 65535",
                    f'e.g. "{kind}:8080"',
                )
        elif kind == "unix" and (len(fields) < 2 or not fields[1]):
            self.fail(
                (*where, key), f"{json.dumps(value)} has no socket path", '"unix:/run/x.sock"'
            )
        return value

    def name_value(
        self, data: Mapping[str, object], where: _Path, key: str, what: str
    ) -> str | None:
        example = '"X-Canary=1"' if what == "Header" else '"beta=1"'
        value = self.optional_text(data, where, key, example)
        if value is None:
            return None
        name, _, rest = value.partition("=")
        if not _TOKEN.fullmatch(name):
            self.fail(
                (*where, key),
                f"{json.dumps(name)} is not a valid {what.lower()} name",
                f"write {key} = {example} or just the name; names are letters, digits and"
                " !#$%&'*+-.^_`|~ with no spaces",
            )
        if any(c in rest for c in "\r\n\0"):
            self.fail(
                (*where, key),
                "the value holds a line break or NUL",
                "a header or cookie value is one line of text",
            )
        return value

    # -- sections

    def build(self, data: dict[str, Any], node_override: int | None) -> Config:
        for key, value in data.items():
            if key in _SECTIONS:
                continue
            close = _closest(key, _SECTIONS)
            if isinstance(value, dict) or (
                isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
            ):
                problem = "unknown section"
                hint = f"did you mean {_SECTIONS[close]}?" if close else ""
                hint = hint or "sections are " + ", ".join(_SECTIONS.values())
            else:
                problem = "unknown key outside any section"
                hint = f"did you mean {close}?" if close else "put keys under a [section]"
            self.attempt(None, self.fail, (key,), problem, hint)

        def section(check: Callable[[dict[str, object]], _T], name: str, fallback: _T) -> _T:
            return self.attempt(fallback, lambda: check(self.table(data, (), name)))

        node = section(self.node, "node", NodeSection())
        listen = section(self.listen, "listen", ListenSection())
        tls = section(self.tls, "tls", TLSSection())
        limits = section(self.limits, "limits", LimitsSection())
        log = section(self.log, "log", LogSection())
        array = section(self.array, "array", ArraySection())
        persistence = section(self.persistence, "persistence", PersistenceSection())
        no_tables: list[dict[str, object]] = []
        pool_items = self.attempt(no_tables, self.tables, data, (), "pool")
        checked = [
            self.attempt(None, self.pool, item, ("pool", index))
            for index, item in enumerate(pool_items)
        ]
        pools = tuple(p for p in checked if p is not None)
        rule_items = self.attempt(no_tables, self.tables, data, (), "rule")
        self.raise_recorded()
        self.pools_agree(pools)
        checked_rules = [
            self.attempt(None, self.rule, item, ("rule", index), pools)
            for index, item in enumerate(rule_items)
        ]
        self.raise_recorded()
        rules = tuple(r for r in checked_rules if r is not None)

        if node_override is not None:
            _check_node_override(self.path, node_override, array.nodes)
            node = dataclasses.replace(node, number=node_override)
        known_nodes = [n.number for n in array.nodes]
        if known_nodes and node.number not in known_nodes:
            self.fail(
                ("node", "number"),
                f"node {node.number} is not in [[array.node]]",
                "set it to one of " + ", ".join(map(str, known_nodes)) + " or pass --node",
                ("array", "node"),
            )
        if listen.https is not None and not tls.certificates:
            self.fail(
                ("tls", "certificates"),
                "is empty but listen.https is set",
                'list at least one PEM file (key + chain), e.g. certificates = ["tls/www.pem"]',
                ("listen", "https"),
            )
        if listen.sync is not None:
            for key in ("ca", "node_certificate"):
                if not getattr(tls, key):
                    self.fail(
                        ("tls", key),
                        "is not set but listen.sync is",
                        "the control plane is mutual TLS: make the array's certificates "
                        "with dlba-ctl certs init --config FILE and name them under [tls]",
                        ("listen", "sync"),
                    )
        for name in ("http", "https"):
            if getattr(listen, name) is not None and not pools:
                self.fail(
                    ("listen", name),
                    "is set but there is no [[pool]] to send requests to",
                    "add a [[pool]] with at least one [[pool.backend]], or leave this key out",
                )
        if array.vip is not None:
            for index, n in enumerate(array.nodes):
                if n.ip == array.vip:
                    self.fail(
                        ("array", "node", index, "ip"),
                        f"is the VIP {array.vip}",
                        "a node's ip is its own physical address, not the shared VIP",
                    )

        config = Config(
            path=self.path,
            node=node,
            listen=listen,
            tls=tls,
            limits=limits,
            log=log,
            array=array,
            persistence=persistence,
            pools=pools,
            rules=rules,
        )
        return Placeholders(node.state_dir, tls.node_certificate, log.access_log).fill(config)

    def node(self, d: dict[str, object]) -> NodeSection:
        w: _Path = ("node",)
        self.known(d, w, _names(NodeSection))
        default = NodeSection()
        number = self.integer(
            d, w, "number", default.number, 1, "the number of one of the [[array.node]] entries"
        )
        state_dir = self.text(d, w, "state_dir", default.state_dir, '"/var/lib/dlba"')
        return NodeSection(number=number, state_dir=self.file_path(state_dir))

    def listen(self, d: dict[str, object]) -> ListenSection:
        w: _Path = ("listen",)
        keys = _names(ListenSection)
        self.known(d, w, keys)
        endpoints = {k: self.endpoint(d, w, k) for k in keys}
        users: dict[str, str] = {}
        for key, value in endpoints.items():
            if value is None:
                continue
            if re.match(r"(tcp6?|ssl):0(:|$)", value):
                continue  # port 0: the system picks a free port for each listener
            if value in users:
                self.fail(
                    (*w, key),
                    f"{json.dumps(value)} is also listen.{users[value]}",
                    "each listener needs its own port or socket",
                )
            users[value] = key
        return ListenSection(**endpoints)

    def tls(self, d: dict[str, object]) -> TLSSection:
        w: _Path = ("tls",)
        self.known(d, w, _names(TLSSection))
        certificates = self.texts(d, w, "certificates", (), '["tls/www.pem"]')
        paths: dict[str, str | None] = {}
        for key in ("ca", "node_certificate", "admin_certificate"):
            value = self.optional_text(d, w, key, '"tls/file.pem"')
            paths[key] = None if value is None else self.file_path(value)
        return TLSSection(
            certificates=tuple(self.file_path(c) for c in certificates),
            hsts=self.hsts(d, w),
            **paths,
        )

    def hsts(self, d: dict[str, object], w: _Path) -> str | None:
        """``[tls] hsts``: RFC 6797's max-age and its two flags, written back the usual way."""
        if "hsts" not in d:
            return None
        value = self.text(d, w, "hsts", _REQUIRED, _HSTS_EXAMPLE, allow_empty=True)
        found = _hsts(value) if value.strip() else ("is empty", _HSTS_HINT)
        if isinstance(found, tuple):
            problem, hint = found
            shown = f"{json.dumps(value)}: {problem}" if value.strip() else problem
            self.fail((*w, "hsts"), shown, hint)
        return found

    def limits(self, d: dict[str, object]) -> LimitsSection:
        w: _Path = ("limits",)
        self.known(d, w, _names(LimitsSection))
        default = LimitsSection()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(LimitsSection):
            key = f.name
            if key == "max_header_bytes":
                values[key] = self.integer(
                    d, w, key, default.max_header_bytes, 64, "the largest request head in bytes"
                )
            elif key == "max_body_bytes":
                values[key] = self.integer(
                    d, w, key, default.max_body_bytes, 0, "the largest request body in bytes"
                )
            elif key == "max_client_connections":
                values[key] = self.integer(
                    d, w, key, default.max_client_connections, 1, "open client connections"
                )
            elif key == "min_body_rate":
                values[key] = self.number(
                    d, w, key, default.min_body_rate, "bytes per second (0 turns it off)", True
                )
            elif key == "shutdown_grace":
                values[key] = self.number(
                    d, w, key, default.shutdown_grace, _SECONDS + " (0 stops at once)", True
                )
            else:
                values[key] = self.number(d, w, key, getattr(default, key), _SECONDS + " above 0")
        return LimitsSection(**values)

    def log(self, d: dict[str, object]) -> LogSection:
        w: _Path = ("log",)
        self.known(d, w, _names(LogSection))
        access_log = self.text(d, w, "access_log", "", '"/var/log/dlba/access.log"', True)
        return LogSection(
            access_log=self.file_path(access_log) if access_log else None,
            json=self.flag(d, w, "json", LogSection().json),
        )

    def array(self, d: dict[str, object]) -> ArraySection:
        w: _Path = ("array",)
        self.known(d, w, _ARRAY_KEYS)
        default = ArraySection()
        vip = self.ip(d, w, "vip", required=False)
        interface = self.text(d, w, "interface", default.interface, '"eth0"')
        if len(interface) > 15 or any(c.isspace() or c in "/:" for c in interface):
            self.fail(
                (*w, "interface"),
                f"{json.dumps(interface)} is not a network interface name",
                "up to 15 characters, no spaces, / or :, e.g. eth0 (see ip link)",
            )
        table_size = self.integer(
            d, w, "table_size", default.table_size, 3, "a prime number of buckets, e.g. 4093"
        )
        if not is_prime(table_size):
            self.fail(
                (*w, "table_size"),
                f"{table_size} is not a prime number",
                f"use a prime, e.g. {next_prime(max(table_size, 3))}",
            )
        checked = [
            self.attempt(None, self.array_node, item, ("array", "node", index))
            for index, item in enumerate(self.tables(d, w, "node"))
        ]
        nodes = tuple(n for n in checked if n is not None)
        if len(nodes) < len(checked):
            # Duplicates among the sound ones would be checked at the wrong index.
            raise self.errors.pop()
        for attr in ("number", "mac", "ip"):
            seen: dict[object, int] = {}
            for index, n in enumerate(nodes):
                value = getattr(n, attr)
                if value in seen:
                    first = self.locator.line(("array", "node", seen[value], attr))
                    self.fail(
                        ("array", "node", index, attr),
                        f"{_toml(value)} is already used by array.node[{seen[value] + 1}]"
                        + (f" (line {first})" if first else ""),
                        f"every [[array.node]] needs its own {attr}",
                    )
                seen[value] = index
        return ArraySection(
            vip=vip,
            interface=interface,
            table_size=table_size,
            bucket_idle_timeout=self.number(
                d, w, "bucket_idle_timeout", default.bucket_idle_timeout
            ),
            sweep_delay=self.number(
                d, w, "sweep_delay", default.sweep_delay, _SECONDS + " (0 or more)", True
            ),
            sweep_timeout=self.number(d, w, "sweep_timeout", default.sweep_timeout),
            sweep_retries=self.integer(
                d, w, "sweep_retries", default.sweep_retries, 1, "tries before a node is failed"
            ),
            ping_interval=self.number(d, w, "ping_interval", default.ping_interval),
            ping_misses=self.integer(
                d, w, "ping_misses", default.ping_misses, 1, "missed pings before an election"
            ),
            fast_path=self.choice(d, w, "fast_path", default.fast_path, FAST_PATHS),
            debug_frames=self.flag(d, w, "debug_frames", default.debug_frames),
            nodes=nodes,
        )

    def array_node(self, d: dict[str, object], w: _Path) -> ArrayNode:
        self.known(d, w, _names(ArrayNode))
        number = self.integer(d, w, "number", _REQUIRED, 1, "node numbers start at 1")
        mac = self.text(d, w, "mac", _REQUIRED, '"02:00:0a:4d:00:0b"')
        if not _MAC.fullmatch(mac):
            self.fail(
                (*w, "mac"),
                f"{json.dumps(mac)} is not a MAC address",
                'six hex pairs as ip link shows them, e.g. mac = "02:00:0a:4d:00:0b"',
            )
        mac = mac.lower().replace("-", ":")
        if int(mac[:2], 16) & 1:
            self.fail(
                (*w, "mac"),
                f"{mac} is a multicast or broadcast address",
                "give the node's own interface MAC (see ip link)",
            )
        ip = self.ip(d, w, "ip", required=True)
        assert ip is not None  # required=True fails instead of returning None
        default = ArrayNode(number=1, mac="", ip="")
        return ArrayNode(
            number=number,
            mac=mac,
            ip=ip,
            weight=self.integer(
                d, w, "weight", default.weight, 1, "use enabled = false to stop it"
            ),
            enabled=self.flag(d, w, "enabled", default.enabled),
        )

    def persistence(self, d: dict[str, object]) -> PersistenceSection:
        w: _Path = ("persistence",)
        self.known(d, w, _names(PersistenceSection))
        default = PersistenceSection()
        cookie = self.text(d, w, "cookie", default.cookie, '"SpServer"')
        if not _TOKEN.fullmatch(cookie):
            self.fail(
                (*w, "cookie"),
                f"{json.dumps(cookie)} is not a valid cookie name",
                "letters, digits and !#$%&'*+-.^_`|~, no spaces, = or ;",
            )
        session_cookies = self.texts(
            d, w, "session_cookies", default.session_cookies, '["JSESSIONID"]'
        )
        for index, name in enumerate(session_cookies):
            if not _TOKEN.fullmatch(name):
                self.fail(
                    (*w, "session_cookies", index),
                    f"{json.dumps(name)} is not a valid cookie name",
                    "letters, digits and !#$%&'*+-.^_`|~, no spaces, = or ;",
                )
            if name == cookie:
                self.fail(
                    (*w, "session_cookies", index),
                    f"{json.dumps(name)} is also the injected cookie",
                    "persistence.cookie must differ from the back ends' session cookies",
                )
        session_params = self.texts(d, w, "session_params", default.session_params, '["sid"]')
        for index, name in enumerate(session_params):
            if any(c.isspace() or c in "=&;?#/" for c in name):
                self.fail(
                    (*w, "session_params", index),
                    f"{json.dumps(name)} is not a URL parameter name",
                    "just the name, without = & ; ? # / or spaces, e.g. jsessionid",
                )
        return PersistenceSection(
            cookie=cookie,
            session_cookies=session_cookies,
            session_params=session_params,
            session_table_size=self.integer(
                d,
                w,
                "session_table_size",
                default.session_table_size,
                1,
                "how many session ids are remembered",
            ),
            session_ttl=self.number(d, w, "session_ttl", default.session_ttl),
        )

    def pool(self, d: dict[str, object], w: _Path) -> PoolConfig:
        self.known(d, w, _POOL_KEYS)
        default = PoolConfig(name="", backends=())
        name = self.text(d, w, "name", _REQUIRED, '"app"')
        backends_raw = self.tables(d, w, "backend")
        if not backends_raw:
            self.fail(
                (*w, "backend"),
                f'pool "{name}" has no back ends',
                "add a [[pool.backend]] with number and address after this [[pool]]",
            )
        backends: list[BackendConfig] = []
        seen: dict[int, int] = {}
        broken = len(self.errors)
        for position, item in enumerate(backends_raw):
            checked = self.attempt(None, self.backend, item, (*w, "backend", position))
            if checked is None:
                continue
            backend = checked
            if backend.number in seen:
                first = self.locator.line((*w, "backend", seen[backend.number], "number"))
                self.fail(
                    (*w, "backend", position, "number"),
                    f"back end number {backend.number} is used twice in this pool"
                    + (f" (also line {first})" if first else ""),
                    "give each back end its own number; it is what the injected cookie carries",
                )
            seen[backend.number] = position
            backends.append(backend)
        if len(self.errors) > broken:
            raise self.errors.pop()  # the pool is broken: its last mistake stands for it
        refuse_at, accept_at = self.admission(d, w, default)
        return PoolConfig(
            name=name,
            backends=tuple(backends),
            policy=self.choice(d, w, "policy", default.policy, POLICIES),
            max_concurrent=self.integer(
                d,
                w,
                "max_concurrent",
                default.max_concurrent,
                1,
                "requests in flight per back end before the queue",
            ),
            adaptive=self.flag(d, w, "adaptive", default.adaptive),
            target=self.choice(d, w, "target", default.target, TARGETS),
            queue_limit=self.integer(
                d, w, "queue_limit", default.queue_limit, 0, "requests waiting (0 = no queue)"
            ),
            queue_timeout=self.number(d, w, "queue_timeout", default.queue_timeout),
            refuse_connections_at=refuse_at,
            accept_connections_at=accept_at,
            backend_keepalive=self.flag(d, w, "backend_keepalive", default.backend_keepalive),
            hash_query=self.flag(d, w, "hash_query", default.hash_query),
        )

    def admission(self, d: dict[str, object], w: _Path, default: PoolConfig) -> tuple[float, float]:
        """``refuse_connections_at`` and ``accept_connections_at``, fractions of queue_limit."""
        refuse_key, accept_key = "refuse_connections_at", "accept_connections_at"
        refuse_at = self.fraction(
            d,
            w,
            refuse_key,
            default.refuse_connections_at,
            "a fraction of queue_limit from 0 to 1, e.g. 0.75; 0 never refuses connections",
        )
        accept_at = self.fraction(
            d,
            w,
            accept_key,
            default.accept_connections_at,
            f"a fraction of queue_limit from 0 to 1, below {refuse_key}, e.g. 0.375",
        )
        if refuse_at and accept_at >= refuse_at:
            half = _toml(round(refuse_at / 2, 4))
            if accept_key in d:
                self.fail(
                    (*w, accept_key),
                    f"must be below {refuse_key} ({_toml(refuse_at)}), not {_toml(accept_at)}",
                    f"connections are accepted again once the queue is shorter than when they"
                    f" were refused: e.g. {accept_key} = {half}",
                    (*w, refuse_key),
                )
            self.fail(
                (*w, refuse_key),
                f"must be above {accept_key} ({_toml(accept_at)}, its default),"
                f" not {_toml(refuse_at)}",
                f"add {accept_key} = {half} too, or write {refuse_key} = 0 never to refuse"
                " connections",
            )
        return refuse_at, accept_at

    def fraction(
        self, data: Mapping[str, object], where: _Path, key: str, default: float, meaning: str
    ) -> float:
        value = self.number(data, where, key, default, meaning, allow_zero=True)
        if value > 1:
            self.fail((*where, key), f"must be at most 1, not {_show(data[key])}", meaning)
        return value

    def backend(self, d: dict[str, object], w: _Path) -> BackendConfig:
        self.known(d, w, _BACKEND_KEYS)
        number = self.integer(
            d, w, "number", _REQUIRED, 1, "back-end numbers start at 1 (the cookie carries it)"
        )
        address = self.text(d, w, "address", _REQUIRED, '"10.0.0.5:8080"')
        parsed = _host_port(address)
        if isinstance(parsed, str):
            self.fail(
                (*w, "address"),
                f"{json.dumps(address)}: {parsed}",
                'write host:port or [IPv6]:port, e.g. "10.0.0.5:8080" or "[2001:db8::5]:8080"',
            )
        default = BackendConfig(number=1, host="", port=1)
        return BackendConfig(
            number=number,
            host=parsed[0],
            port=parsed[1],
            weight=self.integer(
                d, w, "weight", default.weight, 1, "use enabled = false to stop it"
            ),
            enabled=self.flag(d, w, "enabled", default.enabled),
        )

    def pools_agree(self, pools: tuple[PoolConfig, ...]) -> None:
        names: dict[str, int] = {}
        for index, pool in enumerate(pools):
            if pool.name in names:
                first = self.locator.line(("pool", names[pool.name], "name"))
                self.fail(
                    ("pool", index, "name"),
                    f'pool "{pool.name}" is already defined'
                    + (f" (line {first})" if first else ""),
                    "give each [[pool]] its own name",
                )
            names[pool.name] = index
        # The cookie carries only the number, so a number must mean one server everywhere.
        owners: dict[int, tuple[int, int, BackendConfig]] = {}
        for p_index, pool in enumerate(pools):
            for b_index, backend in enumerate(pool.backends):
                owner = owners.setdefault(backend.number, (p_index, b_index, backend))
                if owner[2].address != backend.address:
                    other = _dotted(("pool", owner[0], "backend", owner[1]))
                    self.fail(
                        ("pool", p_index, "backend", b_index, "number"),
                        f"back end {backend.number} is {owner[2].address} in {other}"
                        f" but {backend.address} here",
                        "a back-end number names one server in every pool: use another number",
                    )

    def rule(self, d: dict[str, object], w: _Path, pools: tuple[PoolConfig, ...]) -> RuleConfig:
        self.known(d, w, _names(RuleConfig))
        pool = self.text(d, w, "pool", _REQUIRED, '"app"')
        names = [p.name for p in pools]
        if pool not in names:
            close = _closest(pool, names)
            self.fail(
                (*w, "pool"),
                f'there is no [[pool]] named "{pool}"',
                (f'did you mean "{close}"? ' if close else "")
                + (
                    "pools are " + ", ".join(f'"{n}"' for n in names) if names else "add a [[pool]]"
                ),
            )
        host = self.optional_text(d, w, "host", '"shop.example.com"')
        if host is not None and any(c.isspace() or c in "/" for c in host):
            self.fail(
                (*w, "host"),
                f"{json.dumps(host)} is not a host name",
                'just the name the client asks for, e.g. host = "shop.example.com"',
            )
        path_prefix = self.optional_text(d, w, "path_prefix", '"/api/"')
        if path_prefix is not None and not path_prefix.startswith("/"):
            self.fail(
                (*w, "path_prefix"),
                f"{json.dumps(path_prefix)} does not start with /",
                f'paths start with /, e.g. path_prefix = "/{path_prefix}"',
            )
        return RuleConfig(
            pool=pool,
            host=host,
            path_prefix=path_prefix,
            header=self.name_value(d, w, "header", "Header"),
            cookie=self.name_value(d, w, "cookie", "Cookie"),
        )
