"""Ablation of reqcheck's training choices on real labelled data, one change at a time from the defaults.

Each variant trains on `<data>/<set>/train.jsonl` with `reqcheck train`'s defaults (`TrainConfig`) plus
its own change, and is scored on the held-out `test.reqcheck.jsonl` through `LocalHFBackend.classify`
(see `quality.train_and_score`).

The ablation is resumable: every finished run is appended as one JSON line to `--out` (default
`bench/results/ablation.jsonl`, committed) and a second start skips every run already there. A run is
known by its variant, set, seed, rate and fingerprints of everything that shapes it (the resolved
training options, the base model, the precision; the set's files and requirement), so a changed variant definition or a
changed default trains again instead of passing for done. `--budget-minutes` starts no run after the
budget; runs in flight finish and are written. So a long ablation runs in parts, in the background,
across days. Rows record the highest load average seen during the run and `contended: true` when their
seconds are not a timing (several runs at once, or the machine busy with other work).

`--plan screen` is issue 32's screening (seed 0, both sets, `--learning-rate auto`, the defaults, span
instruction, rank 64, all linear layers at rank 32, span instruction on all linear layers, and LoRA);
`--plan confirm` reads the screening rows from `--out` and trains the two best aLoRA variants other
than the defaults (two-set mean accuracy), the defaults and LoRA on seeds 42 and 1. `--table` prints the
Markdown table of `--out` and trains nothing.

`--jobs N` trains N runs at once in separate processes, the CPU threads split among them (on one GPU,
small models leave it mostly idle); `--float32` trains and scores in float32 on a GPU too (CPU training is
float32, CUDA's default here bf16), so GPU accuracies differ from CPU ones only by float noise.

    python bench/ablation.py --plan screen --jobs 2 --budget-minutes 60
    python bench/ablation.py --plan confirm
    python bench/ablation.py --table
    python bench/ablation.py --rates auto --seeds 0 1 2 --variants defaults span=instruction adapter=lora \
        --device cuda --float32 --jobs 12
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import REQUIREMENTS, data_arguments, train_and_score  # noqa: E402

from reqcheck.errors import ReqcheckError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "ablation.jsonl"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "span=instruction": {"alora_span": "instruction"},
    "rank=64": {"rank": 64, "alpha": 64},
    "rank=128": {"rank": 128, "alpha": 128},
    "targets=all linear": {"target_modules": ALL_LINEAR, "rank": 32, "alpha": 32},
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
}
SCREEN_VARIANTS = [
    "defaults",
    "span=instruction",
    "rank=64",
    "targets=all linear",
    "span=instruction all linear",
    "adapter=lora",
]
SCREEN_SEEDS, CONFIRM_SEEDS, PLAN_RATE = [0], [42, 1], "auto"
# Outside the settings fingerprint: what changes how fast or where a run trains, not what it learns; the
# seed (in the key on its own); the data file and requirement (the set's, in the data fingerprint).
NOT_SHAPING = {
    "datafile",
    "outfile",
    "device",
    "resume",
    "prefix_cache",
    "prefix_cache_budget_mb",
    "seed",
    "requirement",
}
Key = tuple[str, str, int, str, str, str]


@dataclass(frozen=True)
class Job:
    """One training to run: what it is (the key) and what it needs (data, model, device, options)."""

    variant: str
    set: str
    seed: int
    rate: str
    settings: dict[str, Any]
    fingerprint: str
    data_fingerprint: str
    data: Path
    basemodel: str
    device: str
    jobs: int

    @property
    def key(self) -> Key:
        return (self.variant, self.set, self.seed, self.rate, self.fingerprint, self.data_fingerprint)


@dataclass(frozen=True)
class Result:
    """One line of the results file: a finished run, its scores and what it cost."""

    variant: str
    set: str
    seed: int
    rate: str
    fingerprint: str
    data_fingerprint: str
    adapter: str
    accuracy: float
    macro_f1: float
    learning_rate: float
    train_seconds: float
    phase_seconds: dict[str, float]
    wall_seconds: float
    load_max: float
    jobs: int
    contended: bool
    settings: dict[str, Any]
    finished: str
    commit: str | None = None
    val_accuracy: float | None = None
    majority: float | None = None
    recall: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.variant, self.set, self.seed, self.rate, self.fingerprint, self.data_fingerprint)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls(**json.loads(text))


def read_results(path: Path) -> list[Result]:
    """Every row of `path` (none when it does not exist).

    A last line without its newline is a write cut short by a crash and is ignored (the run trains
    again); any other line that is not a row is an error naming it.
    """
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(Result.from_json(line))
        except (ValueError, TypeError) as error:
            if number == len(lines):
                continue
            raise ReqcheckError(
                f"{path}:{number} is not an ablation row ({error}); fix or remove it."
            ) from None
    return rows


class ResultsWriter:
    """Appends rows to the results file, one write and one fsync per row, holding a lock on it.

    The lock keeps a second ablation from training the same runs into the same file at the same time.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ReqcheckError(
                f"another ablation is writing {path}; wait for it to end or pass another --out."
            ) from None
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        """Cut a last line left without its newline by a crash, so the next row starts a line of its own."""
        text = self.path.read_bytes()
        if text and not text.endswith(b"\n"):
            os.ftruncate(self.fd, text.rfind(b"\n") + 1)

    def append(self, row: Result) -> None:
        os.write(self.fd, (row.to_json() + "\n").encode())
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def settings_fingerprint(settings: dict[str, Any], basemodel: str, device: str, float32: bool) -> str:
    """A short hash of the options a variant trains with, `reqcheck train`'s defaults resolved.

    Built from the `TrainConfig` the run will train with, so a changed default changes it too. The same
    for every set and seed, so the table can put a variant's runs together.
    """
    from reqcheck.training.config import TrainConfig

    config = TrainConfig(
        datafile=Path("train.jsonl"), basemodel=basemodel, outfile=Path("adapter"), **settings
    )
    shaping = {
        f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in NOT_SHAPING
    }
    shaping["float32"] = float32 or device == "cpu"
    return _short_hash(json.dumps(shaping, sort_keys=True, default=str).encode())


