"""Preparing a run: everything known before training starts, each problem raised before the first step.

`prepare` reads, checks and splits the data, resolves the base model, encodes every example with the
shared renderer and finds the checkpoint to resume from, all without loading model weights; then
`build_model` attaches a fresh adapter, `prefix_caches` sets up aLoRA's base-model prefix caches, and
`make_objective` says what a step minimises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from reqcheck.errors import ReqcheckError
from reqcheck.formats import data as data_mod
from reqcheck.formats.data import Example
from reqcheck.formats.manifest import default_positive_labels
from reqcheck.formats.output import check_labels, contract
from reqcheck.formats.prompting import PromptSpec, invocation_ids
from reqcheck.models.loading import (
    load_model,
    load_tokenizer,
    quiet_peft_wrap,
    resolve_base_model,
    training_dtype,
)
from reqcheck.training import prefix_cache as prefix_mod
from reqcheck.training.checkpoint import Checkpoint, partial_dir
from reqcheck.training.config import AdapterType, Loss, TrainConfig, flag_name
from reqcheck.training.encoding import Objective, encode
from reqcheck.training.progress import Reporter
from reqcheck.training.run import Prepared, Run


def prepare(config: TrainConfig, report: Reporter, device: str) -> Prepared:
    """Data, split, base model, tokens and run identity: all the checks that need no model weights."""
    invocation = read_promptfile(config.promptfile) if config.promptfile else None
    check_recordable(config, invocation)
    examples, train_examples, val_examples = load_training_data(config)
    fingerprint = data_mod.fingerprint(examples)
    ref = resolve_base_model(config.basemodel)
    report(
        f"base model {ref.name} on {device}; {len(train_examples)} train / {len(val_examples)} val examples"
    )
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(ref)
    if config.requirement_in_prompt:
        examples, train_examples, val_examples = (
            [dataclasses.replace(e, requirement=e.requirement or config.requirement) for e in part]
            for part in (examples, train_examples, val_examples)
        )
    names = sorted(data_mod.label_counts(examples))
    framing = PromptSpec(
        invocation="",
        requirement_in_prompt=any(e.requirement for e in examples),
        item_role=config.item_role.value,
        system_prompt=config.system_prompt,
    )
    positives = config.positive_labels or default_positive_labels(names)
    spec, output = contract(
        tokenizer, config.renderer.value, invocation, positives, framing, config.alora_span.value
    )
    labels = output.label_set(tokenizer, names)
    check_labels(output, tokenizer, labels)
    prep = Prepared(
        examples,
        train_examples,
        val_examples,
        fingerprint,
        ref,
        tokenizer,
        spec,
        invocation_ids(tokenizer, spec.invocation),
        labels,
        output,
        positives,
        train_set=encode(train_examples, tokenizer, spec, labels, config.max_length),
        val_set=encode(val_examples, tokenizer, spec, labels, config.max_length),
    )
    prep.identity = run_identity(config, prep, invocation)
    if prep.truncated:
        report(
            f"{prep.truncated} example(s) longer than --max-length {config.max_length} were truncated "
            "from the start"
        )
    if config.resume:
        prep.saved = Checkpoint.read(partial_dir(config.outfile), prep.identity, device)
        if prep.saved is None:
            report(f"--resume: no interrupted run for {config.outfile}; starting from scratch")
    return prep


def read_promptfile(path: Path) -> str:
    """The invocation prompt from a Mellea-style promptfile `{"invocation_prompt": "..."}`."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReqcheckError(
            f"Promptfile {path} does not exist; pass a JSON file with 'invocation_prompt'."
        ) from None
    except OSError as exc:  # a directory, a path under a file, no permission
        raise ReqcheckError(
            f"Promptfile {path} cannot be read ({exc.strerror or type(exc).__name__}); pass a JSON file with "
            "'invocation_prompt'."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReqcheckError(
            f'Promptfile {path} is not valid JSON ({exc}); write {{"invocation_prompt": "..."}}.'
        ) from exc
    prompt = content.get("invocation_prompt") if isinstance(content, dict) else None
    if not isinstance(prompt, str) or not prompt:
        raise ReqcheckError(f"Promptfile {path} has no non-empty 'invocation_prompt' string; add one.")
    return prompt


def check_recordable(config: TrainConfig, invocation: str | None) -> None:
    """Refuse, before anything is read or converted, text the manifest records that UTF-8 cannot hold.

    A name byte that is not UTF-8 reaches Python as a surrogate escape, and so does a lone `\\ud800` in
    JSON; reqcheck.json is UTF-8, so writing it would fail after the last epoch (and again on --resume).
    """
    model = Path(config.basemodel).expanduser()
    rename, write = "rename it (and any folder above it) with UTF-8 names", "write it as UTF-8 text"
    named = [
        ("the data file's path", str(Path(config.datafile).resolve()), rename),
        ("the base model's path", config.basemodel, rename),
        ("the base model's path", str(model.resolve()) if model.exists() else None, rename),
        ("--requirement", config.requirement, write),
        ("--system-prompt", config.system_prompt, write),
        ("the promptfile's invocation_prompt", invocation, write),
    ]
    for what, text, fix in named:
        if text is not None and not data_mod.is_utf8(text):
            raise ReqcheckError(
                f"{what} {ascii(text)} is not UTF-8 text, so the adapter's manifest cannot record it; {fix}."
            )


def load_training_data(config: TrainConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """All examples, then the stratified (train, val) split; every data problem is raised here."""
    examples = data_mod.load_examples(config.datafile)
    data_mod.check_label_spellings(examples)
    counts = data_mod.label_counts(examples)
    if len(counts) < 2:
        only = next(iter(counts))
        raise ReqcheckError(
            f"{config.datafile} has only one label ({only!r}); a checker needs examples of at least two labels."
        )
    unknown = [p for p in config.positive_labels if p not in counts]
    if unknown:
        raise ReqcheckError(
            f"--positive-label {unknown[0]!r} is not a label in the data; use one of {sorted(counts)}."
        )
    train, val = data_mod.stratified_split(examples, config.val_fraction, config.seed)
    if config.val_fraction > 0 and not val:
        raise ReqcheckError(
            f"{config.datafile} has {len(examples)} examples, too few for a validation split; add examples "
            "(at least two of one label) or pass --val-fraction 0."
        )
    return examples, train, val


def run_identity(config: TrainConfig, prep: Prepared, invocation: str | None) -> dict[str, str]:
    """Everything that shapes what is trained, each named as the user knows it, with its digest.

    A resumed run must match the interrupted one in every entry, so an adapter is never trained half on one
    prompt and half on another. The inputs come first, so a refusal names the one the user changed: the
    base model, every option that changes what is learned, the requirement when it is rendered, the
    positive labels (they choose the instruction), the promptfile's contents (not its path), the data.
    Then what they render to: the prompt, and the examples as token ids (a reqcheck that renders them
    otherwise cannot continue the run either).
    """
    flags = {flag_name(f): getattr(config, f.name) for f in fields(config) if f.metadata.get("learns")}
    parts = {
        "the base model": prep.ref.revision,
        "--adapter": config.adapter,
        "--renderer": config.renderer,
        **flags,
        "--requirement": config.requirement if config.requirement_in_prompt else None,
        "--positive-label": prep.positive_labels,
        "the promptfile's contents": invocation,
        "the data": prep.fingerprint,
        "the rendered prompt": [prep.spec.to_dict(), dataclasses.asdict(prep.output)],
        "the examples as rendered": [
            [e.prompt, e.invocation_start, e.label] for e in prep.train_set + prep.val_set
        ],
    }
    return {name: _digest(value) for name, value in parts.items()}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def build_model(run: Run) -> Any:
    """The base model with a fresh LoRA or aLoRA adapter on `--target-modules`."""
    from peft import LoraConfig, get_peft_model

    config, device = run.config, run.device
    base = load_model(run.prep.ref, device, training_dtype(device.split(":")[0]))
    alora = config.adapter == AdapterType.alora
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
        alora_invocation_tokens=run.prep.invocation_ids if alora else None,
    )
    try:
        with quiet_peft_wrap():
            return get_peft_model(base, lora_config)
    except ValueError as exc:
        raise ReqcheckError(
            f"Could not attach the adapter ({exc}); check --target-modules for this model."
        ) from exc


def prefix_caches(run: Run) -> tuple[str, prefix_mod.PrefixCache | None]:
    """The prefix-cache mode this run uses (reported, and recorded in the manifest) and its caches."""
    config = run.config
    alora = config.adapter == AdapterType.alora
    if not alora or config.prefix_cache == "off":
        return "off", None
    encoded = run.prep.train_set + run.prep.val_set
    needed_mb = (
        sum(e.invocation_start for e in encoded) * prefix_mod.kv_bytes_per_token(run.model) / prefix_mod.MB
    )
    budget_mb = config.prefix_cache_budget_mb
    if budget_mb is None:
        budget_mb = prefix_mod.default_budget_mb(run.device)
    plain = prefix_mod.has_plain_kv_cache(run.model)
    mode = prefix_mod.resolve_mode(config.prefix_cache.value, alora, needed_mb, budget_mb, plain)
    run.report(f"prefix cache: {mode} (the caches need {needed_mb:.0f} MB; budget {budget_mb} MB)")
    if mode == "off":
        return mode, None
    return mode, prefix_mod.PrefixCache(run.model, run.pad_id, keep=mode == "memory")


def make_objective(run: Run) -> Objective:
    """The loss of --loss, with per-label weights (inverse frequency in the training split) under --balance."""
    config, prep, report = run.config, run.prep, run.report
    weights: tuple[float, ...] = ()
    if config.balance:
        counts = data_mod.label_counts(prep.train_examples)
        total = sum(counts.values())
        weights = tuple(total / (len(counts) * counts[name]) for name in prep.labels.names)
        report(
            "label weights: "
            + ", ".join(f"{n} {w:.2f}" for n, w in zip(prep.labels.names, weights, strict=True))
        )
    firsts = prep.labels.first_ids
    if config.loss != Loss.lm and len(set(firsts)) != len(firsts):
        raise ReqcheckError(
            f"--loss {config.loss} needs labels whose first tokens differ, and two of {prep.labels.names} "
            "share one; rename a label or use --loss lm."
        )
    return Objective(config.loss.value, firsts, weights, prep.labels.lead)
