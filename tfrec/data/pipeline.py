"""pandas DataFrame -> model inputs (a dict of numpy arrays) -> tf.data pipeline.

The arrays are keyed by feature name, as the Keras Inputs built from the same feature columns
are, so `model.fit(df_to_inputs(df, columns), labels)` and `model.fit(df_to_dataset(...))`
both work. Values stay raw (ints or strings): vocabulary lookup and hashing happen in the graph.
"""
import datetime
import itertools
import re

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd
import tensorflow as tf

from feature_columns import (HISTORY_PREFIX, DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat, is_padding,
                             look_up_rows)
from feature_columns.inputs import check_finite, check_id_range

__all__ = ["df_to_inputs", "df_to_dataset", "without_autotuning"]

_STRING = "string"
_INT64 = "int64"
# Batches made ahead of the training step: a step takes longer than gathering its batch, so two
# keep it fed (without tf.data's autotuning, which sized this buffer before; see without_autotuning).
PREFETCH_BATCHES = 2


def _column(df, name, owner):
    """df[name], or a KeyError saying which feature / label (`owner`) needed the column."""
    if name not in df.columns:
        raise KeyError(
            f"{owner} needs column '{name}', which the DataFrame lacks; its columns are {list(df.columns)}"
        )
    return df[name]


def id_text(value):
    """The text a string table reads for `value`: an int as its decimal text, and a whole-number
    float too (pandas reads an int column with gaps as floats: 5.0 is "5", as a request sends it);
    a bool as "True"/"False", a date and time as pandas writes a Timestamp ("2024-01-01 00:00:00");
    any other value as it is."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (datetime.datetime, np.datetime64)) and not pd.isna(value):
        return str(pd.Timestamp(value))
    return value


def is_missing(value):
    """Whether an id or a sequence cell is a missing value: None, NaN, pd.NA or NaT."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def id_texts(values):
    """The `id_text` of each of `values` that is not missing, as str: the ids a string table counts."""
    return [str(id_text(v)) for v in values if not is_missing(v)]


def _ids(values, dtype, feature_name, where="row {}".format):
    """Casts ids to the column's dtype: int32/int64 arrays, or object arrays of str for strings.

    A string column takes ints and whole-number floats as their `id_text`. A refused value is named
    by `where(its position in values)`.
    """
    values = np.asarray(values)
    if dtype == _STRING:
        if values.dtype.kind == "S":
            return np.char.decode(values, "utf-8").astype(object)
        if values.dtype.kind == "f" and np.all(values == np.round(values)):  # NaN fails this
            values = values.astype(np.int64)
        if values.dtype.kind in "iubU" or values.size == 0:
            return values.astype(str).astype(object)
        if values.dtype.kind == "M":  # as Timestamps: numpy's own text of a date differs ("T")
            values = np.array(list(pd.DatetimeIndex(values)), dtype=object)
        cells = values.tolist()
        if values.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in cells):
            return values
        texts = [id_text(v) for v in cells]
        if all(isinstance(v, (str, bytes)) for v in texts):
            return np.array(texts, dtype=object)
        row = next(row for row, v in enumerate(texts) if not isinstance(v, (str, bytes)))
        raise ValueError(
            f"feature '{feature_name}' has dtype 'string' and needs str values, but {where(row)} holds "
            f"{cells[row]!r}; missing values must be filled first (\"\" is padding)"
        )
    return _integers(values, dtype, feature_name, "integer ids", where)


def _integers(values, dtype, feature_name, what="integers", where="row {}".format):
    """`values` as an int array of `dtype`; integral floats are accepted, anything else raises
    (naming the value's place by `where`, as `_ids` does)."""
    values = np.asarray(values)
    whole_objects = values.dtype == object and all(map(_is_whole_number, values.tolist()))
    if whole_objects:
        # Whole numbers of mixed types, e.g. prepare()'s padding 0 among the floats of a column with
        # gaps; as Python ints, compared exactly with the dtype's range.
        values = np.array([int(v) for v in values.tolist()], dtype=object)
    # Integral floats too, e.g. an int column that pandas widened to float somewhere.
    if whole_objects or values.dtype.kind in "iub" or values.size == 0 or (
            values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values))):
        check_id_range(feature_name, values, dtype, where)  # the cast would wrap it around to another id
        return values.astype(dtype)
    cells = values.tolist()
    row = next(row for row, v in enumerate(cells) if not _is_whole_number(v))
    value = cells[row]
    if value is None or (isinstance(value, float) and value != value):
        hint = "missing values must be filled first"
    elif isinstance(value, str):
        zeros = next((r for r, v in enumerate(cells) if isinstance(v, str) and re.match(r"\s*[+-]?0\d", v)), None)
        hint = ("the column is text: a CSV column of whole numbers is read as text when one is written with leading "
                f"zeros ({cells[zeros]!r} in {where(zeros)}), which this integer table does not take"
                if zeros is not None else "text is not an integer id")
    else:
        hint = "ids are whole numbers"
    raise ValueError(f"feature '{feature_name}' has dtype {dtype!r} and needs {what}, but {where(row)} holds "
                     f"{value!r}; {hint}")


