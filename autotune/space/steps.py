"""Steps through a knob's range: its neighbours, its edges, and a range widened past an edge.

The rounds of a study move in these steps (``autotune.tuning.rounds``); they
know only the knob, in its own scale (log or linear), not the study.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

from autotune.space.knobs import Knob, SearchSpace

__all__ = ["apply_overrides", "edge", "neighbours", "widened"]


def apply_overrides(base: SearchSpace, overrides: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
    """The base space with the rounds' ranges and pins laid over it (unknown knobs ignored)."""
    knobs = dict(base.knobs)
    for name, change in overrides.items():
        if name in knobs:
            knobs[name] = knobs[name].model_copy(update=dict(change))
    return SearchSpace(engine=base.engine, knobs=knobs, constraints=base.constraints)

def neighbours(knob: Knob, value: Any) -> list[Any]:
    """Values one step from ``value`` within the knob's current range, nearest first.

    A numeric step is an eighth of the range in the knob's scale (log or
    linear), at least the knob's own step; a categorical moves to the adjacent
    choice; a boolean flips.
    """
    if knob.type == "bool":
        return [not value]
    if knob.type == "categorical":
        choices = list(knob.choices or [])
        if value not in choices:
            return []
        i = choices.index(value)
        return [choices[j] for j in (i + 1, i - 1) if 0 <= j < len(choices)]
    if knob.low is None or knob.high is None or not isinstance(value, (int, float)):
        return []
    low, high = float(knob.low), float(knob.high)
    out: list[Any] = []
    for direction in (1, -1):
        if knob.log and value > 0:
            moved = math.exp(math.log(value) + direction * (math.log(high) - math.log(low)) / 8)
        else:
            moved = value + direction * (high - low) / 8
        if knob.type == "int":
            step = int(knob.step or 1)
            moved = int(round(moved / step) * step)
            if moved == value:
                moved = int(value + direction * step)
        elif knob.step:
            moved = round(moved / knob.step) * knob.step
        moved = min(max(moved, low), high)
        if knob.type == "int":
            moved = int(moved)
        if moved != value and moved not in out:
            out.append(moved)
    return out


def edge(knob: Knob, value: float) -> Literal["lower", "upper"] | None:
    assert knob.low is not None and knob.high is not None
    low, high = float(knob.low), float(knob.high)
    if high <= low:
        return None
    if knob.type == "int":
        return "upper" if value >= high else "lower" if value <= low else None
    scale = (lambda x: math.log(x)) if knob.log else (lambda x: x)
    span = scale(high) - scale(low)
    if scale(high) - scale(value) <= 0.02 * span:
        return "upper"
    if scale(value) - scale(low) <= 0.02 * span:
        return "lower"
    return None


def widened(knob: Knob, edge: str) -> tuple[float, float]:
    """Half the width again on the edge's side (a log knob: its ratio's square root again)."""
    assert knob.low is not None and knob.high is not None
    low, high = float(knob.low), float(knob.high)
    if knob.log:
        factor = max(math.sqrt(high / low), 2.0)
        return (low, high * factor) if edge == "upper" else (low / factor, high)
    width = max(high - low, float(knob.step or 1))
    return (low, high + width / 2) if edge == "upper" else (low - width / 2, high)

