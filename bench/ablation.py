"""Ablation of reqcheck's training choices on real labelled data, one change at a time from a base.

Each variant trains on `<data>/<set>/train.jsonl` and is scored on the held-out `test.reqcheck.jsonl`
through `LocalHFBackend.classify` (see `quality.train_and_score`). Every finished run is appended to
`--out` as a JSON line; the summary (mean held-out accuracy per variant and set, and the mean gain over
`base`) is printed as JSON at the end.

    python bench/ablation.py --rates 2e-4 --epochs 3 --batch-size 8 --grad-accum 1
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import data_arguments, train_and_score  # noqa: E402

VARIANTS: dict[str, dict] = {
    "base": {},
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
    "targets=all linear": {
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    },
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


def main() -> None:
    parser = data_arguments(__doc__)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rates", nargs="+", default=["2e-4"], help="numbers, or auto")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("ablation.jsonl"))
    args = parser.parse_args()
    rows = []
    with args.out.open("a") as sink:
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
                        row = train_and_score(args.data / name, args.basemodel, args.device, settings)
                        row = {"set": name, "variant": variant, "rate": rate, "seed": seed, **row}
                        rows.append(row)
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(summarise(rows), indent=2))


if __name__ == "__main__":
    main()
