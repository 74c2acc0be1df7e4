"""The one place that turns a context (+ requirement) and an invocation into token ids.

Training, inference, the judge and the pytest plugin all call `render`; the manifest stores the
renderer's name and the invocation so that inference reproduces training token for token.

Segments are tokenised separately and concatenated, so the invocation's token ids always appear
verbatim (aLoRA activates only where they do) and the context's ids are a prefix of the prompt, which
is what lets a base-model KV cache of the context be reused for every requirement checked on it.

`intrinsic-v1` renders the prompt granite-common (and so Mellea) builds from an intrinsic's io.yaml:
the conversation, the io.yaml `instruction` appended as a user message, then the model's generation
prompt, tokenised by the chat template in one piece as they do. Its aLoRA invocation is either the
instruction turn's header (`instruction_header`: the adapter reads the instruction, and the requirement
when it is rendered) or the generation prompt (`generation_prompt`: the default, and every adapter trained
before the choice existed): the manifest stores which, as the invocation text. Either is the last place its ids occur,
and the prompt granite-common builds is the same for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from reqcheck.errors import ReqcheckError

DEFAULT_INVOCATION = "<|start_of_role|>check_requirement<|end_of_role|>"
GRANITE_ROLE_TOKENS = ("<|start_of_role|>", "<|end_of_role|>")
CHECK_ROLE = "check_requirement"
CHAT_RENDERER = "chat-v1"
MELLEA_RENDERER = "mellea-v1"
INTRINSIC_RENDERER = "intrinsic-v1"
RENDERERS = (CHAT_RENDERER, MELLEA_RENDERER, INTRINSIC_RENDERER)
INSTRUCTION_SPAN = "instruction"
GENERATION_SPAN = "generation"
CHECK_INSTRUCTION = "Does the message above meet the requirement?"
REQUIREMENT_PREFIX = "Requirement: "  # how every prompt (adapter, judge, Mellea's) names the requirement
REQUIREMENT_INSTRUCTION = REQUIREMENT_PREFIX + "{requirement}\n" + CHECK_INSTRUCTION
CLASSIFY_INSTRUCTION = "Which label fits the message above?"
_SENTINEL = "\u2063REQCHECKSENTINEL\u2063"
_ANCHOR = [{"role": "assistant", "content": "ok"}]

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PromptSpec:
    """How prompts are rendered for one adapter; stored in its manifest."""

    invocation: str
    renderer: str = CHAT_RENDERER
    requirement_in_prompt: bool = False
    item_role: str = "assistant"
    system_prompt: str | None = None
    instruction: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.instruction is None:
            del data["instruction"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSpec:
        return cls(
            invocation=data["invocation"],
            renderer=data.get("renderer", CHAT_RENDERER),
            requirement_in_prompt=bool(data.get("requirement_in_prompt", False)),
            item_role=data.get("item_role", "assistant"),
            system_prompt=data.get("system_prompt"),
            instruction=data.get("instruction"),
        )


@dataclass(frozen=True)
class Rendered:
    """Token ids of one prompt, and where its parts start."""

    input_ids: list[int]
    context_len: int
    invocation_start: int
    truncated: int


def tokenize(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _chat(tokenizer: Any, messages: Messages) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # jinja raises arbitrary errors for roles a template does not know
        roles = ", ".join(sorted({m["role"] for m in messages}))
        raise ReqcheckError(
            f"The model's chat template cannot render roles ({roles}): {exc}; pass --promptfile with an "
            "explicit invocation_prompt."
        ) from exc


def _turn(tokenizer: Any, before: Messages, role: str, content: str) -> str:
    """The text one more turn adds after `before`, as the model's chat template writes it."""
    base = _chat(tokenizer, before)
    full = _chat(tokenizer, [*before, {"role": role, "content": content}])
    if not full.startswith(base):
        raise ReqcheckError(
            "The model's chat template does not render conversations incrementally; pass --promptfile "
            "with an explicit invocation_prompt."
        )
    return full[len(base) :]


def question_invocation(tokenizer: Any, question: str) -> str:
    """A user turn asking `question`, then the assistant's turn header: the base-model judge's invocation."""
    if not _has_chat_template(tokenizer):
        return f"{question}\nAnswer: "
    before = [*_ANCHOR, {"role": "user", "content": question}]
    asked = _turn(tokenizer, _ANCHOR, "user", question)
    prompted = tokenizer.apply_chat_template(before, tokenize=False, add_generation_prompt=True)
    return asked + prompted[len(_chat(tokenizer, before)) :]


