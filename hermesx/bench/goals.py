"""The speed goals of a call, judged from the figures of one `hermesx bench invoke` run.

Each goal is a ratio of two figures of the same run (the machine's speed
cancels out) and a limit; :func:`judge` adds ``goal_<name>_ratio``,
``goal_<name>_limit`` and ``goal_<name>_met`` to the figures, and
:func:`report` prints figures and goals for a person. The goals and why they
are what they are: docs/PERFORMANCE.md "Figures".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["GOALS", "Goal", "judge", "report"]

Figures = Mapping[str, float]


@dataclass(frozen=True, slots=True)
class Goal:
    name: str
    says: str  # the goal in words
    ratio: Callable[[Figures], float]
    limit: float
    at_most: bool = True  # False: the ratio must be at least the limit

    def met(self, ratio: float) -> bool:
        return ratio <= self.limit if self.at_most else ratio >= self.limit


def _over(numerator: str, denominator: str) -> Callable[[Figures], float]:
    return lambda f: f[numerator] / f[denominator]


# A forwarding hop is judged against a plain call made alike (docs/PERFORMANCE.md
# "Seventh round: the first call after a move"): the cold hop (`forwarding_hop_us`,
# first calls made a pause after the moves) against the direct first call after the
# same pause, the warm hop (calls back to back) against the back-to-back plain call.
# A first call after a pause costs ~3 back-to-back calls whether or not it is
# forwarded; dividing a cold hop by a warm call counted that pause as the hop's.


GOALS: tuple[Goal, ...] = (
    Goal(
        "plain_p50_over_floor",
        "plain call p50 <= 1.5 x TCP floor p50",
        _over("invoke_c1_p50_us", "tcp_floor_c1_p50_us"),
        1.5,
    ),
    Goal(
        "plain_c8_rate_over_floor",
        "plain calls/s, 8 clients >= 0.4 x TCP floor's",
        _over("invoke_c8_calls_per_s", "tcp_floor_c8_calls_per_s"),
        0.4,
        at_most=False,
    ),
    Goal(
        "tls_cost",
        "mutual TLS adds <= 20% to the plain call p50",
        lambda f: _over("invoke_c1_p50_us", "invoke_insecure_c1_p50_us")(f) - 1.0,
        0.2,
    ),
    Goal(
        "durable_p50_over_budget",
        "durable p50 <= plain p50 + 3 x disk sync p50",
        lambda f: f["durable_c1_p50_us"] / (f["invoke_c1_p50_us"] + 3 * f["disk_sync_4k_p50_us"]),
        1.0,
    ),
    Goal(
        "durable_c8_rate_over_plain",
        "durable calls/s, 8 clients on 8 atoms >= 0.5 x plain's, 8 clients",
        _over("durable_c8_calls_per_s", "invoke_c8_calls_per_s"),
        0.5,
        at_most=False,
    ),
    Goal(
        "hop_over_plain",
        "a forwarding hop adds <= 1 plain call, cold and warm (the dearer)",
        lambda f: max(
            f["forwarding_hop_us"] / f["first_call_0_hops_p50_us"],
            f["forwarding_hop_warm_us"] / f["invoke_c1_p50_us"],
        ),
        1.0,
    ),
    Goal(
        "runtime_call",
        "in-process call p50 (bench runtime) <= 5 us",
        lambda f: f["runtime_call_p50_us"] / 5.0,
        1.0,
    ),
)


def judge(figures: dict[str, float]) -> None:
    """Add every goal's ratio, limit and verdict to ``figures`` (a goal short of figures: none)."""
    for goal in GOALS:
        try:
            ratio = goal.ratio(figures)
        except (KeyError, ZeroDivisionError):
            continue
        figures[f"goal_{goal.name}_ratio"] = ratio
        figures[f"goal_{goal.name}_limit"] = goal.limit
        figures[f"goal_{goal.name}_met"] = goal.met(ratio)


def _value(value: float) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"


def report(figures: Mapping[str, float], table: Callable[..., str]) -> str:
    """Figures, then the goals with met / not met, as text for a person."""
    rows = [(k, _value(v)) for k, v in figures.items() if not k.startswith("goal_")]
    text = table(rows, ["FIGURE", "VALUE"])
    goal_rows = []
    for goal in GOALS:
        key = f"goal_{goal.name}_ratio"
        if key in figures:
            met = figures[f"goal_{goal.name}_met"]
            goal_rows.append((goal.says, f"{figures[key]:.2f}", "met" if met else "NOT met"))
    if goal_rows:
        text += "\n\n" + table(goal_rows, ["GOAL", "RATIO", "VERDICT"])
    return text
