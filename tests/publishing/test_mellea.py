"""Packaged intrinsics through Mellea 0.8's own code; optional, as CI does not install Mellea.

Mellea's `CustomIntrinsicAdapter` / `IntrinsicAdapter` find the package in a Hugging Face cache
(offline) under the base-model folder name its `LocalHFBackend` derives, and read the io.yaml; Mellea's
granite formatter builds the request from that config, Mellea's llguidance constraint decodes the
`response_format`, and its result processor and io contract give the score reqcheck gives.
Not proven here: generation inside Mellea's `LocalHFBackend`, whose adapter loading calls transformers'
`set_adapter`, which in transformers 5.24 (reqcheck's pin) needs PEFT >= 0.22 (the index has 0.21.2); generation
runs through PEFT with Mellea's transformers helpers instead, as its backend calls them.
Run with `pip install -c constraints.txt -e ".[test]" mellea==0.8.0 llguidance`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("mellea")
pytest.importorskip("llguidance")

import huggingface_hub
import llguidance.hf
import yaml
from mellea.backends.adapters import AdapterType, IntrinsicAdapter, catalog
from mellea.backends.adapters.adapter import CustomIntrinsicAdapter
from mellea.backends.huggingface import LocalHFBackend as MelleaBackend
from mellea.formatters.granite import IntrinsicsResultProcessor, IntrinsicsRewriter
from mellea.formatters.granite.base.util import (
    chat_completion_request_to_transformers_inputs,
    generate_with_transformers,
)
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from reqcheck.checking.adapters import CustomIntrinsicAdapter as ReqcheckAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.requirements import ALoraRequirement
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train
from tests.helpers import FAST, PLEASE
from tests.publishing.test_intrinsic_contract import ITEMS, package, packaged_dir
from tests.tiny import build_tiny_bpe_tokenizer, build_tiny_model, marker_task, write_jsonl

pytestmark = pytest.mark.mellea
REPO = "acme/please"
COMMIT = "0" * 40


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bpe-model"), tokenizer=build_tiny_bpe_tokenizer())


@pytest.fixture(scope="module")
def checks(bpe_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same requirement check as an aLoRA and as a LoRA, trained with the defaults."""
    data = write_jsonl(tmp_path_factory.mktemp("mellea-data") / "b.jsonl", marker_task(240, seed=1))
    out = tmp_path_factory.mktemp("mellea-checks")
    return {
        kind: train(
            TrainConfig(data, str(bpe_model), out / kind, adapter=kind, requirement=PLEASE, **FAST),
            report=lambda _: None,
        ).outfile
        for kind in ("alora", "lora")
    }


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache; `publish` puts a package in it as a download of REPO would.

    Mellea's catalog is copied, so the entry CustomIntrinsicAdapter adds for REPO is gone after the test.
    """
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(catalog, "_INTRINSICS_CATALOG_ENTRIES", list(catalog._INTRINSICS_CATALOG_ENTRIES))
    monkeypatch.setattr(catalog, "_INTRINSICS_CATALOG", dict(catalog._INTRINSICS_CATALOG))
    return cache


def publish(adapter: Path, cache: Path, capsys, monkeypatch) -> Path:
    """`reqcheck package --intrinsic` into the cache's snapshot of REPO; returns the adapter folder."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    code, err = package(adapter, "please", repo / "snapshots" / COMMIT, capsys, monkeypatch)
    assert code == 0, err
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return packaged_dir(repo / "snapshots" / COMMIT)


def mellea_adapter(kind: str, base_name: str) -> IntrinsicAdapter:
    """Mellea's adapter for REPO: CustomIntrinsicAdapter for an aLoRA (the only type it asks for), else
    IntrinsicAdapter with LoRA, once CustomIntrinsicAdapter has put REPO in Mellea's catalog."""
    if kind == "alora":
        return CustomIntrinsicAdapter(model_id=REPO, base_model_name=base_name)
    with pytest.raises(ValueError, match=re.escape(f"please/{base_name}/alora/io.yaml")):
        CustomIntrinsicAdapter(model_id=REPO, base_model_name=base_name)
    return IntrinsicAdapter("please", adapter_type=AdapterType.LORA, base_model_name=base_name)


@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_mellea_finds_the_package_under_the_base_model_folder_and_reads_its_io_yaml(
    checks, bpe_model: Path, hub_cache: Path, capsys, monkeypatch, kind: str
) -> None:
    folder = publish(checks[kind], hub_cache, capsys, monkeypatch)
    backend = MelleaBackend(str(bpe_model))
    assert folder.parent.name == backend.base_model_name
    adapter = mellea_adapter(kind, backend.base_model_name)
    assert adapter.config == yaml.safe_load((folder / "io.yaml").read_text())
    assert Path(adapter.get_local_hf_path(backend.base_model_name)) == folder
    backend.add_adapter(adapter)
    assert adapter.qualified_name in backend.list_adapters()


@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_check_through_mellea_formatter_equals_reqcheck(
    checks, bpe_model: Path, hub_cache: Path, capsys, monkeypatch, kind: str
) -> None:
    """The request Mellea builds from the config it read, constrained by llguidance, scores as reqcheck does."""
    folder = publish(checks[kind], hub_cache, capsys, monkeypatch)
    adapter = mellea_adapter(kind, folder.parent.name)
    tokenizer = AutoTokenizer.from_pretrained(bpe_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bpe_model), str(folder)).eval()
    n_vocab = max(tokenizer.vocab_size, len(tokenizer), model.config.vocab_size)
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)
    rewriter = IntrinsicsRewriter(config_dict=adapter.config, model_name="please")
    processor = IntrinsicsResultProcessor(config_dict=adapter.config)
    backend = LocalHFBackend(str(bpe_model), device="cpu")
    backend.add_adapter(ReqcheckAdapter(model_id=str(checks[kind]), intrinsic_name="please"))
    requirement = ALoraRequirement(PLEASE, intrinsic_name="please")
    for item in ITEMS:
        request = rewriter.transform(
            {"messages": [{"role": "assistant", "content": item}]}, requirement=PLEASE
        )
        generate_input, other = chat_completion_request_to_transformers_inputs(
            request.model_dump(), tokenizer, model, ll_tokenizer=ll_tokenizer
        )
        response = generate_with_transformers(tokenizer, model, generate_input, other)
        result = adapter.io_contract.parse(processor.transform(response, request).choices[0].message.content)
        ours = backend.check(requirement, item)
        assert json.loads(response.choices[0].message.content) == {"score": ours.label}
        assert abs(result["requirement_check"]["score"] - ours.score) < 1e-3