def data_fingerprint(folder: Path) -> str:
    """A short hash of a set's training and held-out lines and its requirement."""
    parts = [(folder / name).read_bytes() for name in ("train.jsonl", "test.reqcheck.jsonl")]
    return _short_hash(b"\0".join([*parts, (REQUIREMENTS.get(folder.name) or "").encode()]))


def _short_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def plan_jobs(
    variants: Sequence[str],
    sets: Sequence[str],
    seeds: Sequence[int],
    rates: Sequence[str],
    overrides: dict[str, Any],
    *,
    data: Path,
    basemodel: str,
    device: str,
    float32: bool,
    jobs: int,
) -> list[Job]:
    """Every (variant, rate, seed, set) as a Job, with the options it trains with and their fingerprint."""
    planned = []
    for name in sets:
        for file in ("train.jsonl", "test.reqcheck.jsonl"):
            if not (data / name / file).is_file():
                raise ReqcheckError(
                    f"{data / name / file} does not exist; pass --data the bench-data folder."
                )
    for rate in rates:
        if rate != "auto" and not _is_number(rate):
            raise ReqcheckError(f"--rates takes numbers or auto, not {rate!r}.")
    data_stamps = {name: data_fingerprint(data / name) for name in sets}
    for variant in variants:
        for rate in rates:
            for seed in seeds:
                for name in sets:
                    learning_rate = rate if rate == "auto" else float(rate)
                    settings = {
                        **overrides,
                        "learning_rate": learning_rate,
                        "seed": seed,
                        **VARIANTS[variant],
                    }
                    planned.append(
                        Job(
                            variant=variant,
                            set=name,
                            seed=seed,
                            rate=rate,
                            settings=settings,
                            fingerprint=settings_fingerprint(settings, basemodel, device, float32),
                            data_fingerprint=data_stamps[name],
                            data=data / name,
                            basemodel=basemodel,
                            device=device,
                            jobs=jobs,
                        )
                    )
    return planned


