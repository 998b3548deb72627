"""What a run does: a :class:`RunPlan` (the config plus every path and switch).

:func:`make_plan` resolves a command line (a YAML config and an INPUT, or an INPUT alone
in quick mode, see :func:`quick_config`) into a plan; a library caller may also build a
:class:`RunPlan` directly from a :class:`~tiered.config.run.RunConfig`.

Quick mode's expert is a column of the input (``--expert-field``), an OpenAI-compatible
endpoint (``--expert openai:MODEL``, :func:`quick_expert`) or Gemma 3 270M in-process
(``--expert local``); its ids come from the ``id`` field when the input file's records
have one (else line or row numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered.errors import ConfigError
from tiered.runner.reject_guard import DEFAULT_MAX_SHARE, DEFAULT_WINDOW

if TYPE_CHECKING:
    from tiered.config.run import RunConfig


@dataclass
class RunPlan:
    """A resolved invocation: the config plus every path and switch.

    ``input`` and ``output`` are files, or ``redis://`` stream URLs (``output`` is then a
    ``str``, and so is ``rejects`` by default for a stream input: its dead-letter stream;
    see :mod:`tiered.runner.streams`). ``exit_when_idle``: a stream input ends
    once it has been empty that many seconds (None: it waits for entries forever).
    ``max_reject_share``, ``reject_window``: a file input is refused before the run starts
    when its first ``reject_window`` records are all rejected, or more than this share of
    them for the same field (:mod:`tiered.runner.reject_guard`; 1: never).
    """

    config: RunConfig
    input: str
    output: Path | str
    store: Path
    rejects: Path | str
    replay_out: Path | None = None
    report: Path | None = None
    fresh: bool = False
    limit: int | None = None
    progress: bool = True
    throttle_s: float = 0.0
    base_dir: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None
    exit_when_idle: float | None = None
    max_reject_share: float = DEFAULT_MAX_SHARE
    reject_window: int = DEFAULT_WINDOW


@dataclass(frozen=True, slots=True)
class QuickOptions:
    """The quick-mode flags (no config file); each must stay unset in config mode."""

    text_field: str | None = None
    id_field: str | None = None
    label_field: str | None = None
    expert_field: str | None = None
    expert_cost: float | None = None
    target_agreement: float | None = None
    embeddings: bool = False
    expert: str | None = None  # openai:MODEL or local
    base_url: str | None = None
    api_key_env: str | None = None
    endpoint: str | None = None  # chat or completions
    labels: str | None = None  # comma-separated, as typed
    prompt: str | None = None

    def given(self) -> list[str]:
        """The flags that were set, as written on the command line."""
        return sorted(
            f"--{f.name.replace('_', '-')}"
            for f in fields(self)
            if getattr(self, f.name) not in (None, False)
        )


_QUICK_FLAGS = {
    "online.target_agreement": "--target-agreement",
    "expert.usd_per_call": "--expert-cost",
    "cheap.1.model": "--embeddings",
    "seed": "--seed",
}


def quick_config(
    *,
    text_field: str,
    id_field: str | None,
    label_field: str | None,
    expert_field: str | None = None,
    expert_model: dict[str, Any] | None = None,
    expert_cost: float | None = None,
    target_agreement: float | None,
    embeddings: bool,
    format: str | None,
    seed: int,
) -> RunConfig:
    """The zero-config run: hashed n-grams (+ embeddings) in front of the expert: the
    label column ``expert_field``, or the model spec ``expert_model`` (an LLM)."""
    from pydantic import ValidationError

    from tiered.config import validation_error_to_config_error
    from tiered.config.run import RunConfig

    if (expert_field is None) == (expert_model is None):
        raise ConfigError("give the expert as a column or as a model, not both", field="--expert")
    cheap: list[dict[str, Any]] = [{"name": "hashed_ngram", "model": {"kind": "hashed_ngram"}}]
    if embeddings:
        cheap.append({"name": "embedding", "model": {"kind": "embedding"}})
    online: dict[str, Any] = {}
    if target_agreement is not None:
        online["target_agreement"] = target_agreement
    data = {
        "input": {
            "text_field": text_field,
            "id_field": id_field,
            "label_field": label_field,
            "format": format,
            "required_fields": [expert_field] if expert_field else [],
        },
        "cheap": cheap,
        "expert": {
            "model": expert_model or {"kind": "label_column", "field": expert_field},
            "usd_per_call": expert_cost,
        },
        "online": online,
        "seed": seed,
    }
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:  # a bad flag value: name the flag
        err = validation_error_to_config_error(exc)
        flag = _QUICK_FLAGS.get(err.field or "", err.field)
        raise ConfigError(err.reason, field=flag) from exc


DEFAULT_ID_FIELD = "id"
LOCAL_EXPERT = "local"
OPENAI_EXPERT = "openai:"
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"
# a spec field of the LLM expert -> the quick-mode flag that set it
_EXPERT_FLAGS = {
    "labels": "--labels",
    "words": "--labels",
    "prompt": "--prompt",
    "template": "--prompt",
    "model": "--expert",
    "base_url": "--base-url",
    "api_key_env": "--api-key-env",
    "endpoint": "--endpoint",
}


def default_id_field(input_arg: str, format: str | None) -> str | None:
    """``id`` when the input file's first record has an ``id`` field, else None (line or
    row numbers). Stdin and stream inputs are not read ahead for this: pass --id-field."""
    from tiered.io.peek import first_fields
    from tiered.runner.stream_paths import uses_streams

    if uses_streams(input_arg, ""):
        return None
    names = first_fields(input_arg, format)
    return DEFAULT_ID_FIELD if names is not None and DEFAULT_ID_FIELD in names else None


def _labels(text: str | None) -> list[str]:
    labels = [x.strip() for x in (text or "").split(",") if x.strip()]
    if len(labels) < 2:
        raise ConfigError(
            "an LLM expert needs the labels to choose from, at least two: --labels "
            "positive,negative",
            field="--labels",
        )
    return labels


def quick_expert(quick: QuickOptions) -> dict[str, Any] | None:
    """The model spec of ``--expert`` (None: the expert is the ``--expert-field`` column).

    ``openai:MODEL`` asks an OpenAI-compatible endpoint (``--base-url``, default OpenAI's)
    to classify into ``--labels``; the key is read from the environment variable
    ``--api-key-env`` names (default: OPENAI_API_KEY for OpenAI's endpoint, none for
    another ``--base-url``: a key is never sent to a server it was not given for).
    ``--endpoint completions`` serves base models (no chat template) better. ``local`` is
    Gemma 3 270M in-process (llama.cpp). ``--prompt`` is the template, with ``{input}``
    (the text) and ``{labels}``.
    """
    import os

    llm_flags = {
        "--labels": quick.labels,
        "--base-url": quick.base_url,
        "--api-key-env": quick.api_key_env,
        "--endpoint": quick.endpoint,
        "--prompt": quick.prompt,
    }
    if quick.expert is None:
        given = [flag for flag, value in llm_flags.items() if value is not None]
        if given:
            raise ConfigError(
                f"{given[0]} is for an LLM expert: add --expert openai:MODEL or --expert local",
                field=given[0],
            )
        return None
    if quick.expert_field:
        raise ConfigError(
            "give the expert once: --expert (an LLM) or --expert-field (a column)",
            field="--expert",
        )
    labels = _labels(quick.labels)
    if quick.prompt is not None and "{input}" not in quick.prompt:
        raise ConfigError(
            "the prompt needs an {input} placeholder (where each record's text goes)",
            field="--prompt",
        )
    expert = quick.expert.strip()
    spec: dict[str, Any]
    if expert == LOCAL_EXPERT:
        for flag in ("--base-url", "--api-key-env", "--endpoint"):
            if llm_flags[flag] is not None:
                raise ConfigError(f"{flag} is for --expert openai:MODEL", field=flag)
        spec = {
            "kind": "llamacpp",
            "labels": labels,
            "instruction": f"Classify each text as one of: {', '.join(labels)}.\n\n",
        }
        if quick.prompt is not None:
            spec["template"] = quick.prompt
    elif expert.startswith(OPENAI_EXPERT) and expert[len(OPENAI_EXPERT) :].strip():
        key_env = quick.api_key_env
        if key_env is None and quick.base_url in (None, OPENAI_BASE_URL):
            key_env = OPENAI_KEY_ENV
        if key_env is not None and not os.environ.get(key_env):
            raise ConfigError(
                f"the environment variable {key_env} holding the API key is not set: "
                f"export {key_env}=... first (the key is read from it, never logged or stored)",
                field="--api-key-env",
            )
        spec = {
            "kind": "openai",
            "model": expert[len(OPENAI_EXPERT) :].strip(),
            "base_url": quick.base_url or OPENAI_BASE_URL,
            "api_key_env": key_env,
            "endpoint": quick.endpoint or "chat",
            "labels": labels,
        }
        if quick.prompt is not None:
            spec["prompt"] = quick.prompt
    else:
        raise ConfigError(
            f"unknown expert {quick.expert!r}: give openai:MODEL (an OpenAI-compatible "
            "endpoint, e.g. openai:gpt-4o-mini) or local (Gemma 3 270M on this machine)",
            field="--expert",
        )
    _check_expert(spec)
    return spec


def _check_expert(spec: dict[str, Any]) -> None:
    """Validate the LLM expert's spec now, naming the flag that set a bad value."""
    from pydantic import BaseModel

    from tiered.models._params import spec_from_mapping

    schema: type[BaseModel]
    if spec["kind"] == "openai":
        from tiered.models.llm.prompts import OpenAIChatSpec

        schema = OpenAIChatSpec
    else:
        from tiered.models.llm.llamacpp import LlamaCppSpec

        schema = LlamaCppSpec
    try:
        spec_from_mapping(schema, spec)
    except ConfigError as exc:
        name = (exc.field or "").removeprefix("model.").split(".")[0]
        raise ConfigError(exc.reason, field=_EXPERT_FLAGS.get(name, "--expert")) from exc


def _is_config(arg: str) -> bool:
    return arg.lower().endswith((".yaml", ".yml"))


def _config_of(
    args: Sequence[str], quick: QuickOptions, format: str | None, seed: int | None
) -> tuple[RunConfig, str, Path, Path | None]:
    """(config, INPUT, base folder for relative paths, config file) from the arguments."""
    from tiered.config.run import load_run_config, resolve_path
    from tiered.runner.stream_paths import uses_streams

    if len(args) == 2:
        config_path, input_arg = Path(args[0]), args[1]
        given = quick.given()
        if given:
            one = len(given) == 1
            raise ConfigError(
                f"{', '.join(given)} {'is' if one else 'are'} for quick mode "
                f"(no config file); set {'it' if one else 'them'} in {config_path}"
            )
        cfg = load_run_config(config_path)
        if format is not None:
            cfg.input.format = format  # type: ignore[assignment]
        return cfg, input_arg, config_path.resolve().parent, config_path
    if len(args) != 1:
        raise ConfigError(
            f"give INPUT (quick mode) or CONFIG INPUT; got {len(args)} arguments: {' '.join(args)}"
        )
    input_arg = args[0]
    if _is_config(input_arg):
        config_path = Path(input_arg)
        named = load_run_config(config_path) if config_path.is_file() else None
        if named is None or named.source is None:
            raise ConfigError(
                f"{input_arg} looks like a config file; give the INPUT too: "
                f"tiered run {input_arg} INPUT -o OUTPUT (or `source:` in the config)"
            )
        base = config_path.resolve().parent
        source = named.source
        if not uses_streams(source, "") and source != "-":
            source = str(resolve_path(source, base))
        return named, source, base, config_path
    expert_model = quick_expert(quick)
    if expert_model is None:
        if not quick.expert_field:
            raise ConfigError(
                "quick mode (no config file) needs an expert: --expert-field COLUMN (the input "
                "column holding the expert's label), or an LLM: --expert openai:MODEL "
                "--labels A,B,... (an OpenAI-compatible endpoint) or --expert local --labels "
                "A,B,... (Gemma 3 270M on this machine)",
                field="--expert-field",
            )
        if quick.expert_cost is None:
            raise ConfigError(
                "quick mode needs --expert-cost: USD per expert answer (e.g. 0.002)",
                field="--expert-cost",
            )
    cfg = quick_config(
        text_field=quick.text_field or "text",
        id_field=quick.id_field or default_id_field(input_arg, format),
        label_field=quick.label_field,
        expert_field=quick.expert_field if expert_model is None else None,
        expert_model=expert_model,
        expert_cost=quick.expert_cost,
        target_agreement=quick.target_agreement,
        embeddings=quick.embeddings,
        format=format,
        seed=seed or 0,
    )
    return cfg, input_arg, Path.cwd(), None


def make_plan(
    args: Sequence[str],
    output: Path | str | None,
    *,
    quick: QuickOptions | None = None,
    format: str | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    store: Path | None = None,
    rejects: Path | None = None,
    replay_out: Path | None = None,
    report: Path | None = None,
    fresh: bool = False,
    limit: int | None = None,
    progress: bool = True,
    throttle_s: float = 0.0,
    exit_when_idle: float | None = None,
    max_reject_share: float | None = None,
) -> RunPlan:
    """Resolve the command line (config mode or quick mode) into a :class:`RunPlan`.

    ``output`` None: the config's ``output``. INPUT and OUTPUT may be stream URLs.
    """
    from tiered.config.run import resolve_path
    from tiered.runner.stream_paths import local_paths, uses_streams

    cfg, input_arg, base, config_path = _config_of(args, quick or QuickOptions(), format, seed)
    if seed is not None:
        cfg.seed = seed
    if batch_size is not None:
        cfg.batch_size = batch_size
    if checkpoint_every is not None:
        cfg.checkpoint.every_items = checkpoint_every
    if checkpoint_seconds is not None:
        cfg.checkpoint.every_seconds = checkpoint_seconds
    out_base = Path()  # a file OUTPUT on the command line is relative to the working folder
    if output is None:
        if cfg.output is None:
            raise ConfigError("give -o OUTPUT (or `output:` in the config)", field="--output")
        output, out_base = cfg.output, base
    if str(output) == "-":
        raise ConfigError(
            "OUTPUT must be a file (resuming truncates it to the last checkpoint)", field="--output"
        )
    out: Path | str
    if uses_streams(input_arg, str(output)):
        out = str(output)
        local_store, local_rejects = local_paths(input_arg, out)
    else:
        out = output if isinstance(output, Path) else out_base / Path(output).expanduser()
        local_store, local_rejects = Path(f"{out}.tiered.sqlite"), Path(f"{out}.rejects.jsonl")
    return RunPlan(
        config=cfg,
        input=input_arg,
        output=out,
        store=store or resolve_path(cfg.store, base) or local_store,
        rejects=rejects or resolve_path(cfg.rejects, base) or local_rejects,
        replay_out=replay_out or resolve_path(cfg.replay_out, base),
        report=report,
        fresh=fresh,
        limit=limit,
        progress=progress,
        throttle_s=throttle_s,
        base_dir=base,
        config_path=config_path,
        exit_when_idle=cfg.exit_when_idle if exit_when_idle is None else exit_when_idle,
        max_reject_share=DEFAULT_MAX_SHARE if max_reject_share is None else max_reject_share,
    )


__all__ = [
    "QuickOptions",
    "RunPlan",
    "default_id_field",
    "make_plan",
    "quick_config",
    "quick_expert",
]
