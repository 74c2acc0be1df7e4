"""The `reqcheck` command line: thin wrappers that parse flags and call the library.

User errors (ReqcheckError) print one sentence and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from reqcheck.errors import ReqcheckError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train small adapters that check LLM output against requirements, gate them, ship them.",
)
_state = {"debug": False}


class AdapterType(str, Enum):
    alora = "alora"
    lora = "lora"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def train(
    datafile: Annotated[Path, typer.Argument(help='JSONL file, one {"item": ..., "label": ...} per line.')],
    basemodel: Annotated[
        str, typer.Option(help="Hub id, model directory, .gguf file, or smollm2-135m-instruct.")
    ],
    outfile: Annotated[Path, typer.Option(help="Directory to write the adapter to.")],
    adapter: Annotated[AdapterType, typer.Option(help="Adapter type.")] = AdapterType.alora,
    device: Annotated[Device, typer.Option(help="Device to train on.")] = Device.auto,
    epochs: Annotated[int, typer.Option(help="Number of training epochs.")] = 6,
    learning_rate: Annotated[float, typer.Option(help="Learning rate.")] = 6e-6,
    batch_size: Annotated[int, typer.Option(help="Per-device batch size.")] = 2,
    max_length: Annotated[int, typer.Option(help="Maximum sequence length in tokens.")] = 1024,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 4,
    promptfile: Annotated[
        Path | None, typer.Option(help='JSON file {"invocation_prompt": "..."} overriding the invocation.')
    ] = None,
    requirement: Annotated[
        str | None, typer.Option(help="The requirement the labels answer, e.g. 'The reply is polite.'")
    ] = None,
    positive_label: Annotated[
        list[str] | None,
        typer.Option(help="Label meaning 'requirement met' (repeatable; default: yes/pass/...)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation and shuffling.")] = 42,
    val_fraction: Annotated[float, typer.Option(help="Fraction of examples held out for validation.")] = 0.2,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 32,
    alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 32,
    target_modules: Annotated[
        str, typer.Option(help="Comma-separated modules to adapt.")
    ] = "q_proj,k_proj,v_proj",
    renderer: Annotated[
        str, typer.Option(help="Prompt rendering: chat-v1, or mellea-v1 (Mellea's format).")
    ] = "chat-v1",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run of the same command.")] = False,
    prefix_cache: Annotated[
        str,
        typer.Option(
            help="aLoRA: auto (keep item caches while they fit the budget), memory, recompute, or off "
            "(full-sequence training)."
        ),
    ] = "auto",
    prefix_cache_budget_mb: Annotated[
        int | None, typer.Option(help="Memory for kept item caches (default: a quarter of free memory).")
    ] = None,
) -> None:
    """Fine-tune a LoRA or aLoRA requirement-check adapter from labelled JSONL."""
    from reqcheck.training import TrainConfig, summary
    from reqcheck.training import train as run_training

    config = TrainConfig(
        datafile=datafile,
        basemodel=basemodel,
        outfile=outfile,
        adapter=adapter.value,
        device=device.value,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        grad_accum=grad_accum,
        promptfile=promptfile,
        requirement=requirement,
        positive_labels=positive_label or [],
        seed=seed,
        val_fraction=val_fraction,
        rank=rank,
        alpha=alpha,
        target_modules=[m.strip() for m in target_modules.split(",") if m.strip()],
        renderer=renderer,
        resume=resume,
        prefix_cache=prefix_cache,
        prefix_cache_budget_mb=prefix_cache_budget_mb,
    )
    result = run_training(config, report=_say)
    for line in summary(result):
        _say(line)


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except ReqcheckError as exc:
        if _state["debug"]:
            raise
        _say(f"error: {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        _say("interrupted; rerun the same command with --resume to continue training from the last epoch")
        sys.exit(130)
