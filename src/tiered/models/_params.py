"""Model parameters from a spec dict, with errors in one template.

Each model kind declares its parameters once, as a pydantic model whose field
``description`` says what a valid value is ("a float > 0"). A bad value becomes::

    The 'alpha' parameter of model 'hashed_ngram' must be a float > 0. Got -1 instead.

raised as a :class:`~tiered.errors.ConfigError` whose field is ``model.alpha`` (a cascade
file prefixes the stage: ``stages.0.model.alpha``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tiered.core.yaml_file import validation_error_to_config_error
from tiered.errors import ConfigError

P = TypeVar("P", bound=BaseModel)


def _bad(kind: str, name: str, must: str, value: Any) -> ConfigError:
    return ConfigError(
        f"The '{name}' parameter of model '{kind}' must be {must}. Got {value!r} instead.",
        field=f"model.{name}",
    )


def parse_params(
    kind: str,
    schema: type[P],
    spec: Mapping[str, Any],
    *,
    checks: Mapping[str, Callable[[Any], bool]] | None = None,
) -> P:
    """Validate ``spec`` (less its ``kind``) against ``schema``; ``checks`` add per-field tests."""
    data = {k: v for k, v in spec.items() if k != "kind"}
    fields = schema.model_fields
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"Model '{kind}' has no parameter '{unknown[0]}'; "
            f"its parameters: {', '.join(sorted(fields))}.",
            field=f"model.{unknown[0]}",
        )
    try:
        params = schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0])
        must = fields[name].description or err["msg"]
        if err["type"] == "missing":
            raise ConfigError(
                f"The '{name}' parameter of model '{kind}' is required: {must}.",
                field=f"model.{name}",
            ) from None
        raise _bad(kind, name, must, data.get(name)) from None
    for name, ok in (checks or {}).items():
        value = getattr(params, name)
        if value is not None and not ok(value):
            raise _bad(kind, name, fields[name].description or "valid", data.get(name, value))
    return params


def spec_from_mapping(schema: type[P], data: Mapping[str, Any]) -> P:
    """Validate a model's cascade-file mapping as ``schema``; errors name ``model.<field>``."""
    try:
        return schema.model_validate(dict(data))
    except ValidationError as exc:
        err = validation_error_to_config_error(exc)
        raise ConfigError(err.reason, field=f"model.{err.field}" if err.field else "model") from exc


def spec_from_kwargs(schema: type[P], spec: P | None, params: Mapping[str, Any]) -> P:
    """A model's spec: the one given, or one built from keyword parameters (never both)."""
    if spec is not None:
        if params:
            raise TypeError("give either a spec or keyword parameters, not both")
        return spec
    try:
        return schema(**params)
    except ValidationError as exc:
        raise validation_error_to_config_error(exc) from exc


def check_labels(labels: list[str]) -> list[str]:
    """A label set of a classifying model's spec (a pydantic validator body)."""
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")
    return labels


def check_words(words: dict[str, str], labels: Sequence[str]) -> dict[str, str]:
    """The ``{label: word the model says}`` mapping names only known labels."""
    unknown = sorted(set(words) - set(labels))
    if unknown:
        raise ValueError(f"names labels not in 'labels': {unknown}")
    return words


__all__ = ["check_labels", "check_words", "parse_params", "spec_from_kwargs", "spec_from_mapping"]
