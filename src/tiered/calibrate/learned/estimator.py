"""Quality estimators: per model, how likely its answer is correct, before and after it runs.

>>> est = QualityEstimator().fit(log)                       # doctest: +SKIP
>>> est.exante(items)            # (n, m): P(model j correct | query)      # doctest: +SKIP
>>> est.posthoc(items, "llama3.1-8b", answers, earlier)     # doctest: +SKIP
>>> est.save("cascade.estimator.json")   # and cascade.estimator.npz  # doctest: +SKIP

- **ex-ante** ``P(correct | query)``: hashed query n-grams, task/subject, length
  (optionally a MiniLM embedding). Used to skip a stage before paying for it and to route.
- **post-hoc** ``P(correct | query, answer, earlier answers)``: the ex-ante estimates of
  every model (stacked: they summarise the query), hashed answer n-grams and the answer's
  shape, agreement with each earlier stage's answer, and the model's own confidence
  signals (``logprob`` ...) where the log has them. This is FrugalGPT's scorer.

Each is a :class:`~tiered.calibrate.learned.heads.Head` per model: logistic regression (SGD) or a
small MLP, Platt- or isotonic-calibrated on held-out folds. Fitted from a replay log with
cross-fitting: a query of the training log is scored by the fold learner that did not see
it (matched by id and text), so replaying the training log is an honest measurement.
Online, :meth:`QualityEstimator.partial_fit` learns from new labels (the expert's answers:
:meth:`QualityEstimator.learn_from_expert`).

Also per model: a cost estimate from the query's length (a non-negative linear fit), so
routing can weigh a call's price before making it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls

from tiered.calibrate.learned.features import EMBED_DIM, FeatureSpec, Featurizer, query_numbers
from tiered.calibrate.learned.heads import Calibration, CalibrationKind, Head, HeadKind, logit
from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.rules import normalize_answer
from tiered.core.signals import available_signals, read_signal
from tiered.errors import ConfigError
from tiered.replay.log import ReplayLog

_KEY = "routing.key"


def item_key(item: Item) -> str:
    """Id and text digest: how a query of the training log is recognised (cross-fitting)."""
    key = item.cache.get(_KEY)
    if key is None:
        digest = hashlib.md5(item.text.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]
        key = item.cache[_KEY] = f"{item.id}\0{digest}"
    return key  # type: ignore[no-any-return]


def _query_numbers(item: Item) -> set[float]:
    got = item.cache.get("routing.numbers")
    if got is None:
        got = item.cache["routing.numbers"] = query_numbers(item.text)
    return got  # type: ignore[no-any-return]


def _task(item: Item) -> str | None:
    t = item.fields.get("task")
    return t if isinstance(t, str) else None


def _unrecorded(model: str) -> str:
    from tiered.replay.model import unrecorded_answer

    return unrecorded_answer(model)


def normalise(
    labels: Sequence[str | None], model: str, extract: str | None = None
) -> list[str | None]:
    """Answers as ``Agreement`` compares them (``extract``: ``final_number``, ``choice``);
    a replayed placeholder (answer not recorded) is None."""
    placeholder = _unrecorded(model)
    return [None if x == placeholder else normalize_answer(x, extract) for x in labels]


EXTRACTORS: tuple[str | None, ...] = (None, "final_number", "choice")


def choose_extract(labels: Sequence[Sequence[str | None]], models: Sequence[str]) -> str | None:
    """The answer reduction under which models agree most often (free-text math answers
    agree on their final number, multiple-choice ones on the option letter)."""
    best, best_rate = None, -1.0
    for ex in EXTRACTORS:
        cols = [
            np.array(normalise(lab, m, ex), dtype=object)
            for lab, m in zip(labels, models, strict=True)
        ]
        known = [_known(c.tolist()) for c in cols]
        given = sum(int(k.sum()) for k in known)
        total = sum(int(_known(list(lab)).sum()) for lab in labels)
        if total == 0 or given < 0.5 * total:
            continue  # the reduction finds nothing in most answers
        agree = pairs = 0
        for a in range(len(cols)):
            for b in range(a + 1, len(cols)):
                both = known[a] & known[b]
                pairs += int(both.sum())
                agree += int((both & (cols[a] == cols[b]).astype(bool)).sum())
        rate = agree / pairs if pairs else 0.0
        if rate > best_rate + 1e-9:
            best, best_rate = ex, rate
    return best


def _answer_texts(labels: Sequence[str | None], model: str) -> list[str | None]:
    placeholder = _unrecorded(model)
    return [None if x == placeholder else x for x in labels]


def _known(labels: Sequence[str | None]) -> np.ndarray:
    return np.fromiter((x is not None for x in labels), dtype=bool, count=len(labels))


def _soft(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, 0/1 labels and weights: a quality in (0, 1) becomes two weighted rows."""
    n = len(y)
    if np.isin(y, (0.0, 1.0)).all():
        return np.arange(n), y.astype(float), np.ones(n)
    idx = np.concatenate([np.arange(n), np.arange(n)])
    lab = np.concatenate([np.ones(n), np.zeros(n)])
    w = np.concatenate([y, 1 - y])
    keep = w > 0
    return idx[keep], lab[keep], w[keep]