def _is_whole_number(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) or (
        isinstance(value, (float, np.floating)) and np.isfinite(value) and value == round(value))


def _numbers(values, dtype, feature_name, where="row {}".format):
    """Numbers of a dense feature as `dtype`: int64 (integral values only), float32 or float64; a
    value that is not a number is named by `where`, as `_ids` names a refused id."""
    if dtype == _INT64:
        return _integers(values, dtype, feature_name, where=where)
    values = np.asarray(values)
    try:
        return values.astype(dtype)
    except (TypeError, ValueError):
        cells = values.tolist()
        row = next(row for row, value in enumerate(cells) if not _is_float(value))
        raise ValueError(f"feature '{feature_name}' has dtype {dtype!r} and needs numbers, but {where(row)} holds "
                         f"{cells[row]!r}") from None


def _is_float(value):
    """Whether numpy's cast to a float dtype takes `value` (a number, or a number's text)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def history_cells(cells):
    """Sequence cells with each missing one (`is_missing`: a Parquet null list, a left join's user
    without events) as an empty history."""
    return [[] if is_missing(cell) else cell for cell in cells]


def _sequence_lengths(cells, name):
    """len() of every cell; a cell must be a list, tuple or 1-D array (None or NaN counts as empty)."""
    lengths = np.empty(len(cells), dtype=np.int64)
    for row, cell in enumerate(cells):
        if is_missing(cell):
            lengths[row] = 0
        elif isinstance(cell, (list, tuple)) or (isinstance(cell, np.ndarray) and cell.ndim == 1):
            lengths[row] = len(cell)
        else:
            shape = f" of shape {cell.shape}" if isinstance(cell, np.ndarray) else ""
            raise ValueError(
                f"column '{name}' must hold a list/1-D array per row (oldest to newest), "
                f"row {row} holds {type(cell).__name__}{shape}: {cell!r}"
            )
    return lengths


def _joined(parts):
    """The items of `parts` (numpy arrays or lists, in order) as one numpy array."""
    if parts and all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return np.array(list(itertools.chain.from_iterable(parts)))


def _cast_cells(cast, parts, rows, index):
    """`cast(items, where)` of the items of `parts`, cells or parts of cells of the DataFrame rows
    `rows` (`index` their labels), joined. A ValueError names a refused item by its row, not by its
    position among all the rows' items: a failed cast is repeated cell by cell to find the row."""
    try:
        return cast(_joined(parts), "item {}".format)
    except ValueError:
        for row, part in zip(rows, parts):
            # Objects: numpy makes text of every item of a list that mixes ints and text.
            items = part if isinstance(part, np.ndarray) else np.array(part, dtype=object)
            cast(items, lambda _: _row_named(index, row))
        raise


def _row_named(index, row):
    """How a message names row number `row` of a DataFrame whose row labels are `index`."""
    label = index[row]
    label = label.item() if isinstance(label, np.generic) else label  # 5, not numpy's np.int64(5)
    return f"row {row} (index {label!r})"


