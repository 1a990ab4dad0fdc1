"""Evaluation metrics: exact numpy AUC / GAUC / log loss, and Keras metrics for `compile`.

The numpy functions are the reference numbers printed by benchmarks (model AUC next to the
planted-truth oracle AUC); they are exact (rank based, ties averaged), unlike the thresholded
streaming estimate of `tf.keras.metrics.AUC`, which is what training progress bars show.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import tensorflow as tf

__all__ = ["auc", "gauc", "logloss", "AUC", "LogLoss"]


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


def _average_ranks(values):
    """1-based ranks of `values`, tied values sharing the mean of their ranks. (n,) -> (n,)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank_of_value = np.cumsum(counts)
    mean_rank_of_value = last_rank_of_value - (counts - 1) / 2.0
    return mean_rank_of_value[inverse]


def auc(y_true, y_score):
    """Exact ROC AUC (Mann-Whitney U), ties counted as one half.

    Args:
      y_true: (n,) or (n, 1) labels in {0, 1}.
      y_score: (n,) or (n, 1) scores, higher meaning more likely positive; no NaN.

    Returns:
      float: the probability that a random positive scores above a random negative.

    Raises:
      ValueError: on a length mismatch, NaN scores, labels other than 0/1, or when y_true
        holds a single class (AUC is undefined then).
    """
    y_true, y_score = _check_binary_inputs(y_true, y_score)
    num_pos = int(y_true.sum())
    num_neg = len(y_true) - num_pos
    if num_pos == 0 or num_neg == 0:
        raise ValueError(
            f"AUC needs both classes in y_true, got {num_pos} positive(s) and {num_neg} negative(s)"
        )
    ranks = _average_ranks(y_score)
    rank_sum_of_positives = ranks[y_true == 1].sum()
    return float((rank_sum_of_positives - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def gauc(y_true, y_score, groups):
    """Group AUC: per-group AUC averaged with weights = the group's impression count.

    The usual offline metric for personalised ranking (groups = users): it ignores how scores
    compare across users. Groups whose labels are all 0 or all 1 have no AUC and are skipped.

    Args:
      y_true: (n,) labels in {0, 1}.
      y_score: (n,) scores; no NaN.
      groups: (n,) group keys (ints or strings), e.g. user ids.

    Returns:
      float: sum_g n_g * AUC_g / sum_g n_g over groups with both classes.

    Raises:
      ValueError: on length mismatches, NaN scores, or when no group has both classes.
    """
    y_true, y_score = _check_binary_inputs(y_true, y_score)
    groups = _as_1d(groups, "groups")
    if len(groups) != len(y_true):
        raise ValueError(
            f"groups must have the same length as y_true, got {len(groups)} and {len(y_true)}"
        )
    _, group_index = np.unique(groups, return_inverse=True)
    group_index = group_index.reshape(-1)

    # Rank scores within each group in one sort: order by (group, score); a tie block is a run
    # of equal (group, score) pairs and shares the mean of its within-group ranks.
    order = np.lexsort((y_score, group_index))
    sorted_group = group_index[order]
    sorted_score = y_score[order]
    sorted_label = y_true[order]
    n = len(order)
    new_group = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    new_block = new_group | np.r_[True, sorted_score[1:] != sorted_score[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank_in_group = np.arange(n) - group_start + 1.0
    block_id = np.cumsum(new_block) - 1
    block_mean_rank = np.bincount(block_id, weights=rank_in_group) / np.bincount(block_id)
    rank_in_group = block_mean_rank[block_id]

    num_groups = int(sorted_group.max()) + 1 if n else 0
    size = np.bincount(sorted_group, minlength=num_groups).astype(np.float64)
    num_pos = np.bincount(sorted_group, weights=sorted_label, minlength=num_groups)
    num_neg = size - num_pos
    pos_rank_sum = np.bincount(
        sorted_group, weights=rank_in_group * sorted_label, minlength=num_groups
    )
    valid = (num_pos > 0) & (num_neg > 0)
    if not valid.any():
        raise ValueError(
            f"GAUC needs at least one group with both a positive and a negative label; none of "
            f"the {num_groups} group(s) has both"
        )
    group_auc = (pos_rank_sum[valid] - num_pos[valid] * (num_pos[valid] + 1) / 2.0) / (
        num_pos[valid] * num_neg[valid]
    )
    return float(np.sum(group_auc * size[valid]) / np.sum(size[valid]))


def logloss(y_true, y_pred, eps=1e-7):
    """Mean binary cross-entropy of probabilities `y_pred`, clipped to [eps, 1 - eps].

    Args:
      y_true: (n,) labels in [0, 1] (soft labels allowed).
      y_pred: (n,) predicted probabilities; no NaN.
      eps: clipping that keeps log finite for predictions of exactly 0 or 1.

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
    if ((y_true < 0) | (y_true > 1)).any():
        raise ValueError("y_true must lie in [0, 1]")
    p = np.clip(y_pred, eps, 1.0 - eps)
    return float(-np.mean(y_true * np.log(p) + (1.0 - y_true) * np.log(1.0 - p)))


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
