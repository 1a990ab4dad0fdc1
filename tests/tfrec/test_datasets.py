"""tfrec.datasets: each loader on small files written here in the dataset's original format."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from feature_columns import DenseFeat, SparseFeat, VarLenDenseFeat
from tfrec.data import df_to_inputs
from tfrec.datasets.census import CENSUS_COLUMNS
from tfrec.datasets import (ALI_CCP_FIELDS, CENSUS_DENSE, CENSUS_SPARSE, CLSR_TIME_RANGE, MOVIELENS_GENRES,
                            load_ali_ccp, load_amazon, load_census_income, load_movielens_ranking,
                            load_movielens_retrieval, load_taobao, read_ali_ccp, read_amazon_reviews, read_movielens)

DAY = 86_400


def _dtypes(frame):
    return {name: str(dtype) for name, dtype in frame.dtypes.items()}


def _is_str(series):
    """A column of str (pandas 3's "str" dtype, or object holding str)."""
    return pd.api.types.is_string_dtype(series) and all(isinstance(v, str) for v in series)


def _no_test_event_in_training_histories(train, test, time_col="timestamp"):
    """Every (user, item) of a test positive is absent from the user's training histories, and
    every training sample of a user comes before the user's test samples."""
    history = {}
    for user, items in zip(train["user_id"], train["hist_item_id"]):
        history.setdefault(user, set()).update(list(items))
    first_test = test.groupby("user_id")[time_col].min()
    last_train = train.groupby("user_id")[time_col].max()
    positives = test[test["click"] == 1] if "click" in test else test
    for user, item in zip(positives["user_id"], positives["item_id"]):
        assert item not in history.get(user, set()), (user, item)
    common = first_test.index.intersection(last_train.index)
    assert (last_train[common] <= first_test[common]).all()


# ---------------------------------------------------------------- MovieLens

GENRES_1M = {1: "Animation|Children's|Comedy", 2: "Adventure|Children's", 3: "Comedy|Romance", 4: "Drama",
             5: "Comedy", 6: "Action|Crime|Thriller", 7: "Sci-Fi", 8: "Horror|Thriller"}
USERS_1M = {1: ("F", 1, 10, "48067"), 2: ("M", 56, 16, "70072"), 3: ("M", 25, 15, "55117"), 4: ("F", 45, 7, "02460")}
# (user, movie, rating, timestamp), written shuffled; user 3's first two ratings share a second.
RATINGS = [
    (1, 1, 5, 1000), (1, 3, 3, 1010), (1, 5, 4, 1020), (1, 7, 2, 1030), (1, 2, 5, 1040),
    (2, 4, 4, 2000), (2, 6, 5, 2005), (2, 8, 1, 2010), (2, 1, 4, 2020),
    (3, 2, 3, 3000), (3, 3, 4, 3000), (3, 4, 5, 3100), (3, 5, 2, 3200), (3, 6, 4, 3300), (3, 7, 5, 3400),
    (4, 8, 5, 4000), (4, 7, 4, 4100), (4, 6, 1, 4200),
]


def write_movielens_1m(folder):
    folder.mkdir(exist_ok=True)
    order = np.random.default_rng(0).permutation(len(RATINGS))
    shuffled = [RATINGS[i] for i in order]
    # Keep user 3's tie in file order (movie 2 before movie 3).
    tie = [r for r in shuffled if r[0] == 3 and r[3] == 3000]
    shuffled = [r for r in shuffled if r not in tie] + sorted(tie, key=lambda r: r[1])
    (folder / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in shuffled), "latin-1")
    titles = {1: "Toy Story (1995)", 7: "Star Wars: Episode IV - A New Hope (1977)"}
    (folder / "movies.dat").write_text("".join(f"{m}::{titles.get(m, f'Movie {m} (1999)')}::{g}\n"
                                               for m, g in GENRES_1M.items()), "latin-1")
    (folder / "users.dat").write_text("".join(f"{u}::{g}::{a}::{o}::{z}\n" for u, (g, a, o, z) in USERS_1M.items()),
                                      "latin-1")
    return folder


def write_movielens_100k(folder):
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS))
    lines = []
    for movie, genres in GENRES_1M.items():
        flags = ["1" if name in genres.split("|") else "0" for name in MOVIELENS_GENRES]
        if movie == 8:
            flags = ["0"] * len(flags)  # no genre: "unknown"
        lines.append("|".join([str(movie), f"Film {movie} (1995)", "01-Jan-1995", "", "http://x"] + flags))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").replace("Film 1", "Fïlm 1").encode("latin-1"))
    (folder / "u.user").write_text("".join(f"{u}|{a}|{g}|{['writer', 'other', 'artist', 'doctor'][u - 1]}|{z}\n"
                                           for u, (g, a, o, z) in USERS_1M.items()))
    return folder


def _expected_din(min_rating=4, history="rated"):
    """(train, test) rows (user, item, timestamp, click, hist items) computed naively."""
    train, test = [], []
    for user in sorted({r[0] for r in RATINGS}):
        events = sorted([r for r in RATINGS if r[0] == user], key=lambda r: (r[3], r[1]))
        for i, (u, m, r, t) in enumerate(events):
            if i == 0:
                continue
            earlier = [e[1] for e in events[:i] if history == "rated" or e[2] >= min_rating]
            (test if i == len(events) - 1 else train).append((u, m, t, int(r >= min_rating), earlier))
    return train, test


