"""What every loader of `tfrec.datasets` shares: the result type, file checks, negative sampling."""
import contextlib
import gzip
import os
import re
from dataclasses import dataclass, field

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import history_name

from ..data import build_din_samples, retrieval_samples
from ..data.retrieval import HIST_LENGTH

__all__ = ["LoadedDataset", "require_file", "reading", "bad_line", "whole_number", "open_text", "din_prefix_samples",
           "sample_negatives", "insert_negatives"]

DAY = 86_400


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A public dataset as a tfrec model takes it.

    name: the dataset and the recipe, e.g. "movielens-1m/din-rating".
    train, test: the sample frames (a fresh RangeIndex each); `df_to_inputs(train, feature_columns)`
      gives a model's inputs. validation: a third frame where the recipe has one, else None.
    feature_columns: the columns of a ranking model, or the user side of a retrieval model.
    label_columns: what `df_to_dataset(..., label_columns=...)` takes: a column name ("click"),
      {task name: column} for multi-task models, or None (retrieval: every row is a positive).
    history_features: the `history_feature_list` of DIN / SIM / CLSR / SDM (e.g. ["item_id",
      "cate_id"]); empty for models without histories.
    item_feature_columns: the item side of a retrieval model (YoutubeDNN, MIND, SDM), else None.
    recipe: which paper's preprocessing the frames follow (one paragraph).
    stats: counts of what the preprocessing kept and dropped (users, items, events, ...).
    """

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    feature_columns: list
    label_columns: object = None
    history_features: list = field(default_factory=list)
    item_feature_columns: list = None
    validation: pd.DataFrame = None
    recipe: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def user_feature_columns(self):
        """The user side of a retrieval model (= feature_columns); raises for ranking data."""
        if self.item_feature_columns is None:
            raise AttributeError(f"{self.name} is ranking data: use feature_columns")
        return self.feature_columns


def require_file(path, dataset, what, url):
    """Raises FileNotFoundError naming the expected file, where it was looked for and where to get it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{dataset}: expected {what} at {os.path.abspath(path)!r}, which does not exist. tfrec "
            f"never downloads data: get {dataset} from {url} (unpacked, original file names) and pass "
            "its path to the loader"
        )
    return path


@contextlib.contextmanager
def reading(path, dataset, layout, url):
    """A ValueError while `path` is parsed (a cut-off download, an edited line) raised again
    naming the file, the layout it should have and where to get it: pandas' own messages ("invalid
    literal for int() with base 10: ''") name none of them."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{dataset}: {os.path.abspath(path)!r} does not read as {layout} ({error}); a "
                         f"truncated or edited copy? Get the original from {url}") from error


def bad_line(number, problem):
    """The ValueError of line `number` (counted from 1) of a file read line by line; raised inside
    `reading`, which adds the file, its layout and where to get the original."""
    return ValueError(f"line {number}: {problem}")


_WHOLE_NUMBER = re.compile(r"\s*[+-]?\d+\s*")


def whole_number(value, number, what):
    """`value` (a cell's text, or a number a JSON line holds) as an int; anything else (text, a
    fraction, a bool, None) is a `bad_line` naming line `number` and the field `what`: int()'s
    own "invalid literal for int() with base 10: 'x'" names neither, and int(1.5) would be 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value):
        return int(value)
    raise bad_line(number, f"{what} is {value!r}, not a whole number")


