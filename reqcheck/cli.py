"""The `reqcheck` command line: thin wrappers that parse flags and call the library.

User errors (ReqcheckError) print one sentence and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from reqcheck.errors import ReqcheckError, hide_url_credentials
from reqcheck.training.config import Device, TrainConfig

if TYPE_CHECKING:
    from reqcheck.publishing.hub import Target
    from reqcheck.publishing.packaging import Package

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train small adapters that check LLM output against requirements, gate them, ship them.",
)
_state = {"debug": False, "training": False}


def _say(message: str) -> None:
    typer.echo(message, err=True)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug
    _state["training"] = False


def _parameters(config_type: type) -> list[inspect.Parameter]:
    """Typer parameters for the fields of a config dataclass, from their `config.option` metadata."""
    hints = typing.get_type_hints(config_type)
    parameters = []
    for f in dataclasses.fields(config_type):
        meta, kind = f.metadata, hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
        if meta["comma_separated"]:
            kind, default = str, ",".join(f.default_factory())
        elif meta["free_text"]:
            kind, default = str, default.value
        elif meta["word"] is not None:
            kind, default = str, str(default)
        elif kind == list[str]:  # a repeatable option; left out, the config's default applies
            kind, default = list[str] | None, None
        info = typer.Argument if meta["argument"] else typer.Option
        parameters.append(
            inspect.Parameter(
                meta["flag"] or f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, info(help=meta["help"])],
            )
        )
    return parameters


def _options_from(config_type: type) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command taking `**options` one command-line option per field of `config_type`."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        command.__signature__ = inspect.Signature(_parameters(config_type))  # type: ignore[attr-defined]
        return command

    return decorate


def _config_from(config_type: type, options: dict[str, Any]) -> Any:
    """The config the parsed options describe; an option left out keeps the config's default."""
    values = {}
    for f in dataclasses.fields(config_type):
        value = options[f.metadata["flag"] or f.name]
        if value is None:
            continue
        if f.metadata["comma_separated"]:
            value = [part.strip() for part in value.split(",") if part.strip()]
        values[f.name] = list(value) if isinstance(value, tuple) else value
    return config_type(**values)


@app.command()
@_options_from(TrainConfig)
def train(**options: Any) -> None:
    """Fine-tune a LoRA or aLoRA requirement-check adapter from labelled JSONL."""
    from reqcheck.training.loop import summary
    from reqcheck.training.loop import train as run_training

    _state["training"] = True  # an interrupted run can be resumed
    result = run_training(_config_from(TrainConfig, options), report=_say)
    for line in summary(result):
        _say(line)


_WEIGHT_PATH = typer.Argument(
    help="Adapter directory written by reqcheck train (PEFT files + reqcheck.json)."
)
_NAME_HELP = "Hub repo id, org/repo."
_IO_YAML_HELP = "io.yaml for the intrinsic layout (default: written from reqcheck.json)."
_INTRINSIC_NAME_HELP = "Folder name of the intrinsic (default: the repo part of --name)."
_ALLOW_PARTIAL_GATE = typer.Option(
    "--allow-partial-gate", help="Accept a gate report of a run narrowed with -k or -x (some cases only)."
)


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
    allow_partial_gate: Annotated[bool, _ALLOW_PARTIAL_GATE] = False,
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

    from reqcheck.publishing.hub import Target, hub_endpoint, hub_token, push
    from reqcheck.publishing.packaging import build_package

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
        allow_partial_gate=allow_partial_gate,
    )
    if no_gate:
        _say("WARNING: uploading WITHOUT a passing gate: nothing vouches for this adapter's accuracy.")
        _say("         The model card says so. Run pytest --adapter ... --reqcheck-report to gate it.")
    target = Target(name, revision, not public, commit_message or f"Upload {weight_path.name} with reqcheck")
    with tempfile.TemporaryDirectory(prefix="reqcheck-upload-") as tmp:
        built.write(Path(tmp))
        _describe_upload(Path(tmp), target, built, hub_endpoint())
        if built.subdir:
            _say_intrinsic_notes(built)
        if public:
            _confirm_public(built, ask=not (yes or dry_run))
        if dry_run:
            _say("dry run: nothing was uploaded")
            return
        url = push(Path(tmp), target, hub_token())
    _say(f"uploaded in one commit: {hide_url_credentials(url)}")


