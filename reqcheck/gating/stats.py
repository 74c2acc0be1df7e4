"""The statistics behind the gate verdicts: exact, small formulas, so reqcheck needs no SciPy to run.

A rate (accuracy, recall) gets a Wilson score interval, which keeps its coverage near the nominal level
for the small test files and the rates near 1 that adapters reach (the normal approximation does not).
A paired difference (adapter against judge on the same cases, this run against a baseline on shared
cases) gets McNemar's exact test and the exact (Clopper-Pearson) interval of how the changed cases
split, the interval that inverts that test. Calibration is measured on the top label: expected
calibration error over equal-width bins, the multi-class Brier score and the reliability bins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

MAX_CASES = 10_000_000  # beyond this, "about how many cases" has no useful answer


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level (1.96 for 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a rate `successes / n`; [0, 1] when there are no cases."""
    if n <= 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - _log_beta(a, b)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * result


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _solve_increasing(function: Callable[[float], float], target: float) -> float:
    """The x in [0, 1] where an increasing function reaches `target` (bisection to float precision)."""
    low, high = 0.0, 1.0
    for _ in range(80):
        middle = (low + high) / 2
        if function(middle) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def beta_quantile(q: float, a: float, b: float) -> float:
    """The q-quantile of the Beta(a, b) distribution."""
    return _solve_increasing(lambda x: _betainc(a, b, x), q)


def exact_interval(successes: float, n: float, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate (counts may be fractional, for 'what if there were more cases')."""
    if n <= 0:
        return 0.0, 1.0
    alpha = 1 - confidence
    low = 0.0 if successes <= 0 else beta_quantile(alpha / 2, successes, n - successes + 1)
    high = 1.0 if successes >= n else beta_quantile(1 - alpha / 2, successes + 1, n - successes)
    return low, high


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided p-value of McNemar's exact test: the changed cases split as a fair coin would split them."""
    changed = wins + losses
    if changed == 0:
        return 1.0
    tail = sum(math.comb(changed, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / (1 << changed))


@dataclass(frozen=True)
class PairedDifference:
    """The difference of two accuracies on the same cases, with its interval and McNemar's p-value."""

    value: float
    low: float
    high: float
    p_value: float
    n: int
    wins: int
    losses: int


def paired_difference(wins: int, losses: int, n: int, confidence: float) -> PairedDifference:
    """Accuracy of B minus accuracy of A on n shared cases: `wins` B got right and A wrong, `losses` the reverse.

    The interval is conditional on the number of cases that changed: the exact interval of the share
    of them that are wins, mapped onto the difference. Its lower end is above 0 exactly when McNemar's
    exact test finds the difference at this confidence level.
    """
    if n <= 0:
        return PairedDifference(0.0, -1.0, 1.0, 1.0, 0, 0, 0)
    changed = wins + losses
    share_low, share_high = exact_interval(wins, changed, confidence) if changed else (0.5, 0.5)
    scale = changed / n
    return PairedDifference(
        value=(wins - losses) / n,
        low=scale * (2 * share_low - 1),
        high=scale * (2 * share_high - 1),
        p_value=mcnemar_exact(wins, losses),
        n=n,
        wins=wins,
        losses=losses,
    )


def _smallest_resolving(resolves: Callable[[float], bool], start: int) -> int | None:
    """The smallest case count from `start` on for which `resolves` holds (doubling, then bisection)."""
    low, high = start, max(start, 1)
    while not resolves(high):
        low, high = high, high * 2
        if high > MAX_CASES:
            return None
    while high - low > max(1, low // 100):
        middle = (low + high) // 2
        if resolves(middle):
            high = middle
        else:
            low = middle
    return high


def cases_needed_rate(rate: float, threshold: float, n: int, confidence: float) -> int | None:
    """About how many cases, at the rate observed, put the threshold outside the Wilson interval.

    None when no number would (the rate equals the threshold, or more than MAX_CASES are needed).
    """
    if rate == threshold:
        return None

    def resolves(cases: float) -> bool:
        low, high = wilson_interval(rate * cases, cases, confidence)
        return not low < threshold < high

    return _smallest_resolving(resolves, n)


def cases_needed_paired(difference: PairedDifference, threshold: float, confidence: float) -> int | None:
    """About how many shared cases, with the same share changing and the same split, resolve the threshold."""
    if difference.value == threshold or difference.n == 0:
        return None
    changed_share = (difference.wins + difference.losses) / difference.n
    win_share = difference.wins / (difference.wins + difference.losses) if changed_share else 0.5

    def resolves(cases: float) -> bool:
        changed = changed_share * cases
        low, high = exact_interval(win_share * changed, changed, confidence) if changed else (0.5, 0.5)
        return not changed_share * (2 * low - 1) < threshold < changed_share * (2 * high - 1)

    return _smallest_resolving(resolves, difference.n)


def calibration(
    expected: Sequence[str], probabilities: Sequence[dict[str, float]], bins: int = 10
) -> dict[str, object]:
    """Top-label calibration: ECE over `bins` equal-width confidence bins, Brier score, reliability bins.

    The Brier score is Brier's multi-class one, the mean over cases of the squared distance between the
    label distribution and the expected label's indicator (0 best, 2 worst; twice the one-label
    binary score for two labels).
    """
    counts = [0] * bins
    confidence_sums = [0.0] * bins
    correct_sums = [0] * bins
    brier = 0.0
    for truth, distribution in zip(expected, probabilities, strict=True):
        predicted = max(distribution, key=distribution.__getitem__)
        top = distribution[predicted]
        index = min(int(top * bins), bins - 1)
        counts[index] += 1
        confidence_sums[index] += top
        correct_sums[index] += predicted == truth
        brier += sum((p - (label == truth)) ** 2 for label, p in distribution.items())
    total = sum(counts)
    reliability = [
        {
            "low": i / bins,
            "high": (i + 1) / bins,
            "n": counts[i],
            "confidence": confidence_sums[i] / counts[i] if counts[i] else None,
            "accuracy": correct_sums[i] / counts[i] if counts[i] else None,
        }
        for i in range(bins)
    ]
    ece = sum(abs(correct_sums[i] - confidence_sums[i]) for i in range(bins)) / total if total else None
    return {"ece": ece, "brier": brier / total if total else None, "bins": reliability}
