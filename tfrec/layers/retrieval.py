"""Layers of two-tower retrieval: negative sampling and the sampled softmax around TFRS' Retrieval."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
import tensorflow_recommenders as tfrs

from .core import check_number

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


@_register
class L2Normalize(tf.keras.layers.Layer):
    """x / ||x|| over the last axis: towers compare directions, and the temperature sets the scale."""

    def call(self, inputs):
        return tf.math.l2_normalize(inputs, axis=-1)


@_register
class NegativeSampling(tf.keras.__internal__.layers.BaseRandomLayer):
    """Draws the extra negatives of a batch and gives every candidate its expected count.

    call(positive_rows) with the batch's positive item rows (batch, 1) int returns
    (negative_rows (num_sampled,), expected_counts (batch + num_sampled,), candidate_rows
    (batch + num_sampled,) int32, the rows of the candidates: the batch's positives, then the
    negatives). The expected counts are the expected number of times each candidate enters a batch's
    candidates, batch * f(item) for a positive (f its share of item_count, or uniform without
    counts) and num_sampled * q(item) for a negative (q the sampler's distribution). Their log is
    the logQ correction. Rows 0 (padding) is never drawn. Inference draws nothing. The draws come
    from a `tf.random.Generator` seeded by `seed` (XLA would ignore a stateful op's seed).

    `table` names the item table it draws rows of, so that `tfrec.saving.with_grown_tables`
    grows the sampler with the table.
    """

    def __init__(self, sampler, num_sampled, vocabulary_size, item_count=None, distortion=1.0, seed=None,
                 table=None, **kwargs):
        super().__init__(seed=seed, force_generator=True, **kwargs)
        self.sampler = sampler
        self.table = table
        self.num_sampled = int(num_sampled) if sampler != "inbatch" else 0
        self.vocabulary_size = int(vocabulary_size)
        # A tuple, as SparseIndex's vocabulary: Keras walks a list attribute's entries at every save.
        self.item_count = None if item_count is None else tuple(float(c) for c in item_count)
        self.distortion = float(distortion)
        self.seed = seed
        if self.item_count is not None and len(self.item_count) != self.vocabulary_size:
            raise ValueError(f"item_count has {len(self.item_count)} entries for an item table of "
                             f"{self.vocabulary_size} rows (one count per row, padding and OOV included)")
        counts = tf.constant(self.item_count if self.item_count else [1.0] * self.vocabulary_size)
        counts = tf.tensor_scatter_nd_update(counts, [[0]], [0.0])  # padding is never an item
        self._batch_share = counts / tf.reduce_sum(counts)
        drawn = counts ** self.distortion if sampler == "frequency" else tf.ones_like(counts)
        drawn = tf.tensor_scatter_nd_update(drawn, [[0]], [0.0])
        self._draw_share = drawn / tf.reduce_sum(drawn)

    def call(self, positive_rows, training=None):
        positive_rows = tf.reshape(tf.cast(positive_rows, tf.int32), [-1])
        batch = tf.cast(tf.size(positive_rows), tf.float32)
        positive_counts = batch * tf.gather(self._batch_share, positive_rows)
        if not training or self.num_sampled == 0:
            return tf.zeros([0], tf.int32), positive_counts, positive_rows
        negatives = tf.random.stateless_categorical(
            tf.math.log(self._draw_share)[None, :], self.num_sampled, dtype=tf.int32,
            seed=tf.cast(self._random_generator.make_seed_for_stateless_op(), tf.int32))[0]  # XLA's kernel: int32
        negative_counts = self.num_sampled * tf.gather(self._draw_share, negatives)
        return (negatives, tf.concat([positive_counts, negative_counts], axis=0),
                tf.concat([positive_rows, negatives], axis=0))

    def get_config(self):
        config = super().get_config()
        config.update(sampler=self.sampler, num_sampled=self.num_sampled, vocabulary_size=self.vocabulary_size,
                      item_count=None if self.item_count is None else list(self.item_count),
                      distortion=self.distortion, seed=self.seed, table=self.table)
        return config


@_register
class SampledSoftmax(tf.keras.layers.Layer):
    """Per-example sampled-softmax loss of a two-tower model, computed by `tfrs.tasks.Retrieval`.

    call(user, positives, negatives, candidate_rows, expected_counts): user (batch, d) (or
    (batch, heads, d), scored by its best head, TFRS' multi-vector queries), positives
    (batch, d) the batch's item vectors, negatives (num_sampled, d) extra ones, candidate_rows
    (batch + num_sampled,) their ids, expected_counts (batch + num_sampled,) from
    `NegativeSampling`. Row i's softmax runs over all batch + num_sampled candidates with
    logits <user_i, item> / temperature - log(expected count), its own positive as the label,
    and accidental hits (another candidate equal to its positive) removed. Returns (batch, 1).

    The correction does not go through the task's `candidate_sampling_probability`: TFRS clips
    that to [1e-6, 1], a probability's range, so every candidate expected more than once per
    batch (the popular items, whose logits the correction lowers most) would get the same
    correction, log 1 = 0. It rides in one more dimension of the product instead,
    <[u, 1], [v, -T log n]> / T = <u, v> / T - log n, exact for any count n (at least 1e-6).
    """

    def __init__(self, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        # 0 divides every logit into NaN losses, a negative one trains the user away from its items
        check_number(temperature, "temperature (a model's temperature)", f"SampledSoftmax '{self.name}'", positive=True)
        self.temperature = float(temperature)
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True,
                                                         reduction=tf.keras.losses.Reduction.NONE),
            temperature=self.temperature, remove_accidental_hits=True)

    def call(self, user, positives, negatives, candidate_rows, expected_counts):
        correction = -self.temperature * tf.math.log(tf.maximum(expected_counts, 1e-6))
        candidates = tf.concat([tf.concat([positives, negatives], axis=0), correction[:, None]], axis=-1)
        user = tf.concat([user, tf.ones_like(user[..., :1])], axis=-1)  # every head of a multi-vector user
        loss = self.task(user, candidates, candidate_ids=tf.cast(candidate_rows, tf.int64), compute_metrics=False,
                         compute_batch_metrics=False)
        return loss[:, None]

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config
