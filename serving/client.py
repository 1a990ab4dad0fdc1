"""Clients for TF Serving's APIs (ours or the real tensorflow_model_server).

`Client` speaks gRPC, `RestClient` speaks REST; both have the same methods and the same
return types, and both raise `ServingError` (with `.code`, a `grpc.StatusCode`, and
`.message`, the server's text):

    with serving.Client("localhost:8500") as client:
        scores = client.predict("ranker", {"user_id": ["u1", "u2"], "hist_item_id": [[3, 5], [7]]})
        client.metadata("ranker")   # {"serving_default": {"inputs": {...}, "outputs": {...}}}
        client.status("ranker")     # [{"version": 3, "state": "AVAILABLE", ...}]
        client.classify("ranker", [{"user_id": "u1", "hist_item_id": [3, 5]}])
                                    # [[("0", 0.31), ("1", 0.69)]]  (label, score) per class
        client.regress("ranker", df, context={"user_id": "u1"})   # np.array([...], float32)
        client.multi_inference("ranker", rows, [("classify", "classify"),
                                                ("regress_ctr", "regress")])   # gRPC only
        client.reload_config(model_server_config)                            # gRPC only

`predict` takes a dict of lists / numpy arrays, or a pandas DataFrame. Rows of different
lengths (list-valued cells) become a 2-D array right-padded with 0 (or "" for strings) to the
longest row of the request, when the signature leaves the row length open (-1), as a
history's (a ValueError naming the row when it fixes it). Inputs are cast to the signature's
dtype when that loses nothing that matters (int64 -> int32 within range, int -> float,
float64 -> float32, int -> its decimal text for a string input, as a string table reads ids);
the signature dtypes come from GetModelMetadata once per model/version/label and are cached
(refetched, and the call retried once, when the server refuses a request and the signature has changed since,
e.g. after a new version was loaded). A request repeating one user's history on every row
(one user's candidates) goes out with the history once, to the export's `shared_history`
signature, when the server would score it on one row anyway (`predict`'s `signature_name`).

REST follows TF Serving's REST API: it has no output_filter (outputs are filtered here, with
the error gRPC gives for an unknown alias), and inputs the signature does not name are
ignored by the server instead of refused. It has no MultiInference and no config reload
either: `RestClient.multi_inference` / `reload_config` raise UNIMPLEMENTED.

`classify` / `regress` / `multi_inference` send tf.Examples: `examples` is a list of dicts
{feature: value or list} or a pandas DataFrame (one example per row), `context` an optional
dict of features shared by every example (Input.example_list_with_context). Python / numpy
ints and bools become int64_list, floats float_list, str / bytes bytes_list; a missing value
(None, NaN) leaves the feature out.

Every call is retried on UNAVAILABLE only (the server is not reachable, restarting, or its
queue is closed), `retries` times with exponential backoff (0.1 s, 0.2 s, ... capped at 2 s);
every other error is raised at once. `Client` keeps one gRPC channel, `RestClient` one
keep-alive HTTP connection per thread.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import http.client
import json
import math
import socket
import threading
import time
import urllib.parse

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2,
                                     model_management_pb2, regression_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from exporters import SERVING_SIGNATURE as DEFAULT_SIGNATURE
from exporters import saved_model as saved_model_export
from serving.errors import ServingError, status_code_of_http, status_code_of_number
from serving.json_tensor import from_json_value, to_json_value
from serving.request_checks import resolve_output_filter
from serving.tensors import ndarray_from_proto, ndarray_to_proto, numpy_dtype_of, shape_of

__all__ = ["Client", "RestClient", "ServingError"]


_State = get_model_status_pb2.ModelVersionStatus.State


def _is_missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_row(value):
    return isinstance(value, (list, tuple, np.ndarray))


def _padded_rows(rows, name, declared=None):
    """Right-pads list-valued rows to the longest one: 0 for numbers, "" / b"" for strings.
    `declared`: the row length the signature declares, if it declares one; ragged rows are then
    a ValueError naming a row of another length, since padding a fixed-size feature (a vector of
    3) would change the score (rows of one length go as they are, for the model to take or refuse).
    """
    rows = [[] if _is_missing(row) else list(row) if _is_row(row) else [row] for row in rows]
    if declared is not None and len({len(row) for row in rows}) > 1:  # one is not `declared` long
        wrong = next(index for index, row in enumerate(rows) if len(row) != declared)
        raise ValueError(f"Input {name!r} takes rows of {declared} values, but row {wrong} holds "
                         f"{len(rows[wrong])}: only a length the signature leaves open (-1), "
                         "such as a history's, is padded")
    width = max((len(row) for row in rows), default=0)
    first = next((row[0] for row in rows if row), 0)
    pad = "" if isinstance(first, str) else b"" if isinstance(first, bytes) else 0
    try:
        return _exact(np.array([row + [pad] * (width - len(row)) for row in rows]), [v for row in rows for v in row])
    except ValueError as error:
        raise ValueError(f"Input {name!r}: cannot make a 2-D array of its rows "
                         f"({error})") from None


def _exact(array, items):
    """`array` made from Python `items`, as an object array when numpy made floats of ints
    beyond int64 (e.g. [2**63, 1]), so that they are checked, not rounded."""
    if array.dtype.kind == "f" and items and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                                 for v in items):
        return np.array(items, dtype=object).reshape(array.shape)
    return array


def _as_array(values, name, declared=None):
    """One input column as a numpy array (ragged rows padded; `declared` as in `_padded_rows`)."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    if hasattr(values, "tolist") and not isinstance(values, np.ndarray):
        values = values.tolist()  # pandas Series / Index
    if isinstance(values, (list, tuple, np.ndarray)) and any(_is_row(v) for v in values):
        return _padded_rows(values, name, declared)
    array = np.asarray(values)
    if array.dtype.kind == "U" and isinstance(values, (list, tuple)) and any(map(_is_missing, values)):
        array = np.array(values, dtype=object)  # numpy wrote a gap among strings as the text "nan"
    if array.dtype == object and array.size and all(isinstance(v, str) for v in array.flat):
        array = array.astype(str)
    return _exact(array, values) if isinstance(values, (list, tuple)) else array


