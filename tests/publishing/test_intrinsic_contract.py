"""Intrinsics that granite-common runs: its rewriter builds the request from the packaged io.yaml,
transformers + PEFT generate greedily with logprobs (granite-common's own helpers), its result processor
reads the output, and the score equals LocalHFBackend.check's.

granite-common would send `response_format` as a grammar constraint (xgrammar, a GPU-sized install); here
the raw output is validated against that schema instead.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
import yaml
from granite_common import IntrinsicsResultProcessor, IntrinsicsRewriter
from granite_common.util import chat_completion_request_to_transformers_inputs, generate_with_transformers
from peft import PeftModel
from peft.tuners.lora.variants import calculate_alora_offsets
from transformers import AutoModelForCausalLM, AutoTokenizer

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.requirements import ALoraRequirement, req
from reqcheck.errors import ReqcheckError
from reqcheck.formats.manifest import MANIFEST_NAME, Manifest
from reqcheck.formats.output import JSON_V1, OutputSpec, check_labels
from reqcheck.formats.prompting import (
    INTRINSIC_RENDERER,
    REQUIREMENT_INSTRUCTION,
    PromptSpec,
    generation_prompt,
    instruction_header,
    invocation_ids,
    render,
)
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train
from tests.helpers import FAST, PLEASE, run_cli
from tests.tiny import (
    TRIAGE,
    build_tiny_bpe_tokenizer,
    build_tiny_model,
    build_tiny_tokenizer,
    marker_task,
    triage_task,
    write_jsonl,
)

TRIAGE_REQUIREMENT = "The note names the failure mode."
ITEMS = [
    "the reply please was late",
    "your order was shipped today",
    "please check the disk error log",
    "the network timeout is fixed now",
    "sorry we will update the ticket tomorrow",
]


@pytest.fixture(scope="module")
def bpe_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("bpe-model"), tokenizer=build_tiny_bpe_tokenizer())


@pytest.fixture(scope="module")
def checkers(bpe_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A binary aLoRA requirement check and a three-class LoRA classifier, trained with the defaults, and
    a binary aLoRA that starts at the instruction turn's header (--alora-span instruction)."""
    data, out = tmp_path_factory.mktemp("contract-data"), tmp_path_factory.mktemp("checkers")
    binary = write_jsonl(data / "binary.jsonl", marker_task(240, seed=1))
    triage = write_jsonl(data / "triage.jsonl", triage_task(240, seed=2))
    runs = {
        "binary": TrainConfig(binary, str(bpe_model_dir), out / "binary", requirement=PLEASE, **FAST),
        "instruction": TrainConfig(
            binary,
            str(bpe_model_dir),
            out / "instruction",
            requirement=PLEASE,
            alora_span="instruction",
            **FAST,
        ),
        "triage": TrainConfig(
            triage, str(bpe_model_dir), out / "triage", adapter="lora", requirement=TRIAGE_REQUIREMENT, **FAST
        ),
    }
    return {name: train(config, report=lambda _: None).outfile for name, config in runs.items()}


def package(adapter: Path, name: str, out: Path, capsys, monkeypatch, *extra: str) -> tuple[int, str]:
    return run_cli(
        ["package", str(adapter), "--name", f"acme/{name}", "--out", str(out), *extra], capsys, monkeypatch
    )


def packaged_dir(out: Path) -> Path:
    """The one `<intrinsic>/<base_model>/<alora|lora>/` folder of a package."""
    (io_yaml,) = out.rglob("io.yaml")
    return io_yaml.parent


