"""The usage guard: never run into overage unnoticed.

Fed by ``GET /v1/usage`` (polled at a slow interval) and by ``usage.threshold.80`` /
``usage.threshold.100`` webhook events.  At 80 % of the plan's cap it warns once; at 100 % it
applies the configured action: ``"warn"`` (warn once, keep routing) or ``"stop"`` (refuse to
route with :class:`~proxaro_scrape.errors.UsageCapError` and tell the ``on_usage_cap``
callbacks once).  A new billing period (usage back under 80 %) re-arms it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["USAGE_CAP_ACTIONS", "UsageGuard"]

USAGE_CAP_ACTIONS = ("warn", "stop")


@dataclass
class UsageGuard:
    """Sans-I/O: :meth:`update` and :meth:`threshold` return what the driver should do."""

    action: str = "warn"
    level: int = 0  # highest threshold reached this period: 0, 80 or 100
    stopped: bool = False
    total_bytes: int | None = None
    cap_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.action not in USAGE_CAP_ACTIONS:
            raise ValueError(f"usage_cap_action is one of {', '.join(USAGE_CAP_ACTIONS)}")

    @property
    def fraction(self) -> float | None:
        """Used / cap, when both are known."""
        if self.total_bytes is None or not self.cap_bytes:
            return None
        return self.total_bytes / self.cap_bytes

    def update(self, total_bytes: int | None, cap_bytes: int | None) -> list[str]:
        """A usage reading.  Returns the actions due: ``warn80``, ``warn100``, ``stop``."""
        self.total_bytes, self.cap_bytes = total_bytes, cap_bytes
        frac = self.fraction
        if frac is None:
            return []
        if frac < 0.8:
            # A new period (or a bigger plan): re-arm.
            self.level, self.stopped = 0, False
            return []
        return self.threshold(100 if frac >= 1.0 else 80)

    def threshold(self, pct: int) -> list[str]:
        """A threshold was crossed (a reading or a ``usage.threshold.<pct>`` event)."""
        actions: list[str] = []
        if pct >= 80 and self.level < 80:
            self.level = 80
            if pct < 100:
                actions.append("warn80")
        if pct >= 100 and self.level < 100:
            self.level = 100
            if self.action == "stop":
                self.stopped = True
                actions.append("stop")
            else:
                actions.append("warn100")
        return actions
