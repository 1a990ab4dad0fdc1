"""Keras Inputs and embeddings for a list of feature columns.

`build_input_features` gives one named Keras Input per feature. `FeatureEncoder` turns those
Inputs into embeddings inside a functional model: one SparseIndex + SparseEmbedding pair per
`embedding_name`, shared by every column that names it (a target item and its history), and the
lookups of a table batched into one call, so the mini-batch aware penalty sees each table's
distinct ids once. `FeatureEncoder.history` is the one place that reads DeepCTR's behaviour
sequences (`hist_<f>` beside candidate `f`) for every sequence model.
"""
from collections import OrderedDict, defaultdict

from . import _legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from .feature_column import (NUM_RESERVED_INDICES, STRING_DTYPE, DenseFeat, SparseFeat,
                             VarLenDenseFeat, VarLenSparseFeat, history_name, read_vocabulary_counts,
                             read_vocabulary_file, validate_columns)
from .layers import RecentSequence, SequencePooling, SparseEmbedding, SparseIndex, TakePositions


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


class History:
    """Candidate features and their behaviour sequences, as a sequence model reads them.

    Built by `FeatureEncoder.history` (or `History.recent` for a narrower view). For candidates
    ["item_id", "cate_id"] the sequences are "hist_item_id" and "hist_cate_id", truncated together,
    so position t of every sequence (and of every aligned sequence) is the same event.

    Attributes:
      candidates: candidate feature names; `names`: their sequences' names.
      indices: {sequence name: (batch, maxlen) int32} embedding rows, oldest -> newest, 0-padded.
      mask: (batch, maxlen) bool, true on real events; `lengths`: (batch,) int32 real events.
      aligned: {name: (batch, maxlen)} the aligned sequences (e.g. event times) at the same events.
      query: (batch, 1, E) the candidates' embeddings, concatenated (E = sum of their dims).
      keys: (batch, maxlen, E) the events' embeddings, concatenated the same way.
    """

    def __init__(self, encoder, candidates, indices, aligned, view):
        self.candidates = list(candidates)
        self.names = [history_name(c) for c in self.candidates]
        self.indices, self.aligned = indices, aligned
        self._encoder, self.view_name = encoder, view
        self.mask = tf.not_equal(indices[self.names[0]], 0)
        self.lengths = tf.reduce_sum(tf.cast(self.mask, tf.int32), axis=1)

    def _key(self, name):
        return name if self.view_name is None else f"{name}@{self.view_name}"

    @property
    def query(self):
        return concat([self._encoder.embed(name) for name in self.candidates])

    @property
    def keys(self):
        return concat([self._encoder.embed(self._key(name)) for name in self.names])

    def recent(self, k, where=None, view="recent"):
        """The most recent `k` events where `where` (batch, maxlen) bool holds, as a History.

        `where=None` keeps the last k events; SIM's hard search passes "same category as the
        candidate". Only the kept events are embedded (under lookup keys "<name>@<view>").
        """
        sequences = {n: self._sequences[n] for n in self.names + list(self.aligned)}
        return self._as_view(_truncate_together(
            sequences, k, self._encoder.layer_name(f"{view}_{self.names[0]}"), where=where), view)

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
                       {n: kept[n] for n in self.aligned}, view)


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
    """

    def __init__(self, feature_columns, l2_reg_embedding=0.0, seed=1024, features=None, prefix=""):
        self.columns = OrderedDict((column.name, column) for column in validate_columns(list(feature_columns)))
        self.features = features if features is not None else build_input_features(feature_columns, prefix)
        self._indexers, self._tables = {}, {}
        for column in self.columns.values():
            if isinstance(column, (DenseFeat, VarLenDenseFeat)) or column.embedding_name in self._tables:
                continue
            table = column.embedding_name
            self._indexers[table] = index_layer(column, name=prefix + "index_" + table)
            initializer = column.embeddings_initializer or tf.keras.initializers.RandomNormal(
                mean=0.0, stddev=0.0001, seed=seed)
            self._tables[table] = SparseEmbedding(
                column.vocabulary_size, column.embedding_dim, embeddings_initializer=initializer,
                l2_reg=l2_reg_embedding, trainable=column.trainable, name=prefix + "emb_" + table)
        self._prefix = prefix
        self._indices, self._weights, self._histories = {}, {}, {}
        # Lookups are registered (key -> table, indices) and embedded in one call per table
        # (and penalty setting) with every other lookup of it registered by then.
        self._lookups, self._pending, self._embedded = {}, defaultdict(list), {}
        self._embedded_only_by_views = set()

    def layer_name(self, name):
        return self._prefix + name

    def column(self, name, kind=None):
        """The column called `name`, checked to be of `kind` when given."""
        if name not in self.columns:
            raise ValueError(f"no feature column named '{name}'; columns: {list(self.columns)}")
        column = self.columns[name]
        if kind is not None and not isinstance(column, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            raise ValueError(f"feature '{name}' must be a {' or '.join(k.__name__ for k in kinds)}, "
                             f"got {type(column).__name__}")
        return column

    def names(self, kind):
        return [name for name, column in self.columns.items() if isinstance(column, kind)]

    def table(self, name):
        """The SparseEmbedding layer that embeds column `name`."""
        return self._tables[self.column(name, (SparseFeat, VarLenSparseFeat)).embedding_name]

    def _raw_indices(self, name):
        return self._indexers[self.columns[name].embedding_name](self.features[name])

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
                kept = _truncate_together(sequences, column.maxlen, self.layer_name("recent_" + name), lengths)
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
        candidates = list(candidates)
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
        kept = _truncate_together(sequences, first.maxlen, self.layer_name("recent_" + first.name), lengths)
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
            self._pending[(table, regularize)].append(key)

    def mask(self, name):
        """(batch, maxlen) bool, true on real items of the sequence `name`."""
        return tf.not_equal(self.indices(name), 0)

    def embed(self, key):
        """(batch, 1, dim) for a SparseFeat, (batch, maxlen, dim) for a sequence or lookup key.

        A column not registered yet is registered with every other unregistered column of its
        table, so plain columns sharing a table are looked up together.
        """
        if key not in self._embedded:
            if key not in self._lookups:
                if key in self._embedded_only_by_views:
                    raise ValueError(f"'{key}' is embedded only through History.recent views")
                table = self.column(key, (SparseFeat, VarLenSparseFeat)).embedding_name
                for name, column in self.columns.items():
                    if getattr(column, "embedding_name", None) == table and \
                            name not in self._embedded_only_by_views:
                        self.lookup(name, name, self.indices(name))
            table = self._lookups[key][0]
            group = next(g for g, keys in self._pending.items() if key in keys)
            keys, first_call = self._pending.pop(group), not any(
                self._lookups[k][0] == table for k in self._embedded)
            embedded = self._tables[table]([self._lookups[k][1] for k in keys], regularize=group[1])
            self._embedded.update(zip(keys, embedded))
            if first_call:
                _start_counts_from_vocabulary(self._tables[table], self._column_of_table(table))
        return self._embedded[key]

    def _column_of_table(self, table):
        return next(c for c in self.columns.values() if getattr(c, "embedding_name", None) == table)

    def pooled(self, name):
        """(batch, 1, dim): a sequence pooled with its column's combiner and weights."""
        column = self.column(name, VarLenSparseFeat)
        embeddings = self.embed(name)
        return SequencePooling(column.combiner, column.weight_norm, name=self.layer_name("pool_" + name))(
            embeddings, self.mask(name), weights=self._weights[name])

    def dense(self, name):
        """(batch, dimension) float32, after the column's transform_fn."""
        column = self.column(name, DenseFeat)
        value = tf.cast(self.features[name], tf.float32)
        return column.transform_fn(value) if column.transform_fn is not None else value

    def embedding_list(self, names=None):
        """Embeddings (batch, 1, dim) of SparseFeats and pooled VarLenSparseFeats."""
        names = self.names((SparseFeat, VarLenSparseFeat)) if names is None else names
        return [self.pooled(n) if isinstance(self.columns[n], VarLenSparseFeat) else self.embed(n)
                for n in names]

    def dnn_input(self, exclude=(), extra=()):
        """(batch, F): every feature flattened and concatenated, as DeepCTR's combined_dnn_input.

        `exclude` names features handled elsewhere (e.g. DIN's attended histories); `extra` adds
        (batch, 1, dim) tensors computed by the model.
        """
        sparse = [n for n in self.names((SparseFeat, VarLenSparseFeat)) if n not in exclude]
        embedded = self.embedding_list(sparse) + list(extra)
        parts = [tf.keras.layers.Flatten()(concat(embedded))] if embedded else []
        parts += [self.dense(n) for n in self.names(DenseFeat) if n not in exclude]
        if not parts:
            raise ValueError("no features left for the DNN input")
        return concat(parts)


