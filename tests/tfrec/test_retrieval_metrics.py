import math

import numpy as np
import pandas as pd
import pytest

from tfrec import metrics


def brute_force(true_items, ranked_items, k):
    """(recall, hit, ndcg) per row, by the definitions, with Python sets."""
    recalls, hits, ndcgs = [], [], []
    for truth, ranked in zip(true_items, ranked_items):
        truth = set(truth) if isinstance(truth, (list, tuple, np.ndarray)) else {truth}
        seen, found, dcg = set(), 0, 0.0
        for position, item in enumerate(list(ranked)[:k]):
            if item in truth and item not in seen:
                found += 1
                dcg += 1.0 / math.log2(position + 2)
            seen.add(item)
        ideal = sum(1.0 / math.log2(j + 2) for j in range(min(len(truth), k)))
        recalls.append(found / len(truth))
        hits.append(float(found > 0))
        ndcgs.append(dcg / ideal)
    return np.mean(recalls), np.mean(hits), np.mean(ndcgs)


def test_leave_one_out_hand_computed():
    true = [1, 2, 3, 4]
    ranked = [[1, 5, 6], [5, 2, 6], [5, 6, 3], [5, 6, 7]]
    # Ranks 1, 2, 3 and a miss.
    assert metrics.recall_at_k(true, ranked, 3) == pytest.approx(0.75)
    assert metrics.hit_rate_at_k(true, ranked, 3) == pytest.approx(0.75)
    assert metrics.ndcg_at_k(true, ranked, 3) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(4)) / 4)
    # Only the first k columns count.
    assert metrics.recall_at_k(true, ranked, 1) == pytest.approx(0.25)
    assert metrics.ndcg_at_k(true, ranked, 2) == pytest.approx((1 + 1 / math.log2(3)) / 4)


def test_several_true_items_per_row():
    # Row 0: {1, 2} found at ranks 1 and 3; row 1: {3} found at rank 1 (then repeated); row 2: 1 of 3.
    true = [[1, 2], [3], [7, 8, 9]]
    ranked = [[2, 9, 1, 4], [3, 3, 4, 5], [0, 9, 5, 6]]
    assert metrics.recall_at_k(true, ranked, 3) == pytest.approx((1 + 1 + 1 / 3) / 3)
    assert metrics.hit_rate_at_k(true, ranked, 3) == pytest.approx(1.0)
    ndcg_0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert metrics.ndcg_at_k(true, ranked, 3) == pytest.approx((ndcg_0 + 1 + ndcg_2) / 3)
    # A 2-D array is m true ids per row; duplicates among them count once.
    assert metrics.recall_at_k(np.array([[1, 1], [5, 6]]), [[1, 2], [6, 7]], 2) == pytest.approx(0.75)


def test_repeated_ranked_ids_count_once():
    assert metrics.recall_at_k([[1, 2]], [[1, 1, 1]], 3) == pytest.approx(0.5)
    assert metrics.ndcg_at_k([[1, 2]], [[1, 1, 2]], 3) == pytest.approx(
        (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_matches_brute_force_on_random_rankings():
    rng = np.random.default_rng(0)
    ranked = rng.integers(0, 30, (200, 20))  # repeats within rows on purpose
    single = rng.integers(0, 30, 200)
    several = [rng.integers(0, 30, rng.integers(1, 6)) for _ in range(200)]
    for true in (single, several):
        for k in (1, 5, 20):
            expected = brute_force(true, ranked, k)
            got = (metrics.recall_at_k(true, ranked, k), metrics.hit_rate_at_k(true, ranked, k),
                   metrics.ndcg_at_k(true, ranked, k))
            np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_string_ids_series_and_object_arrays():
    true = pd.Series(["i1", "i7", "i3"])
    ranked = np.array([["i1", "i2"], ["i2", "i7"], ["i9", "i8"]], dtype=object)
    assert metrics.recall_at_k(true, ranked, 2) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(true.to_numpy(), ranked.astype(str), 2) == pytest.approx(2 / 3)
    # A Series of arrays (a sequence column) is several true ids per row.
    cells = pd.Series([np.array(["i1", "i5"]), np.array(["i7"]), np.array(["i4"])])
    assert metrics.recall_at_k(cells, ranked, 2) == pytest.approx((0.5 + 1 + 0) / 3)
    # A served string id comes back as bytes (TF Serving's DT_STRING): it matches its str.
    served = np.array([[value.encode() for value in row] for row in ranked], dtype=object)
    assert metrics.recall_at_k(true, served, 2) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(true, served.astype(bytes), 2) == pytest.approx(2 / 3)


@pytest.mark.parametrize("true, ranked, k, message", [
    ([1, 2], [[1, 2]], 1, "one row per query"),
    ([1, 2], [[1], [2]], 2, "at least k=2 ids"),
    ([1, 2], [1, 2], 1, "must be 2-D"),
    ([1], [[1]], 0, "k must be an int >= 1"),
    ([1], [[1]], 1.5, "k must be an int >= 1"),
    ([[1], []], [[1], [2]], 1, "at least one true id"),
    (["i1"], [[1]], 1, "same kind"),
    ([], np.zeros((0, 3)), 1, "zero rows"),
])
def test_bad_input_is_named(true, ranked, k, message):
    for metric in (metrics.recall_at_k, metrics.hit_rate_at_k, metrics.ndcg_at_k):
        with pytest.raises(ValueError, match=message):
            metric(true, ranked, k)


def test_index_recall():
    exact = [[1, 2, 3, 9], [4, 5, 6, 9]]
    # Row 0 finds 2 of the exact top 3 (padding -1 counts nothing); row 1 all 3, in another order.
    assert metrics.index_recall([[1, 2, -1], [6, 5, 4]], exact, 3) == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.index_recall(exact, exact, 4) == 1.0
    # Only the first k columns of either side count.
    assert metrics.index_recall([[9, 8, 7, 1]], [[1, 2, 3, 4]], 3) == 0.0
    with pytest.raises(ValueError, match="one row per query"):
        metrics.index_recall([[1, 2]], [[1, 2], [3, 4]], 2)
    with pytest.raises(ValueError, match="exact_ids needs at least k=3"):
        metrics.index_recall([[1, 2, 3]], [[1, 2]], 3)
    with pytest.raises(ValueError, match="approx_ids needs at least k=3"):
        metrics.index_recall([[1, 2]], [[1, 2, 3]], 3)


def test_top_k_indices_is_a_stable_descending_sort():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 3.0, 3.0, 1.0]])
    np.testing.assert_array_equal(metrics.top_k_indices(scores, 3), [[1, 3, 2], [0, 1, 2]])
    np.testing.assert_array_equal(metrics.top_k_indices(scores, 2), [[1, 3], [0, 1]])
    rng = np.random.default_rng(1)
    for _ in range(50):
        scores = rng.integers(0, 4, (6, 15)).astype(float)  # many ties at the cut-off
        k = int(rng.integers(1, 16))
        np.testing.assert_array_equal(metrics.top_k_indices(scores, k),
                                      np.argsort(-scores, axis=1, kind="stable")[:, :k])
    with pytest.raises(ValueError, match="exceeds"):
        metrics.top_k_indices(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="NaN"):
        metrics.top_k_indices(np.array([[np.nan, 1.0]]), 1)
    with pytest.raises(ValueError, match="2-D"):
        metrics.top_k_indices(np.zeros(3), 1)
