"""Prometheus metrics of the model server, as TF Serving's --monitoring_config_file gives them.

A text-format `tensorflow.serving.MonitoringConfig` file such as

    prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }

makes the REST port answer that path with the Prometheus text exposition of this server's
metrics (TF Serving's default path when `path` is empty). Metric names follow TF Serving's
exporter (tensorflow_serving/util/prometheus_exporter.cc: the TF metric name with '/' turned
into ':'):

  :tensorflow:serving:request_count{model_name,status}
      counter of Predict / Classify / Regress calls (gRPC and REST) by their status code name
      ("OK", "INVALID_ARGUMENT", ...), as TF Serving's RecordModelRequestCount.
  :tensorflow:serving:request_latency{model_name,API,entrypoint}
      histogram of the wall time of the successful ones, in microseconds, with TF Serving's
      buckets (10 * 1.8^i, i < 33); API "Predict"/"Classify"/"Regress" and entrypoint "GRPC",
      or the REST verb ("predict", "classify", "regress") and entrypoint "REST".

and, where TF Serving has no metric of its own (named under :tfrec:serving: so that no one
takes them for TF Serving's):

  :tfrec:serving:api_request_count{model_name,API,entrypoint,status}
      every gRPC and REST call, metadata and status included.
  :tfrec:serving:model_version_state{model_name,version,state}
      1 for each version the server knows, labelled with its ModelVersionStatus state
      (LOADING, AVAILABLE, UNLOADING, END).

A model name that the server does not serve is recorded as model_name="" so that requests for
random names cannot grow the metrics without bound.

`Metrics.observe(...)` records one call; `Metrics.exposition()` is the page. The gRPC services
record into `METRICS`, the process-wide instance, which the REST server exposes.
"""
import functools
import logging
import threading
import time

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from tensorflow_serving.apis import get_model_status_pb2, model_pb2

log = logging.getLogger("serving.monitoring")

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
API_REQUEST_COUNT = ":tfrec:serving:api_request_count"
MODEL_VERSION_STATE = ":tfrec:serving:model_version_state"

# monitoring::Buckets::Exponential(10, 1.8, 33): upper bounds in microseconds, then +Inf.
LATENCY_BUCKETS_MICROS = tuple(10.0 * 1.8 ** i for i in range(33))
# The calls TF Serving counts in request_count and times in request_latency.
INFERENCE_APIS = frozenset({"Predict", "Classify", "Regress", "predict", "classify", "regress"})

_State = get_model_status_pb2.ModelVersionStatus.State


def _monitoring_config_class():
    """tensorflow.serving.MonitoringConfig (tensorflow_serving/config/monitoring_config.proto).

    The tensorflow-serving-api wheel does not ship monitoring_config_pb2, so the two messages
    are declared here, field for field, unless some other module registered them already.
    """
    try:
        from tensorflow_serving.config import monitoring_config_pb2
        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(
            pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    field = descriptor_pb2.FieldDescriptorProto
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL,
                         label=field.LABEL_OPTIONAL, json_name="enable")
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING,
                         label=field.LABEL_OPTIONAL, json_name="path")
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=field.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=field.LABEL_OPTIONAL, json_name="prometheusConfig")
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


MonitoringConfig = _monitoring_config_class()


class MonitoringConfigFileError(ValueError):
    """A --monitoring_config_file that cannot be read or parsed; the message names it."""


def read_monitoring_config_file(path):
    """Parses a text-format MonitoringConfig file; MonitoringConfigFileError naming the file
    and the problem otherwise."""
    def fail(problem):
        return MonitoringConfigFileError(f"Invalid monitoring config file {path!r}: {problem}")

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read it: {error}") from None
    try:
        config = text_format.Parse(text, MonitoringConfig())
    except text_format.ParseError as error:
        raise fail(f"not a text-format MonitoringConfig: {error}") from None
    path_value = config.prometheus_config.path
    if config.prometheus_config.enable and path_value and not path_value.startswith("/"):
        raise fail(f"prometheus_config.path must start with '/', got {path_value!r}")
    return config


def prometheus_path(config):
    """The path the REST port serves metrics at, or None when Prometheus export is off."""
    if config is None or not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def _status_name(status):
    """"OK", "INVALID_ARGUMENT", ... of a grpc.StatusCode (or a name already)."""
    return status if isinstance(status, str) else status.name


def _format_bound(bound):
    """A bucket bound as TF Serving prints it (absl::StrCat of a double: 6 digits)."""
    return "%.6g" % bound


class _Histogram:
    __slots__ = ("buckets", "total")

    def __init__(self):
        self.buckets = [0] * (len(LATENCY_BUCKETS_MICROS) + 1)
        self.total = 0.0

    def add(self, micros):
        index = len(LATENCY_BUCKETS_MICROS)
        for i, bound in enumerate(LATENCY_BUCKETS_MICROS):
            if micros <= bound:
                index = i
                break
        self.buckets[index] += 1
        self.total += micros