def test_read_movielens_1m_and_100k_give_the_same_log(tmp_path):
    log_1m = read_movielens(str(write_movielens_1m(tmp_path / "ml-1m")))
    log_100k = read_movielens(str(write_movielens_100k(tmp_path / "ml-100k")))
    assert list(log_1m.columns) == ["user_id", "item_id", "rating", "timestamp", "cate_id", "genres", "title",
                                    "gender", "age", "occupation", "zip"]
    assert len(log_1m) == len(log_100k) == len(RATINGS)
    for log in (log_1m, log_100k):
        assert all(str(log[c].dtype) == "int64" for c in ["user_id", "item_id", "rating", "timestamp", "cate_id",
                                                           "age"])
    row = log_1m[log_1m["item_id"] == 7].iloc[0]
    assert row["title"] == "Star Wars: Episode IV - A New Hope (1977)"  # '::' split, ':' kept
    assert row["cate_id"] == MOVIELENS_GENRES.index("Sci-Fi") + 1
    assert log_1m.loc[log_1m["item_id"] == 1, "cate_id"].iloc[0] == MOVIELENS_GENRES.index("Animation") + 1
    by_item = log_100k.drop_duplicates("item_id").set_index("item_id")
    assert by_item.loc[8, "cate_id"] == 1 and by_item.loc[8, "genres"] == "unknown"
    assert by_item.loc[1, "title"].startswith("Fïlm")  # latin-1
    assert set(log_100k["occupation"]) == {"writer", "other", "artist", "doctor"}


def test_movielens_profile_text_padded_with_spaces_reads_as_the_plain_value(tmp_path):
    """A users file saved with trailing spaces and CRLF line ends (an edited copy) gives the same
    profile values: '48067 ' and '48067' must not become two zip codes."""
    folder = write_movielens_1m(tmp_path / "ml-1m")
    lines = (folder / "users.dat").read_text("latin-1").splitlines()
    (folder / "users.dat").write_bytes("".join(line + " \r\n" for line in lines).encode("latin-1"))
    padded = read_movielens(str(folder))
    plain = read_movielens(str(write_movielens_1m(tmp_path / "plain")))
    for name in ("gender", "occupation", "zip"):
        assert padded[name].tolist() == plain[name].tolist()


def test_movielens_ranking_rating_labels(tmp_path):
    ds = load_movielens_ranking(str(write_movielens_1m(tmp_path / "ml-1m")), maxlen=3)
    columns = ["user_id", "item_id", "cate_id", "timestamp", "click", "hist_item_id", "hist_cate_id",
               "gender", "age", "occupation", "zip", "rating"]
    assert list(ds.train.columns) == columns and list(ds.test.columns) == columns
    assert _dtypes(ds.train)["click"] == "int64" and _dtypes(ds.train)["item_id"] == "int64"
    expected_train, expected_test = _expected_din()
    assert len(ds.train) == len(expected_train) == len(RATINGS) - 2 * 4 and len(ds.test) == len(expected_test) == 4
    for frame, expected in ((ds.train, expected_train), (ds.test, expected_test)):
        got = [(u, m, t, c, list(h)) for u, m, t, c, h in
               zip(frame["user_id"], frame["item_id"], frame["timestamp"], frame["click"], frame["hist_item_id"])]
        assert got == [(u, m, t, c, h[-3:]) for u, m, t, c, h in expected]  # time order, last maxlen kept
    assert (ds.train["click"] == (ds.train["rating"] >= 4)).all()
    genre = read_movielens(str(tmp_path / "ml-1m")).drop_duplicates("item_id").set_index("item_id")["cate_id"]
    for items, cates in zip(ds.train["hist_item_id"], ds.train["hist_cate_id"]):
        assert list(cates) == genre.loc[list(items)].tolist()
    _no_test_event_in_training_histories(ds.train, ds.test)
    assert ds.history_features == ["item_id", "cate_id"] and ds.label_columns == "click"
    assert [c.name for c in ds.feature_columns] == ["user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id"]
    assert ds.feature_columns[1].vocabulary_size == 9  # int ids: the largest + 1

    liked = load_movielens_ranking(str(tmp_path / "ml-1m"), history="liked", maxlen=10)
    expected_train, _ = _expected_din(history="liked")
    assert [list(h) for h in liked.train["hist_item_id"]] == [h for *_, h in expected_train]
    # Two test events per user (build_din_samples' path): the same samples, split differently.
    two = load_movielens_ranking(str(tmp_path / "ml-1m"), maxlen=10, test_events=2)
    assert len(two.test) == 8 and len(two.train) == len(RATINGS) - 3 * 4
    expected_train, expected_test = _expected_din()
    both = pd.concat([two.train, two.test]).sort_values(["user_id", "timestamp"], kind="stable")
    in_time_order = sorted(expected_train + expected_test, key=lambda r: (r[0], r[2], r[1]))
    assert [list(h) for h in both["hist_item_id"]] == [h for *_, h in in_time_order]
    _no_test_event_in_training_histories(two.train, two.test)


def test_movielens_ranking_user_split_holds_out_every_sample_of_the_test_users(tmp_path):
    folder = str(write_movielens_1m(tmp_path / "ml-1m"))
    by_time = load_movielens_ranking(folder, maxlen=10)
    ds = load_movielens_ranking(folder, maxlen=10, test_users=0.5, seed=4)
    train_users, test_users = set(ds.train["user_id"]), set(ds.test["user_id"])
    assert len(test_users) == 2 and not train_users & test_users and train_users | test_users == {1, 2, 3, 4}
    assert ds.stats["test_users"] == 2 and "50.0% of the users" in ds.recipe
    # The same samples as leave-last-out, re-split: every sample of a test user, in time order.
    expected_train, expected_test = _expected_din()
    every = sorted(expected_train + expected_test, key=lambda r: (r[0], r[2], r[1]))
    for frame, users in ((ds.train, train_users), (ds.test, test_users)):
        assert list(frame.columns) == list(by_time.train.columns)
        got = [(u, m, t, c, list(h)) for u, m, t, c, h in
               zip(frame["user_id"], frame["item_id"], frame["timestamp"], frame["click"], frame["hist_item_id"])]
        assert got == [r for r in every if r[0] in users]
    assert load_movielens_ranking(folder, test_users=0.5, seed=4).test["user_id"].tolist() == ds.test["user_id"].tolist()
    assert load_movielens_ranking(folder, test_users=0.1).test["user_id"].nunique() == 1  # at least one user
    sampled = load_movielens_ranking(folder, labels="sampled", test_users=0.5, seed=4)
    assert set(sampled.test["user_id"]) == test_users and sampled.test["click"].tolist()[:2] == [1, 0]
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError, match="test_users must be a share"):
            load_movielens_ranking(folder, test_users=bad)
    with pytest.raises(ValueError, match="exclude each other"):
        load_movielens_ranking(folder, test_users=0.5, test_events=2)


