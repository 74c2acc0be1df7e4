"""Checks spread over the replicas of a served checker, and the unfinished checks of a replica that failed.

Each live replica runs as many workers as it has requests in flight (its own limit); every worker takes the
next unchecked job from one shared queue, so a faster replica takes more. A replica that stops answering
(`Unreachable`: refused, dropped, busy or late past every retry) leaves the run: its job goes back to the
queue for the others, and `failed` keeps its one sentence for the report. When every replica has failed,
the call raises, and a later call tries them all again (a server that restarted serves again). One server
alone is never kept as failed: its sentence is the call's error, as it was before there were replicas.
Any other error (a server that answers wrongly) stops the call, raised: it would be wrong on another
replica too, or hide a lie.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Protocol, TypeVar

from reqcheck.checking.endpoint import Unreachable

Job = TypeVar("Job")
Result = TypeVar("Result")


class Worker(Protocol):
    """What spreading needs of a replica: its shown URL, its limit and its threads."""

    shown: str
    concurrency: int
    pool: ThreadPoolExecutor


def spread(
    replicas: Sequence[Worker],
    work: Callable[[Worker, Job], Result],
    jobs: Sequence[Job],
    failed: dict[str, str],
) -> list[Result]:
    """`work(replica, job)` for every job, in the jobs' order, on the replicas not in `failed` (URL -> why;
    all of them when every one is there)."""
    live = [r for r in replicas if r.shown not in failed] or list(replicas)
    results: list[Result | None] = [None] * len(jobs)
    queue = deque(range(len(jobs)))
    state = threading.Condition()
    running = [0]
    errors: list[tuple[int, BaseException]] = []
    down: dict[str, Unreachable] = {}  # the replicas that failed during this call

    def drain(replica: Worker) -> None:
        while True:
            with state:
                while not queue and running[0] and not errors:
                    state.wait()  # a job in flight elsewhere may come back from a replica that fails
                if errors or not queue or replica.shown in down:
                    return
                index = queue.popleft()
                running[0] += 1
            try:
                results[index] = work(replica, jobs[index])
            except Unreachable as exc:
                with state:
                    queue.appendleft(index)
                    down.setdefault(replica.shown, exc)
                    if len(replicas) > 1:
                        failed[replica.shown] = str(exc)
            except BaseException as exc:  # raised below, in the caller's thread
                with state:
                    errors.append((index, exc))
            finally:
                with state:
                    running[0] -= 1
                    state.notify_all()

    futures = [r.pool.submit(drain, r) for r in live for _ in range(r.concurrency)]
    wait(futures)
    for future in futures:
        future.result()
    if errors:
        raise min(errors, key=lambda pair: pair[0])[1]
    if queue:
        if len(replicas) == 1:
            raise next(iter(down.values()))
        first = next(iter(down.values()))
        raise Unreachable(
            f"Every one of the {len(replicas)} servers has failed ({', '.join(failed)}), so {len(queue)} "
            f"check(s) have no server left; the first to fail said: {str(first).rstrip('.')}; restart them, then rerun."
        )
    return results  # type: ignore[return-value]