def _input_arrays(inputs, widths=None):
    """A dict of lists / arrays, or a pandas DataFrame, as {name: np.ndarray}; `widths`:
    {name: the row length its signature declares}."""
    widths = widths or {}
    if hasattr(inputs, "columns") and hasattr(inputs, "__getitem__"):
        return {str(column): _as_array(inputs[column], column, widths.get(str(column)))
                for column in inputs.columns}
    if not hasattr(inputs, "items"):
        raise TypeError(f"inputs must be a dict of arrays or a pandas DataFrame, got "
                        f"{type(inputs).__name__}")
    return {name: _as_array(values, name, widths.get(name)) for name, values in inputs.items()}


def _declared_widths(signature):
    """{input: its second dimension's size} for the inputs whose signature fixes it."""
    if signature is None:
        return {}
    return {name: info.tensor_shape.dim[1].size for name, info in signature.inputs.items()
            if not info.tensor_shape.unknown_rank and len(info.tensor_shape.dim) >= 2
            and info.tensor_shape.dim[1].size >= 0}


def _cast_to_signature(name, array, dtype):
    """Casts a numeric array to the signature's dtype of input `name` when nothing that matters
    is lost.

    int -> float, float64 -> float32, int64 -> int32 (an integer outside the input's range is a
    ValueError naming the input and the row: the server would only say int64 is not int32),
    int -> its decimal text for a string input, and an empty array (no rows, or rows with no
    items) to the signature's dtype. Anything else is left as it is, for the server to accept or
    refuse with INVALID_ARGUMENT.
    """
    if dtype == types_pb2.DT_STRING:
        # Ids as their decimal text, as a string table reads them; rows with no items at all
        # (a new user's empty history) come out of padding as an empty float array.
        return array.astype(str) if array.dtype.kind in "iu" or (array.size == 0 and array.dtype.kind == "f") \
            else array
    if dtype is None or array.dtype.kind not in "iuf":
        return array
    try:
        target = numpy_dtype_of(dtype)
    except ValueError:
        return array
    if array.dtype == target:
        return array
    if array.size == 0:  # a request of no rows, or rows with no items: no value to lose
        return array.astype(target)
    if target.kind == "f" or dtype == types_pb2.DT_BFLOAT16:  # numpy sees bfloat16 as kind "V"
        return array.astype(target)
    if target.kind in "iu" and array.dtype.kind in "iu":
        limits = np.iinfo(target)
        outside = np.argwhere((array < limits.min) | (array > limits.max))
        if len(outside):
            index = tuple(outside[0])
            raise ValueError(f"Input {name!r} expects {tf.dtypes.as_dtype(dtype).name} values, but row "
                             f"{index[0] if index else 0} holds {array[index]}, which does not fit")
        return array.astype(target)
    return array