def test_movielens_ranking_sampled_negatives(tmp_path):
    ds = load_movielens_ranking(str(write_movielens_100k(tmp_path / "ml-100k")), labels="sampled", seed=3)
    assert list(ds.train.columns) == ["user_id", "item_id", "cate_id", "timestamp", "click", "hist_item_id",
                                      "hist_cate_id", "gender", "age", "occupation", "zip"]
    assert len(ds.train) == 2 * (len(RATINGS) - 2 * 4) and len(ds.test) == 2 * 4
    rated = {}
    for u, m, *_ in RATINGS:
        rated.setdefault(u, set()).add(m)
    genre = read_movielens(str(tmp_path / "ml-100k")).drop_duplicates("item_id").set_index("item_id")["cate_id"]
    for frame in (ds.train, ds.test):
        assert frame["click"].tolist() == [1, 0] * (len(frame) // 2)
        pos, neg = frame.iloc[::2].reset_index(drop=True), frame.iloc[1::2].reset_index(drop=True)
        assert (pos[["user_id", "timestamp"]] == neg[["user_id", "timestamp"]]).all().all()
        assert all(list(a) == list(b) for a, b in zip(pos["hist_item_id"], neg["hist_item_id"]))
        for user, item in zip(neg["user_id"], neg["item_id"]):
            assert item not in rated[user]
        assert (neg["cate_id"].to_numpy() == genre.loc[neg["item_id"]].to_numpy()).all()
    _no_test_event_in_training_histories(ds.train, ds.test)
    again = load_movielens_ranking(str(tmp_path / "ml-100k"), labels="sampled", seed=3)
    assert again.train["item_id"].tolist() == ds.train["item_id"].tolist()


def test_movielens_retrieval_leave_last_out(tmp_path):
    folder = str(write_movielens_1m(tmp_path / "ml-1m"))
    ds = load_movielens_retrieval(folder, seq_maxlen=4, embedding_dim=8)
    assert list(ds.train.columns) == ["user_id", "gender", "age", "occupation", "zip", "item_id", "cate_id",
                                      "timestamp", "hist_item_id", "hist_cate_id", "hist_len"]
    assert all(_dtypes(ds.train)[c] == "int64" for c in ["gender", "age", "occupation", "zip", "hist_len"])
    assert ds.train["gender"].min() >= 1  # 0 is padding
    assert len(ds.test) == 4 and len(ds.train) == len(RATINGS) - 2 * 4
    expected_train, expected_test = _expected_din()
    by_user = ds.train.sort_values("user_id", kind="stable")  # users come in order of first appearance
    assert [list(h) for h in by_user["hist_item_id"]] == [h[-4:] for *_, h in expected_train]
    assert ds.test.sort_values("user_id")["item_id"].tolist() == [m for _, m, *_ in expected_test]
    assert (ds.train["hist_len"] == ds.train["hist_item_id"].map(len)).all()
    _no_test_event_in_training_histories(ds.train, ds.test)
    assert ds.label_columns is None and [c.name for c in ds.item_feature_columns] == ["item_id"]
    assert [c.name for c in ds.user_feature_columns] == ["user_id", "gender", "age", "occupation", "zip",
                                                         "hist_item_id", "hist_cate_id"]
    inputs = df_to_inputs(ds.train, ds.user_feature_columns + ds.item_feature_columns)
    assert inputs["hist_item_id"].shape == (len(ds.train), 4)

    sdm = load_movielens_retrieval(folder, seq_maxlen=4, short_sess_length=2, embedding_dim=8)
    assert {"short_item_id", "prefer_item_id", "short_sess_length", "prefer_sess_length"} <= set(sdm.train.columns)
    row = sdm.test[sdm.test["user_id"] == 3].iloc[0]
    assert list(row["short_item_id"]) == [5, 6] and list(row["prefer_item_id"]) == [2, 3, 4]
    assert [c.name for c in sdm.user_feature_columns][-4:] == ["short_item_id", "prefer_item_id", "short_cate_id",
                                                               "prefer_cate_id"]


def test_din_fits_one_step_on_the_movielens_loader(tmp_path):
    from tfrec.models import DIN

    ds = load_movielens_ranking(str(write_movielens_1m(tmp_path / "ml-1m")), labels="sampled", maxlen=5,
                                embedding_dim=4)
    model = DIN(ds.feature_columns, ds.history_features, dnn_hidden_units=(8,), att_hidden_size=(8,))
    model.compile("adam", "binary_crossentropy", jit_compile=False)
    history = model.fit(df_to_inputs(ds.train, ds.feature_columns), ds.train["click"].to_numpy(np.float32),
                        batch_size=len(ds.train), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    scores = model.predict(df_to_inputs(ds.test, ds.feature_columns), verbose=0)
    assert scores.shape == (len(ds.test), 1)


def test_ratings_of_a_user_or_movie_missing_from_its_file_are_counted_and_named(tmp_path):
    """A rating of a user missing from users.dat said only "some ratings name users missing",
    where a missing movie's message counts the ratings and names one."""
    folder = write_movielens_1m(tmp_path / "ml-1m")
    lines = (folder / "users.dat").read_text("latin-1").splitlines(keepends=True)
    user = lines[0].split("::")[0]
    (folder / "users.dat").write_text("".join(lines[1:]), "latin-1")
    count = sum(r[0] == int(user) for r in RATINGS)
    with pytest.raises(ValueError, match=f"{count} rating\\(s\\) name users missing from .*users.dat', e.g. user {user}$"):
        read_movielens(str(folder))


# ---------------------------------------------------------------- Amazon

def write_amazon(folder):
    folder.mkdir(exist_ok=True)
    reviews = []
    rng = np.random.default_rng(1)
    items = [f"B{i:03d}" for i in range(12)]
    for u in range(5):
        chosen = rng.choice(items, size=5 + u % 2, replace=False)
        times = 1_300_000_000 + 86_400 * np.sort(rng.choice(100, size=len(chosen), replace=False))
        for item, t in zip(chosen, times):
            reviews.append({"reviewerID": f"A{u}", "asin": str(item), "reviewerName": "x", "helpful": [0, 0],
                            "reviewText": "fine", "overall": 4.0, "summary": "ok", "unixReviewTime": int(t),
                            "reviewTime": "01 1, 2011"})
    reviews = [reviews[i] for i in rng.permutation(len(reviews))]
    (folder / "reviews_Electronics_5.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    lines = []
    for i, item in enumerate(items):
        if i == 11:
            continue  # no meta: "unknown"
        record = {"asin": item, "title": f"thing {i}",
                  "categories": [["Electronics", "Accessories"], ["Electronics", f"Cat{i % 3}"]]}
        # The 2014 files are Python literals; some lines here are JSON.
        lines.append(repr(record) if i % 2 else json.dumps(record))
    (folder / "meta_Electronics.json").write_text("\n".join(lines) + "\n")
    return folder, reviews


def test_amazon_din_recipe(tmp_path):
    folder, reviews = write_amazon(tmp_path / "amazon")
    ds = load_amazon(str(folder / "reviews_Electronics_5.json"), str(folder / "meta_Electronics.json"), maxlen=20)
    columns = ["user_id", "item_id", "cate_id", "timestamp", "click", "hist_item_id", "hist_cate_id"]
    assert list(ds.train.columns) == columns and list(ds.test.columns) == columns
    assert all(_is_str(ds.train[c]) for c in ["user_id", "item_id", "cate_id"])
    assert _dtypes(ds.train)["timestamp"] == _dtypes(ds.train)["click"] == "int64"
    assert all(all(isinstance(v, str) for v in h) for h in ds.train["hist_cate_id"])
    per_user = pd.Series([r["reviewerID"] for r in reviews]).value_counts()
    assert len(ds.test) == 2 * len(per_user) and len(ds.train) == 2 * int((per_user - 2).sum())
    reviewed = {}
    for r in reviews:
        reviewed.setdefault(r["reviewerID"], []).append((r["unixReviewTime"], r["asin"]))
    for frame in (ds.train, ds.test):
        assert frame["click"].tolist() == [1, 0] * (len(frame) // 2)
        negatives = frame[frame["click"] == 0]
        for user, item in zip(negatives["user_id"], negatives["item_id"]):
            assert item not in {asin for _, asin in reviewed[user]}
    for _, row in ds.train[ds.train["click"] == 1].iterrows():
        ordered = [asin for _, asin in sorted(reviewed[row["user_id"]])]
        position = ordered.index(row["item_id"])
        assert position >= 1 and list(row["hist_item_id"]) == ordered[:position]
    for _, row in ds.test[ds.test["click"] == 1].iterrows():
        assert row["item_id"] == max(reviewed[row["user_id"]])[1]  # the last review
    for frame in (ds.train, ds.test):
        for item, cate in zip(frame["item_id"], frame["cate_id"]):
            assert cate == ("unknown" if item == "B011" else f"Cat{int(item[1:]) % 3}")  # categories[-1][-1]
    _no_test_event_in_training_histories(ds.train, ds.test)
    item_column = ds.feature_columns[1]
    assert isinstance(item_column, SparseFeat) and item_column.dtype == "string"
    assert set(item_column.vocabulary) == {r["asin"] for r in reviews}
    inputs = df_to_inputs(ds.test, ds.feature_columns)
    assert inputs["hist_item_id"].shape == (len(ds.test), 20)


def test_amazon_items_whose_meta_names_no_category_are_unknown(tmp_path):
    """A meta record with an empty category path ([[]], or the 2018 files' empty `category`)
    names no category: its item is "unknown", like an item without meta, not the text "[]"."""
    folder = tmp_path / "amazon"
    folder.mkdir()
    reviews = [("A1", "B1", 1), ("A1", "B2", 2), ("A1", "B3", 3), ("A2", "B3", 1), ("A2", "B4", 2)]
    (folder / "reviews.json").write_text("".join(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t}) + "\n"
                                                 for u, i, t in reviews))
    meta = [repr({"asin": "B1", "categories": [[]]}), repr({"asin": "B2", "categories": [["Audio"], []]}),
            json.dumps({"asin": "B3", "category": []}), repr({"asin": "B4", "categories": [["Electronics", "Cams"]]})]
    (folder / "meta.json").write_text("\n".join(meta) + "\n")
    log = read_amazon_reviews(str(folder / "reviews.json"), str(folder / "meta.json"))
    assert dict(zip(log["item_id"], log["cate_id"])) == {"B1": "unknown", "B2": "unknown", "B3": "unknown",
                                                         "B4": "Cams"}


def test_amazon_drops_a_review_repeated_exactly(tmp_path):
    """A review repeated in the file (same reviewer, asin and time) was a sample whose history held
    its own item; it counts once, and the stats say how many were dropped. A review of the same
    item at another time is another review."""
    folder = tmp_path / "amazon"
    folder.mkdir()
    reviews = [("A1", "B1", 1), ("A1", "B2", 2), ("A1", "B2", 2), ("A1", "B3", 3), ("A1", "B1", 4),
               ("A2", "B1", 1), ("A2", "B3", 2), ("A2", "B3", 2)]
    (folder / "reviews.json").write_text("".join(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t}) + "\n"
                                                 for u, i, t in reviews))
    (folder / "meta.json").write_text(repr({"asin": "B1", "categories": [["Cams"]]}) + "\n")
    assert len(read_amazon_reviews(str(folder / "reviews.json"), str(folder / "meta.json"))) == 8  # the file as it is
    ds = load_amazon(str(folder / "reviews.json"), str(folder / "meta.json"), negatives=0)
    assert ds.train["item_id"].tolist() == ["B2", "B3"]
    assert ds.train["hist_item_id"].map(list).tolist() == [["B1"], ["B1", "B2"]]
    assert ds.test["item_id"].tolist() == ["B1", "B3"]
    assert ds.test["hist_item_id"].map(list).tolist() == [["B1", "B2", "B3"], ["B1"]]
    assert ds.stats["dropped_duplicate_reviews"] == 2 and ds.stats["reviews"] == 6


