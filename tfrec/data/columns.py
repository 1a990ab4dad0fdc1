"""A DataFrame -> feature columns with vocabularies: what `tfrec train --config` does with `columns: infer`.

    columns = infer_feature_columns(train_df, label_columns=["click"], exclude=["timestamp"], min_count=2)
    model = DIN(columns, ["item_id"])

Every vocabulary is built from the frame given (the training rows), so nothing of the test rows
leaks into the model; a value the vocabulary lacks is looked up as the out-of-vocabulary row.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

from collections import Counter

import numpy as np

from feature_columns import HISTORY_PREFIX, DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat
from feature_columns.feature_column import read_vocabulary_file

from .pipeline import history_cells, id_texts

__all__ = ["ColumnInferenceError", "infer_feature_columns", "build_vocabulary", "table_column", "grow_vocabularies",
           "unknown_shares"]

class ColumnInferenceError(ValueError):
    """Columns cannot be inferred as asked; `key` names the argument at fault (None: the frame).

    str(error) is "<key>: <problem>" (just the problem when key is None); `problem` alone is the
    problem, so a caller with its own names for the arguments (a config file) can re-label it.
    """

    def __init__(self, key, problem):
        super().__init__(problem if key is None else f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _is_sequence_cell(value):
    return isinstance(value, (list, np.ndarray))


def _sequence_options(sequences):
    """{name: {"maxlen": n} or {}} from a dict {name: {"maxlen": n} | n | None} or a list of names."""
    if sequences is None:
        return {}
    if isinstance(sequences, dict):
        out = {}
        for name, options in sequences.items():
            if options is None:
                options = {}
            elif not isinstance(options, dict):
                options = {"maxlen": options}
            out[name] = dict(options)
        return out
    return {name: {} for name in sequences}


def build_vocabulary(counts, min_count=1):
    """The values of `counts` ({value: count}) seen at least `min_count` times, most frequent
    first (ties by their text), without the padding values "" and 0."""
    return [value for value, count in sorted(counts.items(), key=lambda vc: (-vc[1], str(vc[0])))
            if count >= min_count and value not in ("", 0)]


INT64_ID_END = 2 ** 63  # ids from here on (uint64) do not fit an int64 table: such a table is text


def _integers_from(values, low):
    """Whether numpy array `values` holds only integers in [low, 2^63)."""
    return values.dtype.kind in "iu" and (values.size == 0 or (values.min() >= low and int(values.max()) < INT64_ID_END))


def integer_ids(values):
    """Whether a numpy array holds plain integer ids in [1, 2^63), which an int64 table takes as they are."""
    return _integers_from(values, 1)


def integer_sequence_ids(cells):
    """Whether sequence cells (lists or 1-D arrays) hold only plain integer ids in [1, 2^63), or 0
    as padding: a history of ints (Parquet, a DataFrame), not of text (a CSV cell "5|9" is text)."""
    def integers(cell):
        if isinstance(cell, np.ndarray):  # Parquet's lists: one dtype per cell
            return _integers_from(cell, 0)
        return isinstance(cell, list) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and 0 <= v < INT64_ID_END
            for v in cell)

    return all(integers(cell) for cell in cells)


def table_column(table, values, integer, embedding_dim, min_count=1):
    """SparseFeat `table` whose vocabulary holds the `values` (a flat list of every id its columns
    hold) seen at least `min_count` times, most frequent first.

    `integer`: the ids are ints >= 1 and stay `dtype="int64"`; else the table is `dtype="string"`
    and each id is counted as its text (`id_text`; 5 and "5" are one id), NaN not at all.

    Raises:
      ColumnInferenceError: no value occurs `min_count` times (key "min_count").
    """
    counts = Counter(values if integer else id_texts(values))
    kept = build_vocabulary(counts, min_count)
    if not kept:
        raise ColumnInferenceError("min_count", f"no value of column '{table}' occurs {min_count} times in the "
                                                "training rows; exclude the column if it is unique to each row (a "
                                                "row or session id), else lower min_count")
    if integer:
        return SparseFeat(table, None, embedding_dim, dtype="int64", vocabulary=[int(v) for v in kept])
    return SparseFeat(table, None, embedding_dim, dtype="string", vocabulary=kept)


def infer_feature_columns(df, label_columns=(), exclude=(), dense=None, sequences=None, min_count=1,
                          embedding_dim=8):
    """Feature columns, with vocabularies, for the columns of a DataFrame.

    Every column of `df` that is not a label nor excluded becomes a feature:

    * a sequence (`sequences`, plus every column whose first 20 cells hold lists or 1-D numpy
      arrays, oldest to newest) -> `VarLenSparseFeat`, `maxlen` from `sequences` or else the
      longest cell of `df` (at least 1). A sequence `hist_<f>` shares the table (and vocabulary)
      of column `<f>` when `<f>` is a categorical column (`embedding_name="<f>"`, DeepCTR's
      naming), so DIN can attend over it with `history_feature_list=["<f>"]`;
    * a dense column (`dense`; by default every float column) -> `DenseFeat(name, 1)`;
    * a sequence listed under `dense` (event times `hist_timestamp`) -> `VarLenDenseFeat`,
      int64 when its items are integers, else float32; its column `<f>` (the request's
      `timestamp`), when dense and integer, -> `DenseFeat(dtype="int64")`, so times stay exact;
    * any other column is categorical -> `SparseFeat(name, None, embedding_dim, dtype=...,
      vocabulary=[...])`.

    A table's vocabulary holds the values seen at least `min_count` times over all its columns
    (the target and its history counted together), most frequent first (ties by their text),
    without the padding values "" and 0. Row 0 of the table is padding and row 1 the
    out-of-vocabulary row: an unknown or rare value, in training or at serving, is looked up
    there. A table whose columns all hold integer ids >= 1 (an int column; a sequence whose cells
    are lists or arrays of ints, 0 as padding allowed) stays `dtype="int64"` (requests send
    numbers); any other table is `dtype="string"` (its integer values as their decimal text:
    `df_to_inputs` turns an int column into that text, and a request sends e.g. `"5"`), as is a
    table whose history holds text (`tfrec.config` reads a CSV history of plain whole numbers as
    ints, other CSV histories as text). NaN cells of a string table are not counted.

    Args:
      df: the training rows; sequence cells are lists or 1-D arrays.
      label_columns: column names that are labels (a list, or the values of {task: column}).
      exclude: columns that are neither features nor labels (row ids, truths, timestamps).
      dense: columns fed as numbers; None: every float column that is not a sequence.
      sequences: {name: {"maxlen": n}} or {name: n} or a list of names: sequence columns besides
        the ones found by their cells.
      min_count: values seen fewer times go to the out-of-vocabulary row (>= 1).
      embedding_dim: every table's dimension.

    Returns:
      A list: SparseFeat / VarLenSparseFeat by table in column order (a table's target first,
      then its sequences), then the DenseFeats.

    Raises:
      ColumnInferenceError (a ValueError): a `dense` or `exclude` column that `df` lacks (key
        "dense" / "exclude"), a table with no value seen `min_count` times (key "min_count"),
        or no feature column at all (key None).
    """
    label_columns = set(label_columns.values() if isinstance(label_columns, dict) else
                        [label_columns] if isinstance(label_columns, str) else label_columns)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    dense = [dense] if isinstance(dense, str) else dense
    for key, names in (("dense", dense or []), ("exclude", exclude)):
        for name in names:
            if name not in df.columns:
                raise ColumnInferenceError(key, f"'{name}' is not a column of the data; its columns are "
                                                f"{list(df.columns)}")
    features = [c for c in df.columns if c not in label_columns and c not in exclude]
    sequences = _sequence_options(sequences)
    sequences.update((c, {}) for c in features if c not in sequences and
                     any(_is_sequence_cell(v) for v in df[c].head(20)))
    dense = list(dense) if dense is not None else \
        [c for c in features if c not in sequences and df[c].dtype.kind == "f"]
    sparse = [c for c in features if c not in sequences and c not in dense]
    tables = {}  # table name -> its columns, the target first
    for name in sparse:
        tables.setdefault(name, []).append(name)
    for name in sequences:
        if name in dense:
            continue
        owner = name[len(HISTORY_PREFIX):]
        owner = owner if name.startswith(HISTORY_PREFIX) and owner in sparse else name
        tables.setdefault(owner, []).append(name)
    columns = []
    for table, names in tables.items():
        # Integer only if every column of the table is a plain int column of ids >= 1 (decided
        # before counting, so a table never mixes 5 and "5").
        cells = {name: history_cells(df[name]) if name in sequences else df[name].to_numpy() for name in names}
        integer = all(integer_sequence_ids(cells[name]) if name in sequences else integer_ids(cells[name])
                      for name in names)
        values = []
        for name in names:
            # pandas' values (Timestamps, pd.NA), not numpy's (a datetime64[ns] as an int)
            values += [v for cell in cells[name] for v in cell] if name in sequences else df[name].tolist()
        base = table_column(table, values, integer, embedding_dim, min_count)
        for name in names:
            if name in sequences:
                longest = max((len(cell) for cell in cells[name]), default=1)
                maxlen = sequences[name].get("maxlen", max(longest, 1))
                columns.append(VarLenSparseFeat(base._replace(name=name), maxlen=maxlen))
            else:
                columns.append(base)
    columns += [_dense_column(df, name, sequences, dense) for name in dense]
    if not columns:
        raise ColumnInferenceError(None, "the data has no feature columns besides the labels")
    return columns


def _sparse(column):
    return column.sparsefeat if isinstance(column, VarLenSparseFeat) else column


def _has_vocabulary(column):
    feat = _sparse(column)
    return isinstance(feat, SparseFeat) and (feat.vocabulary is not None or feat.vocabulary_path is not None)


def _vocabulary(feat):
    """A SparseFeat's vocabulary (its list or its file's values), ints for an integer table."""
    values = feat.vocabulary if feat.vocabulary is not None else read_vocabulary_file(feat.vocabulary_path)
    return [int(v) for v in values] if feat.dtype != "string" else list(values)


def _ids_of(df, column):
    """The ids of `column` in `df` (every item of a sequence) as its table counts them: ints for
    an integer table (other values are refused, naming the feature, when inputs are built), else
    each id's text; NaN and padding ("" / 0) left out."""
    values = ([v for cell in history_cells(df[column.name]) for v in cell] if isinstance(column, VarLenSparseFeat)
              else df[column.name].tolist())
    if column.dtype != "string":
        ids = [int(v) for v in values if isinstance(v, (int, np.integer)) and not isinstance(v, bool)]
    else:
        ids = id_texts(values)
    return [v for v in ids if v not in ("", 0)]


