"""A bounded ring of recent log lines, for the admin ``/logs.json`` view.

A twisted.logger observer; it formats each event once when it arrives and
keeps the newest ``capacity`` lines.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer


@implementer(ILogObserver)
class LogBuffer:
    def __init__(self, capacity: int = 500) -> None:
        self._lines: deque[dict[str, Any]] = deque(maxlen=capacity)

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.getErrorMessage()}"
        self._lines.append(
            {
                "time": event.get("log_time"),
                "level": level.name if level is not None else "info",
                "namespace": event.get("log_namespace", ""),
                "text": text,
            }
        )

    def lines(self) -> list[dict[str, Any]]:
        return list(self._lines)
