"""LocalHFBackend: routing, KV reuse, loading forms and bad input, on the tiny model."""

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.requirements import (
    ALoraRequirement,
    LLMaJRequirement,
    Requirement,
    ValidationResult,
    check,
    req,
)
from reqcheck.checking.session import Session
from reqcheck.errors import ReqcheckError
from reqcheck.formats.data import Example, load_examples
from reqcheck.formats.prompting import tokenize
from reqcheck.training.config import TrainConfig
from reqcheck.training.encoding import encode
from reqcheck.training.loop import train
from tests.helpers import FAST, PLEASE
from tests.tiny import build_tiny_model, marker_task, write_jsonl

POSITIVE = "the reply please is late"
NEGATIVE = "the reply is late"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> list:
    return load_examples(
        write_jsonl(tmp_path_factory.mktemp("held") / "test.jsonl", marker_task(40, seed=77))
    )


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path, tiny_adapters) -> LocalHFBackend:
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    backend.add_adapter(
        CustomIntrinsicAdapter(model_id=str(tiny_adapters["alora"].outfile), intrinsic_name="please")
    )
    return backend


@pytest.fixture(scope="module")
def bare(tiny_model_dir: Path) -> LocalHFBackend:
    return LocalHFBackend(str(tiny_model_dir), device="cpu")


@pytest.fixture
def switch(backend: LocalHFBackend):
    yield backend
    backend.default_to_constraint_checking_alora = True


def accuracy(backend: LocalHFBackend, examples: list, requirement: Requirement) -> float:
    results = backend.check_batch([requirement] * len(examples), [e.item for e in examples])
    return sum((r.label == e.label) for r, e in zip(results, examples, strict=True)) / len(examples)


# routing matrix: switch on/off x requirement kind x adapter present/absent
ROUTES = [
    (True, "plain", True, "adapter:please", "trained for this requirement"),
    (True, "plain", False, "judge", "no adapter is registered"),
    (False, "plain", True, "judge", "default_to_constraint_checking_alora is False"),
    (False, "plain", False, "judge", "default_to_constraint_checking_alora is False"),
    (True, "alora", True, "adapter:please", "always uses its named adapter"),
    (False, "alora", True, "adapter:please", "always uses its named adapter"),
    (True, "llmaj", True, "judge", "LLMaJRequirement always uses"),
    (False, "llmaj", False, "judge", "LLMaJRequirement always uses"),
    (True, "function", True, "function", "validation_fn"),
    (False, "function", False, "function", "validation_fn"),
]


def make(kind: str) -> Requirement:
    return {
        "plain": req(PLEASE),
        "alora": ALoraRequirement(PLEASE, intrinsic_name="please"),
        "llmaj": LLMaJRequirement(PLEASE),
        "function": req(PLEASE, validation_fn=lambda text: "please" in text),
    }[kind]


@pytest.mark.parametrize(("on", "kind", "present", "via", "reason"), ROUTES)
def test_routing_matrix(switch, bare, on: bool, kind: str, present: bool, via: str, reason: str) -> None:
    target = switch if present else bare
    target.default_to_constraint_checking_alora = on
    result = target.check(make(kind), POSITIVE)
    assert result.via == via
    assert reason in result.reason
    assert isinstance(result, ValidationResult) and 0.0 <= result.score <= 1.0
    bare.default_to_constraint_checking_alora = True


@pytest.mark.parametrize("on", [True, False])
def test_alora_requirement_naming_a_missing_adapter_is_an_error(bare, on: bool) -> None:
    bare.default_to_constraint_checking_alora = on
    with pytest.raises(ReqcheckError, match="'please', which is not registered"):
        bare.check(ALoraRequirement(PLEASE, intrinsic_name="please"), POSITIVE)
    bare.default_to_constraint_checking_alora = True


def test_the_only_adapter_serves_any_requirement_and_text_match_picks_among_several(
    tiny_model_dir: Path, tiny_adapters
) -> None:
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    backend.add_adapter(
        CustomIntrinsicAdapter(model_id=str(tiny_adapters["alora"].outfile), intrinsic_name="a")
    )
    assert backend.check(req("Something else."), POSITIVE).reason == "'a' is the only registered adapter"
    backend.add_adapter(
        CustomIntrinsicAdapter(model_id=str(tiny_adapters["lora"].outfile), intrinsic_name="b")
    )
    assert backend.check(req("Something else."), POSITIVE).via == "judge"
    assert backend.check(req(PLEASE.lower()), POSITIVE).via == "adapter:a"


