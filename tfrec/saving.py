"""The one place tfrec loads a saved Keras model: every object tfrec registers is known there.

`model.save(path)` writes a SavedModel directory (any name), an `.h5` file or a `.keras` file.
Each names tfrec's classes differently: a SavedModel and a `.keras` file by their registered
name (`tfrec>AUC`, `tfrec>SparseIndex`, `tfrec>LazyAdam`), an `.h5` file partly by the bare
class name (`RecModel`, `sampledsoftmaxloss`). Keras resolves them only if the module that
registers each one has been imported, which a script that only imports `tfrec.layers` (as the
CLI's export once did) does not do for the metrics. `load_model` imports every registering
module and passes all of them, under both names, as `custom_objects`.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import os

import numpy as np
import tensorflow as tf
from feature_columns import SparseEmbedding
from feature_columns.feature_column import NUM_RESERVED_INDICES

__all__ = ["load_model", "registered_objects", "with_grown_tables"]

_PACKAGE = "tfrec"


def registered_objects():
    """{name: class or function} of every custom object tfrec defines, as `custom_objects`.

    Holds each object under its registered name (`"tfrec>AUC"`) and its bare name (`"AUC"`
    is *not* overridden when Keras has a different object of that name: a bare name maps to a
    tfrec object only where Keras' own lookup would fail).
    """
    # Importing these modules registers their objects with Keras.
    import tfrec.layers  # noqa: F401
    import tfrec.metrics  # noqa: F401
    import tfrec.models  # noqa: F401
    import tfrec.optimizers  # noqa: F401
    import tfrec.utils  # noqa: F401
    import feature_columns.layers  # noqa: F401

    registered = dict(tf.keras.utils.get_custom_objects())
    objects = dict(registered)
    for name, obj in registered.items():
        package, _, bare = name.partition(">")
        if bare and package == _PACKAGE and not _is_keras_name(bare):
            objects.setdefault(bare, obj)
    return objects


def _is_keras_name(name):
    """True if Keras itself knows `name` as a metric, loss, layer or optimizer class."""
    return any(hasattr(module, name) for module in (tf.keras.metrics, tf.keras.losses, tf.keras.layers,
                                                   tf.keras.optimizers))


def load_model(path, compile=True):
    """Loads a tfrec model saved with `model.save(path)`: a SavedModel directory, `.h5` or `.keras`.

    Args:
      path: what `model.save` was given, whatever its name (`din_keras`, `din.h5`, `din.keras`).
      compile: also restore the optimizer, loss and metrics (False: inference only).

    Raises:
      FileNotFoundError: nothing exists at `path`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved model at {path!r}: give the path that model.save() "
                                "(or `tfrec train`) wrote")
    return tf.keras.models.load_model(path, custom_objects=registered_objects(), compile=compile)


