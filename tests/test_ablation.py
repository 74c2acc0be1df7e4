"""bench/ablation.py's resumable bookkeeping, with a fake training: a second start skips finished runs,
the budget stops between runs, a torn last line is retrained, the table and the confirmation read the
results file alone."""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reqcheck.errors import ReqcheckError

_PATH = Path(__file__).resolve().parents[1] / "bench" / "ablation.py"
_SPEC = importlib.util.spec_from_file_location("ablation", _PATH)
assert _SPEC and _SPEC.loader
ablation = importlib.util.module_from_spec(_SPEC)
sys.modules["ablation"] = ablation
_SPEC.loader.exec_module(ablation)

SETS = ["amazon_reviews", "trec_questions"]
# (variant, set) -> accuracy the fake training reaches
ACCURACY = {
    "defaults": 0.80,
    "span=instruction": 0.84,
    "rank=64": 0.79,
    "targets=all linear": 0.86,
    "span=instruction all linear": 0.82,
    "adapter=lora": 0.90,
}


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Two made-up sets under the bench-data names (no real lines are copied here)."""
    for name in SETS:
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "train.jsonl").write_text(f'{{"item": "{name}", "label": "yes"}}\n')
        (tmp_path / "data" / name / "test.reqcheck.jsonl").write_text(
            f'{{"item": "{name}", "label": "no"}}\n'
        )
    return tmp_path / "data"


def plan(data: Path, variants: list[str], seeds: list[int]) -> list:
    return ablation.plan_jobs(
        variants, SETS, seeds, ["auto"], {}, data=data, basemodel="m", device="cpu", float32=False, jobs=1
    )


def fake_train(trained: list, on_train: Callable[[], None] = lambda: None) -> Callable:
    def train(job):
        trained.append(job.key)
        on_train()
        if job.variant == "rank=128":
            raise RuntimeError("out of memory")
        accuracy = ACCURACY.get(job.variant, 0.5) + (0.02 if job.set == "amazon_reviews" else 0.0)
        return ablation.Result(
            variant=job.variant,
            set=job.set,
            seed=job.seed,
            rate=job.rate,
            fingerprint=job.fingerprint,
            data_fingerprint=job.data_fingerprint,
            adapter=job.settings.get("adapter", "alora"),
            accuracy=accuracy,
            macro_f1=accuracy - 0.01,
            learning_rate=1e-3,
            train_seconds=200.0 if job.variant == "defaults" else 250.0,
            phase_seconds={"sweep": 50.0},
            wall_seconds=260.0,
            load_max=1.5,
            jobs=1,
            contended=False,
            settings=job.settings,
            finished="2026-12-08T00:00:00+00:00",
        )

    return train


def run(jobs: list, out: Path, train: Callable, **options) -> object:
    with ThreadPoolExecutor(1) as pool:
        return ablation.run_jobs(jobs, out, train, pool, workers=1, log=io.StringIO(), **options)


def test_a_second_start_skips_every_finished_run(data: Path, tmp_path: Path) -> None:
    out, trained = tmp_path / "results.jsonl", []
    jobs = plan(data, ["defaults", "rank=64"], [0, 1])
    run(jobs, out, fake_train(trained))
    assert len(trained) == len(jobs) == 8
    again = run(jobs, out, fake_train(trained))
    assert len(trained) == 8 and again.written == []
    assert sorted(row.key for row in ablation.read_results(out)) == sorted(job.key for job in jobs)


def test_a_changed_variant_definition_trains_again(data: Path, tmp_path: Path, monkeypatch) -> None:
    out, trained = tmp_path / "results.jsonl", []
    run(plan(data, ["rank=64"], [0]), out, fake_train(trained))
    monkeypatch.setitem(ablation.VARIANTS, "rank=64", {"rank": 64, "alpha": 128})
    run(plan(data, ["rank=64"], [0]), out, fake_train(trained))
    assert len(trained) == 4


def test_one_variant_has_one_settings_fingerprint_across_sets_and_seeds(data: Path) -> None:
    jobs = plan(data, ["defaults", "span=instruction"], [0, 42])
    stamps = {job.variant: set() for job in jobs}
    for job in jobs:
        stamps[job.variant].add(job.fingerprint)
    assert [len(s) for s in stamps.values()] == [1, 1]
    assert stamps["defaults"] != stamps["span=instruction"]


def test_the_budget_starts_no_run_after_it_and_the_next_start_finishes(data: Path, tmp_path: Path) -> None:
    out, trained, now = tmp_path / "results.jsonl", [], [0.0]

    def tick() -> None:
        now[0] += 10.0

    jobs = plan(data, ["defaults", "rank=64"], [0])
    first = run(jobs, out, fake_train(trained, tick), budget_seconds=25.0, clock=lambda: now[0])
    assert len(first.written) == 3 and len(first.left) == 1
    second = run(jobs, out, fake_train(trained))
    assert len(second.written) == 1 and len(ablation.read_results(out)) == 4


def test_a_failed_run_is_left_for_the_next_start_and_the_others_go_on(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    outcome = run(plan(data, ["rank=128", "defaults"], [0]), out, fake_train([]))
    assert len(outcome.failed) == 2 and len(outcome.written) == 2


def test_a_torn_last_line_is_trained_again_and_kept_apart(data: Path, tmp_path: Path) -> None:
    out, trained = tmp_path / "results.jsonl", []
    jobs = plan(data, ["defaults"], [0])
    run(jobs, out, fake_train(trained))
    text = out.read_text()
    out.write_text(text[: text.index("\n") + 1] + text[text.index("\n") + 1 :][:40])
    run(jobs, out, fake_train(trained))
    assert len(trained) == 3
    assert len(ablation.read_results(out)) == 2


def test_a_bad_line_before_the_end_is_named(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    out.write_text('{"variant": "x"}\n\n')
    with pytest.raises(ReqcheckError, match=r"results.jsonl:1 is not an ablation row"):
        ablation.read_results(out)


def test_a_second_ablation_on_the_same_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    with ablation.ResultsWriter(out), pytest.raises(ReqcheckError, match="another ablation is writing"):
        ablation.ResultsWriter(out)


def test_the_table_reads_the_file_alone(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    run(plan(data, ["defaults", "span=instruction"], [0, 1]), out, fake_train([]))
    lines = ablation.markdown_table(ablation.read_results(out)).splitlines()
    assert lines[0].startswith("| variant | rate | seeds | `amazon_reviews` accuracy |")
    assert (
        lines[2]
        == "| defaults | auto | 0, 1 | 0.820 | 0.810 | 0.800 | 0.790 | 0.810 | +0.0 pt | 200 | 1.00x |"
    )
    assert lines[3] == (
        "| span=instruction | auto | 0, 1 | 0.860 | 0.850 | 0.840 | 0.830 | 0.850 | +4.0 pt | 250 | 1.25x |"
    )


def test_confirm_takes_the_two_best_alora_variants_besides_the_defaults(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    screen = plan(data, ablation.SCREEN_VARIANTS, ablation.SCREEN_SEEDS)
    assert len(screen) == 12
    with pytest.raises(ReqcheckError, match="the screening is not finished"):
        ablation.confirm_variants([], screen)
    run(screen, out, fake_train([]))
    chosen = ablation.confirm_variants(ablation.read_results(out), screen)
    assert chosen == ["targets=all linear", "span=instruction", "defaults", "adapter=lora"]


def test_table_of_a_missing_file_is_one_sentence_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--table", "--out", str(tmp_path / "none.jsonl")])
    with pytest.raises(SystemExit) as exit_:
        ablation.main()
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err
        == f"error: {tmp_path / 'none.jsonl'} holds no results; run an ablation first.\n"
    )