def _numeric(name, array, dtype):
    """An object array for a numeric input as numbers; a None, NaN-as-object or text value is
    a ValueError naming the input, the row and the dtype expected. For a string input, only a
    missing value (None, NaN) is that error (it failed in the encoding, naming neither)."""
    if array.dtype != object:
        return array
    text = dtype == types_pb2.DT_STRING
    expected = tf.dtypes.as_dtype(dtype).name
    for index, value in np.ndenumerate(array):
        if _is_missing(value) if text else value is None or isinstance(value, (str, bytes)):
            raise ValueError(f"Input {name!r} expects {expected} values, but row "
                             f"{index[0] if index else 0} holds {value!r}")
    if text:
        return array
    target = numpy_dtype_of(dtype)
    try:
        return array.astype(target)
    except (OverflowError, ValueError):  # e.g. an int beyond int64: find it
        for index, value in np.ndenumerate(array):
            try:
                np.array([value], dtype=object).astype(target)
            except (OverflowError, ValueError):
                raise ValueError(f"Input {name!r} expects {expected} values, but row "
                                 f"{index[0] if index else 0} holds {value!r}, which does not fit") from None
        raise


def _tensor_summary(infos):
    return {alias: (tf.dtypes.as_dtype(info.dtype).name, shape_of(info.tensor_shape))
            for alias, info in sorted(infos.items())}


def _signature_summary(signature_def_map):
    """{signature: {"inputs": {alias: (dtype, shape)}, "outputs": {...}}}; shape is a list
    with -1 for unknown dims, None for unknown rank. Internal signatures ("__...") are left
    out."""
    return {name: {"inputs": _tensor_summary(signature.inputs),
                   "outputs": _tensor_summary(signature.outputs)}
            for name, signature in sorted(signature_def_map.signature_def.items())
            if not name.startswith("__")}


def _history_sent_once(signature_map, arrays):
    """`arrays` with the user's history cut to its first row, for `shared_history`; or None.

    A DeepCTR-style request repeats one user's history on each of its candidate rows. When the
    model has a `shared_history` signature (a tfrec export of a model with histories) taking the
    same inputs, each input it declares with one row (the `hist_` sequences and their length)
    repeats its first row on every row of the request, and they hold at least
    `feature_columns.ONE_HISTORY_MIN_ELEMENTS` values (from where the server's
    `serving_default` scores such a request on its first row too), the history need only be
    sent once: the same scores, from a request as many times smaller as it has rows.
    """
    default = signature_map.signature_def.get(DEFAULT_SIGNATURE)
    shared = signature_map.signature_def.get(saved_model_export.SHARED_HISTORY_SIGNATURE)
    if default is None or shared is None or not set(arrays) == set(shared.inputs) == set(default.inputs):
        return None
    once = [name for name, info in shared.inputs.items() if (shape_of(info.tensor_shape) or [None])[0] == 1]
    rows = {array.shape[0] if array.ndim else None for array in arrays.values()}
    if not once or len(rows) != 1 or None in rows or rows.pop() < 2 or \
            max(arrays[name].size for name in once) < feature_columns.ONE_HISTORY_MIN_ELEMENTS:
        return None
    if not all(np.array_equal(arrays[name][1:], arrays[name][:-1]) for name in once):
        return None
    return {name: array[:1] if name in once else array for name, array in arrays.items()}


