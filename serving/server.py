"""A TensorFlow-Serving-2.20-compatible model server: `python -m serving.server` / `tfrec serve`.

Speaks TF Serving's gRPC API (PredictionService, ModelService, from the official
tensorflow-serving-api stubs) and, with --rest_api_port, its REST API. The flags are those of
`tensorflow_model_server`, plus --host:

  python -m serving.server --port=8500 --rest_api_port=8501 \\
      --model_name=ranker --model_base_path=/models/ranker
  python -m serving.server --model_config_file=models.config \\
      --file_system_poll_wait_seconds=1 --enable_batching \\
      --batching_parameters_file=batching.config

Every flag of TF Serving 2.20's tensorflow_model_server is accepted: those this server
implements act (e.g. --grpc_channel_arguments, --rest_api_timeout_in_ms), the others are
ignored with a warning naming them; a flag of neither is an error. An invalid
--model_config_file stops start-up (exit 1) with a message naming the file and the problem.

Once every model's initial versions have been tried, it prints TF Serving's readiness lines
("Running gRPC ModelServer at HOST:PORT ..." and, with REST, "Exporting HTTP/REST API
at:HOST:PORT ..."), then serves until SIGTERM or SIGINT and exits 0. Versions failing to load
are logged and reported by GetModelStatus; the server keeps serving what it has.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import argparse
import functools
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, inference_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from exporters import read_model_config
from serving import inference, monitoring, rest
from serving.batching import BatchingOptions
from serving.errors import ServingError, invalid_argument
from serving.process import exit_process
from serving.rest import DEFAULT_SHUTDOWN_TIMEOUT_SECONDS, RestServer
from serving.servable import metadata_response
from serving.server_core import ServerCore, single_model_config, validate_config
from serving.tensors import message_bytes, release_memory_after

log = logging.getLogger("serving.server")

_MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving lifts gRPC's 4 MB default the same way
_SIGNATURE_DEF_FIELD = "signature_def"


_ERROR_MESSAGE_LIMIT = 1024  # bytes, TF Serving's ToGRPCStatus (grpc_status_util.cc)


def grpc_error_message(message):
    """A status message as TF Serving sends it: cut at 1,024 bytes + "...TRUNCATED" (so that
    it fits in gRPC's 8 KB trailing metadata; a longer one reaches the client as
    RESOURCE_EXHAUSTED "Stream removed"). The cut never splits a UTF-8 character."""
    data = message.encode("utf-8", "replace")
    if len(data) <= _ERROR_MESSAGE_LIMIT:
        return message
    return data[:_ERROR_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"


def _rpc(response_type):
    """Turns ServingError (and anything unexpected, as INTERNAL) into the call's gRPC status."""
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            try:
                return method(self, request, context)
            except ServingError as error:
                context.set_code(error.code)
                context.set_details(grpc_error_message(error.message))
            except Exception as error:  # noqa: BLE001 - no request may take the server down
                log.exception("%s failed", method.__name__)
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details(grpc_error_message(f"{type(error).__name__}: {error}"))
            finally:
                release_memory_after(message_bytes(request))  # a big request, served or not
            return response_type()
        return monitoring.recorded(wrapper)
    return decorate


def _require_model_spec(request):
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over a ServerCore."""

    def __init__(self, core):
        self._core = core

    @_rpc(predict_pb2.PredictResponse)
    def Predict(self, request, context):
        _require_model_spec(request)
        return self._core.servable(request.model_spec).predict_proto(request)

    @_rpc(get_model_metadata_pb2.GetModelMetadataResponse)
    def GetModelMetadata(self, request, context):
        _require_model_spec(request)
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != _SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        return metadata_response(self._core.servable(request.model_spec))

    @_rpc(classification_pb2.ClassificationResponse)
    def Classify(self, request, context):
        _require_model_spec(request)
        return inference.classify(self._core.servable(request.model_spec), request)

    @_rpc(regression_pb2.RegressionResponse)
    def Regress(self, request, context):
        _require_model_spec(request)
        return inference.regress(self._core.servable(request.model_spec), request)

    @_rpc(inference_pb2.MultiInferenceResponse)
    def MultiInference(self, request, context):
        return inference.multi_inference(self._core, request)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService over a ServerCore."""

    def __init__(self, core):
        self._core = core

    @_rpc(get_model_status_pb2.GetModelStatusResponse)
    def GetModelStatus(self, request, context):
        _require_model_spec(request)
        return self._core.model_status(request.model_spec)

    @_rpc(model_management_pb2.ReloadConfigResponse)
    def HandleReloadConfigRequest(self, request, context):
        log.info("Reloading the model config (%d models)",
                 len(request.config.model_config_list.config))
        self._core.reload_config(request.config)
        return model_management_pb2.ReloadConfigResponse()


