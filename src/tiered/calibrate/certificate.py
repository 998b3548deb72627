"""What a certified calibration promises, in data and in words (see
:mod:`tiered.calibrate.certify`): saved in the cascade file, shown by ``tiered inspect``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Certificate:
    """What was certified, on how many rows, and how (see the module docstring).

    - ``target``: the ``min_quality`` text; ``reference_model``: the fallback model, for a
      relative target the log's best single model (for an absolute one, the fitting part's
      best). A relative target is tested against each of the log's ``models_compared``
      models on the same rows, so it promises "as good as the best of them" (less the
      target's slack), whichever that is; the log's best is named as the likely one.
    - ``certified``: the chosen cascade passed its test. ``fallback``: nothing cheaper
      than the best single model passed, so it alone is the answer (for a relative target
      it is what the target is relative to; for an absolute one ``certified`` says whether
      it was shown to meet it).
    - ``bound``: the promised quality (absolute targets), or the promised difference to
      each model's quality (``top``/``top-x``: ``-x - tolerance``; ``top*c``: the
      difference to ``c`` times its quality, ``-tolerance``).
    - ``estimate``: that statistic on the certification rows (the chosen cascade's,
      against the model it is closest to failing on).
    - ``rows_needed``: when the fallback was chosen, about how many log rows would let a
      cheaper cascade be certified (``None`` otherwise; ``inf`` when none looks able to).
    """

    target: str
    kind: str
    value: float
    confidence: float
    tolerance: float
    reference_model: str | None
    certified: bool
    fallback: bool
    bound: float
    estimate: float
    p_value: float | None
    test: str
    rows: int
    rows_fit: int
    rows_certify: int
    candidates: int
    tested: int
    rows_needed: float | None
    models_compared: int = 0  # a relative target: the models it was tested against

    @property
    def relative(self) -> bool:
        return self.kind != "absolute"

    def promise(self) -> str:
        """The promise in words: ``quality >= 0.85 - 0.005``."""
        eps = f"{self.tolerance:g}"
        if self.kind == "absolute":
            return f"quality >= {self.value:g} - {eps}"
        ref = (
            f"quality of {self.reference_model}"
            if self.models_compared <= 1
            else "quality of the best model"
        )
        if self.kind == "top*":
            return f"quality >= {self.value:g} x {ref} - {eps}"
        less = f" - {self.value:g}" if self.value > 0 else ""
        return f"quality >= {ref}{less} - {eps}"

    def statement(self) -> str:
        """One sentence for the user (the cascade file and ``tiered inspect`` show it)."""
        conf = f"{100 * self.confidence:g}% confidence"
        rows = f"{self.rows_certify:,} rows"
        paired = ""
        if self.relative and self.models_compared > 1:
            paired = (
                f" (paired with each of the log's {self.models_compared} models on the same "
                f"rows; the best on this log: {self.reference_model})"
            )
        elif self.relative:
            paired = f" (paired with {self.reference_model} on the same rows)"
        if self.certified and not self.fallback:
            return f"{self.promise()} with {conf}{paired}, certified on {rows}"
        need = ""
        if self.rows_needed is not None:
            if math.isfinite(self.rows_needed):
                more = max(int(self.rows_needed) - self.rows, 0)
                what = "a cheaper cascade" if self.certified else "a cascade"
                need = (
                    f"; a log of about {int(self.rows_needed):,} rows ({more:,} more) would be "
                    f"needed to certify {what}"
                )
            else:
                need = "; no cheaper cascade looks able to reach it on more rows either"
        if self.relative:
            return (
                f"no cascade cheaper than {self.reference_model} could be certified to have "
                f"{self.promise()} with {conf} on {rows}: {self.reference_model} alone is "
                f"the answer{need}"
            )
        if self.certified:
            alone = f"{self.reference_model} alone"
            return f"{self.promise()} with {conf}, certified on {rows} ({alone}){need}"
        return (
            f"NOT certified: not even {self.reference_model} could be shown to have "
            f"{self.promise()} with {conf} on {rows}{need}"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["statement"] = self.statement()
        if out["rows_needed"] is not None and not math.isfinite(out["rows_needed"]):
            out["rows_needed"] = None if self.rows_needed is None else "unreachable"
        return out


__all__ = ["Certificate"]
