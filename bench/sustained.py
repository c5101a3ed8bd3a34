"""The headline figure: the highest offered rate a system sustains, found by bisection.

Sustained (loadgen.Run.sustained): offered open-loop by wrk's paced script,
at least 99% of the messages answered, p99 under a second. The search starts
from the closed-loop throughput as the upper bracket (raised while it still
passes) and halves the bracket until it is within `tolerance` of its top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

GROW = 1.25  # an upper bracket that passes is raised by this much, at most MAX_GROW times
MAX_GROW = 3
MAX_POINTS = 12
FLOOR = 1.0  # msg/s: below this a system sustains nothing worth measuring


@dataclass
class Search:
    upper_start: float
    tolerance: float
    lo: float = 0.0  # the highest rate that passed (0: none did)
    hi: float | None = None  # the lowest that failed (None: none did)
    points: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.hi is not None and self.hi - self.lo <= self.tolerance * self.hi

    def as_dict(self) -> dict[str, object]:
        return {
            "rate": self.lo,
            "bracket": [self.lo, self.hi],
            "upper_start": self.upper_start,
            "tolerance": self.tolerance,
            "converged": self.converged,
            "points": [{"rate": rate, "passed": passed} for rate, passed in self.points],
        }


def bisect(passes: Callable[[float], bool], upper: float, tolerance: float, max_points: int = MAX_POINTS) -> Search:
    """Bracket the highest rate for which `passes(rate)` holds, to within `tolerance` (a fraction)."""
    search = Search(upper_start=upper, tolerance=tolerance)

    def test(rate: float) -> bool:
        rate = round(rate, 1)
        passed = passes(rate)
        search.points.append((rate, passed))
        if passed:
            search.lo = max(search.lo, rate)
        else:
            search.hi = rate if search.hi is None else min(search.hi, rate)
        return passed

    rate = max(upper, FLOOR)
    for _ in range(MAX_GROW + 1):
        if not test(rate):
            break
        rate *= GROW
    if search.hi is None:
        return search  # it sustained even the highest rate tried: at least `lo`
    while not search.converged and search.hi > FLOOR and len(search.points) < max_points:
        test((search.lo + search.hi) / 2)
    return search
