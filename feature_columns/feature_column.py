"""DeepCTR-style feature columns: what a feature is, checked when it is declared.

The signatures match DeepCTR 0.9.4 argument for argument, so a DeepCTR script runs after changing
its imports. Beyond DeepCTR, a SparseFeat may carry its `vocabulary` (or `vocabulary_path`) or
`use_hash=True`, and the raw value -> index mapping then lives inside the model graph.
"""
import difflib
import numbers
import os
import re
import warnings
from collections import namedtuple

DEFAULT_GROUP_NAME = "default_group"

INT_DTYPES = ("int32", "int64")
STRING_DTYPE = "string"
SPARSE_DTYPES = INT_DTYPES + (STRING_DTYPE,)
DENSE_DTYPES = ("float32", "float64", "int64")  # int64 for times (epoch seconds) and counts
HISTORY_PREFIX = "hist_"
COMBINERS = ("mean", "sum", "max")

# Index 0 is padding (0 or "") and index 1 the out-of-vocabulary bucket when a vocabulary is given.
NUM_RESERVED_INDICES = 2


def _fail(kind, name, problem):
    raise ValueError(f"{kind} '{name}': {problem}")


# A column's name is its model Input's and its SavedModel signature input's name, and names its
# table's variables. TensorFlow renames a function argument that is not a Python identifier
# (`user-id` -> `user_id`), after which the export cannot find the feature, and refuses spaces in
# scope names: such a name would fail at build, or only at export, after a whole training run.
_VALID_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def checked_name(kind, name, key="name", owner=None):
    """`name` if it is a non-empty ASCII identifier, else a ValueError suggesting one."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} {key} must be a non-empty string, got {name!r}")
    if not _VALID_NAME.match(name):
        suggestion = re.sub(r"[^A-Za-z0-9_]", "_", name)
        suggestion = suggestion if suggestion[0].isalpha() else "f_" + suggestion
        _fail(kind, owner or name, f"{key} {name!r} must start with a letter and hold only letters, digits and "
                                   f"'_' (e.g. {suggestion!r}): it becomes the name of the model's input and of "
                                   "the SavedModel's, where TensorFlow allows no other characters; rename the "
                                   "data's column to match")
    return name


def _count(kind, name, key, value, minimum=1, also=""):
    """`value` as a Python int >= `minimum`: any integral number (numpy's too), never a bool or float.

    DeepCTR scripts write `SparseFeat(feat, data[feat].max() + 1, 4)`, whose size is a numpy
    int (np.int8 for a small LabelEncoder column); that is accepted. `also` names other accepted
    values in the message (e.g. "or 'auto'").
    """
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
        type(value).__name__ != "bool_"
    if integral and int(value) >= minimum:
        return int(value)
    _fail(kind, name, f"{key} must be an int >= {minimum}{also}, got {value!r} ({type(value).__name__})")


def _vocabulary_lines(path, lines=None):
    """(value, count or None) per non-empty line of a vocabulary file (DeepCTR's `index,value`
    lines as their values, in the order of their index); `lines`: its `_file_lines`, if read."""
    lines = _file_lines(path) if lines is None else lines
    if lines and is_deepctr_vocabulary(lines):
        entries = sorted((int(text.partition(",")[0]), text.partition(",")[2]) for text, _ in lines)
        return [(value, None) for _, value in entries]
    with_counts = sum(count is not None for _, count in lines)
    if 0 < with_counts < len(lines):
        raise ValueError(f"vocabulary file {path!r}: {with_counts} of {len(lines)} lines have a count; "
                         "give a count on every line or on none")
    return lines


def _file_lines(path):
    """(text, count or None) per non-empty line of a vocabulary file, as written."""
    lines = []
    # utf-8-sig: a file saved with a byte-order mark (Excel, Notepad, pandas' to_csv(encoding=
    # "utf-8-sig")) would otherwise start its first value with it, an entry no input ever matches.
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            value, count = line, None
            if "\t" in line:
                value, _, text = line.rpartition("\t")
                try:
                    count = float(text)
                except ValueError:
                    count = float("nan")
                if not count >= 0:
                    raise ValueError(f"vocabulary file {path!r} line {number}: the count after the tab "
                                     f"must be a number >= 0, got {text!r}")
            lines.append((value, count))
    return lines


def is_deepctr_vocabulary(lines):
    """Whether vocabulary file lines [(text, count)] are DeepCTR's CSV: `index,value` on every line
    (`1,emerson`), no counts."""
    return all(count is None and re.fullmatch(r"\d+,.+", text) for text, count in lines)


def read_vocabulary_file(path):
    """The values of a vocabulary file: one per line, each optionally followed by a tab and a count."""
    return [value for value, _ in _vocabulary_lines(path)]


def read_vocabulary_counts(path):
    """The counts column of a vocabulary file, aligned with its values; None if it has none.

    A count is how often the value occurs in the training data; the mini-batch aware embedding
    penalty starts its frequency estimates from them (see `SparseEmbedding`).
    """
    counts = [count for _, count in _vocabulary_lines(path)]
    return None if not counts or counts[0] is None else counts


def _vocabulary_value(name, dtype, value):
    """A vocabulary entry as the column's lookup takes it: an int of an integer column (a whole
    number, or its plain decimal text as a vocabulary file holds it), a str of a string column.

    Anything else would be looked up as another value (1.5 as id 1) or fail inside TensorFlow
    when the model is built, without naming the column.
    """
    if dtype == STRING_DTYPE:
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            # As text: TensorFlow looks up b"a" as "a" (a duplicate of it), and a model whose
            # vocabulary holds bytes does not load from a .keras file.
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                _fail("SparseFeat", name, f"vocabulary entry {value!r} is not UTF-8 text, as the model's string "
                                          "inputs are; decode the values first")
        _fail("SparseFeat", name, f"vocabulary entry {value!r} ({type(value).__name__}) is not a string, as the "
                                  "entries of a dtype 'string' column must be (a missing value? leave it out, "
                                  "e.g. df[col].dropna().unique(); numbers: give their text)")
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    # True is a Real (numpy's bool_ is not): a flag in an id vocabulary is a mistake, not id 1
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    _fail("SparseFeat", name, f"vocabulary entry {value!r} is not an integer id, as the entries of a dtype "
                              f"{dtype!r} column must be (text ids need dtype='string')")


class SparseFeat(namedtuple("SparseFeat", [
        "name", "vocabulary_size", "embedding_dim", "use_hash", "vocabulary_path", "dtype",
        "embeddings_initializer", "embedding_name", "group_name", "trainable", "vocabulary"])):
    """A categorical feature: one id per example, embedded in a table named `embedding_name`.

    Ids are used as table indices directly (ints in [0, vocabulary_size), 0 = padding; an id
    outside that range is looked up as row 0, which is also the column's out-of-vocabulary row),
    unless
    `vocabulary` / `vocabulary_path` is given (raw values are looked up in-graph; unknown values go
    to an out-of-vocabulary bucket; the table then has len(vocabulary) + 2 rows; a vocabulary file
    has one value per line, optionally followed by a tab and how often the value occurs in the
    training data, which seeds the frequencies of the mini-batch aware L2; DeepCTR's CSV of
    `index,value` lines is read too, with the use_hash=True and vocabulary_size = entries + 1
    DeepCTR gives it) or `use_hash` is True (raw strings or ints hashed in-graph into
    vocabulary_size - 1 buckets, 0 kept for padding).
    """

    __slots__ = ()

    def __new__(cls, name, vocabulary_size=None, embedding_dim=4, use_hash=False,
                vocabulary_path=None, dtype="int32", embeddings_initializer=None,
                embedding_name=None, group_name=DEFAULT_GROUP_NAME, trainable=True,
                vocabulary=None):
        checked_name("SparseFeat", name)
        if dtype not in SPARSE_DTYPES:
            _fail("SparseFeat", name, f"dtype must be one of {SPARSE_DTYPES}, got {dtype!r}")
        if vocabulary is not None and vocabulary_path is not None:
            _fail("SparseFeat", name, "give either vocabulary or vocabulary_path, not both")
        deepctr_file = False
        auto_rows = None  # the rows embedding_dim="auto" is sized for, when not vocabulary_size
        if vocabulary_path is not None:
            if not os.path.isfile(vocabulary_path):
                _fail("SparseFeat", name, f"vocabulary_path {vocabulary_path!r} is not a file")
            lines = _file_lines(vocabulary_path)
            deepctr_file = is_deepctr_vocabulary(lines)
            vocabulary_entries = [value for value, _ in _vocabulary_lines(vocabulary_path, lines)]
        elif isinstance(vocabulary, (str, bytes)):
            _fail("SparseFeat", name, f"vocabulary must be a list of values, got the string {vocabulary!r} (a file "
                                      "of values is vocabulary_path=)")
        else:
            vocabulary_entries = None if vocabulary is None else list(vocabulary)
        if vocabulary_entries is not None:
            if use_hash and not deepctr_file:
                _fail("SparseFeat", name, "use_hash=True and a vocabulary exclude each other")
            # DeepCTR pairs its `index,value` file with use_hash=True: a table lookup, not a hash.
            use_hash = False
            if not vocabulary_entries:
                _fail("SparseFeat", name, "the vocabulary is empty")
            # Compared as the lookup will see them, so that "5" and "05" of an int file are duplicates.
            values = [_vocabulary_value(name, dtype, v) for v in vocabulary_entries]
            if len(set(values)) != len(values):
                _fail("SparseFeat", name, "the vocabulary has duplicate entries")
            padding = "" if dtype == STRING_DTYPE else 0
            if padding in values:
                _fail("SparseFeat", name, f"the vocabulary must not contain the padding value {padding!r}")
            if vocabulary_path is None:
                vocabulary_entries = values
            needed = len(vocabulary_entries) + NUM_RESERVED_INDICES
            if vocabulary_size is None or (isinstance(vocabulary_size, str) and vocabulary_size == "auto") \
                    or (deepctr_file and vocabulary_size == len(vocabulary_entries) + 1):
                # DeepCTR sizes its table entries + 1 (row 0 both padding and unknown); tfrec keeps
                # padding and out-of-vocabulary apart. embedding_dim="auto" counts DeepCTR's rows, so
                # the same vocabulary gets DeepCTR's width: 14 entries give 6 (15 rows), not 12 (16).
                vocabulary_size = needed
                auto_rows = len(vocabulary_entries) + 1
            elif _count("SparseFeat", name, "vocabulary_size", vocabulary_size) < needed:
                _fail("SparseFeat", name, f"vocabulary_size={vocabulary_size} is too small for "
                      f"{len(vocabulary_entries)} vocabulary entries + padding + OOV (need >= {needed})")
            if vocabulary is not None:
                vocabulary = tuple(vocabulary_entries)
        elif dtype == STRING_DTYPE and not use_hash:
            _fail("SparseFeat", name, "dtype 'string' needs vocabulary=[...], vocabulary_path or "
                  "use_hash=True to map raw strings to embedding indices")
        if vocabulary_size is None:
            _fail("SparseFeat", name, "vocabulary_size is needed (the number of rows of the embedding "
                  "table, e.g. data[feat].max() + 1), unless a vocabulary is given")
        vocabulary_size = _count("SparseFeat", name, "vocabulary_size", vocabulary_size,
                                 NUM_RESERVED_INDICES if use_hash else 1)
        if isinstance(embedding_dim, str) and embedding_dim == "auto":
            embedding_dim = 6 * int(pow(auto_rows or vocabulary_size, 0.25))  # DeepCTR's rule
        embedding_dim = _count("SparseFeat", name, "embedding_dim", embedding_dim, also=" or 'auto'")
        embedding_name = name if embedding_name is None else \
            checked_name("SparseFeat", embedding_name, "embedding_name", owner=name)
        return super().__new__(cls, name, vocabulary_size, embedding_dim, use_hash, vocabulary_path,
                               dtype, embeddings_initializer, embedding_name, group_name, trainable,
                               vocabulary)

    @property
    def padding_value(self):
        return "" if self.dtype == STRING_DTYPE else 0

    def table_spec(self):
        """What must agree between columns sharing this column's embedding table, by name (a
        vocabulary file by the file it names: "items.txt" and its absolute path are one)."""
        path = None if self.vocabulary_path is None else os.path.realpath(self.vocabulary_path)
        return {"vocabulary_size": self.vocabulary_size, "embedding_dim": self.embedding_dim,
                "use_hash": self.use_hash, "vocabulary_path": path, "vocabulary": self.vocabulary,
                "string ids": self.dtype == STRING_DTYPE, "trainable": bool(self.trainable)}

    def __hash__(self):
        return self.name.__hash__()


class VarLenSparseFeat(namedtuple("VarLenSparseFeat", [
        "sparsefeat", "maxlen", "combiner", "length_name", "weight_name", "weight_norm"])):
    """A sequence of ids (oldest to newest, right-padded) embedded in its SparseFeat's table.

    The model keeps the most recent `maxlen` ids of whatever length a request sends.
    `length_name` names an optional int input with each row's true length; `weight_name` an
    optional float sequence weighting the ids when pooled with `combiner`, as DeepCTR weights
    them: each embedding times the softmax of the row's weights (`weight_norm`) or the weight
    itself, then pooled by `combiner` as unweighted ones are.
    """

    __slots__ = ()

    def __new__(cls, sparsefeat, maxlen, combiner="mean", length_name=None, weight_name=None,
                weight_norm=True):
        if not isinstance(sparsefeat, SparseFeat):
            raise ValueError(f"VarLenSparseFeat needs a SparseFeat, got {type(sparsefeat).__name__}")
        maxlen = _count("VarLenSparseFeat", sparsefeat.name, "maxlen", maxlen)
        if combiner not in COMBINERS:
            _fail("VarLenSparseFeat", sparsefeat.name, f"combiner must be one of {COMBINERS}, got {combiner!r}")
        for key, other in (("length_name", length_name), ("weight_name", weight_name)):
            if other is not None:
                checked_name("VarLenSparseFeat", other, key, owner=sparsefeat.name)
            if other is not None and other == sparsefeat.name:
                _fail("VarLenSparseFeat", sparsefeat.name, "length_name/weight_name must differ from the feature name")
        return super().__new__(cls, sparsefeat, maxlen, combiner, length_name, weight_name, weight_norm)

    name = property(lambda self: self.sparsefeat.name)
    vocabulary_size = property(lambda self: self.sparsefeat.vocabulary_size)
    embedding_dim = property(lambda self: self.sparsefeat.embedding_dim)
    use_hash = property(lambda self: self.sparsefeat.use_hash)
    vocabulary_path = property(lambda self: self.sparsefeat.vocabulary_path)
    vocabulary = property(lambda self: self.sparsefeat.vocabulary)
    dtype = property(lambda self: self.sparsefeat.dtype)
    embeddings_initializer = property(lambda self: self.sparsefeat.embeddings_initializer)
    embedding_name = property(lambda self: self.sparsefeat.embedding_name)
    group_name = property(lambda self: self.sparsefeat.group_name)
    trainable = property(lambda self: self.sparsefeat.trainable)
    padding_value = property(lambda self: self.sparsefeat.padding_value)

    def table_spec(self):
        return self.sparsefeat.table_spec()

    def __hash__(self):
        return self.name.__hash__()


def history_name(feature_name):
    """The name of the behaviour sequence of candidate feature `feature_name` (DeepCTR's "hist_")."""
    return HISTORY_PREFIX + feature_name


class DenseFeat(namedtuple("DenseFeat", ["name", "dimension", "dtype", "transform_fn"])):
    """A real-valued feature of `dimension` numbers; `transform_fn` is applied in-graph.

    float32/float64 values, or int64 for values a float32 cannot hold exactly (epoch seconds);
    a model reads them as float32 unless it needs the exact value (SIM's request time).
    """

    __slots__ = ()

    def __new__(cls, name, dimension=1, dtype="float32", transform_fn=None):
        checked_name("DenseFeat", name)
        dimension = _count("DenseFeat", name, "dimension", dimension)
        if dtype not in DENSE_DTYPES:
            _fail("DenseFeat", name, f"dtype must be one of {DENSE_DTYPES}, got {dtype!r}")
        return super().__new__(cls, name, dimension, dtype, transform_fn)

    def __hash__(self):
        return self.name.__hash__()


class VarLenDenseFeat(namedtuple("VarLenDenseFeat", ["name", "maxlen", "dtype"])):
    """A number per event of a behaviour sequence (event times, dwell times), oldest to newest.

    Aligned with a VarLenSparseFeat history of the same `maxlen` (SIM reads `hist_timestamp`
    beside `hist_item_id`): right-padded with 0, and the model keeps the same positions of it as
    of the history, so a request may send any length.
    """

    __slots__ = ()

    def __new__(cls, name, maxlen, dtype="float32"):
        checked_name("VarLenDenseFeat", name)
        maxlen = _count("VarLenDenseFeat", name, "maxlen", maxlen)
        if dtype not in DENSE_DTYPES:
            _fail("VarLenDenseFeat", name, f"dtype must be one of {DENSE_DTYPES}, got {dtype!r}")
        return super().__new__(cls, name, maxlen, dtype)

    def __hash__(self):
        return self.name.__hash__()


def get_feature_names(feature_columns):
    """The input names a model built on `feature_columns` expects, in order (DeepCTR's helper)."""
    names = []
    for column in feature_columns:
        names.append(column.name)
        if isinstance(column, VarLenSparseFeat):
            names.extend(n for n in (column.length_name, column.weight_name) if n is not None)
    return list(dict.fromkeys(names))


def _short(value):
    """`value` for a message: a vocabulary by its size and first entries."""
    if isinstance(value, tuple) and len(value) > 3:
        return f"{len(value)} entries {list(value[:3])}..."
    return repr(value)


def _config_of(initializer):
    """(class name, config) of an embeddings initializer as Keras reads it (a name, a config dict
    or an object), or None when it has no config (a plain function)."""
    import tensorflow as tf  # only to compare initializers: Keras 2 is set by the package

    try:
        initializer = tf.keras.initializers.get(initializer)
    except (ValueError, TypeError):
        return None
    if not hasattr(initializer, "get_config"):
        return None
    return type(initializer).__name__, initializer.get_config()


def _same_config(ours, theirs):
    """Whether two configs hold equal values; an array (a pretrained table's Constant) is
    compared by its shape and values, a number by its value (Constant(1) is Constant(1.0))."""
    if isinstance(ours, dict) or isinstance(theirs, dict):
        return isinstance(ours, dict) and isinstance(theirs, dict) and ours.keys() == theirs.keys() and \
            all(_same_config(ours[key], theirs[key]) for key in ours)
    if any(hasattr(v, "shape") or isinstance(v, (list, tuple)) for v in (ours, theirs)):
        import numpy as np

        try:
            return bool(np.array_equal(np.asarray(ours), np.asarray(theirs)))
        except (TypeError, ValueError):
            return False
    return bool(ours == theirs)


def same_initializer(ours, theirs):
    """Whether two explicit embeddings initializers fill a table alike: the same object, or the
    same class with equal configs (each column of a DeepCTR script builds its own
    RandomNormal(stddev=0.01, seed=1), and those agree)."""
    if ours is theirs:
        return True
    configs = _config_of(ours), _config_of(theirs)
    return None not in configs and configs[0][0] == configs[1][0] and _same_config(configs[0][1], configs[1][1])


def initializer_text(initializer):
    """An embeddings initializer for a message: `RandomNormal(mean=0.0, stddev=0.01, seed=1)`,
    an array in it by its shape."""
    import numpy as np

    config = _config_of(initializer)
    if config is None:
        return repr(initializer)

    def value(v):
        shape = np.shape(v) if hasattr(v, "shape") or isinstance(v, (list, tuple)) else ()
        return f"<array of shape {tuple(shape)}>" if len(shape) else repr(v)

    return f"{config[0]}({', '.join(f'{key}={value(v)}' for key, v in config[1].items())})"


def table_initializer(columns):
    """The embeddings initializer of a table read by `columns` (checked by `validate_columns`):
    the one a column names, whichever column it is, or None (the default) if none does."""
    return next((c.embeddings_initializer for c in columns if c.embeddings_initializer is not None), None)


def _check_input_roles(feature_columns):
    """A ValueError when a sequence's `length_name` or `weight_name` is also the name of a feature,
    or one is the other: a model has one Input per name, so the ids or numbers of one would be read
    as the other's lengths or weights without a word (DeepCTR replaces the feature's Input and
    fails to build). Sequences may share a length_name (DIN's histories share `seq_length`), or
    a weight_name."""
    roles = {column.name: ("the name of feature", column.name) for column in feature_columns}
    for column in feature_columns:
        if not isinstance(column, VarLenSparseFeat):
            continue
        for key, name in (("length_name", column.length_name), ("weight_name", column.weight_name)):
            if name is None:
                continue
            role, owner = roles.setdefault(name, (f"the {key} of", column.name))
            if role != f"the {key} of":
                raise ValueError(f"VarLenSparseFeat '{column.name}': {key} '{name}' is also {role} '{owner}'; a "
                                 "model has one input per name, which would be read as both: give each its own "
                                 "name")


def validate_columns(feature_columns):
    """Checks a column list as a whole: unique names and consistent shared embedding tables.

    Columns sharing a table must agree on its size, dimension, vocabulary and `trainable` (the
    table is built once, from the first of them: a frozen item table declared after its trainable
    history would train), and those that name an `embeddings_initializer` on it (by class and
    config; a column leaving it None takes the one another column names, as a history beside its
    pretrained item table does). A column may name a
    table of its own (`embedding_name` used by no other column, as DeepCTR allows); a warning
    points at the likely intended table when that name is close to another's (a typo would
    otherwise train a separate table silently).
    """
    seen = {}
    for column in feature_columns:
        if not isinstance(column, (SparseFeat, VarLenSparseFeat, DenseFeat, VarLenDenseFeat)):
            raise ValueError(f"not a feature column: {column!r}")
        if column.name in seen:
            raise ValueError(f"feature '{column.name}' is declared twice")
        seen[column.name] = column
    _check_input_roles(feature_columns)
    tables = {}
    for column in feature_columns:
        if isinstance(column, (DenseFeat, VarLenDenseFeat)):
            continue
        tables.setdefault(column.embedding_name, []).append(column)
    for table_name, users in tables.items():
        owner = users[0]
        if len(users) == 1 and owner.embedding_name != owner.name:
            close = difflib.get_close_matches(table_name, [t for t in tables if t != table_name], n=1)
            if close:
                warnings.warn(f"feature '{owner.name}' uses embedding_name '{table_name}', which no other column "
                              f"uses, so it gets a table of its own; did you mean '{close[0]}'?", stacklevel=2)
        for other in users[1:]:
            ours, theirs = owner.table_spec(), other.table_spec()
            differ = [f"{key} ({_short(ours[key])} and {_short(theirs[key])})" for key in ours
                      if ours[key] != theirs[key]]
            if differ:
                raise ValueError(f"features '{owner.name}' and '{other.name}' share embedding '{table_name}' but "
                                 f"differ in {', '.join(differ)}; columns sharing a table must agree on them")
        named = [c for c in users if c.embeddings_initializer is not None]
        for other in named[1:]:
            ours, theirs = named[0].embeddings_initializer, other.embeddings_initializer
            if not same_initializer(ours, theirs):
                raise ValueError(f"features '{named[0].name}' and '{other.name}' share embedding '{table_name}' but "
                                 f"differ in embeddings_initializer ({initializer_text(ours)} and "
                                 f"{initializer_text(theirs)}); columns sharing a table must agree on them (or "
                                 "leave it None: such a column takes the table's)")
    return feature_columns
