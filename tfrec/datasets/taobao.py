"""Taobao UserBehavior.csv -> long-history samples for SIM and CLSR, after CLSR's preprocessing.

Reads Alibaba's UserBehavior.csv (https://tianchi.aliyun.com/dataset/649, never downloaded
here): no header, one behaviour per line, `user_id,item_id,category_id,behavior_type,timestamp`
(behavior_type pv / buy / cart / fav; timestamp in epoch seconds).

The recipe is CLSR's (Zheng et al., WWW 2022; tsinghua-fib-lab/CLSR,
reco_utils/dataset/sequential_reviews.py `taobao_main`, `_data_processing_taobao`,
`_data_generating_global`, `_negative_sampling_offline`):

1. page views (pv) only;
2. one event per (user, item): the earliest view (CLSR drops repeats, `drop_repeats`);
3. items seen with more than one category are dropped;
4. only events inside 2017-11-25 00:00:00 .. 2017-12-03 23:59:59 (China time) are kept;
5. (CLSR then keeps a random 5% of the users to fit its GPU budget: `user_share`, default 1.0);
6. the 10-core filter, as CLSR's code runs it: items with >= k_core users, then users with
   >= k_core items (one pass each, so a user's items may fall below k afterwards);
7. each user's events are sorted by time (ties keep the file's order); every event with at
   least `min_history` earlier events is a positive sample (click 1) whose history is all the
   user's earlier events (item, category and time, oldest first; the models keep the most
   recent `maxlen`);
8. the split is global in time: events of the last day (timestamp >= the latest - 1 day) are
   the test samples, those of the day before the validation samples, the rest train. A test
   sample's history holds the user's earlier events of every period, so a training history
   never holds a validation or test event;
9. negatives: `negatives` (CLSR: 4) per training positive and `test_negatives` (CLSR: 4 for
   validation, 9 for test) per validation / test positive, drawn by popularity (one entry per
   event, CLSR's `random.choice(items_with_popular)`) and different from the positive and from
   each other; training negatives are drawn from the training events (CLSR draws them within
   the training batch), evaluation negatives from all events. They may be items the user saw
   (CLSR does not exclude them).

Not reproduced: CLSR's evaluation keeps a random 20% of the validation / test samples (to save
time), and its training draws fresh negatives every epoch. SIM (Pi et al., CIKM 2020) uses the
same file for its long histories; its own split is not published as code, so this loader
follows CLSR's. The frames have the columns of `tfrec.data.make_long_history_data` (event
times as `hist_timestamp`, the request time as `timestamp`), which SIM (with
time_feature="timestamp") and CLSR take.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import history_name

from ..data import long_history_feature_columns
from ._common import DAY, LoadedDataset, insert_negatives, reading, require_file, sample_negatives

__all__ = ["CLSR_TIME_RANGE", "read_taobao", "load_taobao"]

URL = "https://tianchi.aliyun.com/dataset/649 (UserBehavior.csv.zip)"
# 2017-11-25 00:00:00 and 2017-12-03 23:59:59 at UTC+8, as epoch seconds.
CLSR_TIME_RANGE = (1_511_539_200, 1_512_316_799)
_RAW_COLUMNS = ["user_id", "item_id", "cate_id", "behavior", "timestamp"]
_HISTORY = ["item_id", "cate_id", "timestamp"]


def read_taobao(path, behaviors=("pv",), time_range=CLSR_TIME_RANGE, chunksize=5_000_000):
    """The behaviours of UserBehavior.csv of the given types and time range, in file order.

    Returns:
      DataFrame: user_id, item_id, cate_id, timestamp (int64) (the behaviour type is dropped).
    """
    require_file(path, "Taobao UserBehavior", "UserBehavior.csv", URL)
    kept = []
    with reading(path, "Taobao UserBehavior", "lines user_id,item_id,category_id,behavior_type,timestamp (integers "
                                               "but the behaviour: pv, buy, cart or fav)", URL):
        reader = pd.read_csv(path, header=None, names=_RAW_COLUMNS, chunksize=chunksize,
                             dtype={"user_id": np.int64, "item_id": np.int64, "cate_id": np.int64, "behavior": str,
                                    "timestamp": np.int64})
        for chunk in reader:
            keep = chunk["behavior"].isin(list(behaviors)).to_numpy()
            if time_range is not None:
                time = chunk["timestamp"].to_numpy()
                keep = keep & (time >= time_range[0]) & (time <= time_range[1])
            kept.append(chunk.loc[keep, ["user_id", "item_id", "cate_id", "timestamp"]])
    return pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(
        {name: np.zeros(0, np.int64) for name in ["user_id", "item_id", "cate_id", "timestamp"]})


def _k_core(log, k_core, one_row_per_pair):
    """CLSR's filter_k_core: items with >= k users, then users with >= k items (one pass each).

    With `one_row_per_pair` (repeats dropped) rows are counted, else distinct users / items (a
    user viewing an item ten times is one user of it), which takes ~5 times longer."""
    count = "size" if one_row_per_pair else "nunique"
    item_users = log.groupby("item_id")["user_id"].transform(count).to_numpy()
    log = log[item_users >= k_core]
    user_items = log.groupby("user_id")["item_id"].transform(count).to_numpy()
    return log[user_items >= k_core]


def _prefix_samples(events, min_history):
    """One sample per event with >= min_history earlier events of its user; histories as views.

    `events` is sorted by (user, time). hist_item_id / hist_cate_id / hist_timestamp are views
    of one array per column (do not modify them in place); seq_length is the history length.
    """
    users = events["user_id"].to_numpy()
    n = len(events)
    first = np.r_[True, users[1:] != users[:-1]] if n else np.zeros(0, dtype=bool)
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(np.arange(n) - start >= min_history)
    samples = events.iloc[rows][["user_id", "item_id", "cate_id", "timestamp"]].reset_index(drop=True)
    samples["click"] = np.ones(len(rows), dtype=np.int64)
    for name in _HISTORY:
        values = events[name].to_numpy()
        cells = np.empty(len(rows), dtype=object)
        for index, (s, e) in enumerate(zip(start[rows].tolist(), rows.tolist())):
            cells[index] = values[s:e]
        samples[history_name(name)] = cells
    samples["seq_length"] = (rows - start[rows]).astype(np.int64)
    return samples


def load_taobao(path, maxlen=1000, negatives=4, test_negatives=9, validation_negatives=4, k_core=10,
                min_history=1, time_range=CLSR_TIME_RANGE, drop_repeats=True, user_share=1.0, test_days=1,
                validation_days=1, seed=0, embedding_dim=8, with_time=True):
    """SIM / CLSR samples from UserBehavior.csv (see the module docstring for the recipe).

    Args:
      path: UserBehavior.csv.
      maxlen: the models' history length (the feature columns'); the frames hold whole histories.
      negatives, validation_negatives, test_negatives: sampled negatives per positive of each frame.
      k_core: the k of the k-core filter (CLSR: 10).
      min_history: the fewest earlier events a sample has (CLSR: 1).
      time_range: (first, last) epoch seconds kept, or None for all.
      drop_repeats: keep only a user's first view of an item (CLSR does).
      user_share: share of the users kept (drawn with `seed`; CLSR used 0.05), before the k-core.
      test_days, validation_days: the global time split (days at the end of the data).
      seed: seed of the user sample and the negative sampler.
      with_time: include DenseFeat("timestamp", "int64") and VarLenDenseFeat("hist_timestamp") in
        the feature columns: for SIM with time_feature="timestamp". CLSR takes no time features
        (it would feed raw epoch seconds to its DNN): with_time=False.

    Returns:
      LoadedDataset: train / validation / test with columns user_id, item_id, cate_id, timestamp
      (int64; the request time = the event's time), click (int64), hist_item_id, hist_cate_id,
      hist_timestamp (1-D int64 arrays, oldest first), seq_length (int64); a positive's negatives
      follow it with its history. feature_columns = `tfrec.data.long_history_feature_columns`
      (int ids, with the time features when with_time); history_features ["item_id", "cate_id"];
      label_columns "click". `SIM(ds.feature_columns, ds.history_features, time_feature="timestamp")`;
      with with_time=False, `CLSR(ds.feature_columns, ds.history_features)`.
    """
    if not 0.0 < user_share <= 1.0:
        raise ValueError(f"user_share must lie in (0, 1], got {user_share!r}")
    # CLSR's order: repeats and multi-category items go before the time filter.
    log = read_taobao(path, time_range=None)
    stats = {"pv_events": len(log)}
    user_codes = pd.factorize(log["user_id"])[0]
    order = np.lexsort((np.arange(len(log)), log["timestamp"].to_numpy(), user_codes))
    log = log.iloc[order]
    if drop_repeats:
        log = log.drop_duplicates(["user_id", "item_id"], keep="first")
    categories_per_item = log.groupby("item_id")["cate_id"].transform("nunique").to_numpy()
    log = log[categories_per_item == 1]
    if time_range is not None:
        log = log[log["timestamp"].between(time_range[0], time_range[1])]
    rng = np.random.default_rng(seed)
    if user_share < 1.0:
        users = np.unique(log["user_id"].to_numpy())
        chosen = rng.choice(users, size=int(round(user_share * len(users))), replace=False)
        log = log[log["user_id"].isin(chosen)]
    log = _k_core(log, k_core, drop_repeats).reset_index(drop=True)
    if log.empty:
        raise ValueError(f"no events left after the {k_core}-core filter ({stats['pv_events']} page views read)")
    stats.update(events=len(log), users=int(log["user_id"].nunique()), items=int(log["item_id"].nunique()))

    samples = _prefix_samples(log, min_history)
    latest = int(log["timestamp"].max())
    test_start = latest - test_days * DAY
    validation_start = test_start - validation_days * DAY
    time = samples["timestamp"].to_numpy()
    item_to_cate = log.drop_duplicates("item_id").set_index("item_id")["cate_id"]
    train_pool = log.loc[log["timestamp"].to_numpy() < validation_start, "item_id"].to_numpy()
    if len(train_pool) == 0:
        train_pool = log["item_id"].to_numpy()
    frames = {}
    for name, mask, k, pool in (("train", time < validation_start, negatives, train_pool),
                                ("validation", (time >= validation_start) & (time < test_start), validation_negatives,
                                 log["item_id"].to_numpy()),
                                ("test", time >= test_start, test_negatives, log["item_id"].to_numpy())):
        frame = samples[mask].reset_index(drop=True)
        drawn = sample_negatives(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), k, pool, rng)
        frames[name] = insert_negatives(frame, drawn, item_to_cate)
    # Every id of every frame is an id of the log; one row per user covers them all.
    last = np.r_[log["user_id"].to_numpy()[1:] != log["user_id"].to_numpy()[:-1], True]
    cover = log[last].reset_index(drop=True)
    starts = np.flatnonzero(np.r_[True, last[:-1]])
    ends = np.flatnonzero(last) + 1
    for name in ("item_id", "cate_id"):
        values = log[name].to_numpy()
        cells = np.empty(len(cover), dtype=object)
        for index, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
            cells[index] = values[s:e]
        cover[history_name(name)] = cells
    columns = long_history_feature_columns(cover, maxlen, embedding_dim=embedding_dim, with_time=with_time, id_type="int")
    stats.update({f"{name}_samples": len(frame) for name, frame in frames.items()})
    recipe = (f"CLSR (Zheng et al., WWW 2022) on Taobao UserBehavior: page views, first view per (user, item), "
              f"single-category items, {k_core}-core (items then users), time-ordered full histories, global time "
              f"split (last {test_days} day(s) test, {validation_days} before validation), popularity-drawn "
              f"negatives ({negatives} train / {validation_negatives} validation / {test_negatives} test)")
    return LoadedDataset("taobao/clsr", frames["train"], frames["test"], columns, "click", ["item_id", "cate_id"],
                         validation=frames["validation"], recipe=recipe, stats=stats)
