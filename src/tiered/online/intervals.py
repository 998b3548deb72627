"""Confidence intervals for a binomial proportion (the audited agreement rate).

Both methods return a two-sided interval at level ``confidence`` for ``k`` successes in
``n`` trials; ``n == 0`` gives the uninformative ``(0, 1)``.

- **Wilson** (score interval): close to nominal coverage on average, never outside
  [0, 1], cheap; the default.
- **Clopper–Pearson** ("exact"): inverts two one-sided binomial tests with beta
  quantiles; coverage is at least nominal everywhere, so it is wider (conservative).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Literal

import numpy as np
from scipy.special import betaincinv  # beta quantiles; scipy.stats costs ~0.6 s more to import

CIMethod = Literal["wilson", "clopper_pearson"]


def _check(k: float, n: float, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``."""
    _check(k, n, confidence)
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    z2n = z * z / n
    center = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * np.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    # Exact endpoints at k = 0 and k = n (rounding must not push them inside).
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return float(lo), float(hi)


def clopper_pearson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson ("exact") interval for ``k`` successes out of ``n``."""
    _check(k, n, confidence)
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    # the q quantile of Beta(a, b) is betaincinv(a, b, q)
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha / 2.0))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - alpha / 2.0))
    return lo, hi


def binomial_interval(
    k: float, n: float, confidence: float = 0.95, method: CIMethod = "wilson"
) -> tuple[float, float]:
    """The interval of ``method`` (``"wilson"`` or ``"clopper_pearson"``)."""
    if method == "wilson":
        return wilson_interval(k, n, confidence)
    if method == "clopper_pearson":
        return clopper_pearson_interval(k, n, confidence)
    raise ValueError(f"unknown CI method {method!r}; known: wilson, clopper_pearson")


__all__ = ["CIMethod", "binomial_interval", "clopper_pearson_interval", "wilson_interval"]
