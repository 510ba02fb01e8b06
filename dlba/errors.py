"""Errors a person sees: each names where the mistake is and what to do about it."""

from __future__ import annotations


class ConfigError(Exception):
    """A config file that cannot be used.

    ``str()`` is one line, ``FILE:LINE: KEY: PROBLEM (HINT)``, fit to print
    without a traceback.
    """

    def __init__(self, path: str, line: int | None, key: str, problem: str, hint: str = "") -> None:
        self.path = path
        self.line = line
        self.key = key
        self.problem = problem
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        text = f"{where}: {self.key}: {self.problem}" if self.key else f"{where}: {self.problem}"
        return f"{text} ({self.hint})" if self.hint else text


class ConfigErrors(ConfigError):
    """Several mistakes in one file.  ``str()`` is the first (one line, as for one
    mistake); ``errors`` holds them all, in file order, and ``report()`` prints them."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.line, first.key, first.problem, first.hint)
        self.errors = errors

    def report(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class NeedsRestart(Exception):
    """A config the running node cannot take without a restart (``dlba.reload``).

    ``problems`` holds one line per key ("array.table_size: needs a restart (...)");
    ``str()`` is them all, joined by "; ".  Raised before anything has changed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))
