"""Distribution-free intervals for what a load level counts: a binomial share and a quantile.

Both rest on the binomial law alone: ``k`` of ``n`` requests meeting a bound
is ``Binomial(n, p)``, and the number of samples below the true
``q``-quantile is ``Binomial(n, q)``. That law counts the requests as
independent draws. Requests served together are not quite: a queue that
builds and drains makes misses come in bursts, and the count then varies
``design_effect`` times more than the law says (Kish's design effect). Every
interval here takes that factor and is computed as if the level had
``n / design_effect`` independent requests, so 1 gives the textbook interval
and 4 one about twice as wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

__all__ = ["clopper_pearson", "confidence_of", "order_ranks", "quantile", "quantile_interval", "wilson_interval"]


def confidence_of(z: float) -> float:
    """The two-sided confidence of a normal ``z`` (1.96 -> 0.95): the scale ``search_goodput`` has always taken."""
    return float(2 * stats.norm.cdf(z) - 1)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not
    collapse to a point at 0 or n successes, which is exactly where SLO
    attainment lives (99% targets, few misses).  ``n == 0`` gives ``(0, 1)``:
    nothing is known.  z=1.96 is a two-sided 95% interval.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if z < 0:
        raise ValueError("z must be >= 0")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == n else min(1.0, center + half)
    return lower, upper


def _check_design_effect(design_effect: float) -> None:
    if not design_effect >= 1:
        raise ValueError(f"design_effect must be >= 1 (1: independent requests), got {design_effect}")


def clopper_pearson(successes: int, n: int, confidence: float = 0.95,
                    design_effect: float = 1.0) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for ``successes / n``; ``(0, 1)`` when ``n == 0``.

    With a ``design_effect`` the beta quantiles take the effective counts
    ``successes / design_effect`` of ``n / design_effect``.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    _check_design_effect(design_effect)
    tail = (1 - confidence) / 2
    k, m = successes / design_effect, n / design_effect
    lower = 0.0 if successes == 0 else float(stats.beta.ppf(tail, k, m - k + 1))
    upper = 1.0 if successes == n else float(stats.beta.ppf(1 - tail, k + 1, m - k))
    return lower, upper


def _binomial_ranks(n: int, q: float, confidence: float) -> tuple[int, int]:
    tail = (1 - confidence) / 2
    j = int(stats.binom.ppf(tail, n, q))
    lower = j if stats.binom.cdf(j, n, q) > tail else j + 1  # largest l with P(B <= l-1) <= tail
    upper = int(stats.binom.ppf(1 - tail, n, q)) + 1
    return max(lower, 0), min(upper, n + 1)


def order_ranks(n: int, q: float, confidence: float = 0.95, design_effect: float = 1.0) -> tuple[int, int]:
    """1-based ranks ``l``, ``u`` with ``X(l) <= q-quantile <= X(u)`` at ``confidence``; 0 or n+1 when unbounded.

    The number of samples below the true quantile is ``Binomial(n, q)``:
    ``P(X(l) > xi) = P(B < l)`` and ``P(X(u) < xi) = P(B >= u)``, each kept
    within half the error.  A ``design_effect`` takes the ranks of
    ``n / design_effect`` samples and scales them back to ``n``, outwards:
    the same centre, a spread ``sqrt(design_effect)`` times as wide.
    """
    _check_design_effect(design_effect)
    m = max(1, round(n / design_effect))  # n itself where requests are independent
    lo, hi = _binomial_ranks(m, q, confidence)
    lower = 0 if lo == 0 else max(1, math.floor(lo * n / m))
    upper = n + 1 if hi > m else min(n, math.ceil(hi * n / m))
    return lower, upper


def quantile_interval(values: Sequence[float], q: float, confidence: float = 0.95,
                      design_effect: float = 1.0) -> tuple[float, float]:
    """Distribution-free interval of the ``q``-quantile from order statistics (-inf / inf where unbounded)."""
    xs = sorted(values)
    lo, hi = order_ranks(len(xs), q, confidence, design_effect)
    return (xs[lo - 1] if lo >= 1 else -math.inf), (xs[hi - 1] if hi <= len(xs) else math.inf)


def quantile(xs: Sequence[float], q: float) -> float:
    """numpy's linear-interpolation quantile of sorted ``xs``, where an infinite neighbour makes it infinite."""
    if not xs:
        return math.nan
    h = (len(xs) - 1) * q
    i = math.floor(h)
    if i + 1 >= len(xs) or h == i:
        return xs[i]
    a, b = xs[i], xs[i + 1]
    return math.inf if math.isinf(b) else a + (h - i) * (b - a)
