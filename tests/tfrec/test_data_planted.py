import numpy as np
import pandas as pd
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import FeatureEncoder, SparseFeat, VarLenSparseFeat
from tfrec.data import (DIN_HISTORY_FEATURES, build_din_samples, df_to_inputs, din_feature_columns,
                        make_behaviour_log, make_multitask_data, multitask_feature_columns, oracle_auc)
from tfrec.metrics import auc

LOG_COLUMNS = ["user_id", "item_id", "cate_id", "timestamp", "click", "conversion", "p_click", "p_conversion"]


@pytest.fixture(scope="module")
def log():
    return make_behaviour_log()


def test_behaviour_log_is_deterministic_per_seed():
    small = dict(num_users=50, num_items=40, num_categories=5, events_per_user=6)
    pd.testing.assert_frame_equal(make_behaviour_log(seed=3, **small), make_behaviour_log(seed=3, **small))
    assert not make_behaviour_log(seed=4, **small)["item_id"].equals(make_behaviour_log(seed=3, **small)["item_id"])


def test_behaviour_log_shape_and_invariants(log):
    assert list(log.columns) == LOG_COLUMNS and len(log) == 2000 * 30
    assert log["user_id"].dtype == np.int64 and log["user_id"].min() == 1 and log["user_id"].max() == 2000
    assert log["item_id"].min() >= 1 and log["item_id"].max() <= 1000
    assert log["cate_id"].min() >= 1 and log["cate_id"].max() <= 20
    assert (log.groupby("item_id")["cate_id"].nunique() == 1).all()  # an item has one category
    for p in ("p_click", "p_conversion"):
        assert ((log[p] > 0) & (log[p] < 1)).all()
    assert not ((log["conversion"] == 1) & (log["click"] == 0)).any()
    assert log.groupby("user_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing).all()
    assert 0.2 < log["click"].mean() < 0.45


def test_behaviour_log_oracle_auc_in_intended_range(log):
    train, test = build_din_samples(log, maxlen=50, extra_cols=("p_click",))
    assert 0.75 <= oracle_auc(test["click"], test["p_click"]) <= 0.86
    assert oracle_auc(train["click"], train["p_click"]) == auc(train["click"], train["p_click"])
    # The history carries the signal: a click is far likelier when the target's category was clicked before.
    seen = np.array([c in h for c, h in zip(train["cate_id"], train["hist_cate_id"])])
    assert train["click"][seen].mean() > 2 * train["click"][~seen].mean()


def test_string_ids_are_the_int_log_renamed():
    small = dict(num_users=30, num_items=40, num_categories=5, events_per_user=5, seed=1)
    ints, strs = make_behaviour_log(**small), make_behaviour_log(id_type="str", **small)
    assert strs["user_id"].tolist() == ["u" + str(u) for u in ints["user_id"]]
    assert strs["item_id"].tolist() == ["i" + str(i) for i in ints["item_id"]]
    assert strs["cate_id"].tolist() == ["c" + str(c) for c in ints["cate_id"]]
    assert strs["click"].tolist() == ints["click"].tolist()
    with pytest.raises(ValueError, match="id_type"):
        make_behaviour_log(id_type="uuid")


def test_din_feature_columns_int_ids(log):
    columns = din_feature_columns(log, maxlen=20, embedding_dim=4)
    assert DIN_HISTORY_FEATURES == ["item_id", "cate_id"]
    assert [c.name for c in columns] == ["user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id"]
    user, item, cate, hist_item, hist_cate = columns
    assert isinstance(user, SparseFeat) and user.vocabulary_size == 2001 and user.embedding_dim == 4
    assert item.vocabulary_size == log["item_id"].max() + 1 and item.dtype == "int64"
    assert isinstance(hist_item, VarLenSparseFeat) and hist_item.maxlen == 20
    assert hist_item.embedding_name == "item_id" and hist_cate.embedding_name == "cate_id"
    assert hist_item.length_name == hist_cate.length_name == "seq_length"
    assert hist_item.vocabulary_size == item.vocabulary_size


def test_din_columns_and_samples_feed_a_keras_model_with_string_ids():
    log = make_behaviour_log(num_users=40, num_items=60, num_categories=6, events_per_user=8, id_type="str")
    columns = din_feature_columns(log, maxlen=5)
    item = columns[1]
    assert item.dtype == "string" and list(item.vocabulary) == sorted(log["item_id"].unique())
    train, _ = build_din_samples(log, maxlen=5)
    inputs = df_to_inputs(train, columns)
    expected_lengths = np.minimum(train["hist_item_id"].map(len), 5)
    assert inputs["seq_length"].tolist() == expected_lengths.tolist()
    assert inputs["hist_item_id"].shape == (len(train), 5)
    encoder = FeatureEncoder(columns)
    model = tf.keras.Model(encoder.features, tf.keras.layers.Dense(1)(encoder.dnn_input()))
    assert model.predict(inputs, verbose=0).shape == (len(train), 1)


@pytest.fixture(scope="module")
def multitask():
    return make_multitask_data()


def test_multitask_data_invariants(multitask):
    df = multitask
    assert len(df) == 50000
    assert {"user_id", "item_id", "cate_id", "device", "hour", "price", "user_activity", "click",
            "conversion", "dwell", "p_click", "p_conversion_given_click", "p_ctcvr", "dwell_mean"} <= set(df.columns)
    assert not ((df["conversion"] == 1) & (df["click"] == 0)).any()
    assert (df.loc[df["click"] == 0, "dwell"] == 0).all() and (df.loc[df["click"] == 1, "dwell"] > 0).all()
    np.testing.assert_allclose(df["p_ctcvr"], df["p_click"] * df["p_conversion_given_click"])
    for p in ("p_click", "p_conversion_given_click"):
        assert ((df[p] > 0) & (df[p] < 1)).all()
    assert set(df["device"]) == {"android", "ios", "web"} and df["hour"].between(0, 23).all()
    pd.testing.assert_frame_equal(make_multitask_data(num_samples=300, seed=5), make_multitask_data(num_samples=300, seed=5))


def test_multitask_oracle_aucs_in_intended_range(multitask):
    df = multitask
    clicked = df["click"] == 1
    assert 0.7 <= oracle_auc(df["click"], df["p_click"]) <= 0.85
    assert 0.7 <= oracle_auc(df["conversion"], df["p_ctcvr"]) <= 0.88
    assert 0.7 <= oracle_auc(df["conversion"][clicked], df["p_conversion_given_click"][clicked]) <= 0.85
    # Dwell is drawn around its mean.
    assert abs(df["dwell"][clicked].mean() / df["dwell_mean"][clicked].mean() - 1) < 0.05


def test_task_relatedness_controls_how_alike_the_tasks_are():
    def logit_correlation(relatedness):
        df = make_multitask_data(num_samples=20000, task_relatedness=relatedness, seed=2)
        logit = lambda p: np.log(p / (1 - p))  # noqa: E731
        return np.corrcoef(logit(df["p_click"]), logit(df["p_conversion_given_click"]))[0, 1]

    unrelated, half, same = logit_correlation(0.0), logit_correlation(0.5), logit_correlation(1.0)
    assert unrelated < 0.3 < half < same and same > 0.8
    with pytest.raises(ValueError, match="task_relatedness"):
        make_multitask_data(task_relatedness=1.5)


def test_multitask_feature_columns(multitask):
    columns = multitask_feature_columns(multitask, embedding_dim=4)
    by_name = {c.name: c for c in columns}
    assert by_name["device"].dtype == "string" and list(by_name["device"].vocabulary) == ["android", "ios", "web"]
    assert by_name["hour"].vocabulary_size == 24
    assert by_name["user_id"].vocabulary_size == multitask["user_id"].max() + 1
    inputs = df_to_inputs(multitask.head(10), columns)
    assert inputs["price"].dtype == np.float32 and inputs["device"].dtype == object