def screening_means(rows: list[Result], screen: list[Job]) -> dict[str, float]:
    """The two-set mean accuracy of each screening variant whose runs are all in `rows`."""
    by_key = {row.key: row for row in rows}
    means = {}
    for variant in dict.fromkeys(job.variant for job in screen):
        found = [by_key.get(job.key) for job in screen if job.variant == variant]
        if all(found):
            means[variant] = statistics.mean(row.accuracy for row in found if row)
    return means


def confirm_variants(rows: list[Result], screen: list[Job]) -> list[str]:
    """The two best aLoRA variants other than the defaults by screening mean, then the defaults and LoRA.

    The screening must be complete: choosing from part of it would confirm the wrong variants.
    """
    means = screening_means(rows, screen)
    missing = sorted({job.variant for job in screen} - set(means))
    if missing:
        raise ReqcheckError(
            f"the screening is not finished ({', '.join(missing)} missing); run --plan screen first."
        )
    candidates = [
        v for v in SCREEN_VARIANTS if v != "defaults" and VARIANTS[v].get("adapter", "alora") == "alora"
    ]
    best = sorted(candidates, key=lambda v: -means[v])[:2]
    return [*best, "defaults", "adapter=lora"]


class LoadWatch:
    """The highest 1-minute load average seen while a run trains, sampled in a background thread."""

    def __init__(self, every: float = 5.0) -> None:
        self.highest = os.getloadavg()[0]
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(self.every):
            self.highest = max(self.highest, os.getloadavg()[0])

    def __enter__(self) -> LoadWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.highest = max(self.highest, os.getloadavg()[0])


