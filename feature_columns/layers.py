"""In-graph preprocessing layers: raw values -> embedding indices, sequence truncation, pooling.

They live inside every exported model, so a served model takes exactly the raw values the training
DataFrame held (no train/serve skew).
"""
from . import _legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


@_register
class SparseIndex(tf.keras.layers.Layer):
    """Maps raw ids of any shape to embedding indices of the same shape (int32, 0 = padding).

    Exactly one mapping applies:
      * `vocabulary`: StringLookup / IntegerLookup; padding ("" or 0) -> 0, unknown -> 1 (OOV),
        the i-th vocabulary entry -> i + 2.
      * `use_hash`: Hashing into `num_buckets - 1` bins, shifted by one so padding stays 0.
      * neither: integer ids are already indices.
    """

    def __init__(self, num_buckets, vocabulary=None, use_hash=False, string_input=False, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)
        self.vocabulary = None if vocabulary is None else list(vocabulary)
        self.use_hash = bool(use_hash)
        self.string_input = bool(string_input)
        self._padding = "" if self.string_input else 0
        if self.vocabulary is not None:
            lookup = tf.keras.layers.StringLookup if self.string_input else tf.keras.layers.IntegerLookup
            mask_token = "" if self.string_input else 0
            self._lookup = lookup(vocabulary=self.vocabulary, mask_token=mask_token,
                                  num_oov_indices=1, name="lookup")
        elif self.use_hash:
            self._lookup = tf.keras.layers.Hashing(num_bins=self.num_buckets - 1, name="hashing")
        else:
            self._lookup = None

    def call(self, raw):
        if self._lookup is None:
            return tf.cast(raw, tf.int32)
        if self.vocabulary is not None:
            values = raw if self.string_input else tf.cast(raw, tf.int64)
            return tf.cast(self._lookup(values), tf.int32)
        hashed = tf.cast(self._lookup(raw), tf.int32) + 1
        return tf.where(tf.equal(raw, tf.constant(self._padding, raw.dtype)), 0, hashed)

    def get_config(self):
        config = super().get_config()
        config.update(num_buckets=self.num_buckets, vocabulary=self.vocabulary,
                      use_hash=self.use_hash, string_input=self.string_input)
        return config


@_register
class RecentSequence(tf.keras.layers.Layer):
    """Keeps the most recent `maxlen` items of right-padded sequences of any width.

    Inputs: `indices` (batch, width) int, 0 = padding, oldest -> newest; optional `lengths`
    (batch,) or (batch, 1) true lengths (else the count of non-zero indices); optional `weights`
    (batch, width) aligned with `indices`. Returns (indices, weights-or-None) of width `maxlen`,
    right-padded, holding items [length - maxlen, length) of each row. A row wider than `maxlen`
    therefore scores exactly like its last `maxlen` items, and extra padding changes nothing.
    """

    def __init__(self, maxlen, **kwargs):
        super().__init__(**kwargs)
        self.maxlen = int(maxlen)

    def call(self, indices, lengths=None, weights=None):
        if lengths is None:
            lengths = tf.reduce_sum(tf.cast(tf.not_equal(indices, 0), tf.int32), axis=1)
        else:
            lengths = tf.reshape(tf.cast(lengths, tf.int32), [-1])
        lengths = tf.clip_by_value(lengths, 0, tf.shape(indices)[1])
        start = tf.maximum(lengths - self.maxlen, 0)
        positions = start[:, None] + tf.range(self.maxlen)[None, :]
        valid = tf.range(self.maxlen)[None, :] < tf.minimum(lengths, self.maxlen)[:, None]
        pad = [[0, 0], [0, self.maxlen]]  # so every position exists, however short the input
        kept = tf.gather(tf.pad(indices, pad), positions, batch_dims=1)
        kept = tf.where(valid, kept, tf.zeros_like(kept))
        if weights is None:
            return kept, None
        kept_weights = tf.gather(tf.pad(tf.cast(weights, tf.float32), pad), positions, batch_dims=1)
        return kept, tf.where(valid, kept_weights, tf.zeros_like(kept_weights))

    def get_config(self):
        config = super().get_config()
        config.update(maxlen=self.maxlen)
        return config


@_register
class SequencePooling(tf.keras.layers.Layer):
    """Pools (batch, maxlen, dim) embeddings over the positions where `mask` is true.

    `combiner` is "mean", "sum" or "max"; optional `weights` (batch, maxlen) scale each position
    (normalised to sum 1 per row when `weight_norm`). Padding never contributes; a row with no
    items pools to zeros. Returns (batch, 1, dim).
    """

    def __init__(self, combiner="mean", weight_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.combiner = combiner
        self.weight_norm = bool(weight_norm)

    def call(self, embeddings, mask, weights=None):
        mask = tf.cast(mask, embeddings.dtype)
        if weights is not None:
            weights = tf.cast(weights, embeddings.dtype) * mask
            if self.weight_norm:
                weights = tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=1, keepdims=True))
            mask = weights
        if self.combiner == "max":
            very_negative = (1.0 - tf.cast(mask > 0, embeddings.dtype)) * -1e9
            pooled = tf.reduce_max(embeddings * mask[..., None] + very_negative[..., None], axis=1)
            pooled = tf.where(tf.reduce_any(mask > 0, axis=1, keepdims=True), pooled, tf.zeros_like(pooled))
        else:
            pooled = tf.reduce_sum(embeddings * mask[..., None], axis=1)
            if self.combiner == "mean" and weights is None:
                pooled = tf.math.divide_no_nan(pooled, tf.reduce_sum(mask, axis=1, keepdims=True))
        return pooled[:, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(combiner=self.combiner, weight_norm=self.weight_norm)
        return config
