"""MovieLens 100K / 1M -> DIN ranking samples and YoutubeDNN / MIND / SDM retrieval samples.

Reads the original GroupLens files (https://grouplens.org/datasets/movielens/, never
downloaded here): 100K's `u.data` (tab-separated user, item, rating, timestamp), `u.item`
('|'-separated, latin-1, 19 genre flags) and `u.user`; 1M's `ratings.dat`, `movies.dat` and
`users.dat` ('::'-separated, latin-1). A movie's category (`cate_id`) is its first genre, as an
int code: 1 + its index in MOVIELENS_GENRES (0 is padding); ids stay MovieLens' own ints.

Ranking (`load_movielens_ranking`), two recipes:

* labels="rating" (default) -- DIN's MovieLens setting (Zhou et al., KDD 2018, section 6.1):
  every rating is an impression, click = rating >= 4, and the history of a rating is the
  user's earlier ratings (all of them, or only the liked ones with history="liked"), ordered
  by time, the most recent `maxlen`. DIN's paper splits MovieLens by user (100,000 of 138,493
  users train, the others' ratings are the test set, scored by GAUC over users): that is
  `test_users=0.278`. By default tfrec holds out each user's last rating instead (leave-last-out,
  as the other recipes here).
* labels="sampled" -- DIN's Amazon recipe on MovieLens (zhougr1993/DeepInterestNetwork,
  build_dataset.py): every rating is a positive, every prefix of a user's time-ordered ratings
  predicts the next movie, and each positive gets `negatives` (1) movie(s) drawn uniformly
  from the movies the user never rated; the last rating of each user (with its negative) is
  the test sample.

Retrieval (`load_movielens_retrieval`): DeepMatch's MovieLens example (`gen_data_set` /
`gen_data_set_sdm`, which YoutubeDNN, MIND and SDM are trained on): every rating after a
user's first predicts its movie from the earlier ratings; each user's last rating is the test
sample; the user profile (gender, age, occupation, zip) as int codes from 1.

Ratings with equal timestamps keep their order in the file.
"""
import os

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import SparseFeat, VarLenSparseFeat, history_name

from ..data import din_feature_columns, retrieval_samples
from ..data.planted import _id_column
from ..data.retrieval import (HIST_LENGTH, PREFER_LENGTH, PREFER_PREFIX, SHORT_LENGTH, SHORT_PREFIX)
from ._common import LoadedDataset, din_prefix_samples, reading, require_file

__all__ = ["MOVIELENS_GENRES", "MOVIELENS_PROFILE_FEATURES", "read_movielens", "load_movielens_ranking",
           "load_movielens_retrieval"]

URL = "https://grouplens.org/datasets/movielens/ (ml-100k.zip or ml-1m.zip)"
# u.genre's order (100K); 1M uses the same names without "unknown". cate_id = 1 + index.
MOVIELENS_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
                    "Sci-Fi", "Thriller", "War", "Western")
MOVIELENS_PROFILE_FEATURES = ["gender", "age", "occupation", "zip"]
_FILES = {"100k": ("u.data", "u.item", "u.user"), "1m": ("ratings.dat", "movies.dat", "users.dat")}
# What each of _FILES holds, for the message on a file that does not parse.
_LAYOUTS = {
    "100k": ("tab-separated integers user id, item id, rating, timestamp",
             "'|'-separated lines movie id|title|3 more fields|19 genre flags",
             "'|'-separated lines user id|age|gender|occupation|zip code"),
    "1m": ("'::'-separated integers UserID::MovieID::Rating::Timestamp", "'::'-separated lines MovieID::Title::Genres",
           "'::'-separated lines UserID::Gender::Age::Occupation::Zip-code"),
}
_GENRE_CODE = {name: code for code, name in enumerate(MOVIELENS_GENRES, start=1)}


def _variant(path, variant):
    if variant is None:
        found = [v for v, files in _FILES.items() if os.path.isfile(os.path.join(path, files[0]))]
        variant = found[0] if found else None
        if variant is None:
            raise FileNotFoundError(
                f"MovieLens: expected u.data (100K) or ratings.dat (1M) in {os.path.abspath(path)!r}, found "
                f"neither. tfrec never downloads data: get MovieLens from {URL}, unpack it and pass the "
                "folder (ml-100k or ml-1m)"
            )
    if variant not in _FILES:
        raise ValueError(f"variant must be '100k', '1m' or None (detect), got {variant!r}")
    for name in _FILES[variant]:
        require_file(os.path.join(path, name), f"MovieLens {variant.upper()}", f"its file {name}", URL)
    return variant


