"""The model manager behind the server: what TF Serving's ServerCore does, in Python.

`ServableVersion`  one loaded SavedModel version: its SignatureDefs, its signature functions,
                   Predict with TF Serving's request validation, warm-up replay.
`Model`            all versions of one model name under its base path: the version policy,
                   loading new versions, unloading unwanted ones without a gap in service,
                   and the per-version states GetModelStatus reports.
`ServerCore`       the models of a ModelServerConfig, a poll thread that rescans every base
                   path, config reloads, and ModelSpec -> version resolution.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import functools
import gc
import logging
import os
import re
import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, predict_pb2,
                                    prediction_log_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import (ServingError, failed_precondition, invalid_argument, not_found,
                            status_code_of_number)
from serving.tensors import (TensorProtoError, dtype_of_array, dtype_string, ndarray_from_proto,
                             ndarray_to_proto, shape_of, shape_string)

log = logging.getLogger("serving.core")

DEFAULT_SIGNATURE = "serving_default"
SERVING_TAGS = ("serve",)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords

_State = get_model_status_pb2.ModelVersionStatus.State


@functools.lru_cache(maxsize=None)
def _import_scann_ops():
    """Registers ScaNN's custom ops (`Scann>...`) so retrieval exports with a ScaNN index
    load; stock TensorFlow fails on them with "Op type not registered". Optional: without
    scann, every other SavedModel (brute-force retrieval exports included) still loads."""
    try:
        import scann  # noqa: F401
    except ImportError:
        log.info("scann is not installed: SavedModels using ScaNN ops will fail to load")


def read_serving_meta_graph(export_dir):
    """The MetaGraphDef tagged exactly {"serve"} in a SavedModel directory (.pb or .pbtxt)."""
    saved_model = saved_model_pb2.SavedModel()
    pb_path = os.path.join(export_dir, "saved_model.pb")
    pbtxt_path = os.path.join(export_dir, "saved_model.pbtxt")
    try:
        if os.path.exists(pb_path):
            with open(pb_path, "rb") as f:
                saved_model.ParseFromString(f.read())
        elif os.path.exists(pbtxt_path):
            with open(pbtxt_path) as f:
                text_format.Parse(f.read(), saved_model)
        else:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
                f"{export_dir}")
    except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Cannot parse the SavedModel in {export_dir}: {error}") from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(SERVING_TAGS):
            return meta_graph
    raise ServingError(
        grpc.StatusCode.NOT_FOUND,
        "Could not find meta graph def matching supplied tags: { serve }. To inspect "
        "available tag-sets in the SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`")


def _joined(names):
    return ",".join(sorted(names))


def check_input_aliases(signature, request_aliases):
    """TF Serving's checks that a request names exactly the signature's inputs.

    Same order and messages as predict_util.cc (VerifyRequestInputsSize) and
    tensorflow/cc/saved_model/util.cc (GetInputValues); all INVALID_ARGUMENT.
    """
    request = set(request_aliases)
    expected = set(signature.inputs)
    if len(request) > len(expected) or (len(request) < len(expected)
                                        and not signature.defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(request)}!={len(expected)} "
            f"len({{{_joined(request)}}}) != len({{{_joined(expected)}}}). "
            f"Sent extra: {{{_joined(request - expected)}}}. "
            f"Missing but required: {{{_joined(expected - request)}}}.")
    for alias in sorted(expected - request):
        if alias not in signature.defaults:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) "
                f"not found in request and no default value provided. Inputs expected to be "
                f"in the request {{{_joined(request)}}}, or default input alias set: "
                f"{_joined(signature.defaults)}")
    if request - expected:
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: "
            f"{_joined(request & expected)}, request input: {_joined(request)}")


def resolve_output_filter(signature, output_filter):
    """The output aliases to return: `output_filter` checked as TF Serving does (unknown or
    repeated alias: INVALID_ARGUMENT), or every output of the signature when it is empty."""
    if not output_filter:
        return sorted(signature.outputs)
    seen = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected "
                f"to be in the set {{{_joined(signature.outputs)}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def _check_input_tensor(alias, info, array):
    """Dtype of one input against its TensorInfo (INVALID_ARGUMENT, naming it), as the
    session TF Serving feeds checks it.

    The shape is not checked: TF Serving feeds the tensor as it is and only the model's own
    ops judge it (a [-1,1] input fed [1] may well be answered). Returns a note naming the
    input when its shape differs from the signature's, for the message if the model fails
    on it, else None.
    """
    if info.WhichOneof("encoding") != "name":
        return None  # sparse / composite inputs: left to the signature function to judge
    provided = dtype_of_array(array)
    if provided != info.dtype:
        raise invalid_argument(
            f'Expects input "{alias}" to be {dtype_string(info.dtype)} but '
            f"{dtype_string(provided)} is provided")
    expected = shape_of(info.tensor_shape)
    got = list(array.shape)
    if expected is None or (len(expected) == len(got) and
                            all(e == -1 or e == g for e, g in zip(expected, got))):
        return None
    return (f'input "{alias}" has shape {shape_string(got)} where the signature declares '
            f"{shape_string(expected)}")


# Codes of a model failing on what it was fed (OpErrors, signature call errors); a batching
# queue that is full or closed (RESOURCE_EXHAUSTED, UNAVAILABLE) is not the input's fault.
_MODEL_FAILURE_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED})


def decode_request_tensor(alias, proto):
    """A request TensorProto as numpy; a malformed one is INVALID_ARGUMENT naming the alias."""
    try:
        return ndarray_from_proto(proto)
    except TensorProtoError as error:
        raise invalid_argument(f"tensor parsing error: {alias} ({error})") from None


def _session_style_message(message):
    """An eager function error as TF Serving's session would word it: without the
    "Graph execution error: Detected at node ..." preamble and the "[Op:...]" suffix."""
    marker = "<stack traces unavailable>\n"
    if message.startswith("Graph execution error:") and marker in message:
        message = message.split(marker, 1)[1]
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message).strip()


def error_from_tf(error):
    """A ServingError carrying a TensorFlow OpError's canonical code and message."""
    return ServingError(status_code_of_number(error.error_code),
                        _session_style_message(error.message))