@pytest.mark.parametrize("time, problem", [('"12 3"', "'12 3'"), ("1.5", "1.5"), ("null", "None"), ("true", "True")])
def test_an_amazon_review_time_that_is_no_whole_number_names_the_file_and_line(tmp_path, time, problem):
    """int() of a bad unixReviewTime raised its bare "invalid literal for int() with base 10",
    naming neither the file nor the line (and int(1.5) made it 1 without a word)."""
    folder = tmp_path / "amazon"
    folder.mkdir()
    (folder / "reviews.json").write_text('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": "1300000000"}\n\n'
                                         f'{{"reviewerID": "A1", "asin": "B2", "unixReviewTime": {time}}}\n')
    (folder / "meta.json").write_text("")
    with pytest.raises(ValueError, match=f"reviews.json' does not read as .*line 3: unixReviewTime is "
                                         f"{re.escape(problem)}, not a whole number.*https://"):
        read_amazon_reviews(str(folder / "reviews.json"), str(folder / "meta.json"))
    (folder / "reviews.json").write_text('{"reviewerID": "A1", "asin": "B1"}\n')
    with pytest.raises(KeyError, match="line 1: the review lacks 'unixReviewTime'"):
        read_amazon_reviews(str(folder / "reviews.json"), str(folder / "meta.json"))
    (folder / "meta.json").write_text("{'asin': 'B1', 'categories': [['Cams']]\n")  # cut off
    (folder / "reviews.json").write_text('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1}\n')
    with pytest.raises(ValueError, match="meta.json' does not read as .*line 1: neither JSON nor a Python dict"):
        read_amazon_reviews(str(folder / "reviews.json"), str(folder / "meta.json"))


