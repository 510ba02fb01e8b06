"""Every command the README shows can be run once its setup command has run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

README = Path(__file__).resolve().parent.parent / "README.md"

# Shell words that are not programs.
_SHELL = {"do", "done", "in", "then", "fi", "if", "cd", "export", "exit", "echo"}

# An inline `command arg` span: a lower-case word, then an option, number, URL or path.
_INLINE = re.compile(r"`([a-z][a-z0-9.-]*) (?:-|\d|https?://|/|\.)[^`]*`")


def commands(text: str) -> set[str]:
    """The programs the README's shell blocks and inline command spans run."""
    found: set[str] = set()
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"[;&|]+", line):
                words = part.split()
                if words[:1] == ["for"]:
                    continue  # a loop header: its words are not commands
                while words and (words[0] in _SHELL or "=" in words[0]):
                    words = words[1:]
                if words:
                    found.add(words[0])
    found.update(_INLINE.findall(text))
    return found


class ReadmeCommandsTests(SynchronousTestCase):
    def test_every_command_is_installed(self) -> None:
        found = commands(README.read_text())
        self.assertIn("curl", found)  # the parsing found the examples at all
        missing = sorted(c for c in found if shutil.which(c) is None)
        self.assertEqual(missing, [], "the README shows commands .ci/setup does not install")

    def test_every_picture_is_in_the_repository(self) -> None:
        text = README.read_text()
        pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
        local = [p for p in pictures if "://" not in p]
        missing = [p for p in local if not (README.parent / p).is_file()]
        self.assertEqual(missing, [], "the README shows pictures the repository lacks")

    def test_parsing(self) -> None:
        text = (
            "x `nc 127.0.0.1 7701` y `max_concurrent` `curl -i http://h/`\n"
            "```sh\nfor i in 1; do curl -s h; done\nA=1 twistd dlba  # run\n```\n"
        )
        self.assertEqual(commands(text), {"nc", "curl", "twistd"})
