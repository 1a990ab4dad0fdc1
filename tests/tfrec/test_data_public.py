"""tfrec.data's public helpers for a user's own data: columns and vocabularies from a DataFrame,
behaviour log -> DIN/SIM samples (negatives that avoid the user's items, histories as arrays),
and leave-last-out (docs/own_data.md's example of them all: tests/test_documented_examples.py)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tfrec.data
from feature_columns import DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat
from tfrec.data import (ColumnInferenceError, build_din_samples, build_sim_samples, df_to_inputs,
                        infer_feature_columns, leave_last_out, make_behaviour_log)

REPO = Path(__file__).resolve().parents[2]


def small_log():
    """Two users: a sees items 10..40 (clicks 10, 20, 40), b sees 50 and 60 (clicks 50)."""
    return pd.DataFrame({
        "user_id": ["a", "a", "b", "a", "a", "b"],
        "item_id": [10, 20, 50, 30, 40, 60],
        "cate_id": [1, 2, 5, 3, 2, 6],
        "timestamp": [1, 2, 1, 3, 4, 2],
        "click": [1, 1, 1, 0, 1, 0],
    })


def test_the_public_names_are_exported():
    for name in ("infer_feature_columns", "build_vocabulary", "ColumnInferenceError", "build_din_samples",
                 "build_sim_samples", "leave_last_out", "df_to_inputs", "df_to_dataset"):
        assert name in tfrec.data.__all__ and callable(getattr(tfrec.data, name))
        assert getattr(tfrec.data, name).__doc__


# --- Columns and vocabularies ----------------------------------------------------------------

def frame():
    return pd.DataFrame({
        "user_id": [1, 2, 3, 1, 2, 3, 1, 9],
        "item_id": ["a", "b", "a", "c", "a", "b", "a", "z"],
        "hist_item_id": [[], ["a"], ["a", "b"], ["b"], ["a", "c"], [], ["b", "a", "b"], ["a"]],
        "price": [0.5, 1.0, 1.5, 2.0, 0.5, 1.0, 1.5, 2.0],
        "row_id": list(range(8)),
        "click": [1, 0, 1, 0, 1, 0, 1, 0],
    })


def test_infer_builds_vocabularies_by_count_and_shares_history_tables():
    columns = {c.name: c for c in infer_feature_columns(frame(), label_columns=["click"], exclude=["row_id"],
                                                         min_count=2, embedding_dim=4)}
    assert set(columns) == {"user_id", "item_id", "hist_item_id", "price"}
    item, history = columns["item_id"], columns["hist_item_id"]
    # a: 8 times, b: 5, c: 2 over the item column and its history together; z (1) -> OOV.
    assert item.dtype == "string" and item.vocabulary == ("a", "b", "c") and item.embedding_dim == 4
    assert item.vocabulary_size == 5  # padding, OOV and three values
    assert isinstance(history, VarLenSparseFeat) and history.embedding_name == "item_id" and history.maxlen == 3
    assert history.table_spec() == item.table_spec()
    assert columns["user_id"].dtype == "int64" and columns["user_id"].vocabulary == (1, 2, 3)
    assert isinstance(columns["price"], DenseFeat)


def test_infer_options_labels_dense_sequences_and_errors():
    df = frame()
    columns = infer_feature_columns(df, label_columns={"ctr": "click"}, exclude="row_id", dense=[],
                                    sequences={"hist_item_id": {"maxlen": 7}})
    by_name = {c.name: c for c in columns}
    assert by_name["hist_item_id"].maxlen == 7 and by_name["price"].dtype == "string"  # not dense: categorical
    assert infer_feature_columns(df, "click", exclude=["row_id"], sequences={"hist_item_id": 5})[2].maxlen == 5
    with pytest.raises(ColumnInferenceError, match=r"^exclude: 'nope' is not a column of the data") as error:
        infer_feature_columns(df, ["click"], exclude=["nope"])
    assert error.value.key == "exclude" and isinstance(error.value, ValueError)
    with pytest.raises(ColumnInferenceError, match=r"^min_count: no value of column 'user_id' occurs 9 times"):
        infer_feature_columns(df, ["click"], min_count=9)
    with pytest.raises(ColumnInferenceError, match="no feature columns besides the labels") as error:
        infer_feature_columns(df[["click"]], ["click"])
    assert error.value.key is None


def test_int_ids_with_an_int_history_stay_int64_and_a_text_history_makes_one_string_table():
    df = pd.DataFrame({"item_id": [1, 2, 3, 1], "hist_item_id": [[], [1], [1, 2], [3]], "click": [1, 0, 1, 0]})
    item, history = infer_feature_columns(df, ["click"])
    assert item.dtype == history.dtype == "int64" and item.vocabulary == (1, 2, 3)  # requests send numbers
    rows = df_to_inputs(df, [item, history])
    assert rows["item_id"].tolist() == [1, 2, 3, 1] and rows["hist_item_id"].tolist() == [[0, 0], [1, 0], [1, 2], [3, 0]]
    # Parquet's lists (numpy arrays), and histories padded with 0 as DeepCTR pads them, infer the same.
    arrays = df.assign(hist_item_id=[np.array(cell, np.int64) for cell in df["hist_item_id"]])
    padded = df.assign(hist_item_id=[cell + [0] * (2 - len(cell)) for cell in df["hist_item_id"]])
    assert infer_feature_columns(arrays, ["click"]) == infer_feature_columns(padded, ["click"]) == [item, history]
    # A text history (a CSV's cells as `tfrec.config.read_data` splits them): the item column and
    # its history share one string table (a table never mixes 5 and "5").
    from_csv = df.assign(hist_item_id=[[str(i) for i in cell] for cell in df["hist_item_id"]])
    item, history = infer_feature_columns(from_csv, ["click"])
    assert item.dtype == history.dtype == "string" and item.vocabulary == ("1", "2", "3")
    rows = df_to_inputs(from_csv, [item, history])
    assert rows["item_id"].tolist() == ["1", "2", "3", "1"] and rows["hist_item_id"][2].tolist() == ["1", "2"]


@pytest.mark.parametrize("missing", [None, np.nan])
def test_a_missing_history_is_an_empty_one_in_inference_as_in_df_to_inputs(missing):
    # A Parquet null list or a left join's user without events; inference raised a bare TypeError.
    df = pd.DataFrame({"item_id": [1, 2, 3, 1], "hist_item_id": [[1], missing, [1, 2], [3]],
                       "hist_price": [[0.5], missing, [1.5, 2.5], [3.5]], "click": [1, 0, 1, 0]})
    item, history, price = infer_feature_columns(df, ["click"], dense=["hist_price"])
    assert item.dtype == history.dtype == "int64" and item.vocabulary == (1, 2, 3) and history.maxlen == 2
    assert isinstance(price, VarLenDenseFeat) and price.maxlen == 2
    rows = df_to_inputs(df, [item, history, price])
    assert rows["hist_item_id"].tolist() == [[1, 0], [0, 0], [1, 2], [3, 0]]
    assert rows["hist_price"][1].tolist() == [0, 0]
    assert tfrec.data.unknown_shares([item, history], df) == {}


def test_bool_and_date_columns_are_ids_of_the_text_inference_gave_them_and_gaps_are_no_ids():
    # Inferred as string tables of "True"/"2024-01-01 00:00:00", then refused by df_to_inputs as
    # "missing values"; pd.NA and None became ids '<NA>' and 'None'; a NaN was named as row 0.
    df = pd.DataFrame({"new": [True, False, True, True],
                       "day": pd.to_datetime(["2024-01-01", "2024-01-02"] * 2).astype("datetime64[ns]"),
                       "city": pd.Series(["a", None, "b", pd.NA], dtype=object), "click": [1, 0, 1, 0]})
    assert df["day"].dtype == "datetime64[ns]"  # whose numpy values are ints to tolist()
    columns = {c.name: c for c in infer_feature_columns(df, ["click"])}
    assert columns["new"].vocabulary == ("True", "False")
    assert columns["day"].vocabulary == ("2024-01-01 00:00:00", "2024-01-02 00:00:00")
    assert sorted(columns["city"].vocabulary) == ["a", "b"]
    rows = df_to_inputs(df.drop(columns="city"), [columns["new"], columns["day"]])
    assert rows["new"].tolist() == ["True", "False", "True", "True"]
    assert rows["day"].tolist() == ["2024-01-01 00:00:00", "2024-01-02 00:00:00"] * 2
    with pytest.raises(ValueError, match=r"feature 'city' has dtype 'string' and needs str values, but row 1 holds "
                                         r"nan; missing values"):
        df_to_inputs(pd.DataFrame({"city": [5.0, np.nan, 7.0]}), [columns["city"]])


def test_infer_is_what_a_config_infers():
    from tfrec import config as run

    config = run.load_config(str(REPO / "examples" / "ranking_din.yaml"))
    train_df, _ = run.load_frames(config)
    options = config.columns
    assert infer_feature_columns(train_df, config.tasks.values(), options.exclude, options.dense, options.sequences,
                                 options.min_count, options.embedding_dim) == run.infer_columns(train_df, config)


# --- Behaviour log -> samples ----------------------------------------------------------------

def test_default_samples_are_unchanged_and_arrays_hold_the_same_histories():
    train, test = build_din_samples(small_log(), maxlen=2, test_events=1)
    assert train["hist_item_id"].tolist() == [[], [10], [10, 20], []]
    assert all(isinstance(cell, list) for cell in train["hist_item_id"])
    arrays, arrays_test = build_din_samples(small_log(), maxlen=2, histories="array")
    assert all(isinstance(cell, np.ndarray) for cell in arrays["hist_item_id"])
    assert [cell.tolist() for cell in arrays["hist_item_id"]] == train["hist_item_id"].tolist()
    assert [cell.tolist() for cell in arrays_test["hist_cate_id"]] == test["hist_cate_id"].tolist() == [[1, 2], [5]]
    # Views of one array per column: no copy per row.
    assert len({id(cell.base) for cell in arrays["hist_item_id"]}) == 1
    pd.testing.assert_frame_equal(arrays.drop(columns=["hist_item_id", "hist_cate_id"]),
                                  train.drop(columns=["hist_item_id", "hist_cate_id"]))
    with pytest.raises(ValueError, match="histories must be one of"):
        build_din_samples(small_log(), maxlen=2, histories="tuple")


def test_exclude_user_items_never_draws_an_item_of_the_user():
    log = make_behaviour_log(num_users=60, num_items=30, num_categories=5, events_per_user=15, seed=3)
    seen = set(zip(log["user_id"], log["item_id"]))
    item_cate = dict(zip(log["item_id"], log["cate_id"]))

    plain = build_din_samples(log, maxlen=5, negatives=3, seed=1, extra_cols=("p_click",))
    plain_negatives = pd.concat(plain)[lambda d: d["p_click"].isna()]
    assert any((u, i) in seen for u, i in zip(plain_negatives["user_id"], plain_negatives["item_id"]))
    excluded = build_din_samples(log, maxlen=5, negatives=3, seed=1, extra_cols=("p_click",), exclude_user_items=True)
    drawn = pd.concat(excluded)[lambda d: d["p_click"].isna()]
    assert len(drawn) == len(plain_negatives) == 3 * int(log["click"].sum())
    assert not any((u, i) in seen for u, i in zip(drawn["user_id"], drawn["item_id"]))
    assert all(item_cate[i] == c for i, c in zip(drawn["item_id"], drawn["cate_id"]))  # category follows the item
    again = build_din_samples(log, maxlen=5, negatives=3, seed=1, extra_cols=("p_click",), exclude_user_items=True)
    pd.testing.assert_frame_equal(again[0], excluded[0])  # seeded


def test_exclude_user_items_fills_a_nearly_full_user_and_refuses_a_full_one():
    # User a has seen 3 of the 4 items: the only negative left is item 99.
    log = pd.DataFrame({"user_id": ["a"] * 3 + ["b"], "item_id": [1, 2, 3, 99], "cate_id": [1, 1, 1, 2],
                        "timestamp": [1, 2, 3, 1], "click": [1, 1, 1, 0]})
    train, test = build_din_samples(log, maxlen=3, negatives=4, exclude_user_items=True)
    rows = pd.concat([train, test])
    assert set(rows.loc[(rows["user_id"] == "a") & (rows["click"] == 0), "item_id"]) == {99}
    full = pd.concat([log, pd.DataFrame({"user_id": ["a"], "item_id": [99], "cate_id": [2], "timestamp": [9],
                                         "click": [0]})])
    with pytest.raises(ValueError, match=r"exclude_user_items: user 'a' has every one of the 4 items"):
        build_din_samples(full, maxlen=3, negatives=1, exclude_user_items=True)


def test_users_left_in_conflict_draw_from_their_complement():
    from tfrec.data.behaviour import _draw_outside_user_items

    # User 0 knows items 0-3 of 5, user 1 knows item 2; no uniform redraw allowed (max_rounds=0).
    keys = np.array([0, 1, 2, 3, 5 + 2])
    drawn = np.array([0, 1, 2, 2, 4])
    owners = np.array([0, 0, 0, 1, 1])
    out = _draw_outside_user_items(np.random.default_rng(0), drawn, owners, keys, 5, max_rounds=0)
    assert out.tolist() == [4, 4, 4, out[3], 4] and out[3] in (0, 1, 3, 4)


def test_sim_samples_carry_event_times_aligned_with_the_history():
    log = small_log()
    train, test = build_sim_samples(log, maxlen=3)
    assert list(train.columns) == ["user_id", "item_id", "cate_id", "timestamp", "click",
                                   "hist_item_id", "hist_cate_id", "hist_timestamp"]
    times = dict(zip(log["item_id"], log["timestamp"]))
    for items, stamps, now in zip(train["hist_item_id"], train["hist_timestamp"], train["timestamp"]):
        assert isinstance(stamps, np.ndarray) and stamps.tolist() == [times[i] for i in items]
        assert all(t < now for t in stamps.tolist())
    columns = [VarLenSparseFeat(SparseFeat("hist_item_id", 61, 4, dtype="int64", embedding_name="item_id"), 2),
               VarLenDenseFeat("hist_timestamp", 2, dtype="int64")]
    rows = df_to_inputs(test, columns)
    assert rows["hist_item_id"].tolist() == [[10, 20], [50, 0]]
    assert rows["hist_timestamp"].tolist() == [[1, 2], [1, 0]]  # the same events as the items, padded alike


def test_leave_last_out_holds_out_each_users_last_events_in_the_frames_order():
    log = small_log()
    train, test = leave_last_out(log)
    assert test.to_dict("list") == log.iloc[[4, 5]].reset_index(drop=True).to_dict("list")
    assert train["item_id"].tolist() == [10, 20, 50, 30]
    train2, test2 = leave_last_out(log, test_events=2)
    assert test2["item_id"].tolist() == [50, 30, 40, 60] and train2["item_id"].tolist() == [10, 20]
    ties = pd.DataFrame({"u": [1, 1, 1], "t": [5, 5, 1], "x": ["first", "second", "early"]})
    assert leave_last_out(ties, "u", "t")[1]["x"].tolist() == ["second"]  # a tie: the later row counts as later
    with pytest.raises(KeyError, match=r"leave_last_out needs column\(s\) \['when'\]"):
        leave_last_out(log, time_col="when")
    with pytest.raises(ValueError, match="test_events must be an int >= 1"):
        leave_last_out(log, test_events=0)


def test_leave_last_out_refuses_empty_users_and_text_times():
    """NaN users were one user of all their events (the held-out row the last of them all), None
    users a TypeError from numpy, and times "9", "10", "11" sorted as text made "9" the last."""
    for users in ([1.0, np.nan, np.nan, 1.0], ["a", None, None, "a"]):
        log = pd.DataFrame({"user_id": users, "timestamp": [1, 2, 3, 4]})
        with pytest.raises(ValueError, match=r"leave_last_out: column 'user_id' has 2 empty cell\(s\), the first in "
                                             r"row 1"):
            leave_last_out(log)
    with pytest.raises(ValueError, match=r"leave_last_out: column 'timestamp' holds text \('9' in row 0\)"):
        leave_last_out(pd.DataFrame({"user_id": [1, 1, 1], "timestamp": ["9", "10", "11"]}))
