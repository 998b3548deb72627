"""Reading OpenAI-compatible responses: choices, usage, label probabilities, log-prob signals.

:func:`parse_response` reads a chat or completions response into :class:`Choice` objects
and its usage; :func:`assemble_answers` turns the calls of a batch into one
:class:`~tiered.core.answers.AnswerBatch` (majority vote over samples, label
probabilities from top log-probs or votes, log-prob aggregates, verification).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiered.core.answers import AnswerBatch
from tiered.models.llm.labels import LabelSet
from tiered.models.llm.tools import (
    TOOL_CALL_SIGNAL,
    MalformedToolCallError,
    ToolRequest,
    read_tool_calls,
    tool_call_key,
)


class MalformedResponseError(Exception):
    """A response that is not the JSON an OpenAI-compatible endpoint returns."""


@dataclass(slots=True)
class Choice:
    """One returned answer: its text, its tokens' log-probs and top alternatives, and the
    tool calls it made (OpenAI's shape, None for none)."""

    text: str
    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[str, float]] | None = None
    tool_calls: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class CallResult:
    """What one upstream call gave, and what it cost now and when it was paid for."""

    choices: list[Choice]
    tokens_in: int | None
    tokens_out: int | None
    usd: float  # paid by this call now (0 for a cache hit or a joined call)
    latency_ms: float  # measured now
    cached: bool
    recorded_usd: float  # what the response cost when it was paid for
    recorded_latency_ms: float


def _as_float(x: Any) -> float:
    return float(x) if isinstance(x, int | float) else math.nan


def decode_json(body: bytes) -> Any:
    """The body as JSON; :class:`MalformedResponseError` for anything else (deep nesting too)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedResponseError(f"not JSON: {type(exc).__name__}") from exc


def _chat_choice(ch: dict[str, Any]) -> tuple[Any, list[str], list[float], Any]:
    msg = ch.get("message")
    text = msg.get("content") if isinstance(msg, dict) else None
    lp = ch.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    entries = [e for e in content or [] if isinstance(e, dict)]
    tokens = [str(e.get("token", "")) for e in entries]
    logprobs = [_as_float(e.get("logprob")) for e in entries]
    top = None
    if entries and any("top_logprobs" in e for e in entries):
        top = [
            {
                str(t.get("token", "")): _as_float(t.get("logprob"))
                for t in e.get("top_logprobs") or []
                if isinstance(t, dict)
            }
            for e in entries
        ]
    return text, tokens, logprobs, top


def _completion_choice(ch: dict[str, Any]) -> tuple[Any, list[str], list[float], Any]:
    lp = ch.get("logprobs")
    lp = lp if isinstance(lp, dict) else {}
    tokens = [str(t) for t in lp.get("tokens") or []]
    logprobs = [_as_float(x) for x in lp.get("token_logprobs") or []]
    raw_top = lp.get("top_logprobs")
    top = None
    if isinstance(raw_top, list):
        top = [
            {str(k): _as_float(v) for k, v in t.items()} if isinstance(t, dict) else {}
            for t in raw_top
        ]
    return ch.get("text"), tokens, logprobs, top


def parse_response(endpoint: str, data: Any) -> tuple[list[Choice], int | None, int | None]:
    """Choices and usage (prompt, completion tokens) of a chat or completions response."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise MalformedResponseError("no 'choices' list in the response")
    if not data["choices"]:
        raise MalformedResponseError("empty 'choices' list in the response")
    read = _chat_choice if endpoint == "chat" else _completion_choice
    choices = []
    for ch in data["choices"]:
        if not isinstance(ch, dict):
            raise MalformedResponseError("a choice is not an object")
        text, tokens, logprobs, top = read(ch)
        if text is not None and not isinstance(text, str):
            raise MalformedResponseError("a choice's text is not a string")
        calls = None
        msg = ch.get("message")
        if isinstance(msg, dict) and msg.get("tool_calls") is not None:
            try:
                calls = read_tool_calls(msg["tool_calls"])
            except MalformedToolCallError as exc:
                raise MalformedResponseError(str(exc)) from exc
        choices.append(Choice(text or "", tokens, logprobs, top, calls))
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    t_in, t_out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return choices, _count(t_in), _count(t_out)