def _double_colon(path, names):
    """A '::'-separated file without ':' inside values (ratings.dat, users.dat), via the C parser."""
    raw = pd.read_csv(path, sep=":", header=None, encoding="latin-1", dtype=str, keep_default_na=False)
    raw = raw.iloc[:, ::2]
    raw.columns = names
    return raw


def read_movielens(path, variant=None):
    """The ratings of a MovieLens 100K / 1M folder as one event log.

    Args:
      path: the unpacked folder (ml-100k with u.data / u.item / u.user, or ml-1m with
        ratings.dat / movies.dat / users.dat).
      variant: "100k", "1m" or None (detected from the files present).

    Returns:
      DataFrame, one row per rating in file order: user_id, item_id, rating, timestamp (int64),
      cate_id (int64, 1 + the first genre's index in MOVIELENS_GENRES), genres (str, '|'-joined),
      title (str), gender (str "M" / "F"), age (int64), occupation (str), zip (str).

    Raises:
      FileNotFoundError: a file is missing (the message names it and says where to get it).
      ValueError: a file does not parse as its layout (a cut-off copy: the message names it).
    """
    variant = _variant(path, variant)
    ratings_file, movies_file, users_file = (os.path.join(path, name) for name in _FILES[variant])
    dataset = f"MovieLens {variant.upper()}"
    ratings_layout, movies_layout, users_layout = _LAYOUTS[variant]
    with reading(ratings_file, dataset, ratings_layout, URL):
        if variant == "100k":
            ratings = pd.read_csv(ratings_file, sep="\t", header=None,
                                  names=["user_id", "item_id", "rating", "timestamp"], dtype=np.int64)
        else:
            ratings = _double_colon(ratings_file, ["user_id", "item_id", "rating", "timestamp"]).astype(np.int64)
    with reading(movies_file, dataset, movies_layout, URL):
        if variant == "100k":
            movies = pd.read_csv(movies_file, sep="|", header=None, encoding="latin-1", dtype=str,
                                 keep_default_na=False)
            flags = movies.iloc[:, 5:5 + len(MOVIELENS_GENRES)].to_numpy() == "1"
            names = np.asarray(MOVIELENS_GENRES, dtype=object)
            genres = ["|".join(names[row]) or "unknown" for row in flags]
            movies = pd.DataFrame({"item_id": movies[0].astype(np.int64), "title": movies[1], "genres": genres})
        else:
            movies = pd.read_csv(movies_file, sep="::", engine="python", header=None, encoding="latin-1",
                                 dtype=str, keep_default_na=False, names=["item_id", "title", "genres"])
            movies["item_id"] = movies["item_id"].astype(np.int64)
    with reading(users_file, dataset, users_layout, URL):
        if variant == "100k":
            users = pd.read_csv(users_file, sep="|", header=None, dtype=str, keep_default_na=False,
                                names=["user_id", "age", "gender", "occupation", "zip"])
        else:
            users = _double_colon(users_file, ["user_id", "gender", "age", "occupation", "zip"])
        for name in ("gender", "occupation", "zip"):  # a copy edited on Windows may pad them with spaces
            users[name] = users[name].str.strip()
        users["user_id"] = users["user_id"].astype(np.int64)
        users["age"] = users["age"].astype(np.int64)
    first_genre = movies["genres"].str.split("|").str[0]
    movies["cate_id"] = first_genre.map(_GENRE_CODE).fillna(_GENRE_CODE["unknown"]).astype(np.int64)
    log = ratings.merge(movies[["item_id", "cate_id", "genres", "title"]], on="item_id", how="left", validate="m:1")
    missing = log["cate_id"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} rating(s) name movies missing from {movies_file!r}, e.g. item "
                         f"{int(log.loc[missing, 'item_id'].iloc[0])}")
    log = log.merge(users[["user_id", *MOVIELENS_PROFILE_FEATURES]], on="user_id", how="left", validate="m:1")
    missing = log["gender"].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} rating(s) name users missing from {users_file!r}, e.g. user "
                         f"{int(log.loc[missing, 'user_id'].iloc[0])}")
    log["cate_id"] = log["cate_id"].astype(np.int64)
    return log[["user_id", "item_id", "rating", "timestamp", "cate_id", "genres", "title",
                *MOVIELENS_PROFILE_FEATURES]]


