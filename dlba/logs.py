"""Log observers: ``twistd --logger=dlba.logs.json_observer dlba ...`` or ``[log] json = true``."""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """One JSON object a line on standard output (no RS byte before each), for log shippers."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
