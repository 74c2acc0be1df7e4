"""Latency of one aLoRA requirement check on SmolLM2-135M as the context grows (JSON out).

Side by side in one run, for contexts of ~100, ~500 and ~1500 tokens: the check with the context's
KV cache reused (the context was seen before, e.g. just generated), the same check with
`use_caches=False`, the base-model judge with its prompt cached, and the judge on a context only the
adapter has checked (it reuses the adapter's context KV). Also the largest probability difference
between cached and uncached checks (adapter and judge), and the issue's targets as booleans.

    python bench/check_latency.py [--adapter DIR] [--repeats 7]

Without --adapter a small aLoRA adapter is trained once on examples/support-polite (1 epoch) and kept
under the reqcheck cache; latency does not depend on how well it is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.requirements import LLMaJRequirement, Requirement, ValidationResult, req
from reqcheck.formats.data import load_examples
from reqcheck.models.loading import cache_dir
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support-polite" / "train.jsonl"
REQUIREMENT = "The support reply is polite and professional."
MODEL = "smollm2-135m-instruct"


def bench_adapter() -> Path:
    out = cache_dir() / "bench" / "polite-alora-1epoch"
    if not (out / "reqcheck.json").exists():
        config = TrainConfig(DATA, MODEL, out, epochs=1, learning_rate=2e-4, batch_size=8, grad_accum=1,
                             device="cpu", requirement=REQUIREMENT)  # fmt: skip
        train(config, report=lambda _: None)
    return out


def context_of(tokens: int, backend: LocalHFBackend, items: list[str]) -> str:
    """Support replies joined until the text is about `tokens` tokens long."""
    text, index = "", 0
    while len(backend.tokenizer(text)["input_ids"]) < tokens:
        text += items[index % len(items)] + " "
        index += 1
    return text.strip()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def difference(a: ValidationResult, b: ValidationResult) -> float:
    return max(abs(p - b.probabilities[k]) for k, p in a.probabilities.items())


def judge_after_adapter(
    backend: LocalHFBackend,
    check: Requirement,
    judge: Requirement,
    context: str,
    items: list[str],
    repeats: int,
) -> float:
    """Median judge check on a context the adapter has just checked (a new context every time)."""
    times = []
    for index in range(repeats):
        fresh = f"{items[index % len(items)]} {context}"
        backend.check(check, fresh)
        start = time.perf_counter()
        backend.check(judge, fresh)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    adapter = args.adapter or bench_adapter()

    cached = LocalHFBackend(MODEL, device="cpu", use_caches=True)
    uncached = LocalHFBackend(MODEL, device="cpu", use_caches=False)
    for backend in (cached, uncached):
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(adapter), intrinsic_name="polite"))
    items = [e.item for e in load_examples(DATA)]
    check, judge = req(REQUIREMENT), LLMaJRequirement(REQUIREMENT)

    rows = []
    for target in (100, 500, 1500):
        context = context_of(target, cached, items)
        tokens = len(cached.tokenizer(context)["input_ids"])
        diffs = [difference(cached.check(r, context), uncached.check(r, context)) for r in (check, judge)]
        rows.append({
            "context_tokens": tokens,
            "reuse_s": median_seconds(lambda c=context: cached.check(check, c), args.repeats),
            "no_cache_s": median_seconds(lambda c=context: uncached.check(check, c), args.repeats),
            "judge_reuse_s": median_seconds(lambda c=context: cached.check(judge, c), args.repeats),
            "judge_after_adapter_s": judge_after_adapter(cached, check, judge, context, items, args.repeats),
            "max_abs_prob_diff": diffs[0],
            "judge_max_abs_prob_diff": diffs[1],
        })  # fmt: skip
    small, large = rows[0], rows[-1]
    diff = max(max(r["max_abs_prob_diff"], r["judge_max_abs_prob_diff"]) for r in rows)
    ratio, speedup = large["reuse_s"] / small["reuse_s"], large["no_cache_s"] / large["reuse_s"]
    print(json.dumps({
        "model": MODEL,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
        "rows": rows,
        "reuse_1500_over_100": ratio,
        "no_cache_over_reuse_at_1500": speedup,
        "max_abs_prob_diff": diff,
        "targets_met": {
            "reuse_at_1500_le_80ms": large["reuse_s"] <= 0.080,
            "ratio_le_1.5": ratio <= 1.5,
            "no_cache_ge_15x": speedup >= 15,
            "probabilities_agree_1e-5": diff <= 1e-5,
            "judge_at_1500_le_120ms": max(large["judge_reuse_s"], large["judge_after_adapter_s"]) <= 0.120,
        },
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
