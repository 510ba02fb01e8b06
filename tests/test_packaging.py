"""Every package of dlba is listed in setup.cfg, so an installed node has all of it.

(.ci/run checks the wheel too, but only after the suite: a package missing there fails
the installed-node tests first, with an import error far from the cause.)
"""

from __future__ import annotations

import configparser
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent


class PackagingTests(SynchronousTestCase):
    def test_every_package_is_listed(self) -> None:
        cfg = configparser.ConfigParser()
        cfg.read(ROOT / "setup.cfg")
        listed = {
            line.strip()
            for line in cfg["options"]["packages"].splitlines()
            if line.strip() and not line.strip().startswith("#")
        }
        found = {
            ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dlba").rglob("__init__.py")
        }
        self.assertEqual(sorted(found - listed), [], "add these to setup.cfg [options] packages")
