"""Exports a two-tower retrieval model as SavedModels that return the top-k candidate ids.

`export_retrieval(model, "exports/youtubednn", candidates)` embeds the candidates once with
the model's item tower and writes, each as its own numbered version directory (the same
version number in all four, each published atomically):

  * `exports/youtubednn/<v>`: the retrieval model. Its `serving_default` takes the raw user
    features (the user tower's inputs, as `export_saved_model` takes them: a (None, 1) Input
    as a vector [None], every integer Input as int64) and returns `item_ids` (the
    candidates' raw ids, as in the frame; string or int64) and `scores` (float32 dot
    products), both (batch, k), best first. The index is ScaNN (scann's TensorFlow ops;
    saved with `namespace_whitelist=["Scann"]`) or, for `index="brute_force"` and for
    catalogues below `min_candidates`, an exact top-k.
  * `exports/youtubednn_brute_force/<v>`: the same signature with an exact top-k over stock
    TensorFlow ops only, for the stock `tensorflow/serving` image (and as the reference to
    measure the ScaNN index's recall against).
  * `exports/youtubednn_user_tower/<v>`: the user tower alone (`user_embedding`, and
    `interest_mask` for multi-interest models), for an ANN service of your own.
  * `exports/youtubednn_item_embeddings/<v>`: `item_embeddings.npy` (float32 (n, d), row i is
    the item on line i), `item_ids.txt` (one raw id per line) and `manifest.json`.

Multi-interest user towers (MIND: [(batch, k_max, d) interests, (batch, k_max) mask]) are
searched per interest; the results are merged by item, keeping its best score over the
interests, de-duplicated and cut to k, inside the graph. Masked interests take no part (they
are searched as zero vectors and their results dropped; a row whose mask is all zero uses its
first interest).

If fewer than k results come back for a row (an ANN index whose searched leaves hold fewer
than k items), the missing slots hold the padding id ("" or 0) with score -inf.
"""
import feature_columns._legacy_keras  # noqa: F401

import collections.abc
import json
import logging
import math
import os
import re

import numpy as np
import pandas as pd
import tensorflow as tf
from feature_columns import SparseIndex, top_k_indices
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.framework import auto_control_deps_utils as acd_utils

from exporters import layout, warmup
from exporters.saved_model import (SERVING_SIGNATURE, export_saved_model, model_inputs,
                                   signature_input_specs, write_saved_model_version)
from tfrec.data.pipeline import check_unique_ids, id_text
from tfrec.layers.retrieval import NegativeSampling

logger = logging.getLogger(__name__)

INDEXES = ("scann", "brute_force")
BRUTE_FORCE_SUFFIX = "_brute_force"
USER_TOWER_SUFFIX = "_user_tower"
ITEM_EMBEDDINGS_SUFFIX = "_item_embeddings"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
ITEM_IDS_FILE = "item_ids.txt"
MANIFEST_FILE = "manifest.json"
DEFAULT_MIN_SCANN_CANDIDATES = 20_000
# What str.splitlines() splits at: an id holding one (NEL, U+2028, ...) would be several lines
# of item_ids.txt, and line i no longer row i.
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
SCANN_SEARCH_SLICES = 8  # slices of a batch searched at once, on as many cores as the server has

RetrievalExport = collections.namedtuple("RetrievalExport", [
    "path",                  # export_base/<v>: the retrieval SavedModel (index `index`)
    "brute_force_path",      # export_base_brute_force/<v>: exact top-k, stock ops only
    "user_tower_path",       # export_base_user_tower/<v>: the user tower's SavedModel
    "item_embeddings_path",  # export_base_item_embeddings/<v>: .npy vectors + ids
    "index",                 # the index built into `path`: "scann" or "brute_force"
    "version",
    "num_candidates",
    "k",
    "scann_config",          # the ScaNN settings used ({} for brute force)
])

_SCANN_OPTIONS = {
    "num_leaves": "partitions of the tree (default about sqrt(n))",
    "num_leaves_to_search": "partitions searched per query",
    "training_iterations": "k-means iterations of the tree (default 12)",
    "training_sample_size": "points the tree and the quantizer train on (default min(n, 100000))",
    "dimensions_per_block": "dimensions per asymmetric-hashing block (default 2)",
    "anisotropic_quantization_threshold": "ScaNN's anisotropic loss threshold (default 0.2)",
    "hash_type": '"lut16" (default) or "lut256"',
    "num_reordering_candidates": "candidates rescored exactly (default max(5k, 512), <= n)",
    "reordering_dtype": '"float32" (default: exact rescoring and scores) or "int8" (a third of the '
                        'memory, approximate scores)',
    "parallel": "search a batch's queries in parallel threads (default True)",
    "training_threads": "threads building the index (default 0: all)",
    "min_candidates": f"below this many candidates build brute force instead "
                      f"(default {DEFAULT_MIN_SCANN_CANDIDATES})",
}