def test_adapter_checks_are_accurate_and_pass_or_fail(backend, held_out) -> None:
    assert accuracy(backend, held_out, req(PLEASE)) >= 0.9
    good, bad = backend.check(req(PLEASE), POSITIVE), backend.check(req(PLEASE), NEGATIVE)
    assert good and not bad
    assert good.label == "yes" and good.score == pytest.approx(good.probabilities["yes"])
    assert sum(good.probabilities.values()) == pytest.approx(1.0)
    assert good.as_intrinsic_output() == {"requirement_check": {"score": good.score}}


def test_cached_and_uncached_checks_agree(backend, tiny_model_dir: Path, tiny_adapters, held_out) -> None:
    uncached = LocalHFBackend(str(tiny_model_dir), device="cpu", use_caches=False)
    uncached.add_adapter(
        CustomIntrinsicAdapter(model_id=str(tiny_adapters["alora"].outfile), intrinsic_name="please")
    )
    items = [e.item for e in held_out[:12]]
    for requirement in (req(PLEASE), LLMaJRequirement(PLEASE)):
        cached = backend.check_batch([requirement] * len(items), items)
        plain = uncached.check_batch([requirement] * len(items), items)
        for a, b in zip(cached, plain, strict=True):
            assert abs(a.score - b.score) <= 1e-4


def test_batch_agrees_with_single(backend, held_out) -> None:
    items = [e.item for e in held_out[:10]]
    batch = backend.check_batch([req(PLEASE)] * len(items), items)
    single = [backend.check(req(PLEASE), item) for item in items]
    assert [round(r.score, 5) for r in batch] == [round(r.score, 5) for r in single]


def test_a_cached_context_costs_only_the_invocation(backend) -> None:
    seen: list[int] = []
    hook = backend.model.register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        backend.check(req(PLEASE), "we will help you today please")
        first = list(seen)
        seen.clear()
        backend.check(req(PLEASE), "we will help you today please")
    finally:
        hook.remove()
    assert max(first) > 7
    assert seen == [7]  # the three invocation tokens and the JSON lead; the context came from the cache


def test_lora_adapters_recompute_the_context(tiny_model_dir: Path, tiny_adapters, held_out) -> None:
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    backend.add_adapter(
        CustomIntrinsicAdapter(model_id=str(tiny_adapters["lora"].outfile), intrinsic_name="please")
    )
    assert accuracy(backend, held_out, req(PLEASE)) >= 0.9
    assert not backend._prefixes


def test_intrinsic_layout_directory_loads(
    tiny_model_dir: Path, tiny_adapters, tmp_path: Path, held_out
) -> None:
    target = tmp_path / "repo" / "please" / tiny_model_dir.name / "alora"
    shutil.copytree(tiny_adapters["alora"].outfile, target)
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    backend.add_adapter(CustomIntrinsicAdapter(model_id=str(tmp_path / "repo"), intrinsic_name="please"))
    assert accuracy(backend, held_out, ALoraRequirement(PLEASE, intrinsic_name="please")) >= 0.9


