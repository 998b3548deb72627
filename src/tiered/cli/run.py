"""``tiered run [CONFIG] INPUT -o OUTPUT``: label a stream with an online cascade, resumably.

Two ways to say what runs:

- a YAML config (:class:`tiered.config.run.RunConfig`):
  ``tiered run run.yaml in.jsonl -o out.jsonl``
- quick mode, no config: ``tiered run in.jsonl -o out.jsonl --text-field text
  --expert-field label --expert-cost 0.002 --target-agreement 0.96`` builds the default
  cheap stages (hashed n-gram; ``--embeddings`` adds the embedding stage) in front of a
  label-column expert; ``--expert openai:MODEL --labels a,b`` (``--base-url``,
  ``--api-key-env``, ``--prompt``) or ``--expert local --labels a,b`` puts an LLM there.

The run itself (checkpoints, exactly-once output, resuming) is :mod:`tiered.runner`.
Ctrl-C or SIGTERM stops at the next batch boundary after a checkpoint and exits with
128 + the signal (130, 143): run the same command again to continue. With
``--fail-below-target`` a run whose agreement alarm was raised exits with 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tiered.cli.app import app
from tiered.cli.run_certify import Certify, Confidence, Learn
from tiered.cli.run_options import (
    ApiKeyEnv,
    BaseUrl,
    Embeddings,
    Endpoint,
    Expert,
    ExpertCost,
    ExpertField,
    IdField,
    LabelField,
    Labels,
    Prompt,
    TargetAgreement,
    TextField,
)


@app.command("run")
def run_cmd(
    args: Annotated[
        list[str],
        typer.Argument(
            metavar="[CONFIG] INPUT",
            help="Run config (YAML) and INPUT, or INPUT alone in quick mode. INPUT is JSONL, "
            "CSV, Parquet, - (stdin) or a Redis stream: redis://HOST:PORT/STREAM?group=G"
            "&consumer=C.",
            show_default=False,
        ),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "-o",
            "--output",
            help="Output file (.jsonl or .csv) or Redis stream (redis://HOST:PORT/STREAM); "
            "default: the config's `output`.",
            show_default=False,
        ),
    ] = None,
    text_field: TextField = None,
    id_field: IdField = None,
    label_field: LabelField = None,
    expert_field: ExpertField = None,
    expert: Expert = None,
    labels: Labels = None,
    base_url: BaseUrl = None,
    api_key_env: ApiKeyEnv = None,
    endpoint: Endpoint = None,
    prompt: Prompt = None,
    expert_cost: ExpertCost = None,
    target_agreement: TargetAgreement = None,
    embeddings: Embeddings = False,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Input format: jsonl, csv or parquet (default: by extension; stdin: jsonl).",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report (plots over time) here.")
    ] = None,
    replay_out: Annotated[
        Path | None,
        typer.Option(
            "--replay-out",
            help="Record every stage's answers as a replay log (for `tiered calibrate`).",
        ),
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            help="State store (default: OUTPUT.tiered.sqlite; to a stream OUT: "
            "OUT.CONSUMER.tiered.sqlite).",
        ),
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option(
            "--rejects",
            help="Reject file (default: OUTPUT.rejects.jsonl; a Redis INPUT's dead-letter stream).",
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore saved state: start over (truncates OUTPUT).")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=0, help="Stop after the first N input records (in total, over resumes)."
        ),
    ] = None,
    max_reject_share: Annotated[
        float | None,
        typer.Option(
            "--max-reject-share",
            min=0,
            max=1,
            help="Stop before starting when every one of the first 1,000 records is rejected, "
            "or more than this share of them for the same field (default: 0.5; 1: never).",
            show_default=False,
        ),
    ] = None,
    no_progress: Annotated[
        bool, typer.Option("--no-progress", help="No live progress bar.")
    ] = False,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Random seed (default: 0).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Items per batch (default: 256).")
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option("--checkpoint-every", min=1, help="Checkpoint every N items (default: 2000)."),
    ] = None,
    checkpoint_seconds: Annotated[
        float | None,
        typer.Option(
            "--checkpoint-seconds", min=0.001, help="... or every T seconds (default: 10)."
        ),
    ] = None,
    exit_when_idle: Annotated[
        float | None,
        typer.Option(
            "--exit-when-idle",
            min=0,
            help="A Redis stream INPUT: end once it has stayed empty this many seconds.",
        ),
    ] = None,
    fail_below_target: Annotated[
        bool,
        typer.Option(
            "--fail-below-target",
            help="Exit with code 3 when the agreement's upper confidence bound fell below the "
            "target at any item (the alarm was raised) or ended below it.",
        ),
    ] = False,
    certify: Certify = None,
    confidence: Confidence = None,
    learn: Learn = None,
    throttle: Annotated[float, typer.Option("--throttle", hidden=True, min=0)] = 0.0,
) -> None:
    """Label a stream with the cheapest stage that answers well; resumable after a kill.

    Running the same command again continues from the last checkpoint: every input record
    is answered (or rejected) exactly once. --fresh starts over. From stdin, a re-run
    skips as many records as the first run committed.

    Quick mode, an LLM as the expert: tiered run reviews.jsonl -o labels.jsonl
    --expert openai:gpt-4o-mini --labels positive,negative (the key in OPENAI_API_KEY).

    Certified labelling of a file: tiered run in.jsonl -o out.jsonl --expert-field label
    --expert-cost 0.002 --certify 'accuracy>=0.95' (not resumable; writes OUTPUT whole).

    Exit codes: 0 done; 3 with --fail-below-target when the target was missed; 128 + the
    signal (130, 143) when stopped early.
    """
    from rich.console import Console

    from tiered.cli.run_certify import check_certify_args, run_certified
    from tiered.runner import QuickOptions, RichProgress, StreamRun, make_plan, print_summary

    check_certify_args(args, output, certify, {
        "--confidence": confidence, "--learn": learn, "--report": report,
        "--replay-out": replay_out, "--exit-when-idle": exit_when_idle,
        "--fail-below-target": fail_below_target, "--checkpoint-every": checkpoint_every,
        "--checkpoint-seconds": checkpoint_seconds,
    })  # fmt: skip

    plan = make_plan(
        args,
        output,
        quick=QuickOptions(
            text_field=text_field,
            id_field=id_field,
            label_field=label_field,
            expert_field=expert_field,
            expert_cost=expert_cost,
            target_agreement=target_agreement,
            embeddings=embeddings,
            expert=expert,
            base_url=base_url,
            api_key_env=api_key_env,
            endpoint=endpoint,
            labels=labels,
            prompt=prompt,
        ),
        format=format,
        seed=seed,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        store=store,
        rejects=rejects,
        replay_out=replay_out,
        report=report,
        fresh=fresh,
        limit=limit,
        progress=not no_progress,
        throttle_s=throttle,
        exit_when_idle=exit_when_idle,
        max_reject_share=max_reject_share,
    )
    if certify is not None:
        return run_certified(plan, certify, confidence, learn)
    console = Console()
    err = Console(stderr=True)
    view = RichProgress(err) if plan.progress and err.is_terminal else None
    summary = StreamRun(plan, view=view).run()
    print_summary(console, summary)
    console.print(f"output: {plan.output}   state: {plan.store}")
    if plan.report is not None:
        console.print(f"report written to {plan.report}")
    if summary.stopped_early:
        console.print("[yellow]stopped early[/]: run the same command again to continue")
        raise typer.Exit(summary.exit_code)
    if fail_below_target and summary.target_missed:
        raise typer.Exit(3)
