"""SIM's search units (Pi et al., CIKM 2020) and ETA's SimHash search (Chen et al., 2021).

A General Search Unit (GSU) picks `topk` of a user's (up to 10,000) behaviours for the candidate;
the Exact Search Unit (ESU) attends over those few. Each GSU here returns positions into the
history, (batch, topk) int32, and a (batch, topk) bool `valid`; `feature_columns.take_positions`
then gathers the chosen events' ids, embeddings or times. Hard search (same category, most
recent first) is `feature_columns.RecentSequence` with a `where` mask. Every search is a handful
of vectorised ops over (batch, L): scores or distances, then one top_k. No tensor of size
batch x L x topk (or x candidates) is ever built.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


def top_k_positions(scores, mask, k):
    """The `k` highest-scoring positions of each row among those where `mask` holds.

    scores (batch, L) float, mask (batch, L) bool -> (positions, valid), both (batch, k), best
    first; a row with fewer than k eligible positions has `valid` false (position 0) after them.
    """
    scores = tf.pad(tf.where(mask, scores, tf.fill(tf.shape(scores), scores.dtype.min)), [[0, 0], [0, k]],
                    constant_values=scores.dtype.min)  # top_k needs at least k columns
    eligible = tf.pad(mask, [[0, 0], [0, k]])
    positions = tf.math.top_k(scores, k).indices
    valid = tf.gather(eligible, positions, batch_dims=1)
    return tf.where(valid, positions, 0), valid


@_register
class SoftSearch(tf.keras.layers.Layer):
    """SIM's soft search: the `topk` behaviours with the largest inner product with the candidate.

    query (batch, 1, d), keys (batch, L, d), mask (batch, L) bool -> (positions, valid), both
    (batch, topk), highest score first. The scores are one batched matmul, (batch, L).
    """

    def __init__(self, topk, **kwargs):
        super().__init__(**kwargs)
        self.topk = int(topk)

    def call(self, query, keys, mask):
        scores = tf.squeeze(tf.matmul(query, keys, transpose_b=True), axis=1)  # (B, L)
        return top_k_positions(scores, mask, self.topk)

    def get_config(self):
        config = super().get_config()
        config.update(topk=self.topk)
        return config


@_register
class SimHashSearch(tf.keras.layers.Layer):
    """ETA's search: the `topk` behaviours nearest the candidate in Hamming distance of SimHash.

    Fixed random hyperplanes H (d, num_bits) give an embedding x the signature bits
    [x . H_j > 0], packed into one int64; sign agreement estimates the angle between two
    embeddings, so the nearest signatures approximate the largest cosines (Charikar, 2002).

    call(query, history, mask, keys=None): query (batch, 1, d) candidate embeddings, history
    (batch, L) int rows of the embedding table `table` (the behaviours' ids), mask (batch, L)
    bool, keys (batch, L, d) the behaviours' embeddings. Returns (positions, valid), both
    (batch, topk), nearest first.

    Training hashes `keys` (the same embeddings the ESU reads, so the model trains end to end)
    and writes those rows' signatures into `signatures` (table_rows,) int64. Inference reads
    `signatures` by id instead and never touches the L embeddings, so serving a long history is
    a lookup plus XOR/popcount. `refresh_from(model)` recomputes the whole column from the table
    (RecModel does it after `fit`, the exporter before writing a model).
    """

    def __init__(self, topk, table, table_rows, num_bits=64, seed=1024, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= int(num_bits) <= 64:
            raise ValueError(f"SimHashSearch: num_bits must be in [1, 64] (one int64), got {num_bits}")
        self.topk = int(topk)
        self.table = table
        self.table_rows = int(table_rows)
        self.num_bits = int(num_bits)
        self.seed = seed

    def build(self, query_shape, *args, **kwargs):
        self.hyperplanes = self.add_weight(
            name="hyperplanes", shape=(int(query_shape[-1]), self.num_bits),
            initializer=tf.keras.initializers.RandomNormal(seed=self.seed), trainable=False)
        self.signatures = self.add_weight(name="signatures", shape=(self.table_rows,), dtype=tf.int64,
                                          initializer="zeros", trainable=False)
        super().build(query_shape)

    def signature(self, embeddings):
        """(..., d) float -> (...,) int64 SimHash signatures."""
        bits = tf.cast(tf.tensordot(embeddings, self.hyperplanes, axes=1) > 0, tf.int64)
        # Distinct powers of two: the sum is the bitwise OR, and bit 63 lands on the sign bit.
        return tf.reduce_sum(tf.bitwise.left_shift(bits, tf.range(self.num_bits, dtype=tf.int64)), axis=-1)

    @staticmethod
    def hamming(a, b):
        """Bits that differ between int64 signatures (broadcast), as int32."""
        return tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_xor(a, b)), tf.int32)

    def call(self, query, history, mask, keys=None, training=None):
        history = tf.cast(history, tf.int32)
        if training and keys is not None:
            signatures = self.signature(tf.stop_gradient(keys))
            self.signatures.scatter_update(tf.IndexedSlices(tf.reshape(signatures, [-1]),
                                                            tf.reshape(history, [-1])))
        else:
            signatures = tf.gather(self.signatures, history)
        distances = self.hamming(self.signature(query), signatures)               # (B, L)
        return top_k_positions(-tf.cast(distances, tf.float32), mask, self.topk)

    def refresh_from(self, model):
        """Recomputes every row's signature from `model`'s embedding layer `table`."""
        self.signatures.assign(self.signature(model.get_layer(self.table).embeddings))

    def get_config(self):
        config = super().get_config()
        config.update(topk=self.topk, table=self.table, table_rows=self.table_rows,
                      num_bits=self.num_bits, seed=self.seed)
        return config


# Time-gap buckets (seconds): minutes, hours, days, weeks, months, a year.
DEFAULT_TIME_GAP_BOUNDARIES = (60, 300, 900, 3_600, 3 * 3_600, 6 * 3_600, 12 * 3_600, 86_400, 2 * 86_400,
                               4 * 86_400, 7 * 86_400, 14 * 86_400, 30 * 86_400, 60 * 86_400, 90 * 86_400,
                               180 * 86_400, 365 * 86_400)


@_register
class TimeGapEmbedding(tf.keras.layers.Layer):
    """Embeds the bucketised gap between each event and the request.

    request_time (batch, 1) and event_times (batch, k), any numeric dtype in the same unit
    (seconds by default), valid (batch, k) bool -> (batch, k, dim). Bucket b holds gaps in
    [boundaries[b - 1], boundaries[b]) and reads row b + 1; invalid events read row 0 (they are
    masked downstream).
    """

    def __init__(self, dim, boundaries=DEFAULT_TIME_GAP_BOUNDARIES, seed=1024, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.boundaries = tuple(float(b) for b in boundaries)
        self.seed = seed
        self.embedding = tf.keras.layers.Embedding(
            len(self.boundaries) + 2, self.dim, name="buckets",
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.05, seed=seed))

    def call(self, request_time, event_times, valid):
        gaps = tf.cast(tf.cast(request_time, tf.int64) - tf.cast(event_times, tf.int64), tf.float32)
        # A comparison per boundary (a few dozen) instead of Bucketize, which XLA cannot compile.
        bucket = tf.reduce_sum(tf.cast(gaps[..., None] >= tf.constant(self.boundaries), tf.int32), axis=-1)
        return self.embedding(tf.where(valid, bucket + 1, 0))

    def get_config(self):
        config = super().get_config()
        config.update(dim=self.dim, boundaries=self.boundaries, seed=self.seed)
        return config


@_register
class TargetAttention(tf.keras.layers.Layer):
    """SIM's Exact Search Unit: multi-head attention of the candidate over retrieved behaviours.

    query (batch, 1, E) candidate, behaviours (batch, k, D) (each event's embedding, with its
    time-gap embedding concatenated when the model has times), mask (batch, k) bool ->
    (batch, 1, E). Masked events get no weight; a row with none returns zeros.
    """

    def __init__(self, num_heads=4, key_dim=None, dropout=0.0, seed=1024, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.key_dim = key_dim
        self.dropout = dropout
        self.seed = seed

    def build(self, query_shape, behaviours_shape=None, mask_shape=None):
        dim = int(query_shape[-1])
        key_dim = self.key_dim or max(4, -(-dim // self.num_heads))
        self.attention = tf.keras.layers.MultiHeadAttention(
            self.num_heads, key_dim, dropout=self.dropout, name="attention",
            kernel_initializer=tf.keras.initializers.GlorotUniform(self.seed))
        super().build(query_shape)

    def call(self, query, behaviours, mask, training=None):
        mask = mask[:, None, :]                                                        # (B, 1, k)
        attended = self.attention(query, behaviours, attention_mask=mask, training=training)
        return tf.where(tf.reduce_any(mask, axis=-1, keepdims=True), attended, tf.zeros_like(attended))

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, key_dim=self.key_dim, dropout=self.dropout, seed=self.seed)
        return config
