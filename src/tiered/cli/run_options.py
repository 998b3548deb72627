"""The quick-mode options of ``tiered run`` (no config file), declared once as types."""

from __future__ import annotations

from typing import Annotated

import typer

_QUICK = "Quick mode (no config file)"
_LLM = "Quick mode: an LLM as the expert"

Expert = Annotated[
    str | None,
    typer.Option(
        "--expert",
        help="openai:MODEL (any OpenAI-compatible endpoint, e.g. openai:gpt-4o-mini) or "
        "local (Gemma 3 270M on this machine). Needs --labels.",
        rich_help_panel=_LLM,
        show_default=False,
    ),
]

Labels = Annotated[
    str | None,
    typer.Option("--labels", help="The labels, comma-separated (a,b,c).", rich_help_panel=_LLM),
]

BaseUrl = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        rich_help_panel=_LLM,
        help="openai:MODEL's endpoint (default: "
        "https://api.openai.com/v1; vLLM, Ollama, llama.cpp: http://HOST:PORT/v1).",
    ),
]

ApiKeyEnv = Annotated[
    str | None,
    typer.Option(
        "--api-key-env",
        rich_help_panel=_LLM,
        help="The environment variable holding the API "
        "key (default: OPENAI_API_KEY for OpenAI; none for another --base-url). The key "
        "is never logged or stored.",
    ),
]

Endpoint = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        help="chat (default) or completions (for a base model without a chat template).",
        rich_help_panel=_LLM,
        show_default=False,
    ),
]

Prompt = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="The prompt template, with {input} (the text) and {labels}.",
        rich_help_panel=_LLM,
    ),
]

ExpertCost = Annotated[
    float | None,
    typer.Option(
        "--expert-cost",
        min=0,
        help="USD per expert answer (needed with --expert-field; an LLM expert without "
        "it counts $0).",
        rich_help_panel=_QUICK,
    ),
]

TargetAgreement = Annotated[
    float | None,
    typer.Option(
        "--target-agreement",
        help="Agreement with the expert to hold.",
        rich_help_panel=_QUICK,
    ),
]

Embeddings = Annotated[
    bool,
    typer.Option("--embeddings", help="Add the sentence-embedding stage.", rich_help_panel=_QUICK),
]

TextField = Annotated[
    str | None,
    typer.Option("--text-field", help="The text field (default: text).", rich_help_panel=_QUICK),
]

IdField = Annotated[
    str | None,
    typer.Option(
        "--id-field",
        rich_help_panel=_QUICK,
        help="The id field (default: id when the input file's records have "
        "one, else the line or row number).",
    ),
]

LabelField = Annotated[
    str | None,
    typer.Option("--label-field", help="A gold label, for accuracy only.", rich_help_panel=_QUICK),
]

ExpertField = Annotated[
    str | None,
    typer.Option(
        "--expert-field",
        help="The column with the expert's label (or --expert, below).",
        rich_help_panel=_QUICK,
    ),
]