def export_retrieval(model, export_base, candidates, k=100, index="scann", version=None,
                     warmup_inputs=None, exclude=(), **scann_options):
    """Writes the retrieval SavedModel, its brute-force twin, the user tower and item vectors.

    Args:
      model: a two-tower model (`tfrec.models.TwoTowerModel`: YoutubeDNN, MIND, ...) with
        `user_tower`, `item_tower` and `item_input` (one Input: the item id feature).
      export_base: the retrieval model's base path (`exports/youtubednn`); its siblings
        `<export_base>_brute_force`, `_user_tower` and `_item_embeddings` are written too.
      candidates: the candidate item ids: a pandas DataFrame with the item id column (the item
        Input's name; other columns are ignored), a dict holding that feature (e.g.
        `df_to_inputs`' output), or the ids themselves (a list, numpy array or pandas
        Series); each id is one candidate.
      k: how many items each user gets.
      index: "scann" or "brute_force".
      version: the version number of all four directories; None for the smallest number that
        is new in each of them.
      warmup_inputs: user rows for the warm-up requests (a DataFrame or dict of user
        features), as in `export_saved_model`; None synthesises one row.
      exclude: user features holding item ids (a history such as "hist_item_id", or a list of
        them, e.g. SDM's short_ and prefer_ sessions): the items a request sends in them are
        left out of its results (TFRS' `exclusions`), so a user is not shown what they have
        already seen. Each request searches the index for k plus as many items as it sends
        there, and answers the best k of the others; () answers the plain top k.
      **scann_options: ScaNN settings overriding the defaults: num_leaves (about sqrt(n)),
        num_leaves_to_search, training_iterations, training_sample_size,
        dimensions_per_block (2), anisotropic_quantization_threshold (0.2), hash_type,
        num_reordering_candidates (max(5k, 512), at most n), reordering_dtype, parallel,
        training_threads, and min_candidates (20000): below it a brute-force index is built
        instead (exact, and as fast at that size; the result's `index` says which was built).
        reordering_dtype "float32" (default) rescores the shortlist with the item vectors,
        so `scores` are exact dot products; a loaded index then holds those vectors twice
        (its variables and the searcher ScaNN builds from them on the first call). "int8"
        rescores with vectors quantized to int8 per dimension: the served index takes about a
        third of the memory and `scores` are approximate (1M x 64: 209 against 588 MiB after
        the first call, recall@100 0.98 against 0.994-0.998; docs/retrieval.md).

    Returns:
      A `RetrievalExport` namedtuple: the four version directories, the index built into
      `path`, the version, the number of candidates, k and the ScaNN settings used.

    Raises:
      TypeError: `model` has no user and item towers.
      ValueError: unknown index or option; empty candidates; the id column is missing,
        null, duplicated or of the wrong type; k is not in [1, number of candidates];
        the towers' vector sizes differ; bad warm-up inputs; an `exclude` feature that is not
        a user sequence of item ids.
      FileExistsError: the version already exists in one of the four directories.
      ImportError: index="scann" (with a catalogue of at least min_candidates) without scann.
    """
    if index not in INDEXES:
        raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
    unknown = sorted(set(scann_options) - set(_SCANN_OPTIONS))
    if unknown:
        raise ValueError(
            f"unknown ScaNN option(s) {unknown}; the options are: "
            + "; ".join(f"{name}: {what}" for name, what in _SCANN_OPTIONS.items()))
    if index == "brute_force" and scann_options:
        raise ValueError(f"ScaNN option(s) {sorted(scann_options)} have no effect with index='brute_force'")
    user_tower, item_tower, item_input = _towers(model)
    ids, rows = _known_items(item_tower, _candidate_ids(candidates, item_input))
    _warn_of_never_trained_candidates(model, ids, rows)
    num_candidates = len(ids)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_candidates:
        raise ValueError(
            f"k must be an integer in [1, number of candidates = {num_candidates}], got {k!r}")
    k = int(k)
    exclude = _excluded_features(user_tower, item_tower, item_input, exclude)
    interests = _user_output_kind(user_tower)
    built = index
    min_candidates = scann_options.get("min_candidates", DEFAULT_MIN_SCANN_CANDIDATES)
    if isinstance(min_candidates, bool) or not isinstance(min_candidates, (int, np.integer)):
        raise ValueError(f"min_candidates must be an integer, got {min_candidates!r}")
    if index == "scann" and num_candidates < min_candidates:
        logger.warning(
            "export_retrieval: %d candidates < min_candidates=%d, so %s holds a brute-force "
            "(exact) index instead of ScaNN; pass min_candidates=<n> to build ScaNN anyway",
            num_candidates, min_candidates, export_base)
        built = "brute_force"
    scann_config = _scann_config(num_candidates, k, scann_options) if built == "scann" else {}

    if hasattr(model, "refresh_derived_weights"):
        model.refresh_derived_weights()
    vectors = _item_vectors(item_tower, item_input, ids)
    user_dim = int(user_tower.outputs[0].shape[-1])
    if user_dim != vectors.shape[1]:
        raise ValueError(
            f"the user tower gives {user_dim}-d vectors but the item tower {vectors.shape[1]}-d "
            "ones; retrieval scores their dot product")

    export_base = os.path.abspath(os.fspath(export_base))
    bases = {
        "retrieval": export_base,
        "brute_force": export_base + BRUTE_FORCE_SUFFIX,
        "user_tower": export_base + USER_TOWER_SUFFIX,
        "item_embeddings": export_base + ITEM_EMBEDDINGS_SUFFIX,
    }
    if version is None:
        version = max(layout.next_version(base) for base in bases.values())
    else:
        version = layout.checked_version(version)
    for base in bases.values():
        layout._refuse_existing(os.path.join(base, str(version)))

    id_dtype = tf.string if item_input.dtype == tf.string else tf.int64
    exact_root = _RetrievalModule(user_tower, interests, _BruteForceIndex(vectors), ids,
                                  id_dtype, k, exclude)
    if built == "scann":
        logger.info("export_retrieval: building a ScaNN index over %d candidates: %s",
                    num_candidates, scann_config)
        primary_root = _RetrievalModule(user_tower, interests,
                                        _ScannIndex(vectors, k, scann_config), ids, id_dtype, k,
                                        exclude)
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"])
    else:
        primary_root, options = exact_root, None
    exact_signature = exact_root.serving_function()
    primary_signature = primary_root.serving_function()
    # Bad warm-up rows fail here, before any of the four directories is written.
    warmup.check_feeds_run(primary_signature, warmup.warmup_feeds(
        warmup.signature_input_specs(primary_signature), warmup_inputs))

    # All four are written before any is published, so an export that stops midway publishes
    # none; then companions first, the retrieval model last: a server watching export_base
    # never sees a version whose brute-force twin, user tower or item vectors are not there yet.
    with layout.published_together():
        item_embeddings_path = _write_item_embeddings(
            bases["item_embeddings"], version, ids, vectors, _input_name(item_input), model)
        user_tower_path = export_saved_model(user_tower, bases["user_tower"], version=version,
                                             warmup_inputs=warmup_inputs)
        brute_force_path = write_saved_model_version(
            bases["brute_force"], exact_root, {SERVING_SIGNATURE: exact_signature},
            version=version, warmup_inputs=warmup_inputs)
        path = write_saved_model_version(
            export_base, primary_root, {SERVING_SIGNATURE: primary_signature},
            version=version, warmup_inputs=warmup_inputs, options=options)
    logger.info("export_retrieval: %s (%s index, %d candidates, k=%d), %s, %s, %s", path, built,
                num_candidates, k, brute_force_path, user_tower_path, item_embeddings_path)
    return RetrievalExport(path, brute_force_path, user_tower_path, item_embeddings_path, built,
                           version, num_candidates, k, scann_config)


