"""`reqcheck demo`: the whole product on a laptop CPU, from the bundled model to a checked reply.

train an aLoRA adapter on an example → gate it with pytest (validation on and off) → package it as an
intrinsic (upload --dry-run) → generate a reply in a Session and check it through the adapter and
through the judge. Every step reuses what an earlier run built (the adapter when its data and
settings are unchanged, the pytest cache for the gate).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from reqcheck.config import TrainConfig
from reqcheck.data import fingerprint, load_examples
from reqcheck.errors import ReqcheckError
from reqcheck.manifest import MANIFEST_NAME, Manifest
from reqcheck.training import summary, train

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEMO_PROMPT = "Write a two-sentence reply to a customer whose parcel arrived a week late."


@dataclass
class DemoConfig:
    """What the demo trains, gates and checks; the defaults reach the README's accuracy on SmolLM2."""

    example: Path = EXAMPLES / "support-polite"
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
        built = Manifest.read(out)
        same_data = built.data.get("fingerprint") == fingerprint(load_examples(train_config.datafile))
        same_settings = all(
            built.hyperparameters.get(k) == v for k, v in train_config.hyperparameters().items()
        )
        if same_data and same_settings:
            say(f"reusing the adapter in {out} (same data and settings)")
            return out
    for line in summary(train(train_config, report=say)):
        say(line)
    return out


def _run(command: list[str], say: Callable[[str], None]) -> int:
    say("$ " + " ".join(command))
    return subprocess.run(command, check=False).returncode


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> dict[str, object]:
    """Run the five steps; returns what a test or a user wants to know about the run."""
    if not (config.example / "train.jsonl").exists():
        raise ReqcheckError(f"{config.example} has no train.jsonl; run the demo from a reqcheck checkout.")
    config.workdir.mkdir(parents=True, exist_ok=True)
    requirement = _requirement(config.example)
    started = time.perf_counter()

    say(f"[1/4] training an aLoRA adapter for: {requirement}")
    adapter = _train_once(config, requirement, say)

    say("[2/4] gating it with pytest: every held-out case through the adapter and through the judge")
    report = config.workdir / "report.json"
    gate = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(config.example / "test.reqcheck.jsonl"),
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
        raise ReqcheckError(f"The gate failed (pytest exit code {gate}); see the table above and {report}.")

    say("[3/4] packaging it as an intrinsic (upload --dry-run: no token, no network)")
    name = f"reqcheck-demo/{config.example.name}"
    packaged = _run(
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
        raise ReqcheckError(f"Packaging failed (exit code {packaged}); see the message above.")

    say("[4/4] a Session: generate a reply, then check it through the adapter and through the judge")
    checks = _session(config, adapter, requirement, say)
    metrics = json.loads(report.read_text())["adapters"][0]["modes"]
    say(
        f"done in {time.perf_counter() - started:.0f} s: adapter accuracy {metrics['adapter']['accuracy']:.3f}, "
        f"judge accuracy {metrics['judge']['accuracy']:.3f}; adapter in {adapter}, gate report in {report}"
    )
    say(f"the gate report as a page: {config.workdir / 'report.html'}")
    return {"adapter": adapter, "report": report, "html": config.workdir / "report.html", "checks": checks}


def _session(
    config: DemoConfig, adapter: Path, requirement: str, say: Callable[[str], None]
) -> dict[str, object]:
    from reqcheck.adapters import CustomIntrinsicAdapter
    from reqcheck.backend import LocalHFBackend
    from reqcheck.requirements import req
    from reqcheck.session import Session

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