def _picked_events(column, recent, cells, lengths, index, given_lengths=None):
    """{row: positions in its cell} for the rows of sequence `column` whose kept events are not
    simply their last `maxlen` cells (`recent`, their ids as `_pad_recent` cut them).

    A model keeps a row's most recent `maxlen` events: the positions whose id its lookup does not
    map to padding (`feature_columns.is_padding`: "" or 0, an out-of-range plain id, "0" in a
    hashed string history), within the row's given length (`given_lengths`, the column's
    `length_name` in the DataFrame). A row longer than maxlen whose last maxlen cells hold
    padding (a CSV history with placeholders, `"i3|i7|||||"`, or an array post-padded as
    DeepCTR's `pad_sequences` pads) would lose its real events to a plain cut, and train on other
    histories than its export serves. Only those rows' cells are read whole, so rows of 1000s of
    events still cost O(maxlen) each. `index`: the rows' labels, for messages.
    """
    maxlen = column.maxlen
    rows = np.flatnonzero(lengths > maxlen)
    in_tail = ~is_padding(column, recent[rows])
    if given_lengths is not None:
        in_tail &= lengths[rows, None] - maxlen + np.arange(maxlen) < given_lengths[rows, None]
    cut_into = rows[~in_tail.all(axis=1)]
    if not len(cut_into):
        return {}
    ids = _cast_cells(lambda items, where: _ids(items, column.dtype, column.name, where),
                      [cells[row] for row in cut_into], cut_into, index)
    events = ~is_padding(column, ids)
    picked = {}
    for row, event in zip(cut_into.tolist(), np.split(events, np.cumsum(lengths[cut_into])[:-1])):
        if given_lengths is not None:
            event &= np.arange(len(event)) < given_lengths[row]
        picked[row] = np.flatnonzero(event)[-maxlen:]
    return picked


def _pad_recent(cells, lengths, maxlen, pad_value, cast, picked, index):
    """(n, maxlen): each row's kept items, cast by `cast` (as `_cast_cells` casts, `index` the rows'
    labels), left-aligned, padded with `pad_value`.

    A row keeps its last min(len, maxlen) items, or for a row in `picked` (`_picked_events`) the
    items at its positions. Only kept items are cut out and cast, so rows of 1000s of events cost
    O(maxlen) each.
    """
    kept = np.minimum(lengths, maxlen)
    counts = kept.tolist()
    rows = [row for row, count in enumerate(counts) if count]
    flat = _cast_cells(cast, [cells[row][len(cells[row]) - counts[row]:] for row in rows], rows, index)
    out = np.full((len(lengths), maxlen), pad_value, dtype=flat.dtype)
    out[np.arange(maxlen)[None, :] < kept[:, None]] = flat  # the kept items in row-major order
    return _put_picked(out, cells, picked, pad_value, cast, index)


def _put_picked(out, cells, picked, pad_value, cast, index):
    """`out` (n, maxlen) with each row in `picked` replaced by its cells at the picked positions,
    cast as `_pad_recent` casts, left-aligned, padded with `pad_value`."""
    if not picked:
        return out
    rows = list(picked)
    counts = np.array([len(picked[row]) for row in rows])
    chosen = np.full((len(rows), out.shape[1]), pad_value, dtype=out.dtype)
    chosen[np.arange(out.shape[1])[None, :] < counts[:, None]] = _cast_cells(
        cast, [np.asarray(cells[row])[picked[row]] for row in rows], rows, index)
    out[rows] = chosen
    return out


def _sequence_inputs(df, column, lengths, picked=None):
    """(inputs, picked): the padded ids (n, maxlen), plus its length and weight arrays where the
    column names them, and the rows whose events were picked (`_picked_events`): given, as a
    sequence's group leader picked them, or, with `picked` None, picked here."""
    cells = _column(df, column.name, f"feature '{column.name}'").to_numpy()
    padding = "" if column.dtype == _STRING else 0
    cast = lambda items, where: _ids(items, column.dtype, column.name, where)  # noqa: E731
    padded = _pad_recent(cells, lengths, column.maxlen, padding, cast, picked, df.index)
    if picked is None:
        given = df[column.length_name].to_numpy().astype(np.int64) if column.length_name in df.columns else None
        picked = _picked_events(column, padded, cells, lengths, df.index, given)
        padded = _put_picked(padded, cells, picked, padding, cast, df.index)
    inputs = {column.name: padded}
    if column.length_name is not None:
        if column.length_name in df.columns:
            given = df[column.length_name].to_numpy().astype(np.int32)
        else:
            given = np.minimum(lengths, column.maxlen).astype(np.int32)
        for row, positions in picked.items():  # a picked row's kept cells are all events
            given[row] = len(positions)
        inputs[column.length_name] = given
    if column.weight_name is not None:
        weight_cells = _column(df, column.weight_name, f"feature '{column.name}'").to_numpy()
        weight_lengths = _sequence_lengths(weight_cells, column.weight_name)
        mismatch = np.flatnonzero(weight_lengths != lengths)
        if len(mismatch):
            raise ValueError(
                f"weights '{column.weight_name}' of feature '{column.name}' must have one weight per "
                f"item; row {mismatch[0]} has {weight_lengths[mismatch[0]]} weights for "
                f"{lengths[mismatch[0]]} items"
            )
        weights = _pad_recent(weight_cells, lengths, column.maxlen, 0.0,
                              lambda items, where: _numbers(items, "float32", column.weight_name, where), picked,
                              df.index)
        check_finite(column.weight_name, weights, "numbers")
        inputs[column.weight_name] = weights
    return inputs, picked


