"""Amazon reviews (5-core) -> DIN / DIEN samples, after DIN's published preprocessing.

Reads the files of McAuley's Amazon product data (https://jmcauley.ucsd.edu/data/amazon/,
never downloaded here), e.g. DIN's `reviews_Electronics_5.json` and `meta_Electronics.json`
(plain or .gz): one object per line; a review has reviewerID, asin and unixReviewTime, a meta
record asin and categories. Meta lines may be JSON or the Python-literal dicts the 2014 files
hold (DIN's scripts `eval` them).

The recipe is DIN's (Zhou et al., KDD 2018; zhougr1993/DeepInterestNetwork, utils/1_convert_pd.py,
2_remap_id.py and din/build_dataset.py), which DIEN (Zhou et al., AAAI 2019) reuses:

* an item's category is the last entry of its last category path (`categories[-1][-1]`; the
  2018 files' flat `category` list: its last entry); items without meta, or with an empty last
  path or list, get "unknown";
* a review repeated exactly (same reviewerID, asin and unixReviewTime) counts once (DIN's
  scripts keep such repeats, whose later copy becomes a sample with its own item in its
  history); `stats["dropped_duplicate_reviews"]` counts those dropped;
* each user's reviews are sorted by unixReviewTime (equal times keep the file's order);
* every prefix predicts the next review: the sample of review i >= 1 (counted from 0) has the
  user's reviews 0..i-1 as history (the most recent `maxlen`), the item of review i as a
  positive, and `negatives` (1) item(s) drawn uniformly from the items the user never reviewed
  as negative(s) with the same history;
* leave-last-out: each user's last review, with its negative, is the test sample; all others
  train.

Ids stay the raw strings (reviewerID, asin, category): the feature columns carry vocabularies
and the lookup runs in the graph.
"""
import ast
import json

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from ..data import din_feature_columns
from ._common import LoadedDataset, bad_line, din_prefix_samples, open_text, reading, require_file, whole_number

__all__ = ["read_amazon_reviews", "load_amazon"]

URL = "https://jmcauley.ucsd.edu/data/amazon/ (5-core reviews, e.g. reviews_Electronics_5.json.gz, and its metadata)"
UNKNOWN_CATEGORY = "unknown"


_REVIEWS_LAYOUT = "one review per line, a JSON object (or Python dict literal) with reviewerID, asin and unixReviewTime"
_META_LAYOUT = "one product per line, a JSON object (or Python dict literal) with asin and categories"


def _records(path):
    """(line number, record) of each non-empty line; call it inside `reading`, which names the file."""
    with open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                try:
                    record = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise bad_line(number, "neither JSON nor a Python dict literal") from None
            if not isinstance(record, dict):
                raise bad_line(number, f"a {type(record).__name__}, not an object of named fields")
            yield number, record


def _category(record):
    paths = record.get("categories")
    last = paths[-1] if paths else None
    if isinstance(last, (list, tuple)):  # an empty path ([[]]) names no category
        last = last[-1] if last else None
    if last:
        return str(last)
    flat = record.get("category")
    if flat:
        return str(flat[-1]) if isinstance(flat, (list, tuple)) else str(flat)
    return UNKNOWN_CATEGORY