def _count(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def label_distribution(choice: Choice, labels: LabelSet, *, max_skip: int = 3) -> np.ndarray | None:
    """Label probability mass at the answer's first non-blank token (None without logprobs).

    The mass is *not* normalised: its sum is how much of the model's probability went to
    the label set at all.
    """
    if not choice.tokens:
        return None
    for j, tok in enumerate(choice.tokens[: max_skip + 1]):
        if not tok.strip() and j < len(choice.tokens) - 1:
            continue  # a leading space or newline token: the label comes next
        alts = dict(choice.top[j]) if choice.top is not None and j < len(choice.top) else {}
        if j < len(choice.logprobs):
            alts.setdefault(tok, choice.logprobs[j])
        return labels.mass(alts)
    return None


def logprob_stats(logprobs: Sequence[float], q: float) -> tuple[float, float, float, float] | None:
    """Sum, mean, min and the ``q`` quantile (numpy's linear rule) of the finite log-probs.

    Plain Python: one answer has a few to a few hundred tokens, where ``np.quantile``'s
    fixed cost (~0.1 ms) is most of a call's own overhead in the gateway.
    """
    xs = sorted(x for x in logprobs if math.isfinite(x))
    if not xs:
        return None
    total = math.fsum(xs)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return total, total / len(xs), xs[0], xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def majority(answers: list[str | None]) -> tuple[str | None, float, int]:
    """Majority answer, its share, and the index of its first occurrence."""
    if not answers:
        return None, math.nan, -1
    winner, count = Counter(answers).most_common(1)[0]
    return winner, count / len(answers), answers.index(winner)


def label_probs(
    choices: list[Choice],
    normed: list[str | None],
    answer: str | None,
    labels: LabelSet,
    *,
    voted: bool,
) -> tuple[np.ndarray, float]:
    """Probabilities over the labels and log p(answer) for one item.

    From the top log-probs of the answers' first tokens when there are any, else from the
    votes of several samples, else NaN (no probabilities to give).
    """
    m = len(labels)
    masses = [d for d in (label_distribution(c, labels) for c in choices) if d is not None]
    masses = [d for d in masses if d.sum() > 0]
    k = labels.labels.index(answer) if answer is not None else -1
    if masses:
        mass = masses[0] if len(masses) == 1 else np.mean(masses, axis=0)
        p = mass / mass.sum()
        # min(): a server listing one token twice must not make a probability above 1
        logprob = math.log(min(mass[k], 1.0)) if k >= 0 and mass[k] > 0 else -math.inf
        return p, (logprob if k >= 0 else math.nan)
    if voted:
        counts = np.array([normed.count(lab) for lab in labels.labels], dtype=float)
        p = counts / counts.sum() if counts.sum() else np.full(m, 1.0 / m)
        return p, (math.log(p[k]) if k >= 0 and p[k] > 0 else math.nan)
    return np.full(m, np.nan), math.nan


@dataclass(frozen=True, slots=True)
class Reading:
    """How a stage reads its answers into an :class:`AnswerBatch`."""

    normalize: Callable[[str], str | None]
    labels: LabelSet | None  # classify mode
    samples: int
    verify: bool  # a second prompt variant was asked
    quantile: float  # of the log-probs, for the logprob_qNN signal

    def key(self, choice: Choice) -> str | None:
        """What a choice answers: its tool calls' key, else its normalised text."""
        if choice.tool_calls:
            return tool_call_key(choice.tool_calls)
        return self.normalize(choice.text)


def assemble_answers(
    n: int,
    calls: Sequence[tuple[int, int, CallResult]],
    how: Reading,
    tools: Sequence[ToolRequest | None] | None = None,
) -> AnswerBatch:
    """One answer per item from its calls: ``(item, variant, result)`` triples.

    ``tools`` (per item, for a stage that takes tools) adds the tool calls of each answer
    (``extra["tool_calls"]``) and the ``tool_call`` signal (see :mod:`.tools`).
    """
    n_variants = 2 if how.verify else 1
    per: list[list[list[Choice]]] = [[[] for _ in range(n_variants)] for _ in range(n)]
    cost, t_in, t_out, latency = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    recorded_usd, recorded_ms = np.zeros(n), np.zeros(n)
    cached = np.ones(n, dtype=bool)
    for i, variant, res in calls:
        per[i][variant].extend(res.choices)
        cost[i] += res.usd
        latency[i] = max(latency[i], res.latency_ms)  # an item's calls run concurrently
        recorded_usd[i] += res.recorded_usd
        recorded_ms[i] = max(recorded_ms[i], res.recorded_latency_ms)
        cached[i] &= res.cached
        if not res.cached:
            t_in[i] += res.tokens_in or 0
            t_out[i] += res.tokens_out or 0
    labels: list[str | None] = []
    texts: list[str] = []
    samples: list[list[str]] = []
    vote, verify = np.full(n, np.nan), np.full(n, np.nan)
    lp = {k: np.full(n, np.nan) for k in ("logprob", "logprob_sum", "logprob_mean", "logprob_min")}
    lp_q = np.full(n, np.nan)
    tool_calls: list[list[dict[str, Any]] | None] = []
    tool_ok = np.full(n, np.nan)
    label_set = how.labels
    probs = np.full((n, len(label_set)), np.nan) if label_set is not None else None
    for i in range(n):
        variant_answers = []
        for v in range(n_variants):
            choices = per[i][v]
            if tools is None:
                normed = [how.normalize(c.text) for c in choices]
            else:
                normed = [how.key(c) for c in choices]
            answer, share, first = majority(normed)
            variant_answers.append(answer)
            if v:
                continue
            labels.append(answer)
            texts.append(choices[first].text if first >= 0 else "")
            samples.append(["" if x is None else x for x in normed])
            if tools is not None:
                made = choices[first].tool_calls if first >= 0 else None
                tool_calls.append(made)
                request = tools[i]
                if request is not None:
                    tool_ok[i] = request.signal(made)
            if how.samples > 1:
                vote[i] = share
            if label_set is not None and probs is not None:
                probs[i], lp["logprob"][i] = label_probs(
                    choices, normed, answer, label_set, voted=how.samples > 1
                )
            elif first >= 0:
                stats = logprob_stats(choices[first].logprobs, how.quantile)
                if stats is not None:
                    lp["logprob_sum"][i] = lp["logprob"][i] = stats[0]
                    lp["logprob_mean"][i], lp["logprob_min"][i], lp_q[i] = stats[1:]
        if n_variants == 2:
            a, b = variant_answers
            verify[i] = float(a is not None and a == b)
    signals: dict[str, np.ndarray] = {}
    if label_set is not None:
        signals["logprob"] = lp["logprob"]
    else:
        signals.update(lp)
        signals[f"logprob_q{round(how.quantile * 100):02d}"] = lp_q
    if how.samples > 1:
        signals["vote"] = vote
    if n_variants == 2:
        signals["verify"] = verify
    if tools is not None:
        signals[TOOL_CALL_SIGNAL] = tool_ok
    if probs is not None and np.isnan(probs).all():
        probs = None  # no logprobs and no samples: no probabilities to give
    elif probs is not None:
        probs = np.where(np.isnan(probs), 1.0 / probs.shape[1], probs)
    extra: dict[str, list[Any]] = {
        "text": texts,
        "cached": cached.tolist(),
        "recorded_usd": recorded_usd.tolist(),
        "recorded_latency_ms": recorded_ms.tolist(),
    }
    if tools is not None:
        extra["tool_calls"] = tool_calls
    return AnswerBatch(
        labels=labels,
        cost=cost,
        latency_ms=latency,
        signals=signals,
        probs=probs,
        classes=label_set.labels if probs is not None and label_set is not None else None,
        samples=samples if how.samples > 1 or n_variants == 2 else None,
        tokens_in=t_in,
        tokens_out=t_out,
        extra=extra,
    )


__all__ = [
    "CallResult",
    "Choice",
    "MalformedResponseError",
    "Reading",
    "assemble_answers",
    "decode_json",
    "label_distribution",
    "label_probs",
    "logprob_stats",
    "majority",
    "parse_response",
]
