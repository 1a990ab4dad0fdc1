import numpy as np
import pandas as pd
import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import (DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat, indexed_key, look_up_rows,
                             validate_columns)
from tfrec.data import (LONG_HISTORY_SETTINGS, df_to_inputs, long_history_feature_columns, make_long_history_data,
                        make_long_history_setting, oracle_auc)
from tfrec.data.planted import _catalogue, _sigmoid

FRAME_COLUMNS = ["user_id", "item_id", "cate_id", "timestamp", "click", "p_click", "hist_item_id", "hist_cate_id",
                 "hist_timestamp", "seq_length", "liked", "in_session"]
HISTORY_COLUMNS = ["hist_item_id", "hist_cate_id", "hist_timestamp"]
SMALL = dict(num_users=60, num_items=80, num_categories=8, history_length=40, recent_window=10, targets_per_user=4)


@pytest.fixture(scope="module")
def longterm():
    return make_long_history_setting("longterm")


@pytest.fixture(scope="module")
def drift():
    return make_long_history_setting("drift")


def both(frames):
    return pd.concat(frames, ignore_index=True)


def assert_frames_equal(a, b):
    pd.testing.assert_frame_equal(a.drop(columns=HISTORY_COLUMNS), b.drop(columns=HISTORY_COLUMNS))
    for column in HISTORY_COLUMNS:
        assert all(np.array_equal(x, y) for x, y in zip(a[column], b[column]))


def user_truth(frame):
    """Per user: the liked categories seen among its liked targets, and its session category."""
    liked = frame[frame["liked"]].groupby("user_id")["cate_id"].agg(lambda c: set(c.tolist()))
    session = frame[frame["in_session"]].groupby("user_id")["cate_id"].first()
    return liked, session


def ceiling_auc(frame, weights, flags):
    """AUC of E[p_click | quality, the truth `flags`]: the best score from only that information."""
    liked, session = frame["liked"].to_numpy(int), frame["in_session"].to_numpy(int)
    rest = (np.log(frame["p_click"] / (1 - frame["p_click"]))
            - weights["longterm_weight"] * liked - weights["shortterm_weight"] * session).to_numpy()
    key = (liked if "liked" in flags else 0) + 2 * (session if "session" in flags else 0) + np.zeros(len(frame), int)
    score = np.zeros(len(frame))
    for k in np.unique(key):
        rows = key == k
        for l in (0, 1):
            for s in (0, 1):
                share = np.mean((liked[rows] == l) & (session[rows] == s))
                score[rows] += share * _sigmoid(weights["longterm_weight"] * l + weights["shortterm_weight"] * s
                                                + rest[rows])
    return oracle_auc(frame["click"], score)


def test_columns_shapes_and_dtypes():
    train, test = make_long_history_data(**SMALL, seed=1)
    assert list(train.columns) == FRAME_COLUMNS and list(test.columns) == FRAME_COLUMNS
    assert len(train) + len(test) == 60 * 4 and len(test) == 12 * 4  # a fifth of the users
    for column in ("user_id", "item_id", "cate_id", "timestamp", "click", "seq_length"):
        assert train[column].dtype == np.int64, column
    assert train["p_click"].dtype == np.float64
    assert train["liked"].dtype == bool and train["in_session"].dtype == bool
    assert set(train["click"]) <= {0, 1} and ((train["p_click"] > 0) & (train["p_click"] < 1)).all()
    assert train["item_id"].between(1, 80).all() and train["cate_id"].between(1, 8).all()
    for column in HISTORY_COLUMNS:
        for cell, length in zip(train[column], train["seq_length"]):
            assert isinstance(cell, np.ndarray) and cell.ndim == 1 and cell.dtype == np.int64 and len(cell) == length
    # Histories are 20-40 long (min_history_length defaults to history_length // 2).
    assert train["seq_length"].between(20, 40).all() and train["seq_length"].nunique() > 5
    # A user's rows share their history arrays.
    first_user = train[train["user_id"] == train["user_id"].iloc[0]]
    assert first_user["hist_item_id"].iloc[0] is first_user["hist_item_id"].iloc[-1]


def test_items_belong_to_their_category_and_p_click_is_the_formula():
    weights = dict(longterm_weight=1.3, shortterm_weight=0.7, quality_weight=0.4, click_bias=-1.1)
    train, test = make_long_history_data(**SMALL, **weights, seed=5)
    frame = both((train, test))
    # The catalogue is the generator's first draw: recompute each item's category and quality.
    item_cate, quality, _ = _catalogue(np.random.default_rng(5), 80, 8)
    assert (frame["cate_id"] == item_cate[frame["item_id"] - 1] + 1).all()
    for item_column, cate_column in [("hist_item_id", "hist_cate_id")]:
        for items, cates in zip(frame[item_column], frame[cate_column]):
            np.testing.assert_array_equal(item_cate[items - 1] + 1, cates)
    expected = _sigmoid(1.3 * frame["liked"] + 0.7 * frame["in_session"]
                        + 0.4 * quality[frame["item_id"] - 1] - 1.1)
    np.testing.assert_allclose(frame["p_click"], expected, rtol=1e-12)
    # The truth columns agree with each user's truth.
    liked, session = user_truth(frame)
    assert (frame.loc[frame["in_session"], "cate_id"] == frame.loc[frame["in_session"], "user_id"].map(session)).all()
    assert frame.groupby("user_id")["in_session"].any().mean() > 0.8


