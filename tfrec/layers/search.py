"""SIM's search units (Pi et al., CIKM 2020) and ETA's SimHash search (Chen et al., 2021).

A General Search Unit (GSU) picks `topk` of a user's (up to 10,000) behaviours for the candidate;
the Exact Search Unit (ESU) attends over those few. Each GSU here returns positions into the
history, (batch, topk) int32, and a (batch, topk) bool `valid`; `feature_columns.take_positions`
then gathers the chosen events' ids, embeddings or times. Hard search (same category, most
recent first) is `feature_columns.RecentSequence` with a `where` mask. Every search is a handful
of vectorised ops over (batch, L): scores or distances, then `feature_columns.top_k_indices`
(one top_k, or two narrower ones over a long history). No tensor of size batch x L x topk (or x
candidates) is ever built.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import functools

import numpy as np
import tensorflow as tf
from feature_columns import positions_of_width, take_positions, top_k_indices

from .core import check_positive_int

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


def top_k_positions(scores, mask, k):
    """The `k` highest-scoring positions of each row among those where `mask` holds.

    scores (batch, L) float or int, mask (batch, L) or (1, L) (one history shared by every row)
    bool -> (positions, valid), both (batch, k), best first; a row with fewer than k eligible
    positions has `valid` false (position 0) after them.
    """
    return ranked_positions(tf.where(mask, scores, tf.constant(scores.dtype.min, scores.dtype)), mask, k)


def ranked_positions(scores, mask, k):
    """`top_k_positions` for scores that already rank every masked position below every other."""
    # top_k over at most L columns, then its (batch, k) output padded: padding the (batch, L)
    # scores instead would copy all of them, a pass as long as the search itself.
    positions = top_k_indices(scores, tf.minimum(k, tf.shape(scores)[1]))
    valid = take_positions(mask, positions, tf.ones_like(positions, tf.bool))
    missing = [[0, 0], [0, k - tf.shape(positions)[1]]]
    positions = tf.ensure_shape(tf.pad(tf.where(valid, positions, 0), missing), [None, k])
    return positions, tf.ensure_shape(tf.pad(valid, missing), [None, k])


@functools.lru_cache(maxsize=None)
def native_bfloat16():
    """Whether this machine's CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16, as
    Linux lists its flags). Elsewhere TensorFlow emulates a bfloat16 matmul, several times slower
    than float32's."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def shares_one_history(candidates, events):
    """Whether the rows of `candidates` (batch, ...) share the one row of `events` (1, ...): the
    case a search can score with one product over the history instead of one per row."""
    return tf.logical_and(tf.equal(tf.shape(events)[0], 1), tf.shape(candidates)[0] > 1)


def signature_bytes(signatures):
    """(n, words) int64 SimHash signatures -> their (n, 8 words) bytes as int32, little-endian."""
    return tf.reshape(tf.cast(tf.bitcast(signatures, tf.uint8), tf.int32), [tf.shape(signatures)[0], -1])


