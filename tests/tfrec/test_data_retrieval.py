import itertools
import re

import numpy as np
import pandas as pd
import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import SparseFeat, VarLenSparseFeat, validate_columns
from tfrec.data import (PLANTED_RANKINGS, RetrievalData, df_to_inputs, make_retrieval_data, planted_recalls,
                        planted_top_k, popularity_top_k, retrieval_feature_columns, retrieval_samples,
                        sdm_feature_columns, true_next_item_probabilities)
from tfrec.metrics import recall_at_k, top_k_indices

LOG_COLUMNS = ["user_id", "item_id", "cate_id", "timestamp", "gender", "age", "interest", "explore"]
SAMPLE_COLUMNS = ["user_id", "gender", "age", "item_id", "cate_id", "timestamp", "hist_item_id", "hist_cate_id",
                  "hist_len"]
SDM_COLUMNS = ["short_item_id", "short_cate_id", "prefer_item_id", "prefer_cate_id", "short_sess_length",
               "prefer_sess_length"]
SEQUENCE_COLUMNS = ["hist_item_id", "hist_cate_id", "short_item_id", "short_cate_id", "prefer_item_id",
                    "prefer_cate_id"]
SMALL = dict(num_users=40, num_items=60, num_categories=6, events_per_user=12, min_events_per_user=3)


@pytest.fixture(scope="module")
def world():
    data = make_retrieval_data()
    train, test = retrieval_samples(data, 50, short_sess_length=5)
    return data, train, test


def assert_samples_equal(a, b):
    sequences = [c for c in SEQUENCE_COLUMNS if c in a.columns]
    pd.testing.assert_frame_equal(a.drop(columns=sequences), b.drop(columns=sequences))
    for column in sequences:
        assert all(np.array_equal(x, y) for x, y in zip(a[column], b[column])), column


def test_log_shapes_dtypes_and_truth():
    data = make_retrieval_data(**SMALL, seed=1)
    log = data.log
    assert isinstance(data, RetrievalData) and list(log.columns) == LOG_COLUMNS
    for column in ("user_id", "item_id", "cate_id", "timestamp", "gender", "age", "interest"):
        assert log[column].dtype == np.int64, column
    assert log["explore"].dtype == bool
    assert log["user_id"].between(1, 40).all() and log["item_id"].between(1, 60).all()
    assert log["cate_id"].between(1, 6).all() and log["gender"].between(1, 2).all() and log["age"].between(1, 7).all()
    sizes = log.groupby("user_id").size()
    assert sizes.between(3, 12).all() and sizes.nunique() > 3 and len(log) == len(data.event_user)
    # Events in (user, time) order, times strictly increasing per user.
    assert (np.diff(log["user_id"]) >= 0).all()
    assert (log.groupby("user_id")["timestamp"].diff().dropna() > 0).all()
    # An item has one category, the catalogue's; popularity is a distribution.
    catalogue = data.items.set_index("item_id")["cate_id"]
    assert (log["cate_id"].to_numpy() == catalogue.loc[log["item_id"]].to_numpy()).all()
    assert list(data.items["item_id"]) == list(range(1, 61)) and data.items["popularity"].sum() == pytest.approx(1)
    # Users: interests in distinct categories, weights summing to 1, the profile as in the log.
    assert (data.users["num_interests"] == 3).all()
    for cates, weights in zip(data.users["interest_cate_ids"], data.users["interest_weights"]):
        assert len(set(cates)) == 3 and len(weights) == 3 and weights.sum() == pytest.approx(1.0)
    profile = log.drop_duplicates("user_id").set_index("user_id")[["gender", "age"]]
    pd.testing.assert_frame_equal(profile, data.users.set_index("user_id")[["gender", "age"]])
    assert log["interest"].between(0, 2).all()
    np.testing.assert_allclose(data.state_prior.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(data.item_vectors, axis=1), 1.0)


def test_interest_count_ranges():
    data = make_retrieval_data(**SMALL, interests_per_user=(1, 4), seed=2)
    counts = data.users["num_interests"]
    assert counts.between(1, 4).all() and counts.nunique() > 2
    assert (data.users["interest_weights"].apply(len) == counts).all()
    # Unused slots have weight 0 and produce no events.
    assert ((data.interest_weights > 0).sum(axis=1) == counts.to_numpy()).all()
    slot = data.log["interest"].to_numpy()
    assert (slot < counts.to_numpy()[data.event_user]).all()