def _bool_flag(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# Flags of TF Serving 2.20's tensorflow_model_server (model_servers/main.cc) that this server
# accepts, so that scripts and manifests written for it start, but does not act on: a warning
# names each one given. name -> argparse type (_bool_flag flags may be given without a value).
_IGNORED_TF_SERVING_FLAGS = {
    "grpc_socket_path": str,
    "rest_api_enable_cors_support": _bool_flag,
    "enable_per_model_batching_parameters": _bool_flag,
    "num_unload_threads": int,
    "flush_filesystem_caches": _bool_flag,
    "tensorflow_session_parallelism": int,
    "tensorflow_session_config_file": str,
    "tensorflow_intra_op_parallelism": int,
    "tensorflow_inter_op_parallelism": int,
    "use_alts_credentials": _bool_flag,
    "ssl_config_file": str,
    "platform_config_file": str,
    "per_process_gpu_memory_fraction": float,
    "num_request_iterations_for_warmup": int,
    "remove_unused_fields_from_bundle_metagraph": _bool_flag,
    "prefer_tflite_model": _bool_flag,
    "num_tflite_pools": int,
    "num_tflite_interpreters_per_pool": int,
    "xla_cpu_compilation_enabled": _bool_flag,
    "xla_gpu_compilation_enabled": _bool_flag,
    "enable_profiler": _bool_flag,
    "thread_pool_factory_config_file": str,
    "mixed_precision": str,
    "skip_initialize_tpu": _bool_flag,
    "enable_grpc_healthcheck_service": _bool_flag,
    "enable_serialization_as_tensor_content": _bool_flag,
}
_VERSION_TEXT = "TensorFlow ModelServer: 2.20.0 (tfrec serving.server, compatible)"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help gives each flag's default, where it has one that its help text does not give."""

    def _get_help_string(self, action):
        if action.default in ("", None) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _ArgumentParser(argparse.ArgumentParser):
    """Says that an unrecognized flag is not a tensorflow_model_server flag either."""

    def error(self, message):
        if message.startswith("unrecognized arguments"):
            message += (" (neither a flag of this server nor of TF Serving 2.20's "
                        "tensorflow_model_server)")
        super().error(message)


def _grpc_channel_arguments(text):
    """--grpc_channel_arguments "k1=v1,k2=v2" as gRPC server options; values that parse as
    integers are passed as integers, as tensorflow_model_server does."""
    options = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...], got {item!r}")
        value = value.strip()
        try:
            options.append((key.strip(), int(value)))
        except ValueError:
            options.append((key.strip(), value))
    return options


def _add_bool(parser, name, default, help_text):
    parser.add_argument(f"--{name}", type=_bool_flag, nargs="?", const=True, default=default,
                        help=help_text)