def item_id_feature(model):
    """(name, tf.DType) of a two-tower model's item id Input, the column `candidates` holds;
    a TypeError for a model without user and item towers."""
    item_input = _towers(model)[2]
    return _input_name(item_input), item_input.dtype


def _excluded_features(user_tower, item_tower, item_input, exclude):
    """`exclude` as a tuple of user tower Input names, each a sequence of ids looked up in the
    item's table (a history of items), or a ValueError naming what is wrong."""
    names = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    inputs = dict(zip(user_tower.input_names, user_tower.inputs))
    item_lookups = _lookups_reading(item_tower, item_input)
    for name in names:
        if name not in inputs:
            raise ValueError(f"exclude: {name!r} is not a feature of the user tower; its features are "
                             f"{list(inputs)}")
        tensor = inputs[name]
        same_kind = (tensor.dtype == tf.string) == (item_input.dtype == tf.string)
        if tensor.shape.rank != 2 or tensor.shape[1] == 1 or not same_kind:
            raise ValueError(f"exclude: {name!r} must be a sequence of item ids (like hist_item_id), but it is "
                             f"{tensor.dtype.name} of shape {tensor.shape}, and the item id is "
                             f"{item_input.dtype.name}")
        lookups = _lookups_reading(user_tower, tensor)
        if item_lookups and lookups and not lookups & item_lookups:
            # e.g. hist_cate_id: its ids are categories, and excluding them would drop the items
            # that happen to share their numbers
            raise ValueError(f"exclude: {name!r} must be a sequence of item ids (like hist_item_id), but it is "
                             f"looked up in another table ({sorted(lookups)[0]}) than the item id "
                             f"({sorted(item_lookups)[0]})")
    return names


def _lookups_reading(tower, tensor):
    """The names of the SparseIndex layers of `tower` that read its Input `tensor` (one per table)."""
    return {layer.name for layer in tower.layers if isinstance(layer, SparseIndex)
            for node in layer._inbound_nodes for read in tf.nest.flatten(node.keras_inputs) if read is tensor}


