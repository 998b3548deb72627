"""What a run does: a :class:`RunPlan` (the config plus every path and switch).

:func:`make_plan` resolves a command line (a YAML config and an INPUT, or an INPUT alone
in quick mode, see :func:`quick_config`) into a plan; a library caller may also build a
:class:`RunPlan` directly from a :class:`~tiered.config.run.RunConfig`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiered.errors import ConfigError

if TYPE_CHECKING:
    from tiered.config.run import RunConfig


@dataclass
class RunPlan:
    """A resolved invocation: the config plus every path and switch.

    ``input`` and ``output`` are files, or ``redis://`` stream URLs (``output`` is then a
    ``str``, and so is ``rejects`` by default for a stream input: its dead-letter stream;
    see :mod:`tiered.runner.streams`). ``exit_when_idle``: a stream input ends
    once it has been empty that many seconds (None: it waits for entries forever).
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
    expert_field: str,
    expert_cost: float,
    target_agreement: float | None,
    embeddings: bool,
    format: str | None,
    seed: int,
) -> RunConfig:
    """The zero-config run: hashed n-grams (+ embeddings) in front of a label-column expert."""
    from pydantic import ValidationError

    from tiered.config import validation_error_to_config_error
    from tiered.config.run import RunConfig

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
            "required_fields": [expert_field],
        },
        "cheap": cheap,
        "expert": {
            "model": {"kind": "label_column", "field": expert_field},
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
    if not quick.expert_field:
        raise ConfigError(
            "quick mode (no config file) needs --expert-field: the input column holding the "
            "expert's label",
            field="--expert-field",
        )
    if quick.expert_cost is None:
        raise ConfigError(
            "quick mode needs --expert-cost: USD per expert answer (e.g. 0.002)",
            field="--expert-cost",
        )
    cfg = quick_config(
        text_field=quick.text_field or "text",
        id_field=quick.id_field,
        label_field=quick.label_field,
        expert_field=quick.expert_field,
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
    )


__all__ = ["QuickOptions", "RunPlan", "make_plan", "quick_config"]
