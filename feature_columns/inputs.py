"""Keras Inputs and embeddings for a list of feature columns.

`build_input_features` gives one named Keras Input per feature. `FeatureEncoder` turns those
Inputs into embeddings inside a functional model: one SparseIndex + SparseEmbedding pair per
`embedding_name`, shared by every column that names it (a target item and its history), and the
lookups of a table batched into one call, so the mini-batch aware penalty sees each table's
distinct ids once. `FeatureEncoder.history` is the one place that reads DeepCTR's behaviour
sequences (`hist_<f>` beside candidate `f`) for every sequence model.
"""
import functools
from collections import OrderedDict, defaultdict

from . import _legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np
import tensorflow as tf

from .feature_column import (HISTORY_PREFIX, NUM_RESERVED_INDICES, STRING_DTYPE, DenseFeat, SparseFeat,
                             VarLenDenseFeat, VarLenSparseFeat, history_name, read_vocabulary_counts,
                             read_vocabulary_file, table_initializer, validate_columns)
from .layers import (SMALL_TABLE_MAX_SIZE, InInputShape, PaddingMask, RecentSequence, RowOffset, SequencePooling,
                     SparseEmbedding, SparseIndex, TakePositions, lookup_fingerprint)


def serving_dtype(dtype):
    """The dtype a serving signature declares for a model Input of `dtype`: int64 for every
    integer dtype that int64 holds (uint64 does not, and stays), otherwise `dtype` itself. A
    client's requests (numpy arrays built for the export) follow the same rule."""
    dtype = tf.as_dtype(dtype)
    if dtype.is_integer and dtype != tf.uint64:
        return tf.int64
    return dtype


def build_input_features(feature_columns, prefix=""):
    """One Keras Input per feature, keyed by name (DeepCTR's helper, same name).

    SparseFeat -> (batch, 1); VarLenSparseFeat -> (batch, any width), plus (batch, 1) int32 for
    its `length_name` and (batch, any width) float32 for its `weight_name`; DenseFeat ->
    (batch, dimension); VarLenDenseFeat -> (batch, any width), of the column's dtype.
    """
    validate_columns(feature_columns)
    features = OrderedDict()

    def add(name, shape, dtype):
        if name not in features:
            features[name] = tf.keras.Input(shape=shape, name=prefix + name, dtype=dtype)

    for column in feature_columns:
        if isinstance(column, SparseFeat):
            add(column.name, (1,), column.dtype)
        elif isinstance(column, VarLenSparseFeat):
            add(column.name, (None,), column.dtype)
            if column.length_name is not None:
                add(column.length_name, (1,), "int32")
            if column.weight_name is not None:
                add(column.weight_name, (None,), "float32")
        elif isinstance(column, VarLenDenseFeat):
            add(column.name, (None,), column.dtype)
        else:
            add(column.name, (column.dimension,), column.dtype)
    return features


# The name of the layer truncating a history (`FeatureEncoder.history`): "recent_hist_<f>".
HISTORY_TRUNCATION = "recent_"


def history_input_names(model):
    """The Inputs of a model built by `FeatureEncoder` that describe the user's history.

    They are the behaviour sequences, named `hist_<f>` (the sequences and those aligned with
    them, such as event times), and the `length_name` Inputs those are truncated with: every
    input that is one per user rather than one per candidate. An exporter declares them with
    one row to score many candidates against one history (see `History`).
    """
    names = [name for name, tensor in zip(model.input_names, model.inputs)
             if name.startswith(HISTORY_PREFIX) and tensor.shape.rank == 2]
    inputs = {id(tensor): name for name, tensor in zip(model.input_names, model.inputs)}
    for layer in model.layers:
        if isinstance(layer, RecentSequence) and HISTORY_TRUNCATION + HISTORY_PREFIX in layer.name:
            for node in layer.inbound_nodes:
                lengths = node.call_kwargs.get("lengths")
                if lengths is not None and id(lengths) in inputs and inputs[id(lengths)] not in names:
                    names.append(inputs[id(lengths)])
    return names


# Rows are compared for one repeated history only when the histories hold at least this many
# events in all (rows x width): below it the comparison costs more than it saves.
ONE_HISTORY_MIN_ELEMENTS = 20_000


