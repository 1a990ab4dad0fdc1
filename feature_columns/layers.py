"""In-graph preprocessing layers: raw values -> embedding indices, sequence truncation, pooling.

They live inside every exported model, so a served model takes exactly the raw values the training
DataFrame held (no train/serve skew).
"""
from . import _legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import functools
import hashlib
import json

import numpy as np
import tensorflow as tf

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


def lookup_fingerprint(num_buckets, vocabulary, use_hash, string_input):
    """8 hex digits of a hash of what decides the rows a SparseIndex gives (table size,
    vocabulary, hashing, string ids)."""
    text = json.dumps([int(num_buckets), None if vocabulary is None else [str(v) for v in vocabulary],
                       bool(use_hash), bool(string_input)])
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def in_input_shape(values, width):
    """`values`, one of a model's inputs, in its Input's shape when Keras lost its rank: (rows,
    width) for an Input (batch, width), (rows, any) for `width` None (a sequence).

    Keras conforms a (rows,) tensor fed to a (batch, 1) Input to (rows, 1) (and (rows, 1) to a
    (batch,) one), but a train / test / predict function called with one after the other (two
    data sets, or a data set after a dict) is traced again for inputs of unknown rank, which it
    cannot conform: every layer reading one would lose its width ("ConcatOp : Ranks of all
    input tensors should match"). Only a tensor of unknown rank is reshaped; a known one is
    returned as it is. (rows, maxlen, 1), DeepCTR's shape of a sequence's weights, becomes
    (rows, maxlen) too.
    """
    if values.shape.rank is not None:
        return values
    return tf.reshape(values, [-1, width] if width is not None else [tf.shape(values)[0], -1])


@_register
class InInputShape(tf.keras.layers.Layer):
    """A model input in its Input's shape (`in_input_shape`) for the layers that read it.

    `FeatureEncoder` puts it between a DenseFeat's Input and the rest of the model; a
    SparseIndex and a RecentSequence conform their inputs themselves. `width`: the Input's
    (batch, width), or None for (batch, any width).
    """

    def __init__(self, width, **kwargs):
        super().__init__(**kwargs)
        self.width = None if width is None else int(width)

    def call(self, values):
        return in_input_shape(values, self.width)

    def get_config(self):
        config = super().get_config()
        config.update(width=self.width)
        return config