def _towers(model):
    """(user tower, item tower, item Input) of a two-tower model, or a TypeError."""
    missing = [name for name in ("user_tower", "item_tower", "item_input")
               if not hasattr(type(model), name) and not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"export_retrieval needs a two-tower model (tfrec.models.TwoTowerModel: "
            f"YoutubeDNN, MIND, ...) with user_tower, item_tower and item_input; "
            f"{type(model).__name__} {getattr(model, 'name', '')!r} has no {missing}")
    try:
        user_tower, item_tower, item_inputs = model.user_tower, model.item_tower, model.item_input
    except (AttributeError, ValueError) as error:  # e.g. no layer named "user_embedding"
        raise TypeError(
            f"export_retrieval: the towers of {type(model).__name__} "
            f"{getattr(model, 'name', '')!r} cannot be built: {error}") from None
    item_inputs = list(item_inputs) if isinstance(item_inputs, (list, tuple)) else [item_inputs]
    if len(item_inputs) != 1:
        raise TypeError(
            f"export_retrieval: the item tower must read one input (the item id), it reads "
            f"{[tensor.name for tensor in item_inputs]}")
    item_input = item_inputs[0]
    if item_input.shape.rank != 2 or item_input.shape[1] != 1:
        raise TypeError(f"export_retrieval: the item id input must have shape (None, 1), "
                        f"{item_input.name!r} has {item_input.shape}")
    return user_tower, item_tower, item_input


def _input_name(tensor):
    return tensor._keras_history.layer.name


def _candidates_frame(candidates, name):
    """The candidates as a DataFrame with the id column `name`: a frame as it is; a dict's
    `name` entry or a list / array / Series / Index of ids (or what `Series.unique()` gives, an
    extension array under pandas 3) as that column ((n, 1) arrays flattened)."""
    if isinstance(candidates, pd.DataFrame):
        return candidates
    if isinstance(candidates, collections.abc.Mapping):
        if name not in candidates:
            raise ValueError(f"the candidates dict has no {name!r} entry (the model's item id feature); "
                             f"its keys are {sorted(map(str, candidates))}")
        candidates = candidates[name]
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, (
            pd.Series, pd.Index, pd.api.extensions.ExtensionArray, np.ndarray, tf.Tensor, list, tuple)):
        raise ValueError(f"candidates must be item ids (a list, numpy array or Series), a dict or a "
                         f"pandas DataFrame with the {name!r} column, got {type(candidates).__name__}")
    ids = np.asarray(candidates, dtype=object if isinstance(candidates, (list, tuple)) else None)
    if ids.ndim == 2 and ids.shape[1] == 1:
        ids = ids[:, 0]
    if ids.ndim != 1:
        raise ValueError(f"candidate ids must be one id per candidate, shape (n,) or (n, 1); got "
                         f"shape {ids.shape}")
    return pd.DataFrame({name: pd.Series(ids, dtype=ids.dtype)})


def _candidate_ids(candidates, item_input):
    """The candidates' ids as a numpy array (object for strings, int64)."""
    name = _input_name(item_input)
    candidates = _candidates_frame(candidates, name)
    if name not in candidates.columns:
        in_index = " (it is the frame's index: call candidates.reset_index() first)" \
            if name in (candidates.index.names or ()) else ""
        raise ValueError(
            f"the candidates frame has no column {name!r} (the model's item id feature){in_index}; "
            f"its columns are {[str(column) for column in candidates.columns]}")
    column = candidates[name]
    if len(column) == 0:
        raise ValueError(f"the candidate set is empty: the candidates frame has no rows "
                         f"(column {name!r})")
    if column.isna().any():
        raise ValueError(f"candidates column {name!r} has {int(column.isna().sum())} missing ids")
    ids = _id_values(column, item_input, name)
    # Checked as the ids are served, so b"7", "7" and 7 are one id of a string model.
    check_unique_ids(ids, f"candidates column {name!r}")
    return ids


def _id_values(column, item_input, name):
    """The ids of candidates column `column` as the model's item input takes them."""
    if item_input.dtype == tf.string:  # ints as their decimal text, as df_to_inputs reads them
        values = np.array([id_text(value) for value in column.to_numpy(dtype=object)], dtype=object)
        bad = [value for value in values if not isinstance(value, (str, bytes))]
        if bad:
            raise ValueError(
                f"candidates column {name!r} must hold strings (the model's item id input is a "
                f"string), but holds {bad[0]!r} of type {type(bad[0]).__name__}")
        values = np.array([value.decode("utf-8") if isinstance(value, bytes) else value
                           for value in values], dtype=object)
        broken = [value for value in values if _LINE_BREAK.search(value)]
        if broken:
            raise ValueError(f"candidates column {name!r}: ids must not contain line breaks "
                             f"({ITEM_IDS_FILE} holds one id per line), e.g. {broken[0]!r}")
        return values
    if column.dtype == object and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                      for v in column.tolist()):
        column = pd.Series([int(v) for v in column.tolist()], dtype=object)  # Python ints, any size
    elif not pd.api.types.is_integer_dtype(column.dtype):
        raise ValueError(
            f"candidates column {name!r} must hold integers (the model's item id input is "
            f"{item_input.dtype.name}), but its dtype is {column.dtype}")
    # The item tower's dtype (int32 or int64), as its vectors are computed in it: an int32 tower
    # gave 2**32 + 3 the vector of item 3.
    limits = np.iinfo(item_input.dtype.as_numpy_dtype)
    beyond = [int(v) for v in column.tolist() if not limits.min <= int(v) <= limits.max]  # uint64, Python ints
    if beyond:
        raise ValueError(f"candidates column {name!r} holds {beyond[0]}, beyond {item_input.dtype.name} (the "
                         "model's item id input), which would wrap around to another id")
    return column.to_numpy(dtype=np.int64)