# ---------------------------------------------------------------- Taobao

T0 = CLSR_TIME_RANGE[0]


def write_taobao(path):
    """12 users x 12 items seen by all (10-core survivors) over 9 days, plus rows each filter drops."""
    rng = np.random.default_rng(2)
    rows = []
    for u in range(1, 13):
        times = np.sort(rng.choice(9 * DAY - 600, size=12, replace=False)) + T0 + 300
        for item, t in zip(rng.permutation(12) + 100, times):
            rows.append((u, item, item % 4 + 1, "pv", t))
            if item == 100:
                rows.append((u, item, item % 4 + 1, "pv", t + 1))  # a repeat view: dropped
    rows += [(1, 101, 2, "buy", T0 + 5 * DAY), (2, 102, 3, "cart", T0 + DAY)]  # not pv
    rows += [(1, 103, 4, "pv", T0 - 10), (1, 104, 1, "pv", CLSR_TIME_RANGE[1] + 10)]  # outside the range
    rows += [(13, 100 + i, (100 + i) % 4 + 1, "pv", T0 + 1000 + i) for i in range(3)]  # user with 3 items
    rows += [(u, 500, 9 if u < 3 else 8, "pv", T0 + 2000 + u) for u in range(1, 12)]  # two categories
    rows += [(u, 600, 5, "pv", T0 + 3000 + u) for u in range(1, 3)]  # item with 2 users
    rows = [rows[i] for i in rng.permutation(len(rows))]
    path.write_text("".join(f"{u},{i},{c},{b},{t}\n" for u, i, c, b, t in rows))
    kept = pd.DataFrame([r for r in rows if r[0] <= 12 and 100 <= r[1] < 112 and r[3] == "pv"],
                        columns=["user_id", "item_id", "cate_id", "behavior", "timestamp"])
    # CLSR's order: the first view of each (user, item), then the time range (so user 1 loses item 103).
    kept = kept.sort_values("timestamp", kind="stable").drop_duplicates(["user_id", "item_id"])
    return kept[kept["timestamp"].between(*CLSR_TIME_RANGE)]