def test_seeds_are_reproducible():
    assert_frames_equal(make_long_history_data(**SMALL, seed=3)[0], make_long_history_data(**SMALL, seed=3)[0])
    assert not make_long_history_data(**SMALL, seed=4)[0]["item_id"].equals(
        make_long_history_data(**SMALL, seed=3)[0]["item_id"])


def test_string_ids_are_the_int_ids_renamed():
    ints, strs = make_long_history_data(**SMALL, seed=2)[0], make_long_history_data(**SMALL, seed=2, id_type="str")[0]
    assert strs["user_id"].tolist() == ["u" + str(u) for u in ints["user_id"]]
    assert strs["item_id"].tolist() == ["i" + str(i) for i in ints["item_id"]]
    assert strs["cate_id"].tolist() == ["c" + str(c) for c in ints["cate_id"]]
    assert strs["hist_item_id"][0].tolist() == ["i" + str(i) for i in ints["hist_item_id"][0]]
    assert strs["hist_cate_id"][7].tolist() == ["c" + str(c) for c in ints["hist_cate_id"][7]]
    np.testing.assert_array_equal(strs["hist_timestamp"][3], ints["hist_timestamp"][3])
    assert strs["click"].equals(ints["click"])
    with pytest.raises(ValueError, match="id_type"):
        make_long_history_data(**SMALL, id_type="uuid")


def test_bad_arguments_are_named():
    for bad, match in [(dict(min_history_length=50), "min_history_length"), (dict(recent_window=-1), "recent_window"),
                       (dict(liked_categories=9), "liked_categories"), (dict(test_share=1.5), "test_share"),
                       (dict(num_items=5), "num_items")]:
        with pytest.raises(ValueError, match=match):
            make_long_history_data(**{**SMALL, **bad})
    with pytest.raises(ValueError, match="setting must be one of"):
        make_long_history_setting("short")


def test_histories_are_time_ordered_before_the_request(longterm):
    frame = both(longterm)
    for times, request in zip(frame["hist_timestamp"][::97], frame["timestamp"][::97]):
        assert (np.diff(times) > 0).all() and times[-1] < request and times[0] >= 1_600_000_000
    # Exponential gaps, mean about an hour.
    gaps = np.concatenate([np.diff(t) for t in frame["hist_timestamp"][::97]])
    assert 3000 < gaps.mean() < 4200


def test_users_not_rows_are_split(longterm):
    train, test = longterm
    assert set(train["user_id"]).isdisjoint(test["user_id"])
    assert test["user_id"].nunique() == 400 and train["user_id"].nunique() == 1600
    assert (train.groupby("user_id").size() == 8).all() and (test.groupby("user_id").size() == 8).all()
    assert train["user_id"].is_monotonic_increasing and list(train.index) == list(range(len(train)))
    assert train["seq_length"].between(1000, 2000).all()


def test_long_part_shows_the_liked_categories_and_the_recent_part_the_session(longterm):
    frame = both(longterm).drop_duplicates("user_id")
    liked, session = user_truth(both(longterm))
    liked_share, session_share, session_before = [], [], []
    for user, cates in zip(frame["user_id"], frame["hist_cate_id"]):
        if len(liked.get(user, ())) == 2:  # both liked categories showed among the user's targets
            liked_share.append(np.isin(cates[:-50], list(liked[user])).mean())
        if user in session.index:
            session_share.append(np.mean(cates[-50:] == session[user]))
            session_before.append(np.mean(cates[-60:-50] == session[user]))
    assert len(liked_share) > 500 and len(session_share) > 1500
    # 1 - noise_share + noise_share * liked_categories / num_categories = 0.91; session_focus + 0.2 / 20 = 0.81.
    assert np.mean(liked_share) == pytest.approx(0.91, abs=0.01)
    assert np.mean(session_share) == pytest.approx(0.81, abs=0.01)
    # The session starts exactly at the window: just before it, s_u is as frequent as a long-part category
    # (0.9 * 2 / 20 * 1 / 2 + 0.1 / 20 = 0.05 in expectation, as s_u is liked with probability 2 / 20).
    assert np.mean(session_before) == pytest.approx(0.05, abs=0.02)


