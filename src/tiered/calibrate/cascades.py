"""A cascade over a log's columns, as the search builds it: steps (a model and its rule),
then the final model that answers the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tiered.calibrate.evaluate import StageRef
from tiered.calibrate.families import Candidate
from tiered.core.rules import Always

# the models in order with each non-final stage's rule family: what cross-validation compares
Structure = tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Step:
    """A non-final stage: a model (log column) and its rule."""

    model: int
    cand: Candidate


@dataclass(frozen=True, slots=True, eq=False)
class Config:
    """A cascade: non-final steps, then the final model that answers the rest."""

    steps: tuple[Step, ...]
    final: int

    @property
    def models(self) -> tuple[int, ...]:
        return (*(s.model for s in self.steps), self.final)

    @property
    def key(self) -> tuple[object, ...]:
        return (*((s.model, s.cand.key) for s in self.steps), self.final)

    @property
    def structure(self) -> Structure:
        return (*((s.model, s.cand.family) for s in self.steps), (self.final, ""))

    def stage_refs(self, names: Sequence[str]) -> list[StageRef]:
        refs = [StageRef(names[s.model], s.model, s.cand.rule) for s in self.steps]
        refs.append(StageRef(names[self.final], self.final, Always()))
        return refs

    def families(self) -> list[str]:
        return [s.cand.family for s in self.steps]


__all__ = ["Config", "Step", "Structure"]
