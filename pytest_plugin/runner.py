"""Predictions: the one room that calls a backend. It batches every selected case on the first one that
is not cached, keeps each case's `Prediction` in pytest's cache (typed records, keyed by what the model
is and is told), and hands gating the predictions; gating itself calls no model.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from pytest_reqcheck.adapters import SessionAdapters
from pytest_reqcheck.options import SessionOptions
from reqcheck.errors import ReqcheckError, plain_text
from reqcheck.formats.data import Example
from reqcheck.gating.cases import Prediction


class SelectedCase(Protocol):
    """What the runner reads of a case item (`items.ReqcheckCase`)."""

    adapter: str
    mode: str
    example: Example
    session: pytest.Session

    @property
    def key(self) -> str: ...


CACHE_FORMAT = "reqcheck/v1"
Outcome = Prediction | str  # a case's prediction, or the one line that says why it has none


def case_key(fingerprint: dict[str, Any], mode: str, item: str, requirement: str | None) -> str:
    """The cache key of one case: what the adapter is, how it renders, the mode and the input."""
    material = json.dumps([fingerprint, mode, item, requirement], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


def predict(
    backend: Any,
    adapter: str,
    items: list[str],
    requirements: dict[str, list[str | None]],
    batch_size: int,
) -> dict[str, list[Prediction]]:
    """Label distributions of `items` in each mode (`adapter`, `judge`), one model call per batch and mode.

    Items are batched by length (little padding), and both modes run on a batch before the next one, so
    the judge reuses the contexts the adapter just cached. Results come back in the order of `items`.
    """
    labels = list(backend.adapters[adapter].manifest.labels)
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    out: dict[str, list[Prediction | None]] = {mode: [None] * len(items) for mode in requirements}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [items[i] for i in rows]
        for mode, reqs in requirements.items():
            batch_reqs = [reqs[i] for i in rows]
            began = time.perf_counter()
            if mode == "adapter":
                probs = backend.classify(adapter, chunk, batch_reqs)
            else:
                probs = backend.judge(chunk, batch_reqs, labels)
            each = (time.perf_counter() - began) / len(chunk)
            for i, p in zip(rows, probs, strict=True):
                out[mode][i] = Prediction(p, each)
    return {mode: [p for p in predictions if p is not None] for mode, predictions in out.items()}


@dataclass
class CachedCase:
    """What pytest's cache keeps of one case: its label distribution and model time."""

    probabilities: dict[str, float]
    seconds: float


class CaseCache:
    """One adapter's and mode's case results in pytest's cache, read and written as typed records.

    Off (nothing read or kept) under `--reqcheck-no-cache`, without the cache plugin
    (`-p no:cacheprovider`), and for a served run, which checks the server as it is now.
    """

    def __init__(self, config: pytest.Config, slot: str, enabled: bool) -> None:
        from reqcheck.formats.typed import Mismatch, build

        self.config, self.slot, self.enabled = config, slot, enabled
        stored = config.cache.get(slot, None) if enabled else None
        try:
            self.records: dict[str, CachedCase] = build(dict[str, CachedCase], stored or {}, slot)
        except Mismatch:  # a damaged cache entry is a miss, never an error
            self.records = {}
        self.fresh: set[str] = set()

    def get(self, key: str) -> Prediction | None:
        record = self.records.get(key)
        if record is None:
            return None
        return Prediction(record.probabilities, record.seconds, cached=key not in self.fresh)

    def put(self, key: str, prediction: Prediction) -> None:
        self.records[key] = CachedCase(prediction.probabilities, prediction.seconds)
        self.fresh.add(key)

    def save(self) -> None:
        if self.enabled:
            self.config.cache.set(self.slot, {key: vars(r) for key, r in self.records.items()})


