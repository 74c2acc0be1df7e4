"""The `reqcheck` command line: thin wrappers that parse flags and call the library.

User errors (ReqcheckError) print one sentence and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reqcheck.errors import ReqcheckError

if TYPE_CHECKING:
    from reqcheck.hub import Package, Target

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
        str,
        typer.Option(
            help="Prompt and output: intrinsic-v1 (granite-common's prompt, JSON output, runs in Mellea), "
            "chat-v1 (bare label), or mellea-v1 (Mellea's training format)."
        ),
    ] = "intrinsic-v1",
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


_WEIGHT_PATH = typer.Argument(
    help="Adapter directory written by reqcheck train (PEFT files + reqcheck.json)."
)
_NAME_HELP = "Hub repo id, org/repo."
_IO_YAML_HELP = "io.yaml for the intrinsic layout (default: written from reqcheck.json)."
_INTRINSIC_NAME_HELP = "Folder name of the intrinsic (default: the repo part of --name)."


@app.command()
def upload(
    weight_path: Annotated[Path, _WEIGHT_PATH],
    name: Annotated[str, typer.Option(help=_NAME_HELP)],
    intrinsic: Annotated[
        bool,
        typer.Option("--intrinsic", help="Use the layout <name>/<base_model>/<alora|lora>/ with io.yaml."),
    ] = False,
    io_yaml: Annotated[Path | None, typer.Option(help=_IO_YAML_HELP)] = None,
    intrinsic_name: Annotated[str | None, typer.Option(help=_INTRINSIC_NAME_HELP)] = None,
    gate: Annotated[
        Path | None,
        typer.Option(help="Gate report (pytest --reqcheck-report) that passed for these weights."),
    ] = None,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="Upload without a passing gate report.")] = False,
    public: Annotated[
        bool, typer.Option("--public", help="Make a new repo public (default: private).")
    ] = False,
    revision: Annotated[str, typer.Option(help="Branch to commit to; created when missing.")] = "main",
    commit_message: Annotated[str | None, typer.Option(help="Commit message.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the files and the target; needs no token or network.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before a public upload (for CI).")] = False,
) -> None:
    """Upload an adapter to the Hugging Face Hub, refused unless a gate report vouches for it."""
    import tempfile

    from reqcheck.hub import Target, build_package, hub_endpoint, hub_token, push

    if gate is not None and no_gate:
        raise ReqcheckError("--gate and --no-gate contradict each other; pass only one.")
    if gate is None and not no_gate:
        raise ReqcheckError(
            f"Uploading needs a passing gate report; run `pytest --adapter {weight_path} --reqcheck-report "
            "report.json` and pass --gate report.json (or --no-gate to skip it)."
        )
    built = build_package(
        weight_path,
        name,
        intrinsic=intrinsic,
        io_yaml=io_yaml,
        intrinsic_name=intrinsic_name,
        gate_report=gate,
    )
    if no_gate:
        _say("WARNING: uploading WITHOUT a passing gate: nothing vouches for this adapter's accuracy.")
        _say("         The model card says so. Run pytest --adapter ... --reqcheck-report to gate it.")
    target = Target(name, revision, not public, commit_message or f"Upload {weight_path.name} with reqcheck")
    with tempfile.TemporaryDirectory(prefix="reqcheck-upload-") as tmp:
        built.write(Path(tmp))
        _describe_upload(Path(tmp), target, built, hub_endpoint())
        if public:
            _confirm_public(built, ask=not (yes or dry_run))
        if dry_run:
            _say("dry run: nothing was uploaded")
            return
        url = push(Path(tmp), target, hub_token())
    _say(f"uploaded in one commit: {url}")


def _describe_upload(folder: Path, target: Target, built: Package, endpoint: str) -> None:
    from reqcheck.intrinsic import file_tree

    layout = f"intrinsic ({built.subdir}/)" if built.subdir else "plain (adapter at the repo root)"
    visibility = "private" if target.private else "public"
    _say(f"target: {endpoint}/{target.repo_id} @ {target.revision} ({visibility}, {layout})")
    for path in file_tree(folder):
        _say(f"  {path}  ({(folder / path).stat().st_size} bytes)")


def _confirm_public(built: Package, ask: bool) -> None:
    """Before a public upload, show what the training data seems to hold and ask (never print values)."""
    from reqcheck.hub import scan_file

    manifest = built.facts.manifest
    data_path = Path(manifest.data["path"]) if manifest and manifest.data.get("path") else None
    findings = scan_file(data_path) if data_path else []
    if not findings:
        return
    _say(f"The training data {data_path} seems to hold personal data or secrets:")
    for finding in findings:
        _say(f"  {finding.describe()}")
    _say("A public adapter can leak what it was trained on.")
    if not ask:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise ReqcheckError(
            "A public upload of an adapter whose training data looks personal needs confirmation; rerun "
            "in a terminal, or pass --yes if the data may be published."
        )
    if not typer.confirm("Upload publicly anyway?", default=False, err=True):
        _say("Nothing was uploaded.")
        raise typer.Exit(1)


@app.command()
def package(
    weight_path: Annotated[Path, _WEIGHT_PATH],
    name: Annotated[str, typer.Option(help=_NAME_HELP)],
    out: Annotated[Path, typer.Option(help="Directory to write the intrinsic repo layout to.")],
    io_yaml: Annotated[Path | None, typer.Option(help=_IO_YAML_HELP)] = None,
    intrinsic_name: Annotated[str | None, typer.Option(help=_INTRINSIC_NAME_HELP)] = None,
    gate: Annotated[
        Path | None, typer.Option(help="Gate report whose metrics go into the model card.")
    ] = None,
) -> None:
    """Write locally exactly what `upload --intrinsic` would upload, to inspect it or push it elsewhere."""
    from reqcheck.atomic import atomic_directory
    from reqcheck.hub import build_package
    from reqcheck.intrinsic import file_tree, is_package_dir

    built = build_package(
        weight_path, name, intrinsic=True, io_yaml=io_yaml, intrinsic_name=intrinsic_name, gate_report=gate
    )
    ours = out.is_dir() and is_package_dir(out)
    if out.exists() and not (out.is_dir() and (ours or not any(out.iterdir()))):
        raise ReqcheckError(
            f"{out} exists and was not written by reqcheck package; pass an empty or new --out directory."
        )
    with atomic_directory(out, replace_existing=ours) as tmp:
        built.write(tmp)
    for path in file_tree(out):
        _say(f"  {out / path}")
    _say(f"packaged {weight_path} as {name} in {out}")
    _say_intrinsic_notes(built)


def _say_intrinsic_notes(built: Package) -> None:
    """The base-model name Mellea and granite-common look the adapter up by, and whether they can run it."""
    short = built.facts.base_short
    _say(
        f"base model folder: {short}; Mellea and granite-common find the adapter when the base model's id "
        f'ends in it (or pass base_model_name="{short}" to Mellea\'s CustomIntrinsicAdapter)'
    )
    manifest = built.facts.manifest
    if manifest is not None and not manifest.output.is_json:
        _say(
            "warning: this adapter emits a bare label, which granite-common and Mellea cannot parse; "
            "retrain it with the default --renderer intrinsic-v1 to run it there"
        )


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the adapter, gate report and package go.")] = Path(
        "reqcheck-demo"
    ),
    example: Annotated[
        Path | None, typer.Option(help="Example folder with train.jsonl and test.reqcheck.jsonl.")
    ] = None,
    basemodel: Annotated[str, typer.Option(help="Base model.")] = "smollm2-135m-instruct",
    device: Annotated[Device, typer.Option(help="Device to run on.")] = Device.auto,
) -> None:
    """Train, gate, package and use a requirement checker on the bundled SmolLM2, end to end."""
    from reqcheck.demo import DemoConfig, run_demo

    config = DemoConfig(workdir=workdir, basemodel=basemodel, device=device.value)
    if example is not None:
        config.example = example
    run_demo(config, say=_say)


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
