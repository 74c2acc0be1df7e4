"""The gate's statistics against SciPy, the reference implementation (a test dependency only)."""

import pytest
from scipy import stats as scipy_stats

from reqcheck.gating import stats

COUNTS = [(0, 5), (1, 1), (3, 10), (39, 40), (78, 80), (80, 80), (500, 1000), (1, 1000)]


@pytest.mark.parametrize(("successes", "n"), COUNTS)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_interval_matches_scipy(successes: int, n: int, confidence: float) -> None:
    reference = scipy_stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")
    assert stats.wilson_interval(successes, n, confidence) == pytest.approx(
        (reference.low, reference.high), abs=1e-12
    )


def test_an_accuracy_of_0975_on_80_cases_is_roughly_091_to_099() -> None:
    low, high = stats.wilson_interval(78, 80, 0.95)
    assert (round(low, 2), round(high, 2)) == (0.91, 0.99)


def test_a_rate_without_cases_says_nothing() -> None:
    assert stats.wilson_interval(0, 0, 0.95) == (0.0, 1.0)


@pytest.mark.parametrize(("successes", "n"), COUNTS)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_exact_interval_matches_scipy_clopper_pearson(successes: int, n: int, confidence: float) -> None:
    reference = scipy_stats.binomtest(successes, n).proportion_ci(confidence, method="exact")
    assert stats.exact_interval(successes, n, confidence) == pytest.approx(
        (reference.low, reference.high), abs=1e-9
    )


@pytest.mark.parametrize(("q", "a", "b"), [(0.025, 2.5, 7.25), (0.975, 40.5, 1.5), (0.5, 0.3, 900.0)])
def test_beta_quantile_matches_scipy_for_fractional_counts(q: float, a: float, b: float) -> None:
    assert stats.beta_quantile(q, a, b) == pytest.approx(scipy_stats.beta.ppf(q, a, b), abs=1e-10)


@pytest.mark.parametrize(("wins", "losses"), [(0, 0), (1, 0), (0, 8), (3, 5), (30, 50), (12, 2), (200, 260)])
def test_mcnemar_exact_matches_scipy_binomial_test(wins: int, losses: int) -> None:
    expected = 1.0 if wins + losses == 0 else scipy_stats.binomtest(wins, wins + losses, 0.5).pvalue
    assert stats.mcnemar_exact(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_worked_example() -> None:
    # Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, Table 1 (Bentur et al.): 1 and 7
    # discordant pairs among 21 children; the exact conditional test, 2 * binomcdf(1, 8, 0.5), is 0.070.
    assert stats.mcnemar_exact(1, 7) == 2 * 9 / 256
    assert round(stats.mcnemar_exact(7, 1), 3) == 0.070


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_a_paired_difference_lies_above_zero_exactly_when_mcnemar_finds_it(confidence: float) -> None:
    for wins in range(0, 16):
        for losses in range(0, 16):
            difference = stats.paired_difference(wins, losses, 80, confidence)
            assert difference.low <= difference.value <= difference.high
            significant = difference.p_value < 1 - confidence
            excludes_zero = difference.low > 0 or difference.high < 0
            assert excludes_zero == significant, (wins, losses)


def test_one_flip_in_80_cases_is_noise_and_eight_are_a_drop() -> None:
    flip = stats.paired_difference(0, 1, 80, 0.95)
    assert flip.value == -1 / 80 and flip.low < 0 < flip.high and flip.p_value == 1.0
    drop = stats.paired_difference(0, 8, 80, 0.95)
    assert drop.high < 0 and drop.p_value == pytest.approx(2 * 0.5**8)


@pytest.mark.parametrize(("rate", "threshold", "n"), [(0.925, 0.9, 80), (0.85, 0.9, 40), (0.96, 0.95, 200)])
def test_cases_needed_is_where_the_interval_starts_to_leave_the_threshold_out(
    rate: float, threshold: float, n: int
) -> None:
    low, high = stats.wilson_interval(rate * n, n, 0.95)
    assert low < threshold < high  # unresolved now
    needed = stats.cases_needed_rate(rate, threshold, n, 0.95)
    assert needed is not None and needed > n
    low, high = stats.wilson_interval(rate * needed, needed, 0.95)
    assert not low < threshold < high
    fewer = int(needed * 0.97)
    low, high = stats.wilson_interval(rate * fewer, fewer, 0.95)
    assert low < threshold < high


def test_no_number_of_cases_resolves_a_rate_equal_to_its_threshold() -> None:
    assert stats.cases_needed_rate(0.9, 0.9, 80, 0.95) is None


def test_cases_needed_for_a_paired_difference_resolves_it() -> None:
    difference = stats.paired_difference(2, 5, 80, 0.95)
    assert difference.low < 0 < difference.high
    needed = stats.cases_needed_paired(difference, 0.0, 0.95)
    assert needed is not None and needed > 80
    scale = needed / 80
    bigger = stats.paired_difference(round(2 * scale), round(5 * scale), needed, 0.95)
    assert bigger.high < 0.005  # at that size the same split is (about) a significant drop


def test_calibration_of_a_hand_computed_example() -> None:
    expected = ["yes", "yes", "no", "no"]
    probabilities = [
        {"yes": 0.95, "no": 0.05},  # bin 9, right
        {"yes": 0.35, "no": 0.65},  # bin 6, wrong
        {"yes": 0.25, "no": 0.75},  # bin 7, right
        {"yes": 0.61, "no": 0.39},  # bin 6, wrong
    ]
    result = stats.calibration(expected, probabilities)
    # ECE: bin 6 holds 0.65 and 0.61 (accuracy 0) -> 2 * 0.63; bin 7: |1 - 0.75|; bin 9: |1 - 0.95|
    assert result["ece"] == pytest.approx((2 * 0.63 + 0.25 + 0.05) / 4)
    # Brier (multi-class): sum over labels of squared error, averaged over cases
    brier = (2 * 0.05**2 + 2 * 0.65**2 + 2 * 0.25**2 + 2 * 0.61**2) / 4
    assert result["brier"] == pytest.approx(brier)
    bins = {i: b for i, b in enumerate(result["bins"]) if b["n"]}
    assert {i: b["n"] for i, b in bins.items()} == {6: 2, 7: 1, 9: 1}
    assert bins[6]["confidence"] == pytest.approx(0.63) and bins[6]["accuracy"] == 0.0
    assert result["bins"][0]["confidence"] is None


def test_a_certain_prediction_falls_in_the_last_bin() -> None:
    result = stats.calibration(["yes"], [{"yes": 1.0, "no": 0.0}])
    assert result["bins"][-1]["n"] == 1 and result["ece"] == 0.0 and result["brier"] == 0.0