def grow_vocabularies(columns, df, min_count=1):
    """`columns` whose vocabularies also hold the values of `df` they lack, seen there at least
    `min_count` times: appended after the old entries, most frequent first, so every old value
    keeps its row (a warm-started model trained on newer data; `tfrec.saving.with_grown_tables`
    gives the model the rows).

    The columns of one table (`embedding_name`: a target and its history) grow together. A
    table read from a vocabulary file grows too: its grown columns hold the file's values and the
    new ones as their `vocabulary` (the file is not written). A hashed table and a table of plain
    integer ids without a vocabulary stay as they are.

    Returns:
      (columns, {table: its grown vocabulary}) for the tables that gained values.
    """
    tables = {}
    for column in columns:
        if _has_vocabulary(column):
            tables.setdefault(column.embedding_name, []).append(column)
    grown, added = {}, {}
    for table, members in tables.items():
        old = _vocabulary(_sparse(members[0]))
        counts = Counter(v for column in members if column.name in df.columns for v in _ids_of(df, column))
        known = set(old)
        new = [value for value in build_vocabulary(counts, min_count) if value not in known]
        if new:
            grown[table] = tuple(old) + tuple(new)
            added[table] = len(new)
    if not grown:
        return list(columns), {}

    def regrown(feat):
        if feat.embedding_name not in grown:
            return feat
        # A table given more rows than its vocabulary needs keeps its spare rows.
        return SparseFeat(feat.name, feat.vocabulary_size + added[feat.embedding_name], feat.embedding_dim,
                          use_hash=feat.use_hash, dtype=feat.dtype,
                          embeddings_initializer=feat.embeddings_initializer, embedding_name=feat.embedding_name,
                          group_name=feat.group_name, trainable=feat.trainable,
                          vocabulary=grown[feat.embedding_name])

    out = []
    for column in columns:
        if isinstance(column, VarLenSparseFeat):
            out.append(column._replace(sparsefeat=regrown(column.sparsefeat)))
        else:
            out.append(regrown(column) if isinstance(column, SparseFeat) else column)
    return out, grown


