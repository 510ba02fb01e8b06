"""Persistence and routing end to end: the injected cookie (over HTTPS with curl's cookie
jar), attribute copying, garbage cookies, the session table, URL hashing, rules, and
disabled back ends, against real back ends and a real ``twistd dlba``."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from tests.e2e.harness import (
    Backend,
    E2ETestCase,
    PoolSpec,
    RawClient,
    Response,
    curl_responses,
    request,
    status_lines,
)

PERSISTENCE: dict[str, object] = {
    "cookie": "SpServer",
    "session_cookies": ["JSESSIONID", "PHPSESSID"],
    "session_params": ["jsessionid", "sid"],
    "session_table_size": 1000,
    "session_ttl": 600.0,
}

SPSERVER = re.compile(r"^SpServer=([^;]*)")


def spserver_cookies(response: Response) -> list[str]:
    """The Set-Cookie values of ``response`` that set SpServer."""
    return [v for v in response.headers_named("set-cookie") if v.startswith("SpServer=")]


def spserver_number(response: Response) -> int:
    """The number the single injected SpServer cookie carries (fails if not exactly one)."""
    found = spserver_cookies(response)
    assert len(found) == 1, f"expected one SpServer Set-Cookie, got {found}: {response}"
    match = SPSERVER.match(found[0])
    assert match is not None and match.group(1).isdigit(), found[0]
    return int(match.group(1))


def attributes(set_cookie: str) -> list[str]:
    """The attributes of a Set-Cookie value, as written, sorted."""
    return sorted(a.strip() for a in set_cookie.split(";")[1:] if a.strip())


def numbers(backends: list[Backend]) -> dict[str, int]:
    """Back-end name → the number dlba_config gave it (in order, from 1)."""
    return {b.name: i + 1 for i, b in enumerate(backends)}


async def send(client: RawClient, target: str, cookie: str | None = None) -> Response:
    headers = [("Cookie", cookie)] if cookie is not None else []
    client.send(request(target, headers=headers))
    return await client.next_response()


class CookiePersistenceTests(E2ETestCase):
    async def start_cookie(self, count: int = 3, **options: Any) -> tuple[list[Backend], Any]:
        backends = [self.backend(f"b{i + 1}") for i in range(count)]
        dlba = await self.start(
            backends, pool={"policy": "cookie"}, persistence=PERSISTENCE, **options
        )
        return backends, dlba

    async def test_curl_cookie_jar_over_https(self) -> None:
        """/login sets JSESSIONID; dlba adds SpServer=<n> copying Path and HttpOnly and
        Cache-Control: private; 50 requests with curl's jar stick to that back end, which
        never sees SpServer; once it is killed the next answer names another back end and
        the requests stick there."""
        backends, dlba = await self.start_cookie()
        by_name = {b.name: b for b in backends}
        number_of = numbers(backends)
        jar = self.path("jar.txt")
        base = f"https://127.0.0.1:{dlba.https}"
        curl = ("-k", "-i", "-b", jar, "-c", jar)

        result = await self.curl(*curl, f"{base}/login")
        [login] = curl_responses(result.out)
        self.assertEqual(login.status, 200, result.text)
        first = login.header("x-backend")
        assert first is not None
        self.assertEqual(spserver_number(login), number_of[first])
        [injected] = spserver_cookies(login)
        self.assertEqual(attributes(injected), ["HttpOnly", "Path=/"])
        self.assertEqual(login.headers_named("cache-control"), ["private"])
        with open(jar) as f:
            self.assertIn("SpServer", f.read())

        # 45 on one keep-alive connection (each request scheduled on its own), 5 apart.
        result = await self.curl(*curl, *[f"{base}/r{i}" for i in range(45)])
        answers = curl_responses(result.out)
        self.assertEqual(len(answers), 45, result.text)
        for i in range(5):
            result = await self.curl(*curl, f"{base}/apart{i}")
            answers += curl_responses(result.out)
        self.assertEqual([a.status for a in answers], [200] * 50)
        self.assertEqual({a.header("x-backend") for a in answers}, {first})
        # A valid cookie honoured: nothing new to say.
        self.assertEqual([spserver_cookies(a) for a in answers], [[]] * 50)

        result = await self.curl(*curl, f"{base}/echo")
        [echo] = curl_responses(result.out)
        seen = echo.json()
        self.assertEqual(seen["backend"], first)
        cookies = [v for n, v in seen["headers"] if n.lower() == "cookie"]
        self.assertEqual(len(cookies), 1, seen["headers"])
        self.assertIn("JSESSIONID=", cookies[0])
        self.assertNotIn("SpServer", cookies[0])

        await by_name[first].child.kill()
        result = await self.curl(*curl, f"{base}/after-kill")
        [moved] = curl_responses(result.out)
        self.assertEqual(moved.status, 200, result.text)
        second = moved.header("x-backend")
        assert second is not None
        self.assertNotEqual(second, first)
        self.assertEqual(spserver_number(moved), number_of[second])

        result = await self.curl(*curl, *[f"{base}/then{i}" for i in range(10)])
        answers = curl_responses(result.out)
        self.assertEqual([a.status for a in answers], [200] * 10, result.text)
        self.assertEqual({a.header("x-backend") for a in answers}, {second})
        self.assertEqual([spserver_cookies(a) for a in answers], [[]] * 10)

    async def test_attributes_copied(self) -> None:
        """The injected cookie has exactly the session cookie's Expires, Max-Age, Path,
        Domain, Secure, HttpOnly and SameSite, as written, and nothing else."""
        backends, dlba = await self.start_cookie(count=2)
        number_of = numbers(backends)
        expires = "Expires=Wed, 21 Oct 2037 07:28:00 GMT"
        table = [
            (f"JSESSIONID=a1; {expires}; Path=/", [expires, "Path=/"]),
            ("JSESSIONID=a2; Max-Age=3600; Path=/shop", ["Max-Age=3600", "Path=/shop"]),
            ("JSESSIONID=a3; Domain=example.test; Path=/", ["Domain=example.test", "Path=/"]),
            (
                "JSESSIONID=a4; Secure; HttpOnly; SameSite=Strict",
                ["HttpOnly", "SameSite=Strict", "Secure"],
            ),
            ('JSESSIONID="quoted"; Path=/q', ["Path=/q"]),
            (
                "JSESSIONID=a6; path=/low; max-age=60; httponly; samesite=lax; secure",
                ["httponly", "max-age=60", "path=/low", "samesite=lax", "secure"],
            ),
            (
                "JSESSIONID=a7; Path=/; Priority=High; Partitioned; Comment=hi; Secure",
                ["Path=/", "Secure"],
            ),
            ("JSESSIONID=a8;Path=/x;   HttpOnly  ", ["HttpOnly", "Path=/x"]),
            ("JSESSIONID=a9", []),
            (
                "PHPSESSID=p1; Path=/php; SameSite=None; Secure",
                ["Path=/php", "SameSite=None", "Secure"],
            ),
        ]
        client = await self.connect(dlba.http)
        for set_cookie, expected in table:
            response = await send(client, f"/setcookie?h={quote(set_cookie, safe='')}")
            self.assertEqual(response.status, 200, response)
            self.assertIn(
                set_cookie.strip(), [v.strip() for v in response.headers_named("set-cookie")]
            )
            name = response.header("x-backend")
            assert name is not None
            self.assertEqual(spserver_number(response), number_of[name], set_cookie)
            [injected] = spserver_cookies(response)
            self.assertEqual(attributes(injected), sorted(expected), set_cookie)
            self.assertEqual(response.headers_named("cache-control"), ["private"], set_cookie)

        # An answer that is no session cookie's gets nothing added.
        response = await send(client, f"/setcookie?h={quote('other=1; Path=/', safe='')}")
        self.assertEqual(spserver_cookies(response), [])
        self.assertEqual(response.headers_named("cache-control"), [])
        # The back end's own Cache-Control is kept, not doubled.
        response = await send(client, "/setcookie?h=JSESSIONID%3Db1&cc=no-store")
        self.assertEqual(len(spserver_cookies(response)), 1, response)
        self.assertEqual(response.headers_named("cache-control"), ["no-store"])

    async def test_garbage_cookie_values(self) -> None:
        """SpServer values that name no back end are never an error: 200, scheduled afresh
        (spread over the back ends), and the answer carries a valid SpServer."""
        backends, dlba = await self.start_cookie()
        number_of = numbers(backends)
        garbage = [
            "",
            "-1",
            "0",
            "99",
            "4",
            "9" * 40,
            "abc",
            '"1"',
            '"1;"',
            "1.5",
            "0x1",
            "+1",
            "1 2",
            "%31",
        ]
        seen = set()
        for value in garbage:
            for attempt in range(2):
                client = await self.connect(dlba.http)
                response = await send(client, f"/g{attempt}", f"JSESSIONID=x; SpServer={value}")
                self.assertEqual(response.status, 200, (value, response))
                name = response.header("x-backend")
                assert name is not None
                seen.add(name)
                self.assertEqual(spserver_number(response), number_of[name], value)
                [injected] = spserver_cookies(response)
                self.assertIn("Path=/", attributes(injected))
        self.assertEqual(seen, {"b1", "b2", "b3"})
        # Non-ASCII bytes in the value too.
        client = await self.connect(dlba.http)
        client.send(
            b"GET /utf HTTP/1.1\r\nHost: x\r\nCookie: SpServer=\xef\xbc\x91; a=\xff\r\n\r\n"
        )
        response = await client.next_response()
        self.assertEqual(response.status, 200, response)
        self.assertEqual(len(spserver_cookies(response)), 1)

    async def test_several_set_cookie_and_cookie_headers(self) -> None:
        """Several Set-Cookie headers in one answer: all are kept, one SpServer is added.
        Several Cookie headers in a request: the back end gets one Cookie header with all
        pairs but SpServer."""
        backends, dlba = await self.start_cookie(count=2)
        number_of = numbers(backends)
        client = await self.connect(dlba.http)
        sent = ["a=1; Path=/a", "JSESSIONID=s1; Path=/app; Secure", "b=2", "PHPSESSID=p; Path=/"]
        query = "&".join(f"h={quote(v, safe='')}" for v in sent)
        response = await send(client, f"/setcookie?{query}")
        self.assertEqual(response.status, 200, response)
        self.assertEqual([v for v in response.headers_named("set-cookie") if v in sent], sent)
        name = response.header("x-backend")
        assert name is not None
        self.assertEqual(spserver_number(response), number_of[name])
        [injected] = spserver_cookies(response)
        self.assertEqual(attributes(injected), ["Path=/app", "Secure"])

        n = number_of[name]
        client.send(
            request(
                "/echo",
                headers=[
                    ("Cookie", "a=1"),
                    ("Cookie", f"SpServer={n}; JSESSIONID=s1"),
                    ("Cookie", "b=2; SpServer=7"),
                ],
            )
        )
        echo = await client.next_response()
        seen = echo.json()
        self.assertEqual(seen["backend"], name)
        cookies = [v for h, v in seen["headers"] if h.lower() == "cookie"]
        self.assertEqual(cookies, ["a=1; JSESSIONID=s1; b=2"])

        # Only SpServer: no Cookie header is forwarded at all.
        echo = await send(client, "/echo", f"SpServer={n}")
        seen = echo.json()
        self.assertEqual(seen["backend"], name)
        self.assertEqual([v for h, v in seen["headers"] if h.lower() == "cookie"], [])

    async def test_disabled_backend_never_chosen(self) -> None:
        """enabled = false: no request reaches it, even one whose cookie names it."""
        backends = [self.backend(f"b{i + 1}") for i in range(3)]
        dlba = await self.start(
            pools=[
                PoolSpec(
                    backends,
                    options={"policy": "cookie"},
                    backend_options=[{}, {"enabled": False}, {}],
                )
            ],
            persistence=PERSISTENCE,
        )
        seen = set()
        for i in range(12):
            client = await self.connect(dlba.http)
            response = await send(client, f"/d{i}", "SpServer=2; JSESSIONID=x")
            self.assertEqual(response.status, 200, response)
            name = response.header("x-backend")
            seen.add(name)
            self.assertIn(spserver_number(response), (1, 3))
        self.assertEqual(seen, {"b1", "b3"})
        stats = await backends[1].stats()
        self.assertEqual(stats["requests"], 0, stats)


class SessionPersistenceTests(E2ETestCase):
    async def status(self, port: int) -> list[dict[str, Any]]:
        return await status_lines(port)

    async def test_session_ids_from_cookie_and_url(self) -> None:
        backends = [self.backend(f"b{i + 1}") for i in range(3)]
        dlba = await self.start(
            backends, pool={"policy": "session"}, persistence=PERSISTENCE, status=True
        )
        client = await self.connect(dlba.http)

        # Without a session the requests spread (round-robin underneath).
        spread = {(await send(client, f"/n{i}")).header("x-backend") for i in range(6)}
        self.assertEqual(spread, {"b1", "b2", "b3"})

        login = await send(client, "/login")
        owner = login.header("x-backend")
        match = re.match(r"JSESSIONID=([0-9a-f]+)", login.header("set-cookie") or "")
        assert match is not None, login
        sid = match.group(1)
        self.assertEqual(spserver_cookies(login), [])  # the session policy injects nothing
        for i in range(12):
            response = await send(client, f"/s{i}", f"other=1; JSESSIONID={sid}")
            self.assertEqual(response.header("x-backend"), owner, i)

        forms = {"path": "/x{i};jsessionid={sid}", "query": "/y?a={i}&sid={sid}"}
        for style, form in forms.items():
            redirect = await send(client, f"/redirect?style={style}")
            self.assertEqual(redirect.status, 302, redirect)
            owner = redirect.header("x-backend")
            location = redirect.header("location") or ""
            sid = redirect.body.decode().strip()
            self.assertIn(sid, location)
            for i in range(12):
                fresh = await self.connect(dlba.http) if i % 4 == 0 else client
                response = await send(fresh, form.format(i=i, sid=sid))
                self.assertEqual(response.status, 200, response)
                self.assertEqual(response.header("x-backend"), owner, (style, i))

        lines = await self.status(dlba.ports["status"])
        [sessions] = [line for line in lines if line.get("table") == "sessions"]
        self.assertEqual(sessions["pool"], "app")
        self.assertGreaterEqual(sessions["size"], 3, sessions)
        self.assertGreater(sessions["hit_rate"], 0.5, sessions)

    async def test_session_moves_when_its_backend_dies(self) -> None:
        """The back end holding a session dies: the session's requests go to one other
        back end and stay there (as the cookie policy's fresh SpServer does), rather than
        being spread over the survivors, where each would start the session anew."""
        backends = [self.backend(f"b{i + 1}") for i in range(3)]
        dlba = await self.start(backends, pool={"policy": "session"}, persistence=PERSISTENCE)
        client = await self.connect(dlba.http)
        login = await send(client, "/login")
        owner = login.header("x-backend")
        match = re.match(r"JSESSIONID=([0-9a-f]+)", login.header("set-cookie") or "")
        assert match is not None, login
        sid = match.group(1)
        await {b.name: b for b in backends}[owner or ""].child.kill()
        after = []
        for i in range(9):
            response = await send(client, f"/after{i}", f"JSESSIONID={sid}")
            self.assertEqual(response.status, 200, response)
            after.append(response.header("x-backend"))
        self.assertNotIn(owner, after)
        self.assertEqual(len(set(after)), 1, f"a session of a dead back end went to {after}")


class UrlHashTests(E2ETestCase):
    async def test_url_hash(self) -> None:
        backends = [self.backend(f"b{i + 1}") for i in range(3)]
        dlba = await self.start(backends, pool={"policy": "url-hash", "hash_query": False})
        client = await self.connect(dlba.http)

        where: dict[str, str] = {}
        for i in range(300):
            response = await send(client, f"/obj/{i}.html")
            self.assertEqual(response.status, 200, response)
            name = response.header("x-backend")
            assert name is not None
            where[f"/obj/{i}.html"] = name
        counts = {b.name: list(where.values()).count(b.name) for b in backends}
        for count in counts.values():
            self.assertTrue(60 <= count <= 140, counts)

        # The same path, with other query strings, on other connections: the same back end.
        for i, path in enumerate(list(where)[:20]):
            other = await self.connect(dlba.http) if i % 5 == 0 else client
            response = await send(other, f"{path}?v={i}&x=y")
            self.assertEqual(response.header("x-backend"), where[path], path)
            response = await send(other, path)
            self.assertEqual(response.header("x-backend"), where[path], path)

        # One curl keep-alive connection, three URLs: each hashed on its own.
        base = f"http://127.0.0.1:{dlba.http}"
        paths = ["/a.html", "/b.gif", "/c.gif", "/d.css", "/e.js", "/f.png"]
        alone = {}
        for p in paths:
            result = await self.curl("-i", base + p)
            [answer] = curl_responses(result.out)
            alone[p] = answer.header("x-backend")
        self.assertGreater(len(set(alone.values())), 1, alone)
        # curl 7.84+ (%header{}); -o per URL: on one connection, answers as when alone.
        argv = ["-w", "%{num_connects} %header{x-backend}\\n"]
        for p in paths:
            argv += ["-o", os.devnull, base + p]
        result = await self.curl(*argv)
        lines = [line.split() for line in result.stdout.splitlines()]
        self.assertEqual([n for n, _ in lines], ["1"] + ["0"] * 5, result.text)
        self.assertEqual([b for _, b in lines], [alone[p] for p in paths], result.text)

        # A back end dies: its URLs go elsewhere, each to one back end; the others' stay.
        await backends[0].child.kill()
        moved: dict[str, set[str | None]] = {}
        for path in list(where)[:60]:
            for _ in range(2):
                response = await send(client, f"{path}?again")
                self.assertEqual(response.status, 200, response)
                name = response.header("x-backend")
                if where[path] == "b1":
                    moved.setdefault(path, set()).add(name)
                else:
                    self.assertEqual(name, where[path], path)
        self.assertTrue(moved)
        for path, names in moved.items():
            self.assertEqual(len(names), 1, (path, names))
            self.assertNotIn("b1", names)


class RuleTests(E2ETestCase):
    async def test_rules_pick_pools(self) -> None:
        """host, path_prefix, header and cookie rules pick pools; first match wins; no
        match → the first pool."""
        names = ["default", "host", "path", "header", "cookie", "hval", "cval"]
        backends = {n: self.backend(n) for n in names}
        pools = [PoolSpec([backends[n]], name=n) for n in names]
        rules: list[dict[str, object]] = [
            {"pool": "host", "host": "shop.example.com"},
            {"pool": "path", "path_prefix": "/static/"},
            {"pool": "hval", "header": "X-Tier=gold"},
            {"pool": "header", "header": "X-Tier"},
            {"pool": "cval", "cookie": "beta=yes"},
            {"pool": "cookie", "cookie": "beta"},
        ]
        dlba = await self.start(pools=pools, rules=rules)
        client = await self.connect(dlba.http)

        async def where(
            target: str, host: str = "example.test", headers: list[tuple[str, str]] | None = None
        ) -> str | None:
            client.send(request(target, host=host, headers=headers or []))
            response = await client.next_response()
            self.assertEqual(response.status, 200, response)
            return response.header("x-backend")

        cases: list[tuple[str, str, list[tuple[str, str]], str]] = [
            ("/", "example.test", [], "default"),
            ("/", "shop.example.com", [], "host"),
            ("/", "SHOP.example.com:8080", [], "host"),
            ("/static/x.css", "example.test", [], "path"),
            ("/staticx", "example.test", [], "default"),
            ("/static/x.css", "shop.example.com", [], "host"),  # first match wins
            ("/", "example.test", [("X-Tier", "gold")], "hval"),
            ("/", "example.test", [("X-Tier", "silver")], "header"),
            ("/", "example.test", [("x-tier", "")], "header"),
            ("/static/a", "example.test", [("X-Tier", "gold")], "path"),
            ("/", "example.test", [("Cookie", "a=1; beta=yes")], "cval"),
            ("/", "example.test", [("Cookie", "beta=no")], "cookie"),
            ("/", "example.test", [("Cookie", "Beta=yes")], "default"),
            ("/", "example.test", [("Cookie", "a=1"), ("Cookie", "beta=yes")], "cval"),
            ("/", "example.test", [("X-Tier", "gold"), ("Cookie", "beta=yes")], "hval"),
            ("/", "other.example.com", [("Cookie", "zeta=1")], "default"),
        ]
        for target, host, headers, expected in cases:
            self.assertEqual(await where(target, host, headers), expected, (target, host, headers))