def on_one_history(run, features, history_names, run_on_one_row=None):
    """`run(features)`, or, when every row of the `history_names` inputs repeats one history (what
    a DeepCTR-style client sends to score N candidates for one user), `run_on_one_row` (by default
    `run`) on that history's first row with the other features as they are.

    For a model whose layers broadcast a shared history (DIN, SIM) both give the same outputs,
    and the one-row run searches and attends over the history once instead of once per row. The
    rows are compared (one pass over the histories) only when there are more than one, every
    other feature has as many rows (fewer stays the model's error) and the histories hold at
    least ONE_HISTORY_MIN_ELEMENTS events. A `tf.cond` picks the run: traced, both are in the graph.
    """
    histories = [features[name] for name in history_names]

    def repeats_one_history():  # each row equal to the next: two aligned slices, no broadcast
        return tf.reduce_all([tf.reduce_all(tf.equal(values[1:], values[:-1])) for values in histories])

    rows = tf.shape(histories[0])[0]
    same_rows = [tf.equal(tf.shape(values)[0], rows) for name, values in features.items() if name not in history_names]
    worth_checking = tf.reduce_all([rows > 1, tf.size(histories[0]) >= ONE_HISTORY_MIN_ELEMENTS] + same_rows)
    one_history = tf.cond(worth_checking, repeats_one_history, lambda: tf.constant(False))

    def on_first_row():  # sliced inside the branch: only a request that takes it pays for the copy
        return (run_on_one_row or run)({**features, **{name: features[name][:1] for name in history_names}})

    return tf.cond(one_history, on_first_row, lambda: run(features))


class History:
    """Candidate features and their behaviour sequences, as a sequence model reads them.

    Built by `FeatureEncoder.history` (or `History.recent` for a narrower view). For candidates
    ["item_id", "cate_id"] the sequences are "hist_item_id" and "hist_cate_id", truncated together,
    so position t of every sequence (and of every aligned sequence) is the same event.

    The sequences have `users` rows: one per candidate row, as training feeds them, or a single
    row shared by every candidate of a request (one user's history sent once to score many
    candidates). Every layer that reads a History broadcasts that one row rather than copying it.

    Attributes:
      candidates: candidate feature names; `names`: their sequences' names.
      indices: {sequence name: (users, maxlen) int32} embedding rows, oldest -> newest, 0-padded.
      mask: (users, maxlen) bool, true on real events; `lengths`: (users,) int32 real events.
      aligned: {name: (users, maxlen)} the aligned sequences (e.g. event times) at the same events.
      query: (batch, 1, E) the candidates' embeddings, concatenated (E = sum of their dims).
      keys: (users, maxlen, E) the events' embeddings, concatenated the same way.
    """

    def __init__(self, encoder, candidates, indices, aligned, view, parent=None):
        self.candidates = list(candidates)
        self.names = [history_name(c) for c in self.candidates]
        self.indices, self.aligned = indices, aligned
        self._encoder, self.view_name, self._parent = encoder, view, parent
        first = self.names[0] if view is None else f"{view}_{self.names[0]}"
        self.mask, self.lengths = encoder.padding_mask(first, indices[self.names[0]])

    @property
    def input_names(self):
        """The Inputs this history reads: its sequences, the aligned ones, and their length input
        (the first sequence's `length_name`) if they have one."""
        length_name = self._encoder.columns[self.names[0]].length_name
        return self.names + list(self.aligned) + ([length_name] if length_name else [])

    def _key(self, name):
        return name if self.view_name is None else f"{name}@{self.view_name}"

    @functools.cached_property
    def query(self):
        if self._parent is not None:  # the candidates are the same in every view
            return self._parent.query
        return concat([self._encoder.embed(name) for name in self.candidates],
                      self._encoder.layer_name("query_" + "_".join(self.candidates)))

    @functools.cached_property
    def keys(self):
        view = "" if self.view_name is None else self.view_name + "_"
        return concat([self._encoder.embed(self._key(name)) for name in self.names],
                      self._encoder.layer_name(f"{view}keys_" + "_".join(self.names)))

    def recent(self, k, where=None, matching=None, view="recent"):
        """The most recent `k` events where a condition holds, as a History.

        `where` (rows, maxlen) bool restricts the events; `matching` = (sequence name, targets
        (rows, 1) indices) keeps the events whose value in that sequence equals the row's
        target (SIM's hard search: "same category as the candidate"), found without a
        (rows, maxlen) comparison when the history is shared (`RecentSequence`). Neither keeps
        the last k events. Only the kept events are embedded (under lookup keys "<name>@<view>").
        """
        sequences = {n: self._sequences[n] for n in self.names + list(self.aligned)}
        keys, targets = (None, None) if matching is None else (self._sequences[matching[0]], matching[1])
        return self._as_view(_truncate_together(
            sequences, k, self._encoder.layer_name(f"{view}_{self.names[0]}"), where=where, keys=keys,
            targets=targets), view)

    def take(self, positions, valid, view):
        """The events at `positions` (batch, k) where `valid`, as a History (a top-k search's result)."""
        names = self.names + list(self.aligned)
        taken = TakePositions(name=self._encoder.layer_name(f"{view}_take"))(
            [self._sequences[n] for n in names], positions, valid)
        return self._as_view(dict(zip(names, taken)), view)

    @property
    def _sequences(self):
        return {**self.indices, **self.aligned}

    def _as_view(self, kept, view):
        for name in self.names:
            self._encoder.lookup(f"{name}@{view}", name, kept[name])
        return History(self._encoder, self.candidates, {n: kept[n] for n in self.names},
                       {n: kept[n] for n in self.aligned}, view, parent=self._parent or self)