def _status_list(response):
    return [{"version": status.version,
             "state": _State.Name(status.state),
             "error_code": status_code_of_number(status.status.error_code).name,
             "error_message": status.status.error_message}
            for status in response.model_version_status]


_FIRST_BACKOFF_SECONDS = 0.1
_MAX_BACKOFF_SECONDS = 2.0
_METHODS = {"classify": tf.saved_model.CLASSIFY_METHOD_NAME,
            "regress": tf.saved_model.REGRESS_METHOD_NAME}


_FEATURE_CASTS = {types_pb2.DT_FLOAT: float, types_pb2.DT_DOUBLE: float, types_pb2.DT_STRING: str}


def _typed_feature(value, dtype):
    """A feature's value with its ints as floats for a float input, or as their decimal text for a
    string input, as `predict` casts them: a tf.Example keeps the type it is given."""
    cast = _FEATURE_CASTS.get(dtype)
    if cast is None:
        return value

    def one(item):
        is_int = isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_))
        return cast(int(item)) if is_int else item

    if isinstance(value, (list, tuple, np.ndarray)):
        return [one(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    return one(value)


def _examples(examples, dtypes=None):
    """A list of dicts / tf.train.Examples, or a DataFrame, as a list of tf.train.Example; a
    dict's values typed by `dtypes` ({feature: DataType}, `_typed_feature`)."""
    from serving.json_examples import example_from_dict

    if hasattr(examples, "columns") and hasattr(examples, "to_dict"):
        examples = examples.to_dict("records")
    if isinstance(examples, dict):
        raise TypeError("examples must be a list of dicts (one per example) or a pandas "
                        "DataFrame, not one dict")
    out = []
    for example in examples:
        if isinstance(example, tf.train.Example):
            out.append(example)
        elif hasattr(example, "items"):
            out.append(example_from_dict({name: _typed_feature(value, (dtypes or {}).get(name))
                                          for name, value in example.items()}))
        else:
            raise TypeError(f"each example must be a dict of features, got "
                            f"{type(example).__name__}")
    return out


def _context(context, dtypes=None):
    if context is None or isinstance(context, tf.train.Example):
        return context
    return _examples([context], dtypes)[0]


def _fill_input(input_proto, examples, context):
    if context is None:
        input_proto.example_list.examples.extend(examples)
    else:
        input_proto.example_list_with_context.context.CopyFrom(context)
        input_proto.example_list_with_context.examples.extend(examples)


def _classes_list(result):
    return [[(item.label, float(item.score))
             for item in classifications.classes]
            for classifications in result.classifications]


def _regressions_array(result):
    return np.array([item.value for item in result.regressions], dtype=np.float32)


def _method_name(method):
    return _METHODS.get(method, method)


class _BaseClient:
    """What both transports share: input conversion, casting, metadata caching."""

    def __init__(self, timeout, retries=2):
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self._signature_maps = {}
        self._history_sent_per_row = set()  # (model, version, label) whose shared_history refused a request
        self._cache_lock = threading.Lock()

    def _retrying(self, call):
        """Runs `call()`, retrying on UNAVAILABLE only, with exponential backoff."""
        delay = _FIRST_BACKOFF_SECONDS
        for attempt in range(self.retries + 1):
            try:
                return call()
            except ServingError as error:
                if error.code != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_SECONDS)
        raise AssertionError("unreachable")

    def _signature_def_map(self, model_name, version, version_label, timeout):
        key = (model_name, version, version_label)
        with self._cache_lock:
            cached = self._signature_maps.get(key)
        if cached is None:
            cached = self._fetch_signature_def_map(model_name, version, version_label, timeout)
            with self._cache_lock:
                self._signature_maps[key] = cached
        return cached

    def _feature_dtypes(self, model_name, version, version_label, timeout):
        """{feature: DataType} of the model's `serving_default` inputs (a tfrec export's
        tf.Example signatures parse the same features), for typing dict examples."""
        signature_map = self._signature_def_map(model_name, version, version_label, timeout)
        signature = signature_map.signature_def.get(DEFAULT_SIGNATURE)
        return {} if signature is None else {alias: info.dtype for alias, info in signature.inputs.items()}

    def _prepared_inputs(self, inputs, signature):
        arrays = _input_arrays(inputs, _declared_widths(signature))
        if signature is None:
            return arrays
        arrays = {name: _cast_to_signature(
                      name, _numeric(name, array, signature.inputs[name].dtype)
                      if name in signature.inputs else array,
                      signature.inputs[name].dtype if name in signature.inputs else None)
                  for name, array in arrays.items()}
        for name, array in arrays.items():  # [] for a request of no rows: (0, 3) for a [-1, 3] input
            shape = signature.inputs[name].tensor_shape if name in signature.inputs else None
            if array.size == 0 and shape is not None and not shape.unknown_rank and array.ndim < len(shape.dim):
                fixed = tuple(max(dim.size, 0) for dim in shape.dim[array.ndim:])
                arrays[name] = array.reshape(array.shape + fixed)
        return arrays

    def predict(self, model_name, inputs, signature_name=None, version=None,
                output_filter=None, timeout=None, version_label=None):
        """Runs a Predict call; returns {output alias: np.ndarray}.

        Args:
          model_name: served model name.
          inputs: dict of lists / numpy arrays, or a pandas DataFrame, keyed by input alias.
          signature_name: signature to run. The default, "serving_default", sends a history
            repeated on every row (one user's candidates) once, through the export's
            `shared_history` signature, when the server would score it on one row anyway (see
            `_history_sent_once`); the outputs are the same. Name "serving_default" to send
            every row as given.
          version / version_label: pin a version (default: the latest available).
          output_filter: aliases of the outputs to return (default: all).
          timeout: seconds (default: the client's timeout).
        """
        timeout = self.timeout if timeout is None else timeout
        output_filter = list(output_filter or ())
        key = (model_name, version, version_label)
        signature_map = self._signature_def_map(model_name, version, version_label, timeout)
        try:
            return self._predict_with(signature_map, model_name, inputs, signature_name,
                                      version, version_label, output_filter, timeout)
        except ServingError as error:
            if error.code not in (grpc.StatusCode.INVALID_ARGUMENT,
                                  grpc.StatusCode.FAILED_PRECONDITION):
                raise
            # A new version may have changed the signature since it was cached: retry once
            # with fresh metadata if it did.
            fresh = self._fetch_signature_def_map(model_name, version, version_label, timeout)
            if fresh == signature_map:
                raise
            with self._cache_lock:
                self._signature_maps[key] = fresh
            return self._predict_with(fresh, model_name, inputs, signature_name, version,
                                      version_label, output_filter, timeout)

    def _predict_with(self, signature_map, model_name, inputs, signature_name, version,
                      version_label, output_filter, timeout):
        named, signature_name = signature_name is not None, signature_name or DEFAULT_SIGNATURE
        signature = signature_map.signature_def.get(signature_name)
        arrays = self._prepared_inputs(inputs, signature)
        key = (model_name, version, version_label)
        once = None if named or key in self._history_sent_per_row else _history_sent_once(signature_map, arrays)
        refused = False
        if once is not None:
            shared = saved_model_export.SHARED_HISTORY_SIGNATURE
            try:
                return self._predict_arrays(model_name, once, shared, signature_map.signature_def[shared],
                                            version, version_label, output_filter, timeout)
            except ServingError as error:
                # e.g. a server batching requests (--enable_batching), which needs one row
                # count in every input: send the rows as given, and so from now on.
                if error.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                refused = True
        outputs = self._predict_arrays(model_name, arrays, signature_name, signature, version,
                                       version_label, output_filter, timeout)
        if refused:
            with self._cache_lock:
                self._history_sent_per_row.add(key)
        return outputs

    def metadata(self, model_name, version=None, timeout=None, version_label=None):
        """{signature name: {"inputs": {alias: (dtype name, shape list)}, "outputs": {...}}}."""
        timeout = self.timeout if timeout is None else timeout
        signature_map = self._fetch_signature_def_map(model_name, version, version_label,
                                                      timeout)
        with self._cache_lock:
            self._signature_maps[(model_name, version, version_label)] = signature_map
        return _signature_summary(signature_map)

    def status(self, model_name, version=None, timeout=None):
        """[{"version", "state", "error_code", "error_message"}] for the model's versions."""
        timeout = self.timeout if timeout is None else timeout
        return _status_list(self._fetch_status(model_name, version, timeout))

    def classify(self, model_name, examples, context=None, signature_name=None, version=None,
                 version_label=None, timeout=None):
        """Runs a Classify call on tf.Examples; returns, per example, its classes as a list
        of (label, score) pairs (label "" / score 0.0 when the signature lacks classes /
        scores, as TF Serving's REST API writes them).

        Args:
          examples: a list of dicts {feature: value or list} or a pandas DataFrame.
          context: optional dict of features shared by every example.
          signature_name: a classify signature (default "serving_default").
          Others: as in `predict`.
        """
        timeout = self.timeout if timeout is None else timeout
        dtypes = self._feature_dtypes(model_name, version, version_label, timeout)
        return self._classify(model_name, _examples(examples, dtypes), _context(context, dtypes),
                              signature_name or "", version, version_label, timeout)

    def regress(self, model_name, examples, context=None, signature_name=None, version=None,
                version_label=None, timeout=None):
        """Runs a Regress call on tf.Examples; returns a float32 array, one value per example.
        Arguments as in `classify`."""
        timeout = self.timeout if timeout is None else timeout
        dtypes = self._feature_dtypes(model_name, version, version_label, timeout)
        return self._regress(model_name, _examples(examples, dtypes), _context(context, dtypes),
                             signature_name or "", version, version_label, timeout)

    def multi_inference(self, model_name, examples, tasks, context=None, version=None,
                        version_label=None, timeout=None):
        """Runs several classify / regress signatures of one model on the same tf.Examples in
        one MultiInference call (gRPC only: TF Serving's REST API has none).

        Args:
          tasks: [(signature_name, "classify" | "regress" | a full method name), ...].
        Returns:
          one result per task, in order: classify -> as `classify`, regress -> as `regress`.
        """
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           "MultiInference is not part of TF Serving's REST API; use the gRPC "
                           "Client")

    def reload_config(self, config, timeout=None):
        """Replaces the server's model config (ModelService.HandleReloadConfigRequest; gRPC
        only). `config`: a ModelServerConfig, or its text format."""
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           "TF Serving's REST API cannot reload the model config; use the "
                           "gRPC Client")

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Client(_BaseClient):
    """gRPC client of TF Serving's PredictionService and ModelService.

    Args:
      target: "host:port" of the gRPC server.
      timeout: default seconds per call.
      retries: how many times a call failing with UNAVAILABLE is retried (with backoff).
    """

    def __init__(self, target, timeout=10.0, retries=2):
        super().__init__(timeout, retries)
        self.target = target
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", -1),
                             ("grpc.max_send_message_length", -1)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @staticmethod
    def _fill_spec(spec, model_name, version, version_label, signature_name=""):
        spec.name = model_name
        if version is not None:
            spec.version.value = int(version)
        elif version_label is not None:
            spec.version_label = version_label
        if signature_name:
            spec.signature_name = signature_name

    def _call(self, method, request, timeout):
        def once():
            try:
                return method(request, timeout=timeout)
            except grpc.RpcError as error:
                raise ServingError(error.code(), error.details() or "") from None
        return self._retrying(once)

    def _classify(self, model_name, examples, context, signature_name, version,
                  version_label, timeout):
        request = classification_pb2.ClassificationRequest()
        self._fill_spec(request.model_spec, model_name, version, version_label, signature_name)
        _fill_input(request.input, examples, context)
        return _classes_list(self._call(self._predictions.Classify, request, timeout).result)

    def _regress(self, model_name, examples, context, signature_name, version,
                 version_label, timeout):
        request = regression_pb2.RegressionRequest()
        self._fill_spec(request.model_spec, model_name, version, version_label, signature_name)
        _fill_input(request.input, examples, context)
        return _regressions_array(self._call(self._predictions.Regress, request,
                                             timeout).result)

    def multi_inference(self, model_name, examples, tasks, context=None, version=None,
                        version_label=None, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        request = inference_pb2.MultiInferenceRequest()
        for signature_name, method in tasks:
            task = request.tasks.add(method_name=_method_name(method))
            self._fill_spec(task.model_spec, model_name, version, version_label,
                            signature_name or "")
        dtypes = self._feature_dtypes(model_name, version, version_label, timeout)
        _fill_input(request.input, _examples(examples, dtypes), _context(context, dtypes))
        response = self._call(self._predictions.MultiInference, request, timeout)
        return [_classes_list(result.classification_result)
                if result.WhichOneof("result") == "classification_result"
                else _regressions_array(result.regression_result)
                for result in response.results]

    def reload_config(self, config, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        request = model_management_pb2.ReloadConfigRequest()
        if isinstance(config, str):
            from google.protobuf import text_format

            text_format.Parse(config, request.config)
        else:
            request.config.CopyFrom(config)
        response = self._call(self._models.HandleReloadConfigRequest, request, timeout)
        if response.status.error_code:
            raise ServingError(status_code_of_number(response.status.error_code),
                               response.status.error_message)

    def _fetch_signature_def_map(self, model_name, version, version_label, timeout):
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        self._fill_spec(request.model_spec, model_name, version, version_label)
        response = self._call(self._predictions.GetModelMetadata, request, timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map

    def _predict_arrays(self, model_name, arrays, signature_name, signature, version,
                        version_label, output_filter, timeout):
        request = predict_pb2.PredictRequest(output_filter=output_filter)
        self._fill_spec(request.model_spec, model_name, version, version_label,
                        signature_name)
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(ndarray_to_proto(array, use_tensor_content=True))
        response = self._call(self._predictions.Predict, request, timeout)
        return {alias: ndarray_from_proto(proto, max_bytes=float("inf"))
                for alias, proto in response.outputs.items()}

    def _fetch_status(self, model_name, version, timeout):
        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec, model_name, version, None)
        return self._call(self._models.GetModelStatus, request, timeout)

    def close(self):
        self._channel.close()


def _not_http_message(url, line):
    """What a RestClient says when the server of `url` answered `line`, no HTTP status line."""
    answer = repr(line.strip()[:60]) if line.strip().isprintable() else "binary data, as a gRPC port does"
    return (f"cannot reach {url}: {urllib.parse.urlsplit(url).netloc} does not speak HTTP/REST (it answered "
            f"{answer}); point RestClient at the server's REST port (--rest_api_port), or use serving.Client for "
            "its gRPC port")


class RestClient(_BaseClient):
    """REST client of TF Serving's HTTP API (http.client, one keep-alive connection per
    thread); same methods as `Client` (multi_inference and reload_config raise UNIMPLEMENTED,
    as TF Serving's REST API has neither).

    Args:
      base_url: "http://host:port".
      timeout: default seconds per call.
      retries: how many times a call failing with UNAVAILABLE is retried (with backoff).
    """

    def __init__(self, base_url, timeout=10.0, retries=2):
        super().__init__(timeout, retries)
        self.base_url = base_url.rstrip("/")
        parsed = urllib.parse.urlsplit(self.base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"base_url must be http://host:port or https://host:port, got "
                             f"{base_url!r}")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._local = threading.local()
        self._connections = []
        self._connections_lock = threading.Lock()

    def _url(self, model_name, version, version_label, suffix=""):
        url = f"{self.base_url}/v1/models/{urllib.parse.quote(model_name, safe='')}"
        if version is not None:
            url += f"/versions/{int(version)}"
        elif version_label is not None:
            url += f"/labels/{urllib.parse.quote(version_label, safe='')}"
        return url + suffix

    def _connection(self, timeout):
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = (http.client.HTTPSConnection if self._scheme == "https"
                    else http.client.HTTPConnection)
            connection = kind(self._host, self._port, timeout=timeout)
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def _drop_connection(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()

    def _request(self, url, timeout, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        return self._retrying(lambda: self._request_once(url, timeout, data))

    def _request_once(self, url, timeout, data):
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        method = "GET" if data is None else "POST"
        headers = {"Content-Type": "application/json"}
        for attempt in range(2):
            connection = self._connection(timeout)
            reused = connection.sock is not None
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                status, text = response.status, response.read()
                if response.will_close:
                    connection.close()
                break
            except (socket.timeout, TimeoutError):
                self._drop_connection()
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"no answer from {url} within {timeout} s") from None
            except (http.client.RemoteDisconnected, http.client.BadStatusLine,
                    ConnectionResetError, BrokenPipeError) as error:
                self._drop_connection()
                if type(error) is http.client.BadStatusLine and error.line:  # an answer, but not HTTP
                    raise ServingError(grpc.StatusCode.UNAVAILABLE, _not_http_message(url, error.line)) from None
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: reconnect
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"cannot reach {url}: {error}") from None
            except (OSError, http.client.HTTPException) as error:
                self._drop_connection()
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"cannot reach {url}: {error}") from None
        text = text.decode("utf-8", errors="replace")
        if status >= 400:
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text or f"HTTP {status}"
            raise ServingError(status_code_of_http(status), message)
        try:
            return json.loads(text)
        except ValueError:  # e.g. a web page: another HTTP server than TF Serving's REST API
            raise ServingError(grpc.StatusCode.UNKNOWN, f"the answer of {url} is not JSON ({text[:60]!r}): "
                               f"{urllib.parse.urlsplit(url).netloc} may not be a TF Serving REST port") from None

    def _classify_regress_body(self, examples, context, signature_name):
        from serving.json_examples import examples_json

        body = {"examples": examples_json(examples)}
        if signature_name:
            body["signature_name"] = signature_name
        if context is not None:
            body["context"] = examples_json([context])[0]
        return body

    def _classify(self, model_name, examples, context, signature_name, version,
                  version_label, timeout):
        answer = self._request(self._url(model_name, version, version_label, ":classify"),
                               timeout, self._classify_regress_body(examples, context,
                                                                    signature_name))
        return [[(str(label), float(score)) for label, score in classes]
                for classes in answer["results"]]

    def _regress(self, model_name, examples, context, signature_name, version,
                 version_label, timeout):
        answer = self._request(self._url(model_name, version, version_label, ":regress"),
                               timeout, self._classify_regress_body(examples, context,
                                                                    signature_name))
        return np.asarray(answer["results"], dtype=np.float32)

    def close(self):
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def _fetch_signature_def_map(self, model_name, version, version_label, timeout):
        body = self._request(self._url(model_name, version, version_label, "/metadata"), timeout)
        return json_format.ParseDict(body["metadata"]["signature_def"],
                                     get_model_metadata_pb2.SignatureDefMap(),
                                     ignore_unknown_fields=True)

    def _predict_arrays(self, model_name, arrays, signature_name, signature, version,
                        version_label, output_filter, timeout):
        wanted = None if signature is None else resolve_output_filter(signature, output_filter)
        body = {"signature_name": signature_name,
                "inputs": {name: to_json_value(array) for name, array in arrays.items()}}
        answer = self._request(self._url(model_name, version, version_label, ":predict"),
                               timeout, body)["outputs"]
        if signature is None:  # the server answered, so this cannot happen on TF Serving
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{signature_name}" not found.')
        aliases = sorted(signature.outputs)
        if len(aliases) == 1:
            answer = {aliases[0]: answer}
        return {alias: from_json_value(answer[alias], signature.outputs[alias].dtype)
                for alias in wanted}

    def _fetch_status(self, model_name, version, timeout):
        body = self._request(self._url(model_name, version, None), timeout)
        return json_format.ParseDict(body, get_model_status_pb2.GetModelStatusResponse(),
                                     ignore_unknown_fields=True)