def default_invocation(tokenizer: Any) -> str:
    """Granite's invocation when the tokenizer knows its role tokens, else a `check_requirement` turn.

    A turn written by the model's own chat template tokenises to stable ids (ChatML's `<|im_start|>`
    is one special token), so the invocation is found reliably in every prompt.
    """
    vocab = tokenizer.get_vocab()
    if all(token in vocab for token in GRANITE_ROLE_TOKENS) or not _has_chat_template(tokenizer):
        return DEFAULT_INVOCATION
    turn = _turn(tokenizer, _ANCHOR, CHECK_ROLE, _SENTINEL)
    return turn.split(_SENTINEL, 1)[0]


def generation_prompt(tokenizer: Any) -> str:
    """What the chat template appends to start the assistant's reply: intrinsic-v1's aLoRA invocation."""
    if not _has_chat_template(tokenizer):
        raise ReqcheckError(
            f"The {INTRINSIC_RENDERER} prompt is built by the model's chat template and this tokenizer has "
            f"none; train with --renderer {CHAT_RENDERER}."
        )
    asked = [{"role": "user", "content": _SENTINEL}]
    prompted = tokenizer.apply_chat_template(asked, tokenize=False, add_generation_prompt=True)
    plain = _chat(tokenizer, asked)
    if not prompted.startswith(plain) or prompted == plain:
        raise ReqcheckError(
            f"The model's chat template adds no generation prompt after the conversation; train with "
            f"--renderer {CHAT_RENDERER}."
        )
    return prompted[len(plain) :]


def instruction_header(tokenizer: Any) -> str:
    """What the chat template writes before a user turn's text: the invocation that covers the instruction.

    Under intrinsic-v1 the instruction is the conversation's last user turn, so its header is the last
    place these ids occur (`render` refuses an instruction that repeats them).
    """
    generation_prompt(tokenizer)  # the same chat-template requirements as the other span
    turn = _turn(tokenizer, _ANCHOR, "user", _SENTINEL)
    header = turn.split(_SENTINEL, 1)[0]
    if not header.strip():
        raise ReqcheckError(
            "The model's chat template writes no header before a user turn; train with --alora-span "
            "generation."
        )
    return header


def intrinsic_invocation(tokenizer: Any, span: str) -> str:
    """intrinsic-v1's aLoRA invocation for `span`: the instruction turn's header or the generation prompt."""
    return instruction_header(tokenizer) if span == INSTRUCTION_SPAN else generation_prompt(tokenizer)


def default_instruction(requirement_in_prompt: bool, classifier: bool) -> str:
    """The io.yaml `instruction`: a `{requirement}` slot when the adapter reads the requirement text."""
    if requirement_in_prompt:
        return REQUIREMENT_INSTRUCTION
    return CLASSIFY_INSTRUCTION if classifier else CHECK_INSTRUCTION


def instruction_text(spec: PromptSpec, requirement: str | None) -> str:
    """The instruction with its slot filled, as granite-common's rewriter fills it."""
    if spec.instruction is None:
        raise ReqcheckError(f"The {INTRINSIC_RENDERER} prompt has no instruction; retrain the adapter.")
    if spec.requirement_in_prompt and not requirement:
        raise ReqcheckError(
            "This adapter reads the requirement text from its prompt and none was given; pass the "
            "requirement (a `requirement` field on every line, or the requirement you check)."
        )
    return spec.instruction.format(requirement=requirement or "")


def invocation_ids(tokenizer: Any, invocation: str) -> list[int]:
    """Token ids of the invocation, or an error when the tokenizer cannot represent it."""
    if not invocation:
        raise ReqcheckError("The invocation prompt is empty; set a non-empty invocation_prompt.")
    ids = tokenize(tokenizer, invocation)
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (
        unk is not None and unk in ids and getattr(tokenizer, "unk_token", None) not in invocation
    ):
        raise ReqcheckError(
            f"The tokenizer cannot represent the invocation prompt {invocation!r} (it maps to unknown "
            "tokens); choose an invocation_prompt made of text or special tokens this model knows."
        )
    return ids