def _dense_input(df, column):
    """(n,) or (n, dimension): int64 for dtype "int64", else float32 (also for "float64"). A value
    that is not a number, or a cell of another size than the dimension, is named by its row."""
    dtype, kind = (_INT64, "int64") if column.dtype == _INT64 else ("float32", "float")
    values = _column(df, column.name, f"feature '{column.name}'").to_numpy()
    if values.dtype.kind in "mM":
        # A float32 count of nanoseconds since 1970 is off by minutes: refused, not cast.
        raise ValueError(f"feature '{column.name}' holds {values.dtype} values; give numbers, e.g. seconds since 1970: "
                         f"df['{column.name}'].astype('datetime64[s]').astype('int64') (durations: .dt.total_seconds())")
    if column.dimension == 1 and not (values.dtype == object and any(np.ndim(cell) for cell in values)):
        array = _numbers(values, dtype, column.name)
    else:
        rows = []
        for row, cell in enumerate(values):
            numbers = _numbers(np.ravel(cell), dtype, column.name, where=lambda _, row=row: f"row {row}")
            if numbers.size != column.dimension:
                raise ValueError(f"feature '{column.name}' needs {column.dimension} {kind}(s) per row, but row "
                                 f"{row} holds {numbers.size}")
            rows.append(numbers)
        array = np.stack(rows) if rows else np.zeros((0, column.dimension), dtype)
        if column.dimension == 1:
            array = array[:, 0]
    if array.dtype.kind == "f" and len(array):
        check_finite(column.name, array, "numbers")
    return array


def _dense_sequence_input(df, column, lengths, picked):
    """(n, maxlen) of the column's dtype: the numbers of the kept events, right-padded with 0."""
    cells = _column(df, column.name, f"feature '{column.name}'").to_numpy()
    numbers = _pad_recent(cells, lengths, column.maxlen, 0,
                          lambda items, where: _numbers(items, column.dtype, column.name, where), picked, df.index)
    if numbers.dtype.kind == "f":  # padding is 0, so NaN (a None among floats too) is a missing value
        check_finite(column.name, numbers, "numbers")
    return numbers


def df_to_inputs(df, feature_columns):
    """Model inputs for `feature_columns` from a DataFrame, keyed by feature name.

    SparseFeat -> (n,) of its dtype (int32/int64, or an object array of str for "string").
    VarLenSparseFeat -> (n, maxlen): each cell is a list/array ordered oldest to newest; the
    most recent `maxlen` events are kept, left-aligned, right-padded with 0 (or ""), as the model
    keeps them: padding in a longer cell ("" or 0, at the end or between events) is not an event,
    and the behaviour sequences of one maxlen keep the events of the first of them. Its
    `length_name` -> (n,) int32 true lengths capped at maxlen (taken from the DataFrame if it
    has that column, and then also bounding which cells are events); its `weight_name` column (a list of floats per row) -> (n, maxlen)
    float32 aligned with the kept items. DenseFeat -> (n,) float32 if dimension is 1, else
    (n, dimension); cells may hold lists or arrays; dtype "int64" gives int64 (epoch seconds
    stay exact). VarLenDenseFeat -> (n, maxlen) of its dtype: a list/array of numbers per row,
    the kept events' numbers right-padded with 0, exactly as the VarLenSparseFeat behaviour
    sequences of the same maxlen keep and pad the same rows (so `hist_timestamp` lines up with `hist_item_id`).
    Sequence cells that are numpy arrays are cut to their kept part before they are joined, so
    rows of 1000s of events cost O(maxlen) each.

    Raises:
      KeyError: a feature's column is missing (the message names the feature and df's columns).
      ValueError: values that do not fit the column's dtype or dimension, or NaN or an infinity
        among a dense feature's, a dense history's or a history weight's numbers.
    """
    inputs = {}
    lengths = {column.name: _sequence_lengths(_column(df, column.name, f"feature '{column.name}'").to_numpy(),
                                              column.name)
               for column in feature_columns if isinstance(column, (VarLenSparseFeat, VarLenDenseFeat))}
    groups = _check_events_aligned(feature_columns, lengths)
    picks = {}  # per sequence that picks its events: the rows `_picked_events` found
    # A behaviour sequence keeps the events its group's first sparse sequence keeps (the model
    # truncates them together), so those leaders go first; any other sequence keeps its own.
    for column in sorted(feature_columns, key=lambda column: groups.get(column.name, column) is not column):
        if isinstance(column, SparseFeat):
            values = _column(df, column.name, f"feature '{column.name}'").to_numpy()
            inputs[column.name] = _ids(values, column.dtype, column.name)
        elif isinstance(column, DenseFeat):
            inputs[column.name] = _dense_input(df, column)
        elif isinstance(column, VarLenSparseFeat):
            leader = groups.get(column.name, column)
            sequence, picks[column.name] = _sequence_inputs(df, column, lengths[column.name],
                                                            None if leader is column else picks[leader.name])
            inputs.update(sequence)
        elif isinstance(column, VarLenDenseFeat):
            leader = groups.get(column.name, column)
            inputs[column.name] = _dense_sequence_input(df, column, lengths[column.name], picks.get(leader.name, {}))
        else:
            raise ValueError(f"not a feature column: {column!r}")
    return inputs