class FeatureEncoder:
    """Builds the embedding part of a functional model from feature columns.

    Not a layer: it creates (and shares) the index and embedding layers and returns Keras tensors,
    so the resulting model is made only of serialisable Keras layers.

    Args:
      feature_columns: SparseFeat / VarLenSparseFeat / DenseFeat / VarLenDenseFeat list
        (validated as a whole).
      l2_reg_embedding: DIN's mini-batch aware L2 penalty on the embedding rows a batch uses,
        scaled by the inverse of each id's frequency (see `SparseEmbedding`).
      seed: seed for the default embedding initializer.
      features: existing Inputs to reuse (e.g. shared by two towers); built if None.
      pack_small_tables: store the small tables of one width in one variable (`small_table_packs`),
        each table's rows shifted past the previous ones' (`RowOffset`): a batch looks them all up
        in one layer call and the optimizer updates one variable instead of one per table. The
        model computes the same function and the same mini-batch aware penalty.
    """

    def __init__(self, feature_columns, l2_reg_embedding=0.0, seed=1024, features=None, prefix="",
                 pack_small_tables=False):
        policy = tf.keras.mixed_precision.global_policy()
        if policy.compute_dtype != "float32":
            # Else fit fails deep in the graph: "x and y must have the same dtype, got tf.bfloat16 != tf.float32".
            raise ValueError(f"the embedding path computes in float32, but the global Keras policy is "
                             f"'{policy.name}': call tf.keras.mixed_precision.set_global_policy('float32') before "
                             f"building the model (mixed precision is not supported)")
        self.columns = OrderedDict((column.name, column) for column in validate_columns(list(feature_columns)))
        self.features = features if features is not None else build_input_features(feature_columns, prefix)
        # table name -> its SparseIndex, its SparseEmbedding (one per pack of small tables), and,
        # for a packed table after the first of its pack, the row its own rows start at.
        self._indexers, self._tables, self._offsets = {}, {}, {}

        def default_initializer():
            return tf.keras.initializers.RandomNormal(mean=0.0, stddev=0.0001, seed=seed)

        for column in self.columns.values():
            if isinstance(column, (DenseFeat, VarLenDenseFeat)) or column.embedding_name in self._indexers:
                continue
            table = column.embedding_name
            self._indexers[table] = index_layer(column, name=prefix + "index_" + table)
        packs = small_table_packs(self.columns.values()) if pack_small_tables else []
        for pack in packs:
            rows = [self._column_of_table(table).vocabulary_size for table in pack]
            embedding = SparseEmbedding(
                sum(rows), self._column_of_table(pack[0]).embedding_dim, embeddings_initializer=default_initializer(),
                l2_reg=l2_reg_embedding, name=prefix + "emb_packed_" + "_".join(pack))
            for table, offset in zip(pack, np.cumsum([0] + rows[:-1])):
                self._tables[table] = embedding
                if offset:
                    self._offsets[table] = int(offset)
        for table in self._indexers:
            if table not in self._tables:
                column = self._column_of_table(table)
                self._tables[table] = SparseEmbedding(
                    column.vocabulary_size, column.embedding_dim,
                    embeddings_initializer=table_initializer(self._columns_of_table(table)) or default_initializer(),
                    l2_reg=l2_reg_embedding, trainable=column.trainable, name=prefix + "emb_" + table)
        self._packed = {table for pack in packs for table in pack}
        self._prefix = prefix
        self._indices, self._weights, self._histories, self._masks, self._dense = {}, {}, {}, {}, {}
        # Lookups are registered (key -> table, indices) and embedded in one call per table
        # (and penalty setting) with every other lookup of it registered by then.
        self._lookups, self._pending, self._embedded = {}, defaultdict(list), {}
        self._embedded_only_by_views = set()

    def layer_name(self, name):
        return self._prefix + name

    def column(self, name, kind=None, argument=None):
        """The column called `name`, checked to be of `kind` when given; `argument` (e.g.
        "CLSR: user_feature") names where the name came from in the message."""
        where = "" if argument is None else f"{argument}={name!r}: "
        if name not in self.columns:
            raise ValueError(f"{where}no feature column named '{name}'; columns: {list(self.columns)}")
        column = self.columns[name]
        if kind is not None and not isinstance(column, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise ValueError(f"{where}feature '{name}' must be a {' or '.join(k.__name__ for k in kinds)}, "
                             f"got {type(column).__name__}")
        return column

    def names(self, kind):
        return [name for name, column in self.columns.items() if isinstance(column, kind)]

    def table(self, name):
        """The SparseEmbedding layer that embeds column `name`, alone (never a packed table)."""
        table = self.column(name, (SparseFeat, VarLenSparseFeat)).embedding_name
        if table in self._packed:
            raise ValueError(f"the table of '{name}' is packed with other small tables in "
                             f"'{self._tables[table].name}'; build the encoder with pack_small_tables=False "
                             "to read it alone")
        return self._tables[table]

    def _raw_indices(self, name):
        column = self.columns[name]
        return self._indexers[column.embedding_name](self.features[name],
                                                     sequence=isinstance(column, VarLenSparseFeat))

    def indices(self, name):
        """Embedding indices: (batch, 1) for a SparseFeat, (batch, maxlen) for a sequence."""
        if name not in self._indices:
            column = self.column(name, (SparseFeat, VarLenSparseFeat))
            indices = self._raw_indices(name)
            if isinstance(column, VarLenSparseFeat):
                lengths = self.features[column.length_name] if column.length_name else None
                sequences = {name: indices}
                if column.weight_name:
                    sequences[column.weight_name] = self.features[column.weight_name]
                kept = _truncate_together(sequences, column.maxlen, self.layer_name("recent_" + name), lengths,
                                          length_name=column.length_name)
                indices, self._weights[name] = kept[name], kept.get(column.weight_name)
            self._indices[name] = indices
        return self._indices[name]

    def history(self, candidates, model="model", aligned=(), embed_sequences=True):
        """The behaviour sequences of `candidates`, checked and truncated together: a `History`.

        For each candidate `f` (a SparseFeat) the columns must hold a VarLenSparseFeat `hist_f`
        sharing f's embedding table, all with one maxlen; `aligned` names VarLenDenseFeat columns
        of that maxlen (event times). Every sequence keeps the positions of the most recent
        `maxlen` events of the first one (its `length_name` applies), so they stay aligned.
        With `embed_sequences=False` the full sequences are never embedded: only views taken by
        `History.recent` are (SIM's hard search embeds topk events, not the whole history).
        """
        candidates = [candidates] if isinstance(candidates, str) else list(candidates)  # "item_id": one name
        if not candidates:
            raise ValueError(f"{model} needs at least one feature in history_feature_list")
        key = (tuple(candidates), tuple(aligned))
        if key in self._histories:
            return self._histories[key]
        names = [history_name(c) for c in candidates]
        for candidate, name in zip(candidates, names):
            target = self.column(candidate, SparseFeat)
            if name not in self.columns:
                raise ValueError(f"{model}: candidate '{candidate}' needs its behaviour sequence, a "
                                 f"VarLenSparseFeat '{name}'; columns: {list(self.columns)}")
            sequence = self.column(name, VarLenSparseFeat)
            if sequence.embedding_name != target.embedding_name:
                raise ValueError(f"{model}: '{name}' must share the embedding table of '{candidate}' "
                                 f"(embedding_name='{target.embedding_name}'), got '{sequence.embedding_name}'")
        for name in aligned:
            self.column(name, VarLenDenseFeat)
        maxlens = {self.columns[n].maxlen for n in names + list(aligned)}
        if len(maxlens) != 1:
            raise ValueError(f"{model}: sequences {names + list(aligned)} must share one maxlen, "
                             f"got {sorted(maxlens)}")
        first = self.columns[names[0]]
        sequences = {n: self._raw_indices(n) for n in names}
        sequences.update((n, self.features[n]) for n in aligned)
        lengths = self.features[first.length_name] if first.length_name else None
        kept = _truncate_together(sequences, first.maxlen, self.layer_name(HISTORY_TRUNCATION + first.name), lengths,
                                  length_name=first.length_name)
        for name in names:
            self._indices[name], self._weights[name] = kept[name], None
            if embed_sequences:
                self.lookup(name, name, kept[name])
            else:
                self._embedded_only_by_views.add(name)
        for candidate in candidates:
            self.lookup(candidate, candidate, self.indices(candidate))
        history = History(self, candidates, {n: kept[n] for n in names}, {n: kept[n] for n in aligned}, None)
        self._histories[key] = history
        return history

    def lookup(self, key, column_name, indices, regularize=True):
        """Registers `indices` to be embedded, under `key`, in the table of column `column_name`.

        `regularize=False` leaves the rows out of the table's penalty: for embeddings a model only
        searches with (SIM's GSU reads them through top_k or a stop-gradient).
        """
        if key not in self._lookups:
            table = self.column(column_name, (SparseFeat, VarLenSparseFeat)).embedding_name
            self._lookups[key] = (table, indices)
            self._pending[(self._tables[table].name, regularize)].append(key)

    def mask(self, name):
        """(batch, maxlen) bool, true on real items of the sequence `name`."""
        return self.padding_mask(name, self.indices(name))[0]

    def padding_mask(self, name, indices):
        """(mask, lengths) of the rows `indices` of sequence `name` (`PaddingMask`), from one
        layer named after it, made at the first call."""
        if name not in self._masks:
            self._masks[name] = indices, PaddingMask(name=self.layer_name(name + "_mask"))(indices)
        elif self._masks[name][0] is not indices:
            raise ValueError(f"sequence '{name}' was masked before with other rows")
        return self._masks[name][1]

    def embed(self, key):
        """(batch, 1, dim) for a SparseFeat, (batch, maxlen, dim) for a sequence or lookup key.

        A column not registered yet is registered with every other unregistered column of its
        table (of its pack of tables), so plain columns sharing a variable are looked up together.
        """
        if key not in self._embedded:
            if key not in self._lookups:
                if key in self._embedded_only_by_views:
                    raise ValueError(f"'{key}' is embedded only through History.recent views")
                stored = self._tables[self.column(key, (SparseFeat, VarLenSparseFeat)).embedding_name]
                for name, column in self.columns.items():
                    table = getattr(column, "embedding_name", None)
                    if table is not None and self._tables[table] is stored and name not in self._embedded_only_by_views:
                        self.lookup(name, name, self.indices(name))
            table = self._lookups[key][0]
            embedding = self._tables[table]
            group = next(g for g, keys in self._pending.items() if key in keys)
            keys, first_call = self._pending.pop(group), not any(
                self._lookups[k][0] == table for k in self._embedded)
            embedded = embedding([self._rows(k) for k in keys], regularize=group[1])
            self._embedded.update(zip(keys, embedded))
            if first_call:
                _start_counts_from_vocabulary(embedding, self._column_of_table(table))
        return self._embedded[key]

    def _rows(self, key):
        """The embedding rows of lookup `key`: its indices, after its table's offset in a pack."""
        table, indices = self._lookups[key]
        if table not in self._offsets:
            return indices
        return RowOffset(self._offsets[table], name=self.layer_name("packed_rows_" + key))(indices)

    def _column_of_table(self, table):
        return self._columns_of_table(table)[0]

    def _columns_of_table(self, table):
        return [c for c in self.columns.values() if getattr(c, "embedding_name", None) == table]

    def pooled(self, name):
        """(batch, 1, dim): a sequence pooled with its column's combiner and weights."""
        column = self.column(name, VarLenSparseFeat)
        embeddings = self.embed(name)
        return SequencePooling(column.combiner, column.weight_norm, name=self.layer_name("pool_" + name))(
            embeddings, self.mask(name), weights=self._weights[name])

    def dense(self, name):
        """(batch, dimension) float32, after the column's transform_fn."""
        column = self.column(name, DenseFeat)
        if name not in self._dense:
            self._dense[name] = InInputShape(column.dimension, name=self.layer_name("as_input_" + name))(
                self.features[name])
        value = self._dense[name]
        value = value if value.dtype == tf.float32 else tf.cast(value, tf.float32)
        return column.transform_fn(value) if column.transform_fn is not None else value

    def embedding_list(self, names=None):
        """Embeddings (batch, 1, dim) of SparseFeats and pooled VarLenSparseFeats."""
        names = self.names((SparseFeat, VarLenSparseFeat)) if names is None else names
        return [self.pooled(n) if isinstance(self.columns[n], VarLenSparseFeat) else self.embed(n)
                for n in names]

    def dnn_input(self, exclude=(), extra=(), name="dnn_input"):
        """(batch, F): every feature flattened and concatenated, as DeepCTR's combined_dnn_input.

        `exclude` names features handled elsewhere (e.g. DIN's attended histories); `extra` adds
        (batch, 1, dim) tensors computed by the model. `name` names its layers (a model that
        asks for two DNN inputs gives each its own).
        """
        sparse = [n for n in self.names((SparseFeat, VarLenSparseFeat)) if n not in exclude]
        embedded = self.embedding_list(sparse) + list(extra)
        parts = [tf.keras.layers.Flatten(name=self.layer_name(name + "_embeddings"))(
            concat(embedded, self.layer_name(name + "_embedding_list")))] if embedded else []
        parts += [self.dense(n) for n in self.names(DenseFeat) if n not in exclude]
        if not parts:
            raise ValueError("no features left for the DNN input")
        return concat(parts, self.layer_name(name))


def _truncate_together(sequences, maxlen, layer_name, lengths=None, where=None, keys=None, targets=None,
                       length_name=None):
    """{name: (batch, width, ...)} -> {name: (batch, maxlen, ...)}, one `RecentSequence` call.

    The most recent `maxlen` items of the first sequence (of its first `lengths`, the input
    `length_name`, where `where` holds, whose `keys` equal the row's `targets`) are kept, and
    every other sequence is taken at the same positions, so they stay aligned.
    """
    names = list(sequences)
    others = [sequences[n] for n in names[1:]]
    recent = RecentSequence(maxlen, names=names if others else None, length_name=length_name, name=layer_name)
    condition = dict(lengths=lengths, where=where, keys=keys, targets=targets)
    if not others:
        return {names[0]: recent(sequences[names[0]], **condition)}
    kept, kept_others = recent(sequences[names[0]], aligned=others, **condition)
    return dict(zip(names, [kept] + kept_others))


def small_table_packs(columns):
    """Lists of table names whose tables `FeatureEncoder(pack_small_tables=True)` stores in one
    variable: of one embedding width, at most SMALL_TABLE_MAX_SIZE weights in all, with at least
    two tables each, in column order.

    A table packs when only SparseFeats read it (a behaviour sequence's table is searched and
    grown whole), it is trainable with the default initializer, and its size is fixed: plain
    ids or hashing, not a vocabulary (which `tfrec.saving.with_grown_tables` grows).
    """
    readers = OrderedDict()
    for column in columns:
        if isinstance(column, (SparseFeat, VarLenSparseFeat)):
            readers.setdefault(column.embedding_name, []).append(column)
    by_width = defaultdict(list)
    for table, table_columns in readers.items():
        first = table_columns[0]
        if all(isinstance(c, SparseFeat) and c.trainable and c.embeddings_initializer is None and c.vocabulary is None
               and c.vocabulary_path is None for c in table_columns) and \
                first.vocabulary_size * first.embedding_dim <= SMALL_TABLE_MAX_SIZE:
            by_width[first.embedding_dim].append((table, first.vocabulary_size))
    packs = []
    for width, tables in by_width.items():
        pack, rows = [], 0
        for table, size in tables:
            if (rows + size) * width > SMALL_TABLE_MAX_SIZE:
                packs.append(pack)
                pack, rows = [], 0
            pack.append(table)
            rows += size
        packs.append(pack)
    return [pack for pack in packs if len(pack) > 1]


def index_layer(column, name=None):
    """The SparseIndex that maps a column's raw values to rows of its embedding table."""
    return SparseIndex(column.vocabulary_size, vocabulary=_vocabulary_of(column), use_hash=column.use_hash,
                       string_input=column.dtype == STRING_DTYPE, name=name)


def is_padding(column, raw):
    """numpy bool: where `index_layer(column)` maps the raw items `raw` of a sequence to row 0, its
    padding ("" or 0; "0" too in a hashed string sequence; for plain ids, any id outside
    [1, vocabulary_size)), by the same rule without building its lookup table: a pipeline's
    check of long histories. `raw` holds the column's dtype (ints, or str for "string")."""
    raw = np.asarray(raw)
    if column.dtype != STRING_DTYPE and not column.use_hash and column.vocabulary is None \
            and column.vocabulary_path is None:
        return ~((raw > 0) & (raw < column.vocabulary_size))
    padding = raw == ("" if column.dtype == STRING_DTYPE else 0)
    if column.use_hash and column.dtype == STRING_DTYPE:
        padding |= raw == "0"
    return padding


INDEXED_SUFFIX = ":rows"


def indexed_key(feature_name, lookup):
    """The key under which a pipeline hands a model a feature's rows already looked up:
    "<name>:rows:<fingerprint>" of the lookup (a SparseIndex, or the column that makes it), so
    a model refuses rows that its own tables would not have given (another vocabulary)."""
    fingerprint = lookup.fingerprint if isinstance(lookup, SparseIndex) else lookup_fingerprint(
        lookup.vocabulary_size, _vocabulary_of(lookup), lookup.use_hash, lookup.dtype == STRING_DTYPE)
    return f"{feature_name}{INDEXED_SUFFIX}:{fingerprint}"


def indexed_feature(key):
    """The feature name of an `indexed_key`, or None for another key."""
    name, suffix, _ = key.rpartition(INDEXED_SUFFIX + ":")
    return name if suffix else None


def look_up_rows(feature_columns, inputs):
    """Looks raw feature values up once, outside the model, exactly as the model would.

    `inputs` is a dict {feature name: array} as `tfrec.data.df_to_inputs` gives it. Each
    SparseFeat / VarLenSparseFeat value is mapped to embedding rows by the same `SparseIndex`
    a model built on these columns holds (same vocabulary, same hashing), and returned under
    `indexed_key(name, column)` as int32; every other input is passed through. A tfrec model's
    `train_step` feeds such rows straight to its compiled part, so a training pipeline that looks
    up once per data set does not hash or search strings again at every step and epoch.
    """
    columns = {c.name: c for c in validate_columns(list(feature_columns))}
    tables, out = {}, {}
    for name, value in inputs.items():
        column = columns.get(name)
        if isinstance(column, (SparseFeat, VarLenSparseFeat)):
            if column.embedding_name not in tables:
                tables[column.embedding_name] = index_layer(column)
            out[indexed_key(name, tables[column.embedding_name])] = tables[column.embedding_name](
                tf.constant(value), sequence=isinstance(column, VarLenSparseFeat)).numpy()
        else:
            out[name] = value
    return out


def concat(tensors, name):
    """`tensors` joined on their last axis by a Concatenate layer named `name` (one tensor: itself)."""
    return tensors[0] if len(tensors) == 1 else tf.keras.layers.Concatenate(axis=-1, name=name)(tensors)


def _start_counts_from_vocabulary(table, column):
    """Seeds a table's lookup counts with its vocabulary file's counts, when the file has them."""
    counts = read_vocabulary_counts(column.vocabulary_path) if column.vocabulary_path else None
    if counts is None:
        return
    seeded = [0.0] * NUM_RESERVED_INDICES + counts  # padding and OOV rows start unseen
    seeded += [0.0] * (table.input_dim - len(seeded))
    table.counts.assign(seeded)
    table.lookups.assign(sum(counts))


def _vocabulary_of(column):
    if column.vocabulary is not None:
        return column.vocabulary
    if column.vocabulary_path is not None:
        return read_vocabulary_file(column.vocabulary_path)
    return None


# --- Checking what a caller feeds a model -------------------------------------------------------
#
# Keras reports a batch whose features disagree on the number of rows as "ConcatOp : Dimension 0
# in both shapes must be equal", a None in a float feature as "a string tensor holds a NoneType
# value", and casts an int64 id to an int32 Input by wrapping it around. `check_inputs` runs
# where numpy / pandas inputs enter a model (RecModel's fit, evaluate and predict) and says which
# feature is wrong and what it needs instead.

_INT_RANGES = {"int32": (-2 ** 31, 2 ** 31 - 1), "int64": (-2 ** 63, 2 ** 63 - 1)}


def _as_numpy(value):
    """pandas Series / DataFrame and lists -> numpy; tensors, datasets and arrays as given."""
    if hasattr(value, "to_numpy") and not isinstance(value, np.ndarray):
        return value.to_numpy()
    if isinstance(value, (list, tuple)):
        try:
            return np.asarray(value)
        except ValueError:  # ragged rows: one list per row, as pandas keeps a sequence column
            rows = np.empty(len(value), dtype=object)
            for index, row in enumerate(value):
                rows[index] = row
            return rows
    return value


def _rows(value):
    shape = getattr(value, "shape", None)
    if shape is not None and len(shape) > 0 and shape[0] is not None:
        return int(shape[0])
    return len(value) if isinstance(value, (list, tuple)) else None


def _first_row(bad):
    """The first row of a (rows, ...) bool array that holds a True."""
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))[0])


