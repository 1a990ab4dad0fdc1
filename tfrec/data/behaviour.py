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

__all__ = ["build_din_samples", "build_sim_samples", "check_esmm_labels", "leave_last_out",
           "NEGATIVE_OUTCOME_VALUES"]

HISTORY_FORMATS = ("list", "array")

# Columns that describe an impression's outcome: a sampled negative is not a real impression,
# so these get "no conversion" and "unknown truth" instead of the positive's values.
NEGATIVE_OUTCOME_VALUES = {"conversion": 0, "p_click": np.nan, "p_conversion": np.nan}


def _require_columns(frame, columns, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} needs column(s) {missing}; the frame has {list(frame.columns)}")


def check_events(log, needed, time_col, who):
    """Raises ValueError for a log that `who` (a sample builder) would split wrongly without a
    word: an empty cell in a column of `needed` (empty users would be one user of all their
    events), or times in `time_col` given as text, which sorts as text ("10" before "9"), so a
    user's held-out event would not be their last and histories would hold later events."""
    for name in needed:
        gaps = np.flatnonzero(pd.isna(log[name]).to_numpy())
        if len(gaps):
            raise ValueError(f"{who}: column '{name}' has {len(gaps)} empty cell(s), the first in row "
                             f"{gaps[0]}; an event needs all of {needed}: drop those rows")
    times = log[time_col]
    text = np.flatnonzero([isinstance(v, str) for v in times]) if times.dtype.kind == "O" else []
    if len(text):
        raise ValueError(f"{who}: column '{time_col}' holds text ({times.iloc[text[0]]!r} in row "
                         f"{text[0]}), which sorts as text, not by time; give numbers or datetimes "
                         f"(pd.to_datetime(log['{time_col}'], format=...))")


def _histories(values, starts, ends, histories="list"):
    """One cell per row holding values[s:e]: a Python list ("list"), or a view of `values`
    ("array": the cells of a column share one numpy array, so a row costs an array header
    instead of a list of Python objects)."""
    if histories == "list":
        return [values[s:e].tolist() for s, e in zip(starts.tolist(), ends.tolist())]
    cells = np.empty(len(starts), dtype=object)
    for row, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        cells[row] = values[s:e]
    return cells


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def leave_last_out(df, user_col="user_id", time_col="timestamp", test_events=1):
    """Splits a frame of events by user: each user's last `test_events` rows by `time_col` (ties:
    the later row in `df` counts as later) are the test rows, the rest train.

    A user with `test_events` rows or fewer has them all in the test frame. `build_din_samples`
    and `retrieval_samples` split their samples this way themselves; this is the same split for
    any frame (a log, samples you built, a user's own data).

    Args:
      df: a DataFrame with `user_col` and `time_col` (numbers or datetimes; text times and
        empty cells are refused, as the sample builders refuse them: `check_events`).
      test_events: rows held out per user (>= 1; more than one makes per-user metrics such as
        GAUC defined).

    Returns:
      (train_df, test_df): the rows of `df` in their original order, each with a fresh RangeIndex.
    """
    _check_count("test_events", test_events, 1)
    _require_columns(df, [user_col, time_col], "leave_last_out")
    check_events(df, [user_col, time_col], time_col, "leave_last_out")
    _, user_codes = np.unique(df[user_col].to_numpy(), return_inverse=True)
    user_codes = user_codes.reshape(-1)
    order = np.lexsort((np.arange(len(df)), df[time_col].to_numpy(), user_codes))
    from_end = pd.Series(user_codes[order]).groupby(user_codes[order]).cumcount(ascending=False).to_numpy()
    in_test = np.empty(len(df), dtype=bool)
    in_test[order] = from_end < test_events
    return df[~in_test].reset_index(drop=True), df[in_test].reset_index(drop=True)


