"""``tiered run ... --certify SPEC``: certified batch labelling of a finite dataset.

The options are declared here once as types; :func:`run_certified` runs the plan with
:class:`tiered.runner.certified.CertifiedRun` and prints the certificate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from tiered.runner.certified import CertifiedSummary
    from tiered.runner.plan import RunPlan

_PANEL = "Certified labelling (a finite dataset)"

Certify = Annotated[
    str | None,
    typer.Option(
        "--certify",
        help="Label the whole INPUT so that accuracy>=T (or precision:LABEL>=T, "
        "recall:LABEL>=T) against the expert holds with probability --confidence, asking "
        "the expert as little as it can. Quote it: --certify 'accuracy>=0.95'.",
        rich_help_panel=_PANEL,
        show_default=False,
    ),
]

Confidence = Annotated[
    float | None,
    typer.Option(
        "--confidence",
        help="With --certify: the probability the certificate holds (default: 0.95).",
        rich_help_panel=_PANEL,
        show_default=False,
    ),
]

Learn = Annotated[
    int | None,
    typer.Option(
        "--learn",
        min=0,
        help="With --certify: items the expert labels for the cheap stages to learn from "
        "first (default, when they learn: a tenth, 200 to 2,000, at most half; 0: use them "
        "as they are).",
        rich_help_panel=_PANEL,
        show_default=False,
    ),
]


def check_certify_args(
    args: list[str], output: str | None, certify: str | None, others: dict[str, object]
) -> None:
    """Before the plan: refuse stream endpoints and options a certified run has no use for
    (``others``: flag -> value, set when not None or False)."""
    from tiered.errors import ConfigError
    from tiered.runner.certified import CERTIFY_FLAG, check_finite

    given = [flag for flag, value in others.items() if value not in (None, False)]
    if certify is None:
        for flag in ("--confidence", "--learn"):
            if flag in given:
                raise ConfigError(f"{flag} is for {CERTIFY_FLAG}", field=flag)
        return
    for flag in given:
        if flag not in ("--confidence", "--learn"):
            raise ConfigError(
                f"{flag} does not apply with {CERTIFY_FLAG} (a certified run labels a finite "
                "dataset in one go: no checkpoints, no stream)",
                field=flag,
            )
    for arg in args:
        check_finite(arg, output or "")
    if len(args) == 1 and args[0].lower().endswith((".yaml", ".yml")):
        from pathlib import Path

        from tiered.config.run import load_run_config

        if Path(args[0]).is_file():  # INPUT may be the config's `source:`
            check_finite(load_run_config(args[0]).source or "", output or "")


def run_certified(plan: RunPlan, certify: str, confidence: float | None, learn: int | None) -> None:
    """Run ``plan`` certified and print the certificate."""
    from rich.console import Console

    from tiered.runner.certified import CertifiedRun, parse_certify

    spec = parse_certify(certify, confidence)
    summary = CertifiedRun(plan, spec, learn=learn).run()
    print_certified(Console(), summary)


def print_certified(console: Console, s: CertifiedSummary) -> None:
    """The certificate, the oracle calls and where the labels went."""
    from rich.markup import escape

    cert = s.certificate
    colour = "green" if cert.certified or not s.items else "yellow"
    console.print(f"[bold {colour}]certified:[/] {escape(s.statement())}", soft_wrap=True)
    learned = f" ({s.learned:,} to teach the cheap stages)" if s.learned else ""
    console.print(
        f"oracle calls: {cert.oracle_calls:,} of {s.items:,} items{learned}; cheap labels "
        f"kept: {int(cert.kept.sum()):,}; spent ${s.usd_spent:,.4f}; {s.wall_s:.1f}s",
        soft_wrap=True,
    )
    shares = ", ".join(f"{k} {v:.1%}" for k, v in sorted(s.stage_share.items()))
    console.print(f"labels by stage: {escape(shares)}")
    what = s.spec.metric if s.spec.positive is None else f"{s.spec.metric} of '{s.spec.positive}'"
    if s.achieved is not None:
        console.print(f"{escape(what)} against the expert column (measured): {s.achieved:.4f}")
    if s.accuracy is not None:
        console.print(f"accuracy against the gold labels: {s.accuracy:.4f}")
    console.print(
        f"records: {s.records:,}, rejected: {s.rejects:,}   output: {s.output}   "
        f"rejects: {s.rejects_path}",
        soft_wrap=True,
    )


__all__ = [
    "Certify",
    "Confidence",
    "Learn",
    "check_certify_args",
    "print_certified",
    "run_certified",
]