def _cell(values, row):
    """Row `row` of an array as Python values (one value for a 1-D array)."""
    return values[row].tolist() if values.ndim > 1 else values[row]


def _missing(values):
    """Bool array: None or NaN cells of an object array (numpy compares element by element)."""
    return np.asarray((values == None) | (values != values), dtype=bool)  # noqa: E711


def _numbers_of(name, values, what, hint):
    """An object array of numbers as float64, or a ValueError naming the feature and row."""
    missing = _missing(values)
    if missing.any():
        row = _first_row(missing)
        raise ValueError(f"feature '{name}' needs {what}, but row {row} holds {_cell(values, row)!r}; {hint}")
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        for row, cells in enumerate(values.reshape(len(values), -1)):
            for cell in cells:
                try:
                    float(cell)
                except (TypeError, ValueError):
                    raise ValueError(f"feature '{name}' needs {what}, but row {row} holds {cell!r}; "
                                     f"{hint}") from None
        raise


def _check_feature(name, value, dtype):
    """`value` (numpy) fits an Input of `dtype`, or a ValueError naming feature `name`."""
    if not isinstance(value, np.ndarray) or value.ndim == 0 or not value.size:
        return value
    if value.dtype == object and isinstance(value.reshape(-1)[0], (list, tuple, np.ndarray)):
        # Keras would say only "Failed to convert a NumPy array to a Tensor (Unsupported object type list)".
        raise ValueError(f"feature '{name}' holds a list per row (a sequence column as pandas keeps it); pass "
                         f"a (rows, maxlen) array with each row's events first, then padding (0, or \"\" for "
                         f"strings): tfrec.data.df_to_inputs(df, feature_columns) pads each sequence so, as does "
                         f"tf.keras.utils.pad_sequences(..., padding='post', truncating='pre')")
    hint = f"fill missing values first (e.g. df['{name}'].fillna(...)) or drop those rows"
    if dtype == "string":
        if value.dtype.kind in "biuf":  # TensorFlow: "Cast int64 to string is not supported", no name
            raise ValueError(f"feature '{name}' is read as text (a string column: its vocabulary or hash takes "
                             f"strings), but holds {value.dtype} values (e.g. {value.reshape(-1)[:3].tolist()}); "
                             f"pass the ids as the text the model was trained on, e.g. df['{name}'].astype(str)")
        if value.dtype == object:
            missing = _missing(value)
            if missing.any():
                row = _first_row(missing)
                raise ValueError(f"feature '{name}' needs strings, but row {row} holds "
                                 f"{_cell(value, row)!r}; {hint} "
                                 "(\"\" is padding)")
        return value
    if value.dtype.kind in "SU":
        fix = (f"parse them first (e.g. pd.to_numeric(df['{name}']))" if dtype.startswith("float") else
               "a column of raw string ids needs dtype='string' and a vocabulary or use_hash=True")
        raise ValueError(f"feature '{name}' needs {dtype} values, but holds strings "
                         f"(e.g. {value.reshape(-1)[:3].tolist()}); {fix}")
    if dtype.startswith("float"):
        numbers = _numbers_of(name, value, f"{dtype} numbers", hint) if value.dtype == object else value
        if numbers.dtype.kind == "f":
            check_finite(name, numbers, f"{dtype} numbers")
        return numbers.astype(dtype) if value.dtype == object else value
    if dtype in _INT_RANGES:
        if value.dtype == object:
            value = _numbers_of(name, value, "integer ids", hint)
        if value.dtype.kind == "f":
            fractional = ~np.isfinite(value) | (value != np.round(value))
            if fractional.any():
                row = _first_row(fractional)
                raise ValueError(f"feature '{name}' needs integer ids, but row {row} holds "
                                 f"{value[row].tolist()!r}; {hint}")
        check_id_range(name, value, dtype)
        return value.astype(dtype) if value.dtype == np.float64 else value
    return value


