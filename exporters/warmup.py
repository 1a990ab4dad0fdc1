"""Warm-up requests that TF Serving replays before it serves a new version.

TF Serving reads `<version>/assets.extra/tf_serving_warmup_requests`, a TFRecord file of
`PredictionLog` protos, and runs each request against a freshly loaded version before marking
it available, so the first real request does not pay for lazy initialisation (lookup tables,
graph optimisation, memory pools). A version whose warm-up fails is not served at all, so the
requests written here must match the signature exactly: same input names, dtypes and ranks.

A "feed" below is the inputs of one request: a dict {input name: np.ndarray} whose arrays have
the signature's rank and dtype (string inputs as object arrays of bytes).
"""
import feature_columns._legacy_keras  # noqa: F401

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tfrec.data.pipeline import id_text

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
DEFAULT_NUM_WARMUP_RECORDS = 5
# TF Serving's WarmupConsts::kMaxNumRecords: it refuses to load a version whose file holds more.
MAX_NUM_WARMUP_RECORDS = 1000


def signature_input_specs(signature):
    """Returns {input name: tf.TensorSpec} of a concrete function taking keyword arguments."""
    _, keyword_specs = signature.structured_input_signature
    return dict(keyword_specs)


def warmup_feeds(input_specs, warmup_inputs=None, num_records=DEFAULT_NUM_WARMUP_RECORDS):
    """Returns the feeds of the warm-up requests, one row each.

    Args:
      input_specs: {input name: tf.TensorSpec} of the signature, batch dimension first.
      warmup_inputs: None, a dict {feature name: array or list}, or a pandas DataFrame. Columns
        the signature does not take (labels, say) are ignored. A list-valued cell (a sequence
        or a dense vector) becomes a row of a right-padded 2-D array, padded with 0 or b"" to
        the row length the signature declares, or to the longest row where it leaves it open.
        A [n, 1] array for an input the signature takes as [None] is squeezed.
      num_records: how many requests to make, from the first rows; at most
        `MAX_NUM_WARMUP_RECORDS`.

    Returns:
      A list of feeds. With `warmup_inputs=None`, one synthetic single-row feed: zeros, or b""
      for strings, and sequences of length 1. Otherwise one feed per row of the first
      min(num_records, number of rows) rows.

    Raises:
      ValueError: an input is missing, has the wrong shape or cannot take the dtype, the
        columns have different numbers of rows, or num_records is not in [1, 1000].
    """
    if warmup_inputs is None:
        return [synthetic_feed(input_specs)]
    if num_records < 1:
        raise ValueError(f"num_warmup_records must be at least 1, got {num_records}")
    if num_records > MAX_NUM_WARMUP_RECORDS:
        raise ValueError(f"num_warmup_records must be at most {MAX_NUM_WARMUP_RECORDS}, got {num_records}: TF "
                         "Serving refuses to load a version with more warm-up records")
    columns = {
        name: _conformed(name, _head(_column(warmup_inputs, name), num_records), spec)
        for name, spec in input_specs.items()
    }
    num_rows = _common_num_rows(columns)
    return [{name: values[row:row + 1] for name, values in columns.items()}
            for row in range(num_rows)]


def synthetic_feed(input_specs):
    """Returns a one-row feed of zeros (b"" for strings); unknown dimensions become 1."""
    return {name: np.full(_synthetic_shape(spec), _padding(spec.dtype), dtype=_numpy_dtype(spec))
            for name, spec in input_specs.items()}


def check_feeds_run(signature, feeds):
    """Runs each feed through `signature`, so a bad warm-up fails here, not in TF Serving."""
    for index, feed in enumerate(feeds):
        try:
            signature(**{name: tf.constant(values) for name, values in feed.items()})
        except (tf.errors.OpError, ValueError, TypeError) as error:
            raise ValueError(
                f"warm-up request {index} (inputs {_describe(feed)}) fails on the serving "
                f"signature: {error}") from error