def _describe_upload(folder: Path, target: Target, built: Package, endpoint: str) -> None:
    from reqcheck.publishing.packaging import file_tree

    layout = f"intrinsic ({built.subdir}/)" if built.subdir else "plain (adapter at the repo root)"
    visibility = "private" if target.private else "public"
    where = hide_url_credentials(f"{endpoint}/{target.repo_id}")
    _say(f"target: {where} @ {target.revision} ({visibility}, {layout})")
    for path in file_tree(folder):
        _say(f"  {path}  ({(folder / path).stat().st_size} bytes)")


def _confirm_public(built: Package, ask: bool) -> None:
    """Before a public upload, show what the training data seems to hold and ask (never print values)."""
    from reqcheck.publishing.personal_data import scan_training_data

    manifest = built.facts.manifest
    scan = scan_training_data(manifest.data if manifest else None, built.facts.path)
    if scan.unscanned is None and not scan.findings:
        return
    if scan.unscanned is not None:
        _say(f"The training data {scan.unscanned}, so it could not be scanned for personal data or secrets.")
        concern = "whose training data could not be scanned"
    else:
        _say(f"The training data {manifest.data.path} seems to hold personal data or secrets:")
        for finding in scan.findings:
            _say(f"  {finding.describe()}")
        concern = "whose training data looks personal"
    _say("A public adapter can leak what it was trained on.")
    if not ask:
        return
    if sys.stdin is None or not sys.stdin.isatty():
        raise ReqcheckError(
            f"A public upload of an adapter {concern} needs confirmation; rerun in a terminal, or pass "
            "--yes if the data may be published."
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
    allow_partial_gate: Annotated[bool, _ALLOW_PARTIAL_GATE] = False,
) -> None:
    """Write locally exactly what `upload --intrinsic` would upload, to inspect it or push it elsewhere."""
    from reqcheck.atomic import atomic_directory
    from reqcheck.publishing.packaging import build_package, file_tree, is_package_dir

    built = build_package(
        weight_path,
        name,
        intrinsic=True,
        io_yaml=io_yaml,
        intrinsic_name=intrinsic_name,
        gate_report=gate,
        allow_partial_gate=allow_partial_gate,
    )
    ours = out.is_dir() and is_package_dir(out)
    if out.exists() and not (out.is_dir() and (ours or not any(out.iterdir()))):
        raise ReqcheckError(
            f"{out} exists and was not written by reqcheck package; pass an empty or new --out directory."
        )
    try:
        with atomic_directory(out, replace_existing=ours) as tmp:
            built.write(tmp)
    except OSError as exc:
        raise ReqcheckError(
            f"Cannot write --out {out} ({exc.strerror or type(exc).__name__}); pass a directory you may write to."
        ) from exc
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
def export(
    adapter: Annotated[Path, typer.Argument(help="Adapter directory written by reqcheck train.")],
    gguf: Annotated[Path, typer.Option("--gguf", help="Folder to write adapter.gguf (and base.gguf) into.")],
    base: Annotated[
        bool,
        typer.Option("--base", help="Also write base.gguf, from the same weights the adapter trained on."),
    ] = False,
    base_type: Annotated[str, typer.Option(help="Float type of base.gguf: f32, f16 or bf16.")] = "f32",
) -> None:
    """Export the adapter for llama.cpp's llama-server (LoRA and aLoRA), with llama.cpp's own converters."""
    from reqcheck.serving.export import export as export_gguf

    exported = export_gguf(adapter, gguf, with_base=base, base_type=base_type)
    for path in (exported.adapter, exported.base):
        if path is not None:
            _say(f"  {path}")
    if exported.invocation_tokens is not None:
        _say(f"aLoRA invocation tokens for llama-server: {exported.invocation_tokens}")
    _say(f"start the server with: {exported.start_command}")