class GraniteCommon:
    """granite-common's path for one packaged adapter: rewrite, generate with PEFT, process."""

    def __init__(self, adapter_dir: Path, base_dir: Path, io_yaml: Path | None = None) -> None:
        self.io_yaml = io_yaml or adapter_dir / "io.yaml"
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        self.model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()

    def request(self, messages: list[dict[str, str]], **kwargs: str) -> tuple[Any, dict, dict | None]:
        """(rewritten request, its body without the grammar constraint, the constraint's JSON schema)."""
        rewritten = IntrinsicsRewriter(config_file=self.io_yaml).transform({"messages": messages}, **kwargs)
        body = rewritten.model_dump()
        constraint = (body.get("extra_body") or {}).pop("structured_outputs", None)
        return rewritten, body, constraint and constraint["json"]

    def prompt_ids(self, messages: list[dict[str, str]], **kwargs: str) -> list[int]:
        _, body, _ = self.request(messages, **kwargs)
        generate_input, _ = chat_completion_request_to_transformers_inputs(body, self.tokenizer, self.model)
        return generate_input["input_tokens"][0].tolist()

    def run(self, messages: list[dict[str, str]], **kwargs: str) -> tuple[dict, dict]:
        """(raw output, processed output) as JSON."""
        rewritten, body, schema = self.request(messages, **kwargs)
        generate_input, other = chat_completion_request_to_transformers_inputs(
            body, self.tokenizer, self.model
        )
        response = generate_with_transformers(self.tokenizer, self.model, generate_input, other)
        raw = json.loads(response.choices[0].message.content)
        jsonschema.validate(raw, schema)
        processed = IntrinsicsResultProcessor(config_file=self.io_yaml).transform(response, rewritten)
        return raw, json.loads(processed.choices[0].message.content)


def as_messages(item: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": item}]


def written_before_alora_span(adapter: Path, tmp_path: Path) -> Path:
    """A copy of a generation-span adapter whose manifest lacks `alora_span`, as manifests written before it."""
    copy = Path(shutil.copytree(adapter, tmp_path / "before-span"))
    data = json.loads((copy / MANIFEST_NAME).read_text())
    del data["hyperparameters"]["alora_span"]
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("span", ["instruction", "generation"])
def test_binary_check_through_granite_common_equals_reqcheck(
    checkers, bpe_model_dir: Path, tmp_path: Path, capsys, monkeypatch, span: str
) -> None:
    """Both activated spans: the packaged `alora_invocation_tokens` are where reqcheck starts the adapter."""
    adapter = checkers["instruction"] if span == "instruction" else checkers["binary"]
    if span == "generation":
        adapter = written_before_alora_span(adapter, tmp_path)
    invocation = Manifest.read(adapter).prompt.invocation
    tokenizer = build_tiny_bpe_tokenizer()
    assert invocation == (instruction_header if span == "instruction" else generation_prompt)(tokenizer)
    code, err = package(adapter, "please", tmp_path / "pkg", capsys, monkeypatch)
    assert code == 0, err
    folder = packaged_dir(tmp_path / "pkg")
    assert folder.parent.name in err and "base_model_name" in err
    packaged_tokens = json.loads((folder / "adapter_config.json").read_text())["alora_invocation_tokens"]
    assert packaged_tokens == invocation_ids(tokenizer, invocation)
    granite = GraniteCommon(folder, bpe_model_dir)
    backend = LocalHFBackend(str(bpe_model_dir), device="cpu")
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(tmp_path / "pkg"), intrinsic_name="please"))
    requirement = ALoraRequirement(PLEASE, intrinsic_name="please")
    for item in ITEMS:
        raw, processed = granite.run(as_messages(item), requirement=PLEASE)
        ours = backend.check(requirement, item)
        assert raw == {"score": ours.label}
        assert abs(processed["requirement_check"]["score"] - ours.score) < 1e-3


