"""Every option of `reqcheck train`, declared once: its default, help text, choices and limits.

Each `TrainConfig` field is one option (TRL's way: a dataclass field with its help in `metadata`).
The CLI builds its flags from these fields, training reads them, and the manifest records the ones
that change what is learned. Adding an option is one field here. Values are checked on construction
(PEFT's way, `__post_init__`), so a bad value fails before any data or model is read. No torch
import: `reqcheck train --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from reqcheck.choices import AdapterType, Choice, Device
from reqcheck.errors import ReqcheckError
from reqcheck.formats.prompting import (
    CHAT_RENDERER,
    GENERATION_SPAN,
    INSTRUCTION_SPAN,
    INTRINSIC_RENDERER,
    MELLEA_RENDERER,
)


class Renderer(Choice):
    intrinsic = INTRINSIC_RENDERER
    chat = CHAT_RENDERER
    mellea = MELLEA_RENDERER


class AloraSpan(Choice):
    instruction = INSTRUCTION_SPAN
    generation = GENERATION_SPAN


class LRSchedule(Choice):
    linear = "linear"
    constant = "constant"
    cosine = "cosine"


class Loss(Choice):
    lm = "lm"
    label_set = "label-set"
    both = "lm+label-set"


class ItemRole(Choice):
    assistant = "assistant"
    user = "user"


class PrefixCacheMode(Choice):
    auto = "auto"
    memory = "memory"
    recompute = "recompute"
    off = "off"


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    argument: bool = False,
    learns: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
    unit: str = "",
    comma_separated: bool = False,
    free_text: bool = False,
    word: str | None = None,
) -> Any:
    """A `TrainConfig` field that is also a command-line option.

    help: the option's help text. flag: the option's name when it differs from the field's
    (`--positive-label` fills `positive_labels`). argument: positional on the command line.
    learns: changes what is learned, so it goes into the manifest's hyper-parameters and the resume key.
    at_least / above / below: limits checked on construction (`unit` is named in the message).
    comma_separated: a list given as one comma-separated value. free_text: a Choice typed as text on the
    command line (the config names the accepted values when one is wrong). word: a number option that
    also takes this one word (`--learning-rate auto`).
    A list default is copied for every config. Floats must be finite.
    """
    metadata = {
        "help": help,
        "flag": flag,
        "argument": argument,
        "learns": learns,
        "at_least": at_least,
        "above": above,
        "below": below,
        "unit": unit,
        "comma_separated": comma_separated,
        "free_text": free_text,
        "word": word,
    }
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(f: dataclasses.Field) -> str:
    """The command-line spelling of a field: `--learning-rate` for `learning_rate`."""
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


@dataclass
class TrainConfig:
    """The options of `reqcheck train`; defaults are those of Mellea's `m alora train`."""

    datafile: Path = option(help='JSONL file, one {"item": ..., "label": ...} per line.', argument=True)
    basemodel: str = option(help="Hub id, model directory, .gguf file, or smollm2-135m-instruct.")
    outfile: Path = option(help="Directory to write the adapter to.")
    adapter: AdapterType = option(AdapterType.alora, help="Adapter type.")
    device: Device = option(Device.auto, help="Device to train on.")
    epochs: int = option(6, help="Number of training epochs.", learns=True, at_least=1)
    learning_rate: float | str = option(
        6e-6,
        help="Learning rate, or auto: a short sweep on the validation split picks it.",
        learns=True,
        above=0.0,
        word="auto",
    )
    batch_size: int = option(2, help="Per-device batch size.", learns=True, at_least=1)
    max_length: int = option(
        1024, help="Maximum sequence length in tokens.", learns=True, at_least=8, unit=" tokens"
    )
    grad_accum: int = option(4, help="Gradient accumulation steps.", learns=True, at_least=1)
    promptfile: Path | None = option(
        None, help='JSON file {"invocation_prompt": "..."} overriding the invocation.'
    )
    requirement: str | None = option(
        None, help="The requirement the labels answer, e.g. 'The reply is polite.'"
    )
    positive_labels: list[str] = option(
        [], help="Label meaning 'requirement met' (repeatable; default: yes/pass/...).", flag="positive_label"
    )
    seed: int = option(
        42,
        help="Seed for the split, initialisation and shuffling.",
        learns=True,
        at_least=-(2**63),
        below=2**63,  # torch seeds with a 64-bit integer; each process adds its rank
    )
    val_fraction: float = option(
        0.2, help="Fraction of examples held out for validation.", learns=True, at_least=0.0, below=1.0
    )
    rank: int = option(32, help="LoRA rank.", learns=True, at_least=1)
    alpha: int = option(32, help="LoRA alpha.", learns=True, at_least=1)
    dropout: float = option(0.05, help="LoRA dropout.", learns=True, at_least=0.0, below=1.0)
    target_modules: list[str] = option(
        ["q_proj", "k_proj", "v_proj"],
        help="Comma-separated modules to adapt.",
        learns=True,
        comma_separated=True,
    )
    renderer: Renderer = option(
        Renderer.intrinsic,
        help="Prompt and output: intrinsic-v1 (granite-common's prompt, JSON output, runs in Mellea), "
        "chat-v1 (bare label), or mellea-v1 (Mellea's training format).",
        free_text=True,
    )
    alora_span: AloraSpan = option(
        AloraSpan.generation,
        help="intrinsic-v1: where the aLoRA starts: generation (the generation prompt) or instruction (the "
        "header of the instruction's turn, so the adapter reads the instruction and requirement). The "
        "prompt is the same; --promptfile overrides both.",
        learns=True,
        free_text=True,
    )
    resume: bool = option(False, help="Continue an interrupted run of the same command.")
    prefix_cache: PrefixCacheMode = option(
        PrefixCacheMode.auto,
        help="aLoRA: auto (keep item caches while they fit the budget), memory, recompute, or off "
        "(full-sequence training).",
        free_text=True,
    )
    prefix_cache_budget_mb: int | None = option(
        None, help="Memory for kept item caches (default: a quarter of free memory).", at_least=0
    )

    lr_schedule: LRSchedule = option(
        LRSchedule.linear,
        help="Learning-rate schedule: linear (5% warm-up, then linear decay), constant, or cosine.",
        learns=True,
        free_text=True,
    )
    loss: Loss = option(
        Loss.both,
        help="lm (label tokens over the whole vocabulary), label-set (the label against the other labels "
        "only), or lm+label-set.",
        learns=True,
        free_text=True,
    )
    balance: bool = option(False, help="Weight each example by its label's inverse frequency.", learns=True)
    item_role: ItemRole = option(
        ItemRole.assistant,
        help="Chat role the checked item is rendered as: assistant or user.",
        free_text=True,
        learns=True,
    )
    system_prompt: str | None = option(
        None, help="System prompt of every rendered example (default: the chat template's own).", learns=True
    )
    requirement_in_prompt: bool = option(
        False,
        help="Render --requirement into every example's prompt (training and inference alike).",
        learns=True,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))

    def check(self) -> None:
        """Check every value again (a field may have been set since) and the combinations that cannot run."""
        self.__post_init__()
        if self.adapter != AdapterType.alora and self.prefix_cache not in ("auto", "off"):
            raise ReqcheckError(
                f"--prefix-cache {self.prefix_cache} needs --adapter alora (a LoRA adapter changes the item "
                "too); use --prefix-cache auto or off."
            )
        if self.alora_span == AloraSpan.instruction:
            self._check_instruction_span()

    def _check_instruction_span(self) -> None:
        """Refuse `--alora-span instruction` where it changes nothing, rather than record it in the manifest."""
        if self.renderer != Renderer.intrinsic:
            raise ReqcheckError(
                f"--alora-span instruction needs --renderer intrinsic-v1 ({self.renderer} has no instruction "
                "turn to start at); drop --alora-span or use --renderer intrinsic-v1."
            )
        if self.promptfile is not None:
            raise ReqcheckError(
                "--alora-span instruction is overridden by --promptfile, whose invocation_prompt says where the "
                "aLoRA starts; drop one of them."
            )
        if self.adapter != AdapterType.alora:
            raise ReqcheckError(
                "--alora-span instruction applies to --adapter alora only (a LoRA adapter reads the whole "
                "prompt); drop --alora-span."
            )

    def hyperparameters(self) -> dict[str, Any]:
        """The options that change what is learned (the prefix cache only changes how fast)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("learns")}


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """`value` as field `f` holds it (a Choice member), or one sentence saying which limit it breaks."""
    if isinstance(f.default, Choice):
        return type(f.default).parse(value, flag_name(f))
    if value is None:
        return value
    name, meta = flag_name(f), f.metadata
    if meta["word"] is not None and isinstance(value, str):
        if value == meta["word"]:
            return value
        try:
            value = float(value)
        except ValueError:
            raise ReqcheckError(f"{name} must be a number or {meta['word']}, not {value!r}.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ReqcheckError(f"{name} must be a finite number, not {value}.")
    low, above, high = meta["at_least"], meta["above"], meta["below"]
    if high is not None and low is not None and not low <= value < high:
        raise ReqcheckError(f"{name} must be in [{_number(low)}, {_number(high)}), got {value}.")
    if high is not None and value >= high:
        raise ReqcheckError(f"{name} must be below {high}{meta['unit']}.")
    if above is not None and value <= above:
        more = "positive" if above == 0 else f"more than {above}{meta['unit']}"
        raise ReqcheckError(f"{name} must be {more}.")
    if low is not None and value < low:
        least = "zero or more" if low == 0 else f"at least {low}{meta['unit']}"
        raise ReqcheckError(f"{name} must be {least}.")
    return value


def _number(limit: float) -> str:
    """A limit as a message shows it: an integer in full, a float short (0.05, not 0.05000000000000000277)."""
    return str(limit) if isinstance(limit, int) else f"{limit:g}"