def load_movielens_ranking(path, variant=None, labels="rating", history="rated", maxlen=50, min_rating=4,
                           negatives=1, min_history=1, test_events=1, test_users=None, seed=0, embedding_dim=8):
    """DIN samples from MovieLens 100K / 1M (see the module docstring for the two recipes).

    Args:
      path, variant: as `read_movielens`.
      labels: "rating" (click = rating >= min_rating) or "sampled" (every rating a positive plus
        `negatives` movies the user never rated, label 0).
      history: with labels="rating", "rated" (every earlier rating) or "liked" (earlier ratings
        >= min_rating); with "sampled" always every earlier rating.
      maxlen: history events kept per sample, the most recent ones.
      negatives: sampled negatives per positive for labels="sampled".
      min_history: each user's first `min_history` ratings are no samples (only history; DIN
        starts at a user's second event: 1).
      test_events: each user's last events held out for the test frame.
      test_users: None (leave-last-`test_events`-out) or DIN's user split, a share in (0, 1): that
        share of the users, drawn with `seed`, are test users: every sample of theirs is in the
        test frame, none in train.
      seed: the negative sampler's and the user split's seed.

    Returns:
      LoadedDataset: train / test with columns user_id, item_id, cate_id, timestamp, click
      (int64), hist_item_id, hist_cate_id (lists of int, oldest first), gender, age, occupation,
      zip, and (labels="rating") rating; feature_columns = `tfrec.data.din_feature_columns`
      (int ids, histories sharing the target tables, length "seq_length"); history_features
      ["item_id", "cate_id"]; label_columns "click". `DIN(ds.feature_columns, ds.history_features)`.
    """
    if labels not in ("rating", "sampled"):
        raise ValueError(f"labels must be 'rating' or 'sampled', got {labels!r}")
    if history not in ("rated", "liked"):
        raise ValueError(f"history must be 'rated' or 'liked', got {history!r}")
    if test_users is not None and not 0 < test_users < 1:
        raise ValueError(f"test_users must be a share of the users in (0, 1) or None, got {test_users!r}")
    if test_users is not None and test_events != 1:
        raise ValueError("test_users (a split by user) and test_events (a split in time) exclude each other")
    log = read_movielens(path, variant)
    variant = _variant(path, variant)
    profile = list(MOVIELENS_PROFILE_FEATURES)
    split = (f"leave-last-{test_events}-out" if test_users is None else
             f"every sample of {test_users:.1%} of the users (drawn with seed {seed}) held out")
    if labels == "rating":
        log = log.assign(click=(log["rating"].to_numpy() >= min_rating).astype(np.int64))
        history_col = None if history == "rated" else "click"
        train, test = din_prefix_samples(log, maxlen, 0, seed, history_col=history_col,
                                         extra_cols=profile + ["rating"], min_history=min_history,
                                         test_events=test_events)
        recipe = (f"DIN (Zhou et al., KDD 2018) on MovieLens: click = rating >= {min_rating}, history = the "
                  f"user's earlier {'ratings' if history == 'rated' else 'ratings >= ' + str(min_rating)}, "
                  f"{split}")
    else:
        train, test = din_prefix_samples(log, maxlen, negatives, seed, extra_cols=profile,
                                         min_history=min_history, test_events=test_events)
        recipe = (f"DIN's Amazon recipe on MovieLens: every prefix predicts the next rated movie, {negatives} "
                  "negative(s) per positive drawn uniformly from the movies the user never rated, "
                  f"{split}")
    if test_users is not None:
        train, test = _split_by_user(train, test, test_users, seed)
    columns = din_feature_columns(log, maxlen=maxlen, embedding_dim=embedding_dim, id_type="int")
    stats = {"ratings": len(log), "users": int(log["user_id"].nunique()), "items": int(log["item_id"].nunique()),
             "test_users": int(test["user_id"].nunique())}
    return LoadedDataset(f"movielens-{variant}/din-{labels}", train, test, columns, "click",
                         ["item_id", "cate_id"], recipe=recipe, stats=stats)


def _split_by_user(train, test, share, seed):
    """Leave-last-out frames re-split by user: round(share * users) test users get all their samples."""
    samples = pd.concat([train, test], ignore_index=True)
    samples = samples.iloc[np.argsort(samples["user_id"].to_numpy(), kind="stable")]  # a user's rows in time order
    users = np.unique(samples["user_id"].to_numpy())
    count = min(max(1, int(round(share * len(users)))), len(users) - 1)
    held_out = np.random.default_rng(seed).choice(users, count, replace=False)
    in_test = np.isin(samples["user_id"].to_numpy(), held_out)
    return samples[~in_test].reset_index(drop=True), samples[in_test].reset_index(drop=True)