def label_ids(tokenizer: Any, label: str) -> list[int]:
    """A label's token ids followed by the end-of-text token, so the model learns where a label stops."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ReqcheckError(
            "The tokenizer has no end-of-text token; use a base model whose tokenizer sets one."
        )
    ids = tokenize(tokenizer, label)
    if not ids:
        raise ReqcheckError(f"Label {label!r} tokenises to nothing; use a non-empty label.")
    return [*ids, eos]


def find_subsequence(haystack: list[int], needle: list[int]) -> int:
    """Start of the last occurrence of `needle` in `haystack`, or -1 (as PEFT's aLoRA offset search)."""
    n = len(needle)
    for start in range(len(haystack) - n, -1, -1):
        if haystack[start : start + n] == needle:
            return start
    return -1


def _is_message(message: object) -> bool:
    return (
        isinstance(message, dict)
        and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str)
    )


def as_messages(context: object, spec: PromptSpec | None = None) -> Messages:
    """The context as messages: a text is checked as one turn (the adapter's item role, by default the
    assistant's), a conversation on its last turn; the adapter's system prompt goes first."""
    if isinstance(context, str):
        messages = [{"role": spec.item_role if spec else "assistant", "content": context}]
    elif isinstance(context, list) and all(_is_message(m) for m in context):
        messages = [dict(m) for m in context]
    else:
        raise ReqcheckError(
            f"The context to check is a {type(context).__name__}; pass the output as a str, or a "
            "conversation as a list of {'role': ..., 'content': ...} dicts."
        )
    if spec and spec.system_prompt is not None and messages and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": spec.system_prompt}, *messages]
    if not messages or not messages[-1]["content"].strip():
        raise ReqcheckError("The context to check is empty; pass the text or conversation to check.")
    return messages


def _chat_context(tokenizer: Any, messages: Messages) -> tuple[list[int], list[int], list[int]]:
    """(head, content, tail) ids of a conversation; `content` is the last message's text."""
    content = messages[-1]["content"]
    if not _has_chat_template(tokenizer):
        head = "".join(f"{m['content']}\n" for m in messages[:-1])
        return tokenize(tokenizer, head), tokenize(tokenizer, content), tokenize(tokenizer, "\n")
    framed = _chat(tokenizer, [*messages[:-1], {**messages[-1], "content": _SENTINEL}])
    head, tail = framed.split(_SENTINEL, 1)
    return tokenize(tokenizer, head), tokenize(tokenizer, content), tokenize(tokenizer, tail)


def requirement_text(requirement: str) -> str:
    """The requirement as a prompt states it: `Requirement: <text>` (a turn of its own, or Mellea's slot)."""
    return REQUIREMENT_PREFIX + requirement


def _requirement_ids(tokenizer: Any, messages: Messages, requirement: str) -> list[int]:
    text = requirement_text(requirement)
    if not _has_chat_template(tokenizer):
        return tokenize(tokenizer, text + "\n")
    return tokenize(tokenizer, _turn(tokenizer, messages, "user", text))


def render(
    tokenizer: Any,
    context: str | Messages,
    spec: PromptSpec,
    requirement: str | None = None,
    max_length: int | None = None,
    reserve: int = 0,
) -> Rendered:
    """Token ids for checking `context` (a text, or a conversation whose last turn is checked).

    `max_length` bounds the prompt plus the `reserve` tokens that follow it (the label); over-long
    contexts lose tokens from their start so the invocation (and the label after it) always survive.
    Training and inference pass the same bound, so a long item is cut the same way in both.
    """
    messages = as_messages(context, spec)
    inv = invocation_ids(tokenizer, spec.invocation)
    if spec.renderer == MELLEA_RENDERER:
        return _render_mellea(tokenizer, messages, spec, requirement, inv, max_length, reserve)
    if spec.renderer == INTRINSIC_RENDERER:
        instruction = instruction_text(spec, requirement)
        return _render_intrinsic(tokenizer, messages, instruction, inv, max_length, reserve)
    if spec.renderer != CHAT_RENDERER:
        raise ReqcheckError(f"Unknown prompt renderer {spec.renderer!r}; use one of {', '.join(RENDERERS)}.")
    head, content, tail = _chat_context(tokenizer, messages)
    suffix: list[int] = []
    if spec.requirement_in_prompt and requirement:
        suffix = _requirement_ids(tokenizer, messages, requirement)
    suffix += inv
    truncated = 0
    if max_length is not None:
        truncated = max(0, len(head) + len(content) + len(tail) + len(suffix) + reserve - max_length)
        if truncated and truncated >= len(content):
            _too_small(max_length, len(head) + len(tail) + len(suffix), reserve)
        content = content[truncated:]
    context_ids = head + content + tail
    ids = context_ids + suffix
    return Rendered(ids, len(context_ids), len(ids) - len(inv), truncated)


