from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from dlba.http.rules import (
    RequestRejected,
    check_version,
    comma_tokens,
    split_target,
    valid_host,
)


class HostTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for host in [
            b"example.com",
            b"a.b.c:8080",
            b"127.0.0.1",
            b"[::1]",
            b"[::1]:443",
            b"",
            b"x:",
        ]:
            self.assertTrue(valid_host(host), host)

    def test_invalid(self) -> None:
        for host in [b"a b", b"a/b", b"a:99999", b"a:1:2", b"[::1", b"a@b", b"a\tb", b"a:80x"]:
            self.assertFalse(valid_host(host), host)


class TargetTests(SynchronousTestCase):
    def test_origin_form(self) -> None:
        self.assertEqual(split_target(b"GET", b"/a/b?c=d%20e"), (b"/a/b?c=d%20e", None))

    def test_absolute_form(self) -> None:
        self.assertEqual(split_target(b"GET", b"http://h:81/x"), (b"/x", b"h:81"))
        self.assertEqual(split_target(b"GET", b"HTTPS://h"), (b"/", b"h"))
        self.assertEqual(split_target(b"GET", b"http://h?q"), (b"/?q", b"h"))

    def test_asterisk_only_for_options(self) -> None:
        self.assertEqual(split_target(b"OPTIONS", b"*"), (b"*", None))
        self.assertRaises(RequestRejected, split_target, b"GET", b"*")

    def test_rejected(self) -> None:
        for target in [b"/a#b", b"a/b", b"/a b", b"/%zz", b"ftp://h/", b"http://u@h/", b"//"[:0]]:
            with self.assertRaises(RequestRejected, msg=repr(target)) as cm:
                split_target(b"GET", target)
            self.assertEqual(cm.exception.status, 400)


class VersionTests(SynchronousTestCase):
    def test_versions(self) -> None:
        check_version(1, 0)
        check_version(1, 1)
        self.assertEqual(self.assertRaises(RequestRejected, check_version, 2, 0).status, 505)
        self.assertEqual(self.assertRaises(RequestRejected, check_version, 0, 9).status, 400)
        self.assertEqual(self.assertRaises(RequestRejected, check_version, 1, 2).status, 505)


class TokenTests(SynchronousTestCase):
    def test_tokens(self) -> None:
        self.assertEqual(
            comma_tokens(b"Keep-Alive, , Upgrade ,x"), [b"keep-alive", b"upgrade", b"x"]
        )
