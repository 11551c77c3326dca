"""How the twistd process logs: plain lines (as twistd writes them) or one JSON object
per line (``--log-format json``, for journald, Loki and the like), without
Twisted's per-port noise.

Pure parts (`json_line`, `is_noise`, `settings_line`) have no reactor; the
observer is handed to twistd as the application's log observer (see
`goop.tap`), so twistd's own lines go through it too.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)

FORMATS: Final = ("text", "json")
# Twisted announces every listening port and every closed one through its
# legacy logger ("QuietSite starting on 8787", "(TCP Port 8787 Closed)");
# goop logs its own line with the URL instead.
_NOISE: Final = re.compile(r"^(?:\w+ starting on \d+|\((?:TCP|UDP) Port \d+ Closed\))$")
# Settings never written to a log.
SECRET_SETTINGS: Final = frozenset({"presence.admin_password"})


def is_noise(event: Mapping[str, Any]) -> bool:
    try:
        text = formatEvent(dict(event))
    except Exception:
        return False
    return bool(_NOISE.match(text))


def _plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def json_line(event: Mapping[str, Any]) -> str:
    """One event as one line of JSON: time (UTC, ISO 8601), level, namespace, message,
    then every plain field the event carries (``peer_id``, ``why``, ...)."""
    level = event.get("log_level")
    when = event.get("log_time")
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        if isinstance(when, int | float)
        else None,
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(dict(event)),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    for key, value in event.items():
        if key.startswith("log_") or key in out or key in ("message", "format", "system"):
            continue
        if _plain(value) and value != out["message"]:
            out[key] = value
    # ensure_ascii: control characters and anything odd arrive escaped, so a
    # line is always one line (a peer ID may hold a newline).
    return json.dumps(out, ensure_ascii=True, default=str)


def json_file_observer(out: IO[str]) -> ILogObserver:
    def observe(event: Mapping[str, Any]) -> None:
        out.write(json_line(event) + "\n")
        out.flush()

    return observe  # type: ignore[return-value]


def _not_noise(event: Mapping[str, Any]) -> Any:
    return PredicateResult.no if is_noise(event) else PredicateResult.maybe


def observer(fmt: str, out: IO[str]) -> ILogObserver:
    """The process's log observer: ``fmt`` (`FORMATS`) to ``out``, noise dropped."""
    base = json_file_observer(out) if fmt == "json" else textFileLogObserver(out)
    predicate: Any = _not_noise
    filtered: ILogObserver = FilteringLogObserver(base, [predicate])
    return filtered


def destination(twistd_options: Mapping[str, Any] | None) -> IO[str] | None:
    """Where twistd would write its log, to write ours there instead: stdout with
    ``--nodaemon`` and no ``--logfile`` (or ``--logfile -``), else that file (default
    ``twistd.log``) appended, rotated as twistd's is. None: leave twistd's own
    (``--syslog``, or ``--logger``)."""
    from twisted.python.logfile import LogFile

    if twistd_options is None:
        return sys.stdout
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    logfile = twistd_options.get("logfile")
    if logfile == "-" or (not logfile and twistd_options.get("nodaemon")):
        return sys.stdout
    rotated: IO[str] = LogFile.fromFullPath(  # type: ignore[no-untyped-call]
        logfile or "twistd.log", rotateLength=1_000_000
    )
    return rotated


def settings_line(values: Mapping[str, Any], defaults: Mapping[str, Any], source: str) -> str:
    """One line for the start: the config file used and every setting not at its default
    (secrets shown as ``***``)."""
    changed = []
    for name, value in values.items():
        if defaults.get(name) == value:
            continue
        shown = "***" if name in SECRET_SETTINGS else json.dumps(value, ensure_ascii=True)
        changed.append(f"{name}={shown}")
    where = f"config file {source}" if source else "no config file"
    return f"{where}; " + (
        "settings not at their default: " + ", ".join(changed) if changed else "all defaults"
    )
