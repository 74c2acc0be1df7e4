"""What a training run tells its user while it runs: step, loss and eta lines at most every
PROGRESS_EVERY seconds, and the seconds each phase took (so a benchmark can say where time goes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

Reporter = Callable[[str], None]
PROGRESS_EVERY = 2.0  # seconds between progress lines of training steps and of validation batches


def due(last: float, now: float) -> bool:
    """Whether a progress line is due: more than PROGRESS_EVERY seconds since the last one."""
    return now - last > PROGRESS_EVERY


def format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Stopwatch:
    """Seconds per phase of a run, so a benchmark can say where training time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began


class Progress:
    """Step, loss and eta lines, at most every 2 s and at each epoch's last step; tokens and time trained."""

    def __init__(self, report: Reporter, epochs: int, first_epoch: int) -> None:
        self.report, self.epochs, self.first_epoch = report, epochs, first_epoch
        self.tokens, self.seconds = 0, 0.0  # over this process's epochs
        self.epoch, self.steps, self.started, self.last = first_epoch, 0, 0.0, 0.0

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps = epoch, steps
        self.started, self.last = time.perf_counter(), 0.0

    def step(self, index: int, loss: float) -> None:
        now = time.perf_counter()
        if not due(self.last, now) and index + 1 != self.steps:
            return
        self.last = now
        done = (self.epoch - self.first_epoch) * self.steps + index + 1
        remaining = (self.epochs - self.first_epoch) * self.steps - done
        eta = (self.seconds + now - self.started) / done * remaining
        self.report(
            f"epoch {self.epoch + 1}/{self.epochs} step {index + 1}/{self.steps} "
            f"loss {loss:.4f} eta {format_eta(eta)}"
        )

    def end_epoch(self) -> None:
        self.seconds += time.perf_counter() - self.started