def _commit() -> str | None:
    """The checked-out commit, so a row says which code trained it."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def train_job(job: Job) -> Result:
    """Train and score one run as a user would, and say what it cost and how busy the machine was."""
    began = time.perf_counter()
    tag = f"{job.set} {job.variant} seed {job.seed}"
    with LoadWatch() as load:
        row = train_and_score(job.data, job.basemodel, job.device, job.settings, tag=tag)
    return Result(
        variant=job.variant,
        set=job.set,
        seed=job.seed,
        rate=job.rate,
        fingerprint=job.fingerprint,
        data_fingerprint=job.data_fingerprint,
        adapter=job.settings.get("adapter", "alora"),
        accuracy=row["accuracy"],
        macro_f1=row["macro_f1"],
        learning_rate=row["learning_rate"],
        train_seconds=row["train_seconds"],
        phase_seconds=row["train_phase_seconds"],
        wall_seconds=round(time.perf_counter() - began, 1),
        load_max=round(load.highest, 2),
        jobs=job.jobs,
        contended=job.jobs > 1 or load.highest > (os.cpu_count() or 1) + 0.5,
        settings=job.settings,
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=_commit(),
        val_accuracy=row["val_accuracy"],
        majority=row["majority"],
        recall=row["recall"],
    )


@dataclass
class Outcome:
    """What one start of the ablation did: runs written, runs left for the next start, runs that failed."""

    written: list[Result] = field(default_factory=list)
    left: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)


def run_jobs(
    jobs: list[Job],
    out: Path,
    train: Callable[[Job], Result],
    executor: Executor,
    *,
    workers: int,
    budget_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    log: IO[str] = sys.stderr,
) -> Outcome:
    """Train every job not yet in `out`, `workers` at a time, writing each row as it finishes.

    No run starts once `budget_seconds` have passed; runs in flight finish and are written. A run that
    fails is reported and left for the next start, the others go on.
    """
    outcome = Outcome()
    with ResultsWriter(out) as sink:
        done = {row.key for row in read_results(out)}
        todo: Iterator[Job] = iter([job for job in jobs if job.key not in done])
        deadline = clock() + budget_seconds if budget_seconds is not None else float("inf")
        pending: dict[Future[Result], Job] = {}
        while True:
            while len(pending) < workers and clock() < deadline and (job := next(todo, None)):
                print(f"start {job.set} {job.variant} seed {job.seed} rate {job.rate}", file=log, flush=True)
                pending[executor.submit(train, job)] = job
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                try:
                    row = future.result()
                except Exception:
                    outcome.failed.append(job)
                    print(f"run {job.key} failed:\n{traceback.format_exc()}", file=log, flush=True)
                    continue
                sink.append(row)
                outcome.written.append(row)
                print(row.to_json(), file=log, flush=True)
        outcome.left = list(todo)
    return outcome


def _worker_setup(float32: bool, threads: int) -> None:
    """Split the CPU threads among the runs at once; float32 everywhere when asked."""
    import torch

    torch.set_num_threads(threads)
    if float32:
        from reqcheck.checking import backend
        from reqcheck.training import prepare

        torch.set_float32_matmul_precision("highest")
        prepare.training_dtype = backend.training_dtype = _float32


def _float32(device: str) -> Any:
    import torch

    return torch.float32


def _groups(rows: list[Result]) -> dict[tuple[str, str, str], list[Result]]:
    """Rows by (variant, rate, fingerprint), in the order of VARIANTS."""
    groups: dict[tuple[str, str, str], list[Result]] = {}
    order = list(VARIANTS)
    for row in sorted(rows, key=lambda r: order.index(r.variant) if r.variant in order else len(order)):
        groups.setdefault((row.variant, row.rate, row.fingerprint), []).append(row)
    return groups


def _paired(rows: list[Result], reference: list[Result]) -> list[tuple[Result, Result]]:
    """Each row with the reference row of the same set and seed, so variants are compared on equal terms."""
    ref = {(r.set, r.seed): r for r in reference}
    return [(r, ref[(r.set, r.seed)]) for r in rows if (r.set, r.seed) in ref]


def markdown_table(rows: list[Result]) -> str:
    """The results as a Markdown table: per set the mean accuracy and macro-F1 over seeds, their two-set mean,
    the change against the defaults on the same sets and seeds, and the mean training seconds.

    A variant trained under several fingerprints (its definition or a default changed) gets one line
    each, named by its fingerprint.
    """
    sets = sorted({r.set for r in rows})
    groups = _groups(rows)
    fingerprints: dict[str, set[str]] = {}
    for variant, _, stamp in groups:
        fingerprints.setdefault(variant, set()).add(stamp)
    references = {
        rate: max(
            (g for (v, r, _), g in groups.items() if v == "defaults" and r == rate), key=len, default=[]
        )
        for _, rate, _ in groups
    }
    head = ["variant", "rate", "seeds"]
    head += [f"`{s}` {what}" for s in sets for what in ("accuracy", "macro-F1")]
    head += ["mean accuracy", "vs defaults", "train s", "time vs defaults"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    contended = False
    for (variant, rate, stamp), group in groups.items():
        name = variant if len(fingerprints[variant]) == 1 else f"{variant} ({stamp})"
        seeds = ", ".join(str(s) for s in dict.fromkeys(r.seed for r in group))
        cells = [name, rate, seeds]
        for s in sets:
            in_set = [r for r in group if r.set == s]
            if in_set:
                cells += [f"{statistics.mean(r.accuracy for r in in_set):.3f}"]
                cells += [f"{statistics.mean(r.macro_f1 for r in in_set):.3f}"]
            else:
                cells += ["", ""]
        present = [s for s in sets if any(r.set == s for r in group)]
        cells.append(f"{statistics.mean(_mean_accuracy(group, s) for s in present):.3f}")
        pairs = _paired(group, references[rate])
        timed_apart = any(r.contended for r in group) or any(ref.contended for _, ref in pairs)
        mark = "†" if timed_apart else ""
        contended = contended or timed_apart
        if pairs:
            gain = statistics.mean(r.accuracy - ref.accuracy for r, ref in pairs)
            cells.append(f"{100 * gain:+.1f} pt")
        else:
            cells.append("")
        cells.append(f"{statistics.mean(r.train_seconds for r in group):.0f}{mark}")
        if pairs:
            ratio = sum(r.train_seconds for r, _ in pairs) / sum(ref.train_seconds for _, ref in pairs)
            cells.append(f"{ratio:.2f}x{mark}")
        else:
            cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    if contended:
        lines.append("")
        lines.append(
            "† Some of these runs shared the cores (several runs at once, or other work): their seconds are "
            "not timings."
        )
    return "\n".join(lines)


def _mean_accuracy(group: list[Result], name: str) -> float:
    return statistics.mean(r.accuracy for r in group if r.set == name)


@contextmanager
def _executor(workers: int, float32: bool) -> Iterator[Executor]:
    """Processes started fresh (spawn), each with its share of the CPU threads."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, _worker_setup, (float32, threads)) as pool:
        yield pool


