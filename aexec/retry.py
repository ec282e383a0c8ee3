"""Retry policy: how many times a step is retried and how long to wait between attempts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aexec.errors import PlanError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with "equal jitter": ``d/2 + U(0, d/2)``, ``d = backoff·2^(n-1)``.

    ``retries`` is the number of retries after the first attempt; durations are float seconds.
    """

    retries: int = 0
    backoff: float = 1.0
    backoff_max: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise PlanError(f"retries must be a non-negative integer, not {self.retries!r}")
        if not _is_number(self.backoff) or self.backoff < 0:
            raise PlanError(f"retry backoff must be a non-negative number, not {self.backoff!r}")
        if not _is_number(self.backoff_max) or self.backoff_max < 0:
            raise PlanError(
                f"retry backoff max must be a non-negative number, not {self.backoff_max!r}"
            )
        if not isinstance(self.jitter, bool):
            raise PlanError(f"retry jitter must be a boolean, not {self.jitter!r}")

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay(self, attempt: int, sample: float) -> float:
        """Seconds to wait after failed ``attempt`` (1-based); ``sample`` is uniform in [0, 1)."""
        try:
            grown = self.backoff * 2.0 ** (attempt - 1)
        except OverflowError:  # 2.0 ** 1024 and beyond: far past any cap
            grown = math.inf if self.backoff else 0.0
        base = min(self.backoff_max, grown)
        if not self.jitter:
            return base
        return base / 2.0 + sample * base / 2.0

    def to_wire(self) -> list[Any]:
        # Floats always, so that equal policies have one wire form (it feeds plan digests).
        return [self.retries, float(self.backoff), float(self.backoff_max), self.jitter]

    @classmethod
    def from_wire(cls, data: Any) -> RetryPolicy:
        if (
            not isinstance(data, list)
            or len(data) != 4
            or not _is_number(data[1])
            or not _is_number(data[2])
        ):
            raise PlanError(f"malformed retry policy: {data!r:.100}")
        return cls(data[0], float(data[1]), float(data[2]), data[3])


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