def test_taobao_clsr_recipe(tmp_path):
    kept = write_taobao(tmp_path / "UserBehavior.csv")
    ds = load_taobao(str(tmp_path / "UserBehavior.csv"), maxlen=8, negatives=2, validation_negatives=1,
                     test_negatives=3, seed=1)
    columns = ["user_id", "item_id", "cate_id", "timestamp", "click", "hist_item_id", "hist_cate_id",
               "hist_timestamp", "seq_length"]
    for frame in (ds.train, ds.validation, ds.test):
        assert list(frame.columns) == columns
        assert all(_dtypes(frame)[c] == "int64" for c in ["user_id", "item_id", "cate_id", "timestamp", "click",
                                                          "seq_length"])
    assert ds.stats["events"] == len(kept) == 143 and ds.stats["users"] == 12 and ds.stats["items"] == 12
    latest = kept["timestamp"].max()
    test_start, validation_start = latest - DAY, latest - 2 * DAY
    events = {u: g.sort_values("timestamp", kind="stable") for u, g in kept.groupby("user_id")}
    positives = kept.assign(rank=kept.groupby("user_id")["timestamp"].rank(method="first"))
    positives = positives[positives["rank"] > 1]
    sizes = {"train": ((positives["timestamp"] < validation_start).sum(), 2),
             "validation": (positives["timestamp"].between(validation_start, test_start, inclusive="left").sum(), 1),
             "test": ((positives["timestamp"] >= test_start).sum(), 3)}
    for name, frame in (("train", ds.train), ("validation", ds.validation), ("test", ds.test)):
        count, k = sizes[name]
        assert count > 0 and len(frame) == count * (k + 1)
        assert frame["click"].tolist() == ([1] + [0] * k) * count
        for start in range(0, len(frame), k + 1):
            block = frame.iloc[start:start + k + 1]
            positive = block.iloc[0]
            negatives = block["item_id"].iloc[1:].tolist()
            assert positive["item_id"] not in negatives and len(set(negatives)) == k
            assert (block["timestamp"] == positive["timestamp"]).all()
            user_events = events[positive["user_id"]]
            earlier = user_events[user_events["timestamp"] < positive["timestamp"]]
            assert list(positive["hist_item_id"]) == earlier["item_id"].tolist()
            assert list(positive["hist_timestamp"]) == earlier["timestamp"].tolist()
            assert list(positive["hist_cate_id"]) == earlier["cate_id"].tolist()
            assert positive["seq_length"] == len(earlier)
        assert (frame["cate_id"] == frame["item_id"] % 4 + 1).all()  # negatives carry their own category
    assert (ds.train["timestamp"] < validation_start).all() and (ds.test["timestamp"] >= test_start).all()
    # No validation / test event in a training history.
    assert max(int(h.max()) for h in ds.train["hist_timestamp"] if len(h)) < validation_start
    _no_test_event_in_training_histories(ds.train, ds.test)
    assert [c.name for c in ds.feature_columns] == ["user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id",
                                                    "timestamp", "hist_timestamp"]
    assert isinstance(ds.feature_columns[-1], VarLenDenseFeat) and ds.feature_columns[-1].dtype == "int64"
    assert ds.feature_columns[1].vocabulary_size == 112
    inputs = df_to_inputs(ds.test, ds.feature_columns)
    assert inputs["hist_timestamp"].shape == (len(ds.test), 8) and inputs["timestamp"].dtype == np.int64

    share = load_taobao(str(tmp_path / "UserBehavior.csv"), k_core=1, user_share=0.5, negatives=0,
                        validation_negatives=0, test_negatives=0, with_time=False)
    assert share.stats["users"] == 6 and share.train["click"].eq(1).all()
    assert [c.name for c in share.feature_columns] == ["user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id"]


def test_taobao_k_core_counts_users_and_items_not_repeated_views(tmp_path):
    """With drop_repeats=False the k-core still keeps items seen by >= k users and users with
    >= k items (docs/datasets.md): one user viewing an item k times does not make it k users."""
    t = CLSR_TIME_RANGE[0] + 600
    rows = [(u, i, 1, "pv", t + 60 * (3 * u + i)) for u in (1, 2, 3) for i in (10, 11, 12)]
    rows += [(1, 99, 1, "pv", t + 5000 + s) for s in range(3)]  # one user, three views
    path = tmp_path / "UserBehavior.csv"
    path.write_text("".join(f"{u},{i},{c},{b},{ts}\n" for u, i, c, b, ts in rows))
    ds = load_taobao(str(path), k_core=2, drop_repeats=False, negatives=0, validation_negatives=0,
                     test_negatives=0)
    items = set(pd.concat([ds.train, ds.validation, ds.test])["item_id"])
    assert 99 not in items and items <= {10, 11, 12} and ds.stats["items"] == 3


# ---------------------------------------------------------------- Ali-CCP

def _features(pairs):
    return "\x01".join(f"{field}\x02{fid}\x03{value}" for field, fid, value in pairs)


def write_ali_ccp(folder, split, samples, users):
    folder.mkdir(exist_ok=True)
    lines = []
    for sample_id, (click, buy, md5, item, cate, extra) in enumerate(samples, start=1):
        pairs = [("205", item, "1.0"), ("206", cate, "1.0"), ("216", "8" + item, "1.0"), ("508", "99", "0.69"),
                 ("853", "98", "1.0"),
                 ("853", "97", "1.0"), ("301", "9351665", "1.0")] + extra
        lines.append(f"{sample_id},{click},{buy},{md5},{len(pairs)},{_features(pairs)}\n")
    (folder / f"sample_skeleton_{split}.csv").write_text("".join(lines))
    lines = []
    for md5, (user, gender) in users.items():
        pairs = [("101", user, "1.0"), ("109_14", "10", "1.386"), ("109_14", "11", "0.69"), ("124", gender, "1.0")]
        pairs += [(field, str(3_000_000 + int(field)), "1.0") for field in ("121", "122", "125", "126", "127", "128",
                                                                            "129")]
        lines.append(f"{md5},{len(pairs)},{_features(pairs)}\n")
    (folder / f"common_features_{split}.csv").write_text("".join(lines))


def test_ali_ccp_esmm_frames(tmp_path):
    folder = tmp_path / "aliccp"
    users = {"aa11": ("31", "3438769"), "bb22": ("32", "3438770")}
    train = [(1, 1, "aa11", "4001", "501", []), (0, 0, "aa11", "4002", "502", []),
             (1, 0, "bb22", "4001", "501", [("207", "7001", "1.0")]), (0, 0, "bb22", "4003", "501", [])]
    write_ali_ccp(folder, "train", train, users)
    write_ali_ccp(folder, "test", [(1, 0, "cc33", "4009", "503", []), (0, 0, "aa11", "4001", "501", [])],
                  {"aa11": ("31", "3438769"), "cc33": ("39", "3438770")})
    ds = load_ali_ccp(str(folder), embedding_dim=4)
    names = list(ALI_CCP_FIELDS.values())
    assert list(ds.train.columns) == names + ["click", "conversion"]
    assert _dtypes(ds.train)["click"] == _dtypes(ds.train)["conversion"] == "int64"
    assert all(_is_str(ds.train[n]) for n in names)
    assert ds.train["user_id"].tolist() == ["31", "31", "32", "32"]  # from the common features
    assert ds.train["item_id"].tolist() == ["4001", "4002", "4001", "4003"]
    assert ds.train["shop_id"].tolist() == ["", "", "7001", ""]  # missing -> padding
    assert ds.train["conversion"].tolist() == [1, 0, 0, 0] and ds.train["click"].tolist() == [1, 0, 1, 0]
    assert len(ds.test) == 2 and ds.test["user_id"].tolist() == ["39", "31"]
    assert ds.label_columns == {"ctr": "click", "ctcvr": "conversion"}
    by_name = {c.name: c for c in ds.feature_columns}
    assert list(by_name["item_id"].vocabulary) == ["4001", "4002", "4003"]  # training ids only
    assert list(by_name["user_id"].vocabulary) == ["31", "32"]
    assert "shop_id" in by_name and list(by_name["shop_id"].vocabulary) == ["7001"]
    inputs = df_to_inputs(ds.test, ds.feature_columns)
    assert inputs["item_id"].tolist() == ["4009", "4001"]  # unseen ids stay raw (OOV in the graph)

    frequent = load_ali_ccp(str(folder), min_count=2, fields={"205": "item_id", "101": "user_id"})
    assert [list(c.vocabulary) for c in frequent.feature_columns] == [["4001"], ["31", "32"]]
    assert ds.stats["dropped_conversions_without_click"] == 0


