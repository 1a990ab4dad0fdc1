"""Writes the small CSV files the example configs train on (run once; the files are committed).

    python examples/make_example_data.py

* `data/ranking.csv`: click samples of a planted-truth behaviour log (tfrec.data.make_behaviour_log,
  string ids), one row per impression with the user's earlier clicked items and categories as
  `|`-joined histories, for `ranking_din.yaml`.
* `data/multitask.csv`: impressions with click and conversion labels from the planted multi-task
  generator (tfrec.data.make_multitask_data), for `multitask_mmoe.yaml`.
* `data/events.csv`: an interaction log (user, item, category, time, the user's gender and age)
  of planted users with several interests each (tfrec.data.make_retrieval_data, string item
  ids), for `retrieval_mind.yaml`.

Both are synthetic (the generators' true probabilities are not written), a few hundred KB at most,
and the same on every run (fixed seeds).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pandas as pd  # noqa: E402

from tfrec.data import build_din_samples, make_behaviour_log, make_multitask_data, make_retrieval_data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def ranking_frame():
    log = make_behaviour_log(num_users=150, num_items=120, events_per_user=14, seed=0, id_type="str")
    train, test = build_din_samples(log, maxlen=10, test_events=2)
    frame = pd.concat([train, test], ignore_index=True).sort_values(["timestamp", "user_id"], kind="stable")
    for name in ("hist_item_id", "hist_cate_id"):
        frame[name] = ["|".join(cell) for cell in frame[name]]
    return frame[["user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id", "timestamp", "click"]]


def multitask_frame():
    frame = make_multitask_data(2000, num_users=200, num_items=100, seed=0)
    frame["price"] = frame["price"].round(3)
    frame["user_activity"] = frame["user_activity"].round(3)
    return frame[["user_id", "item_id", "cate_id", "age_group", "device", "hour", "price", "user_activity",
                  "click", "conversion"]]


def events_data():
    """The planted world behind `data/events.csv` (its truth gives the oracle's recall)."""
    return make_retrieval_data(num_users=500, num_items=300, num_categories=12, events_per_user=16, seed=0,
                               id_type="str")


def events_frame():
    log = events_data().log.copy()
    log["gender"] = log["gender"].map({1: "F", 2: "M"})
    return log[["user_id", "item_id", "cate_id", "timestamp", "gender", "age"]]


def main():
    os.makedirs(os.path.join(HERE, "data"), exist_ok=True)
    for name, frame in (("ranking.csv", ranking_frame()), ("multitask.csv", multitask_frame()),
                        ("events.csv", events_frame())):
        path = os.path.join(HERE, "data", name)
        frame.to_csv(path, index=False)
        print(f"{path}: {len(frame)} rows, {os.path.getsize(path) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