@_register
class SoftSearch(tf.keras.layers.Layer):
    """SIM's soft search: the `topk` behaviours with the largest inner product with the candidate.

    call(queries, keys, mask): per feature of an event (lists in the same order: item, category)
    the candidate's embeddings (batch, 1, d_f) and the events' (batch, L, d_f), or (1, L, d_f)
    for one history shared by every row; mask (batch, L) or (1, L) bool. The score of an event
    is sum_f <q_f, k_f>, (batch, L). Returns (positions, valid), both (batch, topk), highest score
    first.

    With `normalize`, each feature's embeddings are L2-normalised first (the score is a sum of
    cosines). The model's own embeddings need it: their norms carry popularity and click
    propensity, and a raw inner product then retrieves the same large-norm events for every
    candidate (measured on planted long histories: 0.80 of the oracle AUC raw, 0.92 normalised).
    Embeddings trained for the search by SIM's auxiliary objective use the raw product.
    """

    def __init__(self, topk, normalize=False, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(topk, "topk", f"SoftSearch '{self.name}'")
        self.topk = int(topk)
        self.normalize = bool(normalize)

    def call(self, queries, keys, mask):
        if self.normalize:
            queries = [tf.math.l2_normalize(query, axis=-1) for query in queries]
            keys = [tf.math.l2_normalize(key, axis=-1) for key in keys]
        return positions_of_width(tf.cond(shares_one_history(queries[0], keys[0]),
                                          lambda: self._top_in_one_history(queries, keys, mask),
                                          lambda: self._top(queries, keys, mask)), self.topk)

    def _top(self, queries, keys, mask):
        scores = 0.0
        for query, key in zip(queries, keys):
            scores += tf.squeeze(tf.matmul(query, key, transpose_b=True), axis=1)       # (B, L)
        return top_k_positions(scores, mask, self.topk)

    def _top_in_one_history(self, queries, keys, mask):
        """The search when every candidate shares one history (keys (1, L, d_f), mask (1, L), as
        a served `shared_history` request carries them): one (B, E + 1) x (E + 1, L) product
        over every feature, where a broadcast batched matmul per feature makes B products of
        one row each. The extra column puts a masked event at the float32 minimum, below every
        real one, so no (B, L) select is needed either."""
        masked = tf.where(tf.reshape(mask[:1], [-1, 1]), 0.0, tf.float32.min)                          # (L, 1)
        events = tf.concat([key[0] for key in keys] + [masked], axis=-1)                                 # (L, E + 1)
        candidates = tf.concat([query[:, 0] for query in queries] + [tf.ones_like(queries[0][:, 0, :1])],
                               axis=-1)                                                                  # (B, E + 1)
        return ranked_positions(tf.matmul(candidates, events, transpose_b=True), mask, self.topk)

    def get_config(self):
        config = super().get_config()
        config.update(topk=self.topk, normalize=self.normalize)
        return config


@_register
class SimHashSearch(tf.keras.layers.Layer):
    """ETA's search: the `topk` behaviours nearest the candidate in Hamming distance of SimHash.

    Fixed random hyperplanes H (d, num_bits) give an embedding x the signature bits
    [x . H_j > 0], packed 64 to an int64 word (num_bits = 64: one int64). The share of differing
    bits estimates the angle between two embeddings (Charikar, 2002), so the nearest signatures
    approximate the largest cosines, more closely as num_bits grows. An event described by
    several features (item, category) has a signature per feature's table, and its distance is
    the sum over them: each table's signatures can then be precomputed on their own.

    call(queries, histories, mask, keys=None): per feature (lists, in `tables` order) the
    candidate's embeddings (batch, 1, d_f), the events' ids (batch, L) into that table, and in
    training the events' embeddings (batch, L, d_f); mask (batch, L) bool. Returns (positions,
    valid), both (batch, topk), nearest first.

    Training hashes `keys` (the same embeddings the ESU reads, so the model trains end to end)
    and writes those rows' signatures into the table's `signatures_<f>` (rows, words) int64.
    Inference reads the signatures by id instead and never touches the L embeddings, so serving
    a long history is a lookup plus XOR/popcount. `refresh_from(model)` recomputes every row from
    the embedding layers named in `tables` (RecModel does it after `fit`, the exporter before it
    writes a model).
    """

    def __init__(self, topk, tables, table_rows, num_bits=64, seed=1024, **kwargs):
        super().__init__(**kwargs)
        if int(num_bits) < 1:
            raise ValueError(f"SimHashSearch: num_bits must be >= 1, got {num_bits}")
        if len(tables) != len(table_rows):
            raise ValueError(f"SimHashSearch: {len(tables)} tables but {len(table_rows)} row counts")
        check_positive_int(topk, "topk", f"SimHashSearch '{self.name}'")
        self.topk = int(topk)
        self.tables = list(tables)
        self.table_rows = [int(r) for r in table_rows]
        self.num_bits = int(num_bits)
        self.seed = seed
        self.words = -(-self.num_bits // 64)

    def build(self, queries_shape, *args, **kwargs):
        self.hyperplanes, self.signatures = [], []
        for i, (shape, rows) in enumerate(zip(queries_shape, self.table_rows)):
            self.hyperplanes.append(self.add_weight(
                name=f"hyperplanes_{i}", shape=(int(shape[-1]), self.num_bits),
                initializer=tf.keras.initializers.RandomNormal(seed=self.seed + i), trainable=False))
            self.signatures.append(self.add_weight(name=f"signatures_{i}", shape=(rows, self.words),
                                                   dtype=tf.int64, initializer="zeros", trainable=False))
        super().build(queries_shape)

    def signature(self, embeddings, table=0):
        """(..., d) float -> (..., words) int64 SimHash signatures, with table `table`'s hyperplanes.

        Bit j of word w is [x . H_(64w + j) > 0]. The bits are packed a byte at a time (a float
        dot product with 1, 2, ..., 128, exact) and the bytes bitcast to int64, so the largest
        intermediate is the (..., num_bits) projection itself, not one int64 per bit.
        """
        bits = tf.cast(tf.tensordot(embeddings, self.hyperplanes[table], axes=1) > 0, tf.float32)
        bits = tf.pad(bits, [[0, 0]] * (bits.shape.rank - 1) + [[0, 64 * self.words - self.num_bits]])
        outer = tf.shape(bits)[:-1]
        bytes_ = tf.tensordot(tf.reshape(bits, tf.concat([outer, [8 * self.words, 8]], axis=0)),
                              tf.constant([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]), axes=1)
        bytes_ = tf.reshape(tf.cast(bytes_, tf.uint8), tf.concat([outer, [self.words, 8]], axis=0))
        return tf.bitcast(bytes_, tf.int64)  # little-endian: byte b holds bits 8b .. 8b + 7

    @staticmethod
    def hamming(a, b):
        """Bits that differ between signatures (..., words) int64 (broadcast), as int32 (...)."""
        differing = tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_xor(a, b)), tf.int32)
        return differing[..., 0] if differing.shape[-1] == 1 else tf.reduce_sum(differing, axis=-1)

    def call(self, queries, histories, mask, keys=None, training=None):
        histories = [tf.cast(history, tf.int32) for history in histories]
        query_signatures = [self.signature(query, table) for table, query in enumerate(queries)]  # (B, 1, W) each
        if training and keys is not None:
            signatures = [self._hash_events(tf.stop_gradient(key), history, table)
                          for table, (key, history) in enumerate(zip(keys, histories))]  # (B, L, W) each
            return self._nearest(query_signatures, signatures, mask)
        signatures = [tf.gather(stored, history) for stored, history in zip(self.signatures, histories)]
        # Both branches are stateless (the variables are read above): a lowered cond that reads
        # one gets control outputs, which Grappler warns about in every tf.function of the model.
        return positions_of_width(tf.cond(shares_one_history(queries[0], histories[0]),
                                          lambda: self._nearest_in_one_history(query_signatures, signatures, mask),
                                          lambda: self._nearest(query_signatures, signatures, mask)), self.topk)

    def _nearest(self, query_signatures, signatures, mask):
        """The search over signatures (B, L, W) per table: XOR and popcount, then top_k.

        Ranked by the bits that agree (the total minus the distance: the same order), counted
        against the inverted query signature (batch, 1, W), so the (batch, L) pass needs no
        negation; the counts stay uint8 while their sum fits and become float32 once, the type
        top_k ranks. Three fewer passes over batch x L than negated int32 distances: a served
        request of 100 candidates x 10,000 events went from 14.2 to 12.8 ms (p50, the median of
        five alternating runs).
        """
        counts_fit_uint8 = self.words == 1 and 64 * len(self.tables) <= 255
        agreements = 0
        for query_signature, history_signatures in zip(query_signatures, signatures):
            agree = tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_xor(
                history_signatures, tf.bitwise.invert(query_signature)))                        # (B, L, W) uint8
            agreements += tf.squeeze(agree, -1) if counts_fit_uint8 else \
                tf.reduce_sum(tf.cast(agree, tf.int32), axis=-1)                                # (B, L)
        return top_k_positions(tf.cast(agreements, tf.float32), mask, self.topk)

    def _nearest_in_one_history(self, query_signatures, signatures, mask):
        """The search when every candidate shares one history (signatures (1, L, W) per table and
        mask (1, L), as a served request's `shared_history` carries them): `_nearest`'s picks from
        one matmul.

        With bits as +-1, <s_q, s_e> = agreeing bits - differing bits = 2 * agreements - bits, the
        same order. So the whole (B, L) comparison is one (B, bits + 8) x (bits + 8, L) product
        over every table's bits, instead of an XOR, a popcount and a sum over B x L signatures per
        table (100 candidates x 10,000 events: 0.6 ms against 1.5). The bits come from one lookup
        per byte (a broadcast shift-and-mask takes 3x as long); one more byte per row puts a
        masked event 2 * bits + 4 lower, below every real one, so no (B, L) select is needed.
        The product runs in bfloat16 where the CPU has it in hardware (`native_bfloat16`), else in
        float32: on an Intel Xeon without AVX512-BF16, the emulated bfloat16 product of 100
        candidates x 10,000 events took 9.4 ms against float32's 2.4, and SIM's whole request
        0.56-0.78x the time in float32 (three rounds taking turns in one process). The
        picks are the same: TensorFlow's bfloat16 matmul sums in float32, and its results are
        exact bfloat16 integers up to 256 bits (a masked one rounded by at most 2); beyond, it
        runs in float32. The choice is made when the search is traced, so an export keeps the
        dtype of the machine that wrote it.
        """
        bits = 64 * self.words * len(self.tables)
        dtype = tf.bfloat16 if bits <= 256 and native_bfloat16() else tf.float32
        # Rows 0-255: a byte's 8 bits as +-1, in the packing's order. Row 256 (a real event's
        # extra byte) scores 0 against the query's extra byte 255 (all +1); row 257 (a masked one's)
        # scores -(2 * bits + 4).
        byte_signs = np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, 1, -1)
        byte_signs = np.concatenate([byte_signs, np.zeros((2, 8), int)])
        byte_signs[257, 0] = -(2 * bits + 4)
        byte_signs = tf.constant(byte_signs, dtype)                                                   # (258, 8)
        query_bytes = tf.pad(signature_bytes(tf.concat([query[:, 0] for query in query_signatures], axis=-1)),
                             [[0, 0], [0, 1]], constant_values=255)                                   # (B, bits / 8 + 1)
        event_bytes = tf.concat([signature_bytes(tf.concat([history[0] for history in signatures], axis=-1)),
                                 tf.where(tf.reshape(mask[:1], [-1, 1]), 256, 257)], axis=1)          # (L, bits / 8 + 1)
        query_signs, event_signs = [tf.reshape(tf.gather(byte_signs, bytes_), [tf.shape(bytes_)[0], -1])
                                    for bytes_ in (query_bytes, event_bytes)]
        return ranked_positions(tf.matmul(query_signs, event_signs, transpose_b=True), mask, self.topk)

    def _hash_events(self, keys, ids, table):
        """The signatures (B, L, W) of events `ids` (B, L) whose embeddings are `keys` (B, L, d),
        also written into the table's rows.

        Equal ids have equal embeddings. So when the table has no more rows than one history has
        events (a category table, a small catalogue), each row the batch uses is hashed once, from
        its first event, instead of every event: on 256 histories of 2,000 events (an item table
        of 1,000 rows, a category table of 20), the layer's training call went from 175 to 9 ms
        under XLA. A larger table hashes every event.
        """
        rows = self.table_rows[table]
        if ids.shape[-1] is None or rows > ids.shape[-1]:
            signatures = self.signature(keys, table)
            self.signatures[table].scatter_update(tf.IndexedSlices(
                tf.reshape(signatures, [-1, self.words]), tf.reshape(ids, [-1])))
            return signatures
        flat_ids = tf.reshape(ids, [-1])
        events = tf.size(flat_ids)
        first = tf.math.unsorted_segment_min(tf.range(events), flat_ids, rows)  # int32 max where a row is unused
        first_keys = tf.gather(tf.reshape(keys, [-1, keys.shape[-1]]), tf.minimum(first, events - 1))
        table_signatures = tf.where((first < events)[:, None], self.signature(first_keys, table),
                                    self.signatures[table])
        self.signatures[table].assign(table_signatures)
        return tf.gather(table_signatures, ids)

    def refresh_from(self, model):
        """Recomputes every row's signature from `model`'s embedding layers `tables`."""
        for table, name in enumerate(self.tables):
            self.signatures[table].assign(self.signature(model.get_layer(name).embeddings, table))

    def get_config(self):
        config = super().get_config()
        config.update(topk=self.topk, tables=self.tables, table_rows=self.table_rows,
                      num_bits=self.num_bits, seed=self.seed)
        return config