def build_arg_parser():
    parser = _ArgumentParser(
        prog="serving.server", allow_abbrev=False, formatter_class=_HelpFormatter,
        description="TensorFlow-Serving-compatible model server (gRPC + REST) for SavedModels.",
        epilog="Also accepted, for compatibility with tensorflow_model_server, and ignored with "
               "a warning: " + ", ".join(f"--{name}" for name in sorted(_IGNORED_TF_SERVING_FLAGS))
               + ". Any other flag is an error.")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=0,
                        help="REST API port; 0 (default) disables REST")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--model_name", default="default",
                        help="name of the model served from --model_base_path")
    parser.add_argument("--model_base_path", default="",
                        help="directory holding the model's numeric version directories")
    parser.add_argument("--model_config_file", default="",
                        help="text-format ModelServerConfig; overrides --model_name and "
                             "--model_base_path")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0,
                        help="reload --model_config_file when it changes, checking this "
                             "often; 0 (default) reads it once")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1,
                        help="seconds between scans of the base paths for new versions; "
                             "<= 0 scans once")
    parser.add_argument("--enable_batching", type=_bool_flag, nargs="?", const=True,
                        default=False, help="batch concurrent Predict requests")
    parser.add_argument("--batching_parameters_file", default="",
                        help="text-format BatchingParameters for --enable_batching")
    parser.add_argument("--enable_model_warmup", type=_bool_flag, nargs="?", const=True,
                        default=True,
                        help="replay assets.extra/tf_serving_warmup_requests on load")
    parser.add_argument("--allow_version_labels_for_unavailable_models", type=_bool_flag,
                        nargs="?", const=True, default=False,
                        help="let the start-up config, or a config reload, point a new label (or one "
                             "keeping its version) at a version that is not AVAILABLE (requests by that "
                             "label get NOT_FOUND until it is); moving a label to one, and with false any "
                             "such label (the start fails), is refused with FAILED_PRECONDITION")
    parser.add_argument("--grpc_max_threads", type=int, default=32,
                        help="threads answering gRPC calls")
    parser.add_argument("--grpc_channel_arguments", type=_grpc_channel_arguments, default=[],
                        help="comma-separated KEY=VALUE gRPC server arguments, e.g. "
                             "grpc.max_connection_age_ms=2000")
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=0,
                        help="deadline of each REST request: a body not received by then "
                             "drops the request (connection closed), an answer not ready by "
                             "then is 504 DEADLINE_EXCEEDED; 0 (default) no deadline")
    parser.add_argument("--shutdown_grace_seconds", type=float, default=DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
                        help="on SIGTERM/SIGINT, new calls are refused and calls in flight get this "
                             "long to finish (gRPC and REST alike) before they are cancelled")
    parser.add_argument("--rest_api_num_threads", type=int, default=0,
                        help="threads running REST requests; 0 (default) as many as "
                             "--grpc_max_threads")
    parser.add_argument("--rest_api_max_body_bytes", type=int,
                        default=rest.DEFAULT_MAX_BODY_BYTES,
                        help="tfrec: largest REST request body; a larger one is answered 413 "
                             "with a JSON error (default 256 MiB)")
    parser.add_argument("--rest_api_read_timeout_in_ms", type=int,
                        default=int(rest.DEFAULT_READ_TIMEOUT_SECONDS * 1000),
                        help="tfrec: a REST connection that takes longer to send a whole "
                             "request or to read a whole answer, or idles longer between "
                             "requests, is closed (default 60000)")
    parser.add_argument("--monitoring_config_file", default="",
                        help="text-format MonitoringConfig; with prometheus_config { enable: "
                             "true } the REST port serves Prometheus metrics at its path")
    parser.add_argument("--saved_model_tags", default="serve",
                        help="tags of the MetaGraphDef to load; only \"serve\" is supported")
    parser.add_argument("--max_num_load_retries", type=int, default=5,
                        help="times a failed version load is retried (TF Serving's default "
                             "5); meanwhile GetModelStatus shows the failure and the previous "
                             "version keeps serving")
    parser.add_argument("--load_retry_interval_micros", type=int, default=60 * 1000 * 1000,
                        help="microseconds between load retries (default one minute)")
    parser.add_argument("--num_load_threads", type=int, default=0,
                        help="threads that poll and load the models, each model's on one thread "
                             "at a time, so one model's slow (or stuck) load does not hold back "
                             "the others; 0 (default, as TF Serving) loads them one after another")
    parser.add_argument("--max_request_elements", type=int, default=None,
                        help="tfrec: the elements all input tensors of one request may hold "
                             "together, checked from their shapes before decoding "
                             "(INVALID_ARGUMENT beyond); default: the machine's memory (or "
                             "its container's limit) / 4096 bytes, at least 2^20")
    _add_bool(parser, "enable_signature_method_name_check", False,
              "Classify / Regress accept only signatures whose method_name is classify / "
              "regress (TF Serving's default: off)")
    _add_bool(parser, "version", False, "print the version and exit")
    ignored = parser.add_argument_group(
        "tensorflow_model_server flags accepted for compatibility and ignored (a warning "
        "names each one given)")
    for name, kind in sorted(_IGNORED_TF_SERVING_FLAGS.items()):
        if kind is _bool_flag:
            ignored.add_argument(f"--{name}", type=_bool_flag, nargs="?", const=True,
                                 default=None, help=argparse.SUPPRESS)
        else:
            ignored.add_argument(f"--{name}", type=kind, default=None, help=argparse.SUPPRESS)
    return parser