class QualityEstimator:
    """Per-model P(correct) before (ex-ante) and after (post-hoc) the model answers."""

    def __init__(
        self,
        models: Sequence[str] = (),
        *,
        features: FeatureSpec | None = None,
        head: HeadKind = "logistic",
        calibration: CalibrationKind = "sigmoid",
        folds: int = 5,
        alphas: Sequence[float] = (1e-4, 1e-3),
        seed: int = 0,
        posthoc: bool = True,
    ) -> None:
        if head not in ("logistic", "mlp"):
            raise ConfigError(
                f"The 'head' parameter must be 'logistic' or 'mlp'. Got {head!r} instead.",
                field="head",
            )
        if calibration not in ("sigmoid", "isotonic"):
            raise ConfigError(
                "The 'calibration' parameter must be 'sigmoid' or 'isotonic'. "
                f"Got {calibration!r} instead.",
                field="calibration",
            )
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ConfigError(
                f"The 'folds' parameter must be an int >= 2. Got {folds!r} instead.",
                field="folds",
            )
        if not alphas or any(not (a > 0) for a in alphas):
            raise ConfigError(
                f"The 'alphas' parameter must be a non-empty list of numbers > 0. "
                f"Got {list(alphas)!r} instead.",
                field="alphas",
            )
        self.spec = features or FeatureSpec()
        self.featurizer = Featurizer(self.spec)
        self.head = head
        self.calibration = calibration
        self.folds = folds
        self.alphas = tuple(float(a) for a in alphas)
        self.seed = seed
        self.use_posthoc = posthoc
        self.fitted_on: str | None = None
        # how answers are reduced before agreement is judged (chosen when fitting)
        self.extract: str | None = (
            None if self.spec.agreement in ("auto", "exact") else (self.spec.agreement)
        )
        self.n_rows = 0
        self._reset(list(models))

    def _reset(self, models: list[str]) -> None:
        self.models = models
        m = len(models)
        self.exante_heads = [self._new_head() for _ in range(m)]
        self.posthoc_heads = [self._new_head() for _ in range(m)]
        self.signal_stats: list[list[tuple[str, float, float]]] = [[] for _ in range(m)]
        # cost per call = a + b * (query chars / 1000), clipped to [lo, hi]
        self.cost_fit = np.zeros((m, 4))
        self.cost_fit[:, 3] = np.inf
        # how far post-hoc estimates spread around the ex-ante one (Beta concentration)
        self.kappa = np.full(m, 1e4)
        self.rank = np.arange(m)  # cost rank: which models count as "earlier" in training
        self._fold_of: dict[str, int] = {}
        self.token = uuid.uuid4().hex

    def _new_head(self) -> Head:
        return Head(kind=self.head, calibration=Calibration(self.calibration), seed=self.seed)

    def __repr__(self) -> str:
        return (
            f"QualityEstimator(models={self.models!r}, head={self.head!r}, "
            f"fitted_on={self.fitted_on!r}, rows={self.n_rows})"
        )

    # -- lookup ----------------------------------------------------------------------------
    def index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise ConfigError(
                f"the quality estimator has no model '{model}'; its models: "
                f"{', '.join(self.models) or 'none'}",
                field="model",
            ) from None

    def _folds(self, items: Sequence[Item]) -> np.ndarray | None:
        if not self._fold_of:
            return None
        get = self._fold_of.get
        return np.fromiter((get(item_key(it), -1) for it in items), np.int64, len(items))

    # -- features --------------------------------------------------------------------------
    def query_matrix(self, items: Sequence[Item]) -> sp.csr_matrix:
        emb = self._embeddings(items) if self.spec.embed else None
        return self.featurizer.query([it.text for it in items], [_task(it) for it in items], emb)

    def _embeddings(self, items: Sequence[Item]) -> np.ndarray:
        """MiniLM embeddings, kept in ``item.cache`` under the embedding stage's key: an
        item embedded by either is not embedded again."""
        enc = self.featurizer.encoder
        key = getattr(enc, "cache_key", "routing.embedding")
        todo = [i for i, it in enumerate(items) if key not in it.cache]
        if todo:
            fresh = self.featurizer.embed([items[i].text for i in todo])
            for i, row in zip(todo, fresh, strict=True):
                items[i].cache[key] = row.copy()
        return np.stack([it.cache[key] for it in items]) if items else np.zeros((0, EMBED_DIM))

    def _exante_block(self, p: np.ndarray) -> np.ndarray:
        return np.clip(logit(p), -6.0, 6.0) / 3.0

    def _signal_block(self, j: int, answers: AnswerBatch) -> np.ndarray:
        stats = self.signal_stats[j]
        n = len(answers)
        out = np.zeros((n, 2 * len(stats)))
        have = set(available_signals(answers)) if stats else set()
        for k, (name, mu, sd) in enumerate(stats):
            v = read_signal(answers, name) if name in have else np.full(n, np.nan)
            missing = ~np.isfinite(v)
            out[:, 2 * k] = np.where(missing, 0.0, np.clip((v - mu) / sd, -5.0, 5.0))
            out[:, 2 * k + 1] = missing
        return out

    def posthoc_static(
        self, items: Sequence[Item], j: int, answers: AnswerBatch, exante: np.ndarray
    ) -> sp.csr_matrix:
        """The post-hoc features that do not depend on which stages ran before."""
        model = self.models[j]
        texts = _answer_texts(answers.labels, model)
        ans = self.featurizer.answer([_query_numbers(it) for it in items], texts)
        dense = np.hstack([self._exante_block(exante), self._signal_block(j, answers)])
        return sp.hstack([sp.csr_matrix(dense, dtype=np.float32), ans], format="csr")

    def agreement(
        self, j: int, mine: Sequence[str | None], earlier: Mapping[int, Sequence[str | None]]
    ) -> np.ndarray:
        """Agree/disagree with each earlier model, how many answered, the share agreeing."""
        m = len(self.models)
        n = len(mine)
        out = np.zeros((n, 2 * m + 3))
        me = np.empty(n, dtype=object)
        me[:] = list(mine)
        has = _known(mine)
        n_run = np.zeros(n)
        n_agree = np.zeros(n)
        for i, labels in earlier.items():
            if i == j:
                continue
            other = np.empty(n, dtype=object)
            other[:] = list(labels)
            ok = has & _known(labels)
            eq = ok & (other == me).astype(bool)
            out[:, 2 * i] = eq
            out[:, 2 * i + 1] = ok & ~eq
            n_run += ok
            n_agree += eq
        out[:, 2 * m] = n_run / max(m - 1, 1)
        out[:, 2 * m + 1] = np.divide(n_agree, n_run, out=np.zeros(n), where=n_run > 0)
        out[:, 2 * m + 2] = n_run > 0
        return out

    def _earlier(self, earlier: Mapping[str, Sequence[str | None]]) -> dict[int, list[str | None]]:
        got = {}
        for name, labels in earlier.items():
            if name in self.models:
                got[self.models.index(name)] = normalise(labels, name, self.extract)
        return got

    # -- prediction ------------------------------------------------------------------------
    def exante(self, items: Sequence[Item]) -> np.ndarray:
        """``(n, m)``: P(model j answers item i correctly), from the query alone."""
        key = f"routing.exante.{self.token}"
        todo = [i for i, it in enumerate(items) if key not in it.cache]
        if todo:
            sub = [items[i] for i in todo]
            X = self.query_matrix(sub)
            folds = self._folds(sub)
            P = np.column_stack([h.predict(X, folds) for h in self.exante_heads])
            for r, it in enumerate(sub):
                it.cache[key] = P[r]
        if not items:
            return np.zeros((0, len(self.models)))
        return np.stack([it.cache[key] for it in items])

    def posthoc(
        self,
        items: Sequence[Item],
        model: str,
        answers: AnswerBatch,
        earlier: Mapping[str, Sequence[str | None]] | None = None,
    ) -> np.ndarray:
        """P(``model``'s answers are correct), given them and earlier stages' answers.

        ``earlier`` maps model names to their answers for the same items (``None`` where
        that model did not run); names the estimator does not know are ignored.
        """
        j = self.index(model)
        if not self.use_posthoc:
            return self.exante(items)[:, j]
        static = self.posthoc_static(items, j, answers, self.exante(items))
        mine = normalise(answers.labels, model, self.extract)
        agree = self.agreement(j, mine, self._earlier(earlier or {}))
        X = sp.hstack([static, sp.csr_matrix(agree, dtype=np.float32)], format="csr")
        return self.posthoc_heads[j].predict(X, self._folds(items))

    def cost(self, items: Sequence[Item]) -> np.ndarray:
        """``(n, m)``: expected USD per call of each model, from the query's length."""
        x = np.fromiter((len(it.text) for it in items), float, len(items)) / 1000.0
        a, b, lo, hi = (self.cost_fit[:, k] for k in range(4))
        return np.clip(a[None, :] + b[None, :] * x[:, None], lo[None, :], hi[None, :])

    # -- training --------------------------------------------------------------------------
    def fit(self, log: ReplayLog, rows: np.ndarray | None = None) -> QualityEstimator:
        """Fit every model's heads and cost estimate on ``log`` (or its ``rows``)."""
        from tiered.replay.model import Replay, replay_items

        sub = log if rows is None else log.subset(np.asarray(rows))
        if len(sub) == 0:
            raise ConfigError("cannot fit a quality estimator on an empty log", field="log")
        models = list(self.models) or list(sub.models)
        cols = [sub.model_index(x) for x in models]
        self._reset(models)
        items = replay_items(sub)
        n, m = len(items), len(models)
        k = min(self.folds, n)
        fold = np.random.default_rng(self.seed).permutation(n) % k
        Q = np.asarray(sub.quality[:, cols], dtype=float)
        C = np.asarray(sub.cost[:, cols], dtype=float)
        present = np.asarray(sub.present[:, cols], dtype=bool)
        mean_cost = np.array(
            [C[present[:, j], j].mean() if present[:, j].any() else 0.0 for j in range(m)]
        )
        self.rank = np.argsort(np.argsort(mean_cost, kind="stable"), kind="stable")
        self._fit_costs(items, C, present)

        X = self.query_matrix(items)
        exante = np.empty((n, m))
        for j in range(m):
            idx, y, w = _soft(Q[:, j])
            oof = self.exante_heads[j].fit(X[idx], y, w, fold[idx], self.alphas)
            exante[idx, j] = oof  # both rows of a soft label share features and fold
        if self.use_posthoc:
            answers = [Replay(sub, name).predict(items) for name in models]
            for j in range(m):
                self._fit_signals(j, answers[j], present[:, j])
            self.extract = (
                choose_extract([a.labels for a in answers], models)
                if self.spec.agreement == "auto"
                else (None if self.spec.agreement == "exact" else self.spec.agreement)
            )
            norm = [
                normalise(a.labels, name, self.extract)
                for a, name in zip(answers, models, strict=True)
            ]
            rng = np.random.default_rng(self.seed + 1)
            for j in range(m):
                self._fit_posthoc(
                    j, items, answers[j], norm, exante, Q[:, j], present[:, j], fold, rng
                )
        self._fold_of = {item_key(it): int(f) for it, f in zip(items, fold, strict=True)}
        self.fitted_on = log.path
        self.n_rows = n
        self.token = uuid.uuid4().hex
        return self

    def _fit_costs(self, items: list[Item], C: np.ndarray, present: np.ndarray) -> None:
        x = np.fromiter((len(it.text) for it in items), float, len(items)) / 1000.0
        for j in range(C.shape[1]):
            ok = present[:, j]
            if not ok.any():
                continue
            c = C[ok, j]
            A = np.column_stack([np.ones(ok.sum()), x[ok]])
            coef = nnls(A, c)[0] if ok.sum() >= 5 else np.array([c.mean(), 0.0])
            self.cost_fit[j] = [coef[0], coef[1], c.min(), c.max()]

    def _fit_signals(self, j: int, answers: AnswerBatch, ok: np.ndarray) -> None:
        stats = []
        for name in available_signals(answers):
            v = read_signal(answers, name)[ok]
            v = v[np.isfinite(v)]
            if len(v) >= 2 and v.std() > 0:
                stats.append((name, float(v.mean()), float(v.std())))
        self.signal_stats[j] = stats

    def _fit_posthoc(
        self,
        j: int,
        items: list[Item],
        answers: AnswerBatch,
        norm: list[list[str | None]],
        exante: np.ndarray,
        quality: np.ndarray,
        present: np.ndarray,
        fold: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Rows twice: after every cheaper model, and after a random subset of them."""
        rows = np.flatnonzero(present)
        if rows.size == 0:
            return
        sub_items = [items[i] for i in rows.tolist()]
        static = self.posthoc_static(sub_items, j, answers.take(rows), exante[rows])
        cheaper = [i for i in range(len(self.models)) if self.rank[i] < self.rank[j]]
        mine = [norm[j][i] for i in rows.tolist()]

        def labels_of(i: int, keep: np.ndarray) -> list[str | None]:
            return [x if k else None for x, k in zip((norm[i][r] for r in rows), keep, strict=True)]

        full = self.agreement(j, mine, {i: [norm[i][r] for r in rows] for i in cheaper})
        blocks = [full]
        if cheaper:
            some = {i: labels_of(i, rng.random(rows.size) < 0.5) for i in cheaper}
            blocks.append(self.agreement(j, mine, some))
        copies = len(blocks)
        X = sp.vstack(
            [sp.hstack([static, sp.csr_matrix(b, dtype=np.float32)], format="csr") for b in blocks],
            format="csr",
        )
        idx, y, w = _soft(np.tile(quality[rows], copies))
        f = np.tile(fold[rows], copies)[idx]
        oof = self.posthoc_heads[j].fit(X[idx], y, w, f, self.alphas)
        # spread of post-hoc estimates around the ex-ante ones (rows after every cheaper one)
        first = idx < rows.size
        p = np.empty(rows.size)
        p[idx[first]] = oof[first]
        mu = exante[rows, j]
        spread = float(np.mean((p - mu) ** 2))
        var = float(np.mean(mu * (1 - mu)))
        self.kappa[j] = float(np.clip(var / spread - 1.0, 0.5, 1e4)) if spread > 1e-9 else 1e4

    # -- online ----------------------------------------------------------------------------
    def partial_fit(
        self,
        items: Sequence[Item],
        model: str,
        correct: Sequence[float] | np.ndarray,
        answers: AnswerBatch | None = None,
        earlier: Mapping[str, Sequence[str | None]] | None = None,
    ) -> QualityEstimator:
        """Learn from labelled items: was ``model`` correct on each (1/0 or a score)?

        Updates the ex-ante head, and the post-hoc one when ``answers`` are given. The
        calibration maps stay as fitted.
        """
        if model not in self.models:
            self._add_model(model)
        j = self.index(model)
        y = (np.asarray(correct, dtype=float) >= 0.5).astype(float)
        if len(y) != len(items):
            raise ConfigError(
                f"partial_fit got {len(y)} labels for {len(items)} items", field="correct"
            )
        if not len(items):
            return self
        self.exante_heads[j].partial_fit(self.query_matrix(items), y)
        if answers is not None and self.use_posthoc:
            static = self.posthoc_static(items, j, answers, self.exante(items))
            mine = normalise(answers.labels, model, self.extract)
            agree = self.agreement(j, mine, self._earlier(earlier or {}))
            X = sp.hstack([static, sp.csr_matrix(agree, dtype=np.float32)], format="csr")
            self.posthoc_heads[j].partial_fit(X, y)
        self.token = uuid.uuid4().hex  # cached ex-ante estimates are stale now
        return self

    def learn_from_expert(
        self, items: Sequence[Item], answers: Mapping[str, AnswerBatch], expert: str
    ) -> QualityEstimator:
        """Online labels from the expert: a model is correct where it agrees with ``expert``."""
        if expert not in answers:
            raise ConfigError(f"no answers of the expert '{expert}' to learn from", field="expert")
        ref = np.empty(len(items), dtype=object)
        ref[:] = normalise(answers[expert].labels, expert, self.extract)
        rows = np.flatnonzero(_known(ref.tolist()))
        sub = [items[i] for i in rows.tolist()]
        names = [x for x in answers if x != expert]
        names.sort(key=lambda x: self.rank[self.models.index(x)] if x in self.models else 0)
        for pos, name in enumerate(names):
            batch = answers[name].take(rows)
            mine = np.empty(rows.size, dtype=object)
            mine[:] = normalise(batch.labels, name, self.extract)
            correct = (mine == ref[rows]).astype(float)
            earlier = {e: answers[e].take(rows).labels for e in names[:pos]}
            self.partial_fit(sub, name, correct, answers=batch, earlier=earlier)
        return self

    def _add_model(self, model: str) -> None:
        self.models.append(model)
        self.exante_heads.append(self._new_head())
        self.posthoc_heads.append(self._new_head())
        self.signal_stats.append([])
        self.cost_fit = np.vstack([self.cost_fit, [0.0, 0.0, 0.0, np.inf]])
        self.kappa = np.append(self.kappa, 1e4)
        self.rank = np.append(self.rank, len(self.models) - 1)

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the estimator to ``path`` (``.json``) and its arrays to the ``.npz`` next
        to it (:mod:`tiered.calibrate.learned.saved`: arrays + JSON, no pickle)."""
        from tiered.calibrate.learned.saved import save_estimator

        return save_estimator(self, path)

    @classmethod
    def load(cls, path: str | Path) -> QualityEstimator:
        """Read a saved estimator; a file in another format or version is refused
        (loading never runs code from the file)."""
        from tiered.calibrate.learned.saved import load_estimator_file

        return load_estimator_file(path, cls)


__all__ = ["QualityEstimator", "item_key", "normalise"]