def test_ali_ccp_drops_conversions_without_click(tmp_path):
    """The real files hold impressions with buy=1, click=0 (published preprocessing skips them):
    the loader drops and counts them instead of refusing the whole dataset."""
    folder = tmp_path / "aliccp"
    users = {"aa11": ("31", "3438769")}
    write_ali_ccp(folder, "train", [(1, 1, "aa11", "4001", "501", []), (0, 1, "aa11", "4002", "501", []),
                                    (0, 0, "aa11", "4003", "501", [])], users)
    write_ali_ccp(folder, "test", [(0, 1, "aa11", "4001", "501", []), (1, 0, "aa11", "4003", "501", [])], users)
    ds = load_ali_ccp(str(folder), fields={"205": "item_id"})
    assert ds.train["item_id"].tolist() == ["4001", "4003"] and ds.test["item_id"].tolist() == ["4003"]
    assert ds.stats["dropped_conversions_without_click"] == 2 and ds.stats["train_samples"] == 2
    assert list(ds.feature_columns[0].vocabulary) == ["4001", "4003"]
    train, test = read_ali_ccp(str(folder), fields={"205": "item_id"})
    assert train["conversion"].tolist() == [1, 0] and test["click"].tolist() == [1]


@pytest.mark.parametrize("click, buy, problem", [("x", "0", "click is 'x', not a whole number"),
                                                 ("1", "", "buy is '', not a whole number"),
                                                 ("2", "0", "click and buy must be 0 or 1, got '2' and '0'"),
                                                 ("1", "300", "click and buy must be 0 or 1, got '1' and '300'")])
def test_an_ali_ccp_label_that_is_not_0_or_1_names_the_file_and_line(tmp_path, click, buy, problem):
    """int() of a bad click or buy cell raised its bare "invalid literal for int() with base 10: 'x'"
    (and 300 overflowed the int8 codes), naming neither the file nor the line."""
    folder = tmp_path / "aliccp"
    users = {"aa11": ("31", "3438769")}
    write_ali_ccp(folder, "train", [(1, 1, "aa11", "4001", "501", []), (0, 0, "aa11", "4002", "501", [])], users)
    write_ali_ccp(folder, "test", [(0, 0, "aa11", "4001", "501", [])], users)
    path = folder / "sample_skeleton_train.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = ",".join([lines[1].split(",")[0], click, buy] + lines[1].split(",")[3:])
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=f"Ali-CCP: .*sample_skeleton_train.csv' does not read as .*\\(line 2: "
                                         f"{re.escape(problem)}\\).*https://"):
        load_ali_ccp(str(folder))
    path.write_text("".join([lines[0], "2,0,0\n"]))
    with pytest.raises(ValueError, match="sample_skeleton_train.csv' does not read as .*line 2: expected 6 fields, got 3"):
        read_ali_ccp(str(folder))


# ---------------------------------------------------------------- census-income

def _census_row(rng, never_married, rich, weird=False):
    values = {name: "Not in universe" for name in CENSUS_SPARSE}
    values.update(class_worker=rng.choice(["Private", "Self-employed-not incorporated", "Federal government"]),
                  det_ind_code=str(rng.integers(0, 5)), det_occ_code=str(rng.integers(0, 5)),
                  education="Bachelors degree(BA AB BS)" if rich else "High school graduate",
                  race="White", sex=rng.choice(["Male", "Female"]), mig_chg_msa="?",
                  country_self="Mexico" if weird else "United-States")
    numbers = {name: str(int(rng.integers(0, 60))) for name in CENSUS_DENSE}
    numbers["year"] = str(rng.choice([94, 95]))
    raw = []
    for name in CENSUS_COLUMNS:
        if name == "marital_stat":
            raw.append("Never married" if never_married else "Married-civilian spouse present")
        elif name == "instance_weight":
            raw.append("1700.09")
        elif name == "income_50k":
            raw.append("50000+." if rich else "- 50000.")
        else:
            raw.append(numbers.get(name, values.get(name)))
    return ", ".join(str(v) for v in raw) + "\n"