@app.command()
def serve(
    adapters: Annotated[
        list[Path], typer.Argument(help="Adapter directories written by reqcheck train, on one base model.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8080,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model (default: llama.cpp's choice).", min=1)
    ] = None,
    context: Annotated[int, typer.Option(help="Context window in tokens.", min=256)] = 4096,
    base_type: Annotated[
        str, typer.Option(help="Float type of the base model's GGUF: f32, f16 or bf16.")
    ] = "f32",
    llama_server: Annotated[
        Path | None,
        typer.Option(
            "--llama-server",
            envvar="REQCHECK_LLAMA_SERVER",
            help="Run this stock llama-server binary instead of the prebuilt engine.",
        ),
    ] = None,
    log: Annotated[Path | None, typer.Option(help="With --llama-server: write its output here.")] = None,
    replicas: Annotated[
        int,
        typer.Option(
            help="One-slot servers to start, the threads split between them, on consecutive ports; gate "
            "through all of them to check faster.",
            min=1,
        ),
    ] = 1,
) -> None:
    """Serve adapters through llama.cpp's server: each request that names an adapter gets it, others the base model."""
    from reqcheck.serving import engine
    from reqcheck.serving import serve as serving

    # what can fail before minutes of conversion: the engine, the port
    if llama_server is not None and not os.access(llama_server, os.X_OK):
        raise ReqcheckError(f"--llama-server {llama_server} is not an executable; point it at llama-server.")
    if llama_server is None:
        engine.load()
    settings = serving.replica_settings(
        engine.ServerSettings(Path(), host=host, port=port, threads=threads, context=context), replicas
    )
    for each in settings:
        engine.check_port_free(each.host, each.port)
    plan = serving.prepare(adapters, base_type, say=_say)
    base = plan.settings(host=host, port=port, threads=threads, context=context)
    serving.serve(plan, base, binary=llama_server, log=log, say=_say, replicas=replicas)


@app.command("report")
def report_command(
    report: Annotated[
        Path, typer.Argument(metavar="REPORT.json", help="Gate report written by pytest --reqcheck-report.")
    ],
    html: Annotated[Path, typer.Option(help="Write the report as one self-contained HTML file here.")],
) -> None:
    """Render a saved gate report as HTML (plots, gates, misclassified cases, regressions); no model needed."""
    from reqcheck.atomic import refuse_clashing_outputs
    from reqcheck.formats.gate_report import GateReport
    from reqcheck.gating.report_html import write_html

    refuse_clashing_outputs([("--html", html)], [("the report", report)])
    if html.is_dir():
        raise ReqcheckError(f"--html {html} is a directory; pass the path of the HTML file to write.")
    if any(part.exists() and not part.is_dir() for part in html.parents):
        raise ReqcheckError(f"--html {html} lies under a file, not a folder; pass a path in a folder.")
    loaded = GateReport.read(report)
    try:
        write_html(loaded, html)
    except OSError as exc:
        raise ReqcheckError(
            f"Cannot write --html {html} ({exc.strerror or type(exc).__name__}); pass a file path you may "
            "write to."
        ) from exc
    _say(f"wrote {html}")


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


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (how CI cancels a job) stops reqcheck as Ctrl-C does, so temp copies are removed."""
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except ReqcheckError as exc:
        if _state["debug"]:
            raise
        _say(f"error: {exc}")
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == 130:  # typer turns Ctrl-C into exit code 130 without a word
            if _state["training"]:
                _say(
                    "interrupted; rerun the same command with --resume to continue from the last finished epoch"
                )
            else:
                _say("interrupted")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
