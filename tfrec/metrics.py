"""Evaluation metrics: exact numpy AUC / GAUC / log loss, top-k retrieval metrics (recall,
hit rate, NDCG, an index's recall against exact search), and Keras metrics for `compile`.

The numpy functions are the reference numbers printed by benchmarks (model AUC next to the
planted-truth oracle AUC); they are exact (rank based, ties averaged), unlike the thresholded
streaming estimate of `tf.keras.metrics.AUC`, which is what training progress bars show.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd
import tensorflow as tf

__all__ = ["auc", "gauc", "logloss", "AUC", "LogLoss", "recall_at_k", "hit_rate_at_k", "ndcg_at_k",
           "index_recall", "top_k_indices", "OneClassError"]


class OneClassError(ValueError):
    """`auc` or `gauc` of labels of one class (per group, for `gauc`): the metric is undefined
    for the data, not for a mistake in the call. A ValueError, as every other refusal here."""


def _as_1d(values, what):
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        # Keras `predict` returns (n, 1) for a single binary output.
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D (n,) or (n, 1), got shape {array.shape}")
    return array


def _check_binary_inputs(y_true, y_score, score_name="y_score"):
    """Validates and returns (y_true as int 0/1, y_score as float64), both (n,)."""
    y_true = _as_1d(y_true, "y_true")
    y_score = _as_1d(y_score, score_name).astype(np.float64)
    if len(y_true) != len(y_score):
        raise ValueError(
            f"y_true and {score_name} must have the same length, got {len(y_true)} and {len(y_score)}"
        )
    if np.isnan(y_score).any():
        raise ValueError(f"{score_name} contains {int(np.isnan(y_score).sum())} NaN value(s)")
    if not np.isin(y_true, (0, 1)).all():
        bad = np.unique(y_true[~np.isin(y_true, (0, 1))])[:5]
        raise ValueError(f"y_true must hold only 0 and 1, found e.g. {bad.tolist()}")
    return y_true.astype(np.int64), y_score


def _checked_weights(sample_weight, n):
    """float64 (n,) weights, ones when `sample_weight` is None; a ValueError unless each is a
    finite number >= 0."""
    if sample_weight is None:
        return np.ones(n)
    weights = _as_1d(sample_weight, "sample_weight").astype(np.float64)
    if len(weights) != n:
        raise ValueError(f"sample_weight must have the same length as y_true, got {len(weights)} and {n}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must hold finite numbers >= 0")
    return weights


def _group_aucs(y_true, y_score, group_index, weights, groups):
    """(AUC of each of `groups` groups, its positives' weight, its negatives' weight): the weighted
    Mann-Whitney U of every group in one sort, a positive and a negative of equal score counting
    one half. The AUCs of groups lacking a class are NaN."""
    if not len(y_true):
        return np.full(groups, np.nan), np.zeros(groups), np.zeros(groups)
    order = np.lexsort((y_score, group_index))  # by group, then score
    group, score, label, weight = group_index[order], y_score[order], y_true[order], weights[order]
    new_group = np.r_[True, group[1:] != group[:-1]]
    new_block = new_group | np.r_[True, score[1:] != score[:-1]]  # a block: one group's equal scores
    block = np.cumsum(new_block) - 1
    block_pos = np.bincount(block, weights=weight * label)
    block_neg = np.bincount(block, weights=weight * (1 - label))
    block_group = group[new_block]
    # The negatives' weight below each block, within its group: a cumulative sum restarted per group.
    below = np.cumsum(block_neg) - block_neg
    first_block_of_group = np.maximum.accumulate(np.where(new_group[new_block], np.arange(len(block_pos)), 0))
    below -= below[first_block_of_group]
    won = np.bincount(block_group, weights=block_pos * (below + 0.5 * block_neg), minlength=groups)
    pos = np.bincount(block_group, weights=block_pos, minlength=groups)
    neg = np.bincount(block_group, weights=block_neg, minlength=groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return won / (pos * neg), pos, neg


def auc(y_true, y_score, sample_weight=None):
    """Exact ROC AUC (Mann-Whitney U), ties counted as one half.

    Args:
      y_true: (n,) or (n, 1) labels in {0, 1}.
      y_score: (n,) or (n, 1) scores, higher meaning more likely positive; no NaN.
      sample_weight: optional (n,) weights >= 0: each positive-negative pair counts the
        product of their weights (a row of weight 10 stands for 10 rows, e.g. a kept negative of
        a log downsampled to 10% of its negatives).

    Returns:
      float: the probability that a random positive scores above a random negative.

    Raises:
      ValueError: on a length mismatch, NaN scores, labels other than 0/1, or bad weights;
        OneClassError (a ValueError) when y_true holds a single class (of positive weight; AUC is
        undefined then).
    """
    y_true, y_score = _check_binary_inputs(y_true, y_score)
    weights = _checked_weights(sample_weight, len(y_true))
    (value,), (pos,), (neg,) = _group_aucs(y_true, y_score, np.zeros(len(y_true), np.int64), weights, 1)
    if not (pos > 0 and neg > 0):
        raise OneClassError(
            f"AUC needs both classes in y_true, got {int(y_true.sum())} positive(s) and "
            f"{int(len(y_true) - y_true.sum())} negative(s)" + ("" if sample_weight is None else " (of weight > 0)")
        )
    return float(value)


def gauc(y_true, y_score, groups, sample_weight=None):
    """Group AUC: per-group AUC averaged with weights = the group's impression count.

    The usual offline metric for personalised ranking (groups = users): it ignores how scores
    compare across users. Groups whose labels are all 0 or all 1 have no AUC and are skipped.

    Args:
      y_true: (n,) labels in {0, 1}.
      y_score: (n,) scores; no NaN.
      groups: (n,) group keys (ints or strings), e.g. user ids; in an object array, compared as
        text (5 and "5" are one group). None or NaN is no key: such a row is refused, not pooled
        with the other rows of no group into one.
      sample_weight: optional (n,) weights >= 0: each group's AUC is weighted (see `auc`) and
        counts its rows' total weight instead of its row count.

    Returns:
      float: sum_g n_g * AUC_g / sum_g n_g over groups with both classes.

    Raises:
      ValueError: on length mismatches, NaN scores, bad weights or missing (None / NaN) group
        keys; OneClassError (a ValueError) when no group has both classes.
    """
    y_true, y_score = _check_binary_inputs(y_true, y_score)
    groups = _as_1d(groups, "groups")
    missing = pd.isna(groups)
    if missing.any():
        raise ValueError(f"groups has {int(missing.sum())} missing (None or NaN) key(s), the first in row "
                         f"{int(np.argmax(missing))}; give those rows a group or leave them out")
    if groups.dtype == object:  # ints and text (5 and "u7": files read apart) sort only as text, 5 as "5"
        groups = groups.astype(str)
    if len(groups) != len(y_true):
        raise ValueError(
            f"groups must have the same length as y_true, got {len(groups)} and {len(y_true)}"
        )
    weights = _checked_weights(sample_weight, len(y_true))
    keys, group_index = np.unique(groups, return_inverse=True)
    group_aucs, pos, neg = _group_aucs(y_true, y_score, group_index.reshape(-1), weights, len(keys))
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        raise OneClassError(
            f"GAUC needs at least one group with both a positive and a negative label; none of "
            f"the {len(pos)} group(s) has both"
        )
    size = pos[valid] + neg[valid]
    return float(np.sum(group_aucs[valid] * size) / np.sum(size))


def logloss(y_true, y_pred, eps=1e-7, sample_weight=None):
    """Mean binary cross-entropy of probabilities `y_pred`, clipped to [eps, 1 - eps].

    Args:
      y_true: (n,) labels in [0, 1] (soft labels allowed).
      y_pred: (n,) predicted probabilities; no NaN.
      eps: clipping that keeps log finite for predictions of exactly 0 or 1.
      sample_weight: optional (n,) weights >= 0, not all 0: the mean is weighted,
        sum(w * loss) / sum(w) (Keras' `weighted_metrics` LogLoss; its `loss` divides by n).

    Returns:
      float: -mean(y log p + (1 - y) log(1 - p)).
    """
    y_true = _as_1d(y_true, "y_true").astype(np.float64)
    y_pred = _as_1d(y_pred, "y_pred").astype(np.float64)
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred must have the same length, got {len(y_true)} and {len(y_pred)}"
        )
    if len(y_true) == 0:
        raise ValueError("logloss of an empty array is undefined")
    if np.isnan(y_pred).any():
        raise ValueError(f"y_pred contains {int(np.isnan(y_pred).sum())} NaN value(s)")
    if np.isnan(y_true).any():  # the range check below lets NaN through, and the mean would be NaN
        raise ValueError(f"y_true contains {int(np.isnan(y_true).sum())} NaN value(s)")
    if ((y_true < 0) | (y_true > 1)).any():
        raise ValueError("y_true must lie in [0, 1]")
    weights = _checked_weights(sample_weight, len(y_true))
    if not weights.sum() > 0:
        raise ValueError("logloss with sample weights that are all 0 is undefined")
    p = np.clip(y_pred, eps, 1.0 - eps)
    return float(-np.average(y_true * np.log(p) + (1.0 - y_true) * np.log(1.0 - p), weights=weights))


@tf.keras.utils.register_keras_serializable(package="tfrec")
class AUC(tf.keras.metrics.AUC):
    """`tf.keras.metrics.AUC` named "auc" with 1000 thresholds (Keras' 200 is coarse for CTR).

    Streaming and approximate (thresholded); use `tfrec.metrics.auc` for the exact number.
    """

    def __init__(self, num_thresholds=1000, name="auc", **kwargs):
        super().__init__(num_thresholds=num_thresholds, name=name, **kwargs)


@tf.keras.utils.register_keras_serializable(package="tfrec")
class LogLoss(tf.keras.metrics.BinaryCrossentropy):
    """`tf.keras.metrics.BinaryCrossentropy` named "logloss", as CTR papers report it."""

    def __init__(self, name="logloss", **kwargs):
        super().__init__(name=name, **kwargs)


# --- Top-k retrieval metrics -------------------------------------------------------------------
#
# A retrieval model ranks the whole catalogue for each query (a user at a point in time) and is
# judged by its first k items. The leave-last-out test has one held-out item per row; the
# functions also take several true items per row. Ids are compared by value (ints or strings),
# so ranked lists must hold the same ids as the truth, not embedding-table rows or other indices.


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    return int(k)


def _top_k_columns(ranked, k, what):
    """The first k columns of a 2-D (n, >= k) array of ids."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, >= k ids, best first), got shape {ranked.shape}")
    if ranked.shape[1] < k:
        raise ValueError(f"{what} needs at least k={k} ids per row, got {ranked.shape[1]}")
    return ranked[:, :k]


def _is_cell(value):
    return isinstance(value, (list, tuple, np.ndarray, pd.Series))


def _true_ids(true_items):
    """(row of each true id, the ids flat, number of rows) from one id per row, (n, m), or n lists."""
    if isinstance(true_items, pd.Series):
        true_items = true_items.to_numpy()
    if isinstance(true_items, np.ndarray):
        if true_items.ndim == 2:
            n, m = true_items.shape
            return np.repeat(np.arange(n), m), true_items.reshape(-1), n
        if true_items.ndim != 1:
            raise ValueError(f"true_items must be 1-D (one id per row), 2-D (several per row) or a sequence "
                             f"of lists, got shape {true_items.shape}")
        if true_items.dtype != object:
            return np.arange(len(true_items)), true_items, len(true_items)
    cells = list(true_items)
    if not any(_is_cell(c) for c in cells):
        values = np.asarray(cells)
        if values.dtype.kind in "US":
            values = values.astype(object)
        return np.arange(len(cells)), values, len(cells)
    lengths = np.array([len(c) if _is_cell(c) else 1 for c in cells], dtype=np.int64)
    values = np.concatenate([np.asarray(c, dtype=object).reshape(-1) if _is_cell(c) else np.asarray([c], dtype=object)
                             for c in cells])
    return np.repeat(np.arange(len(cells)), lengths), values, len(cells)


def _id_kind(values):
    """'number', 'text' or None (empty / unknown): ids of different kinds never match."""
    if values.dtype.kind in "biuf":
        return "number"
    if values.dtype.kind in "US":
        return "text"
    for value in values[:1]:
        if isinstance(value, (str, bytes)):
            return "text"
        if isinstance(value, (int, float, np.number)):
            return "number"
    return None


def _as_str(values):
    """A 1-D id array with its bytes ids decoded (UTF-8) to str; other arrays unchanged."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8").astype(object)
    if values.dtype == object and any(isinstance(value, bytes) for value in values):
        return np.array([value.decode("utf-8") if isinstance(value, bytes) else value for value in values],
                        dtype=object)
    return values


def _ranking_hits(true_items, ranked_items, k, what="ranked_items"):
    """(hits (n, k) bool, number of distinct true ids per row (n,)).

    hits[r, j] is True where ranked_items[r, j] is one of row r's true ids and its first
    occurrence in the row's top k (a repeated id counts once).
    """
    k = _check_k(k)
    ranked = _top_k_columns(ranked_items, k, what)
    true_rows, true_values, n = _true_ids(true_items)
    if len(ranked) != n:
        raise ValueError(f"true_items and {what} must have one row per query, got {n} and {len(ranked)} rows")
    if n == 0:
        raise ValueError("top-k metrics of zero rows are undefined")
    kinds = {_id_kind(true_values), _id_kind(ranked.reshape(-1))} - {None}
    if len(kinds) > 1:
        raise ValueError(f"true_items and {what} must hold ids of the same kind (both ints or both strings), "
                         f"got {true_values.dtype} and {ranked.dtype}")
    # Ids -> codes (hash-based, any hashable ids), then one int64 key per (row, id); a served
    # string id comes back as bytes, so text ids are compared as str.
    codes, uniques = pd.factorize(np.concatenate([_as_str(true_values), _as_str(ranked.reshape(-1))]))
    if (codes < 0).any():
        raise ValueError("true_items and ranked ids must not be None or NaN")
    width = len(uniques)
    true_keys = np.unique(true_rows * width + codes[:len(true_values)])
    num_true = np.bincount(true_keys // width, minlength=n)
    if (num_true == 0).any():
        raise ValueError(f"every row needs at least one true id; row {int(np.argmax(num_true == 0))} has none")
    ranked_keys = np.arange(n)[:, None] * width + codes[len(true_values):].reshape(n, k)
    first = np.zeros(n * k, dtype=bool)
    first[np.unique(ranked_keys.reshape(-1), return_index=True)[1]] = True
    hits = first.reshape(n, k) & np.isin(ranked_keys, true_keys)
    return hits, num_true


def recall_at_k(true_items, ranked_items, k):
    """Mean over rows of |true ids in the top k| / |true ids|: recall@k.

    With one held-out item per row (leave-last-out) this is the share of rows whose item is among
    the first k ranked ids, the same number as `hit_rate_at_k`.

    Args:
      true_items: (n,) one true id per row; (n, m) m per row; or a sequence of n lists / arrays
        (any lengths >= 1). Duplicate true ids of a row count once.
      ranked_items: (n, >= k) ids, best first; only the first k columns are read, and an id
        repeated within them counts once.
      k: cut-off (int >= 1).

    Returns:
      float in [0, 1].

    Raises:
      ValueError: k < 1, fewer than k ranked columns, a row-count mismatch, a row without true ids,
        or ids of different kinds (ints against strings).
    """
    hits, num_true = _ranking_hits(true_items, ranked_items, k)
    return float(np.mean(hits.sum(axis=1) / num_true))


def hit_rate_at_k(true_items, ranked_items, k):
    """Share of rows with at least one true id in the top k: hit@k (HR@k).

    Arguments as for `recall_at_k`; equal to it when every row has one true id.
    """
    hits, _ = _ranking_hits(true_items, ranked_items, k)
    return float(np.mean(hits.any(axis=1)))


def ndcg_at_k(true_items, ranked_items, k):
    """Mean over rows of DCG@k / IDCG@k with binary relevance: NDCG@k.

    DCG@k = sum over positions j = 1..k holding a true id of 1 / log2(j + 1); IDCG@k is the DCG of
    a perfect ranking, sum_{j=1..min(|true ids|, k)} 1 / log2(j + 1). With one true id per row
    this is 1 / log2(rank + 1) if the item's rank is <= k, else 0. Arguments as for `recall_at_k`.
    """
    hits, num_true = _ranking_hits(true_items, ranked_items, k)
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    ideal = np.cumsum(discount)[np.minimum(num_true, hits.shape[1]) - 1]
    return float(np.mean((hits * discount).sum(axis=1) / ideal))


def index_recall(approx_ids, exact_ids, k):
    """Mean over queries of the share of the exact top-k ids that the approximate top k found.

    The quality figure of an approximate nearest-neighbour index (IVF, HNSW, quantised): for each
    query, |approx[:k] and exact[:k]| / |exact[:k]| (distinct ids), averaged over queries. Ids
    that only the approximate search returns (or its padding, e.g. -1) count nothing. When
    scores tie at the k-th place, exact search's choice among the tied ids is arbitrary, and so
    is the approximate one's: expect index_recall slightly below 1 even for an exact index.

    Args:
      approx_ids: (n, >= k) ids returned by the index, best first.
      exact_ids: (n, >= k) ids of exact (brute-force) search for the same queries, best first.
      k: cut-off (int >= 1).

    Returns:
      float in [0, 1].

    Raises:
      ValueError: on k < 1, fewer than k columns, or a query-count mismatch.
    """
    k = _check_k(k)
    exact = _top_k_columns(exact_ids, k, "exact_ids")
    approx = _top_k_columns(approx_ids, k, "approx_ids")
    if len(approx) != len(exact):
        raise ValueError(f"approx_ids and exact_ids must have one row per query, got {len(approx)} and "
                         f"{len(exact)} rows")
    hits, num_true = _ranking_hits(exact, approx, k, what="approx_ids")
    return float(np.mean(hits.sum(axis=1) / num_true))


def top_k_indices(scores, k):
    """(n, k) column indices of each row's k highest scores, best first; ties go to the lower index.

    A partial selection (np.argpartition) and a sort of the k selected per row, O(n * m + n * k
    log k); ties at the k-th place are resolved towards the lower index as well, so the result
    equals a stable descending sort's first k columns. Map the indices to ids with
    `item_ids[top_k_indices(scores, k)]`.

    Raises:
      ValueError: scores not 2-D, k < 1 or above the number of columns, or NaN scores.
    """
    k = _check_k(k)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (rows, items), got shape {scores.shape}")
    if k > scores.shape[1]:
        raise ValueError(f"k={k} exceeds the {scores.shape[1]} scored items")
    if np.isnan(scores).any():
        raise ValueError(f"scores contain {int(np.isnan(scores).sum())} NaN value(s)")
    n = len(scores)
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    negated = -scores
    selected = np.argpartition(negated, k - 1, axis=1)[:, :k]
    threshold = np.take_along_axis(negated, selected, axis=1).max(axis=1, keepdims=True)  # the k-th best
    better = negated < threshold
    tied = negated == threshold
    # All strictly better columns, then the lowest-index tied ones up to k in total.
    chosen = better | (tied & (np.cumsum(tied, axis=1) <= k - better.sum(axis=1, keepdims=True)))
    columns = np.nonzero(chosen)[1].reshape(n, k)  # ascending column order within each row
    order = np.argsort(np.take_along_axis(negated, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)
