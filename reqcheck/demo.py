"""`reqcheck demo`: the whole product on a laptop CPU, from the bundled model to a checked reply.

train an aLoRA adapter on an example → gate it with pytest (validation on and off) → package it as an
intrinsic (upload --dry-run) → generate a reply in a Session and check it through the adapter and
through the judge. Every step reuses what an earlier run built (the adapter when its data and
settings are unchanged, the pytest cache for the gate).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import fingerprint, label_counts, load_examples
from reqcheck.formats.gate_report import GateReport
from reqcheck.formats.manifest import MANIFEST_NAME, Manifest, default_positive_labels
from reqcheck.gating.numbers import number
from reqcheck.gating.report_html import is_report_page
from reqcheck.models.loading import resolve_base_model
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import summary, train

DEMO_PROMPT = "Write a two-sentence reply to a customer whose parcel arrived a week late."
PYTEST_EXIT = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no cases collected"}


def examples_dir() -> Path:
    """The example folders, shipped inside the package (the checkout's examples/ in an editable install)."""
    try:
        return Path(str(files("reqcheck.examples")))
    except ModuleNotFoundError:  # an editable install made before the examples became package data
        raise ReqcheckError(
            "reqcheck's example data is not installed with it; reinstall reqcheck (`pip install -e .` in a "
            "checkout)."
        ) from None


@dataclass
class DemoConfig:
    """What the demo trains, gates and checks; the defaults reach the README's accuracy on SmolLM2."""

    example: Path = field(default_factory=lambda: examples_dir() / "support-polite")
    basemodel: str = "smollm2-135m-instruct"
    workdir: Path = Path("reqcheck-demo")
    epochs: int = 6
    learning_rate: float = 1e-3
    batch_size: int = 8
    min_accuracy: float = 0.9
    min_gain: float = 0.2
    device: str = "auto"
    max_new_tokens: int = 80
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])


def _requirement(example: Path) -> str:
    tests = load_examples(example / "test.reqcheck.jsonl")
    requirement = next((e.requirement for e in tests if e.requirement), None)
    if not requirement:
        raise ReqcheckError(
            f"{example}/test.reqcheck.jsonl names no requirement; add a 'requirement' to its lines."
        )
    return requirement


def _train_once(config: DemoConfig, requirement: str, say: Callable[[str], None]) -> Path:
    """Train the adapter unless the one in the workdir was trained on the same data with the same settings."""
    out = config.workdir / "adapter"
    train_config = TrainConfig(
        datafile=config.example / "train.jsonl",
        basemodel=config.basemodel,
        outfile=out,
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        grad_accum=1,
        device=config.device,
        requirement=requirement,
        target_modules=config.target_modules,
    )
    if (out / MANIFEST_NAME).exists():
        changed = changed_since_training(out, train_config)
        if not changed:
            say(f"reusing the adapter in {out} (same data, base model, requirement and settings)")
            return out
        say(f"retraining: the {', '.join(changed)} changed since {out} was trained")
    for line in summary(train(train_config, report=say)):
        say(line)
    return out


def changed_since_training(adapter: Path, config: TrainConfig) -> list[str]:
    """What differs between the adapter in `adapter` and the one `config` would train (empty: reuse it)."""
    built = Manifest.read(adapter)
    base = resolve_base_model(config.basemodel)
    same = {
        "data": built.data.fingerprint == fingerprint(load_examples(config.datafile)),
        "base model": (built.base_model.name, built.base_model.revision) == (base.name, base.revision),
        "requirement": built.requirement == config.requirement,
        "adapter type": built.adapter_type == config.adapter,
        "settings": all(built.hyperparameters.get(k) == v for k, v in config.hyperparameters().items()),
    }
    return [what for what, equal in same.items() if not equal]