def test_hub_repo_loads_from_the_local_cache_offline(
    tiny_model_dir: Path, tiny_adapters, tmp_path: Path, held_out
) -> None:
    cache = tmp_path / "hf"
    repo = cache / "models--acme--please-checker"
    shutil.copytree(tiny_adapters["alora"].outfile, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    resolved = backend.add_adapter(
        CustomIntrinsicAdapter(model_id="acme/please-checker", cache_dir=str(cache))
    )
    assert resolved.name == "please-checker"
    assert accuracy(backend, held_out, req(PLEASE)) >= 0.9


def test_adapter_trained_by_mellea_loads_with_io_yaml(
    tiny_model_dir: Path, mellea_adapter: Path, held_out
) -> None:
    """A Mellea-style adapter: Mellea's prompt format, PEFT files only, labels from io.yaml."""
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    resolved = backend.add_adapter(
        CustomIntrinsicAdapter(model_id=str(mellea_adapter), intrinsic_name="mellea")
    )
    assert resolved.source == "mellea" and resolved.manifest.positive_labels == ["yes"]
    assert accuracy(backend, held_out, req(PLEASE)) >= 0.9
    # Fault 5, deliberate: Mellea trained `prompt + label` without special tokens, so its labels are
    # scored without the end-of-text token that reqcheck's own adapters learn after a label.
    tokenizer = backend.tokenizer
    assert resolved.manifest.label_token_ids == {label: tokenize(tokenizer, label) for label in ("yes", "no")}
    assert tokenizer.eos_token_id not in resolved.manifest.label_token_ids["yes"]


def test_bad_adapters_are_clear_errors(tiny_model_dir: Path, tiny_adapters, tmp_path: Path) -> None:
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_adapters["alora"].outfile, no_weights)
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(ReqcheckError, match="no adapter_model.safetensors"):
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(no_weights)))
    with pytest.raises(ReqcheckError, match="neither an existing directory nor a Hub repo id"):
        backend.add_adapter(CustomIntrinsicAdapter(model_id="not a repo"))
    with pytest.raises(ReqcheckError, match="is for base model other-model"):
        backend.add_adapter(
            CustomIntrinsicAdapter(
                model_id=str(tiny_adapters["alora"].outfile), base_model_name="other-model"
            )
        )
    mellea = tmp_path / "mellea"
    shutil.copytree(tiny_adapters["lora"].outfile, mellea)
    (mellea / "reqcheck.json").unlink()
    with pytest.raises(ReqcheckError, match="pass labels="):
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(mellea)))
    with pytest.raises(ReqcheckError, match="cannot represent the invocation"):
        backend.add_adapter(
            CustomIntrinsicAdapter(model_id=str(mellea), labels=["yes", "no"], invocation_prompt="zzz qqq")
        )
    assert backend.adapters == {}


def test_base_model_mismatch_is_a_clear_error(tiny_adapters, tmp_path: Path) -> None:
    other = LocalHFBackend(str(build_tiny_model(tmp_path / "other-model", seed=3)), device="cpu")
    with pytest.raises(ReqcheckError, match="was trained on tiny-model0 but the backend runs other-model"):
        other.add_adapter(CustomIntrinsicAdapter(model_id=str(tiny_adapters["alora"].outfile)))


def test_empty_context_is_a_clear_error(backend) -> None:
    with pytest.raises(ReqcheckError, match="context to check is empty"):
        backend.check(req(PLEASE), "   ")


def test_session_validates_and_repairs_until_the_requirements_hold(backend, monkeypatch) -> None:
    calls: list[str] = []
    prompts: list[list[dict]] = []
    generate = backend.generate

    def recording_generate(messages, max_new_tokens=200):
        prompts.append(list(messages))
        return generate(messages, max_new_tokens)

    def second_time_lucky(text: str) -> bool:
        calls.append(text)
        return len(calls) > 1

    monkeypatch.setattr(backend, "generate", recording_generate)
    requirements = [req("Is fine.", validation_fn=second_time_lucky), check("Secret.", validation_fn=bool)]
    result = Session(backend, max_new_tokens=4).instruct("the reply", requirements, loop_budget=3)
    assert result.attempts == 2 and len(calls) == 2 and result.passed
    assert "Is fine." in prompts[0][0]["content"] and "Secret." not in prompts[0][0]["content"]
    assert "does not meet these requirements:\n- Is fine." in prompts[1][-1]["content"]
    assert [r.via for r in result.results] == ["function", "function"]


def test_session_validate_goes_through_the_adapter(backend) -> None:
    validated = Session(backend).validate([req(PLEASE), check(PLEASE)], POSITIVE)
    assert [(r.passed, r.via) for r in validated] == [(True, "adapter:please")] * 2