def _known_items(item_tower, ids):
    """The candidate ids the item table has a row of its own for. The others (outside its
    vocabulary, or beyond the rows of a plain integer id table) all share one untrained row
    (OOV, padding), so they would score alike and fill the top k of every user: they are
    left out, with a warning. So is the padding id itself ("" or 0), whatever the table (a
    hashed one too), which is no item, and which answers stand for an empty slot. A hashed
    table has no other unknown ids.

    Returns (ids, their table rows); the rows are None when the tower has no such lookup."""
    unknown = ids == ("" if ids.dtype == object else 0)
    lookups = [layer for layer in item_tower.submodules
               if isinstance(layer, SparseIndex) and layer.unknown_index is not None]
    rows = None
    if len(lookups) == 1:
        [lookup] = lookups
        rows = lookup(tf.constant(ids.astype(object) if lookup.string_input else ids)).numpy()
        unknown |= (rows == lookup.unknown_index) | (rows == 0)  # row 0: padding
    if unknown.all():
        raise ValueError(f"none of the {len(ids)} candidates is an item the model was trained with (e.g. "
                         f"{ids[:5].tolist()}): each would get the same untrained vector")
    if unknown.any():
        logger.warning("export_retrieval: %d of %d candidates are not in the item table's vocabulary or are its "
                       "padding id (e.g. %s) and would share one untrained vector; they are left out of the index",
                       int(unknown.sum()), len(ids), ids[unknown][:5].tolist())
    return ids[~unknown], None if rows is None else rows[~unknown]


def _warn_of_never_trained_candidates(model, ids, rows):
    """Warns of candidates that were never a training target (item_count 0) when the sampler
    draws its negatives from the targets ("inbatch", "frequency"): the softmax never trained
    their vectors as candidates, only as history items, and such vectors often score high for
    every user. Candidates stay the caller's choice (a new item may be wanted in the index)."""
    samplers = [layer for layer in model.submodules if isinstance(layer, NegativeSampling)]
    if rows is None or len(samplers) != 1 or samplers[0].item_count is None \
            or samplers[0].sampler not in ("inbatch", "frequency"):
        return
    never = np.asarray(samplers[0].item_count)[rows] == 0
    if never.any():
        logger.warning(
            "export_retrieval: %d of %d candidates (e.g. %s) were never a training target (their item_count "
            "is 0), so the %r sampler never trained them as candidates and they can crowd every user's top "
            "k; leave them out of candidates unless you want them shown (docs/retrieval.md)",
            int(never.sum()), len(ids), ids[never][:5].tolist(), samplers[0].sampler)


def _user_output_kind(user_tower):
    """Whether the user tower gives one vector per user (False) or interests + mask (True)."""
    outputs = user_tower.outputs
    if len(outputs) == 1 and outputs[0].shape.rank == 2:
        return False
    if len(outputs) == 2 and outputs[0].shape.rank == 3 and outputs[1].shape.rank == 2:
        return True
    raise TypeError(
        "export_retrieval: the user tower must return (batch, d) vectors, or [(batch, k, d) "
        f"interests, (batch, k) mask]; it returns {[tensor.shape for tensor in outputs]}")


def _item_vectors(item_tower, item_input, ids):
    """One batched item tower call over every candidate: float32 (n, d)."""
    feed = (ids.astype(object) if item_input.dtype == tf.string
            else ids.astype(item_input.dtype.as_numpy_dtype))[:, None]
    vectors = item_tower.predict({_input_name(item_input): feed},
                                 batch_size=min(len(ids), 8192), verbose=0)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"the item tower returned shape {vectors.shape} for {len(ids)} ids; "
                         "it must return one vector per id")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise ValueError(f"the item tower gives non-finite vectors for {int(bad.sum())} "
                         f"candidates, e.g. {ids[bad][:5].tolist()}")
    return vectors


