"""One loaded version of a model (TF Serving's servable): its SignatureDefs and signature
functions, Predict with TF Serving's request checks, optional batching, warm-up replay, and
the GetModelMetadata answer.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import logging
import os
import threading

import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_log_pb2

from exporters import SERVING_SIGNATURE as DEFAULT_SIGNATURE
from exporters import WARMUP_DIR, WARMUP_FILE
from serving import inference
from serving.bundle import load_bundle
from serving.errors import ServingError, error_from_tf, failed_precondition, invalid_argument
from serving.batching import Batcher, BatcherClosed
from serving.request_checks import (MODEL_FAILURE_CODES, check_batch_sizes, check_input_aliases,
                                    check_input_tensor, check_request_elements,
                                    decode_request_tensor, request_headers,
                                    resolve_output_filter)
from serving.tensors import (default_max_request_elements, ndarray_to_proto,
                             release_memory_after)

log = logging.getLogger("serving.servable")

MAX_WARMUP_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords


def _array_bytes(arrays):
    return sum(getattr(array, "nbytes", 0) for array in arrays)


class ServableVersion:
    """One loaded version of a model, ready to answer Predict and GetModelMetadata.

    Args:
      name: model name.
      version: version number (the numeric directory name).
      path: the version directory (a SavedModel with a {"serve"} MetaGraphDef).
      batching: `serving.batching.BatchingOptions`, or None to run each request alone.
      max_request_elements: the elements all inputs of one request may hold together
        (--max_request_elements); None: `tensors.default_max_request_elements()`.

    `close()` (on unload) stops the batchers; a request that still holds the version (it
    resolved it before the unload, as a TF Serving request holds a ServableHandle) runs alone
    on it, and no batcher is made again.
    """

    def __init__(self, name, version, path, batching=None, max_request_elements=None):
        self.name = name
        self.version = version
        self.path = path
        self.max_request_elements = (default_max_request_elements()
                                     if max_request_elements is None else max_request_elements)
        self.signature_defs, self._functions, self._loaded = load_bundle(path)
        self._batching = batching
        self._batchers = {}
        self._batchers_lock = threading.Lock()
        self._closed = False

    def signature_def(self, signature_name):
        """The SignatureDef named `signature_name` ("" = serving_default), or
        FAILED_PRECONDITION as TF Serving's Predict answers."""
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(name)
        if signature is None:
            raise failed_precondition(f'Serving signature key "{name}" not found.')
        return signature

    def predict(self, signature_name, inputs, output_filter=()):
        """Validates `inputs` (alias -> np.ndarray) and runs the signature.

        Returns a dict alias -> np.ndarray of the requested outputs (all when
        `output_filter` is empty). Raises ServingError with TF Serving's code and message.
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = self.signature_def(name)
        check_input_aliases(signature, inputs.keys())
        self._check_shapes(signature, {alias: list(getattr(array, "shape", ()))
                                       for alias, array in inputs.items()})
        return self._predict_checked(name, signature, inputs, output_filter)

    def _check_shapes(self, signature, shapes):
        """The checks made from the request's shapes alone ({alias: dims})."""
        check_request_elements(shapes, self.max_request_elements)
        check_batch_sizes(signature, shapes)

    def _predict_checked(self, name, signature, inputs, output_filter):
        """`predict` once the aliases and shapes are checked (by `predict`, or by
        `predict_proto` from the TensorProto headers): adds the defaults, resolves the output
        filter, checks the dtypes and runs the signature."""
        inputs = dict(inputs)
        for alias in signature.inputs:
            if alias not in inputs:
                inputs[alias] = decode_request_tensor(alias, signature.defaults[alias])
        wanted = resolve_output_filter(signature, output_filter)
        shape_notes = [note for note in (
            check_input_tensor(alias, signature.inputs[alias], inputs[alias])
            for alias in sorted(inputs)) if note]
        try:
            outputs = self._run_maybe_batched(name, inputs)
        except ServingError as error:
            if not shape_notes or error.code not in MODEL_FAILURE_CODES:
                raise
            # Fed as TF Serving feeds it, the model rejected an input of another shape than
            # its signature declares: say which one, first, before the graph's own words.
            raise invalid_argument(f"{'; '.join(shape_notes)}; the model says: {error.message}") from None
        finally:
            release_memory_after(_array_bytes(inputs.values()))
        return {alias: outputs[alias] for alias in wanted}

    def predict_proto(self, request):
        """Answers a PredictRequest with a PredictResponse, exactly as TF Serving fills it."""
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs, outputs = {}, {}
        try:
            signature = self.signature_def(name)
            check_input_aliases(signature, request.inputs.keys())
            # From the shapes alone, before a byte is allocated: the element cap, then the
            # batch sizes (a 441-byte proto may declare 10^8 elements).
            headers = request_headers(request.inputs)
            self._check_shapes(signature, {alias: dims for alias, (_, dims, _) in headers.items()})
            for alias, proto in request.inputs.items():
                inputs[alias] = decode_request_tensor(alias, proto, headers[alias])
            outputs = self._predict_checked(name, signature, inputs, request.output_filter)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.signature_name = name
            response.model_spec.version.value = self.version
            for alias, array in outputs.items():
                response.outputs[alias].CopyFrom(ndarray_to_proto(array))
            return response
        finally:
            release_memory_after(_array_bytes(inputs.values()) + _array_bytes(outputs.values()))

    def run(self, signature_name, inputs):
        """Runs one signature on checked inputs (alias -> np.ndarray); returns every output
        as alias -> np.ndarray. TensorFlow's own failures come back as ServingError."""
        function = self._functions.get(signature_name)
        if function is None:
            raise failed_precondition(
                f'Serving signature key "{signature_name}" has no function to run in '
                f"{self.path}")
        signature = self.signature_defs[signature_name]
        try:
            tensors = {alias: tf.constant(array, dtype=tf.dtypes.as_dtype(
                           signature.inputs[alias].dtype)) for alias, array in inputs.items()}
            outputs = function(**tensors)
            return {alias: np.asarray(tensor.numpy()) for alias, tensor in outputs.items()}
        except tf.errors.OpError as error:
            raise error_from_tf(error) from None
        except (TypeError, ValueError, OverflowError) as error:
            raise invalid_argument(str(error)) from None

    def _run_maybe_batched(self, signature_name, inputs):
        if self._batching is None:
            return self.run(signature_name, inputs)
        batcher = self._batcher(signature_name)
        if batcher is not None:
            try:
                return batcher.submit(inputs)
            except BatcherClosed:
                pass  # unloaded meanwhile
        # The version is being unloaded: this request resolved it before, and runs alone.
        return self.run(signature_name, inputs)

    def _batcher(self, signature_name):
        """The signature's Batcher, made on first use; None once the version is closed."""
        with self._batchers_lock:
            if self._closed:
                return None
            batcher = self._batchers.get(signature_name)
            if batcher is None:
                batcher = Batcher(lambda inputs: self.run(signature_name, inputs),
                                  self._batching,
                                  name=f"{self.name}/{self.version}/{signature_name}")
                self._batchers[signature_name] = batcher
            return batcher

    def warm_up(self):
        """Replays assets.extra/tf_serving_warmup_requests (TFRecord of PredictionLog).

        Predict records run through the same path as live requests. A record that cannot be
        parsed or fails is logged and skipped (real TF Serving refuses to load the version
        instead, so the log says so). Returns (records that ran, records that failed).
        """
        path = os.path.join(self.path, WARMUP_DIR, WARMUP_FILE)
        if not os.path.exists(path):
            log.info("No warmup data file found at %s", path)
            return 0, 0
        ran = failed = 0
        try:
            for index, record in enumerate(tf.data.TFRecordDataset(path)):
                if index >= MAX_WARMUP_RECORDS:
                    log.warning("Number of warmup records exceeds the maximum (%d) at %s; "
                                "the rest is ignored", MAX_WARMUP_RECORDS, path)
                    break
                problem = self._replay_warmup_record(record.numpy())
                if problem is None:
                    ran += 1
                else:
                    failed += 1
                    log.warning("Warmup record %d of %s failed: %s (real TF Serving would "
                                "refuse to load this version)", index, path, problem)
        except tf.errors.OpError as error:
            failed += 1
            log.warning("Stopped reading warmup data at %s: %s. Please verify your warmup "
                        "data is in TFRecord format.", path, error.message)
        log.info("Finished reading warmup data for model at %s. Number of warmup records "
                 "read: %d. Failed: %d.", path, ran, failed)
        return ran, failed

    def _replay_warmup_record(self, record):
        try:
            prediction_log = prediction_log_pb2.PredictionLog.FromString(record)
        except protobuf_message.DecodeError as error:
            return f"Failed to parse warmup record: {error}"
        kind = prediction_log.WhichOneof("log_type")
        try:
            if kind == "predict_log":
                self.predict_proto(prediction_log.predict_log.request)
            elif not inference.replay_warmup_log(self, prediction_log):
                return f"{kind or 'an empty'} record: not a predict, classify, regress or " \
                       f"multi_inference log"
        except ServingError as error:
            return f"{error.code.name}: {error.message}"
        except Exception as error:  # noqa: BLE001 - a bad record must not fail the load
            return f"{type(error).__name__}: {error}"
        return None

    @property
    def closed(self):
        return self._closed

    def batcher_threads(self):
        """The worker threads of this version's batchers (none once closed)."""
        with self._batchers_lock:
            return [thread for batcher in self._batchers.values()
                    for thread in batcher.threads]

    def close(self):
        """Stops this version's batchers for good; the SavedModel is freed with the last
        reference. Requests still holding the version run alone afterwards."""
        with self._batchers_lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()


def metadata_response(servable):
    """GetModelMetadataResponse of a version: its SignatureDefMap packed under "signature_def"."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signature_def_map.signature_def[key].CopyFrom(signature)
    response.metadata["signature_def"].Pack(signature_def_map)
    return response