def test_only_the_long_part_tells_liked_targets_apart(longterm):
    """Among targets outside the session, a liked target's category is no more frequent than another's
    in the last 50 events, and ~90x more frequent before them."""
    frame = both(longterm)
    frame = frame[~frame["in_session"]]
    recent = np.array([np.sum(c[-50:] == t) for c, t in zip(frame["hist_cate_id"], frame["cate_id"])])
    far = np.array([np.mean(c[:-50] == t) for c, t in zip(frame["hist_cate_id"], frame["cate_id"])])
    liked = frame["liked"].to_numpy()
    # Noise puts 0.2 * 50 / 20 = 0.5 events of any non-session category in the recent window.
    assert recent[liked].mean() == pytest.approx(0.5, abs=0.06)
    assert recent[~liked].mean() == pytest.approx(0.5, abs=0.06)
    assert abs(recent[liked].mean() - recent[~liked].mean()) < 0.08
    assert far[liked].mean() > 50 * far[~liked].mean()


@pytest.mark.parametrize("name, oracle_range", [("longterm", (0.80, 0.89)), ("drift", (0.77, 0.84))])
def test_click_rate_and_oracle_auc_are_the_documented_ones(name, oracle_range, longterm, drift):
    train, test = longterm if name == "longterm" else drift
    weights = LONG_HISTORY_SETTINGS[name]
    for frame in (train, test):
        assert 0.25 < frame["click"].mean() < 0.36
        assert frame["click"].mean() == pytest.approx(frame["p_click"].mean(), abs=0.02)
        assert oracle_range[0] < oracle_auc(frame["click"], frame["p_click"]) < oracle_range[1]
    oracle = oracle_auc(test["click"], test["p_click"])
    recent_only = ceiling_auc(test, weights, {"session"})
    liked_only = ceiling_auc(test, weights, {"liked"})
    assert recent_only < oracle - 0.1  # the last window cannot tell what a user likes
    if name == "longterm":
        assert liked_only == pytest.approx(oracle, abs=1e-12)
    else:
        assert liked_only < oracle - 0.07  # either interest alone falls short


def test_feature_columns_cover_both_frames_and_share_tables(longterm):
    train, test = longterm
    columns = long_history_feature_columns((train, test), maxlen=50, embedding_dim=4)
    validate_columns(columns)
    by_name = {c.name: c for c in columns}
    assert list(by_name) == ["user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id",
                             "timestamp", "hist_timestamp"]
    assert by_name["user_id"].vocabulary_size == 2001 and by_name["item_id"].vocabulary_size == 1001
    assert by_name["hist_item_id"].embedding_name == "item_id" and by_name["hist_cate_id"].embedding_name == "cate_id"
    assert by_name["hist_item_id"].maxlen == 50 and by_name["hist_item_id"].length_name == "seq_length"
    assert by_name["timestamp"] == DenseFeat("timestamp", dtype="int64")
    assert by_name["hist_timestamp"] == VarLenDenseFeat("hist_timestamp", 50, dtype="int64")
    assert [c.name for c in long_history_feature_columns(train, 20, with_time=False)] == list(by_name)[:5]

    strs, _ = make_long_history_data(**SMALL, id_type="str")
    string_columns = {c.name: c for c in long_history_feature_columns(strs, maxlen=10)}
    seen = set(np.concatenate([*strs["hist_item_id"], strs["item_id"].to_numpy()]))
    assert string_columns["hist_item_id"].dtype == "string" and set(string_columns["item_id"].vocabulary) == seen


def test_df_to_inputs_aligns_the_long_sequences(longterm):
    train, test = longterm
    rows = test.iloc[::40].reset_index(drop=True)
    columns = long_history_feature_columns((train, test), maxlen=50)
    inputs = df_to_inputs(rows, columns)
    n = len(rows)
    assert inputs["hist_item_id"].shape == inputs["hist_cate_id"].shape == inputs["hist_timestamp"].shape == (n, 50)
    assert inputs["hist_item_id"].dtype == np.int64 and inputs["hist_timestamp"].dtype == np.int64
    assert inputs["timestamp"].dtype == np.int64 and inputs["timestamp"].shape == (n,)
    assert inputs["timestamp"].tolist() == rows["timestamp"].tolist()  # epoch seconds stay exact
    assert inputs["seq_length"].tolist() == rows["seq_length"].tolist()
    for row in range(n):  # every row is longer than maxlen: the 50 most recent events, same positions
        np.testing.assert_array_equal(inputs["hist_item_id"][row], rows["hist_item_id"][row][-50:])
        np.testing.assert_array_equal(inputs["hist_cate_id"][row], rows["hist_cate_id"][row][-50:])
        np.testing.assert_array_equal(inputs["hist_timestamp"][row], rows["hist_timestamp"][row][-50:])
    # look_up_rows indexes the ids and passes the times through.
    looked_up = look_up_rows(columns, inputs)
    assert looked_up["hist_timestamp"] is inputs["hist_timestamp"] and looked_up["timestamp"] is inputs["timestamp"]
    [history] = [column for column in columns if column.name == "hist_item_id"]
    np.testing.assert_array_equal(looked_up[indexed_key("hist_item_id", history)], inputs["hist_item_id"])