class PredictionRunner:
    """Every case's prediction, computed in batches on the first case that is not cached."""

    def __init__(self, config: pytest.Config, options: SessionOptions, adapters: SessionAdapters) -> None:
        self.config, self.options, self.adapters = config, options, adapters
        self.predictions: dict[tuple[str, str, str], Prediction] = {}
        self.case_errors: dict[tuple[str, str, str], str] = {}  # cases a failing server could not check

    def key(self, adapter: str, mode: str, example: Example) -> str:
        """The disk-cache key: adapter and base fingerprint, mode, item and what the model is told."""
        fingerprint = self.adapters.by_name[adapter].fingerprint
        return case_key(fingerprint, mode, example.item, self.adapters.told(adapter, example.requirement))

    def prediction(self, case: SelectedCase) -> Prediction:
        """The case's prediction; on the first miss, every selected case is predicted in batches.

        A case a failing server could not check raises its reason (a ReqcheckError).
        """
        key = (case.adapter, case.mode, case.key)
        if key not in self.predictions and key not in self.case_errors:
            # the session's cases are the items of this case's own class, as selected (-k, --lf) by now
            selected = [item for item in case.session.items if isinstance(item, type(case))]
            try:
                self._predict_all(selected)
            except ReqcheckError as exc:  # the whole batch failed: one message, not one per case
                pytest.exit(f"reqcheck: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        if key in self.case_errors:
            raise ReqcheckError(f"{case.mode}: could not be checked: {self.case_errors[key]}")
        return self.predictions[key]

    def _predict_all(self, cases: list[Any]) -> None:
        """Predict every case in batches, both modes per batch, reading and writing the pytest cache."""
        # config.cache does not exist at all under -p no:cacheprovider
        # a served run checks the server as it is now: it neither reads nor writes cached results
        use_cache = (
            getattr(self.config, "cache", None) is not None
            and not self.options.no_cache
            and not self.options.served
        )
        for adapter, entry in self.adapters.by_name.items():
            members = [c for c in cases if c.adapter == adapter]
            caches = {
                mode: CaseCache(
                    self.config, f"{CACHE_FORMAT}/{entry.fingerprint['adapter'][7:23]}-{mode}", use_cache
                )
                for mode in self.options.modes
            }
            # the same item under two requirements is two predictions (the cache key holds both)
            missing = list(
                {
                    (c.example.item, c.example.requirement): c.example
                    for c in members
                    if caches[c.mode].get(c.key) is None
                }.values()
            )
            failed: dict[tuple[str, str], str] = {}  # (mode, key) -> why it was not checked
            if missing:
                for mode, results in self._predict_missing(adapter, missing).items():
                    for example, outcome in zip(missing, results, strict=True):
                        key = self.key(adapter, mode, example)
                        if isinstance(outcome, str):
                            failed[(mode, key)] = outcome
                        else:
                            caches[mode].put(key, outcome)
                for cache in caches.values():
                    cache.save()
            for c in members:
                found = caches[c.mode].get(c.key)
                if found is None:
                    self.case_errors[(adapter, c.mode, c.key)] = failed[(c.mode, c.key)]
                    entry.run.errors.setdefault(c.mode, []).append(failed[(c.mode, c.key)])
                else:
                    self.predictions[(adapter, c.mode, c.key)] = found

    def _predict_missing(self, adapter: str, missing: list[Example]) -> dict[str, list[Outcome]]:
        """Each mode's outcome for `missing`, in their order: its prediction, or why it has none.

        In process, a ReqcheckError stops the run (every case would fail alike). Through an endpoint, the
        cases are sent a batch at a time, each mode on its own, and when the server fails a mode (it died, or
        the judge cannot score) that mode's cases not yet checked keep its one-sentence reason, which fails
        them and the gates on that mode.
        """
        items = [e.item for e in missing]
        batch = self.options.batch_size
        told = [self.adapters.told(adapter, e.requirement) for e in missing]
        requirements = {mode: told for mode in self.options.modes if mode != "local"}
        if not self.options.served:
            return outcomes(self.adapters.backend, adapter, items, requirements, len(items), batch)
        out: dict[str, list[Outcome]] = {}
        if "local" in self.options.modes:
            local = outcomes(
                self.adapters.local_backend, adapter, items, {"adapter": told}, len(items), batch
            )
            out["local"] = local["adapter"]
        step = max(batch, 4 * self.options.concurrency * len(self.options.endpoints))
        out.update(outcomes(self.adapters.backend, adapter, items, requirements, step, step, served=True))
        return out


def outcomes(
    backend: Any,
    adapter: str,
    items: list[str],
    requirements: dict[str, list[str | None]],
    step: int,
    batch_size: int,
    served: bool = False,
) -> dict[str, list[Outcome]]:
    """Each mode's outcome for `items`, `step` items at a time (every mode on a step before the next).

    When a step fails, its items and those not yet checked keep the reason and nothing more is sent for them:
    a served check's ReqcheckError (the server's one sentence; in process it stops the run, raised), or
    anything else, which is a bug kept as its type and message. A case is tried once, never again with every
    later case. Served, each mode goes on its own: one mode's failure is only its own cases' error.
    """
    out: dict[str, list[Outcome]] = {mode: [] for mode in requirements}
    # in process the modes share each batch, so the judge reuses the contexts the adapter just cached
    groups = [[mode] for mode in requirements] if served else [list(requirements)]
    for start in range(0, len(items), step):
        for group in groups:
            if len(out[group[0]]) > start:  # failed at an earlier step: its cases keep that reason
                continue
            chunk = {mode: requirements[mode][start : start + step] for mode in group}
            try:
                done = predict(backend, adapter, items[start : start + step], chunk, batch_size)
            except ReqcheckError as exc:
                if not served:
                    raise
                reason = str(exc)
            except Exception as exc:  # a bug: each unchecked case fails with it, once, and the run goes on
                reason = plain_text(f"{type(exc).__name__}: {exc}", 400)
            else:
                for mode, predictions in done.items():
                    out[mode] += predictions
                continue
            for mode in group:
                out[mode] += [reason] * (len(items) - start)
    return out