def check_finite(name, value, what):
    """A ValueError naming feature `name` and the first row of the float array `value` that holds
    NaN or an infinity (np.log of 0): either makes every score and loss NaN."""
    bad = ~np.isfinite(value)
    if bad.any():
        row = _first_row(bad)
        cell = float(value.reshape(len(value), -1)[row][bad.reshape(len(value), -1)[row]][0])
        if np.isnan(cell):
            shown, fix = "NaN", f"fill missing values first (e.g. df['{name}'].fillna(...)) or drop those rows"
        else:
            shown = repr(cell)
            fix = "replace or clip infinite values first (np.log of 0 gives -inf), or drop those rows"
        raise ValueError(f"feature '{name}' needs {what}, but row {row} holds {shown}; {fix}")


def check_id_range(name, value, dtype, where="row {}".format):
    """A ValueError naming feature `name` and the row of the first id of the numeric array `value`
    (or object array of Python ints) outside the range of the integer `dtype` ("int32"/"int64"),
    which a cast would wrap around to another id (4294967301 to 5 in int32). `where(row)` names the
    row."""
    low, high = _INT_RANGES[dtype]
    if value.size and value.dtype.kind in "iufO" and (value.min() < low or value.max() > high):
        row = _first_row((value < low) | (value > high))
        raise ValueError(f"feature '{name}' holds {np.asarray(value[row]).tolist()!r} ({where(row)}), outside the "
                         f"{dtype} range [{low}, {high}] of its input, where it would wrap around to "
                         "another id; declare the column dtype='int64', or map the ids to "
                         "[0, vocabulary_size) or give the column a vocabulary")


