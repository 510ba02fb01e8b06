"""Config text shared by the array's unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def node_tables(numbers: Iterable[int], ip: Callable[[int], str] = "127.0.0.1{}".format) -> str:
    """``[[array.node]]`` tables for ``numbers``, node n at ``ip(n)`` (127.0.0.1n)."""
    return "".join(
        f'[[array.node]]\nnumber = {n}\nmac = "02:00:00:00:00:{n:02x}"\nip = "{ip(n)}"\n'
        for n in numbers
    )
