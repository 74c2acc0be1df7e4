import pytest

from reqcheck.errors import ReqcheckError
from reqcheck.formats.prompting import (
    DEFAULT_INVOCATION,
    MELLEA_RENDERER,
    PromptSpec,
    default_invocation,
    find_subsequence,
    invocation_ids,
    label_ids,
    render,
    tokenize,
)
from tests.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def granite():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def chatml():
    return build_tiny_tokenizer(chatml=True)


def test_granite_tokens_give_the_granite_invocation(granite) -> None:
    assert default_invocation(granite) == DEFAULT_INVOCATION
    assert len(invocation_ids(granite, DEFAULT_INVOCATION)) == 3


def test_without_granite_tokens_the_invocation_is_a_chat_template_turn(chatml) -> None:
    invocation = default_invocation(chatml)
    assert invocation == "<|im_start|>check_requirement\n"
    rendered = render(chatml, "the reply was late", PromptSpec(invocation))
    tokens = chatml.convert_ids_to_tokens(rendered.input_ids)
    assert tokens[rendered.invocation_start :] == ["<|im_start|>", "check_requirement"]


def test_context_is_a_prefix_and_invocation_is_verbatim(granite) -> None:
    spec = PromptSpec(DEFAULT_INVOCATION, requirement_in_prompt=True)
    plain = render(granite, "the reply please", spec)
    with_req = render(granite, "the reply please", spec, requirement="polite")
    assert with_req.input_ids[: with_req.context_len] == plain.input_ids[: plain.context_len]
    inv = invocation_ids(granite, DEFAULT_INVOCATION)
    assert (
        find_subsequence(with_req.input_ids, inv) == with_req.invocation_start == len(with_req.input_ids) - 3
    )
    assert "polite" in granite.decode(with_req.input_ids[with_req.context_len : with_req.invocation_start])


def test_requirement_is_left_out_unless_the_adapter_was_trained_with_it(granite) -> None:
    spec = PromptSpec(DEFAULT_INVOCATION, requirement_in_prompt=False)
    assert render(granite, "the reply", spec, "polite") == render(granite, "the reply", spec)


def test_long_items_lose_their_start_and_keep_the_invocation(granite) -> None:
    spec = PromptSpec(DEFAULT_INVOCATION)
    item = " ".join(["the"] * 50 + ["please"])
    full = render(granite, item, spec)
    cut = render(granite, item, spec, max_length=20)
    assert len(cut.input_ids) == 20 and cut.truncated == len(full.input_ids) - 20
    assert cut.input_ids[-4:] == full.input_ids[-4:]
    assert granite.convert_ids_to_tokens(cut.input_ids[:3]) == [
        "<|start_of_role|>",
        "assistant",
        "<|end_of_role|>",
    ]
    with pytest.raises(ReqcheckError, match="too small"):
        render(granite, item, spec, max_length=4)


def test_unrepresentable_invocation_is_an_error(granite) -> None:
    with pytest.raises(ReqcheckError, match="cannot represent"):
        invocation_ids(granite, "zzz qqq")
    with pytest.raises(ReqcheckError, match="empty"):
        invocation_ids(granite, "")


def test_labels_end_with_the_end_of_text_token(granite) -> None:
    assert label_ids(granite, "yes") == [granite.convert_tokens_to_ids("yes"), granite.eos_token_id]


def test_mellea_rendering_is_one_string(granite) -> None:
    spec = PromptSpec(DEFAULT_INVOCATION, renderer=MELLEA_RENDERER)
    rendered = render(granite, "the reply", spec)
    assert granite.decode(rendered.input_ids).startswith("the reply")
    assert rendered.invocation_start == len(rendered.input_ids) - 3


def test_mellea_rendering_carries_the_requirement_only_when_trained_with_it(granite) -> None:
    """Fault 5: requirement_in_prompt holds for the Mellea format too; Mellea's own adapters keep its string."""
    mellea = PromptSpec(DEFAULT_INVOCATION, renderer=MELLEA_RENDERER)
    plain = render(granite, "the reply", mellea, requirement="polite")
    expected = tokenize(granite, f"the reply\nRequirement: <|end_of_text|>\n{DEFAULT_INVOCATION}")
    assert plain.input_ids == expected
    spec = PromptSpec(DEFAULT_INVOCATION, renderer=MELLEA_RENDERER, requirement_in_prompt=True)
    with_req = render(granite, "the reply", spec, requirement="polite")
    expected = tokenize(granite, f"the reply\nRequirement: polite<|end_of_text|>\n{DEFAULT_INVOCATION}")
    assert with_req.input_ids == expected
    assert with_req.invocation_start == len(expected) - 3


def test_too_small_max_length_names_the_flag_value(granite) -> None:
    """Fault 19: --max-length 8 used to say '6 is too small' (the value less the label's tokens)."""
    with pytest.raises(ReqcheckError, match=r"^--max-length 8 is too small .* and the label 2;"):
        render(granite, "the reply please", PromptSpec(DEFAULT_INVOCATION), max_length=8, reserve=2)


@pytest.mark.parametrize("context", [None, b"the reply", 3, [{"role": "user"}], [("user", "hi")]])
def test_a_context_that_is_not_text_or_messages_is_a_clear_error(granite, context) -> None:
    """Fault 19: check(req, None) or bytes raised TypeError."""
    with pytest.raises(ReqcheckError, match="pass the output as a str"):
        render(granite, context, PromptSpec(DEFAULT_INVOCATION))