def test_long_contexts_are_cut_at_inference_as_in_training(
    tiny_model_dir: Path, tiny_adapters, tmp_path: Path
) -> None:
    """Fault 5: training cuts items to --max-length from their start; inference now cuts them the same way."""
    adapter = Path(shutil.copytree(tiny_adapters["alora"].outfile, tmp_path / "short"))
    manifest = json.loads((adapter / "reqcheck.json").read_text())
    manifest["hyperparameters"]["max_length"] = 32  # as if trained with --max-length 32
    (adapter / "reqcheck.json").write_text(json.dumps(manifest))
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu", use_caches=False)
    resolved = backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter), intrinsic_name="short"))
    seen: list[list[int]] = []
    hook = backend.model.register_forward_pre_hook(
        lambda _module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    item = " ".join(["the"] * 60 + ["please"])
    try:
        result = backend.check(req(PLEASE), item)
    finally:
        hook.remove()
    spec, labels = resolved.manifest.prompt, resolved.manifest.label_set(backend.tokenizer)
    (trained,) = encode([Example(item, "yes")], backend.tokenizer, spec, labels, max_length=32)
    lead = labels.token_ids[0][: labels.lead]  # the JSON up to the label's value is scored as prompt
    assert seen[0] == trained.prompt + lead and trained.truncated > 0
    assert f"first {trained.truncated} tokens were dropped to fit the 32-token limit" in result.reason


def test_contexts_longer_than_the_model_are_cut_and_say_so(backend) -> None:
    """Fault 17: a context past the model's positions (512 here) gave a confident label without a word."""
    words = ["the"] * 700 + ["please"]
    result = backend.check(req(PLEASE), " ".join(words))
    dropped = int(re.search(r"first (\d+) tokens were dropped to fit the 512-token limit", result.reason)[1])
    kept = backend.check(req(PLEASE), " ".join(words[dropped:]))
    assert "dropped" not in kept.reason
    assert result.score == pytest.approx(kept.score, abs=1e-5)


def test_generate_keeps_no_conversation_cache(backend) -> None:
    """Fault 6: the conversation's KV was stored but never served a check (the output is checked bare)."""
    before = list(backend._prefixes)
    backend.generate([{"role": "user", "content": "the reply"}], max_new_tokens=4)
    assert list(backend._prefixes) == before


def test_loading_and_training_show_no_future_warning(
    tiny_model_dir: Path, tiny_adapters, marker_data: Path, tmp_path: Path
) -> None:
    """Fault 10: every run printed transformers' `is_gradient_checkpointing is deprecated`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = LocalHFBackend(str(tiny_model_dir), device="cpu")
        fresh.add_adapter(CustomIntrinsicAdapter(model_id=str(tiny_adapters["alora"].outfile)))
        train(
            TrainConfig(marker_data, str(tiny_model_dir), tmp_path / "a", **{**FAST, "epochs": 1}),
            report=lambda _: None,
        )
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_truncated_weights_are_one_clear_error(bare, tiny_adapters, tmp_path: Path) -> None:
    """Fault 16: a cut adapter_model.safetensors raised SafetensorError from deep inside PEFT."""
    cut = Path(shutil.copytree(tiny_adapters["alora"].outfile, tmp_path / "cut"))
    weights = cut / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(
        ReqcheckError, match=r"adapter_model.safetensors is damaged .*copy, download or train"
    ):
        bare.add_adapter(CustomIntrinsicAdapter(model_id=str(cut)))
    assert bare.adapters == {}


def test_bad_arguments_fail_at_once_with_one_sentence(backend, tmp_path: Path) -> None:
    """Fault 19: a missing model_id was accepted until add_adapter; None or bytes raised TypeError."""
    with pytest.raises(ReqcheckError, match="neither an existing directory nor a Hub repo id"):
        CustomIntrinsicAdapter(model_id=str(tmp_path / "missing"))
    for context in (None, b"the reply please"):
        with pytest.raises(ReqcheckError, match="pass the output as a str"):
            backend.check(req(PLEASE), context)
    with pytest.raises(ReqcheckError, match=r"wrap its text in req\('...'\)"):
        backend.check(PLEASE, POSITIVE)


@pytest.mark.parametrize("name", ["checker-v1.2", "my checker", "prüfer-ü"])
def test_an_adapter_named_anything_registers_and_checks(
    name: str, tiny_model_dir: Path, quick_adapter: Path, tmp_path: Path
) -> None:
    """The name PEFT sees is derived; the name a user registers (the folder's, or intrinsic_name) is kept."""
    shutil.copytree(quick_adapter, tmp_path / name)
    backend = LocalHFBackend(str(tiny_model_dir), device="cpu")
    first = backend.add_adapter(CustomIntrinsicAdapter(model_id=str(tmp_path / name)))
    second = backend.add_adapter(
        CustomIntrinsicAdapter(model_id=str(quick_adapter), intrinsic_name=f"{name}.2")
    )
    assert (first.name, second.name) == (name, f"{name}.2") and list(backend.adapters) == [name, f"{name}.2"]
    for registered in backend.adapters:
        [probabilities] = backend.classify(registered, [POSITIVE])
        assert sorted(probabilities) == ["no", "yes"]
        [result] = backend.check_batch([ALoraRequirement(PLEASE, intrinsic_name=registered)], [POSITIVE])
        assert result.via == f"adapter:{registered}"