def _check_events_aligned(feature_columns, lengths):
    """{name: its group's first sparse sequence} for the behaviour sequences (`hist_<f>`) of each
    maxlen; a ValueError when two of them differ in length on a row.

    They are features of the same events (item, category, time), kept at the same positions:
    a time missing from one row would pair every later event with its neighbour's time.
    """
    first, leaders, groups = {}, {}, {}
    for column in feature_columns:
        if column.name not in lengths or not column.name.startswith(HISTORY_PREFIX):
            continue
        other = first.setdefault(column.maxlen, column.name)
        if isinstance(column, VarLenSparseFeat):
            leaders.setdefault(column.maxlen, column)
        groups[column.name] = column.maxlen
        rows = np.flatnonzero(lengths[column.name] != lengths[other])
        if len(rows):
            row = rows[0]
            raise ValueError(
                f"behaviour sequences '{other}' and '{column.name}' must hold one entry per event (they "
                f"are the same events' features), but row {row} has {lengths[other][row]} and "
                f"{lengths[column.name][row]} ({len(rows)} row(s) differ); keep a placeholder (\"\" or 0, "
                "padding) where an event's value is missing")
    return {name: leaders[maxlen] for name, maxlen in groups.items() if maxlen in leaders}


def _label_values(df, name, owner):
    """A label column as float32, or a ValueError naming the column and row: a label that is not
    a finite number would make the loss, and then every weight, NaN (as fit's own check on
    arrays says; a dataset is not checked there)."""
    column = _column(df, name, owner)
    try:
        values = column.to_numpy().astype(np.float32)
    except (TypeError, ValueError):
        values = pd.to_numeric(column, errors="coerce").to_numpy(np.float32)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        row = int(bad[0])
        value = column.iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        raise ValueError(f"{owner} column '{name}' needs finite numbers, but {_row_named(column.index, row)} holds "
                         f"{value!r}; {len(bad)} row(s) do")
    return values


def _labels(df, label_columns):
    """float32 (n,) for one column name; a dict for a list of names or {task: column}."""
    if isinstance(label_columns, str):
        return _label_values(df, label_columns, "the label")
    if isinstance(label_columns, dict):
        return {task: _label_values(df, col, f"the label of task '{task}'") for task, col in label_columns.items()}
    return {col: _label_values(df, col, "a label") for col in label_columns}


def check_unique_ids(values, what):
    """A ValueError naming up to 5 of the ids `values` repeats: a candidate listed twice would fill
    two places of every user's top k."""
    ids = pd.Series(np.asarray(values, dtype=object).reshape(-1))
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise ValueError(f"{what} repeats {duplicated.nunique()} id(s), e.g. {list(duplicated.unique()[:5])}; each "
                         "candidate must appear once")


def _weight_values(df, name):
    """A sample-weight column as float32, or a ValueError naming the row of a weight that is not a
    finite number >= 0 (NaN would make every weight of the model NaN, a negative one train it away
    from its labels)."""
    values = _label_values(df, name, "the sample weight")
    negative = np.flatnonzero(values < 0)
    if len(negative):
        row = int(negative[0])
        raise ValueError(f"the sample weight column '{name}' needs numbers >= 0, but {_row_named(df.index, row)} "
                         f"holds {values[row]:g}; {len(negative)} row(s) do")
    return values


