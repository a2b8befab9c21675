"""Deduplication of event ids: delivery is at least once, so an event may arrive twice."""

from __future__ import annotations

import threading
from collections import OrderedDict

from proxaro_scrape.errors import ConfigurationError

__all__ = ["EventDeduplicator"]


class EventDeduplicator:
    """Remembers the last ``maxsize`` event ids (least recently seen forgotten first).

    Delivery is at least once, so the same event may arrive more than once (a lost answer, a
    retry racing a slow answer).  Thread-safe.

    >>> d = EventDeduplicator(maxsize=2)
    >>> d.seen("evt_1"), d.seen("evt_1")
    (False, True)
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigurationError("maxsize must be a positive int", param="maxsize")
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, event_id: str) -> bool:
        """``True`` if ``event_id`` was seen before; otherwise remember it and return ``False``."""
        with self._lock:
            if event_id in self._ids:
                self._ids.move_to_end(event_id)
                return True
            self._ids[event_id] = None
            if len(self._ids) > self.maxsize:
                self._ids.popitem(last=False)
            return False

    def forget(self, event_id: str) -> None:
        """Forget ``event_id`` (so that a redelivery is handled again)."""
        with self._lock:
            self._ids.pop(event_id, None)

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            return event_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __repr__(self) -> str:
        return f"<EventDeduplicator {len(self)}/{self.maxsize}>"
