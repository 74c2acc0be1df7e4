"""Ablation of reqcheck's training choices on real labelled data, one change at a time from a base.

Each variant trains on `<data>/<set>/train.jsonl` and is scored on the held-out `test.reqcheck.jsonl`
through `LocalHFBackend.classify` (see `quality.train_and_score`). Every finished run is appended to
`--out` as a JSON line; the summary (mean held-out accuracy per variant and set, and the mean gain over
`base`) is printed as JSON at the end, then as a Markdown table.

`--jobs N` trains N runs at once in separate processes (on one GPU, small models leave it mostly idle);
`--float32` trains and scores in float32 on a GPU too (CPU training is float32, CUDA's default here
bf16), so GPU accuracies differ from CPU ones only by float noise. `--deadline` (seconds) starts no run
after it, so a bounded machine still returns every finished row.

    python bench/ablation.py --rates 2e-4 --epochs 3 --batch-size 8 --grad-accum 1
    python bench/ablation.py --rates auto --seeds 0 1 2 --variants base span=instruction adapter=lora \
        --device cuda --float32 --jobs 12
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import data_arguments, train_and_score  # noqa: E402

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS: dict[str, dict] = {
    "base": {},
    "span=instruction": {"alora_span": "instruction"},
    "rank=64": {"rank": 64, "alpha": 64},
    "rank=128": {"rank": 128, "alpha": 128},
    "span=instruction rank=128": {"alora_span": "instruction", "rank": 128, "alpha": 128},
    "span=instruction all linear": {"alora_span": "instruction", "target_modules": ALL_LINEAR},
    "schedule=constant": {"lr_schedule": "constant"},
    "schedule=cosine": {"lr_schedule": "cosine"},
    "dropout=0": {"dropout": 0.0},
    "item=user turn": {"item_role": "user"},
    "system prompt=none": {"system_prompt": ""},
    "requirement in prompt": {"requirement_in_prompt": True},
    "loss=label-set": {"loss": "label-set"},
    "loss=lm": {"loss": "lm"},
    "balance": {"balance": True},
    "val fraction=0.1": {"val_fraction": 0.1},
    "adapter=lora": {"adapter": "lora"},
    "targets=attention": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    "targets=all linear": {"target_modules": ALL_LINEAR},
}


def summarise(rows: list[dict]) -> dict:
    """Mean held-out accuracy per variant and set (over rates and seeds), and its mean gain over `base`."""
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        table.setdefault(row["variant"], {}).setdefault(row["set"], []).append(row["accuracy"])
    table = {v: {s: round(statistics.mean(a), 4) for s, a in cells.items()} for v, cells in table.items()}
    base = table.get("base", {})
    gains = {
        v: round(statistics.mean(cells[s] - base[s] for s in cells if s in base), 4)
        for v, cells in table.items()
        if any(s in base for s in cells)
    }
    return {"accuracy": table, "gain_over_base": gains}


def table(summary: dict) -> str:
    """The summary as a Markdown table: one row per variant, one column per set, their mean, the gain."""
    sets = sorted({s for cells in summary["accuracy"].values() for s in cells})
    lines = [f"| variant | {' | '.join(sets)} | mean | gain |", "|---" * (len(sets) + 3) + "|"]
    for variant, cells in summary["accuracy"].items():
        values = [f"{cells[s]:.3f}" if s in cells else "" for s in sets]
        mean = statistics.mean(cells.values())
        gain = summary["gain_over_base"].get(variant)
        lines.append(f"| {variant} | {' | '.join(values)} | {mean:.3f} | {'' if gain is None else gain} |")
    return "\n".join(lines)


def _float32(device: str) -> Any:
    import torch

    return torch.float32


def _worker_setup(float32: bool) -> None:
    """One thread per run (N runs share the cores), float32 everywhere when asked."""
    import torch

    torch.set_num_threads(1)
    if float32:
        from reqcheck.checking import backend
        from reqcheck.training import prepare

        torch.set_float32_matmul_precision("highest")
        prepare.training_dtype = backend.training_dtype = _float32


def _run(job: tuple[dict, dict]) -> dict:
    """Train and score one (variant, rate, seed, set), unless the deadline has passed (then `skipped`)."""
    key, args = job
    if time.time() > args["deadline"]:
        return {**key, "skipped": True}
    began = time.perf_counter()
    tag = f"{key['set']} {key['variant']} seed {key['seed']}"
    row = train_and_score(
        args["data"] / key["set"], args["basemodel"], args["device"], args["settings"], tag=tag
    )
    return {**key, **row, "wall_seconds": round(time.perf_counter() - began, 1)}


def main() -> None:
    parser = data_arguments(__doc__)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rates", nargs="+", default=["2e-4"], help="numbers, or auto")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("ablation.jsonl"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--float32", action="store_true", help="train and score in float32 on any device")
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which no run starts")
    args = parser.parse_args()
    from reqcheck.models.loading import resolve_base_model

    resolve_base_model(args.basemodel)  # convert a GGUF once, before the runs race for the cache
    deadline = time.time() + args.deadline if args.deadline else float("inf")
    jobs = []
    for variant in args.variants:
        for rate in args.rates:
            for seed in args.seeds:
                for name in args.sets:
                    settings = {
                        "epochs": args.epochs,
                        "batch_size": args.batch_size,
                        "grad_accum": args.grad_accum,
                        "learning_rate": rate if rate == "auto" else float(rate),
                        "seed": seed,
                        **VARIANTS[variant],
                    }
                    key = {"set": name, "variant": variant, "rate": rate, "seed": seed}
                    shared = {"data": args.data, "basemodel": args.basemodel, "device": args.device}
                    jobs.append((key, {**shared, "settings": settings, "deadline": deadline}))
    rows = []
    context = multiprocessing.get_context("spawn")
    with args.out.open("a") as sink, context.Pool(args.jobs, _worker_setup, (args.float32,)) as pool:
        for row in pool.imap_unordered(_run, jobs):
            if row.get("skipped"):
                continue
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(json.dumps(row), file=sys.stderr, flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=2))
    print(table(summary))


if __name__ == "__main__":
    main()