def check_inputs(inputs, input_dtypes, labels=None, what="the model"):
    """Checks and normalises a dict of features fed to a model; other inputs are returned as given.

    Args:
      inputs: {feature name: numpy array, pandas Series, list or tensor}; anything that is not
        a dict (a tf.data.Dataset, a generator) is returned unchanged.
      input_dtypes: {input name: dtype name} of the model's Inputs ("int32", "float32", "string").
      labels: optional labels (an array, a list of arrays or {task: array}) whose rows must match.
      what: how messages name the receiver.

    Returns:
      (inputs, labels) with pandas objects and lists turned into numpy arrays (object arrays of
      numbers in float inputs into floats).

    Raises:
      ValueError: naming the feature(s) and what they need, when features disagree on the number
        of rows, labels and features do, a float feature holds None, NaN or strings, an
        integer feature holds missing or fractional values, or an id does not fit its Input's
        integer dtype (it would otherwise wrap around to a different id).
    """
    from collections.abc import Mapping

    if not isinstance(inputs, Mapping):
        return inputs, labels
    inputs = {name: _as_numpy(value) for name, value in inputs.items()}
    rows = {name: _rows(value) for name, value in inputs.items()}
    counts = {n for n in rows.values() if n is not None}
    if len(counts) > 1:
        by_count = ", ".join(f"{name} {count}" for name, count in rows.items() if count is not None)
        hint = ""
        if any(count == 1 and name.startswith(HISTORY_PREFIX) for name, count in rows.items()):
            hint = (" (to score many candidates against one history sent once, call the model itself, "
                    "model(features), or an export's shared_history signature)")
        raise ValueError(f"the inputs of {what} disagree on the number of rows ({by_count}); every "
                         f"feature needs one row per example{hint}")
    for name, value in inputs.items():
        if name in input_dtypes:
            inputs[name] = _check_feature(name, value, input_dtypes[name])
    if labels is not None and counts:
        (n,) = counts
        if isinstance(labels, Mapping):
            labels = {task: _as_numpy(value) for task, value in labels.items()}
            label_rows = {task: _rows(value) for task, value in labels.items()}
        elif isinstance(labels, (list, tuple)) and labels and all(hasattr(v, "shape") or isinstance(v, (list, tuple))
                                                                  for v in labels):
            labels = [_as_numpy(value) for value in labels]
            label_rows = {f"output {i}": _rows(value) for i, value in enumerate(labels)}
        else:
            labels = _as_numpy(labels)
            label_rows = {"labels": _rows(labels)}
        wrong = {task: count for task, count in label_rows.items() if count is not None and count != n}
        if wrong:
            listed = ", ".join(f"{task} {count}" for task, count in wrong.items())
            raise ValueError(f"the labels of {what} have a different number of rows ({listed}) than its "
                             f"features ({n}); give one label per example")
    return inputs, labels