def _check_flags(args):
    """Warns about the TF Serving flags given that this server ignores; returns an error
    message for a flag value it cannot honour, else None."""
    for name in sorted(_IGNORED_TF_SERVING_FLAGS):
        value = getattr(args, name)
        if value is not None:
            log.warning("Flag --%s=%s is a tensorflow_model_server flag this server does not "
                        "implement; it is ignored", name, value)
    tags = {tag.strip() for tag in args.saved_model_tags.split(",") if tag.strip()}
    if tags != {"serve"}:
        return (f"--saved_model_tags={args.saved_model_tags}: this server loads the "
                f"MetaGraphDef tagged \"serve\" only")
    if args.max_num_load_retries < 0 or args.load_retry_interval_micros < 0:
        return "--max_num_load_retries and --load_retry_interval_micros must not be negative"
    if args.num_load_threads < 0:
        return f"--num_load_threads must not be negative, got {args.num_load_threads}"
    if args.max_request_elements is not None and args.max_request_elements < 1:
        return f"--max_request_elements must be positive, got {args.max_request_elements}"
    if args.rest_api_timeout_in_ms < 0:
        return f"--rest_api_timeout_in_ms must not be negative, got {args.rest_api_timeout_in_ms}"
    if args.rest_api_num_threads < 0 or args.rest_api_read_timeout_in_ms < 0:
        return "--rest_api_num_threads and --rest_api_read_timeout_in_ms must not be negative"
    if args.rest_api_max_body_bytes < 1:
        return f"--rest_api_max_body_bytes must be positive, got {args.rest_api_max_body_bytes}"
    return None


class ModelConfigFileError(ValueError):
    """A --model_config_file that cannot be read, parsed or served; the message names it."""


def read_model_config_file(path):
    """Parses and checks a text-format ModelServerConfig file; a relative base path is refused,
    as tensorflow_model_server refuses it (INVALID_ARGUMENT).

    Raises ModelConfigFileError naming the file and the problem (missing or unreadable file,
    text that is not a ModelServerConfig, a model without name or base_path, ...)."""
    def fail(problem):
        return ModelConfigFileError(f"Invalid model config file {path!r}: {problem}")

    try:
        config = read_model_config(path)
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read it: {error}") from None
    except ValueError as error:  # not a text-format ModelServerConfig
        raise fail(str(error)) from None
    if config.WhichOneof("config") is None:
        raise fail("it has no model_config_list")
    for index, model in enumerate(config.model_config_list.config):
        if not model.base_path:
            raise fail(f"model {model.name or f'#{index + 1}'!r} has no base_path")
    try:
        validate_config(config)
    except ServingError as error:
        raise fail(error.message) from None
    return config


def _batching_options(args):
    if not args.enable_batching:
        if args.batching_parameters_file:
            log.warning("--batching_parameters_file is ignored without --enable_batching")
        return None
    if not args.batching_parameters_file:
        return BatchingOptions()
    with open(args.batching_parameters_file) as f:
        return BatchingOptions.from_text(f.read(), source=args.batching_parameters_file)


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _announce(line):
    print(line, flush=True)
    log.info(line)


class _ConfigFileWatcher:
    """Reloads the model config file into the core whenever its modification time changes."""

    def __init__(self, path, core, interval):
        self._path = path
        self._core = core
        self._interval = interval
        self._stop = threading.Event()
        self._mtime = self._modified()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def _modified(self):
        try:
            return os.stat(self._path).st_mtime_ns
        except OSError:
            return None

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self):
        while not self._stop.wait(self._interval):
            mtime = self._modified()
            if mtime is None or mtime == self._mtime:
                continue
            self._mtime = mtime
            try:
                self._core.reload_config(read_model_config_file(self._path))
                log.info("Reloaded model config from %s", self._path)
            except Exception as error:  # noqa: BLE001 - keep serving the old config
                log.error("Cannot reload model config %s: %s", self._path, error)


def _build_core(args):
    """The ServerCore the flags describe (models not loaded yet)."""
    if args.model_config_file:
        config = read_model_config_file(args.model_config_file)
    else:
        config = single_model_config(args.model_name, args.model_base_path)
    batching = _batching_options(args)
    if batching is not None:
        log.info("Batching enabled: %s", batching)
    return ServerCore(config, args.file_system_poll_wait_seconds, batching,
                      args.enable_model_warmup,
                      max_request_elements=args.max_request_elements,
                      max_num_load_retries=args.max_num_load_retries,
                      load_retry_interval=args.load_retry_interval_micros / 1e6,
                      allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
                      num_load_threads=args.num_load_threads)


