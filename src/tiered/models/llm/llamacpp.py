"""``LlamaCpp``: a local GGUF model in-process, classifying by few-shot next-token logits.

Cascade file form::

    model:
      kind: llamacpp                     # model_path defaults to Gemma 3 270M (PyPI package)
      labels: [fresh, rotten]
      words: {fresh: positive, rotten: negative}   # what the model says for each label
      template: "Review: {input}\\nSentiment:"
      demos:
        - {input: "A gorgeous, witty, seductive movie.", label: fresh}
        - {input: "A tedious mess that never comes to life.", label: rotten}

The prompt is ``instruction``, then every demo as ``template`` followed by its label word
and ``separator``, then the item's ``template``. Base models without a chat template
classify well this way. The label probabilities are the softmax of the next-token logits
of each label word's first token (so first tokens must differ); the answer is the most
probable label, never outside the set. Signals: ``logprob`` (log-probability of the
answer's token over the whole vocabulary) and ``label_mass`` (the vocabulary probability
that went to any label word: low when the model wanted to say something else).

Speed: the demos are a prefix shared by every prompt; its KV cache is kept and only the
tokens after it are evaluated (about 5x fewer tokens with six demos;
``benchmarks/openai_overhead.py`` measures it). Exactly the demo prefix is reused, never a
longer part shared with the previous prompt, so an answer does not depend on the items
before it. The weights load on first use, once per process for every model on the same
file and settings (a lock serialises them: one llama.cpp context).
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tiered.core.answers import AnswerBatch
from tiered.core.items import Item
from tiered.core.model import ModelTags
from tiered.core.spec import BuildContext, register_model
from tiered.errors import ConfigError, ModelError
from tiered.models._params import check_labels, check_words, spec_from_kwargs, spec_from_mapping
from tiered.models.llm.labels import LabelSet
from tiered.models.llm.llama_server import default_gguf


class Demo(BaseModel):
    """One few-shot example."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str
    label: str