def _draw_outside_user_items(rng, drawn, owners, user_item_keys, num_items, max_rounds=64):
    """Redraws `drawn` (item indices) in place until none is among its owner's items.

    `user_item_keys`: sorted unique owner * num_items + item of every (user, item) of the log.
    Uniform redraws first (a handful of rounds for any user who knows a small share of the
    catalogue); rows still in conflict then draw from their user's complement explicitly.
    """
    def conflicting(rows):
        keys = owners[rows] * num_items + drawn[rows]
        where = np.minimum(np.searchsorted(user_item_keys, keys), len(user_item_keys) - 1)
        return rows[user_item_keys[where] == keys]

    bad = conflicting(np.arange(len(drawn)))
    for _ in range(max_rounds):
        if not len(bad):
            return drawn
        drawn[bad] = rng.integers(0, num_items, len(bad))
        bad = conflicting(bad)
    for row in bad.tolist():
        known = user_item_keys[(user_item_keys >= owners[row] * num_items) &
                               (user_item_keys < (owners[row] + 1) * num_items)] - owners[row] * num_items
        drawn[row] = rng.choice(np.setdiff1d(np.arange(num_items), known))
    return drawn


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
    exclude_user_items=False,
    histories="list",
    history_times=False,
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
    extra columns (user features) are copied from the positive. With `exclude_user_items`, a
    negative is never an item the user has in the log (any of their rows, clicked or not, train
    or test), as DIN's Amazon recipe samples them; a user who has seen every item gets a
    ValueError.

    Leave-last-out: each user's last `test_events` events, with their negatives, go to the test
    frame (more than one per user makes per-user metrics such as GAUC defined).

    Args:
      log: DataFrame with the columns named below (category_col may be None: no category); no
        user, item, category or time cell empty, and times as numbers or datetimes (text would
        sort as text).
      maxlen: history length kept per sample (>= 1).
      negatives: sampled negatives per positive (>= 0); needs >= 2 distinct items.
      seed: seed of the negative sampler.
      extra_cols: further log columns carried into the samples (e.g. "p_click", user features).
      test_events: events per user held out for the test frame (>= 1).
      exclude_user_items: negatives avoid every item of their user (False: only the target).
      histories: "list" (a Python list per cell) or "array" (a 1-D numpy array per cell, views
        of one array per column: several times less memory for long histories; `df_to_inputs`
        reads both, and cuts arrays to `maxlen` without copying the rest).
      history_times: also `hist_<time_col>`, the times of the history's events (int64 for
        integer times), aligned with `hist_<item_col>`: SIM's `time_feature` reads it with a
        `VarLenDenseFeat(hist_<time_col>, maxlen, dtype="int64")`.

    Returns:
      (train_df, test_df), each with columns user, item, category, time, label,
      hist_<item_col>, hist_<category_col> (hist_<time_col>), then extra_cols; rows in
      (user, time) order, a positive's negatives right after it; a fresh RangeIndex.

    Example (a log with user_id, item_id, cate_id, timestamp, click):

        train_df, test_df = build_din_samples(log, maxlen=50, negatives=1, exclude_user_items=True)
        columns = din_feature_columns(log, maxlen=50)  # or infer_feature_columns(train_df, ...)
        model = DIN(columns, ["item_id", "cate_id"])
        model.fit(df_to_dataset(train_df, columns, "click"))
    """
    _check_count("maxlen", maxlen, 1)
    _check_count("negatives", negatives, 0)
    _check_count("test_events", test_events, 1)
    if histories not in HISTORY_FORMATS:
        raise ValueError(f"histories must be one of {HISTORY_FORMATS}, got {histories!r}")
    target_cols = [item_col] + ([category_col] if category_col is not None else [])
    extra_cols = [c for c in extra_cols if c not in (user_col, time_col, label_col, *target_cols)]
    _require_columns(log, [user_col, time_col, label_col, *target_cols, *extra_cols], "build_din_samples")
    check_events(log, [user_col, *target_cols, time_col], time_col, "build_din_samples")
    labels = log[label_col].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"column '{label_col}' must hold only 0 and 1")

    _, user_codes = np.unique(log[user_col].to_numpy(), return_inverse=True)
    user_codes_of_log = user_codes.reshape(-1)
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
    history_cols = target_cols + ([time_col] if history_times else [])
    for col in history_cols:
        samples[history_name(col)] = _histories(events[col].to_numpy()[clicked], hist_start, hist_end, histories)
    samples = samples[[user_col, *target_cols, time_col, label_col,
                       *[history_name(c) for c in history_cols], *extra_cols]]
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
        if exclude_user_items:
            # Every (user, item) of the log as one sorted int64 key: user code * n_items + item index.
            keys = np.unique(user_codes_of_log * len(items) + pd.Index(items).get_indexer(log[item_col].to_numpy()))
            seen = np.bincount(keys // len(items), minlength=int(user_codes_of_log.max()) + 1)
            owners = user_codes[negative_rows]
            full = np.flatnonzero(seen[owners] >= len(items))
            if len(full):
                user = negative_samples[user_col].iloc[full[0]]
                raise ValueError(f"exclude_user_items: user {user!r} has every one of the {len(items)} items in "
                                 "the log, so no negative can be drawn for them")
            _draw_outside_user_items(np.random.default_rng([seed, 1]), drawn, owners, keys, len(items))
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


def build_sim_samples(log, maxlen, time_col="timestamp", history_times=True, histories="array", **kwargs):
    """`build_din_samples` for long-history models (SIM, CLSR): the same samples, by default with
    `hist_<time_col>` (the events' times, for SIM's `time_feature`) and numpy-array cells.

    Every argument is `build_din_samples`'; only the defaults of `history_times` (True) and
    `histories` ("array": a history of thousands of events per row stays one view of a shared
    array) differ. Columns for SIM with event times (`VarLenDenseFeat` keeps and pads the same
    events as the `VarLenSparseFeat` of the same maxlen):

        train_df, test_df = build_sim_samples(log, maxlen=2000)
        columns = din_feature_columns(log, maxlen=2000) + [
            DenseFeat("timestamp", dtype="int64"), VarLenDenseFeat("hist_timestamp", 2000, dtype="int64")]
        model = SIM(columns, ["item_id", "cate_id"], search="hard", search_feature="cate_id",
                    time_feature="timestamp")
    """
    return build_din_samples(log, maxlen, time_col=time_col, history_times=history_times, histories=histories,
                             **kwargs)


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
