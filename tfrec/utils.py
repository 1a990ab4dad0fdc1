"""DeepMatch's training helpers under their DeepMatch names: `NegativeSampler`, `sampledsoftmaxloss`.

A DeepMatch script keeps `from deepmatch.utils import NegativeSampler, sampledsoftmaxloss` working
by importing them from `tfrec.utils` instead.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

from collections import namedtuple

import numpy as np

import tensorflow as tf

__all__ = ["NegativeSampler", "SAMPLERS", "item_counts", "sampledsoftmaxloss"]

SAMPLERS = ("inbatch", "uniform", "frequency")


class NegativeSampler(namedtuple("NegativeSampler", ["sampler", "num_sampled", "item_name", "item_count",
                                                     "distortion"])):
    """How a retrieval model draws the negatives of its sampled softmax (DeepMatch's `sampler_config`).

    Args:
      sampler: "inbatch" (the batch's other positives are the negatives), "uniform" (plus
        `num_sampled` items drawn uniformly from the item table) or "frequency" (plus
        `num_sampled` items drawn with probability proportional to item_count ** distortion).
      num_sampled: extra negatives per batch, shared by its rows (ignored by "inbatch").
      item_name: the item id feature (DeepMatch's pkey), e.g. "movie_id".
      item_count: occurrences of each embedding row of the item table (length = its
        vocabulary_size, as DeepMatch takes it), for "frequency" sampling and for the logQ
        correction of in-batch negatives, whose chance to appear in a batch grows with it.
      distortion: exponent on item_count for "frequency" sampling (word2vec's 0.75 flattens it).

    Every sampler subtracts log(expected count) of each candidate from its logit (the logQ
    correction) and removes accidental hits (a negative equal to the row's positive).
    """

    __slots__ = ()

    def __new__(cls, sampler, num_sampled, item_name, item_count=None, distortion=1.0):
        if sampler not in SAMPLERS:
            raise ValueError(f"NegativeSampler: sampler must be one of {SAMPLERS}, got {sampler!r}")
        if isinstance(num_sampled, bool) or not isinstance(num_sampled, (int, np.integer)) or num_sampled < 0:
            raise ValueError(f"NegativeSampler: num_sampled must be an int >= 0, got {num_sampled!r}")
        num_sampled = int(num_sampled)
        if sampler in ("uniform", "frequency") and num_sampled < 1:
            raise ValueError(f"NegativeSampler: the {sampler!r} sampler needs num_sampled >= 1")
        if sampler == "frequency" and item_count is None:
            raise ValueError("NegativeSampler: the 'frequency' sampler needs item_count")
        if item_count is not None:
            item_count = [float(c) for c in item_count]
            if min(item_count, default=-1.0) < 0:
                raise ValueError("NegativeSampler: item_count must be non-empty and non-negative")
        return super().__new__(cls, sampler, num_sampled, item_name, item_count, float(distortion))


def sampledsoftmaxloss(y_true, y_pred):
    """The loss of a retrieval model whose output is already its per-example loss (DeepMatch's)."""
    del y_true
    return tf.reduce_mean(y_pred)


# A saved model names its compiled loss; make that name loadable without custom_objects.
tf.keras.utils.get_custom_objects()["sampledsoftmaxloss"] = sampledsoftmaxloss


def item_counts(item_ids, item_column):
    """How often each row of `item_column`'s table is a target: `NegativeSampler`'s `item_count`.

    item_ids: the training rows' target ids, raw as the model takes them (ints or strings);
    item_column: the item `SparseFeat`. Each id goes to its row as the model looks it up (a
    vocabulary's i-th entry is row i + 2 after padding 0 and OOV 1, a hashed id its bucket, a
    plain id itself), so the counts line up with the table for any kind of column. Returns an
    int64 array of `item_column.vocabulary_size` counts.
    """
    from feature_columns import indexed_key, look_up_rows

    ids = np.asarray(item_ids).reshape(-1)
    rows = look_up_rows([item_column], {item_column.name: ids.astype(object) if ids.dtype.kind == "U" else ids})
    return np.bincount(rows[indexed_key(item_column.name, item_column)],
                       minlength=item_column.vocabulary_size).astype(np.int64)