def open_text(path, encoding="utf-8"):
    """Opens a text file, gunzipping it when its name ends in .gz."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding=encoding)
    return open(path, encoding=encoding)


def _codes(values, catalogue):
    """Index of each value in `catalogue` (a sorted unique array)."""
    return np.searchsorted(catalogue, values)


def sample_negatives(users, positives, k, pool, seed_or_rng, exclude=None, max_rounds=10_000):
    """(n, k) negative items for n positive (user, item) pairs, by rejection.

    Each negative is an entry of `pool` drawn uniformly (a pool of distinct items draws items
    uniformly; a pool with one entry per event draws them by popularity), different from the
    row's positive and from the row's other negatives; with `exclude` (a DataFrame of (user,
    item) pairs, columns user_id and item_id) also never one of the user's own items.

    Raises:
      ValueError: a row cannot get k admissible negatives (its user has nearly every item).
    """
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    users, positives, pool = np.asarray(users), np.asarray(positives), np.asarray(pool)
    n = len(positives)
    if n == 0 or k == 0:
        return np.empty((n, k), dtype=pool.dtype)
    catalogue = np.unique(np.concatenate([pool, positives] + ([exclude["item_id"].to_numpy()]
                                                             if exclude is not None else [])))
    pool_codes = _codes(pool, catalogue)
    positive_codes = _codes(positives, catalogue)
    if exclude is not None:
        user_catalogue = np.unique(np.concatenate([users, exclude["user_id"].to_numpy()]))
        width = np.int64(len(catalogue))
        forbidden = np.unique(_codes(exclude["user_id"].to_numpy(), user_catalogue).astype(np.int64) * width
                              + _codes(exclude["item_id"].to_numpy(), catalogue))
        row_keys = _codes(users, user_catalogue).astype(np.int64) * width
    drawn = pool_codes[rng.integers(0, len(pool_codes), (n, k))]
    for _ in range(max_rounds):
        bad = drawn == positive_codes[:, None]
        for j in range(1, k):
            bad[:, j] |= (drawn[:, :j] == drawn[:, j:j + 1]).any(axis=1)
        if exclude is not None:
            keys = row_keys[:, None] + drawn
            hit = np.searchsorted(forbidden, keys)
            bad |= forbidden[np.minimum(hit, len(forbidden) - 1)] == keys
        if not bad.any():
            return catalogue[drawn]
        drawn[bad] = pool_codes[rng.integers(0, len(pool_codes), int(bad.sum()))]
    rows = np.flatnonzero(bad.any(axis=1))
    raise ValueError(f"cannot draw {k} admissible negative(s) for {len(rows)} sample(s), e.g. user "
                     f"{users[rows[0]]!r}: the pool has too few items outside the user's own")


def insert_negatives(samples, negative_items, item_to_cate, label_col="click", reset=()):
    """`samples` with k rows after every row: a copy whose item (and its category) is a negative.

    negative_items: (len(samples), k) item ids; item_to_cate: a Series item -> category, or None
    for frames without cate_id; reset: columns of an outcome (e.g. "rating") set to NaN on the
    negatives. The label is 1 on the given rows and 0 on the negatives.
    """
    n, k = negative_items.shape
    if k == 0:
        return samples.reset_index(drop=True)
    negatives = samples.iloc[np.repeat(np.arange(n), k)].reset_index(drop=True)
    negatives["item_id"] = negative_items.reshape(-1)
    if item_to_cate is not None:
        negatives["cate_id"] = item_to_cate.loc[negatives["item_id"].to_numpy()].to_numpy()
    negatives[label_col] = np.zeros(len(negatives), dtype=samples[label_col].dtype)
    for col in reset:
        negatives[col] = np.nan
    source = np.r_[np.arange(n), np.repeat(np.arange(n), k)]
    merged = pd.concat([samples.reset_index(drop=True), negatives], ignore_index=True)
    return merged.iloc[np.argsort(source, kind="stable")].reset_index(drop=True)


def din_prefix_samples(log, maxlen, negatives, seed, history_col=None, extra_cols=(), min_history=1,
                       test_events=1):
    """DIN's "every prefix predicts the next event" with leave-last-out, on tfrec.data's builders.

    log: events with user_id, item_id, cate_id, timestamp (and `extra_cols`; click if the events
    have labels, else every event is a positive). The history of an event is the user's earlier
    events (all of them, or those with `history_col` == 1), the most recent `maxlen`, oldest
    first. The first `min_history` events of each user are no samples (DIN's Amazon script starts
    at each user's second review: 1). With `negatives` = k (a log of positives only), every row is
    followed by k rows with an item the user never had in `log`, drawn uniformly from the log's items
    (DIN's `gen_neg`), with that item's category.

    Histories of every earlier event with one test event per user come from
    `tfrec.data.retrieval_samples` (cells are 1-D views of one array per column, so long
    histories cost O(rows)); the other cases from `tfrec.data.build_din_samples` (cells are lists).

    Returns (train, test) with columns user_id, item_id, cate_id, timestamp, click (int64),
    hist_item_id, hist_cate_id, then extra_cols; users in sorted order, each user's rows in time
    order (ties: log order), a positive's negatives right after it.
    """
    if "click" not in log.columns:
        log = log.assign(click=np.ones(len(log), dtype=np.int64))
    elif negatives and not (log["click"].to_numpy() == 1).all():
        raise ValueError("sampled negatives need a log of positives only (every click == 1)")
    extras = [c for c in extra_cols if c != "click"]
    if history_col is None and test_events == 1:
        ordered = log.iloc[np.argsort(log["user_id"].to_numpy(), kind="stable")]  # users in sorted order
        frames = retrieval_samples(ordered, maxlen, user_cols=extras + ["click"], min_history=min_history)
        frames = [frame.drop(columns=[HIST_LENGTH]) for frame in frames]
    else:
        seen = "_in_history"
        events = log.assign(**{seen: 1 if history_col is None else log[history_col].to_numpy()})
        frames = build_din_samples(events, maxlen, label_col=seen, extra_cols=extras + ["click"],
                                   test_events=test_events)
        # Position of each event among its user's events (a user's train rows precede its test rows).
        train_rows = frames[0].groupby("user_id", sort=False).size()
        positions = (frames[0].groupby("user_id", sort=False).cumcount().to_numpy(),
                     frames[1]["user_id"].map(train_rows).fillna(0).to_numpy().astype(np.int64)
                     + frames[1].groupby("user_id", sort=False).cumcount().to_numpy())
        frames = [frame[position >= min_history].drop(columns=[seen]) for frame, position in zip(frames, positions)]
    rng = np.random.default_rng(seed)
    item_to_cate = log.drop_duplicates("item_id").set_index("item_id")["cate_id"]
    pool = item_to_cate.index.to_numpy()
    order = ["user_id", "item_id", "cate_id", "timestamp", "click", history_name("item_id"),
             history_name("cate_id"), *extras]
    out = []
    for frame in frames:
        frame = frame[order].reset_index(drop=True)
        frame["click"] = frame["click"].astype(np.int64)
        if negatives:
            drawn = sample_negatives(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), negatives, pool, rng,
                                     exclude=log[["user_id", "item_id"]])
            frame = insert_negatives(frame, drawn, item_to_cate)
        out.append(frame)
    return tuple(out)