def _start_grpc(core, args):
    """Starts the gRPC services; returns (server, bound port). OSError if it cannot bind."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads,
                                   thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                 # A port another server holds must be an error, not silently shared.
                 ("grpc.so_reuseport", 0)] + list(args.grpc_channel_arguments))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), server)
    address = _address(args.host, args.port)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise OSError(f"cannot bind gRPC to {address}")
    server.start()
    return server, port


def _stop_event_on_signals():
    """An Event set by SIGTERM / SIGINT (when called from the main thread)."""
    stop = threading.Event()

    def request_stop(signum, frame):
        log.info("Received signal %d, shutting down", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    return stop


def main(argv=None):
    """Runs the server until SIGTERM/SIGINT; returns the process exit code."""
    args = build_arg_parser().parse_args(argv)
    if args.version:
        print(_VERSION_TEXT, flush=True)
        return 0
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s: %(levelname).1s %(threadName)s %(name)s] %(message)s")
    problem = _check_flags(args)
    if problem:
        log.error("Failed to start server. Error: %s", problem)
        return 2
    if not args.model_config_file and not args.model_base_path:
        log.error("Either --model_config_file or --model_base_path must be given")
        return 2
    try:
        monitoring_config = (monitoring.read_monitoring_config_file(args.monitoring_config_file)
                             if args.monitoring_config_file else None)
        core = _build_core(args)
    except (OSError, ValueError, ServingError) as error:
        log.error("Failed to start server. Error: %s", error)
        return 1
    inference.set_signature_method_name_check(args.enable_signature_method_name_check)
    monitoring.METRICS.set_core(core)
    metrics_path = monitoring.prometheus_path(monitoring_config)
    if metrics_path and not args.rest_api_port:
        log.warning("--monitoring_config_file enables Prometheus metrics, which are served on "
                    "the REST port: give --rest_api_port to see them")
    stop = _stop_event_on_signals()
    core.start()  # readiness is announced only after the initial loads
    grpc_server = rest_server = watcher = None
    status = 0
    try:
        # As tensorflow_model_server: a configured model none of whose versions can load
        # (after the load retries) fails the start, so a deployment that gates on the
        # process never sees a server that serves nothing; nor does a label of the config
        # file that names a version which did not load.
        core.wait_until_started(stop=stop)
        if not stop.is_set():
            grpc_server, port = _start_grpc(core, args)
            _announce(f"Running gRPC ModelServer at {_address(args.host, port)} ...")
            if args.rest_api_port:
                try:
                    rest_server = RestServer(
                        core, args.host, args.rest_api_port,
                        timeout=args.rest_api_timeout_in_ms / 1000 or None,
                        max_body_bytes=args.rest_api_max_body_bytes,
                        read_timeout=args.rest_api_read_timeout_in_ms / 1000 or None,
                        num_threads=args.rest_api_num_threads or args.grpc_max_threads,
                        metrics_path=metrics_path, shutdown_timeout=args.shutdown_grace_seconds)
                except OSError as error:
                    raise OSError(f"cannot bind HTTP/REST to "
                                  f"{_address(args.host, args.rest_api_port)}: {error}") from None
                rest_server.start()
                _announce(f"Exporting HTTP/REST API at:"
                          f"{_address(args.host, rest_server.port)} ...")
            if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
                watcher = _ConfigFileWatcher(args.model_config_file, core,
                                             args.model_config_file_poll_wait_seconds)
                watcher.start()
        while not stop.wait(0.5):
            pass
    except (OSError, ServingError) as error:
        log.error("Failed to start server. Error: %s", error)
        status = 1
    finally:
        stopping = time.monotonic()
        if watcher is not None:
            watcher.stop()
        # Both stop accepting at once; then each waits for its calls in flight, up to the grace.
        grpc_stopped = grpc_server.stop(grace=args.shutdown_grace_seconds) if grpc_server is not None else None
        if rest_server is not None:
            rest_server.stop()
        if grpc_stopped is not None:
            grpc_stopped.wait()
        threads_ended = core.stop(timeout=max(1.0, args.shutdown_grace_seconds - (time.monotonic() - stopping)))
    if status == 0:
        log.info("Server stopped")
    if not threads_ended:  # a load still in a read that never returns: Python would wait for it at exit
        exit_process(status)
    return status


if __name__ == "__main__":
    exit_process(main())
