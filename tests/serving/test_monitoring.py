"""--monitoring_config_file: Prometheus metrics on the REST port, with TF Serving's names.

One `python -m serving.server` subprocess with a MonitoringConfig takes good and bad gRPC and
REST requests; a scrape of the metrics path counts them by model and status, has the latency
histogram's buckets, and shows each model version's state. A bad monitoring config file stops
start-up naming the file.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import json
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving import Client, LocalServer, ServingError
from serving.monitoring import LATENCY_BUCKETS_MICROS, Metrics, read_monitoring_config_file
from tests.serving.saved_models import toy_request
from tests.serving.start_up import start_in_process

METRICS_PATH = "/monitoring/prometheus/metrics"
X = [[1.0, 2.0, 3.0]]


@pytest.fixture(scope="module")
def server(saved_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("monitoring")
    config = work / "monitoring.config"
    config.write_text(f'prometheus_config {{\n  enable: true\n  path: "{METRICS_PATH}"\n}}\n')
    with LocalServer(model_base_path=str(saved_models / "toy"), model_name="toy",
                     extra_args=(f"--monitoring_config_file={config}",)) as running:
        yield running


def rest(server, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=data,
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def scrape(server):
    """{(sample name, frozenset of label items): value} of the metrics page."""
    status, headers, text = rest(server, METRICS_PATH)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0)


def test_scrape_counts_requests_by_model_and_status(server):
    before = scrape(server)
    with Client(server.grpc_target) as client:
        for _ in range(3):
            client.predict("toy", {"x": X, "tag": ["a"]})
        with pytest.raises(ServingError):
            client.predict("toy", {"x": X})  # missing input
        client.metadata("toy")
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(toy_request(X, [b"a"], model_name="no_such_model"), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2):
        assert rest(server, "/v1/models/toy:predict",
                    {"instances": [{"x": [1, 2, 3], "tag": "a"}]})[0] == 200
    assert rest(server, "/v1/models/toy:predict", {"instances": [{"x": "bad"}]})[0] == 400
    assert rest(server, "/v1/models/toy/versions/7:predict", {"instances": [1.0]})[0] == 404
    assert rest(server, "/v1/models/toy")[0] == 200
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    count = ":tensorflow:serving:request_count"
    assert delta(count, model_name="toy", status="OK") == 5
    assert delta(count, model_name="toy", status="INVALID_ARGUMENT") == 2
    assert delta(count, model_name="toy", status="NOT_FOUND") == 1
    assert delta(count, model_name="", status="NOT_FOUND") == 1  # a model it does not serve
    api = ":tfrec:serving:api_request_count"
    assert delta(api, model_name="toy", API="Predict", entrypoint="GRPC", status="OK") == 3
    assert delta(api, model_name="toy", API="GetModelMetadata", entrypoint="GRPC",
                 status="OK") >= 1
    assert delta(api, model_name="toy", API="predict", entrypoint="REST", status="OK") == 2
    assert delta(api, model_name="toy", API="status", entrypoint="REST", status="OK") == 1

    latency = ":tensorflow:serving:request_latency"
    grpc_labels = {"model_name": "toy", "API": "Predict", "entrypoint": "GRPC"}
    assert delta(latency + "_count", **grpc_labels) == 3  # successful calls only, as TF Serving
    assert delta(latency + "_sum", **grpc_labels) > 0
    buckets = [key for key in after if key[0] == latency + "_bucket"
               and set(grpc_labels.items()) <= key[1]]
    assert len(buckets) == len(LATENCY_BUCKETS_MICROS) + 1
    bounds = sorted(float(dict(labels)["le"]) for _, labels in buckets)
    assert bounds[0] == 10 and bounds[-1] == float("inf")
    assert value(after, latency + "_bucket", le="+Inf", **grpc_labels) == value(
        after, latency + "_count", **grpc_labels)
    rest_labels = {"model_name": "toy", "API": "predict", "entrypoint": "REST"}
    assert delta(latency + "_count", **rest_labels) == 2


def test_scrape_shows_each_version_state(server):
    samples = scrape(server)
    assert value(samples, ":tfrec:serving:model_version_state", model_name="toy", version="2",
                 state="AVAILABLE") == 1


def test_page_uses_tf_serving_metric_names(server):
    _, _, text = rest(server, METRICS_PATH)
    lines = text.decode().splitlines()
    assert any(line.startswith(':tensorflow:serving:request_count{model_name="toy",'
                               'status="OK"} ') for line in lines)
    assert "# TYPE :tensorflow:serving:request_latency histogram" in lines


def test_metrics_path_is_the_configured_one_only(server):
    assert rest(server, "/monitoring/prometheus/other")[0] == 404
    status, _, body = rest(server, "/v1/models/toy")
    assert status == 200 and json.loads(body)["model_version_status"]


@pytest.mark.parametrize("text, problem", [
    (None, "no such file"),
    ("prometheus_config { enable: yes_please }", "not a text-format MonitoringConfig"),
    ('prometheus_config { enable: true path: "metrics" }', "must start with '/'"),
])
def test_bad_monitoring_config_file_fails_start_up_naming_it(tmp_path, text, problem):
    path = tmp_path / "monitoring.config"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError) as info:
        read_monitoring_config_file(str(path))
    assert f"Invalid monitoring config file '{path}': " in str(info.value)
    assert problem in str(info.value)


def test_bad_monitoring_config_file_stops_the_server(tmp_path, capsys, caplog):
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { nope: 1 }")
    code, output = start_in_process(capsys, caplog, f"--model_base_path={tmp_path}",
                                    f"--monitoring_config_file={path}")
    assert code == 1
    assert f"Failed to start server. Error: Invalid monitoring config file '{path}': " in output
    assert "Running gRPC ModelServer" not in output


def test_metrics_keep_unknown_model_names_out():
    class Core:
        def model_names(self):
            return ["a"]

    metrics = Metrics(Core())
    for index in range(100):
        metrics.observe(f"random{index}", "Predict", grpc.StatusCode.NOT_FOUND, 0.001)
    metrics.observe("a", "Predict", grpc.StatusCode.OK, 0.001)
    counts, _, latencies = metrics._snapshot()
    assert counts == {("", "NOT_FOUND"): 100, ("a", "OK"): 1}
    assert list(latencies) == [("a", "Predict", "GRPC")]
