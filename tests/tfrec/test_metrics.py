import math

import numpy as np
import pytest

from tfrec import metrics


def pairwise_auc(y, s):
    """Brute force: share of (positive, negative) pairs ranked right, ties worth one half."""
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_auc_hand_computed():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([0, 1], [0.2, 0.9]) == 1.0
    assert metrics.auc([1, 0], [0.2, 0.9]) == 0.0


def test_auc_ties_count_one_half():
    # pos 0.5 vs neg 0.5 is a tie (1/2); the other three pairs are right: 3.5 / 4.
    assert metrics.auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)
    assert metrics.auc([0, 1, 1, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


def test_auc_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 10, 500).astype(float)  # heavy ties
    assert metrics.auc(y, s) == pytest.approx(pairwise_auc(y, s), abs=1e-12)


def test_auc_accepts_keras_column_output():
    assert metrics.auc(np.array([0, 1]), np.array([[0.1], [0.7]])) == 1.0


@pytest.mark.parametrize("y, s, message", [
    ([0, 1, 1], [0.1, 0.2], "same length"),
    ([1, 1, 1], [0.1, 0.2, 0.3], "both classes"),
    ([0, 1], [0.1, float("nan")], "NaN"),
    ([0, 2], [0.1, 0.2], "only 0 and 1"),
])
def test_auc_rejects_bad_input(y, s, message):
    with pytest.raises(ValueError, match=message):
        metrics.auc(y, s)


def test_gauc_weights_groups_by_impressions_and_skips_single_class_groups():
    # group a: AUC 1 over 2 rows; group b: AUC 1/4 over 4 rows (pos 0.2 beats neg 0.1 only);
    # group c has only a positive and is skipped. (2 * 1 + 4 * 0.25) / 6 = 0.5.
    y = [1, 0, 1, 0, 0, 1, 1]
    s = [0.9, 0.1, 0.2, 0.3, 0.1, 0.05, 0.5]
    g = ["a", "a", "b", "b", "b", "b", "c"]
    assert metrics.gauc(y, s, g) == pytest.approx(0.5)


def test_gauc_matches_per_group_brute_force_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    s = rng.integers(0, 5, 400).astype(float)
    g = rng.integers(0, 30, 400)
    num, den = 0.0, 0
    for group in np.unique(g):
        yg, sg = y[g == group], s[g == group]
        if 0 < yg.sum() < len(yg):
            num += len(yg) * pairwise_auc(yg, sg)
            den += len(yg)
    assert metrics.gauc(y, s, g) == pytest.approx(num / den, abs=1e-12)


def test_gauc_groups_of_ints_and_text_are_compared_as_text():
    """An object array of 5 and "u7" (a group column read apart) failed: '<' between 'str' and 'int'."""
    y, s = [1, 0, 1, 0, 1, 0], [0.9, 0.1, 0.2, 0.8, 0.7, 0.3]
    mixed = np.array([5, 5, "u7", "u7", "5", "5"], dtype=object)
    assert metrics.gauc(y, s, mixed) == pytest.approx(metrics.gauc(y, s, ["5", "5", "u7", "u7", "5", "5"]))


def test_gauc_errors():
    with pytest.raises(ValueError, match="none of the 2 group"):
        metrics.gauc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2])
    with pytest.raises(ValueError, match="groups must have the same length"):
        metrics.gauc([1, 0], [0.1, 0.2], [1])


def test_logloss_values_and_clipping():
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert metrics.logloss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    assert metrics.logloss([1, 0], [1.0, 0.0]) == pytest.approx(-math.log(1 - 1e-7))
    with pytest.raises(ValueError, match="NaN"):
        metrics.logloss([1], [float("nan")])
    with pytest.raises(ValueError, match="same length"):
        metrics.logloss([1, 0], [0.5])


