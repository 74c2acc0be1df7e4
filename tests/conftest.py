"""Session fixtures: the tiny model is built once per test session; no network is used."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, settings

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub reads it: the tests never touch the network

from reqcheck.demo import examples_dir
from reqcheck.serving.export import Exported, export
from reqcheck.serving.llamacpp import source_dir, stock_server
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import TrainResult, train
from tests.helpers import FAST, PLEASE
from tests.tiny import build_tiny_model, marker_task, write_jsonl

# llama.cpp's source (its converters) lives in the user's cache across sessions, not in the per-session cache
# the other tests get; captured before `_isolated_cache` changes REQCHECK_CACHE
_USER_CACHE = os.environ.get("REQCHECK_CACHE") or str(Path.home() / ".cache" / "reqcheck")

# The fuzz suite (tests/test_fuzz.py): `ci` is what .ci/run gets (the same cases every run, well under
# 30 s); `pytest tests/test_fuzz.py --hypothesis-profile thorough` searches much longer.
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=600, derandomize=False)
settings.load_profile("ci")


@pytest.fixture(scope="session", autouse=True)
def _matplotlib_loaded() -> None:
    """Load every matplotlib module a report's figures use before the first test.

    pytester puts `sys.modules` back after each in-process run. When a test outside pytester has already
    imported the `matplotlib` package (an HTML report with no figures does), the submodules a pytester run
    imports are dropped and imported a second time under the package that stayed, and matplotlib then
    holds two GridSpec classes ("Single argument to subplot must be a three-digit integer").
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context({"svg.fonttype": "none"}):
        figure = Figure(figsize=(2, 2), layout="constrained")
        axes = figure.subplots(1, 1, squeeze=False)[0][0]
        axes.pcolormesh([[0, 1]], cmap="Blues")
        axes.bar([0], [1])
        axes.plot([0, 1], [0, 1])
        axes.text(0, 0, "$x$")
        axes.legend(["a"])
        figure.savefig(io.BytesIO(), format="svg")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep converted models and evaluation caches out of the user's home directory."""
    if "REQCHECK_CACHE" not in os.environ:
        monkeypatch.setenv("REQCHECK_CACHE", str(tmp_path_factory.getbasetemp() / "reqcheck-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", marker_task(240, seed=1))


@pytest.fixture(scope="session")
def tiny_adapters(
    tiny_model_dir: Path, marker_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, TrainResult]:
    """An aLoRA and a LoRA adapter trained on the marker task, once per session."""
    out = tmp_path_factory.mktemp("adapters")
    return {
        kind: train(
            TrainConfig(
                marker_data, str(tiny_model_dir), out / kind, adapter=kind, requirement=PLEASE, **FAST
            ),
            report=lambda _: None,
        )
        for kind in ("alora", "lora")
    }


@pytest.fixture(scope="session")
def quick_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An aLoRA trained for one epoch on 40 lines: for tests of names and plumbing, not of accuracy."""
    data = write_jsonl(tmp_path_factory.mktemp("quick-data") / "train.jsonl", marker_task(40, seed=3))
    out = tmp_path_factory.mktemp("quick") / "quick"
    train(
        TrainConfig(data, str(tiny_model_dir), out, requirement=PLEASE, **{**FAST, "epochs": 1}),
        report=lambda _: None,
    )
    return out


@pytest.fixture(scope="session")
def mellea_adapter(tiny_model_dir: Path, marker_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter as Mellea's `m alora train` leaves it: Mellea's prompt format, PEFT files, labels in io.yaml."""
    out = tmp_path_factory.mktemp("mellea") / "mellea"
    train(
        TrainConfig(marker_data, str(tiny_model_dir), out, renderer="mellea-v1", **FAST),
        report=lambda _: None,
    )
    (out / "reqcheck.json").unlink()
    io = {
        "model": None,
        "response_format": '{"type": "object"}',
        "transformations": [
            {"type": "likelihood", "input_path": [], "categories_to_values": {"yes": 1.0, "no": 0.0}}
        ],
    }
    (out / "io.yaml").write_text(yaml.safe_dump(io))
    return out


@pytest.fixture(scope="session")
def llama_cpp() -> Iterator[Path]:
    """llama.cpp's source tree, fetched once into the user's reqcheck cache; exported to later calls via
    REQCHECK_LLAMA_CPP, so the per-test cache directories never fetch it again."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQCHECK_CACHE", _USER_CACHE)
        tree = source_dir()
        patch.setenv("REQCHECK_LLAMA_CPP", str(tree))
        yield tree


@pytest.fixture(scope="session", params=["prebuilt", "stock"])
def llama_engine(request: pytest.FixtureRequest) -> Path | None:
    """Each llama.cpp server the agreement tests run on: the prebuilt engine (None, the `test` extra
    installs it) and a stock llama-server from REQCHECK_LLAMA_SERVER or the PATH, when there is one. The
    tests build nothing: `reqcheck.serving.llamacpp.build_server` is for users and benchmarks who ask."""
    if request.param == "prebuilt":
        return None
    binary = stock_server()
    if binary is None:
        pytest.skip("no stock llama-server: set REQCHECK_LLAMA_SERVER or put llama-server on the PATH")
    return binary


POLITE_REQUIREMENT = "The support reply is polite and professional."


@dataclass(frozen=True)
class ServedPair:
    """An aLoRA and a LoRA trained on SmolLM2 for the support-polite example, exported for llama-server."""

    alora: Path
    lora: Path
    exports: dict[str, Exported]
    base: Path
    test_cases: Path


@pytest.fixture(scope="session")
def served_smollm2(llama_cpp: Path, tmp_path_factory: pytest.TempPathFactory) -> ServedPair:
    """Two short epochs each: enough for the adapter to answer in its JSON format when served (a served
    check reads the answer the server generates, not only the label's probability)."""
    root = tmp_path_factory.mktemp("served")
    example = examples_dir() / "support-polite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQCHECK_CACHE", str(root / "cache"))
        trained = {
            kind: train(
                TrainConfig(
                    example / "train.jsonl",
                    "smollm2-135m-instruct",
                    root / kind,
                    adapter=kind,
                    requirement=POLITE_REQUIREMENT,
                    epochs=2,
                    learning_rate=2e-3,
                    batch_size=8,
                    grad_accum=1,
                    device="cpu",
                ),
                report=lambda _: None,
            )
            for kind in ("alora", "lora")
        }
        exports = {
            kind: export(result.outfile, root / f"{kind}-gguf", with_base=kind == "alora")
            for kind, result in trained.items()
        }
    base = exports["alora"].base
    assert base is not None
    return ServedPair(root / "alora", root / "lora", exports, base, example / "test.reqcheck.jsonl")