@pytest.mark.slow
def test_classifier_through_granite_common_equals_reqcheck(
    checkers, bpe_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The generated io.yaml gives the label; a user's io.yaml with a likelihood step gives one mode's probability."""
    assert package(checkers["triage"], "triage", tmp_path / "pkg", capsys, monkeypatch)[0] == 0
    folder = packaged_dir(tmp_path / "pkg")
    config = yaml.safe_load((folder / "io.yaml").read_text())
    assert config["transformations"] is None
    assert json.loads(config["response_format"])["properties"]["label"]["enum"] == sorted(TRIAGE.values())
    values = {label: float(label == "disk_full") for label in sorted(TRIAGE.values())}
    config["transformations"] = [
        {"type": "likelihood", "input_path": ["label"], "categories_to_values": values}
    ]
    user_yaml = tmp_path / "disk.io.yaml"
    user_yaml.write_text(yaml.safe_dump(config))
    assert (
        package(
            checkers["triage"], "disk", tmp_path / "disk", capsys, monkeypatch, "--io-yaml", str(user_yaml)
        )[0]
        == 0
    )

    labels_path = GraniteCommon(folder, bpe_model_dir)
    disk_path = GraniteCommon(packaged_dir(tmp_path / "disk"), bpe_model_dir)
    backend = LocalHFBackend(str(bpe_model_dir), device="cpu")
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(tmp_path / "pkg"), intrinsic_name="triage"))
    backend.add_adapter(
        CustomIntrinsicAdapter(
            model_id=str(tmp_path / "disk"), intrinsic_name="disk", positive_labels=["disk_full"]
        )
    )
    for row in triage_task(6, seed=5):
        probabilities = backend.classify("triage", [row["item"]])[0]
        raw, processed = labels_path.run(as_messages(row["item"]))
        assert processed == raw == {"label": max(probabilities, key=probabilities.__getitem__)}
        _, disk = disk_path.run(as_messages(row["item"]))
        ours = backend.check(ALoraRequirement(TRIAGE_REQUIREMENT, intrinsic_name="disk"), row["item"])
        assert abs(disk["label"] - ours.score) < 1e-3
        assert abs(ours.score - probabilities["disk_full"]) < 1e-6


@pytest.mark.slow
def test_reqcheck_prompt_is_the_one_granite_common_builds(
    checkers, bpe_model_dir: Path, tmp_path: Path
) -> None:
    """Same token ids for a plain text and for a conversation whose earlier turns hold the invocation too;
    PEFT starts an instruction-span aLoRA (the instruction turn's header) where reqcheck does."""
    granite = GraniteCommon(checkers["instruction"], bpe_model_dir, io_yaml=tmp_path / "io.yaml")
    (tmp_path / "io.yaml").write_text(
        yaml.safe_dump(
            {
                "model": None,
                "response_format": None,
                "transformations": None,
                "instruction": REQUIREMENT_INSTRUCTION,
            }
        )
    )
    spec = PromptSpec(
        instruction_header(granite.tokenizer), INTRINSIC_RENDERER, True, instruction=REQUIREMENT_INSTRUCTION
    )
    before = dataclasses.replace(spec, invocation=generation_prompt(granite.tokenizer))
    conversation = [
        {"role": "user", "content": "where is my order"},
        {"role": "assistant", "content": "the order was shipped today"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "you are welcome please check the box"},
    ]
    for context in (ITEMS[0], conversation):
        messages = as_messages(context) if isinstance(context, str) else conversation
        ids = granite.prompt_ids(messages, requirement=PLEASE)
        rendered = render(granite.tokenizer, context, spec, PLEASE)
        assert rendered.input_ids == render(granite.tokenizer, context, before, PLEASE).input_ids == ids
        (offset,) = calculate_alora_offsets(granite.model.peft_config, "default", torch.tensor([ids]))
        assert offset == len(ids) - rendered.invocation_start
        assert rendered.invocation_start == rendered.context_len  # the instruction turn, not an earlier one
        assert PLEASE in granite.tokenizer.decode(ids[rendered.invocation_start :])
    # --item-role user --system-prompt: the same prompt as granite-common builds for those messages
    framed = dataclasses.replace(spec, item_role="user", system_prompt="You check replies.")
    messages = [{"role": "system", "content": "You check replies."}, {"role": "user", "content": ITEMS[1]}]
    assert render(granite.tokenizer, ITEMS[1], framed, PLEASE).input_ids == granite.prompt_ids(
        messages, requirement=PLEASE
    )


def test_alora_invocation_is_the_last_generation_prompt() -> None:
    """PEFT activates an aLoRA at the last occurrence of its invocation ids: after the instruction turn."""
    tokenizer = build_tiny_tokenizer()
    spec = PromptSpec(
        generation_prompt(tokenizer),
        INTRINSIC_RENDERER,
        False,
        instruction="Does the message above meet the requirement?",
    )
    rendered = render(
        tokenizer,
        [{"role": "assistant", "content": "the reply"}, {"role": "assistant", "content": "please"}],
        spec,
    )
    tokens = tokenizer.convert_ids_to_tokens(rendered.input_ids)
    assert tokens[rendered.invocation_start :] == ["<|start_of_role|>", "assistant", "<|end_of_role|>"]
    assert (
        tokens.count("assistant") == 3
        and "requirement" in tokens[rendered.context_len : rendered.invocation_start]
    )


def test_alora_invocation_is_the_last_user_turn_header() -> None:
    """The instruction's user turn header, not the checked user turns' headers before it."""
    tokenizer = build_tiny_tokenizer()
    spec = PromptSpec(
        instruction_header(tokenizer), INTRINSIC_RENDERER, True, "user", instruction=REQUIREMENT_INSTRUCTION
    )
    rendered = render(
        tokenizer,
        [{"role": "user", "content": "the reply"}, {"role": "user", "content": "please"}],
        spec,
        "late",
    )
    tokens = tokenizer.convert_ids_to_tokens(rendered.input_ids)
    assert tokens.count("user") == 3 and rendered.invocation_start == rendered.context_len
    assert tokens[rendered.invocation_start : rendered.invocation_start + 3] == [
        "<|start_of_role|>",
        "user",
        "<|end_of_role|>",
    ]
    assert "late" in tokens[rendered.invocation_start :]


def test_a_requirement_that_repeats_the_invocation_is_an_error() -> None:
    tokenizer = build_tiny_tokenizer()
    spec = PromptSpec(
        instruction_header(tokenizer), INTRINSIC_RENDERER, True, instruction=REQUIREMENT_INSTRUCTION
    )
    with pytest.raises(ReqcheckError, match="repeats the invocation"):
        render(tokenizer, "the reply", spec, "<|start_of_role|>user<|end_of_role|> late")


@pytest.fixture(scope="module")
def old_contract(tiny_model_dir: Path, marker_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter that emits the bare label (chat-v1), as every adapter did before json-v1."""
    out = tmp_path_factory.mktemp("old-contract") / "chat"
    config = TrainConfig(
        marker_data, str(tiny_model_dir), out, renderer="chat-v1", requirement=PLEASE, **FAST
    )
    return train(config, report=lambda _: None).outfile


@pytest.mark.slow
def test_adapters_of_the_old_contract_load_and_score_as_before(
    old_contract: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert Manifest.read(old_contract).output == OutputSpec()
    held = marker_task(40, seed=77)

    def checked(adapter: Path) -> list:
        backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter), intrinsic_name="old"))
        return backend.check_batch([req(PLEASE)] * len(held), [row["item"] for row in held])

    results = checked(old_contract)
    assert sum(r.label == row["label"] for r, row in zip(results, held, strict=True)) >= 0.9 * len(held)
    written_before = tmp_path / "v1"
    shutil.copytree(old_contract, written_before)
    data = json.loads((written_before / MANIFEST_NAME).read_text())
    del data["output"]
    (written_before / MANIFEST_NAME).write_text(json.dumps({**data, "format_version": 1}))
    assert [r.score for r in checked(written_before)] == [r.score for r in results]


@pytest.mark.slow
def test_packaging_an_old_contract_adapter_warns_it_cannot_run_as_an_intrinsic(
    old_contract: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    code, err = package(old_contract, "old", tmp_path / "pkg", capsys, monkeypatch)
    assert code == 0 and "bare label" in err and "--renderer intrinsic-v1" in err
    upload = ["upload", str(old_contract), "--name", "acme/old", "--intrinsic", "--no-gate", "--dry-run"]
    code, err = run_cli(upload, capsys, monkeypatch)
    assert code == 0 and "bare label" in err and "nothing was uploaded" in err


@pytest.mark.parametrize("output", [{"field": "score"}, "json-v1", {"format": "json-v1"}])
def test_a_manifest_output_contract_that_cannot_be_read_is_one_sentence(output) -> None:
    with pytest.raises(ReqcheckError, match="output contract this reqcheck does not know"):
        OutputSpec.from_dict(output)


def edited_io_yaml(adapter: Path, tmp_path: Path, edit) -> Path:
    """The io.yaml reqcheck writes for `adapter`, changed by `edit(config)`, as a user's file."""
    from reqcheck.publishing.adapter import generate_io_yaml, read_adapter

    config = yaml.safe_load(generate_io_yaml(read_adapter(adapter)))
    edit(config)
    path = tmp_path / "user.io.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _schema_edit(change):
    def edit(config: dict) -> None:
        schema = json.loads(config["response_format"])
        change(schema)
        config["response_format"] = json.dumps(schema)

    return edit


BAD_FITS = {
    "label outside the enum": (
        _schema_edit(lambda s: s["properties"]["score"].update(enum=["no"])),
        "response_format enum of 'score' must list exactly the adapter's labels ['no', 'yes']; it lacks ['yes']",
    ),
    "no such property": (
        _schema_edit(lambda s: s.update(properties={"verdict": {"type": "string"}}, required=["verdict"])),
        "response_format has no property 'score'",
    ),
    "path that does not exist": (
        lambda c: c["transformations"][0].update(input_path=["verdict"]),
        "transformation 1 (likelihood): input_path ['verdict'] does not exist",
    ),
    "category that is no label": (
        lambda c: c["transformations"][0].update(categories_to_values={"yes": 1.0, "maybe": 0.0}),
        "categories_to_values must list exactly the adapter's labels",
    ),
    "likelihood of a number": (
        lambda c: c["transformations"].insert(1, dict(c["transformations"][0])),
        "transformation 2 (likelihood): input_path ['score'] holds <number>, not the label",
    ),
    "another instruction": (
        lambda c: c.update(instruction="Is it polite?"),
        "instruction differs from the one the adapter was trained with",
    ),
    "too few tokens": (
        lambda c: c["parameters"].update(max_completion_tokens=2),
        "parameters.max_completion_tokens 2 cannot hold",
    ),
}


@pytest.mark.parametrize("case", BAD_FITS)
def test_io_yaml_that_cannot_read_the_adapter_is_refused_before_packaging(
    tiny_adapters, tmp_path: Path, capsys, monkeypatch, case: str
) -> None:
    edit, message = BAD_FITS[case]
    adapter = tiny_adapters["alora"].outfile
    user_yaml = edited_io_yaml(adapter, tmp_path, edit)
    code, err = package(adapter, "bad", tmp_path / "out", capsys, monkeypatch, "--io-yaml", str(user_yaml))
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_packaged_config_names_the_base_model_not_a_local_path(
    tiny_adapters, tiny_model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    trained = json.loads((tiny_adapters["lora"].outfile / "adapter_config.json").read_text())
    assert trained["base_model_name_or_path"] == tiny_model_dir.name
    adapter = Path(shutil.copytree(tiny_adapters["lora"].outfile, tmp_path / "old-adapter"))
    config_path = adapter / "adapter_config.json"
    config_path.write_text(json.dumps({**trained, "base_model_name_or_path": str(tiny_model_dir)}))
    before = config_path.read_bytes()
    code, err = package(adapter, "portable", tmp_path / "pkg", capsys, monkeypatch)
    assert code == 0, err
    folder = packaged_dir(tmp_path / "pkg")
    assert folder.parent.name == tiny_model_dir.name
    packaged = json.loads((folder / "adapter_config.json").read_text())
    assert packaged == {**trained, "base_model_name_or_path": tiny_model_dir.name}
    assert config_path.read_bytes() == before


def test_labels_granite_common_cannot_tell_apart_are_refused() -> None:
    tokenizer = build_tiny_bpe_tokenizer()
    spec = OutputSpec(JSON_V1, "label")
    with pytest.raises(
        ReqcheckError, match="starts with the token 'yes', which granite-common credits to label 'yes'"
    ):
        check_labels(spec, tokenizer, spec.label_set(tokenizer, ["yes", "yes_strong"]))
    with pytest.raises(ReqcheckError, match="cannot be a JSON value"):
        check_labels(spec, tokenizer, spec.label_set(tokenizer, ['say "no"', "yes"]))
    check_labels(spec, tokenizer, spec.label_set(tokenizer, sorted(TRIAGE.values())))


def test_an_invocation_granite_common_never_sends_is_an_error() -> None:
    tokenizer = build_tiny_tokenizer()
    spec = PromptSpec(
        "<|start_of_role|>check_requirement<|end_of_role|>", INTRINSIC_RENDERER, False, instruction="Does it?"
    )
    with pytest.raises(ReqcheckError, match="do not follow the checked text"):
        render(tokenizer, "the reply please", spec)