def _truncate_together(sequences, maxlen, layer_name, lengths=None, where=None):
    """{name: (batch, width, ...)} -> {name: (batch, maxlen, ...)}, one `RecentSequence` call.

    The most recent `maxlen` items of the first sequence (of its first `lengths`, where `where`
    holds) are kept, and every other sequence is taken at the same positions, so they stay aligned.
    """
    names = list(sequences)
    others = [sequences[n] for n in names[1:]]
    recent = RecentSequence(maxlen, name=layer_name)
    if not others:
        return {names[0]: recent(sequences[names[0]], lengths=lengths, where=where)}
    kept, kept_others = recent(sequences[names[0]], lengths=lengths, where=where, aligned=others)
    return dict(zip(names, [kept] + kept_others))


def index_layer(column, name=None):
    """The SparseIndex that maps a column's raw values to rows of its embedding table."""
    return SparseIndex(column.vocabulary_size, vocabulary=_vocabulary_of(column), use_hash=column.use_hash,
                       string_input=column.dtype == STRING_DTYPE, name=name)


INDEXED_SUFFIX = ":rows"


def indexed_key(feature_name):
    """The key under which a pipeline hands a model a feature's rows already looked up."""
    return feature_name + INDEXED_SUFFIX


def look_up_rows(feature_columns, inputs):
    """Looks raw feature values up once, outside the model, exactly as the model would.

    `inputs` is a dict {feature name: array} as `tfrec.data.df_to_inputs` gives it. Each
    SparseFeat / VarLenSparseFeat value is mapped to embedding rows by the same `SparseIndex`
    a model built on these columns holds (same vocabulary, same hashing), and returned under
    `indexed_key(name)` as int32; every other input is passed through. A tfrec model's
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
            out[indexed_key(name)] = tables[column.embedding_name](tf.constant(value)).numpy()
        else:
            out[name] = value
    return out


def concat(tensors):
    return tensors[0] if len(tensors) == 1 else tf.keras.layers.Concatenate(axis=-1)(tensors)


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