def unknown_shares(columns, df):
    """{feature: share of its ids in `df` that its vocabulary lacks}: the ids looked up as the
    out-of-vocabulary row (new users and items since training, rare values below min_count), for
    the columns with a vocabulary that `df` holds and that have some; padding is not counted."""
    return shares_of(unknown_counts(columns, df))


def unknown_counts(columns, df):
    """{feature: (ids its vocabulary lacks, ids)} in `df`, for the columns with a vocabulary that
    `df` holds; sum them over the chunks of a file and take `shares_of` the sums."""
    counts = {}
    for column in columns:
        if _has_vocabulary(column) and column.name in df.columns:
            ids = _ids_of(df, column)
            known = set(_vocabulary(_sparse(column)))
            counts[column.name] = (sum(v not in known for v in ids), len(ids))
    return counts


def shares_of(counts):
    """{feature: unknown / total} of `unknown_counts`, for the features with unknown ids."""
    return {name: unknown / total for name, (unknown, total) in counts.items() if unknown}


def _integer_items(cells):
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for cell in cells for v in cell)


def _dense_column(df, name, sequences, dense):
    """DenseFeat, or VarLenDenseFeat for a sequence; integer times (a dense sequence `hist_<f>` of
    integers and its `<f>`) are int64: float32 cannot hold epoch seconds exactly."""
    if name in sequences:
        cells = history_cells(df[name])
        longest = max((len(cell) for cell in cells), default=1)
        return VarLenDenseFeat(name, sequences[name].get("maxlen", max(longest, 1)),
                               dtype="int64" if _integer_items(cells) else "float32")
    twin = HISTORY_PREFIX + name
    if twin in sequences and twin in dense and df[name].dtype.kind in "iu" and _integer_items(history_cells(df[twin])):
        return DenseFeat(name, 1, dtype="int64")
    return DenseFeat(name, 1)