def read_amazon_reviews(reviews_path, meta_path):
    """The reviews as an event log with each item's category.

    Returns:
      DataFrame in file order, one row per line of the reviews file (exact duplicates too, which
      `load_amazon` drops): user_id (reviewerID), item_id (asin), cate_id (str), timestamp
      (unixReviewTime, int64).

    Raises:
      FileNotFoundError: a file is missing (the message names it and where to get it).
      KeyError: a review without reviewerID, asin or unixReviewTime (the message names the line).
      ValueError: a line that is neither JSON nor a Python dict literal, or a unixReviewTime that
      is no whole number: the message names the file, the line, the layout and where to get it.
    """
    require_file(reviews_path, "Amazon reviews", "the 5-core reviews file (e.g. reviews_Electronics_5.json)", URL)
    require_file(meta_path, "Amazon reviews", "the metadata file (e.g. meta_Electronics.json)", URL)
    users, items, times = [], [], []
    with reading(reviews_path, "Amazon reviews", _REVIEWS_LAYOUT, URL):
        for number, record in _records(reviews_path):
            try:
                user, item, time = record["reviewerID"], record["asin"], record["unixReviewTime"]
            except KeyError as error:
                raise KeyError(f"{reviews_path!r} line {number}: the review lacks {error}; reviews need reviewerID, "
                               "asin and unixReviewTime") from None
            users.append(str(user))
            items.append(str(item))
            times.append(whole_number(time, number, "unixReviewTime"))
    reviewed = set(items)
    category = {}
    with reading(meta_path, "Amazon reviews", _META_LAYOUT, URL):
        for _, record in _records(meta_path):
            asin = str(record.get("asin"))
            if asin in reviewed and asin not in category:
                category[asin] = _category(record)
    log = pd.DataFrame({"user_id": pd.Series(users, dtype=str), "item_id": pd.Series(items, dtype=str),
                        "timestamp": np.asarray(times, dtype=np.int64)})
    log["cate_id"] = log["item_id"].map(category).fillna(UNKNOWN_CATEGORY).astype(str)
    return log[["user_id", "item_id", "cate_id", "timestamp"]]


def load_amazon(reviews_path, meta_path, maxlen=100, negatives=1, seed=0, embedding_dim=8):
    """DIN's Amazon samples (see the module docstring).

    Args:
      reviews_path: the 5-core reviews file (JSON lines, optionally .gz).
      meta_path: the metadata file of the same category.
      maxlen: history events kept per sample (the most recent ones; DIN keeps all of them and
        its models cut nothing, so pick it above the longest history to match).
      negatives: items per positive drawn uniformly from the items the user never reviewed.
      seed: the negative sampler's seed.

    Returns:
      LoadedDataset: train / test with columns user_id, item_id, cate_id (str), timestamp
      (int64), click (int64: 1 for the reviewed item, 0 for its negatives right after it),
      hist_item_id, hist_cate_id (lists of str, oldest first); feature_columns =
      `tfrec.data.din_feature_columns` with string vocabularies; history_features ["item_id",
      "cate_id"]; label_columns "click"; stats count the reviews kept, the exact duplicates dropped
      (dropped_duplicate_reviews: a review repeated with the same reviewerID, asin and
      unixReviewTime counts once), the users, items and categories, and the items without meta.

    Raises:
      FileNotFoundError: a file is missing; KeyError: a review lacks a field; ValueError: a line
      is out of its layout (neither JSON nor a dict literal, a unixReviewTime that is no whole
      number): the message names the file and the line.
    """
    log = read_amazon_reviews(reviews_path, meta_path)
    # A review repeated in the file would be a sample whose history holds its own item (DIN's scripts keep it).
    repeated = log.duplicated(["user_id", "item_id", "timestamp"]).to_numpy()
    log = log[~repeated].reset_index(drop=True)
    train, test = din_prefix_samples(log, maxlen, negatives, seed, min_history=1, test_events=1)
    columns = din_feature_columns(log, maxlen=maxlen, embedding_dim=embedding_dim, id_type="str")
    recipe = ("DIN (Zhou et al., KDD 2018; DIEN reuses it) on Amazon 5-core: every prefix of a user's "
              f"time-ordered reviews predicts the next item, {negatives} negative(s) drawn uniformly from the "
              "items the user never reviewed, category = the last category of the item's meta, the last review "
              "of each user is the test sample")
    stats = {"reviews": len(log), "dropped_duplicate_reviews": int(repeated.sum()), "users": int(log["user_id"].nunique()), "items": int(log["item_id"].nunique()),
             "categories": int(log["cate_id"].nunique()),
             "items_without_meta": int(log.loc[log["cate_id"] == UNKNOWN_CATEGORY, "item_id"].nunique())}
    return LoadedDataset("amazon/din", train, test, columns, "click", ["item_id", "cate_id"], recipe=recipe,
                         stats=stats)