class ServableVersion:
    """One loaded version of a model, ready to answer Predict and GetModelMetadata.

    Args:
      name: model name.
      version: version number (the numeric directory name).
      path: the version directory (a SavedModel with a {"serve"} MetaGraphDef).
      batching: `serving.batching.BatchingOptions`, or None to run each request alone.
    """

    def __init__(self, name, version, path, batching=None):
        self.name = name
        self.version = version
        self.path = path
        self.signature_defs = dict(read_serving_meta_graph(path).signature_def)
        _import_scann_ops()  # before the load: a ScaNN export's graph needs its ops registered
        self._loaded = tf.saved_model.load(path, tags=list(SERVING_TAGS))
        self._functions = dict(self._loaded.signatures)
        self._batching = batching
        self._batchers = {}
        self._batchers_lock = threading.Lock()

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
        inputs = dict(inputs)
        for alias in signature.inputs:
            if alias not in inputs:
                inputs[alias] = decode_request_tensor(alias, signature.defaults[alias])
        wanted = resolve_output_filter(signature, output_filter)
        shape_notes = [note for note in (
            _check_input_tensor(alias, signature.inputs[alias], inputs[alias])
            for alias in sorted(inputs)) if note]
        try:
            if self._batching is None:
                outputs = self._run(name, inputs)
            else:
                outputs = self._batcher(name).submit(inputs)
        except ServingError as error:
            if not shape_notes or error.code not in _MODEL_FAILURE_CODES:
                raise
            # Fed as TF Serving feeds it, the model rejected an input of another shape than
            # its signature declares: say which one.
            raise invalid_argument(f"{error.message} ({'; '.join(shape_notes)})") from None
        return {alias: outputs[alias] for alias in wanted}

    def predict_proto(self, request):
        """Answers a PredictRequest with a PredictResponse, exactly as TF Serving fills it."""
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        check_input_aliases(self.signature_def(name), request.inputs.keys())
        inputs = {alias: decode_request_tensor(alias, proto)
                  for alias, proto in request.inputs.items()}
        outputs = self.predict(name, inputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = name
        response.model_spec.version.value = self.version
        for alias, array in outputs.items():
            response.outputs[alias].CopyFrom(ndarray_to_proto(array))
        return response

    def _run(self, signature_name, inputs):
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
        except (TypeError, ValueError) as error:
            raise invalid_argument(str(error)) from None

    def _batcher(self, signature_name):
        from serving.batching import Batcher

        with self._batchers_lock:
            batcher = self._batchers.get(signature_name)
            if batcher is None:
                batcher = Batcher(lambda inputs: self._run(signature_name, inputs),
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
        path = os.path.join(self.path, WARMUP_FILE)
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
        if kind != "predict_log":
            return f"{kind or 'an empty'} record; this server replays predict_log records only"
        try:
            self.predict_proto(prediction_log.predict_log.request)
        except ServingError as error:
            return f"{error.code.name}: {error.message}"
        except Exception as error:  # noqa: BLE001 - a bad record must not fail the load
            return f"{type(error).__name__}: {error}"
        return None

    def close(self):
        """Stops this version's batchers; the SavedModel is freed with the last reference."""
        with self._batchers_lock:
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


def _version_dirs(base_path):
    """Numeric version directories under a base path: {version: path}; None if missing.

    Other entries (`.tmp-3-abc`, `README`) are ignored, as TF Serving does.
    """
    try:
        entries = os.listdir(base_path)
    except OSError:
        return None
    versions = {}
    for entry in entries:
        if entry.isdigit() and entry.isascii():
            version = int(entry)
            path = os.path.join(base_path, entry)
            if version < 2**63 and os.path.isdir(path):
                versions[version] = path
    return versions


def _fingerprint(path):
    """Changes when a version directory is rewritten, so a failed load is retried then."""
    parts = []
    for relative in ("", "saved_model.pb", "saved_model.pbtxt",
                     os.path.join("variables", "variables.index")):
        try:
            stat = os.stat(os.path.join(path, relative))
        except OSError:
            continue
        parts.append((relative, stat.st_mtime_ns, stat.st_size))
    return tuple(parts)


def aspired_versions(policy, present):
    """Versions a ModelVersionPolicy wants among the present ones (default: latest 1)."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(policy.specific.versions) & set(present)
    num_versions = policy.latest.num_versions if choice == "latest" else 1
    return set(sorted(present, reverse=True)[:max(num_versions, 1)])


def _load_error(error):
    """The ServingError a failed load reports through GetModelStatus."""
    if isinstance(error, ServingError):
        return error
    if isinstance(error, tf.errors.OpError):
        return error_from_tf(error)
    return ServingError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


class _VersionState:
    __slots__ = ("state", "error", "fingerprint")

    def __init__(self, state, error=None, fingerprint=None):
        self.state = state
        self.error = error
        self.fingerprint = fingerprint


class Model:
    """All versions of one model name.

    `poll()` rescans the base path, loads the versions the policy wants and unloads the rest,
    keeping the newest serving version while no wanted version is available (so a corrupt
    new export never interrupts service). Only the poll thread calls `poll`; request threads
    call `servable`, `version_for_label` and `states`.
    """

    def __init__(self, config, batching=None, enable_warmup=True):
        self.config = config
        self._batching = batching
        self._enable_warmup = enable_warmup
        self._lock = threading.Lock()
        self._serving = {}   # version -> ServableVersion
        self._states = {}    # version -> _VersionState
        self._base_path_missing = False

    @property
    def name(self):
        return self.config.name

    def servable(self, version=None):
        """The version to serve: the given one, or the highest available (NOT_FOUND if none)."""
        with self._lock:
            if version is None:
                if not self._serving:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                return self._serving[max(self._serving)]
            servable = self._serving.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return servable

    def version_for_label(self, label):
        """The version a label of the model's config points at, or None."""
        labels = self.config.version_labels
        return labels[label] if label in labels else None

    def states(self):
        """{version: (ModelVersionStatus.State, ServingError or None)} of every version seen."""
        with self._lock:
            return {v: (s.state, s.error) for v, s in self._states.items()}

    def _set_state(self, version, state, error=None, fingerprint=None):
        with self._lock:
            self._states[version] = _VersionState(state, error, fingerprint)

    def poll(self):
        present = _version_dirs(self.config.base_path)
        if present is None:
            if not self._base_path_missing:
                log.warning("File system storage path source: base path %s for servable %s "
                            "does not exist; keeping what is loaded",
                            self.config.base_path, self.name)
            self._base_path_missing = True
            return
        self._base_path_missing = False
        wanted = aspired_versions(self.config.model_version_policy, present)
        if not present:
            log.warning("No versions of servable %s found under base path %s. Did you forget "
                        "to name your leaf directory as a number (eg. '/1/')?",
                        self.name, self.config.base_path)
        for version in sorted(wanted, reverse=True):
            if version in self._serving:
                continue
            fingerprint = _fingerprint(present[version])
            previous = self._states.get(version)
            if (previous is not None and previous.error is not None
                    and previous.fingerprint == fingerprint):
                continue  # failed before and unchanged since: do not retry every poll
            self._load(version, present[version], fingerprint)
        self._unload_unwanted(wanted)

    def _load(self, version, path, fingerprint):
        log.info("Loading servable: {name: %s version: %d} from %s", self.name, version, path)
        self._set_state(version, _State.LOADING)
        servable = None
        try:
            servable = ServableVersion(self.name, version, path, self._batching)
            if self._enable_warmup:
                servable.warm_up()
        except Exception as error:  # noqa: BLE001 - a bad export must not stop the server
            if servable is not None:
                servable.close()
            self._load_failed(version, _load_error(error), fingerprint)
            return
        with self._lock:
            self._serving[version] = servable
            self._states[version] = _VersionState(_State.AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d}",
                 self.name, version)

    def _load_failed(self, version, error, fingerprint):
        log.error("Loading servable: {name: %s version: %d} failed: %s: %s",
                  self.name, version, error.code.name, error.message)
        self._set_state(version, _State.END, error, fingerprint)

    def _unload_unwanted(self, wanted):
        unwanted = [v for v in self._serving if v not in wanted]
        if not unwanted:
            return
        wanted_serving = any(v in self._serving for v in wanted)
        if not wanted_serving and wanted:
            # TF Serving's availability-preserving policy: keep the newest serving version
            # until a wanted one is available.
            unwanted.remove(max(unwanted))
        for version in unwanted:
            self.unload(version)

    def unload(self, version):
        log.info("Unloading servable version {name: %s version: %d}", self.name, version)
        self._set_state(version, _State.UNLOADING)
        with self._lock:
            servable = self._serving.pop(version)
        servable.close()
        del servable
        gc.collect()
        self._set_state(version, _State.END)

    def unload_all(self):
        for version in sorted(self._serving):
            self.unload(version)


def validate_config(config):
    """Checks a ModelServerConfig this server can serve; raises INVALID_ARGUMENT otherwise."""
    if config.WhichOneof("config") == "custom_model_config":
        raise invalid_argument("custom_model_config is not supported by this server")
    names = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise invalid_argument("A model in model_config_list has no name")
        if model.name in names:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config "
                                   f"list")
        names.add(model.name)
        if not model.base_path:
            raise invalid_argument(f"Model {model.name} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise invalid_argument(
                f"Model {model.name} has model_platform {model.model_platform!r}; this server "
                f"serves TensorFlow SavedModels (model_platform: \"tensorflow\") only")


