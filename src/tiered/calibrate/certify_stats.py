"""Finite-sample tests that a mean is at least a bound, for certifying cascades.

Each function returns a p-value for the null hypothesis "the population mean of ``X`` is
below ``mu0``" from ``m`` i.i.d. rows: a small p-value certifies ``E[X] >= mu0``.

- :func:`binomial_pvalue`: ``X`` is 0/1 (a ``correct`` column). Exact: the binomial
  tail at ``mu0``, the most powerful test there is for this null.
- :func:`betting_pvalue`: ``X`` is any bounded value, e.g. the *paired* difference
  ``q_cascade - q_top`` in ``{-1, 0, 1}`` of two models on the same rows. Testing by
  betting (Waudby-Smith & Ramdas, 2024): for every ``λ`` in ``[0, 1/(mu0 - lo))``,
  ``Π_i (1 + λ (X_i - mu0))`` has expectation at most 1 under the null, and so has any
  average of them over a fixed grid of ``λ`` (an even mixture), so Markov's inequality
  makes the inverse of that average a valid p-value. Unlike Hoeffding's or Bentkus's
  bounds it adapts to the variance: a cascade that agrees with the top model on most
  rows has a paired difference that is mostly 0, and certifies on far fewer rows than
  two separate tests of each model's quality would need.

:func:`rows_needed` inverts either test: how many rows drawn like the given ones would
make the p-value reach ``delta`` (the answer to "how much more data would certify it").
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import betainc

# λ grid of the betting mixture: fine enough that the best constant bet is within a few
# percent of a grid point, coarse enough to score thousands of rows at once.
_GRID = 200


def binomial_pvalue(successes: int, m: int, mu0: float) -> float:
    """P(Binomial(m, mu0) >= successes): exact p-value of "the success rate is below mu0"."""
    if m < 0 or not 0 <= successes <= m:
        raise ValueError(f"need 0 <= successes <= m; got {successes} of {m}")
    if successes == 0 or mu0 >= 1.0:
        return 1.0
    if mu0 <= 0.0:
        return 0.0
    # P(X >= k) for X ~ Bin(m, p) is the regularised incomplete beta I_p(k, m - k + 1)
    return float(betainc(successes, m - successes + 1, mu0))


def _lambdas(mu0: float, lo: float) -> np.ndarray:
    top = 1.0 / (mu0 - lo)  # the largest bet that cannot lose everything on X = lo
    return top * np.arange(1, _GRID + 1) / (_GRID + 1)


def _log_growth(x: np.ndarray, mu0: float, lo: float) -> np.ndarray:
    """Per grid ``λ``: sum over rows of log(1 + λ (x - mu0)), shape ``(_GRID,)``."""
    lam = _lambdas(mu0, lo)
    values, counts = np.unique(x, return_counts=True)  # a few distinct values: fast
    return np.log1p(np.outer(lam, values - mu0)) @ counts


def betting_pvalue(x: np.ndarray, mu0: float, lo: float, hi: float) -> float:
    """p-value of "E[X] < mu0" for i.i.d. ``x`` in ``[lo, hi]`` (see the module docstring)."""
    x = np.asarray(x, dtype=float)
    if x.size and (x.min() < lo - 1e-12 or x.max() > hi + 1e-12):
        raise ValueError(f"values must lie in [{lo}, {hi}]")
    if mu0 <= lo:
        return 0.0 if x.size else 1.0  # the mean cannot be below the lower bound
    if mu0 > hi or x.size == 0:
        return 1.0
    growth = _log_growth(np.clip(x, lo, hi), mu0, lo)
    log_capital = float(np.logaddexp.reduce(growth)) - math.log(_GRID)
    return float(min(1.0, math.exp(-log_capital)))


def rows_needed(
    x: np.ndarray, mu0: float, lo: float, delta: float, *, binary: bool = False
) -> float:
    """Rows drawn like ``x`` (its empirical distribution) that would make the test's
    p-value reach ``delta``: ``inf`` when ``x``'s mean is not above ``mu0``.

    For the betting test the mixture's log capital grows by ``m`` times the mean log
    growth per row; for the binomial test the successes are ``m`` times the rate.
    """
    x = np.asarray(x, dtype=float)
    if x.size == 0 or x.mean() <= mu0:
        return math.inf
    bar = math.log(1.0 / delta)
    if binary:
        rate = float(x.mean())

        def passes(m: int) -> bool:
            return binomial_pvalue(min(m, math.ceil(rate * m - 1e-9)), m, mu0) <= delta

    else:
        per_row = _log_growth(x, mu0, lo) / x.size

        def passes(m: int) -> bool:
            return float(np.logaddexp.reduce(m * per_row)) - math.log(_GRID) >= bar

    hi = 1
    while not passes(hi):
        hi *= 2
        if hi > 10**9:
            return math.inf
    lo_m = hi // 2
    while lo_m + 1 < hi:
        mid = (lo_m + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo_m = mid
    return float(hi)


__all__ = ["betting_pvalue", "binomial_pvalue", "rows_needed"]
