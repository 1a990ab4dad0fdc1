"""Behaviour logs -> DIN-style training samples, and label sanity checks.

A behaviour log has one row per impression: user, item, category, timestamp, label (click).
DIN-family models learn from "every prefix predicts the next event": the sample for a user's
event t holds the items and categories the user clicked before t (oldest to newest) and asks
whether event t is clicked.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import history_name

__all__ = ["build_din_samples", "check_esmm_labels", "NEGATIVE_OUTCOME_VALUES"]

# Columns that describe an impression's outcome: a sampled negative is not a real impression,
# so these get "no conversion" and "unknown truth" instead of the positive's values.
NEGATIVE_OUTCOME_VALUES = {"conversion": 0, "p_click": np.nan, "p_conversion": np.nan}


def _require_columns(frame, columns, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} needs column(s) {missing}; the frame has {list(frame.columns)}")


def _histories(values, starts, ends):
    """[values[s:e].tolist() for each row]: one Python list per row (a cell of a list column)."""
    return [values[s:e].tolist() for s, e in zip(starts.tolist(), ends.tolist())]


def build_din_samples(
    log,
    maxlen,
    user_col="user_id",
    item_col="item_id",
    category_col="cate_id",
    time_col="timestamp",
    label_col="click",
    negatives=0,
    seed=0,
    extra_cols=(),
    test_events=1,
):
    """Turns an impression log into DIN samples with a leave-last-out split.

    Each user's events are sorted by `time_col` (ties keep log order). The sample for event t
    has `hist_<item_col>` / `hist_<category_col>`: the items / categories of the user's events
    before t with `label_col` == 1, the most recent `maxlen` of them, oldest to newest (an
    empty list when there are none); target item, category and label are event t's.

    With `negatives=k`, every positive sample (label 1) is followed by k samples with the same
    user, history and timestamp but an item drawn uniformly from the log's other items (with
    that item's category) and label 0. Their outcome columns among `extra_cols`
    (NEGATIVE_OUTCOME_VALUES: conversion -> 0, p_click / p_conversion -> NaN) are reset; other
    extra columns (user features) are copied from the positive.

    Leave-last-out: each user's last `test_events` events, with their negatives, go to the test
    frame (more than one per user makes per-user metrics such as GAUC defined).

    Args:
      log: DataFrame with the columns named below (category_col may be None: no category).
      maxlen: history length kept per sample (>= 1).
      negatives: sampled negatives per positive (>= 0); needs >= 2 distinct items.
      seed: seed of the negative sampler.
      extra_cols: further log columns carried into the samples (e.g. "p_click", user features).
      test_events: events per user held out for the test frame (>= 1).

    Returns:
      (train_df, test_df), each with columns user, item, category, time, label,
      hist_<item_col>, hist_<category_col>, then extra_cols; rows in (user, time) order, a
      positive's negatives right after it; a fresh RangeIndex.
    """
    if not isinstance(maxlen, (int, np.integer)) or maxlen < 1:
        raise ValueError(f"maxlen must be an int >= 1, got {maxlen!r}")
    if not isinstance(negatives, (int, np.integer)) or negatives < 0:
        raise ValueError(f"negatives must be an int >= 0, got {negatives!r}")
    if not isinstance(test_events, (int, np.integer)) or test_events < 1:
        raise ValueError(f"test_events must be an int >= 1, got {test_events!r}")
    target_cols = [item_col] + ([category_col] if category_col is not None else [])
    extra_cols = [c for c in extra_cols if c not in (user_col, time_col, label_col, *target_cols)]
    _require_columns(log, [user_col, time_col, label_col, *target_cols, *extra_cols], "build_din_samples")
    labels = log[label_col].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"column '{label_col}' must hold only 0 and 1")

    _, user_codes = np.unique(log[user_col].to_numpy(), return_inverse=True)
    order = np.lexsort((np.arange(len(log)), log[time_col].to_numpy(), user_codes.reshape(-1)))
    events = log.iloc[order].reset_index(drop=True)
    user_codes = user_codes.reshape(-1)[order]
    clicked = events[label_col].to_numpy() == 1
    n = len(events)

    # Row r's history is the slice [start, end) of the clicked events in (user, time) order:
    # end = clicks before r overall, start = max(clicks before the user's first row, end - maxlen).
    clicks_before = np.cumsum(clicked) - clicked
    first_row = np.r_[True, user_codes[1:] != user_codes[:-1]]
    user_first_click = np.maximum.accumulate(np.where(first_row, clicks_before, 0))
    hist_end = clicks_before
    hist_start = np.maximum(user_first_click, hist_end - maxlen)

    samples = events[[user_col, *target_cols, time_col, label_col, *extra_cols]].copy()
    for col in target_cols:
        samples[history_name(col)] = _histories(events[col].to_numpy()[clicked], hist_start, hist_end)
    samples = samples[[user_col, *target_cols, time_col, label_col,
                       *[history_name(c) for c in target_cols], *extra_cols]]
    in_test = pd.Series(user_codes).groupby(user_codes).cumcount(ascending=False).to_numpy() < test_events

    if negatives:
        positive_rows = np.flatnonzero(clicked)
        negative_rows = np.repeat(positive_rows, negatives)
        negative_samples = samples.iloc[negative_rows].reset_index(drop=True)
        item_to_category = log.drop_duplicates(item_col)
        items = item_to_category[item_col].to_numpy()
        if len(items) < 2:
            raise ValueError("negative sampling needs at least 2 distinct items in the log")
        # Draw among the other items: an index in [0, n_items - 1) shifted past the target's.
        target_index = pd.Index(items).get_indexer(negative_samples[item_col].to_numpy())
        drawn = np.random.default_rng(seed).integers(0, len(items) - 1, len(negative_rows))
        drawn += drawn >= target_index
        negative_samples[item_col] = items[drawn]
        if category_col is not None:
            negative_samples[category_col] = item_to_category[category_col].to_numpy()[drawn]
        negative_samples[label_col] = np.zeros(len(negative_rows), dtype=samples[label_col].dtype)
        for col, value in NEGATIVE_OUTCOME_VALUES.items():
            if col in extra_cols:
                negative_samples[col] = value
        samples = pd.concat([samples, negative_samples], ignore_index=True)
        # Put each positive's negatives right after it.
        source_row = np.r_[np.arange(n), negative_rows]
        samples = samples.iloc[np.argsort(source_row, kind="stable")]
        in_test = in_test[np.sort(source_row, kind="stable")]

    train = samples[~in_test].reset_index(drop=True)
    test = samples[in_test].reset_index(drop=True)
    return train, test


def check_esmm_labels(df, click_col="click", conversion_col="conversion"):
    """Raises ValueError if a row converts without a click (ESMM's CTCVR = CTR x CVR needs that).

    Returns None when every row with conversion == 1 also has click == 1.
    """
    _require_columns(df, [click_col, conversion_col], "check_esmm_labels")
    bad = (df[conversion_col].to_numpy() == 1) & (df[click_col].to_numpy() != 1)
    if bad.any():
        first = df.index[bad][:10].tolist()
        raise ValueError(
            f"{int(bad.sum())} row(s) have {conversion_col}=1 but {click_col}=0 (a conversion needs "
            f"a click); first row index(es): {first}"
        )