def prediction_log(feed, model_name, signature_name="serving_default"):
    """Wraps a feed into the `PredictionLog` record that TF Serving's warm-up replays."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, values in feed.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup_file(saved_model_dir, logs):
    """Writes `logs` (PredictionLog protos) as the warm-up file in `saved_model_dir`.

    Returns:
      The path of the file written, `saved_model_dir/assets.extra/tf_serving_warmup_requests`.
    """
    path = os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path):
    """Returns the `PredictionLog` records of a warm-up file (or of a version directory)."""
    if os.path.isdir(path):
        path = os.path.join(path, WARMUP_DIR, WARMUP_FILE)
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]


def _column(warmup_inputs, name):
    if name not in warmup_inputs:
        raise ValueError(
            f"warm-up inputs have no feature {name!r}, which the serving signature takes; "
            f"they have {sorted(map(str, warmup_inputs.keys()))}")
    return warmup_inputs[name]


def _head(values, num_rows):
    """The first rows of a pandas Series, numpy array or list: a numeric/string array or a list."""
    if hasattr(values, "iloc"):
        values = values.iloc[:num_rows]
    elif isinstance(values, np.ndarray) and values.dtype != object:
        return values[:num_rows]
    # Object arrays and lists may hold one list per row, which _stacked pads.
    return list(values)[:num_rows]


def _conformed(name, rows, spec):
    """`rows` as an array of the signature's rank and dtype, or a ValueError naming `name`."""
    array = rows if isinstance(rows, np.ndarray) else _stacked(name, rows, spec)
    if spec.shape.rank == 1 and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if spec.shape.rank is not None and (
            array.ndim != spec.shape.rank
            or not spec.shape[1:].is_compatible_with(array.shape[1:])):
        raise ValueError(
            f"warm-up input {name!r} has shape {list(array.shape)}, but the serving signature "
            f"takes shape {spec.shape.as_list()} (None: any size)")
    return _cast(name, array, spec)


def _stacked(name, rows, spec):
    """Stacks rows, right-padding list-valued rows (sequences) to the row length the signature
    declares, or to the longest row where it leaves the length open."""
    if not any(isinstance(row, (list, tuple, np.ndarray)) for row in rows):
        return np.asarray(rows)
    cells = [np.asarray(row) if isinstance(row, (list, tuple, np.ndarray)) else None
             for row in rows]
    if any(cell is None or cell.ndim != 1 for cell in cells):
        raise ValueError(
            f"warm-up input {name!r} mixes list-valued and scalar rows (or has nested lists); "
            "each row must be a scalar, or each row a flat list")
    width = max([1] + [len(cell) for cell in cells])
    declared = spec.shape[1] if spec.shape.rank == 2 else None
    if declared is not None:
        # A sequence declared with a fixed length (an Input of shape (10,)) takes every row
        # padded to it; which end of a longer row the model would keep, nothing says.
        longer = [row for row, cell in enumerate(cells) if len(cell) > declared]
        if longer:
            raise ValueError(f"warm-up input {name!r} takes rows of {declared} values, but row {longer[0]} "
                             f"holds {len(cells[longer[0]])}")
        width = declared
    padded = np.full((len(cells), width), _padding(spec.dtype), dtype=object)
    for row, cell in enumerate(cells):
        padded[row, :len(cell)] = cell
    return padded


def _cast(name, array, spec):
    if spec.dtype == tf.string:
        # ints as their decimal text, as df_to_inputs and the clients send them to a string table
        flat = [id_text(value) for value in array.ravel()]
        bad = [value for value in flat if not isinstance(value, (str, bytes))]
        if bad:
            raise ValueError(
                f"warm-up input {name!r} is a string input, but holds {bad[0]} "
                f"of type {type(bad[0]).__name__}")
        encoded = [value.encode("utf-8") if isinstance(value, str) else value for value in flat]
        return np.array(encoded, dtype=object).reshape(array.shape)
    try:
        return array.astype(_numpy_dtype(spec))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"warm-up input {name!r} cannot be converted to {spec.dtype.name}: {error}") from None


def _common_num_rows(columns):
    num_rows = {name: len(values) for name, values in columns.items()}
    if len(set(num_rows.values())) > 1:
        raise ValueError(f"warm-up inputs have different numbers of rows: {num_rows}")
    if 0 in num_rows.values():
        raise ValueError("warm-up inputs have no rows")
    return next(iter(num_rows.values()), 1)


def _synthetic_shape(spec):
    if spec.shape.rank is None:
        return [1]
    return [1 if size is None else size for size in spec.shape.as_list()]


def _padding(dtype):
    return b"" if dtype == tf.string else 0


def _numpy_dtype(spec):
    return object if spec.dtype == tf.string else spec.dtype.as_numpy_dtype


def _describe(feed):
    return {name: f"{values.dtype}{list(values.shape)}" for name, values in feed.items()}
