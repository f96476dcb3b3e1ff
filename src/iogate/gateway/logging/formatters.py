"""JSON lines for shippers, a readable line for terminals; both redacted."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson

from iogate.gateway.logging.redaction import Redactor

__all__ = ["ConsoleFormatter", "JsonFormatter"]


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    if type(fields) is dict:  # what iogate passes; an ABC check costs more than the rest
        return fields
    return fields if isinstance(fields, Mapping) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, fields.

    Built for the three lines every request writes: the timestamp's date and
    time are formatted once per second, and the redactor runs on the message
    and each string field only when one screen of them all says it could
    change something (``Redactor.needed``). ``line()`` formats from the parts
    without a ``LogRecord`` (``BackgroundStreamHandler``'s direct lines).
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted early by BackgroundStreamHandler
            exception = record.exc_text
        return self.line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            getattr(record, "request_id", None),
            _fields(record),
            exception,
        )

    def line(
        self,
        created: float,
        level: str,
        logger: str,
        message: str,
        request_id: str | None,
        fields: Mapping[str, Any],
        exception: str | None = None,
    ) -> str:
        second = int(created)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._second_text = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        # isoformat(timespec="milliseconds") of the same instant, at a fraction of its cost.
        millis = int((created - second) * 1000)
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{millis:03d}+00:00",
            "level": level,
            "logger": logger,
            "message": message,
            "request_id": request_id,
        }
        texts = [message]
        for key, value in fields.items():
            if key not in entry:
                entry[key] = value
                if type(value) is str:
                    texts.append(value)
        redactor = self.redactor
        if redactor.needed("\n".join(texts)):
            for key, value in entry.items():
                if type(value) is str and key not in _PLAIN_KEYS:
                    entry[key] = redactor(value)
        if exception is not None:
            entry["exception"] = redactor(exception)
        return orjson.dumps(entry, default=str).decode()


# Written by iogate itself from a closed vocabulary (or a sanitised id).
_PLAIN_KEYS = frozenset(("ts", "level", "logger", "request_id"))


class ConsoleFormatter(logging.Formatter):
    """``12:00:00.123 INFO  iogate.access [rid] message`` for a person at a terminal."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%H:%M:%S", time.localtime(record.created))
        request_id = getattr(record, "request_id", None)
        rid = f" [{request_id}]" if request_id else ""
        line = (
            f"{moment}.{int(record.msecs):03d} {record.levelname:<7} {record.name}{rid} "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:  # formatted early by BackgroundStreamHandler
            line += "\n" + record.exc_text
        return self.redactor(line)
