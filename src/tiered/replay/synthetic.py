"""A synthetic replay-log generator, for tests, demos and benchmarks. Not real model outputs.

Every record has ``task: "synthetic"`` and ids ``synthetic/<i>``, so reports and plots
can label it as such. The generating story, a small latent-ability model:

- Each query has a difficulty ``d ~ N(0, 1)`` and a gold answer among ``A``–``D``.
- Model ``j`` has a skill ``s_j``. On a query it draws ``u = s_j - d + noise_sd * e``
  (``e ~ N(0, 1)``) and is correct when ``u > 0``; otherwise it answers a random wrong
  letter. The shared difficulty makes models fail on the same hard queries, as real ones
  do; marginal accuracy is ``Phi(s_j / sqrt(1 + noise_sd**2))``.
- Its confidence is ``logprob = log(sigmoid(conf_scale * u + conf_noise * e'))``:
  informative (it grows with ``u``) but noisy, so thresholds on it help but are not
  perfect.
- Cost is USD per input and output token; latency is lognormal around the model's median.
- With ``samples=k`` each output also carries k sampled answers (fresh noise, same
  difficulty), so the ``vote`` signal can be tried; ``missing_rate`` drops outputs at
  random (never all of a query's) to exercise missing-output handling.

Default models rise in cost (about a decade from first to third, and again to fifth) and
in accuracy (about 0.55 to 0.90).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True, slots=True)
class SyntheticModel:
    """One synthetic model: its skill, its prices and its median latency."""

    name: str
    skill: float
    usd_per_input_token: float
    usd_per_output_token: float
    latency_ms: float


DEFAULT_MODELS: tuple[SyntheticModel, ...] = (
    SyntheticModel("syn-xs", 0.15, 4e-8, 8e-8, 150.0),
    SyntheticModel("syn-s", 0.47, 1.5e-7, 3e-7, 220.0),
    SyntheticModel("syn-m", 0.82, 5e-7, 1e-6, 350.0),
    SyntheticModel("syn-l", 1.16, 2e-6, 6e-6, 600.0),
    SyntheticModel("syn-xl", 1.56, 8e-6, 2.4e-5, 1000.0),
)


def make_synthetic_log(
    n: int,
    models: Sequence[SyntheticModel] = DEFAULT_MODELS,
    seed: int = 0,
    *,
    noise_sd: float = 0.7,
    conf_scale: float = 1.5,
    conf_noise: float = 1.0,
    samples: int = 0,
    missing_rate: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` synthetic replay records (dicts in the replay-log format), reproducible by seed."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if not 0.0 <= missing_rate < 1.0:
        raise ValueError(f"missing_rate must be in [0, 1); got {missing_rate}")
    rng = np.random.default_rng(seed)
    k = len(models)
    difficulty = rng.standard_normal(n)
    gold = rng.integers(0, 4, n)
    tokens_in = 40 + rng.poisson(80, n)
    skill = np.array([m.skill for m in models])
    u = skill[None, :] - difficulty[:, None] + noise_sd * rng.standard_normal((n, k))
    correct = u > 0
    # a wrong answer is one of the three other letters, uniformly
    wrong = (gold[:, None] + rng.integers(1, 4, (n, k))) % 4
    answer = np.where(correct, gold[:, None], wrong)
    conf = conf_scale * u + conf_noise * rng.standard_normal((n, k))
    logprob = -np.logaddexp(0.0, -conf)  # log(sigmoid(conf)), stable
    tokens_out = rng.integers(1, 4, (n, k))
    price_in = np.array([m.usd_per_input_token for m in models])
    price_out = np.array([m.usd_per_output_token for m in models])
    cost = tokens_in[:, None] * price_in[None, :] + tokens_out * price_out[None, :]
    latency = np.array([m.latency_ms for m in models])[None, :] * rng.lognormal(0, 0.3, (n, k))
    keep = rng.random((n, k)) >= missing_rate
    keep[~keep.any(axis=1), -1] = True  # every query keeps at least one output
    sample_letters = None
    if samples > 0:
        us = (
            skill[None, :, None]
            - difficulty[:, None, None]
            + noise_sd * rng.standard_normal((n, k, samples))
        )
        wrong_s = (gold[:, None, None] + rng.integers(1, 4, (n, k, samples))) % 4
        sample_letters = np.where(us > 0, gold[:, None, None], wrong_s)

    names = [m.name for m in models]
    rows: list[dict[str, Any]] = []
    for i in range(n):
        outputs: dict[str, Any] = {}
        for j, name in enumerate(names):
            if not keep[i, j]:
                continue
            out: dict[str, Any] = {
                "answer": LETTERS[answer[i, j]],
                "correct": bool(correct[i, j]),
                "cost": float(cost[i, j]),
                "latency_ms": round(float(latency[i, j]), 2),
                "tokens_in": int(tokens_in[i]),
                "tokens_out": int(tokens_out[i, j]),
                "logprob": round(float(logprob[i, j]), 6),
            }
            if sample_letters is not None:
                out["samples"] = [LETTERS[x] for x in sample_letters[i, j]]
            outputs[name] = out
        rows.append(
            {
                "id": f"synthetic/{i}",
                "task": "synthetic",
                "input": f"Synthetic question {i} (difficulty {difficulty[i]:+.2f}). A, B, C or D?",
                "reference": LETTERS[gold[i]],
                "outputs": outputs,
            }
        )
    return rows


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSON Lines; returns the path."""
    out = Path(path)
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


def write_synthetic_log(path: str | Path, n: int, **kwargs: Any) -> Path:
    """Generate ``n`` synthetic records (see :func:`make_synthetic_log`) and write them."""
    return write_jsonl(make_synthetic_log(n, **kwargs), path)


__all__ = [
    "DEFAULT_MODELS",
    "LETTERS",
    "SyntheticModel",
    "make_synthetic_log",
    "write_jsonl",
    "write_synthetic_log",
]