def test_census_income_mmoe_frames(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "census"
    folder.mkdir()
    (folder / "census-income.data").write_text("".join(_census_row(rng, i % 3 == 0, i % 4 == 0) for i in range(40)))
    (folder / "census-income.test").write_text("".join(_census_row(rng, i % 2 == 0, i % 5 == 0, weird=i == 0)
                                                      for i in range(20)))
    ds = load_census_income(str(folder), validation_share=0.5, seed=0)
    assert list(ds.train.columns) == CENSUS_SPARSE + CENSUS_DENSE + ["instance_weight", "income", "never_married"]
    assert "marital_stat" not in ds.train.columns and "income_50k" not in ds.train.columns
    assert all(_dtypes(ds.train)[n] == "float32" for n in CENSUS_DENSE + ["instance_weight"])
    assert _dtypes(ds.train)["income"] == _dtypes(ds.train)["never_married"] == "int64"
    assert len(ds.train) == 40 and len(ds.validation) == 10 and len(ds.test) == 10
    assert ds.train["income"].sum() == 10 and ds.train["never_married"].sum() == 14
    assert ds.label_columns == {"income": "income", "never_married": "never_married"}
    # Standardised with the training file's statistics.
    assert np.allclose(ds.train["age"].mean(), 0, atol=1e-5) and np.isclose(ds.train["age"].std(ddof=0), 1, atol=1e-4)
    assert set(ds.train["mig_chg_msa"]) == {"unknown"}
    by_name = {c.name: c for c in ds.feature_columns}
    assert [c.name for c in ds.feature_columns] == CENSUS_SPARSE + CENSUS_DENSE
    assert isinstance(by_name["age"], DenseFeat) and list(by_name["country_self"].vocabulary) == ["United-States"]
    both = pd.concat([ds.validation, ds.test])
    assert "Mexico" in set(both["country_self"])  # unseen in training: OOV, kept raw
    df_to_inputs(both, ds.feature_columns)
    dropped = load_census_income(str(folder), validation_share=0.0, drop_marital_proxies=True)
    assert dropped.validation is None and len(dropped.test) == 20
    assert "det_hh_fam_stat" not in dropped.train.columns


def test_census_income_reads_the_gzipped_files_uci_ships(tmp_path):
    """UCI ships census-income.data.gz and census-income.test.gz: they load as the unpacked files do."""
    import gzip

    rng = np.random.default_rng(5)
    rows = {"data": "".join(_census_row(rng, i % 3 == 0, i % 4 == 0) for i in range(12)),
            "test": "".join(_census_row(rng, i % 2 == 0, i % 5 == 0) for i in range(6))}
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    for suffix, text in rows.items():
        (plain / f"census-income.{suffix}").write_text(text)
        with gzip.open(packed / f"census-income.{suffix}.gz", "wt") as file:
            file.write(text)
    expected, got = load_census_income(str(plain)), load_census_income(str(packed))
    for frame in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(getattr(got, frame), getattr(expected, frame))


# ---------------------------------------------------------------- missing files

@pytest.mark.parametrize("load, args, name", [
    (load_movielens_ranking, lambda p: [str(p)], "u.data"),
    (load_movielens_retrieval, lambda p: [str(p)], "ratings.dat"),
    (load_amazon, lambda p: [str(p / "reviews_Electronics_5.json"), str(p / "meta_Electronics.json")],
     "reviews_Electronics_5.json"),
    (load_taobao, lambda p: [str(p / "UserBehavior.csv")], "UserBehavior.csv"),
    (load_ali_ccp, lambda p: [str(p)], "sample_skeleton_train.csv"),
    (load_census_income, lambda p: [str(p)], "census-income.data"),
])
def test_missing_files_name_the_file_and_the_source(tmp_path, load, args, name):
    with pytest.raises(FileNotFoundError, match=name) as error:
        load(*args(tmp_path))
    assert "https://" in str(error.value) and "never downloads" in str(error.value)


def test_a_missing_second_file_is_named(tmp_path):
    folder = write_movielens_1m(tmp_path / "ml-1m")
    (folder / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match="users.dat.*grouplens"):
        load_movielens_ranking(str(folder))
    folder, _ = write_amazon(tmp_path / "amazon")
    with pytest.raises(FileNotFoundError, match="meta_Books.json"):
        load_amazon(str(folder / "reviews_Electronics_5.json"), str(folder / "meta_Books.json"))



@pytest.mark.parametrize("dataset, separator", [("ml-1m", "::"), ("ml-100k", "\t"), ("taobao", ","),
                                                ("census", None)])
def test_a_cut_off_or_edited_file_is_named_with_its_layout(tmp_path, dataset, separator):
    """A file whose last line lost its last field (an interrupted download or unzip), or with text
    where a number belongs, raises a ValueError naming the file, the layout it should have and
    where to get it, not pandas' "invalid literal for int() with base 10: ''"."""
    if dataset.startswith("ml-"):
        folder = (write_movielens_1m if dataset == "ml-1m" else write_movielens_100k)(tmp_path / dataset)
        path, load = folder / ("ratings.dat" if dataset == "ml-1m" else "u.data"), lambda: read_movielens(str(folder))
    elif dataset == "taobao":
        path = tmp_path / "UserBehavior.csv"
        write_taobao(path)
        load = lambda: load_taobao(str(path))  # noqa: E731
    else:
        folder = tmp_path / "census"
        folder.mkdir()
        rng = np.random.default_rng(0)
        (folder / "census-income.test").write_text(_census_row(rng, False, False))
        path, load = folder / "census-income.data", lambda: load_census_income(str(folder))
        path.write_text("x" + _census_row(rng, False, False) + _census_row(rng, True, False))  # age "x52"
    if separator is not None:
        text = path.read_text("latin-1").rstrip("\n")
        path.write_text(text[:text.rindex(separator)] + "\n", "latin-1")
    with pytest.raises(ValueError, match=f"{path.name}' does not read as .*truncated or edited.*https://"):
        load()


def test_ali_ccp_holds_each_id_once_not_a_dict_per_impression(tmp_path):
    """Ali-CCP's training file has ~42 million impressions over far fewer users and items: the
    reader keeps each field as codes of 4 bytes per impression and each id once, where a dict of
    the row's ids per impression took ~1 KB each (~50 GB for the file)."""
    import tracemalloc

    folder = tmp_path / "aliccp"
    users = {f"m{u}": (str(100 + u), str(u % 2)) for u in range(20)}
    samples = [(i % 7 == 0, 0, f"m{i % 20}", str(4000 + i % 50), str(500 + i % 5), []) for i in range(4000)]
    write_ali_ccp(folder, "train", [(int(c), b, m, item, cate, x) for c, b, m, item, cate, x in samples], users)
    write_ali_ccp(folder, "test", [(0, 0, "m1", "4001", "501", [])], users)
    tracemalloc.start()
    try:
        train, _ = read_ali_ccp(str(folder))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(train) == 4000 and train["user_id"].tolist()[:3] == ["100", "101", "102"]
    assert peak / len(train) < 400, f"{peak / len(train):.0f} bytes per impression"