def _scann_config(num_candidates, k, options):
    """The ScaNN settings: defaults that scale with the corpus, overridden by `options`."""
    n = num_candidates
    num_leaves = options.get("num_leaves", max(1, min(round(math.sqrt(n)), n // 20)))
    # Search about 2.5% of the partitions of a large corpus (1M x 64 clustered vectors, k=100:
    # 25 of 1,000 leaves with 500 reordered gave recall@100 0.994 at 1.75x the QPS of 50 leaves
    # and 1,000 reordered, recall 0.996), and enough of a small one that the searched points
    # are ~40 times k (a top-k that is a large share of the catalogue spreads over many
    # partitions).
    default_to_search = min(num_leaves, max(math.ceil(0.025 * num_leaves),
                                            math.ceil(40 * k * num_leaves / n), 1))
    config = {
        "num_leaves": num_leaves,
        "num_leaves_to_search": options.get("num_leaves_to_search", default_to_search),
        "training_iterations": options.get("training_iterations", 12),
        "training_sample_size": options.get("training_sample_size", min(n, 100_000)),
        "dimensions_per_block": options.get("dimensions_per_block", 2),
        "anisotropic_quantization_threshold": options.get(
            "anisotropic_quantization_threshold", 0.2),
        "hash_type": options.get("hash_type", "lut16"),
        # Asymmetric hashing only shortlists: the top k of a trained model sit in a narrow
        # band of scores, so the exact rescoring needs a shortlist well beyond k (on a 16-d
        # YoutubeDNN, 5000 items, k=50: 256 gave recall 0.90-0.94, 500 gave 1.0).
        "num_reordering_candidates": options.get("num_reordering_candidates",
                                                 min(n, max(5 * k, 512))),
        "reordering_dtype": options.get("reordering_dtype", "float32"),
        "parallel": options.get("parallel", True),
        "training_threads": options.get("training_threads", 0),
    }
    for name in ("num_leaves", "num_leaves_to_search", "training_iterations",
                 "training_sample_size", "dimensions_per_block", "num_reordering_candidates"):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"ScaNN option {name} must be a positive integer, got {value!r}")
    threshold = config["anisotropic_quantization_threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
            or not (math.isnan(threshold) or 0 <= threshold <= 1):
        raise ValueError(f"ScaNN option anisotropic_quantization_threshold must be a number in [0, 1] "
                         f"(or NaN: no anisotropic loss), got {threshold!r}")
    if config["hash_type"] not in ("lut16", "lut256"):
        raise ValueError(f"ScaNN option hash_type must be 'lut16' or 'lut256', got {config['hash_type']!r}")
    if not isinstance(config["parallel"], (bool, np.bool_)):
        raise ValueError(f"ScaNN option parallel must be True or False, got {config['parallel']!r}")
    threads = config["training_threads"]
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"ScaNN option training_threads must be an integer >= 0 (0: one per core), got "
                         f"{threads!r}")
    if config["reordering_dtype"] not in ("float32", "int8"):
        raise ValueError(f"ScaNN option reordering_dtype must be 'float32' or 'int8', got "
                         f"{config['reordering_dtype']!r}")
    if config["num_leaves"] > n:
        raise ValueError(f"ScaNN option num_leaves={config['num_leaves']} exceeds the "
                         f"{n} candidates")
    if config["num_leaves_to_search"] > config["num_leaves"]:
        raise ValueError(
            f"ScaNN option num_leaves_to_search={config['num_leaves_to_search']} exceeds "
            f"num_leaves={config['num_leaves']}")
    if config["num_reordering_candidates"] < k:
        raise ValueError(
            f"ScaNN option num_reordering_candidates={config['num_reordering_candidates']} is "
            f"below k={k}: the index could never return k items")
    return config


class _BruteForceIndex(tf.Module):
    """Exact top-k by dot product over the item vectors (a variable), stock TF ops only."""

    def __init__(self, vectors):
        super().__init__(name="brute_force_index")
        self.item_vectors = tf.Variable(vectors, trainable=False, name="item_vectors")

    def search(self, queries, k):
        """(indices int32 (m, k), scores float32 (m, k)) of the top k items of each query."""
        scores = tf.linalg.matmul(queries, self.item_vectors, transpose_b=True)
        # top_k's indices, in two passes over a large catalogue: 1,000,000 items, k = 100, 0.6
        # against 2.2 ms for one query, 27 against 108 ms for 100.
        indices = top_k_indices(scores, k)
        return indices, tf.gather(scores, indices, batch_dims=1)


class _ScannIndex(tf.Module):
    """A ScaNN searcher (tree + anisotropic hashing + reordering), serialized into variables
    so it saves with the SavedModel and is rebuilt once per loaded graph."""

    def __init__(self, vectors, k, config):
        super().__init__(name="scann_index")
        scann_ops = _scann_ops()
        self._parallel = config["parallel"]
        self._shortlist = config["num_reordering_candidates"]
        builder = scann_ops.builder(tf.constant(vectors), k, "dot_product")
        if config["num_leaves"] > 1:
            builder = builder.tree(
                num_leaves=config["num_leaves"],
                num_leaves_to_search=config["num_leaves_to_search"],
                training_sample_size=config["training_sample_size"],
                training_iterations=config["training_iterations"])
        builder = builder.score_ah(
            config["dimensions_per_block"],
            anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"],
            training_sample_size=config["training_sample_size"],
            hash_type=config["hash_type"])
        # quantize=True: ScaNN's int8 ("fixed point") reordering, which keeps no float vectors.
        builder = builder.reorder(config["num_reordering_candidates"],
                                  quantize=config["reordering_dtype"] == "int8")
        builder = builder.set_n_training_threads(config["training_threads"])
        self.state = builder.build().serialize_to_module()

    def search(self, queries, k):
        """(indices int32 (m, k), scores float32 (m, k)); a slot ScaNN left empty has score NaN.

        A batch of at least 2 * SCANN_SEARCH_SLICES queries is searched as that many slices at
        once (ScaNN's own `parallel` splits only batches of hundreds of queries): 100 queries
        over 1M items take 4.2 instead of 8 ms on 2 cores.
        """
        handle = self.state.recreate_handle()  # created once per loaded graph, then reused
        count = tf.shape(queries)[0]
        # The exact rescoring's shortlist, widened when a search asks for more (exclusions).
        shortlist = tf.maximum(self._shortlist, k)

        def searched(batch):
            indices, scores = _scann_ops().scann_search_batched(
                handle, batch, k, shortlist, -1, self._parallel)
            # A search only reads the searcher: without this mark, tf.function's automatic
            # control dependencies would chain the slices' searches on the shared handle.
            indices.op._set_attr(acd_utils.READ_ONLY_RESOURCE_INPUTS_ATTR,
                                 attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(i=[0])))
            # ScaNN returns as many columns as the fullest row, padding with (0, NaN).
            missing = tf.maximum(k - tf.shape(indices)[1], 0)
            indices = tf.pad(indices, [[0, 0], [0, missing]])[:, :k]
            scores = tf.pad(scores, [[0, 0], [0, missing]], constant_values=np.nan)[:, :k]
            return indices, scores

        def in_slices():
            bounds = [i * count // SCANN_SEARCH_SLICES for i in range(SCANN_SEARCH_SLICES + 1)]
            parts = [searched(queries[start:end]) for start, end in zip(bounds, bounds[1:])]
            return tf.concat([p[0] for p in parts], 0), tf.concat([p[1] for p in parts], 0)

        def empty():  # ScaNN's batched search fails on an empty batch
            return tf.zeros([0, k], tf.int32), tf.zeros([0, k], tf.float32)

        branch = tf.where(count == 0, 0, tf.where(count < 2 * SCANN_SEARCH_SLICES, 1, 2))
        indices, scores = tf.switch_case(branch, [empty, lambda: searched(queries), in_slices])
        width = k if isinstance(k, int) else None  # a tensor k: searching beyond exclusions
        return tf.ensure_shape(indices, [None, width]), tf.ensure_shape(scores, [None, width])


def _scann_ops():
    try:
        from scann.scann_ops.py import scann_ops
    except ImportError as error:
        raise ImportError(
            f"index='scann' needs the scann package ({error}); pip install scann, or export "
            "with index='brute_force'") from None
    return scann_ops


class _RetrievalModule(tf.Module):
    """user tower -> index search (per interest, merged) -> raw item ids: the SavedModel root."""

    def __init__(self, user_tower, interests, index, ids, id_dtype, k, exclude):
        super().__init__(name="retrieval")
        self.user_tower = user_tower
        self.index = index
        self.item_ids = tf.Variable(
            ids.astype(object) if id_dtype == tf.string else ids, dtype=id_dtype,
            trainable=False, name="item_ids")
        self._interests = interests
        self._padding_id = "" if id_dtype == tf.string else 0
        self._k = k
        self._num_items = len(ids)
        self._exclude = exclude

    def serving_function(self):
        """The `serving_default` concrete function over the user tower's raw features."""
        tower = self.user_tower

        @tf.function
        def serve(**features):
            user = tower(model_inputs(tower, features), training=False)
            if self._exclude:
                seen = tf.concat([tf.cast(features[name], self.item_ids.dtype) for name in self._exclude], axis=1)
                # k remain when every item the request sends is among the results.
                searched = tf.minimum(self._num_items, self._k + tf.shape(seen)[1])
                indices, scores = self._without_seen(*self._search(user, searched), seen)
            else:
                indices, scores = self._search(user, self._k)
            ids = tf.gather(self.item_ids, tf.maximum(indices, 0))
            ids = tf.where(indices >= 0, ids, tf.constant(self._padding_id, self.item_ids.dtype))
            return {"item_ids": ids, "scores": scores}

        return serve.get_concrete_function(**signature_input_specs(tower))

    def _without_seen(self, indices, scores, seen):
        """The best k of the results whose items are not in `seen` (batch, m), the ids a request
        sends in its `exclude` features."""
        found = tf.gather(self.item_ids, tf.maximum(indices, 0))
        is_seen = tf.reduce_any(tf.equal(found[:, :, tf.newaxis], seen[:, tf.newaxis, :]), axis=-1)
        scores = tf.where(is_seen, tf.constant(-np.inf, scores.dtype), scores)
        scores, best = tf.math.top_k(scores, k=self._k)
        indices = tf.gather(indices, best, batch_dims=1)
        return tf.where(tf.math.is_finite(scores), indices, -1), scores

    def _search(self, user, k):
        """(indices (batch, k) with -1 for no item, scores (batch, k) with -inf there); k may be a
        scalar tensor."""
        if not self._interests:
            return _valid_results(*self.index.search(tf.cast(user, tf.float32), k))
        interests, mask = user
        interests = tf.cast(interests, tf.float32)
        batch, num_interests = tf.shape(interests)[0], tf.shape(interests)[1]
        valid = tf.cast(mask, tf.float32) > 0
        # A row with no valid interest searches with its first one rather than returning nothing.
        first = tf.equal(tf.range(num_interests), 0)[tf.newaxis, :]
        valid = valid | (first & ~tf.reduce_any(valid, axis=1, keepdims=True))
        queries = tf.where(valid[:, :, tf.newaxis], interests, tf.zeros_like(interests))
        indices, scores = self.index.search(
            tf.reshape(queries, [-1, tf.shape(interests)[2]]), k)
        indices, scores = _valid_results(indices, scores)
        indices = tf.reshape(indices, [batch, num_interests, k])
        scores = tf.reshape(scores, [batch, num_interests, k])
        return merge_interest_results(indices, scores, valid, k)


def _valid_results(indices, scores):
    """Marks empty slots (non-finite score) as index -1, score -inf."""
    valid = tf.math.is_finite(scores)
    return (tf.where(valid, indices, -1),
            tf.where(valid, scores, tf.constant(-np.inf, scores.dtype)))


def merge_interest_results(indices, scores, valid, k):
    """Merges per-interest top-k lists into one top-k per row, in the graph.

    Args:
      indices: int32 (batch, interests, m) item indices, -1 for an empty slot.
      scores: float32 (batch, interests, m).
      valid: bool (batch, interests); results of invalid interests are dropped.
      k: how many items to keep per row.

    Returns:
      (indices int32 (batch, k), scores float32 (batch, k)), best first: each item once, with
      its best score over the valid interests; -1 / -inf where fewer than k items remain.
    """
    batch = tf.shape(indices)[0]
    keep = valid[:, :, tf.newaxis] & (indices >= 0)
    flat_indices = tf.reshape(tf.where(keep, indices, -1), [batch, -1])
    flat_scores = tf.reshape(tf.where(keep, scores, tf.constant(-np.inf, scores.dtype)),
                             [batch, -1])
    # Best first, then (stably) by item: within each item's run its best score comes first.
    by_score = tf.argsort(flat_scores, axis=1, direction="DESCENDING", stable=True)
    flat_indices = tf.gather(flat_indices, by_score, batch_dims=1)
    flat_scores = tf.gather(flat_scores, by_score, batch_dims=1)
    by_item = tf.argsort(flat_indices, axis=1, stable=True)
    flat_indices = tf.gather(flat_indices, by_item, batch_dims=1)
    flat_scores = tf.gather(flat_scores, by_item, batch_dims=1)
    first_of_item = tf.concat(
        [tf.ones([batch, 1], tf.bool), flat_indices[:, 1:] != flat_indices[:, :-1]], axis=1)
    flat_scores = tf.where(first_of_item & (flat_indices >= 0), flat_scores,
                           tf.constant(-np.inf, scores.dtype))
    top_scores, positions = tf.math.top_k(flat_scores, k=k)
    top_indices = tf.gather(flat_indices, positions, batch_dims=1)
    return tf.where(tf.math.is_finite(top_scores), top_indices, -1), top_scores


def _write_item_embeddings(base, version, ids, vectors, id_feature, model):
    """`base/<version>/`: item_embeddings.npy, item_ids.txt (line i = row i), manifest.json."""
    with layout.staged_version_dir(base, version) as staged:
        np.save(os.path.join(staged.staging_dir, ITEM_EMBEDDINGS_FILE), vectors)
        with open(os.path.join(staged.staging_dir, ITEM_IDS_FILE), "w", encoding="utf-8") as out:
            out.writelines(f"{value}\n" for value in ids.tolist())
        manifest = {
            "model": getattr(model, "name", type(model).__name__),
            "id_feature": id_feature,
            "id_dtype": "string" if ids.dtype == object else "int64",
            "num_items": int(vectors.shape[0]),
            "dimension": int(vectors.shape[1]),
            "score": "dot_product",
            "files": {"embeddings": ITEM_EMBEDDINGS_FILE, "ids": ITEM_IDS_FILE},
        }
        with open(os.path.join(staged.staging_dir, MANIFEST_FILE), "w", encoding="utf-8") as out:
            json.dump(manifest, out, indent=2)
            out.write("\n")
    return staged.final_dir