class LlamaCppSpec(BaseModel):
    """Parameters of a :class:`LlamaCpp` stage (the ``model:`` mapping of a cascade file)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["llamacpp"] = "llamacpp"
    name: str | None = None
    model_path: str | None = None  # default: Gemma 3 270M Q4_K_M from its PyPI package
    labels: list[str] = Field(min_length=2)
    words: dict[str, str] = Field(default_factory=dict)
    instruction: str = ""
    template: str = "Text: {input}\nLabel:"
    separator: str = "\n\n"
    demos: list[Demo] = Field(default_factory=list)
    n_threads: int = Field(default=2, ge=1)
    n_ctx: int = Field(default=2048, ge=128)
    n_batch: int = Field(default=512, ge=8)
    max_input_chars: int = Field(default=2000, ge=1)
    reuse_prefix: bool = True

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        return check_labels(v)

    @field_validator("words")
    @classmethod
    def _words(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return check_words(v, info.data.get("labels") or [])

    @field_validator("template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{input}" not in v:
            raise ValueError("the template needs an {input} placeholder")
        return v

    @field_validator("demos")
    @classmethod
    def _demos(cls, v: list[Demo], info: ValidationInfo) -> list[Demo]:
        labels = set(info.data.get("labels") or [])
        bad = sorted({d.label for d in v} - labels)
        if bad:
            raise ValueError(f"demo labels not in 'labels': {bad}")
        return v


@dataclass(eq=False)
class _Engine:
    """One loaded GGUF model (a llama.cpp context) and the tokens its KV cache holds.

    Shared by every :class:`LlamaCpp` built with the same weights and context settings
    (several stages or a pickled copy load the weights once); ``lock`` serialises them.
    """

    llm: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    kv: list[int] = field(default_factory=list)


_ENGINES: weakref.WeakValueDictionary[tuple[Any, ...], _Engine] = weakref.WeakValueDictionary()
_ENGINES_LOCK = threading.Lock()


_LOG = logging.getLogger("tiered.llamacpp")
_LOG_TAIL: deque[str] = deque(maxlen=12)  # llama.cpp's last lines, for a failed load's error
_LOG_HOOK: list[Any] = []  # the installed C callback, kept alive while llama.cpp may call it


def _quiet_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's own log lines to the ``tiered.llamacpp`` logger, not the terminal.

    llama-cpp-python's callback prints them to stderr by its own reading of ggml's log
    levels, which newer ggml renumbered: with ``verbose=False`` a warning such as
    "llama_kv_cache_iswa: using full-size SWA cache" still reached the terminal on every
    load. A failed load quotes the last lines in its error instead.
    """
    if _LOG_HOOK:
        return

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def hook(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace").rstrip()
        if line:
            _LOG_TAIL.append(line)
            _LOG.debug("%s", line)

    llama_cpp.llama_log_set(hook, ctypes.c_void_p(0))
    _LOG_HOOK.append(hook)


def _load_engine(path: str, n_ctx: int, n_batch: int, n_threads: int) -> _Engine:
    key = (path, n_ctx, n_batch, n_threads)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            return engine
        try:
            import llama_cpp
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError(
                "the llamacpp model needs llama-cpp-python: pip install 'tiered[llm]'",
                field="model.kind",
            ) from exc
        _quiet_llama_logs(llama_cpp)
        _LOG_TAIL.clear()
        try:
            llm = Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            said = "; ".join(_LOG_TAIL)
            raise ModelError(
                f"cannot load GGUF model {path}: {exc}" + (f" (llama.cpp: {said})" if said else "")
            ) from exc
        engine = _ENGINES[key] = _Engine(llm)
        return engine


class LlamaCpp:
    """A local GGUF model (llama.cpp, in-process) as a few-shot classifier."""

    def __init__(self, spec: LlamaCppSpec | None = None, **params: Any) -> None:
        spec = spec_from_kwargs(LlamaCppSpec, spec, params)
        self.spec = spec
        self.name = spec.name or "llamacpp"
        self.label_set = LabelSet(spec.labels, spec.words)
        self.classes = self.label_set.labels
        self.words = self.label_set.words
        self.tags = ModelTags(gives_probabilities=True)
        self._engine: _Engine | None = None
        self._label_ids = np.zeros(0, dtype=np.intp)
        self._prefix_tokens: list[int] = []
        self.evaluated_tokens = 0  # tokens actually run through the model (prefix reuse saves)
        self.prompt_tokens = 0  # tokens of the full prompts

    def __repr__(self) -> str:
        return (
            f"LlamaCpp(name={self.name!r}, model_path={self.spec.model_path!r}, "
            f"labels={list(self.classes)}, demos={len(self.spec.demos)})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}  # the weights (re)load on first use, once per process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    # ------------------------------------------------------------------ prompt

    @property
    def prefix(self) -> str:
        """The text shared by every prompt: instruction and demos."""
        s = self.spec
        space = "" if s.template[-1:].isspace() else " "
        shots = "".join(
            s.template.replace("{input}", d.input)
            + space
            + self.label_set.word_of(d.label)
            + s.separator
            for d in s.demos
        )
        return s.instruction + shots

    def prompt(self, text: str) -> str:
        text = text[: self.spec.max_input_chars]
        return self.prefix + self.spec.template.replace("{input}", text)

    # ------------------------------------------------------------------ model

    def load(self) -> Any:
        """Load the weights (once per process) and resolve the label words' first tokens."""
        if self._engine is not None:
            return self._engine.llm
        s = self.spec
        engine = _load_engine(s.model_path or default_gguf(), s.n_ctx, s.n_batch, s.n_threads)
        llm = engine.llm
        space = "" if s.template[-1:].isspace() else " "
        ids = [llm.tokenize((space + w).encode(), add_bos=False, special=False) for w in self.words]
        firsts = [t[0] if t else -1 for t in ids]
        if -1 in firsts or len(set(firsts)) != len(firsts):
            raise ConfigError(
                f"label words {list(self.words)} must start with distinct tokens for this model "
                f"(first tokens: {firsts}); choose other 'words'",
                field="model.words",
            )
        self._label_ids = np.array(firsts, dtype=np.intp)
        self._prefix_tokens = llm.tokenize(self.prefix.encode(), add_bos=True) if s.demos else []
        self._engine = engine
        return llm

    def close(self) -> None:
        """Let go of the weights (freed when no other model built on them holds them)."""
        self._engine = None

    def _tokens(self, llm: Any, text: str) -> list[int]:
        budget = self.spec.n_ctx - 1
        limit = self.spec.max_input_chars
        while True:
            toks: list[int] = llm.tokenize(self.prompt(text[:limit]).encode(), add_bos=True)
            if len(toks) <= budget:
                return toks
            if limit <= 1:
                raise ModelError(
                    f"the prompt prefix alone ({len(toks)} tokens) does not fit n_ctx="
                    f"{self.spec.n_ctx}; raise n_ctx or use fewer demos"
                )
            limit = max(1, limit * budget // len(toks) - 16)  # cut the input, keep the query

    def _logits(self, engine: _Engine, toks: list[int]) -> np.ndarray:
        """Next-token logits after ``toks``, evaluating only what the KV cache lacks."""
        llm = engine.llm
        keep = 0
        if self.spec.reuse_prefix:
            # reuse exactly the shared prefix, never a longer common part with the previous
            # prompt: the same split every time, so answers do not depend on item order
            p = self._prefix_tokens
            n_p = len(p)
            if 0 < n_p < len(toks) and toks[:n_p] == p:
                if engine.kv[:n_p] != p:  # the prefix alone first: the same split always
                    llm.reset()
                    engine.kv = []
                    llm.eval(p)
                    engine.kv = list(p)
                    self.evaluated_tokens += n_p
                keep = n_p
            if keep and not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
                keep = 0  # this cache cannot drop a tail: evaluate from scratch
        if keep == 0:
            llm.reset()
        llm.n_tokens = keep
        engine.kv = []  # unknown until eval succeeds
        llm.eval(toks[keep:])
        engine.kv = list(toks)
        self.evaluated_tokens += len(toks) - keep
        self.prompt_tokens += len(toks)
        # llm.scores stays zero without logits_all: read the last position's logits directly
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))

    # ------------------------------------------------------------------ answering

    def worst_case_cost(self, items: Sequence[Item]) -> float:
        """Nothing: a local model costs no money per call."""
        return 0.0

    def predict(self, items: Sequence[Item]) -> AnswerBatch:
        n = len(items)
        m = len(self.classes)
        probs = np.zeros((n, m))
        logprob = np.zeros(n)
        mass = np.zeros(n)
        latency = np.zeros(n)
        tokens_in = np.zeros(n)
        if n:
            llm = self.load()
            engine = self._engine
            assert engine is not None
            ids = self._label_ids
            with engine.lock:
                for i, item in enumerate(items):
                    t0 = time.perf_counter()
                    toks = self._tokens(llm, item.text)
                    logits = self._logits(engine, toks)
                    z = logits[ids].astype(float)
                    top = float(logits.max())
                    log_norm = top + math.log(float(np.exp(logits - top).sum()))
                    p = np.exp(z - z.max())
                    probs[i] = p / p.sum()
                    k = int(z.argmax())
                    logprob[i] = z[k] - log_norm
                    mass[i] = float(np.exp(z - log_norm).sum())
                    tokens_in[i] = len(toks)
                    latency[i] = (time.perf_counter() - t0) * 1e3
        labels: list[str | None] = [self.classes[int(j)] for j in probs.argmax(axis=1)]
        return AnswerBatch(
            labels=labels,
            cost=np.zeros(n),
            latency_ms=latency,
            signals={"logprob": logprob, "label_mass": mass},
            probs=probs,
            classes=self.classes,
            tokens_in=tokens_in,
            tokens_out=np.ones(n),
        )


@register_model("llamacpp")
def build_llamacpp(spec: dict[str, Any], ctx: BuildContext) -> LlamaCpp:
    """Build a :class:`LlamaCpp` from its cascade-file mapping (weights load on first use)."""
    parsed = spec_from_mapping(LlamaCppSpec, spec)
    if parsed.model_path is not None and not parsed.model_path.startswith("/"):
        parsed = parsed.model_copy(update={"model_path": str(ctx.base_dir / parsed.model_path)})
    return LlamaCpp(parsed)


__all__ = ["Demo", "LlamaCpp", "LlamaCppSpec", "build_llamacpp"]
