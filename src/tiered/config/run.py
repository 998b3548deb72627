"""The config of ``tiered run``: a YAML file validated by :class:`RunConfig`.

```yaml
input:
  text_field: text          # the text to label
  id_field: id              # optional; default: line number (JSONL) or row number
  label_field: gold         # optional gold label, for accuracy only
cheap:                      # cheap stages, cheapest first; each a model spec
  - {kind: hashed_ngram}
  - name: minilm
    model: {kind: embedding}
expert:                     # the last stage; named `expert` in the output whatever it is
  model: {kind: label_column, field: label}
  usd_per_call: 0.002
online: {target_agreement: 0.96}   # tiered.online.OnlineConfig
seed: 0
checkpoint: {every_items: 2000, every_seconds: 10}
store: null                 # default: OUTPUT + ".tiered.sqlite"
rejects: null               # default: OUTPUT + ".rejects.jsonl"
source: null                # INPUT when the command line names none (a file or redis://...)
output: null                # OUTPUT when -o is not given (a file or redis://...)
exit_when_idle: null        # a stream INPUT ends once empty this many seconds
```

A stage may be written in full (``name``, ``model``, ``usd_per_call``) or as a bare model
spec (``{kind: hashed_ngram, ...}``; ``name`` and ``usd_per_call`` keys are taken out of
it). Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tiered.core.limits import MAX_STAGES, Name, shorten
from tiered.core.yaml_file import load_yaml_model
from tiered.online.config import OnlineConfig
from tiered.store.fingerprint import json_fingerprint

EXPERT_STAGE = "expert"


class InputConfig(BaseModel):
    """Which fields of an input record are the text, the id and the gold label."""

    model_config = ConfigDict(extra="forbid")
    text_field: Name = "text"
    id_field: Name | None = None
    label_field: Name | None = None
    format: Literal["jsonl", "csv", "parquet"] | None = None  # default: by the file's extension
    # fields a record must have (else it goes to the reject file), besides the text
    required_fields: list[Name] = Field(default_factory=list)


class StageConfig(BaseModel):
    """One stage: a model spec (``kind`` + parameters), its name and its price per call."""

    model_config = ConfigDict(extra="forbid")
    name: Name | None = None  # in outputs and reports; default: the model's kind
    model: dict[str, Any]  # a model spec: {kind: ..., parameters} (see the model kinds)
    # USD per call (else the cost the model reports: a token-priced LLM's, or 0)
    usd_per_call: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _bare_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and "kind" in data and "model" not in data:
            spec = dict(data)
            out: dict[str, Any] = {}
            for key in ("name", "usd_per_call"):
                if key in spec:
                    out[key] = spec.pop(key)
            out["model"] = spec
            return out
        return data

    @field_validator("model")
    @classmethod
    def _known_kind(cls, v: dict[str, Any]) -> dict[str, Any]:
        from tiered.core.spec import model_kinds

        kind = v.get("kind")
        if kind is None:
            raise ValueError("a model spec needs a 'kind'")
        kinds = model_kinds()
        if not isinstance(kind, str) or kind not in kinds:
            raise ValueError(
                f"unknown model kind {shorten(repr(kind))}; known kinds: {', '.join(kinds)}"
            )
        return v

    @property
    def stage_name(self) -> str:
        return self.name or str(self.model["kind"])


class CheckpointConfig(BaseModel):
    """Commit a checkpoint after this many items or seconds, whichever comes first."""

    model_config = ConfigDict(extra="forbid")
    every_items: int = Field(default=2000, ge=1)  # items answered since the last checkpoint
    every_seconds: float = Field(default=10.0, gt=0)  # seconds since the last checkpoint


class RunConfig(BaseModel):
    """Everything ``tiered run`` needs besides INPUT and OUTPUT."""

    model_config = ConfigDict(extra="forbid")
    input: InputConfig = Field(default_factory=InputConfig)
    cheap: list[StageConfig] = Field(min_length=1, max_length=MAX_STAGES - 1)
    expert: StageConfig
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    # the run's random seed (audits, exploration, learning): same seed, same run; numpy
    # takes only seeds >= 0
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=256, ge=1)  # records read and answered at a time
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    store: str | None = None
    rejects: str | None = None
    # record every stage's answers as a replay log here (for `tiered calibrate`)
    replay_out: str | None = None
    # where the run reads and writes when the command line does not say (file paths
    # relative to the config's folder, or redis:// stream URLs: tiered.runner.streams)
    source: str | None = None
    output: str | None = None
    exit_when_idle: float | None = Field(default=None, ge=0)

    @field_validator("cheap")
    @classmethod
    def _unique_names(cls, v: list[StageConfig]) -> list[StageConfig]:
        names = [s.stage_name for s in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cheap stage names must be unique; repeated: {dupes} (set 'name')")
        if EXPERT_STAGE in names:
            raise ValueError(
                f"'{EXPERT_STAGE}' is the expert's stage name; name this stage otherwise"
            )
        return v

    @field_validator("expert")
    @classmethod
    def _expert_name(cls, v: StageConfig) -> StageConfig:
        if v.name not in (None, EXPERT_STAGE):
            raise ValueError(
                f"the expert's stage is always named '{EXPERT_STAGE}'; drop name {v.name!r}"
            )
        return v

    def identity_hash(self) -> str:
        """A hash of what the learned state depends on (not paths, intervals or batch size)."""
        # defaults left out: a setting added in a later version does not change old hashes
        keep = self.model_dump(
            mode="json",
            include={"input", "cheap", "expert", "online", "seed"},
            exclude_defaults=True,
        )
        return json_fingerprint(keep)


def load_run_config(path: str | Path) -> RunConfig:
    """Load and validate a run config; errors name file, line and field."""
    return load_yaml_model(path, RunConfig)


def resolve_path(value: str | None, base_dir: Path) -> Path | None:
    """A path from the config, relative to the config's folder."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


__all__ = [
    "EXPERT_STAGE",
    "CheckpointConfig",
    "InputConfig",
    "RunConfig",
    "StageConfig",
    "load_run_config",
    "resolve_path",
]