def test_seeds_are_reproducible_and_string_ids_are_int_ids_renamed():
    a, b = make_retrieval_data(**SMALL, seed=3), make_retrieval_data(**SMALL, seed=3)
    pd.testing.assert_frame_equal(a.log, b.log)
    np.testing.assert_array_equal(a.state_prior, b.state_prior)
    assert_samples_equal(retrieval_samples(a, 5, 2)[0], retrieval_samples(b, 5, 2)[0])
    assert not make_retrieval_data(**SMALL, seed=4).log["item_id"].equals(a.log["item_id"])

    strings = make_retrieval_data(**SMALL, seed=3, id_type="str")
    for column, prefix in (("user_id", "u"), ("item_id", "i"), ("cate_id", "c")):
        assert (strings.log[column] == prefix + a.log[column].astype(str)).all()
    pd.testing.assert_frame_equal(strings.log.drop(columns=["user_id", "item_id", "cate_id"]),
                                  a.log.drop(columns=["user_id", "item_id", "cate_id"]))
    np.testing.assert_array_equal(true_next_item_probabilities(strings), true_next_item_probabilities(a))


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_items=3, num_categories=5), "num_items"),
    (dict(interests_per_user=7, num_categories=6), "interests_per_user"),
    (dict(interests_per_user=(3, 2)), "interests_per_user"),
    (dict(events_per_user=1), "min_events_per_user"),
    (dict(stickiness=1.5), "stickiness"),
    (dict(explore_share=-0.1), "explore_share"),
    (dict(id_type="float"), "id_type"),
    (dict(latent_dim=1), "latent_dim"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_retrieval_data(**{**SMALL, **kwargs})


def test_users_have_several_distinct_far_apart_interests(world):
    data, _, _ = world
    log = data.log[~data.log["explore"]]
    # Each interest's events fall mostly in its category.
    cates = np.stack(data.users["interest_cate_ids"].to_numpy())
    own = cates[data.event_user[~data.log["explore"].to_numpy()], log["interest"].to_numpy()]
    assert (log["cate_id"].to_numpy() == own).mean() > 0.8
    # Every user's events spread over several interests: the second largest takes >= 15% for most.
    shares = pd.crosstab(log["user_id"], log["interest"], normalize="index").to_numpy()
    second = np.sort(shares, axis=1)[:, -2]
    assert np.mean(second >= 0.15) > 0.8 and np.median(shares.max(axis=1)) < 0.6
    # ... and over several categories of the catalogue.
    assert log.groupby("user_id")["cate_id"].nunique().median() >= 3
    # The interest directions of a user are far apart (different clusters).
    vectors = data.interest_vectors
    cosines = np.einsum("ukd,ujd->ukj", vectors, vectors)[:, [0, 0, 1], [1, 2, 2]]
    assert np.mean(cosines) < 0.15 and np.mean(cosines < 0.5) > 0.9
    # The weights are of similar size: no single interest dominates most users.
    assert np.median(data.interest_weights.max(axis=1)) < 0.6


def test_samples_columns_and_leave_last_out(world):
    data, train, test = world
    assert list(train.columns) == SAMPLE_COLUMNS + SDM_COLUMNS and list(test.columns) == list(train.columns)
    log = data.log
    # The test frame is each user's last event, in user order; train is every other event but the first.
    last = log.groupby("user_id").tail(1).reset_index(drop=True)
    pd.testing.assert_frame_equal(test[["user_id", "item_id", "cate_id", "timestamp"]],
                                  last[["user_id", "item_id", "cate_id", "timestamp"]])
    assert len(train) == len(log) - 2 * data.num_users
    assert not train.merge(test, on=["user_id", "timestamp"]).shape[0]
    first = log.groupby("user_id").head(1)
    assert not train.merge(first, on=["user_id", "timestamp"]).shape[0]
    # A training target always precedes its user's test target.
    latest_train = train.groupby("user_id")["timestamp"].max()
    assert (latest_train < test.set_index("user_id")["timestamp"].loc[latest_train.index]).all()
    for column in ("hist_len", "short_sess_length", "prefer_sess_length", "gender", "age"):
        assert train[column].dtype == np.int64, column
    assert train["hist_len"].between(1, 50).all() and train["short_sess_length"].between(1, 5).all()
    assert train["prefer_sess_length"].between(0, 50).all() and (train["prefer_sess_length"] == 0).any()


def test_histories_are_the_earlier_events_oldest_first(world):
    data, train, test = world
    log = data.log
    events = {user: frame for user, frame in log.groupby("user_id")}
    for frame in (train.iloc[::997], test.iloc[::97]):
        for row in frame.itertuples():
            earlier = events[row.user_id][events[row.user_id]["timestamp"] < row.timestamp]
            items, cates = earlier["item_id"].to_numpy(), earlier["cate_id"].to_numpy()
            assert len(items) >= 1
            np.testing.assert_array_equal(row.hist_item_id, items[-50:])
            np.testing.assert_array_equal(row.hist_cate_id, cates[-50:])
            assert row.hist_len == min(len(items), 50)
            np.testing.assert_array_equal(row.short_item_id, items[-5:])
            np.testing.assert_array_equal(row.short_cate_id, cates[-5:])
            np.testing.assert_array_equal(row.prefer_item_id, items[:-5][-50:])
            np.testing.assert_array_equal(row.prefer_cate_id, cates[:-5][-50:])
            assert row.short_sess_length == min(len(items), 5)
            assert row.prefer_sess_length == len(row.prefer_item_id)
            assert isinstance(row.hist_item_id, np.ndarray) and row.hist_item_id.dtype == np.int64


def test_samples_from_a_plain_shuffled_log_and_options():
    data = make_retrieval_data(**SMALL, seed=5)
    shuffled = data.log.sample(frac=1.0, random_state=0)
    # Users come in order of first appearance; per user the rows are the same.
    train, test = retrieval_samples(shuffled, 4)
    expected_train, expected_test = retrieval_samples(data, 4)
    key = ["user_id", "timestamp"]
    assert_samples_equal(train.sort_values(key).reset_index(drop=True), expected_train)
    assert_samples_equal(test.sort_values(key).reset_index(drop=True), expected_test)
    assert list(train.columns) == SAMPLE_COLUMNS and train["hist_len"].max() == 4
    # min_history drops the samples with shorter histories (and users without enough events).
    longer, _ = retrieval_samples(data, 4, min_history=3)
    assert longer["hist_len"].min() == 3 and len(longer) == (expected_train["hist_len"] >= 3).sum()
    # Profile columns are optional.
    bare, _ = retrieval_samples(data.log.drop(columns=["gender", "age"]), 4, user_cols=())
    assert "gender" not in bare.columns
    with pytest.raises(KeyError, match="gender"):
        retrieval_samples(data.log.drop(columns=["gender"]), 4)
    for bad in (dict(seq_maxlen=0), dict(seq_maxlen=4, short_sess_length=0), dict(seq_maxlen=4, min_history=0)):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            retrieval_samples(data, **bad)


def test_samples_refuse_a_log_they_would_split_wrongly_without_a_word():
    """Empty user cells were one user of all those events (their histories mixed), an empty
    item a history item; date text was sorted as text ("2024-3-9" after "2024-3-10"), which held
    out another event than the user's last."""
    log = pd.DataFrame({"user_id": ["a", None, "a", "b", np.nan], "item_id": ["i1", "i2", "i3", "i4", "i5"],
                        "timestamp": [1, 2, 3, 4, 5]})
    for bad, message in [
        (log, "column 'user_id' has 2 empty cell(s), the first in row 1"),
        (log.assign(user_id="a", item_id=["i1", "i2", None, "i4", "i5"]), "column 'item_id' has 1 empty cell(s), "
                                                                         "the first in row 2"),
        (log.assign(user_id="a", timestamp=[1, 2, None, 4, 5]), "column 'timestamp' has 1 empty cell(s)"),
        (log.assign(user_id="a", timestamp=["2024-3-9", "2024-3-10", "2024-3-2", "2024-3-3", "2024-3-4"]),
         "column 'timestamp' holds text ('2024-3-9' in row 0), which sorts as text, not by time"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            retrieval_samples(bad, 4, user_cols=(), category_col=None)
    dates = pd.to_datetime(pd.Series(["2024-3-9", "2024-3-10", "2024-3-2"]), format="ISO8601")
    _, test = retrieval_samples(log.head(3).assign(user_id="a", timestamp=dates), 4, user_cols=(), category_col=None)
    assert test["item_id"].tolist() == ["i2"]


def test_samples_keep_a_logs_own_column_names():
    """A MovieLens-named log (movie_id, genres, uid, ts) gives the same samples under its own
    names, SDM's too; without categories only the item sequences are made."""
    data = make_retrieval_data(**SMALL, seed=5)
    names = {"user_id": "uid", "item_id": "movie_id", "cate_id": "genres", "timestamp": "ts"}
    renamed = data.log.rename(columns=names)
    with pytest.raises(KeyError, match=r"user_col, item_col, category_col, time_col .*needs column\(s\) "
                                       r"\['user_id', 'item_id', 'cate_id', 'timestamp'\]"):
        retrieval_samples(renamed, 4)
    own = dict(user_col="uid", item_col="movie_id", category_col="genres", time_col="ts")
    for short in (None, 2):
        train, test = retrieval_samples(renamed, 4, short, **own)
        expected_train, expected_test = retrieval_samples(data, 4, short)
        back = {new: old for old, new in names.items()}
        back.update({prefix + new: prefix + old for old, new in names.items()
                     for prefix in ("hist_", "short_", "prefer_")})
        assert_samples_equal(train.rename(columns=back), expected_train)
        assert_samples_equal(test.rename(columns=back), expected_test)
    no_categories, _ = retrieval_samples(renamed.drop(columns=["genres"]), 4, **dict(own, category_col=None))
    assert "hist_genres" not in no_categories.columns and "hist_movie_id" in no_categories.columns


def brute_force_next_item(data, user, items):
    """p(next item | the user's earlier `items`) by summing over every path of interests."""
    weights = data.interest_weights[user]
    slots = np.flatnonzero(weights > 0)
    share = data.items["popularity"].to_numpy()
    logits = data.sharpness * data.interest_vectors[user] @ data.item_vectors.T + np.log(share)
    p_item = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_item /= p_item.sum(axis=1, keepdims=True)
    emission = (1 - data.explore_share) * p_item + data.explore_share * share  # (K, items)
    stay = data.stickiness
    joint = np.zeros(len(share))
    for path in itertools.product(slots, repeat=len(items) + 1):
        p = weights[path[0]]
        for previous, current in zip(path, path[1:]):
            p *= stay * (previous == current) + (1 - stay) * weights[current]
        for slot, item in zip(path, items):
            p *= emission[slot, item]
        joint += p * emission[path[-1]]
    return joint / joint.sum()


def test_true_probabilities_are_the_exact_posterior_predictive():
    data = make_retrieval_data(num_users=6, num_items=15, num_categories=4, interests_per_user=(2, 3),
                               events_per_user=5, min_events_per_user=3, seed=6, stickiness=0.6)
    train, test = retrieval_samples(data, 10)
    for frame in (train, test):
        probabilities = true_next_item_probabilities(data, frame)
        assert probabilities.shape == (len(frame), 15)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
        for row, sample in enumerate(frame.itertuples()):
            expected = brute_force_next_item(data, sample.user_id - 1, sample.hist_item_id - 1)
            np.testing.assert_allclose(probabilities[row], expected, rtol=1e-9, atol=1e-15)
    # Without samples: each user's last event, in user order (= the test frame here).
    np.testing.assert_array_equal(true_next_item_probabilities(data), true_next_item_probabilities(data, test))


def test_oracle_is_calibrated_on_training_rows(world):
    """The draws follow the stated probabilities: recall@50 of the oracle = the mass it covers."""
    data, train, _ = world
    rows = train.iloc[::13].reset_index(drop=True)  # ~5,500 rows: the hit share's std is ~0.006
    probabilities = true_next_item_probabilities(data, rows)
    top = top_k_indices(probabilities, 50)
    covered = np.take_along_axis(probabilities, top, axis=1).sum(axis=1)
    hits = (data.item_ids[top] == rows["item_id"].to_numpy()[:, None]).any(axis=1)
    assert abs(hits.mean() - covered.mean()) < 4 * np.sqrt(covered.mean() * (1 - covered.mean()) / len(rows))
    np.testing.assert_array_equal(planted_top_k(data, rows.iloc[:300], 50), data.item_ids[top[:300]])


def test_documented_recalls_and_multi_interest_headroom(world):
    data, train, test = world
    recalls = planted_recalls(data, train, test, k=50)
    assert set(recalls) == set(PLANTED_RANKINGS) | {"popularity"}
    assert 0.62 < recalls["oracle"] < 0.76 and 0.10 < recalls["popularity"] < 0.18
    assert recalls["oracle"] - recalls["popularity"] > 0.4
    # One averaged interest (or only the heaviest) loses recall that keeping the interests apart keeps.
    assert recalls["mixture"] - recalls["centroid"] > 0.15 and recalls["mixture"] - recalls["dominant"] > 0.15
    assert recalls["oracle"] > recalls["mixture"] > recalls["centroid"] > recalls["popularity"]
    # The figures are the metrics of the rankings planted_top_k returns.
    ranked = planted_top_k(data, test, 50, "centroid")
    assert ranked.shape == (len(test), 50) and recall_at_k(test["item_id"], ranked, 50) == recalls["centroid"]


def test_popularity_top_k_ranks_training_targets():
    frame = pd.DataFrame({"item_id": [3, 1, 3, 2, 2, 3, 5]})
    np.testing.assert_array_equal(popularity_top_k(frame, 3), [3, 2, 1])  # 1 and 5 tie: first seen
    with pytest.raises(ValueError, match="at least k=5"):
        popularity_top_k(frame, 5)


def test_planted_rankings_reject_unknown_names_and_rows():
    data = make_retrieval_data(**SMALL, seed=7)
    train, test = retrieval_samples(data, 5)
    with pytest.raises(ValueError, match="ranking must be one of"):
        planted_top_k(data, test, 5, ranking="best")
    moved = test.assign(timestamp=test["timestamp"] + 1)
    with pytest.raises(ValueError, match="match no event"):
        true_next_item_probabilities(data, moved)


def test_feature_columns_share_tables_and_feed_df_to_inputs(world):
    data, train, test = world
    user, item = retrieval_feature_columns(data, 50, embedding_dim=8, profile_embedding_dim=4)
    validate_columns(user + item)
    by_name = {c.name: c for c in user + item}
    assert [c.name for c in user] == ["user_id", "gender", "age", "hist_item_id", "hist_cate_id"]
    assert [c.name for c in item] == ["item_id"] and isinstance(item[0], SparseFeat)
    assert by_name["user_id"].vocabulary_size == 2001 and by_name["item_id"].vocabulary_size == 2001
    assert by_name["gender"].vocabulary_size == 3 and by_name["age"].vocabulary_size == 8
    assert by_name["user_id"].embedding_dim == 4 and by_name["item_id"].embedding_dim == 8
    hist = by_name["hist_item_id"]
    assert isinstance(hist, VarLenSparseFeat) and hist.embedding_name == "item_id" and hist.maxlen == 50
    assert hist.length_name == "hist_len" and hist.combiner == "mean" and hist.embedding_dim == 8
    assert by_name["hist_cate_id"].vocabulary_size == 51 and by_name["hist_cate_id"].length_name == "hist_len"
    assert [c.name for c in retrieval_feature_columns(data, 20, with_cate=False)[0]][-1] == "hist_item_id"

    rows = test.iloc[:64]
    inputs = df_to_inputs(rows, user + item)
    assert inputs["hist_item_id"].shape == (64, 50) and inputs["hist_len"].tolist() == rows["hist_len"].tolist()
    row = rows.iloc[0]
    np.testing.assert_array_equal(inputs["hist_item_id"][0, :row["hist_len"]], row["hist_item_id"])

    sdm_user, sdm_item = sdm_feature_columns(data, 5, 50, embedding_dim=8)
    validate_columns(sdm_user + sdm_item)
    sdm = {c.name: c for c in sdm_user}
    assert list(sdm) == ["user_id", "gender", "age", "short_item_id", "prefer_item_id", "short_cate_id",
                         "prefer_cate_id"]
    assert sdm["short_item_id"].maxlen == 5 and sdm["short_item_id"].length_name == "short_sess_length"
    assert sdm["prefer_cate_id"].maxlen == 50 and sdm["prefer_cate_id"].length_name == "prefer_sess_length"
    assert sdm["short_item_id"].embedding_name == "item_id" and sdm["prefer_cate_id"].embedding_name == "cate_id"
    inputs = df_to_inputs(train.iloc[:64], sdm_user + sdm_item)  # the first rows have empty prefer_* cells
    assert inputs["short_item_id"].shape == (64, 5) and inputs["prefer_item_id"].shape == (64, 50)
    assert (inputs["prefer_item_id"][train["prefer_sess_length"].iloc[:64].to_numpy() == 0] == 0).all()


def test_string_id_feature_columns_cover_the_catalogue():
    data = make_retrieval_data(**SMALL, seed=8, id_type="str")
    user, item = retrieval_feature_columns(data, 10)
    validate_columns(user + item)
    by_name = {c.name: c for c in user + item}
    assert by_name["item_id"].dtype == "string" and len(by_name["item_id"].vocabulary) == 60
    assert len(by_name["user_id"].vocabulary) == 40 and len(by_name["hist_cate_id"].vocabulary) == 6
    assert by_name["gender"].dtype == "int64"
    _, test = retrieval_samples(data, 10, short_sess_length=3)
    inputs = df_to_inputs(test, user + item + sdm_feature_columns(data, 3, 10)[0][3:])
    assert inputs["hist_item_id"].dtype == object and inputs["short_item_id"].shape == (40, 3)
    with pytest.raises(TypeError, match="RetrievalData"):
        retrieval_feature_columns(data.log, 10)