def test_varlen_dense_keeps_the_positions_of_the_id_sequence():
    frame = pd.DataFrame({
        "hist": [[1, 2, 3, 4, 5], [6], [], None, [7, 8, 9]],
        "hist_time": [[10, 20, 30, 40, 50], [60], [], None, [70, 80, 90]],
        "hist_dwell": [[0.5, 1.5, 2.5, 3.5, 4.5], [5.5], [], None, [6.5, 7.5, 8.5]],
    })
    columns = [VarLenSparseFeat(SparseFeat("hist", 10, dtype="int64"), maxlen=3),
               VarLenDenseFeat("hist_time", 3, dtype="int64"), VarLenDenseFeat("hist_dwell", 3)]
    for cells in (frame, frame.map(lambda c: None if c is None else np.asarray(c))):
        inputs = df_to_inputs(cells, columns)
        assert inputs["hist"].tolist() == [[3, 4, 5], [6, 0, 0], [0, 0, 0], [0, 0, 0], [7, 8, 9]]
        assert inputs["hist_time"].dtype == np.int64
        np.testing.assert_array_equal(inputs["hist_time"], inputs["hist"] * 10)
        assert inputs["hist_dwell"].dtype == np.float32
        np.testing.assert_array_equal(inputs["hist_dwell"], np.where(inputs["hist"] > 0, inputs["hist"] - 0.5, 0))


def test_array_cells_pad_as_list_cells_do():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, 300)
    lists = pd.DataFrame({
        "ids": [rng.integers(1, 50, k).tolist() for k in lengths],
        "names": [[f"x{v}" for v in rng.integers(0, 9, k)] for k in lengths],
        "weights": [rng.random(k).tolist() for k in lengths],
        "times": [np.sort(rng.integers(0, 2**40, k)).tolist() for k in lengths],
    })
    lists.loc[5, ["ids", "names", "weights", "times"]] = None
    arrays = lists.map(lambda c: None if c is None
                       else np.asarray(c, dtype=object if c and isinstance(c[0], str) else None))
    assert isinstance(arrays["ids"][0], np.ndarray)
    columns = [VarLenSparseFeat(SparseFeat("ids", 50, dtype="int64"), maxlen=6, weight_name="weights",
                                length_name="ids_length"),
               VarLenSparseFeat(SparseFeat("names", dtype="string", vocabulary=[f"x{v}" for v in range(9)]), maxlen=4),
               VarLenDenseFeat("times", 6, dtype="int64")]
    from_lists, from_arrays = df_to_inputs(lists, columns), df_to_inputs(arrays, columns)
    assert set(from_lists) == set(from_arrays) == {"ids", "ids_length", "weights", "names", "times"}
    for name in from_lists:
        assert from_lists[name].dtype == from_arrays[name].dtype, name
        np.testing.assert_array_equal(from_lists[name], from_arrays[name], err_msg=name)
    assert from_lists["names"][5].tolist() == ["", "", "", ""]


def test_dense_int64_and_bad_dense_sequences_are_named():
    frame = pd.DataFrame({"t": [1_700_000_000_123, 2], "f": [1.5, 2.0], "bad": [0.5, 1.0],
                          "seq": [np.zeros((2, 2)), np.zeros(3)], "words": [["a"], ["b"]]})
    inputs = df_to_inputs(frame, [DenseFeat("t", dtype="int64"), DenseFeat("f", dtype="float64")])
    assert inputs["t"].dtype == np.int64 and inputs["t"].tolist() == [1_700_000_000_123, 2]
    assert inputs["f"].dtype == np.float32  # float dtypes stay float32
    with pytest.raises(ValueError, match="feature 'bad' has dtype 'int64' and needs integers"):
        df_to_inputs(frame, [DenseFeat("bad", dtype="int64")])
    with pytest.raises(ValueError, match=r"column 'seq' must hold a list/1-D array.*shape \(2, 2\)"):
        df_to_inputs(frame, [VarLenDenseFeat("seq", 4)])
    with pytest.raises(ValueError, match="feature 'words' has dtype 'float32' and needs numbers"):
        df_to_inputs(frame, [VarLenDenseFeat("words", 4)])
    with pytest.raises(ValueError, match="feature 'words' has dtype 'int64' and needs integers"):
        df_to_inputs(frame, [VarLenDenseFeat("words", 4, dtype="int64")])