def single_model_config(model_name, base_path):
    """The ModelServerConfig that --model_name / --model_base_path describe."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = os.path.abspath(base_path)
    model.model_platform = "tensorflow"
    return config


class ServerCore:
    """Models of a ModelServerConfig, kept in sync with their base paths by a poll thread.

    Args:
      config: ModelServerConfig (model_config_list).
      poll_wait_seconds: seconds between rescans of the base paths; <= 0 scans only at
        start and on config reloads.
      batching: `BatchingOptions` for --enable_batching, or None.
      enable_warmup: replay each version's warm-up requests before serving it.
    """

    def __init__(self, config, poll_wait_seconds=1.0, batching=None, enable_warmup=True):
        validate_config(config)
        _import_scann_ops()
        self._poll_wait_seconds = poll_wait_seconds
        self._batching = batching
        self._enable_warmup = enable_warmup
        self._models = {}
        self._retired = []
        self._lock = threading.Lock()
        self._poll_cond = threading.Condition()
        self._config_generation = 0   # bumped by every config change (under _lock)
        self._polled_generation = 0   # the config generation the last full poll saw
        self._poll_requested = False
        self._stopping = False
        self._thread = None
        self._apply_config(config)

    def start(self):
        """Loads the initial versions of every model, then starts the poll thread."""
        self._poll_all()
        self._thread = threading.Thread(target=self._poll_loop, name="model-poller",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        with self._poll_cond:
            self._stopping = True
            self._poll_cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def model_names(self):
        with self._lock:
            return sorted(self._models)

    def reload_config(self, config, timeout=300):
        """Switches to a new ModelServerConfig and waits for one full poll of it.

        New models are loaded, removed models unloaded, changed policies and labels applied.
        """
        validate_config(config)
        generation = self._apply_config(config)
        with self._poll_cond:
            self._poll_requested = True
            self._poll_cond.notify_all()
            if not self._poll_cond.wait_for(
                    lambda: self._polled_generation >= generation or self._stopping, timeout):
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "Timed out waiting for the new model config to load")

    def _apply_config(self, config):
        """Installs a config; returns its generation number."""
        with self._lock:
            self._config_generation += 1
            wanted = {m.name: m for m in config.model_config_list.config}
            for name in list(self._models):
                model = self._models[name]
                new = wanted.get(name)
                if new is None or new.base_path != model.config.base_path:
                    self._retired.append(self._models.pop(name))
                else:
                    model.config = new
            for name, model_config in wanted.items():
                if name not in self._models:
                    self._models[name] = Model(model_config, self._batching,
                                               self._enable_warmup)
            return self._config_generation

    def _poll_all(self):
        with self._lock:
            generation = self._config_generation
            models = list(self._models.values())
            retired, self._retired = self._retired, []
        for model in retired:
            model.unload_all()
        for model in models:
            try:
                model.poll()
            except Exception:  # noqa: BLE001 - the poll thread must survive anything
                log.exception("Polling model %s failed", model.name)
        with self._poll_cond:
            self._polled_generation = generation
            self._poll_cond.notify_all()

    def _poll_loop(self):
        wait = self._poll_wait_seconds if self._poll_wait_seconds > 0 else None
        while True:
            with self._poll_cond:
                self._poll_cond.wait_for(lambda: self._poll_requested or self._stopping, wait)
                if self._stopping:
                    break
                self._poll_requested = False
            self._poll_all()
        with self._lock:
            models = list(self._models.values()) + self._retired
        for model in models:
            model.unload_all()

    def _model(self, name):
        with self._lock:
            return self._models.get(name)

    def servable(self, model_spec):
        """The ServableVersion a ModelSpec asks for (name + version | version_label | latest)."""
        name = model_spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        model = self._model(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = model.version_for_label(model_spec.version_label) if model else None
            if version is None:
                raise invalid_argument(
                    f"Unrecognized servable version label: {model_spec.version_label}")
        elif choice == "version":
            version = model_spec.version.value
        else:
            version = None
        if model is None:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise not_found(f"Servable not found for request: {request}")
        return model.servable(version)

    def model_status(self, model_spec):
        """GetModelStatusResponse for a ModelSpec, as TF Serving's GetModelStatusImpl.

        Like TF Serving, a version_label in the spec is ignored: all versions are listed.
        """
        name = model_spec.name
        model = self._model(name)
        states = model.states() if model is not None else {}
        if model_spec.HasField("version"):
            version = model_spec.version.value
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            versions = [version]
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            versions = sorted(states, reverse=True)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            state, error = states[version]
            status = response.model_version_status.add(version=version, state=state)
            status.status.SetInParent()  # TF Serving always reports a status, OK included
            if error is not None:
                status.status.error_code = error.code.value[0]
                status.status.error_message = error.message
        return response