def _run(command: list[str], say: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run a step, showing its output as it comes; returns its exit code and its last lines."""
    say("$ " + " ".join(command))
    tail: deque[str] = deque(maxlen=200)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        for line in process.stdout or ():
            say(line.rstrip("\n"))
            tail.append(line.rstrip("\n"))
    return process.returncode, list(tail)


def _cause(lines: list[str]) -> str | None:
    """The one line of a failed step that says why: a missing module, a usage error, an `error:` line."""
    for line in reversed(lines):
        if found := re.search(r"No module named '?([\w.]+)'?", line):
            return f"No module named {found.group(1)}; install it into this environment ({sys.executable})"
        if found := re.match(r"(?:ERROR|error): (.+)", line):
            return found.group(1)
        if found := re.search(r"Exit: (.+?) !*$", line):
            return found.group(1)
    return None


def _gate_failure(code: int, lines: list[str], report: Path) -> str:
    """One sentence saying why the gate step failed: what stopped pytest, or which gates missed."""
    cause = _cause(lines)
    if cause:
        return f"The gate could not run: {cause.rstrip('.')}."
    if report.exists():
        missed = [
            f"{g.name}{'[' + g.label + ']' if g.label else ''} {number(g.value)} against a threshold of {g.threshold}"
            for entry in GateReport.read(report).adapters
            for g in entry.gates
            if not g.passed
        ]
        if missed:
            return f"The gate failed: {'; '.join(missed)} (details in {report})."
    meaning = PYTEST_EXIT.get(code, "cases failed")
    return f"The gate failed: pytest exited with code {code} ({meaning}); its output above says why."


def _check_gate_can_run() -> None:
    """The gate is a pytest run: say so before training for minutes when pytest is missing."""
    if importlib.util.find_spec("pytest") is None:
        raise ReqcheckError(
            f"The demo's gate step runs pytest, which is not installed in this environment ({sys.executable}); "
            "reinstall reqcheck with pip, which installs pytest with it."
        )


def _refuse_foreign_outputs(report: Path, page: Path) -> None:
    """Refuse to delete or overwrite a report or page in the workdir that reqcheck did not write."""
    ours = {report: _is_gate_report(report), page: page.is_file() and is_report_page(page)}
    for path, written_by_reqcheck in ours.items():
        if path.exists() and not written_by_reqcheck:
            raise ReqcheckError(
                f"{path} exists and was not written by reqcheck; pass another --workdir or move it away."
            )


def _is_gate_report(path: Path) -> bool:
    try:
        GateReport.read(path)
    except ReqcheckError:
        return False
    return True


def _check_before_training(config: DemoConfig) -> None:
    """Everything that would stop the demo after minutes of training, said before it starts."""
    for name in ("train.jsonl", "test.reqcheck.jsonl"):
        if not (config.example / name).is_file():
            raise ReqcheckError(
                f"{config.example} has no {name}; pass --example a folder with train.jsonl and "
                "test.reqcheck.jsonl."
            )
    _check_gate_can_run()
    labels = sorted(label_counts(load_examples(config.example / "train.jsonl")))
    if not default_positive_labels(labels):
        raise ReqcheckError(
            f"{config.example} is a classifier ({', '.join(labels)}) with no passing label such as yes or "
            "pass, and the demo checks a requirement; run the commands in that example's README instead."
        )
    _refuse_foreign_outputs(config.workdir / "report.json", config.workdir / "report.html")


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run the four steps; returns what a test or a user wants to know about the run."""
    _check_before_training(config)
    config.workdir.mkdir(parents=True, exist_ok=True)
    requirement = _requirement(config.example)
    started = time.perf_counter()

    say(f"[1/4] training an aLoRA adapter for: {requirement}")
    adapter = _train_once(config, requirement, say)

    say("[2/4] gating it with pytest: every held-out case through the adapter and through the judge")
    report = config.workdir / "report.json"
    report.unlink(missing_ok=True)  # a report left from an earlier run must not speak for this one
    gate, output = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(config.example / "test.reqcheck.jsonl"),
            f"--rootdir={config.workdir}",  # the case cache goes to the workdir, not beside the examples
            f"--adapter={adapter}",
            f"--basemodel={config.basemodel}",
            f"--reqcheck-min-accuracy={config.min_accuracy}",
            f"--reqcheck-min-gain={config.min_gain}",
            f"--reqcheck-report={report}",
            f"--reqcheck-html={config.workdir / 'report.html'}",
            f"--reqcheck-device={config.device}",
            "-q",
            "--no-header",
            "-p",
            "no:randomly",
        ],
        say,
    )
    if gate != 0:
        raise ReqcheckError(_gate_failure(gate, output, report))

    say("[3/4] packaging it as an intrinsic (upload --dry-run: no token, no network)")
    name = f"reqcheck-demo/{config.example.name}"
    packaged, output = _run(
        [
            sys.executable,
            "-m",
            "reqcheck",
            "upload",
            str(adapter),
            "--name",
            name,
            "--intrinsic",
            "--gate",
            str(report),
            "--dry-run",
        ],
        say,
    )
    if packaged != 0:
        cause = _cause(output) or f"reqcheck upload exited with code {packaged}"
        raise ReqcheckError(f"Packaging failed: {cause.rstrip('.')}.")

    say("[4/4] a Session: generate a reply, then check it through the adapter and through the judge")
    checks = _session(config, adapter, requirement, say)
    modes = GateReport.read(report).adapters[0].modes
    say(
        f"done in {time.perf_counter() - started:.0f} s: adapter accuracy {number(modes['adapter'].accuracy)}, "
        f"judge accuracy {number(modes['judge'].accuracy)}; adapter in {adapter}, gate report in {report}"
    )
    say(f"the gate report as a page: {config.workdir / 'report.html'}")
    return {"adapter": adapter, "report": report, "html": config.workdir / "report.html", "checks": checks}


def _session(
    config: DemoConfig, adapter: Path, requirement: str, say: Callable[[str], None]
) -> dict[str, object]:
    from reqcheck.checking.adapters import CustomIntrinsicAdapter
    from reqcheck.checking.backend import LocalHFBackend
    from reqcheck.checking.requirements import req
    from reqcheck.checking.session import Session

    backend = LocalHFBackend(config.basemodel, device=config.device)
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter), intrinsic_name=config.example.name))
    session = Session(backend, max_new_tokens=config.max_new_tokens)
    out = session.instruct(DEMO_PROMPT, requirements=[req(requirement)], loop_budget=2)
    say(f"prompt: {DEMO_PROMPT}")
    say(f"reply ({out.attempts} generation(s)): {out.output}")
    checks = {}
    for switch in (True, False):
        backend.default_to_constraint_checking_alora = switch
        result = session.validate([req(requirement)], out.output)[0]
        checks[result.via] = result
        say(
            f"  via {result.via:<16} passed={result.passed!s:<5} score={result.score:.3f} "
            f"latency={result.seconds * 1000:.0f} ms  ({result.reason})"
        )
    return checks
