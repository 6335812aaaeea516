"""The demo's event feed: lbclient's own log lines (one per state change: ejected,
readmitted, healthy, unhealthy, ...), with backend names instead of bare addresses.

While installed, the feed is the ``lbclient`` logger's handler (INFO and up), so nothing
is printed behind the live table; plain mode prints each line as it arrives.
Threading: ``emit`` runs on whichever thread logged; the deque append is atomic.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Mapping


class EventFeed(logging.Handler):
    def __init__(self, names: Mapping[str, str], *, echo: bool, keep: int = 6) -> None:
        super().__init__(logging.INFO)
        self._names = dict(names)
        self._echo = echo
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._t0 = time.monotonic()
        self._logger = logging.getLogger("lbclient")
        self._saved = (self._logger.level, self._logger.propagate)

    def phase_started(self) -> None:
        self._t0 = time.monotonic()
        self.lines.clear()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            return
        for address, name in self._names.items():
            text = text.replace(address, name)
        line = f"+{time.monotonic() - self._t0:4.1f}s {text}"
        self.lines.append(line)
        if self._echo:
            print(f"  {line}", file=sys.stdout, flush=True)

    def __enter__(self) -> EventFeed:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
