"""Paired tests (against scipy and hand-computed values) and Holm's correction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mmkgrec.errors import ConfigError
from mmkgrec.experiments.significance import holm, paired_tests


def test_paired_tests_match_scipy_on_random_per_user_values():
    rng = np.random.default_rng(0)
    a = rng.random(200)  # [n_users]
    b = np.clip(a - 0.05 + 0.1 * rng.standard_normal(200), 0, 1)
    result = paired_tests(a, b)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-12)
    assert result["ttest_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert result["mean_diff"] == pytest.approx(np.mean(a - b))
    assert result["n_users"] == 200
    assert result["wilcoxon_p"] < 1e-3  # a real shift of 0.05 over 200 users is detected


def test_paired_tests_hand_computed_small_case():
    a, b = np.array([2.0, 4, 6, 8, 10]), np.array([1.0, 2, 3, 4, 5])  # diffs 1..5, all > 0
    result = paired_tests(a, b)
    # exact signed-rank null: 2^5 sign patterns, W+ = 15 only for all-positive -> 2 * 1/32
    assert result["wilcoxon_p"] == pytest.approx(2 / 32)
    # t = mean / (sd / sqrt(n)) = 3 / (sqrt(2.5) / sqrt(5)) = 4.2426, df 4
    t = 3 / (np.sqrt(2.5) / np.sqrt(5))
    assert result["ttest_p"] == pytest.approx(2 * stats.t.sf(t, 4))
    assert result["ttest_p"] == pytest.approx(0.01324, abs=1e-5)
    assert result["mean_diff"] == 3.0


def test_identical_and_constant_differences():
    a = np.array([0.25, 0.5, 0.125])
    same = paired_tests(a, a.copy())
    assert same["wilcoxon_p"] == 1.0 and same["ttest_p"] == 1.0 and same["mean_diff"] == 0.0
    shifted = paired_tests(a + 0.5, a)  # t is infinite: the difference is certain
    assert shifted["ttest_p"] == 0.0
    assert np.isnan(paired_tests([1.0], [0.0])["wilcoxon_p"])


@pytest.mark.parametrize(("a", "b"), [([1.0, 2.0], [1.0]), ([[1.0, 2.0]], [[1.0, 2.0]]),
                                      ([1.0, np.nan], [1.0, 2.0])])
def test_bad_inputs_raise_config_errors(a, b):
    with pytest.raises(ConfigError):
        paired_tests(a, b)


def test_holm_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> cummax
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_keeps_nan_and_handles_trivial_inputs():
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.01, np.nan, 0.02]), [0.02, np.nan, 0.02])  # m = 2
    np.testing.assert_allclose(holm([0.2]), [0.2])
    assert holm([]).shape == (0,)
    with pytest.raises(ConfigError):
        holm([0.5, 1.5])


def test_holm_rejects_what_bonferroni_rejects_and_never_less():
    rng = np.random.default_rng(1)
    p = rng.random(12) ** 3
    adjusted = holm(p)
    assert (adjusted <= np.minimum(1, p * len(p)) + 1e-15).all()  # no more conservative
    assert (adjusted >= p).all()
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all()  # monotone in the raw p-values