def dataset_elements(df, feature_columns, label_columns=None, weight_column=None, look_up=True):
    """What `df_to_dataset` slices by row: features, (features, labels) or (features, labels,
    weights); the features' raw values looked up into embedding rows if `look_up`."""
    if weight_column is not None and label_columns is None:
        raise ValueError("weight_column weighs the rows' losses: give label_columns too")
    features = df_to_inputs(df, feature_columns)
    if look_up:
        features = look_up_rows(feature_columns, features)
    if label_columns is None:
        return features
    labels = _labels(df, label_columns)
    return (features, labels) if weight_column is None else (features, labels, _weight_values(df, weight_column))


def df_to_dataset(df, feature_columns, label_columns=None, batch_size=256, shuffle=True, seed=None,
                  repeat=False, drop_remainder=False, look_up=True, weight_column=None):
    """A batched tf.data.Dataset of (features, labels), or of features if label_columns is None.

    Features are `df_to_inputs(df, feature_columns)` sliced by row. With `look_up` (the
    default), the sparse features' raw values are mapped to embedding rows once, here, by the
    same lookup layers a model on these columns holds (`feature_columns.look_up_rows`), and
    appear under `feature_columns.indexed_key(name, column)`: a tfrec model trains, evaluates and
    predicts on them without searching strings at every step and epoch. Pass `look_up=False`
    for raw values (e.g. for a model that is not a tfrec model). `label_columns`: one column
    name -> labels (batch,) float32; a list of names -> {name: (batch,)}; a dict
    {task_name: column} -> {task_name: (batch,)} (for multi-task models with named outputs).
    `weight_column`: a column of sample weights (batch,) float32, the third element of each
    batch, which `fit` and `evaluate` weigh each row's loss by (every task's, for a multi-task
    model); e.g. 1 / the rate at which a downsampled log kept the row's class.
    Rows are shuffled over the whole frame (reshuffled every epoch), batched, optionally
    repeated forever, and prefetched.

    Raises:
      KeyError: a feature, label or weight column is missing.
      ValueError: a label is not a finite number (NaN, inf, text), or a weight not one >= 0; the
        message names the row.
    """
    return batched_rows(dataset_elements(df, feature_columns, label_columns, weight_column, look_up), len(df),
                        batch_size, shuffle, seed, repeat, drop_remainder)


def batched_rows(elements, rows, batch_size, shuffle=True, seed=None, repeat=False, drop_remainder=False,
                 shard=None):
    """A prefetched data set of `elements` (a nest of arrays of `rows` rows) in batches: the rows
    (every `shard[0]`-th from row `shard[1]`, if given) shuffled over all of them with `seed` and
    reshuffled every epoch, batched, optionally repeated forever.

    The batches are those of `from_tensor_slices(elements).shuffle(rows, seed).batch(...)`, row
    for row (a shuffle's order depends on its seed and element count, not on the elements), but
    the pipeline shuffles and batches row numbers and gathers each batch's rows at once: tf.data
    copies every element through its shuffle buffer and batch, and an element of many features
    costs one copy per feature. Iterated alone, a million rows of the multi-task data (8 features
    and 2 labels) took 7.7-8.1 s an epoch row by row (MMOE's whole training epoch on them takes
    4 s, on the same 2 cores) and 1.3-1.4 s by row numbers.
    """
    tensors = tf.nest.map_structure(tf.convert_to_tensor, elements)
    indices = tf.data.Dataset.range(rows)
    if shard is not None:
        indices = indices.shard(*shard)
    if shuffle:
        indices = indices.shuffle(max(rows, 1), seed=seed, reshuffle_each_iteration=True)
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    if repeat:
        indices = indices.repeat()
    batches = indices.map(lambda batch: tf.nest.map_structure(lambda values: tf.gather(values, batch), tensors))
    return without_autotuning(batches.prefetch(PREFETCH_BATCHES))


def without_autotuning(dataset):
    """`dataset` with tf.data's autotuning off.

    Deleting an iterator of an autotuned data set waits for the autotuning thread to wake from its
    sleep, and Keras deletes one at the end of every epoch of a data set (of every `fit`,
    `evaluate` and `predict` call of numpy arrays): CLSR's 4 epochs of 12,800 rows took 48 s with
    a 5 s wait after the second, the third and the last epoch, against 32 s without autotuning
    (docs/training.md). A pipeline of fixed buffers loses nothing by it.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