@_register
class RelevancePooling(tf.keras.layers.Layer):
    """SIM's auxiliary pooling: the history weighted by its relevance to the candidate.

    query (batch, 1, d), keys (batch, L, d), mask (batch, L) bool -> (batch, 1, d), the mean over
    the real events of <query, key_j> key_j (zeros for an empty history). It feeds the auxiliary
    CTR head that trains soft search's own embeddings (paper, section 4.1).
    """

    def call(self, query, keys, mask):
        relevance = tf.matmul(query, keys, transpose_b=True) * tf.cast(mask, keys.dtype)[:, None, :]  # (B, 1, L)
        length = tf.maximum(tf.reduce_sum(tf.cast(mask, keys.dtype), axis=1), 1.0)[:, None, None]
        return tf.matmul(relevance, keys) / length


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

    The projections start from Keras' global seed (`tf.keras.utils.set_random_seed`), not from
    `seed`: MultiHeadAttention clones one initializer for its query, key and value projections,
    so a seeded one would start them all equal. `seed` stays in the config so that models saved
    with it still load.
    """

    def __init__(self, num_heads=4, key_dim=None, dropout=0.0, seed=1024, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(num_heads, "num_heads", f"TargetAttention '{self.name}'")
        self.num_heads = int(num_heads)
        self.key_dim = key_dim
        self.dropout = dropout
        self.seed = seed

    def build(self, query_shape, behaviours_shape=None, mask_shape=None):
        dim = int(query_shape[-1])
        key_dim = self.key_dim or max(4, -(-dim // self.num_heads))
        self.attention = tf.keras.layers.MultiHeadAttention(
            self.num_heads, key_dim, dropout=self.dropout, name="attention")
        super().build(query_shape)

    def call(self, query, behaviours, mask, training=None):
        mask = mask[:, None, :]                                                        # (B, 1, k)
        attended = self.attention(query, behaviours, attention_mask=mask, training=training)
        return tf.where(tf.reduce_any(mask, axis=-1, keepdims=True), attended, tf.zeros_like(attended))

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, key_dim=self.key_dim, dropout=self.dropout, seed=self.seed)
        return config