def test_keras_metrics_names_values_and_config():
    auc_metric = metrics.AUC()
    assert auc_metric.name == "auc" and auc_metric.num_thresholds == 1000
    auc_metric.update_state([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert float(auc_metric.result()) == pytest.approx(0.75, abs=1e-3)
    restored = metrics.AUC.from_config(auc_metric.get_config())
    assert restored.num_thresholds == 1000 and restored.name == "auc"

    loss_metric = metrics.LogLoss()
    assert loss_metric.name == "logloss"
    loss_metric.update_state([[1.0], [0.0]], [[0.8], [0.4]])
    assert float(loss_metric.result()) == pytest.approx(metrics.logloss([1, 0], [0.8, 0.4]), rel=1e-5)


def test_weighted_metrics_equal_the_unweighted_ones_of_rows_repeated_by_their_weight():
    """A row of weight w counts as w rows (a downsampled log's kept negatives), ties included."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300) / 20.0  # many ties
    groups = rng.integers(0, 15, 300)
    w = rng.integers(0, 4, 300)  # 0 leaves a row out
    repeat = np.repeat(np.arange(300), w)
    assert metrics.auc(y, s, sample_weight=w) == pytest.approx(metrics.auc(y[repeat], s[repeat]), abs=1e-12)
    assert metrics.gauc(y, s, groups, sample_weight=w) == pytest.approx(
        metrics.gauc(y[repeat], s[repeat], groups[repeat]), abs=1e-12)
    assert metrics.logloss(y, s, sample_weight=w) == pytest.approx(metrics.logloss(y[repeat], s[repeat]), abs=1e-12)
    assert metrics.auc(y, s, sample_weight=np.ones(300)) == pytest.approx(metrics.auc(y, s), abs=1e-12)


@pytest.mark.parametrize("weights, message", [
    ([1.0, np.nan, 1.0, 1.0], "finite numbers >= 0"), ([1.0, -1.0, 1.0, 1.0], "finite numbers >= 0"),
    ([1.0, 1.0], "same length"), ([0.0, 0.0, 1.0, 1.0], r"both classes .*\(of weight > 0\)")])
def test_bad_sample_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        metrics.auc([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.1], sample_weight=weights)


def test_logloss_refuses_nan_labels():
    """A NaN label passed the [0, 1] range check (NaN compares False) and made the mean NaN."""
    with pytest.raises(ValueError, match="y_true contains 1 NaN"):
        metrics.logloss([np.nan, 1.0, 0.0], [0.5, 0.7, 0.2])


def weighted_pairwise_auc(y, s, w):
    """Brute force with weights: each (positive, negative) pair counts w_pos * w_neg; comparisons,
    not differences, so that inf against inf is a tie."""
    pos, neg = y == 1, y == 0
    pair = w[pos][:, None] * w[neg][None, :]
    above, tied = s[pos][:, None] > s[neg][None, :], s[pos][:, None] == s[neg][None, :]
    return (pair * above + 0.5 * pair * tied).sum() / pair.sum()


def test_auc_and_gauc_match_brute_force_with_infinite_scores_signed_zeros_and_weights():
    rng = np.random.default_rng(5)
    for trial in range(200):
        n = 30
        y = rng.integers(0, 2, n)
        y[:2] = (0, 1)
        s = rng.choice([-np.inf, np.inf, 0.0, -0.0, 1e-300, -1e300, 0.5], n)
        w = rng.choice([0.0, 0.5, 1.0, 3.0], n)
        w[:2] = 1.0
        groups = rng.integers(0, 4, n)
        assert metrics.auc(y, s, w) == pytest.approx(weighted_pairwise_auc(y, s, w), abs=1e-12)
        num = den = 0.0
        for group in np.unique(groups):
            m = groups == group
            size = w[m].sum()
            if w[m & (y == 1)].sum() > 0 and w[m & (y == 0)].sum() > 0:
                num, den = num + size * weighted_pairwise_auc(y[m], s[m], w[m]), den + size
        if den:
            assert metrics.gauc(y, s, groups, w) == pytest.approx(num / den, abs=1e-12)



@pytest.mark.parametrize("groups", [np.array([np.nan, np.nan, 1.0, 1.0, 2.0, 2.0]),
                                    np.array([None, None, "a", "a", "b", "b"], dtype=object)])
def test_gauc_refuses_missing_group_keys_instead_of_pooling_them(groups):
    """Rows of no group (NaN or None keys) were silently one more group: here its AUC of 1 raised
    GAUC from 0 (the two real groups) to 1/3."""
    y, s = [1, 0, 1, 0, 1, 0], [0.9, 0.1, 0.2, 0.8, 0.3, 0.4]
    with pytest.raises(ValueError, match=r"groups has 2 missing \(None or NaN\) key\(s\), the first in row 0"):
        metrics.gauc(y, s, groups)


def test_one_class_labels_raise_one_class_error_a_value_error():
    for call in (lambda: metrics.auc([1, 1], [0.2, 0.3]), lambda: metrics.gauc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 3])):
        with pytest.raises(metrics.OneClassError):
            call()
    assert issubclass(metrics.OneClassError, ValueError)
    with pytest.raises(ValueError) as error:  # other refusals stay plain ValueErrors
        metrics.auc([0, 1], [0.1, np.nan])
    assert not isinstance(error.value, metrics.OneClassError)