def _profile_codes(log, names):
    """Each profile column as int64 codes 1..n (sorted values; 0 is padding), and the table sizes."""
    coded, sizes = log.copy(), {}
    for name in names:
        values = np.unique(log[name].astype(str).to_numpy())
        coded[name] = (np.searchsorted(values, log[name].astype(str).to_numpy()) + 1).astype(np.int64)
        sizes[name] = len(values) + 1
    return coded, sizes


def load_movielens_retrieval(path, variant=None, seq_maxlen=50, short_sess_length=None, min_history=1,
                             embedding_dim=32, profile_embedding_dim=None, user_features=MOVIELENS_PROFILE_FEATURES):
    """DeepMatch-style retrieval samples from MovieLens 100K / 1M (leave-last-out).

    Every rating counts (DeepMatch's example keeps all of them); the samples are
    `tfrec.data.retrieval_samples` of the rating log with the first genre as cate_id.

    Args:
      path, variant: as `read_movielens`.
      seq_maxlen: history events kept (hist_*, and prefer_* for SDM).
      short_sess_length: None for YoutubeDNN / MIND columns, or the SDM short session length
        (then the frames also hold short_* / prefer_* and the columns are SDM's).
      min_history: the fewest earlier ratings a sample has.
      embedding_dim: item (and id) embedding size; profile_embedding_dim: the profile's.
      user_features: profile columns carried and embedded (int codes from 1).

    Returns:
      LoadedDataset with label_columns None, feature_columns the user side and
      item_feature_columns [SparseFeat item_id] (int ids of the rated movies, vocabulary_size = the
      largest + 1); history_features
      ["item_id", "cate_id"]. Frames: user_id, the profile codes, item_id, cate_id, timestamp,
      hist_item_id, hist_cate_id (1-D int64 arrays), hist_len (and the SDM columns).
      `YoutubeDNN(ds.user_feature_columns, ds.item_feature_columns)`, `MIND(...)`, or with
      short_sess_length `SDM(ds.user_feature_columns, ds.item_feature_columns, ds.history_features)`.
    """
    log = read_movielens(path, variant)
    variant = _variant(path, variant)
    user_features = list(user_features)
    coded, sizes = _profile_codes(log, user_features)
    train, test = retrieval_samples(coded, seq_maxlen, short_sess_length=short_sess_length, user_cols=user_features,
                                    min_history=min_history)
    profile_dim = embedding_dim if profile_embedding_dim is None else profile_embedding_dim
    ids = {"user_id": log["user_id"], "item_id": log["item_id"],
           "cate_id": pd.Series(np.arange(len(MOVIELENS_GENRES)) + 1)}
    user = [_id_column(ids, "user_id", profile_dim, "int")]
    user += [SparseFeat(name, vocabulary_size=sizes[name], embedding_dim=profile_dim, dtype="int64")
             for name in user_features]
    if short_sess_length is None:
        user.append(VarLenSparseFeat(_id_column(ids, "item_id", embedding_dim, "int", history_name("item_id")),
                                     seq_maxlen, "mean", HIST_LENGTH))
        cate = _id_column(ids, "cate_id", embedding_dim, "int", history_name("cate_id"))
        user.append(VarLenSparseFeat(cate._replace(embedding_name=cate.name), seq_maxlen, "mean", HIST_LENGTH))
        name = f"movielens-{variant}/retrieval"
    else:
        for feature in ("item_id", "cate_id"):
            for prefix, maxlen, length in ((SHORT_PREFIX, short_sess_length, SHORT_LENGTH),
                                           (PREFER_PREFIX, seq_maxlen, PREFER_LENGTH)):
                user.append(VarLenSparseFeat(_id_column(ids, feature, embedding_dim, "int", prefix + feature),
                                             maxlen, "mean", length))
        name = f"movielens-{variant}/sdm"
    recipe = ("DeepMatch's MovieLens example (gen_data_set / gen_data_set_sdm) for YoutubeDNN, MIND and SDM: "
              f"every rating after a user's first {min_history} predicts its movie from the earlier ones, "
              "the user's last rating is the test sample (leave-last-out)")
    stats = {"ratings": len(log), "users": int(log["user_id"].nunique()), "items": int(log["item_id"].nunique())}
    return LoadedDataset(name, train, test, user, None, ["item_id", "cate_id"],
                         item_feature_columns=[_id_column(ids, "item_id", embedding_dim, "int")], recipe=recipe,
                         stats=stats)