def _too_small(max_length: int, framing: int, reserve: int) -> None:
    raise ReqcheckError(
        f"--max-length {max_length} is too small to keep any of the item: the prompt's framing, requirement "
        f"and invocation take {framing} tokens and the label {reserve}; raise --max-length."
    )


def _render_mellea(
    tokenizer: Any,
    messages: Messages,
    spec: PromptSpec,
    requirement: str | None,
    inv: list[int],
    max_length: int | None,
    reserve: int,
) -> Rendered:
    """Mellea's `m alora train` rendering, tokenised as one string as Mellea does.

    Mellea leaves the `Requirement:` slot empty; an adapter trained by reqcheck on lines that carry a
    requirement (`requirement_in_prompt`) has it written there, in training and inference alike.
    """
    item = "\n".join(m["content"] for m in messages)
    shown = requirement if spec.requirement_in_prompt and requirement else ""
    ids = tokenize(tokenizer, f"{item}\n{requirement_text(shown)}<|end_of_text|>\n{spec.invocation}")
    start = find_subsequence(ids, inv)
    if start < 0:
        raise ReqcheckError(
            "The invocation's token ids do not appear in the Mellea-style prompt after tokenisation; the "
            "adapter would silently run as the base model; use an invocation that tokenises stably."
        )
    truncated = 0
    if max_length is not None and len(ids) + reserve > max_length:
        truncated = len(ids) + reserve - max_length
        if truncated >= start:
            _too_small(max_length, len(ids) - len(tokenize(tokenizer, item)), reserve)
        ids = ids[truncated:]
        start -= truncated
    return Rendered(ids, start, start, truncated)


def _chat_ids(tokenizer: Any, messages: Messages, generation: bool) -> list[int]:
    """Token ids exactly as `apply_chat_template(..., tokenize=True)` gives them to granite-common and Mellea."""
    try:
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation, return_dict=True
        )
    except Exception as exc:  # jinja raises arbitrary errors for conversations a template refuses
        raise ReqcheckError(
            f"The model's chat template cannot render this conversation ({exc}); check the context's roles."
        ) from exc
    return list(encoded["input_ids"])


def _render_intrinsic(
    tokenizer: Any, messages: Messages, instruction: str, inv: list[int], max_length: int | None, reserve: int
) -> Rendered:
    """The conversation, the instruction as a user turn and the generation prompt, in one tokenisation.

    Over-long contexts lose whole tokens from the start of the checked message until the prompt and the
    `reserve` tokens after it fit.
    """
    content = messages[-1]["content"]
    offsets: list[tuple[int, int]] = []  # the content's token offsets, tokenised only when it must be cut
    dropped = 0
    while True:
        kept = content[offsets[dropped][0] :] if dropped else content
        context = [*messages[:-1], {**messages[-1], "content": kept}]
        ids = _chat_ids(tokenizer, [*context, {"role": "user", "content": instruction}], generation=True)
        excess = len(ids) + reserve - max_length if max_length is not None else 0
        if excess <= 0:
            break
        if not offsets:
            offsets = tokenizer(content, add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
        dropped += excess
        if dropped >= len(offsets):
            _too_small(max_length, len(ids) - len(offsets) + dropped - excess, reserve)
    context_ids = _chat_ids(tokenizer, context, generation=False)
    context_len = next(
        (i for i, (a, b) in enumerate(zip(context_ids, ids, strict=False)) if a != b), len(context_ids)
    )
    start = find_subsequence(ids, inv)
    if start < context_len:
        raise ReqcheckError(
            "The invocation's token ids do not follow the checked text in the prompt granite-common builds, "
            "so the adapter would silently run as the base model; drop --promptfile (--alora-span "
            f"picks the invocation) or train with --renderer {CHAT_RENDERER}."
        )
    if start > context_len and ids[context_len : context_len + len(inv)] == inv:
        raise ReqcheckError(
            "The instruction or requirement repeats the invocation (the instruction turn's header), so the "
            "adapter would start inside it; remove that text from the requirement."
        )
    return Rendered(ids, context_len, start, dropped)