@_register
class SparseIndex(tf.keras.layers.Layer):
    """Maps raw ids of any shape to embedding indices of the same shape (int32, 0 = padding).

    Exactly one mapping applies:
      * `vocabulary`: StringLookup / IntegerLookup; padding ("" or 0) -> 0, unknown -> 1 (OOV),
        the i-th vocabulary entry -> i + 2.
      * `use_hash`: Hashing into `num_buckets - 1` bins, shifted by one so padding stays 0.
      * neither: integer ids are already indices; an id outside [0, num_buckets) (an id unseen
        when the table was sized, a negative id) becomes index 0, the padding row, which is the
        out-of-vocabulary row of such a column, instead of failing the whole batch in the lookup.
    """

    def __init__(self, num_buckets, vocabulary=None, use_hash=False, string_input=False, **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = int(num_buckets)
        # A tuple: Keras tracks a list attribute and walks every entry whenever it lists the
        # layer's weights or saves it (a 5,000-id vocabulary made a SavedModel save ~0.4 s slower).
        self.vocabulary = None if vocabulary is None else tuple(vocabulary)
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

    @functools.cached_property
    def fingerprint(self):
        """A short text that differs between lookups mapping a raw value to different rows
        (`lookup_fingerprint`): rows a pipeline looked up carry it in their key. Cached: it
        hashes the whole vocabulary, which does not change after the layer is made."""
        return lookup_fingerprint(self.num_buckets, self.vocabulary, self.use_hash, self.string_input)

    @property
    def unknown_index(self):
        """The index every unknown raw value shares: 1 (OOV) with a vocabulary, 0 for plain ids
        outside [0, num_buckets), None when hashing (no value is unknown)."""
        return None if self.use_hash else 1 if self.vocabulary is not None else 0

    def call(self, raw, sequence=False):
        """`sequence`: `raw` is a padded sequence. A hashed string one then also takes "0" as
        padding, as DeepCTR's Hash(mask_zero=True) does for its sequences (its examples pad
        string sequences with "0").

        In a model, `raw` is a (batch, 1) Input, or (batch, width) with `sequence`; a tensor of
        unknown rank (`in_input_shape`) is read in that shape."""
        raw = in_input_shape(raw, None if sequence else 1)
        if self._lookup is None:
            ids = tf.cast(raw, tf.int64)
            return tf.where((ids >= 0) & (ids < self.num_buckets), tf.cast(ids, tf.int32), 0)
        if self.vocabulary is not None:
            values = raw if self.string_input else tf.cast(raw, tf.int64)
            return tf.cast(self._lookup(values), tf.int32)
        hashed = tf.cast(self._lookup(raw), tf.int32) + 1
        padding = tf.equal(raw, tf.constant(self._padding, raw.dtype))
        if sequence and self.string_input:
            padding |= tf.equal(raw, "0")
        return tf.where(padding, 0, hashed)

    def get_config(self):
        config = super().get_config()
        config.update(num_buckets=self.num_buckets,
                      vocabulary=None if self.vocabulary is None else list(self.vocabulary),
                      use_hash=self.use_hash, string_input=self.string_input)
        return config


# top_k_indices ranks rows at least this many times wider than k in two passes, over blocks of
# TOP_K_BLOCK positions: below that, the second top_k's fixed cost outweighs the narrower pass.
TOP_K_TWO_PASS_MIN_WIDTH = 160
TOP_K_BLOCK = 16


def top_k_indices(values, k):
    """The positions of the `k` largest of each row of `values` (batch, n), int or float: the
    indices of `tf.math.top_k` (largest first, ties in position order).

    Integers (and bfloat16) are ranked as float32, exactly while they lie within +-2^24 (or equal
    the dtype's min, a power of two): a training step runs under XLA, whose CPU top-k is fast only
    for float32 and sorts every row of any other type ((256, 2,000) int32, k = 50: 55 ms against
    3 ms for float32).

    Rows of at least `TOP_K_TWO_PASS_MIN_WIDTH` x k values (a 10,000-event history searched for
    50) are ranked in two passes, `_top_k_in_blocks`, with the same result.
    """
    if values.dtype.is_integer or values.dtype == tf.bfloat16:
        values = tf.cast(values, tf.float32)
    width, k_value = values.shape[-1], tf.get_static_value(k)
    if width is not None and k_value is not None:
        if width >= TOP_K_TWO_PASS_MIN_WIDTH * k_value:
            return _top_k_in_blocks(values, k)
        return tf.math.top_k(values, k).indices
    return tf.cond(tf.shape(values)[-1] >= TOP_K_TWO_PASS_MIN_WIDTH * k,
                   lambda: _top_k_in_blocks(values, k), lambda: tf.math.top_k(values, k).indices)


def _top_k_in_blocks(values, k):
    """`tf.math.top_k(values, k).indices` for values (batch, n) float32, n >= k x TOP_K_BLOCK, from
    two narrower top_ks: over the maxima of blocks of TOP_K_BLOCK positions, then over the k blocks
    with the largest maxima, taken in position order.

    Those k blocks hold the k largest values, ties included: a block holding one of them has a
    maximum at least the k-th largest value v; fewer than k values exceed v, so fewer than k
    blocks have a maximum above v, and all are taken; the values equal to v that top_k keeps are
    the first in position order, and they lie in the first blocks whose maximum is v, the ones
    top_k keeps among equal maxima. The second pass sees the k blocks in position order, so it
    breaks ties as top_k does over the whole row.
    (100, 10,000), k = 50: 1.6 ms against 1.8 for one top_k.
    """
    rows, width = tf.shape(values)[0], tf.shape(values)[1]
    # At least k blocks, so that the pass compiles (XLA compiles both branches of top_k_indices'
    # tf.cond) whatever the width.
    num_blocks = tf.maximum(-(-width // TOP_K_BLOCK), k)
    blocks = tf.reshape(tf.pad(values, [[0, 0], [0, num_blocks * TOP_K_BLOCK - width]],
                               constant_values=-float("inf")), [rows, num_blocks, TOP_K_BLOCK])
    # The padding is never kept: it ranks last (ties after every real position), and a row this
    # pass ranks has at least k real ones.
    # Unsorted: the chosen blocks are put in position order next anyway ((100, 10,000), k = 50:
    # 1.57 against 1.70 ms for the two passes).
    chosen = tf.sort(tf.math.top_k(tf.reduce_max(blocks, axis=-1), k, sorted=False).indices, axis=-1)  # (batch, k)
    candidates = tf.reshape(tf.gather(blocks, chosen, batch_dims=1), [rows, -1])                 # (batch, k x block)
    best = tf.math.top_k(candidates, k).indices
    return tf.gather(chosen, best // TOP_K_BLOCK, batch_dims=1) * TOP_K_BLOCK + best % TOP_K_BLOCK


def most_recent_positions(eligible, k):
    """Positions of the last `k` true entries of each row of `eligible` (batch, width) bool.

    Returns (positions, valid), both (batch, k): oldest -> newest, right-padded; `valid` is false
    (and the position 0) where a row has fewer than k eligible entries. One top_k over the width,
    so the cost is linear in the width and nothing is materialised per position pair.
    """
    width = tf.shape(eligible)[1]
    eligible = tf.pad(eligible, [[0, 0], [0, k]])  # top_k needs at least k columns
    ranked = tf.where(eligible, tf.range(width + k)[None, :], -1)
    newest_first = tf.gather(ranked, top_k_indices(ranked, k), batch_dims=1)
    count = tf.reduce_sum(tf.cast(newest_first >= 0, tf.int32), axis=1, keepdims=True)
    slot = tf.range(k)[None, :]
    valid = slot < count
    positions = tf.gather(newest_first, tf.maximum(count - 1 - slot, 0), batch_dims=1)
    return tf.where(valid, positions, 0), valid


def most_recent_matching(keys, eligible, targets, k):
    """Per target, the positions of the last `k` eligible entries of `keys` equal to it.

    keys (users, width) int and eligible (users, width) bool describe the sequences; targets
    (rows, 1) int, one per row; `users` is `rows` (a sequence per row) or 1 (one sequence shared
    by every row: a request scoring many candidates for one user; `keys` may be shared while
    `eligible` is per row). Returns (positions, valid), both (rows, k), as
    `most_recent_positions` of `eligible & (keys == targets)` gives them.

    A shared sequence is sorted once by key (stably, so each key's positions stay in time
    order) and every target's run is found by binary search: O(width log width + rows k)
    instead of a (rows, width) comparison and top_k. SIM's hard search over a 10,000-event
    history for 100 candidates is then one sort, not a top_k over a million entries.
    """
    def per_row():
        return most_recent_positions(eligible & tf.equal(keys, tf.cast(targets, keys.dtype)), k)

    def shared():
        key = tf.where(eligible[0], tf.cast(keys[0], tf.int64), -1)                  # (width,)
        order = tf.argsort(key, stable=True)
        runs = tf.gather(key, order)[None, :]
        wanted = tf.reshape(tf.cast(targets, tf.int64), [1, -1])
        end = tf.searchsorted(runs, wanted, side="right")[0][:, None]                # (rows, 1)
        count = tf.minimum(end - tf.searchsorted(runs, wanted, side="left")[0][:, None], k)
        slot = tf.range(k)[None, :]
        valid = slot < count
        positions = tf.gather(order, tf.where(valid, end - count + slot, 0))
        return tf.where(valid, positions, 0), valid

    return positions_of_width(tf.cond(tf.equal(tf.shape(eligible)[0], 1), shared, per_row), k)


def take_positions(values, positions, valid):
    """values (users, width, ...) at `positions` (rows, k) -> (rows, k, ...), 0 where not `valid`.

    `users` is `rows`, or 1 for one sequence shared by every row (read without copying it).
    """
    padding = [[0, 0], [0, 1]] + [[0, 0]] * (values.shape.rank - 2)  # position 0 exists at width 0
    rows = tf.minimum(tf.range(tf.shape(positions)[0]), tf.shape(values)[0] - 1)
    rows = tf.broadcast_to(rows[:, None], tf.shape(positions))
    taken = tf.gather_nd(tf.pad(values, padding), tf.stack([rows, positions], axis=-1))
    mask = tf.reshape(valid, tf.concat([tf.shape(valid), tf.ones([values.shape.rank - 2], tf.int32)], 0))
    return tf.where(mask, taken, tf.zeros((), taken.dtype))


def _most_recent_items(eligible, k):
    """`most_recent_positions` for sequences whose items usually form a prefix (right padding).

    Then the last k items are an arithmetic range, with no top_k over a 10,000-event width; a
    batch where some row has padding (or an unknown id) between its items takes the general path,
    so such a gap is skipped rather than costing one of the newest items.
    """
    count = tf.reduce_sum(tf.cast(eligible, tf.int32), axis=1, keepdims=True)
    end = tf.reduce_max(tf.where(eligible, tf.range(tf.shape(eligible)[1])[None, :] + 1, 0), axis=1,
                        keepdims=True)

    def prefix():
        slot = tf.range(k)[None, :]
        valid = slot < count
        return tf.where(valid, tf.maximum(count - k, 0) + slot, 0), valid

    return positions_of_width(tf.cond(tf.reduce_all(tf.equal(end, count)), prefix,
                                      lambda: most_recent_positions(eligible, k)), k)


def positions_of_width(positions_and_valid, k):
    """A tf.cond's (positions, valid) with their (batch, k) shape stated in the graph.

    Grappler infers a lowered cond's outputs as of unknown rank, and every op after it logs
    'Error in PredictCost()' (a MIND run loaded from its file: 3 lines per evaluate, 9 per export).
    """
    return tuple(tf.ensure_shape(tensor, [None, k]) for tensor in positions_and_valid)


@_register
class RecentSequence(tf.keras.layers.Layer):
    """Keeps, per row, the most recent `maxlen` items of a sequence where a condition holds.

    The one truncation of every sequence model: a column's "most recent maxlen items" and SIM's
    hard search ("the most recent topk items of the candidate's category") are this layer, with
    and without a condition.

    Inputs: `indices` (users, width) int, 0 = padding, oldest -> newest; optional `lengths`
    (users,) or (users, 1) true lengths (only the first `lengths` positions are items); optional
    `where` (rows, width) bool, restricting which items are eligible; optional `keys` (users,
    width) int and `targets` (rows, 1) int, restricting them to the items whose key equals the
    row's target (`most_recent_matching`); optional `aligned`, a list of (users, width, ...)
    tensors (weights, event times) taken at the same positions. `users` is `rows`, or 1 when one
    sequence is shared by every row of a request (one user's history, many candidates).
    Returns the kept indices (rows, maxlen), right-padded with 0, oldest -> newest, or
    (indices, [aligned...]) when `aligned` is given. A row wider than `maxlen` therefore scores
    exactly like its last `maxlen` items, and padding, at the end or between items, changes
    nothing. `names` (the sequence's, then each aligned one's) name them when their widths differ;
    `length_name` names the lengths' input when one is negative (an error, not an empty history).
    """

    def __init__(self, maxlen, names=None, length_name=None, **kwargs):
        super().__init__(**kwargs)
        self.maxlen = int(maxlen)
        self.names = list(names) if names else None
        self.length_name = length_name

    def call(self, indices, lengths=None, where=None, aligned=None, keys=None, targets=None):
        if aligned is not None:  # model inputs (weights, event times), one number per event
            aligned = [in_input_shape(values, None) for values in aligned]
        eligible = tf.not_equal(indices, 0)
        if lengths is not None:  # a length beyond the items sent (a longer true history) counts them
            lengths = tf.reshape(tf.cast(lengths, tf.int32), [-1, 1])
            tf.debugging.assert_non_negative(
                lengths, message=f"{self.length_name or 'a sequence length'} holds a negative length; it must be the "
                                 "number of events sent in the sequence (0 for none)")
            eligible &= tf.range(tf.shape(indices)[1])[None, :] < lengths
        if where is not None:
            eligible &= where
        if keys is not None:
            positions, valid = most_recent_matching(keys, eligible, targets, self.maxlen)
        elif where is not None:
            positions, valid = most_recent_positions(eligible, self.maxlen)
        else:
            positions, valid = _most_recent_items(eligible, self.maxlen)
        kept = take_positions(indices, positions, valid)
        if aligned is None:
            return kept
        names = self.names or ["the sequence"] + [f"aligned sequence {i}" for i in range(len(aligned))]
        for name, values in zip(names[1:], aligned):
            tf.debugging.assert_equal(
                tf.shape(values)[1], tf.shape(indices)[1],
                message=f"'{name}' must hold one entry per event of '{names[0]}' (the same events' "
                        "features, padded alike), but their widths differ")
        return kept, [take_positions(values, positions, valid) for values in aligned]

    def get_config(self):
        config = super().get_config()
        config.update(maxlen=self.maxlen, names=self.names, length_name=self.length_name)
        return config


@_register
class TakePositions(tf.keras.layers.Layer):
    """Takes aligned sequences at chosen positions: a search's result applied to the history.

    call(sequences, positions, valid): `sequences` a list of (batch, width, ...) tensors,
    positions and valid (batch, k) as `most_recent_positions` or a top-k search gives them.
    Returns the list of (batch, k, ...) tensors, 0 where not valid.
    """

    def call(self, sequences, positions, valid):
        return [take_positions(values, positions, valid) for values in sequences]


@_register
class PaddingMask(tf.keras.layers.Layer):
    """Where a sequence of embedding rows holds events.

    call(indices) with (batch, maxlen) int rows, 0 for padding, returns (mask (batch, maxlen)
    bool, true on real events; lengths (batch,) int32, the number of real events).
    """

    def call(self, indices):
        mask = tf.not_equal(indices, 0)
        return mask, tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)


@_register
class SequencePooling(tf.keras.layers.Layer):
    """Pools (batch, maxlen, dim) embeddings over the positions where `mask` is true.

    `combiner` is "mean", "sum" or "max"; optional `weights` (batch, maxlen) scale each position
    first, as DeepCTR's WeightedSequenceLayer does: by the softmax of the row's weights over its
    items when `weight_norm`, else by the weights themselves; the combiner then pools the
    weighted embeddings as it pools unweighted ones ("mean" divides by the number of items).
    Padding never contributes; a row with no items pools to zeros. Returns (batch, 1, dim).
    """

    def __init__(self, combiner="mean", weight_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.combiner = combiner
        self.weight_norm = bool(weight_norm)

    def call(self, embeddings, mask, weights=None):
        real = tf.cast(mask, tf.bool)
        mask = tf.cast(real, embeddings.dtype)
        if weights is not None:
            weights = tf.cast(weights, embeddings.dtype)
            if self.weight_norm:
                weights = tf.nn.softmax(tf.where(real, weights, weights.dtype.min), axis=1)
            embeddings = embeddings * (weights * mask)[..., None]
        if self.combiner == "max":
            very_negative = (1.0 - mask) * -1e9
            pooled = tf.reduce_max(embeddings * mask[..., None] + very_negative[..., None], axis=1)
            pooled = tf.where(tf.reduce_any(real, axis=1)[:, None], pooled, tf.zeros_like(pooled))
        else:
            pooled = tf.reduce_sum(embeddings * mask[..., None], axis=1)
            if self.combiner == "mean":
                pooled = tf.math.divide_no_nan(pooled, tf.reduce_sum(mask, axis=1, keepdims=True))
        return pooled[:, None, :]

    def get_config(self):
        config = super().get_config()
        config.update(combiner=self.combiner, weight_norm=self.weight_norm)
        return config


def gather_rows(table, ids):
    """`table[ids]` for ids of any shape: (ids.shape + table.shape[1:]).

    `table` is a variable or a `ShardedVariable` (a table split across parameter servers by
    `ParameterServerStrategy`'s partitioner). A sharded table is gathered per shard, so a step
    reads, and its `IndexedSlices` gradient updates, only the looked-up rows of each shard,
    never the whole table. A plain variable is one `tf.gather`, as before.
    """
    if not isinstance(table, tf.__internal__.distribute.ShardedVariable):
        return tf.gather(table, ids)
    return tf.nn.embedding_lookup(table, ids)


# A table of at most this many weights (8,192 rows of 8) is "small": `FeatureEncoder` may pack
# several into one variable, and tfrec's LazyAdam updates it by one masked pass over the whole
# table, which compiles into the XLA training step (a larger table's row-only update needs a
# de-duplication of the batch's rows, which XLA compiles to a sort).
SMALL_TABLE_MAX_SIZE = 1 << 16


@_register
class RowOffset(tf.keras.layers.Layer):
    """Shifts a column's embedding rows by `offset`: its place in a table packed with others.

    (batch, ...) int32 rows -> the same rows + offset. `FeatureEncoder` packs the small tables
    of one width into one `SparseEmbedding`, each table's rows after the previous one's, so a
    batch looks all of them up in one layer call and the optimizer updates one variable.
    """

    def __init__(self, offset, **kwargs):
        super().__init__(**kwargs)
        self.offset = int(offset)

    def call(self, rows):
        return rows + self.offset

    def get_config(self):
        config = super().get_config()
        config.update(offset=self.offset)
        return config


def _serialized_initializer(initializer):
    """`tf.keras.initializers.serialize(initializer)`, with an array in its config (a pretrained
    table's `Constant(matrix)`) as nested lists, which `Constant` takes alike. Keras writes an
    array into an .h5 file's JSON config as a '__numpy__' object that its own .h5 loading then
    cannot read ("Unknown object: '__numpy__'"), so DeepCTR's save_model(model, 'm.h5') +
    load_model failed for such a model. The arrays are left out of Keras' serialization (which
    walks a list entry by entry: 6x slower for a 100,000 x 16 table) and put in after it."""
    config = initializer.get_config() if hasattr(initializer, "get_config") else {}
    arrays = {key: value for key, value in config.items() if hasattr(value, "shape") and hasattr(value, "dtype")}
    if not arrays or not hasattr(initializer, "from_config"):
        return tf.keras.initializers.serialize(initializer)
    serialized = tf.keras.initializers.serialize(type(initializer).from_config({**config, **dict.fromkeys(arrays)}))
    serialized["config"].update((key, np.asarray(value).tolist()) for key, value in arrays.items())
    return serialized


@_register
class SparseEmbedding(tf.keras.layers.Layer):
    """An embedding table whose training step touches only the rows the batch looks up.

    Called on one index tensor, or on a list of them that share the table (a target item and its
    history); returns the embeddings of each, shape `indices.shape + (output_dim,)`. Lookups are
    `tf.gather`, so the table's gradient is an `IndexedSlices` over the looked-up rows.

    `l2_reg` is DIN's mini-batch aware regularisation (Zhou et al., KDD 2018, section 4.3): the
    L2 penalty of the whole table, l2_reg * sum_j ||w_j||^2, is spread over the examples that use
    each row, so a batch penalises only its own rows. In a training call the layer adds the loss

        l2_reg * (1 / K) * sum over the K looked-up ids k of ||w_k||^2 / f_k

    where f_k = n_k / n is id k's share of all n lookups of the table in training so far (this
    batch included; kept in the non-trainable weights `counts` and `lookups`). A row then appears
    in a batch with expected share f_k, so the expected loss is l2_reg * sum_j ||w_j||^2: the same
    scale as a Keras `embeddings_regularizer` of l2_reg (DeepCTR's `l2_reg_embedding`), but its
    cost and gradient grow with the batch, not the table, and a row absent from the batch is not
    touched. Per step, a rare id is penalised hard when it shows up and never otherwise.

    With `frequency_scaling=False` the loss is l2_reg * sum over the batch's distinct ids of
    ||w_j||^2 (the paper's penalty without the 1 / n_j). Inference adds no loss and counts nothing,
    and neither does a call with `regularize=False` (lookups a model only searches with, whose
    embeddings get no other gradient).
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", l2_reg=0.0,
                 frequency_scaling=True, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = tf.keras.initializers.get(embeddings_initializer)
        self.l2_reg = float(l2_reg)
        self.frequency_scaling = bool(frequency_scaling)

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.input_dim, self.output_dim),
                                          initializer=self.embeddings_initializer)
        # float32 so f_k is one division; exact up to 2**24 lookups of an id, a close ratio beyond.
        self.counts = self.add_weight(name="counts", shape=(self.input_dim,), initializer="zeros",
                                      trainable=False)
        self.lookups = self.add_weight(name="lookups", shape=(), initializer="zeros", trainable=False)
        super().build(input_shape)

    def call(self, inputs, training=None, regularize=True):
        indices = [tf.cast(x, tf.int32) for x in tf.nest.flatten(inputs)]
        embedded = [gather_rows(self.embeddings, x) for x in indices]
        if training and regularize and self.l2_reg > 0.0 and self.trainable:
            self.add_loss(self._batch_penalty(indices, embedded))
        return embedded if isinstance(inputs, (list, tuple)) else embedded[0]

    def finalize_state(self):
        """After a SavedModel load: the table's `trainable` as it was saved.

        Keras revives a saved model of a custom class (every tfrec model is a RecModel) from its
        config, which builds this table with its own flag, and then sets the saved
        `model.trainable` on the model, which Keras applies to every layer: a table frozen with
        SparseFeat(trainable=False) (a pretrained one) came back trainable from a SavedModel saved
        with traces (as `exporters` save), and fine-tuning the loaded model changed it. Keras calls
        this for each layer after that, with the layer's own saved metadata at hand; it is
        applied once, so a later `load_weights` keeps a flag the user has set since.
        """
        metadata = getattr(self, "_serialized_attributes", {}).get("metadata", {})
        if metadata.get("trainable") is not None and not getattr(self, "_saved_trainable_restored", False):
            self.trainable = bool(metadata["trainable"])
            self._saved_trainable_restored = True
        super().finalize_state()

    def _batch_penalty(self, indices, embedded):
        ids = tf.concat([tf.reshape(x, [-1]) for x in indices], axis=0)
        rows = tf.concat([tf.reshape(e, [-1, self.output_dim]) for e in embedded], axis=0)
        squared_norms = tf.reduce_sum(tf.square(rows), axis=1)
        if self.frequency_scaling:
            batch_lookups = tf.cast(tf.size(ids), tf.float32)
            self.counts.scatter_add(tf.IndexedSlices(tf.ones_like(ids, tf.float32), ids))
            self.lookups.assign_add(batch_lookups)
            inverse_share = self.lookups / gather_rows(self.counts, ids)
            return self.l2_reg * tf.math.divide_no_nan(
                tf.reduce_sum(squared_norms * inverse_share), batch_lookups)
        # Each distinct id once: sort, then keep the first of every run (XLA has no tf.unique).
        order = tf.argsort(ids)
        sorted_ids = tf.gather(ids, order)
        first = tf.not_equal(sorted_ids, tf.concat([[-1], sorted_ids[:-1]], axis=0))
        return self.l2_reg * tf.reduce_sum(tf.where(first, tf.gather(squared_norms, order), 0.0))

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      embeddings_initializer=_serialized_initializer(self.embeddings_initializer),
                      l2_reg=self.l2_reg, frequency_scaling=self.frequency_scaling)
        return config
