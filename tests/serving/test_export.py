"""`reqcheck export`: adapters as llama.cpp GGUF files, checked against llama.cpp's own converter and server."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import gguf
import numpy as np
import pytest

from reqcheck.formats.manifest import Manifest, content_hash
from reqcheck.formats.served import TASK_NAME_KEY, ServedTag
from reqcheck.serving.export import ADAPTER_FILE, START_FILE, ZERO_SCALES_CURL, export
from reqcheck.serving.llama_server import ADAPTER_FLAGS, LlamaServer
from reqcheck.serving.llamacpp import run_script
from reqcheck.training.loop import TrainResult
from tests.conftest import ServedPair
from tests.helpers import run_cli


def _fields(path: Path) -> dict[str, object]:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def _converted_by_llama_cpp(adapter: Path, llama_cpp: Path, out: Path) -> Path:
    """The same adapter through convert_lora_to_gguf.py alone, as a llama.cpp user would run it."""
    manifest = Manifest.read(adapter)
    target = out / "direct.gguf"
    run_script(
        llama_cpp / "convert_lora_to_gguf.py",
        [str(adapter), "--base", str(manifest.base_model.path), "--outfile", str(target), "--outtype", "f32"],
    )
    return target


@pytest.mark.parametrize("kind", ["alora", "lora"])
def test_export_is_llama_cpps_conversion_with_the_served_tag(
    kind: str, tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path
) -> None:
    adapter = tiny_adapters[kind].outfile
    manifest = Manifest.read(adapter)
    exported = export(adapter, tmp_path / "out")
    direct = _converted_by_llama_cpp(adapter, llama_cpp, tmp_path)

    ours, theirs = _fields(exported.adapter), _fields(direct)
    assert ours.pop(TASK_NAME_KEY) == ServedTag(adapter.name, content_hash(adapter)).render()
    invocation = gguf.Keys.Adapter.ALORA_INVOCATION_TOKENS
    if kind == "alora":
        # llama-server starts one token before the invocation it finds: the export drops the first token
        assert theirs.pop(invocation) == manifest.invocation_ids
        assert ours.pop(invocation) == manifest.invocation_ids[1:] == exported.invocation_tokens
    else:
        assert invocation not in ours and invocation not in theirs and exported.invocation_tokens is None
    assert ours == theirs
    ours_t, theirs_t = _tensors(exported.adapter), _tensors(direct)
    assert ours_t.keys() == theirs_t.keys() and len(ours_t) > 0
    assert all(np.array_equal(ours_t[name], theirs_t[name]) for name in ours_t)
    # the flags LlamaServer starts a stock server with, and the call that zeroes the adapter's global scale
    start = (tmp_path / "out" / START_FILE).read_text()
    assert f"--lora {exported.adapter} {' '.join(ADAPTER_FLAGS)}" in start.splitlines()[0]
    assert start.splitlines()[-1] == ZERO_SCALES_CURL


def test_export_replaces_its_own_files_and_refuses_anyone_elses(
    tiny_adapters: dict[str, TrainResult], llama_cpp: Path, tmp_path: Path
) -> None:
    adapter = tiny_adapters["lora"].outfile
    out = tmp_path / "out"
    export(adapter, out)
    first = (out / ADAPTER_FILE).stat().st_mtime_ns
    export(adapter, out)
    assert (out / ADAPTER_FILE).stat().st_mtime_ns != first
    (out / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="already holds notes.txt; pass a new or empty folder"):
        export(adapter, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_export_names_the_server_command_and_refuses_a_non_adapter(
    tiny_adapters: dict[str, TrainResult],
    llama_cpp: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = tiny_adapters["alora"].outfile
    code, err = run_cli(["export", str(adapter), "--gguf", str(tmp_path / "g")], capsys, monkeypatch)
    assert code == 0
    assert "start the server with: llama-server -m BASE.gguf --lora" in err
    assert (tmp_path / "g" / ADAPTER_FILE).is_file()

    code, err = run_cli(["export", str(tmp_path), "--gguf", str(tmp_path / "h")], capsys, monkeypatch)
    assert code == 2
    assert err.strip().count("\n") == 0 and "has no reqcheck.json; pass a directory written by" in err
    assert "Traceback" not in err and not (tmp_path / "h").exists()


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_llama_server_serves_both_exports_and_finds_them_by_tag(
    served_smollm2: ServedPair, llama_engine: Path | None, tmp_path: Path
) -> None:
    pair = served_smollm2
    adapters = [pair.exports["alora"].adapter, pair.exports["lora"].adapter]
    with LlamaServer(pair.base, adapters, log=tmp_path / "server.log", binary=llama_engine) as server:
        listed = _get(f"{server.url}/lora-adapters")
    assert isinstance(listed, list) and len(listed) == 2
    tags = {ServedTag.parse(entry["task_name"]): entry for entry in listed}
    alora = tags[ServedTag("alora", content_hash(pair.alora))]
    lora = tags[ServedTag("lora", content_hash(pair.lora))]
    assert alora["alora_invocation_tokens"] == Manifest.read(pair.alora).invocation_ids[1:]
    assert "alora_invocation_tokens" not in lora


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


@pytest.mark.slow
def test_served_alora_scores_as_peft_does_in_process(
    served_smollm2: ServedPair, llama_engine: Path | None, tmp_path: Path
) -> None:
    """The exported invocation makes llama.cpp start the adapter where PEFT did in training, on both llama.cpp
    versions (the prebuilt engine's and a stock llama-server's)."""
    from reqcheck.checking.adapters import CustomIntrinsicAdapter
    from reqcheck.checking.backend import LocalHFBackend
    from reqcheck.formats.data import load_examples
    from reqcheck.formats.prompting import render

    pair = served_smollm2
    backend = LocalHFBackend(Manifest.read(pair.alora).base_model.spec, device="cpu")
    adapter = backend.add_adapter(CustomIntrinsicAdapter(model_id=str(pair.alora), intrinsic_name="polite"))
    items = [example.item for example in load_examples(pair.test_cases)[:6]]
    expected = backend.classify("polite", items)
    manifest = adapter.manifest
    rendered = [render(backend.tokenizer, item, manifest.prompt, manifest.requirement) for item in items]
    labels = manifest.label_set(backend.tokenizer)
    names = list(manifest.labels)
    engine = str(llama_engine or "the prebuilt engine")
    with LlamaServer(
        pair.base, [pair.exports["alora"].adapter], log=tmp_path / "server.log", binary=llama_engine
    ) as server:
        for item, want, prompt in zip(items, expected, rendered, strict=True):
            answer = _post(
                f"{server.url}/completion",
                {
                    "prompt": prompt.input_ids + labels.token_ids[0][: labels.lead],
                    "n_predict": 1,
                    "n_probs": 20,
                    "lora": [{"id": 0, "scale": 1.0}],
                },
            )
            top = {t["id"]: t["logprob"] for t in answer["completion_probabilities"][0]["top_logprobs"]}
            logits = np.array([top[labels.token_ids[i][labels.lead]] for i in range(len(names))])
            served = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            gap = np.abs(served - np.array([want[n] for n in names])).max()
            assert gap < 2e-3, (
                f"{engine} starts the aLoRA elsewhere than PEFT: |dp| {gap:.4f} on {item!r:.60}"
            )