class Metrics:
    """The server's request and model-state metrics, in their own CollectorRegistry.

    Args:
      core: the ServerCore whose model versions are reported (or set later with `set_core`);
        it also decides which model names are known.
    """

    def __init__(self, core=None):
        self._core = core
        self._lock = threading.Lock()
        self._request_counts = {}   # (model_name, status) -> n
        self._api_counts = {}       # (model_name, API, entrypoint, status) -> n
        self._latencies = {}        # (model_name, API, entrypoint) -> _Histogram
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def set_core(self, core):
        self._core = core

    def _known_name(self, model_name):
        core = self._core
        if core is None or not model_name:
            return model_name or ""
        try:
            return model_name if model_name in core.model_names() else ""
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            return ""

    def observe(self, model_name, api, status, seconds, entrypoint="GRPC"):
        """Records one call: `api` its method ("Predict", "GetModelMetadata", the REST verb
        "predict", ...), `status` a grpc.StatusCode or its name, `seconds` its wall time."""
        name = self._known_name(model_name)
        status = _status_name(status)
        with self._lock:
            key = (name, api, entrypoint, status)
            self._api_counts[key] = self._api_counts.get(key, 0) + 1
            if api in INFERENCE_APIS:
                self._request_counts[(name, status)] = (
                    self._request_counts.get((name, status), 0) + 1)
                if status == "OK":
                    histogram = self._latencies.get((name, api, entrypoint))
                    if histogram is None:
                        histogram = self._latencies[(name, api, entrypoint)] = _Histogram()
                    histogram.add(seconds * 1e6)

    def exposition(self):
        """The Prometheus text page (bytes)."""
        return generate_latest(self.registry)

    # -- read by _Collector -------------------------------------------------------------

    def _snapshot(self):
        with self._lock:
            return (dict(self._request_counts), dict(self._api_counts),
                    {key: (list(h.buckets), h.total) for key, h in self._latencies.items()})

    def _version_states(self):
        """[(model_name, version, state name)] of every version the core knows."""
        core = self._core
        if core is None:
            return []
        states = []
        for name in core.model_names():
            try:
                response = core.model_status(model_pb2.ModelSpec(name=name))
            except Exception:  # noqa: BLE001 - a model without versions yet
                continue
            for status in response.model_version_status:
                states.append((name, status.version, _State.Name(status.state)))
        return states


class _Collector:
    """Builds the metric families from a Metrics object at each scrape."""

    def __init__(self, metrics):
        self._metrics = metrics

    def collect(self):
        request_counts, api_counts, latencies = self._metrics._snapshot()
        family = Metric(REQUEST_COUNT, "The total number of requests.", "counter")
        for (name, status), count in sorted(request_counts.items()):
            family.add_sample(REQUEST_COUNT, {"model_name": name, "status": status}, count)
        yield family

        family = Metric(REQUEST_LATENCY, "Distribution of wall time (in microseconds) for "
                                         "Tensorflow Serving request.", "histogram")
        for (name, api, entrypoint), (buckets, total) in sorted(latencies.items()):
            labels = {"model_name": name, "API": api, "entrypoint": entrypoint}
            cumulative = 0
            for i, count in enumerate(buckets):
                cumulative += count
                bound = (_format_bound(LATENCY_BUCKETS_MICROS[i])
                         if i < len(LATENCY_BUCKETS_MICROS) else "+Inf")
                family.add_sample(REQUEST_LATENCY + "_bucket", dict(labels, le=bound),
                                  cumulative)
            family.add_sample(REQUEST_LATENCY + "_sum", labels, total)
            family.add_sample(REQUEST_LATENCY + "_count", labels, cumulative)
        yield family

        family = Metric(API_REQUEST_COUNT, "Every gRPC and REST call, by model, method, "
                                           "entry point and status.", "counter")
        for (name, api, entrypoint, status), count in sorted(api_counts.items()):
            family.add_sample(API_REQUEST_COUNT, {"model_name": name, "API": api,
                                                  "entrypoint": entrypoint, "status": status},
                              count)
        yield family

        family = Metric(MODEL_VERSION_STATE, "1 for each model version, labelled with its "
                                             "state (GetModelStatus).", "gauge")
        try:
            states = self._metrics._version_states()
        except Exception:  # noqa: BLE001 - a scrape must not fail on a core mid-reload
            log.exception("Cannot read the model version states")
            states = []
        for name, version, state in states:
            family.add_sample(MODEL_VERSION_STATE, {"model_name": name, "version": str(version),
                                                    "state": state}, 1)
        yield family


METRICS = Metrics()
"""The process-wide metrics the gRPC services and the REST server record into."""


def _request_model_name(request):
    spec = getattr(request, "model_spec", None)
    if spec is None:
        tasks = getattr(request, "tasks", None)  # MultiInferenceRequest
        spec = tasks[0].model_spec if tasks else None
    return spec.name if spec is not None else ""


def _status_of(context):
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - a context without code() (tests' fakes)
        code = None
    return code if code is not None else "OK"


def recorded(rpc):
    """Wraps a gRPC servicer method `rpc(self, request, context)` (one that sets its failure
    on the context rather than raising) so that each call is recorded in METRICS: the model
    of the request's model_spec, the method's name as API, the code set on the context, the
    wall time."""
    api = rpc.__name__

    @functools.wraps(rpc)
    def wrapper(self, request, context):
        started = time.monotonic()
        try:
            return rpc(self, request, context)
        finally:
            try:
                METRICS.observe(_request_model_name(request), api, _status_of(context),
                                time.monotonic() - started, entrypoint="GRPC")
            except Exception:  # noqa: BLE001 - metrics never fail a call
                log.exception("Recording metrics of %s failed", api)
    return wrapper
