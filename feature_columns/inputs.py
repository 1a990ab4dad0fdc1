"""Keras Inputs and embeddings for a list of feature columns.

`build_input_features` gives one named Keras Input per feature. `FeatureEncoder` turns those
Inputs into embeddings inside a functional model: one SparseIndex + SparseEmbedding pair per
`embedding_name`, shared by every column that names it (a target item and its history), and one
lookup call per table, so the mini-batch aware penalty sees each table's distinct ids once.
"""
from collections import OrderedDict

from . import _legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from .feature_column import (NUM_RESERVED_INDICES, STRING_DTYPE, DenseFeat, SparseFeat,
                             VarLenSparseFeat, read_vocabulary_counts, read_vocabulary_file,
                             validate_columns)
from .layers import RecentSequence, SequencePooling, SparseEmbedding, SparseIndex


def build_input_features(feature_columns, prefix=""):
    """One Keras Input per feature, keyed by name (DeepCTR's helper, same name).

    SparseFeat -> (batch, 1); VarLenSparseFeat -> (batch, any width), plus (batch, 1) int32 for
    its `length_name` and (batch, any width) float32 for its `weight_name`; DenseFeat ->
    (batch, dimension).
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
        else:
            add(column.name, (column.dimension,), column.dtype)
    return features


class FeatureEncoder:
    """Builds the embedding part of a functional model from feature columns.

    Not a layer: it creates (and shares) the index and embedding layers and returns Keras tensors,
    so the resulting model is made only of serialisable Keras layers.

    Args:
      feature_columns: SparseFeat / VarLenSparseFeat / DenseFeat list (validated as a whole).
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
            if isinstance(column, DenseFeat) or column.embedding_name in self._tables:
                continue
            table = column.embedding_name
            self._indexers[table] = index_layer(column, name=prefix + "index_" + table)
            initializer = column.embeddings_initializer or tf.keras.initializers.RandomNormal(
                mean=0.0, stddev=0.0001, seed=seed)
            self._tables[table] = SparseEmbedding(
                column.vocabulary_size, column.embedding_dim, embeddings_initializer=initializer,
                l2_reg=l2_reg_embedding, trainable=column.trainable, name=prefix + "emb_" + table)
        self._prefix = prefix
        self._indices, self._weights, self._embedded = {}, {}, {}

    def column(self, name, kind=None):
        """The column called `name`, checked to be of `kind` when given."""
        if name not in self.columns:
            raise ValueError(f"no feature column named '{name}'; columns: {list(self.columns)}")
        column = self.columns[name]
        if kind is not None and not isinstance(column, kind):
            raise ValueError(f"feature '{name}' must be a {kind.__name__}, got {type(column).__name__}")
        return column

    def names(self, kind):
        return [name for name, column in self.columns.items() if isinstance(column, kind)]

    def indices(self, name):
        """Embedding indices: (batch, 1) for a SparseFeat, (batch, maxlen) for a sequence."""
        if name not in self._indices:
            column = self.column(name, (SparseFeat, VarLenSparseFeat))
            indices = self._indexers[column.embedding_name](self.features[name])
            if isinstance(column, VarLenSparseFeat):
                lengths = self.features[column.length_name] if column.length_name else None
                weights = self.features[column.weight_name] if column.weight_name else None
                indices, weights = RecentSequence(column.maxlen, name=self._prefix + "recent_" + name)(
                    indices, lengths=lengths, weights=weights)
                self._weights[name] = weights
            self._indices[name] = indices
        return self._indices[name]

    def mask(self, name):
        """(batch, maxlen) bool, true on real items of the sequence `name`."""
        return tf.not_equal(self.indices(name), 0)

    def embed(self, name):
        """(batch, 1, dim) for a SparseFeat, (batch, maxlen, dim) for a sequence."""
        if name not in self._embedded:
            table = self.column(name, (SparseFeat, VarLenSparseFeat)).embedding_name
            users = [n for n, c in self.columns.items()
                     if not isinstance(c, DenseFeat) and c.embedding_name == table]
            embedded = self._tables[table]([self.indices(n) for n in users])
            self._embedded.update(zip(users, embedded))
            _start_counts_from_vocabulary(self._tables[table], self.columns[users[0]])
        return self._embedded[name]

    def pooled(self, name):
        """(batch, 1, dim): a sequence pooled with its column's combiner and weights."""
        column = self.column(name, VarLenSparseFeat)
        embeddings = self.embed(name)
        return SequencePooling(column.combiner, column.weight_norm, name=self._prefix + "pool_" + name)(
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
