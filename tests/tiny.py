"""A tiny random Llama with its own word-level tokenizer and a Granite-style chat template.

With initializer_range=0.2 a 2-layer, 64-wide model learns a one-marker-word task in a few epochs
(with the transformers default 0.02 its logits stay flat and it learns nothing).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SPECIALS = ["<unk>", "<pad>", "<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>"]
ROLES = ["system", "user", "assistant", "check_requirement"]
FILLER = (
    "the a reply order ticket your we you has was is will be shipped today tomorrow sorry thanks for "
    "waiting account refund team issue fixed closed opened late early soon now here there update check "
    "item box price store card help support agent note failure disk network timeout memory error log"
).split()
MARKER = "please"
LABEL_WORDS = ["yes", "no", "Yes", "No", "polite", "spam", "ham"]
# the words of reqcheck's judge questions and requirement turns, so the tiny model can be asked them too
PROMPT_WORDS = (
    "Requirement : Does message above meet requirement ? Answer or . Which one of these labels fits "
    "with label only , The says"
).split()
# the pieces of reqcheck's JSON output (`{"score": "yes"}`), as the whitespace pre-tokenizer splits them
JSON_WORDS = ['{"', '":', '"', '"}', "score", "label"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|start_of_role|>{{ message['role'] }}<|end_of_role|>"
    "{{ message['content'] }}<|end_of_text|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"
)


CHATML_SPECIALS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(chatml: bool = False):
    """A word-level tokenizer over the task's words: Granite role tokens by default, ChatML if asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = CHATML_SPECIALS if chatml else SPECIALS
    words = specials + ROLES + FILLER + [MARKER] + LABEL_WORDS + PROMPT_WORDS + JSON_WORDS
    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<|im_end|>" if chatml else "<|end_of_text|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE if chatml else CHAT_TEMPLATE
    return tokenizer


TRIAGE = {"disk": "disk_full", "network": "network_down", "timeout": "timeout"}


def build_tiny_bpe_tokenizer():
    """A byte-level BPE over the task's words with ChatML tokens, decoding text exactly as real models do.

    granite-common finds a JSON value's logprobs by the character offsets of the decoded tokens, which
    the word-level tokenizer (it decodes with spaces between all tokens) cannot give.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    words = ROLES + FILLER + [MARKER] + LABEL_WORDS + PROMPT_WORDS + list(TRIAGE.values())
    corpus = [" ".join(words), *(f'{{"{key}": "{word}"}}' for key in ("score", "label") for word in words)]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=CHATML_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(directory: Path, seed: int = 0, tokenizer=None) -> Path:
    """Write a tiny LlamaForCausalLM and its tokenizer (default: the word-level one) to `directory`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def marker_task(n: int, seed: int, positive: str = "yes", negative: str = "no") -> list[dict[str, str]]:
    """Items that carry a marker word are labelled `positive`: a task a tiny model can learn."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        words = rng.choices(FILLER, k=rng.randint(4, 10))
        has_marker = index % 2 == 0
        if has_marker:
            words.insert(rng.randrange(len(words) + 1), MARKER)
        rows.append({"item": " ".join(words), "label": positive if has_marker else negative})
    rng.shuffle(rows)
    return rows


def triage_task(n: int, seed: int) -> list[dict[str, str]]:
    """Items naming one of three failure words, labelled with its failure mode: a multi-class tiny task."""
    rng = random.Random(seed)
    markers = list(TRIAGE)
    rows = []
    for index in range(n):
        marker = markers[index % len(markers)]
        words = rng.choices([w for w in FILLER if w not in TRIAGE], k=rng.randint(4, 10))
        words.insert(rng.randrange(len(words) + 1), marker)
        rows.append({"item": " ".join(words), "label": TRIAGE[marker]})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