def with_grown_tables(model, vocabularies, item_count=None, new_rows="initializer", sampler=None):
    """A copy of `model` with more rows in some of its embedding tables: the model of columns
    grown by `tfrec.data.grow_vocabularies`.

    `new_rows="mean"` starts each new row at the mean of the table's trained rows (plus the
    initializer's small draw, so that new rows differ): the average id, where the initializer
    (normal, stddev 1e-4) starts near zero. Yesterday's rows are trained, and a row started near
    zero stays small through a short warm start. Measured on planted day-2 data:
      * MIND (retrieval; 20 new items, 30 users clicking 5 of them; 5 seeds): the held-out 5th new item
        was in the user's top 50 for 0.58 of users after 5 epochs from the mean, against 0.28
        from the initializer (0.32 against 0.21 after 2 epochs); yesterday's users unchanged.
        A config's retrieval warm start uses "mean".
      * DIN (ranking, 62 new items, min_count 2, 3 seeds): test AUC 0.777 from the mean against
        0.780 from the initializer, so ranking keeps the initializer.

    A two-tower model's negative sampler (`NegativeSampling`) grows with its item table, and
    takes `item_count` as its per-row counts: its logQ correction subtracts from each candidate's
    logit the log of how often it is a target, so the counts must be those of the data it trains
    on next (an item counted 0 would get the largest correction as a positive).

    Args:
      model: a functional tfrec model (its tables are the `SparseIndex` "index_<table>" and
        `SparseEmbedding` "emb_<table>" layers that `feature_columns` builds).
      vocabularies: {table: vocabulary}, each the table's vocabulary with new entries appended
        ({} to only give the sampler new counts).
      item_count: a two-tower model's new counts, one per row of its grown item table
        (`tfrec.utils.item_counts` of the new targets); needed when its item table grows and its
        sampler counts items.
      new_rows: "initializer" (the table's own initializer, as in a new model) or "mean" (the
        mean of the rows of the table's earlier vocabulary).
      sampler: None (a two-tower model keeps drawing its negatives as it did) or (kind,
        num_sampled), how it draws them from now on: ("inbatch", 0), ("uniform", n) or
        ("frequency", n). The sampler holds no weights, so any kind follows any other.

    Returns:
      A new model, uncompiled, holding every weight of `model`; a grown table keeps its rows
      (old ids keep their vectors and their counts for the frequency-scaled regulariser), and its
      new rows start as `new_rows` says, with a count of 0 (and, in SIM's SimHash search, the
      signature of their new embedding).

    Raises:
      ValueError: a table of `vocabularies` is not in the model, or its vocabulary does not start
        with the model's, or `item_count` is missing or does not fit the sampler's grown table.
    """
    if new_rows not in ("mean", "initializer"):
        raise ValueError(f"new_rows must be 'mean' or 'initializer', got {new_rows!r}")
    config = model.get_config()
    layers = list(_layer_configs(config))
    samplers = [c for c in layers if "item_count" in c and "vocabulary_size" in c]
    added, trained_rows = {}, {}  # table -> rows added; rows of its earlier vocabulary entries
    for table, vocabulary in vocabularies.items():
        lookups = [c for c in layers if c.get("name", "").endswith("index_" + table) and "vocabulary" in c]
        tables = [c for c in layers if c.get("name", "").endswith("emb_" + table) and "input_dim" in c]
        if not lookups or not tables:
            raise ValueError(f"model '{model.name}' has no lookup and embedding layers of table '{table}'")
        for lookup in lookups:
            old = [str(value) for value in lookup["vocabulary"] or ()]  # a vocabulary file's ints are text
            if [str(value) for value in vocabulary[:len(old)]] != old:
                raise ValueError(f"table '{table}': the new vocabulary must start with the model's {len(old)} "
                                 "entries, in their order, so that old ids keep their rows")
            added[table] = len(vocabulary) - len(old)
            trained_rows[table] = slice(NUM_RESERVED_INDICES, NUM_RESERVED_INDICES + len(old))  # after padding and OOV
            lookup.update(vocabulary=list(vocabulary), num_buckets=lookup["num_buckets"] + added[table])
        old_rows = tables[0]["input_dim"]
        for embedding in tables:
            embedding["input_dim"] += added[table]
        for search in (c for c in layers if "table_rows" in c):  # SimHashSearch: a signature per row of its tables
            search["table_rows"] = [rows + added[table] if name.endswith("emb_" + table) else rows
                                    for name, rows in zip(search["tables"], search["table_rows"])]
        for sampling in samplers:  # one saved before samplers named their table: known by its size
            if sampling.get("table", table) == table and sampling["vocabulary_size"] == old_rows:
                if sampling["item_count"] is not None and item_count is None:
                    raise ValueError(f"table '{table}' grows, and the model's negative sampler counts its items: give "
                                     "item_count, the counts of the new training targets (tfrec.utils.item_counts); "
                                     "a new item counted 0 would get the largest logQ correction as a positive")
                sampling["vocabulary_size"] += added[table]
    if item_count is not None:
        if len(samplers) != 1:
            raise ValueError(f"item_count is for a two-tower model's sampler; model '{model.name}' has "
                             f"{len(samplers)}")
        if len(item_count) != samplers[0]["vocabulary_size"]:
            raise ValueError(f"item_count has {len(item_count)} counts for an item table of "
                             f"{samplers[0]['vocabulary_size']} rows")
        samplers[0]["item_count"] = [float(c) for c in item_count]
    if sampler is not None:
        from tfrec.utils import NegativeSampler

        if len(samplers) != 1:
            raise ValueError(f"sampler is for a two-tower model's sampler; model '{model.name}' has {len(samplers)}")
        # Checked as a new model's sampler_config is; NegativeSampling draws none for "inbatch".
        drawn = NegativeSampler(*sampler, item_name=samplers[0].get("table"), item_count=samplers[0]["item_count"])
        samplers[0].update(sampler=drawn.sampler, num_sampled=drawn.num_sampled if drawn.sampler != "inbatch" else 0)
    grown = model.__class__.from_config(config, custom_objects=registered_objects())
    # Same layers in the same order: the weights pair up in order (a rebuilt layer's variables
    # are not under its name scope, so only their own names are compared).
    if [w.name.split("/")[-1] for w in grown.weights] != [w.name.split("/")[-1] for w in model.weights]:
        raise ValueError(f"model '{model.name}' rebuilt with grown tables has other weights than the model")
    grown_rows = {id(layer.embeddings): trained_rows[table] for layer in grown._flatten_layers(include_self=False)
                  if isinstance(layer, SparseEmbedding)
                  for table in trained_rows if layer.name.endswith("emb_" + table)}
    for old, new in zip(model.weights, grown.weights):
        value = old.numpy()
        if tuple(old.shape) != tuple(new.shape):
            if tuple(old.shape[1:]) != tuple(new.shape[1:]) or old.shape[0] > new.shape[0]:
                raise ValueError(f"weight {old.name}: shape {old.shape} cannot grow to {new.shape}")
            added_rows = new.numpy()[old.shape[0]:]  # the initializer's rows (a count of 0)
            trained = value[grown_rows.get(id(new), slice(0))]
            if new_rows == "mean" and len(trained):  # plus the initializer's draw, so new rows differ
                added_rows = trained.mean(axis=0) + added_rows
            value = np.concatenate([value, added_rows])
        new.assign(value)
    grown.refresh_derived_weights()  # e.g. the new rows' SimHash signatures, from their embeddings
    return grown


def _layer_configs(config):
    """Every layer's `config` dict in a model's config, nested models' layers included."""
    if isinstance(config, dict):
        if "name" in config and "class_name" not in config:
            yield config
        for value in config.values():
            yield from _layer_configs(value)
    elif isinstance(config, list):
        for value in config:
            yield from _layer_configs(value)
