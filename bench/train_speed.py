"""Benchmark aLoRA training: full-sequence (`--prefix-cache off`) against the default, side by side.

Each variant trains the same data with the same seed in its own process, so its peak RSS is its own.
A variant is a `--prefix-cache` mode, optionally with `/batchwise`: the trainer as it was before its
steps were fused (one forward per `--batch-size` batch, and the output projection over a strided slice
of the hidden states), to measure what fusing gains.
Prints one JSON object: per variant tokens/s, wall time, peak RSS and final validation loss, and the
ratios that matter (the speed-up, the validation loss within 2%, peak RSS).

    python bench/train_speed.py [--join 2] [--batch-size 8] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE_DATA = Path(__file__).resolve().parent.parent / "examples" / "support-polite" / "train.jsonl"


def dataset(limit: int | None, join: int, directory: Path) -> tuple[Path, str]:
    """The benchmark's data file and where it came from.

    `join` > 1 joins that many consecutive replies of the same label into one item, for items of about
    `join` times the length (about 120 tokens with `--join 2`).
    """
    rows = [json.loads(line) for line in EXAMPLE_DATA.read_text().splitlines() if line.strip()]
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    items = []
    for label, group in sorted(by_label.items()):
        for start in range(0, len(group) - join + 1, join):
            items.append({"item": " ".join(r["item"] for r in group[start : start + join]), "label": label})
    random.Random(0).shuffle(items)
    items = items[:limit]
    path = directory / "train.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path, f"examples/support-polite/train.jsonl, {join} replies per item, {len(items)} items"


def run_variant(args: argparse.Namespace, data: Path, out: Path) -> dict:
    """Train once in this process and return its measurements."""
    from reqcheck.models import loading
    from reqcheck.training import steps
    from reqcheck.training.config import TrainConfig
    from reqcheck.training.loop import train

    mode, _, batchwise = args.child.partition("/")
    if batchwise:
        size = args.batch_size
        loading._contiguous_input = lambda module, inputs: None
        steps.forward_groups = lambda examples, budget, width: [
            examples[i : i + size] for i in range(0, len(examples), size)
        ]

    config = TrainConfig(
        datafile=data,
        basemodel=args.basemodel,
        outfile=out,
        device=args.device,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        prefix_cache=mode,
    )
    result = train(config, report=lambda _: None)
    history = result.manifest.metrics.history
    return {
        "prefix_cache": result.manifest.hyperparameters["prefix_cache"],
        "tokens_per_s": round(result.tokens_per_second, 1),
        "wall_s": round(result.seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "final_val_loss": round(history[-1]["val_loss"], 4),
        "final_val_accuracy": round(history[-1]["val_accuracy"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N items.")
    parser.add_argument("--join", type=int, default=1, help="Replies joined into one item (2: ~120 tokens).")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--basemodel", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument(
        "--variants",
        default="off,auto",
        help="Comma-separated --prefix-cache modes, each optionally /batchwise.",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_variant(args, args.data, Path(tmp) / "adapter")))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data, described = dataset(args.limit, args.join, Path(tmp))
        results = {}
        for variant in args.variants.split(","):
            child = [sys.executable, __file__, *sys.argv[1:], "--child", variant, "--data", str(data)]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    report = {
        "command": " ".join(["python", "bench/train_speed.py", *sys.argv[1:]]),
        "data": described,
        "settings": {
            k: getattr(args, k)
            for k in ("basemodel", "device", "epochs", "learning_rate", "batch_size", "grad_accum")
        },
        "variants": results,
    }
    if {"off", "auto"} <= set(results):
        off, auto = results["off"], results["auto"]
        report["speedup_wall"] = round(off["wall_s"] / auto["wall_s"], 2)
        report["speedup_tokens_per_s"] = round(auto["tokens_per_s"] / off["tokens_per_s"], 2)
        report["val_loss_rel_diff"] = round(abs(auto["final_val_loss"] / off["final_val_loss"] - 1), 4)
        report["peak_rss_ratio"] = round(auto["peak_rss_mb"] / off["peak_rss_mb"], 2)
    for variant in results:
        mode, _, batchwise = variant.partition("/")
        if batchwise and mode in results:
            report[f"fused_speedup_wall_{mode}"] = round(
                results[variant]["wall_s"] / results[mode]["wall_s"], 2
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