def main() -> None:
    parser = data_arguments(__doc__)
    parser.add_argument("--plan", choices=["screen", "confirm"], help="issue 32's screening or confirmation")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--rates", nargs="+", help="numbers, or auto (default: auto)")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--epochs", type=int, help="default: reqcheck train's")
    parser.add_argument("--batch-size", type=int, help="default: reqcheck train's")
    parser.add_argument("--grad-accum", type=int, help="default: reqcheck train's")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file (JSON lines)")
    parser.add_argument(
        "--table", action="store_true", help="print the Markdown table of --out, train nothing"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--float32", action="store_true", help="train and score in float32 on any device")
    parser.add_argument("--budget-minutes", type=float, help="start no run after this many minutes")
    args = parser.parse_args()
    try:
        _main(args, parser.get_default("sets"))
    except ReqcheckError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _main(args: Any, default_sets: list[str]) -> None:
    if args.table:
        rows = read_results(args.out)
        if not rows:
            raise ReqcheckError(f"{args.out} holds no results; run an ablation first.")
        print(markdown_table(rows))
        return
    overrides = {
        name: getattr(args, name)
        for name in ("epochs", "batch_size", "grad_accum")
        if getattr(args, name) is not None
    }
    common = {
        "data": args.data,
        "basemodel": args.basemodel,
        "device": args.device,
        "float32": args.float32,
        "jobs": args.jobs,
    }
    if args.plan:
        if args.variants or args.seeds or args.rates or args.sets != default_sets:
            raise ReqcheckError("--plan fixes the variants, seeds, rates and sets; drop those options.")
        screen = plan_jobs(SCREEN_VARIANTS, args.sets, SCREEN_SEEDS, [PLAN_RATE], overrides, **common)
        if args.plan == "screen":
            jobs = screen
        else:
            variants = confirm_variants(read_results(args.out), screen)
            print(f"confirming {', '.join(variants)}", file=sys.stderr, flush=True)
            jobs = plan_jobs(variants, args.sets, CONFIRM_SEEDS, [PLAN_RATE], overrides, **common)
    else:
        variants, seeds, rates = args.variants or ["defaults"], args.seeds or [0], args.rates or ["auto"]
        jobs = plan_jobs(variants, args.sets, seeds, rates, overrides, **common)
    from reqcheck.models.loading import resolve_base_model

    resolve_base_model(args.basemodel)  # convert a GGUF once, before the runs race for the cache
    budget = args.budget_minutes * 60 if args.budget_minutes is not None else None
    with _executor(args.jobs, args.float32) as pool:
        outcome = run_jobs(jobs, args.out, train_job, pool, workers=args.jobs, budget_seconds=budget)
    print(
        f"{len(outcome.written)} runs written to {args.out}, {len(outcome.left)} left for the next start, "
        f"{len(outcome.failed)} failed",
        file=sys.stderr,
    )
    print(markdown_table(read_results(args.out)))
    if outcome.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
