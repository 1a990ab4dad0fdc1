"""Classify, Regress and MultiInference with TF Serving 2.20's semantics, exercised as a
client written only against the official stubs and plain HTTP would: against a TF1
Estimator-style export (estimator/1), TF2 tf.Example signatures (example_tf2/1), a predict-only
TF2 model (toy/2) and a tfrec DIN export (its classify / regress signatures)."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import json

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving import Client, LocalServer, RestClient, ServingError, inference
from serving.json_examples import example_from_dict, rest_classify, rest_regress
from serving.server_core import ServerCore
from serving.tensors import ndarray_from_proto, ndarray_to_proto
from tests.serving.rest_helpers import rest_call
from tests.serving.saved_models import estimator_probability, example_tf2_probability

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
X = [[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0]]


def models_config(root, names):
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        model = config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = name, str(root / name), "tensorflow"
    return config


@pytest.fixture(scope="module")
def server(saved_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("inference") / "models.config"
    path.write_text(str(models_config(saved_models, ["estimator", "example_tf2", "toy"])))
    with LocalServer(model_config_file=str(path), poll_wait_seconds=30) as running:
        yield running


def examples(rows):
    return [example_from_dict(row) for row in rows]


def x_rows(values=X):
    return [{"x": [float(v) for v in row]} for row in values]


def classify_request(model, signature="", rows=None, context=None):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if context is not None:
        request.input.example_list_with_context.context.CopyFrom(example_from_dict(context))
        request.input.example_list_with_context.examples.extend(examples(rows or []))
    elif rows:
        request.input.example_list.examples.extend(examples(rows))
    return request


def regress_request(model, signature="", rows=None):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if rows:
        request.input.example_list.examples.extend(examples(rows))
    return request


def grpc_error(call, request):
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    return raised.value.code(), raised.value.details()


def scores_of(result):
    return np.array([[c.score for c in item.classes] for item in result.classifications],
                    np.float32)


# ---------------------------------------------------------------- gRPC, TF2 signatures


def test_classify_and_regress_tf2_example_signatures(stub):
    expected = [example_tf2_probability(row) for row in X]
    response = stub.Classify(classify_request("example_tf2", "classify", x_rows()), timeout=30)
    assert (response.model_spec.name, response.model_spec.signature_name,
            response.model_spec.version.value) == ("example_tf2", "classify", 1)
    scores = scores_of(response.result)
    np.testing.assert_allclose(scores[:, 1], expected, rtol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)
    assert {c.label for item in response.result.classifications for c in item.classes} == {
        "0", "1"}

    response = stub.Regress(regress_request("example_tf2", "regress", x_rows()), timeout=30)
    assert response.model_spec.signature_name == "regress"
    np.testing.assert_allclose([r.value for r in response.result.regressions], expected,
                               rtol=1e-6)


def test_multi_inference_runs_every_task_on_the_same_examples(stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("classification", CLASSIFY), ("regression", REGRESS)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "estimator"
        task.model_spec.signature_name = signature
    request.input.example_list_with_context.context.CopyFrom(example_from_dict({"n": 1}))
    request.input.example_list_with_context.examples.extend(examples(x_rows()))
    response = stub.MultiInference(request, timeout=30)
    expected = [estimator_probability(row, 1) for row in X]
    classification, regression = response.results
    assert (classification.model_spec.signature_name, classification.model_spec.version.value,
            regression.model_spec.signature_name) == ("classification", 1, "regression")
    np.testing.assert_allclose(scores_of(classification.classification_result)[:, 1], expected,
                               rtol=1e-6)
    np.testing.assert_allclose([r.value for r in regression.regression_result.regressions],
                               expected, rtol=1e-6)


# ---------------------------------------------------------------- gRPC error codes


def test_classify_refuses_what_tf_serving_refuses(stub):
    code, message = grpc_error(stub.Classify, classify_request("toy", "", x_rows()))
    assert (code, message) == (INVALID, "Expected one input Tensor.")  # a predict signature
    code, message = grpc_error(stub.Classify, classify_request("estimator", "predict", x_rows()))
    assert code == INVALID and message.startswith(
        "No classification inputs found in SignatureDef: ")
    assert 'method_name: "tensorflow/serving/predict"' in message
    code, message = grpc_error(stub.Classify, classify_request("estimator", "regression",
                                                               x_rows()))
    assert code == INVALID and message.startswith(
        'Expected classification signature outputs to contain at least one of "classes" or '
        '"scores". Signature was: ')
    assert grpc_error(stub.Classify, classify_request("estimator", "nope", x_rows())) == (
        INVALID, "No signature was found with the name: nope")
    assert grpc_error(stub.Classify, classify_request("estimator")) == (INVALID,
                                                                        "Input is empty.")
    assert grpc_error(stub.Classify, classify_request("estimator", context={"n": 1})) == (
        INVALID, "Input is empty.")
    assert grpc_error(stub.Classify, classify_request(
        "estimator", "classify_bad_scores", x_rows())) == (
        INVALID, "Expected Tensor shape: [batch_size num_classes] but got [3]")
    code, message = grpc_error(stub.Classify, classify_request("estimator", "", [{"x": [1, 2]}]))
    assert code == INVALID and "x" in message  # int64_list where the graph parses floats
    request = classification_pb2.ClassificationRequest()
    assert grpc_error(stub.Classify, request) == (INVALID, "Missing ModelSpec")
    code, _ = grpc_error(stub.Classify, classify_request("no_such_model", "", x_rows()))
    assert code == grpc.StatusCode.NOT_FOUND


def test_regress_refuses_what_tf_serving_refuses(stub):
    assert grpc_error(stub.Regress, regress_request("estimator", "", x_rows())) == (
        INVALID, "Expected one output Tensor.")  # serving_default is a classify signature
    code, message = grpc_error(stub.Regress, regress_request("example_tf2", "", x_rows()))
    assert code == INVALID and message.startswith("No regression inputs found in SignatureDef")
    assert grpc_error(stub.Regress, regress_request("example_tf2", "regress_int", x_rows())) == (
        INVALID, "Expected output Tensor of DT_FLOAT.  Got: DT_INT64")
    assert grpc_error(stub.Regress, regress_request("example_tf2", "regress")) == (
        INVALID, "Input is empty.")


def test_multi_inference_refuses_what_tf_serving_refuses(stub):
    def request(*tasks, rows=True):
        built = inference_pb2.MultiInferenceRequest()
        for model, signature, method in tasks:
            task = built.tasks.add(method_name=method)
            task.model_spec.name = model
            task.model_spec.signature_name = signature
        if rows:
            built.input.example_list.examples.extend(examples(x_rows()))
        return built

    call = stub.MultiInference
    assert grpc_error(call, request(("estimator", "regression", REGRESS),
                                    ("example_tf2", "regress", REGRESS))) == (
        INVALID, "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    assert grpc_error(call, request(("estimator", "regression", REGRESS),
                                    ("estimator", "regression", REGRESS))) == (
        INVALID, "Duplicate evaluation of signature: regression")
    assert grpc_error(call, request(("estimator", "nope", REGRESS))) == (
        INVALID, "Requested signature not found in model graph: nope")
    assert grpc_error(call, request(("estimator", "predict", PREDICT))) == (
        grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {PREDICT}")
    assert grpc_error(call, request(("estimator", "regression", REGRESS), rows=False)) == (
        INVALID, "Input is empty.")
    assert grpc_error(call, request()) == (INVALID, "ModelSpec has no name specified.")


# ---------------------------------------------------------------- REST (plain HTTP)


def test_rest_classify_and_regress(server):
    status, body = rest_call(server, "/v1/models/example_tf2:classify",
                        {"signature_name": "classify", "examples": x_rows()})
    assert status == 200, body
    assert [[label for label, _ in item] for item in body["results"]] == [["0", "1"]] * 3
    np.testing.assert_allclose([item[1][1] for item in body["results"]],
                               [example_tf2_probability(row) for row in X], rtol=1e-6)
    status, body = rest_call(server, "/v1/models/estimator/versions/1:regress",
                        {"signature_name": "regression", "context": {"x": [1.0, 2.0]},
                         "examples": [{"n": 1}, {"n": 2, "word": ["ab"]}]})
    assert status == 200, body
    np.testing.assert_allclose(body["results"], [estimator_probability([1, 2], 1),
                                                 estimator_probability([1, 2], 2, b"ab")],
                               rtol=1e-6)


def test_rest_errors(server):
    cases = [
        ("example_tf2:classify", {"signature_name": "classify",
                                  "examples": [{"x": ["a", 1.0]}]},
         400, "Unexpected element type in feature: x expecting type: bytes"),
        ("example_tf2:classify", {"signature_name": "classify"},
         400, "When method is classify, key 'examples' is expected and was not found"),
        ("example_tf2:regress", {"examples": []}, 400, "'examples' value is an empty array"),
        ("example_tf2:regress", {"examples": [[1.0]]}, 400,
         "Example must be JSON object but got JSON Array"),
        ("example_tf2:regress", {"examples": [{"x": [[1.0]]}]}, 400,
         "Feature: x has element with unexpected JSON type: Array"),
        ("example_tf2:regress", {"examples": [{"x": 2**63}]}, 400,
         "Feature: x has uint64 element. Only int64 is supported."),
        ("toy:classify", {"examples": x_rows()}, 400, "Expected one input Tensor."),
        ("estimator:classify", {"signature_name": "nope", "examples": x_rows()}, 400,
         "No signature was found with the name: nope"),
        ("no_such_model:classify", {"examples": x_rows()}, 404, None),
    ]
    for path, body, want_status, want_message in cases:
        status, answer = rest_call(server, f"/v1/models/{path}", body)
        assert status == want_status, (path, body, answer)
        if want_message is not None:
            assert want_message in answer["error"], (path, body, answer)
    status, answer = rest_call(server, "/v1/models/estimator:classify", b"{not json")
    assert status == 400 and answer["error"].startswith("JSON Parse error")


def test_rest_functions_in_process(saved_models):
    """serving.json_examples against a ServerCore, without the HTTP layer."""
    core = ServerCore(models_config(saved_models, ["example_tf2"]), poll_wait_seconds=0)
    core.start()
    try:
        spec = {"name": "example_tf2"}
        body = json.dumps({"signature_name": "regress", "examples": x_rows()}).encode()
        answer = rest_regress(core, model_pb2.ModelSpec(**spec), body)
        assert json.loads(json.dumps(answer)) == answer
        np.testing.assert_allclose(answer["results"],
                                   [example_tf2_probability(row) for row in X], rtol=1e-6)
        answer = rest_classify(core, model_pb2.ModelSpec(**spec),
                               json.dumps({"signature_name": "classify",
                                           "examples": x_rows()[:1]}).encode())
        [[[label0, score0], [label1, score1]]] = answer["results"]
        assert (label0, label1) == ("0", "1")
        # Scores print as TF Serving prints a float: the shortest text of the float32.
        assert float(np.float32(score1)) == float(np.float32(example_tf2_probability(X[0])))
        assert len(json.dumps(score1)) <= 12
        with pytest.raises(ServingError) as raised:
            rest_classify(core, model_pb2.ModelSpec(**spec), b"[1, 2]")
        assert raised.value.code == INVALID and raised.value.message.endswith("Is not object")

        # --enable_signature_method_name_check: TF2 signatures are all "predict", so refused.
        inference.set_signature_method_name_check(True)
        try:
            with pytest.raises(ServingError) as raised:
                rest_regress(core, model_pb2.ModelSpec(**spec), body)
            assert raised.value.message == (
                f"Expected regression signature method_name to be {REGRESS}. Was: {PREDICT}")
        finally:
            inference.set_signature_method_name_check(False)
    finally:
        core.stop()


# ---------------------------------------------------------------- our clients


def test_clients_classify_regress_multi_inference(server, saved_models):
    rows = x_rows()
    expected = np.array([example_tf2_probability(row) for row in X], np.float32)
    with Client(server.grpc_target) as client:
        classes = client.classify("example_tf2", rows, signature_name="classify")
        regressed = client.regress("estimator", [{"n": 1}, {"n": 2}], context={"x": [1.0, 2.0]},
                                   signature_name="regression", version=1)
        multi = client.multi_inference("estimator", rows, [("classification", "classify"),
                                                            ("regression", "regress")])
        with pytest.raises(ServingError) as raised:
            client.classify("estimator", rows, signature_name="predict")
        assert raised.value.code == INVALID
        # Each signature of a TF2 SavedModel has its own input tensor, so TF Serving's
        # MultiInference (which feeds one tensor to every task) refuses to combine them.
        with pytest.raises(ServingError) as raised:
            client.multi_inference("example_tf2", rows,
                                   [("classify", "classify"), ("regress", "regress")])
        assert (raised.value.code, raised.value.message) == (
            INVALID, "Input tensor must be the same for all Signatures.")
        # The same config again, as a proto and as text: nothing changes, nothing fails.
        config = models_config(saved_models, ["estimator", "example_tf2", "toy"])
        client.reload_config(config)
        client.reload_config(str(config))
        assert client.status("estimator")[0]["state"] == "AVAILABLE"
    np.testing.assert_allclose([item[1][1] for item in classes], expected, rtol=1e-6)
    assert classes[0][0][0] == "0"
    np.testing.assert_allclose(regressed, [estimator_probability([1, 2], 1),
                                           estimator_probability([1, 2], 2)], rtol=1e-6)
    estimated = [estimator_probability(row) for row in X]
    np.testing.assert_allclose([item[1][1] for item in multi[0]], estimated, rtol=1e-6)
    assert multi[0][0][0][0] == "neg"
    np.testing.assert_allclose(multi[1], estimated, rtol=1e-6)

    rest = RestClient(server.rest_url)
    try:
        import pandas as pd

        frame = pd.DataFrame({"x": [list(row) for row in X]})
        np.testing.assert_allclose(rest.regress("example_tf2", frame, signature_name="regress"),
                                   expected, rtol=1e-6)
        rest_classes = rest.classify("example_tf2", rows, signature_name="classify")
        np.testing.assert_allclose([item[1][1] for item in rest_classes], expected, rtol=1e-6)
        assert len(rest._connections) == 1  # one keep-alive connection for every call
        for call in (lambda: rest.multi_inference("example_tf2", rows, [("regress", "regress")]),
                     lambda: rest.reload_config("")):
            with pytest.raises(ServingError) as raised:
                call()
            assert raised.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        rest.close()


def test_client_retries_unavailable_only():
    from serving.local import free_port

    attempts = []
    client = Client(f"127.0.0.1:{free_port()}", timeout=1, retries=2)
    original = client._retrying

    def counting(call):
        def counted():
            attempts.append(1)
            return call()
        return original(counted)

    client._retrying = counting
    with pytest.raises(ServingError) as raised:
        client.regress("m", [{"x": 1.0}])
    client.close()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(attempts) == 3


# ---------------------------------------------------------------- a tfrec DIN export


def din_rows(planted_din, count):
    from tfrec.data import df_to_inputs

    inputs = df_to_inputs(planted_din.test.head(count), planted_din.columns)
    return inputs, [{name: values[i] for name, values in inputs.items()} for i in range(count)]


def test_din_classify_equals_predict_over_grpc_and_rest(planted_din, din_server):
    inputs, rows = din_rows(planted_din, 20)
    channel = grpc.insecure_channel(din_server.grpc_target)
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = "din"
        for name, values in inputs.items():
            array = np.asarray(values)
            if array.dtype.kind in "iu":
                array = array.astype(np.int64)
            elif array.dtype.kind == "f":
                array = array.astype(np.float32)
            predict.inputs[name].CopyFrom(ndarray_to_proto(array))
        predicted = ndarray_from_proto(stub.Predict(predict, timeout=60).outputs["prediction"])
        response = stub.Classify(classify_request("din", "classify", rows), timeout=60)
        assert response.model_spec.signature_name == "classify"
        scores = scores_of(response.result)
        np.testing.assert_allclose(scores[:, 1], predicted, atol=1e-6)
        np.testing.assert_allclose(scores[:, 0], 1.0 - predicted, atol=1e-6)
        regressed = stub.Regress(regress_request("din", "regress", rows), timeout=60)
        np.testing.assert_allclose([r.value for r in regressed.result.regressions], predicted,
                                   atol=1e-6)
    finally:
        channel.close()
    with RestClient(din_server.rest_url) as rest:
        rest_classes = rest.classify("din", rows, signature_name="classify")
    np.testing.assert_allclose([item[1][1] for item in rest_classes], predicted, atol=1e-6)
    with Client(din_server.grpc_target) as client:  # as docs/serving.md shows it
        classes = client.classify("din", rows, signature_name="classify")
        np.testing.assert_allclose([dict(pairs)["1"] for pairs in classes], predicted, atol=1e-6)
        np.testing.assert_allclose(client.regress("din", rows, signature_name="regress"),
                                   predicted, atol=1e-6)
        [multi] = client.multi_inference("din", rows, tasks=[("regress", "regress")])
        np.testing.assert_allclose(multi, predicted, atol=1e-6)


def test_classify_goes_through_predicts_batching(saved_models):
    """With batching on, concurrent one-example Classify / Regress calls share batches and
    each gets exactly its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.batching import BatchingOptions
    from serving.servable import ServableVersion

    servable = ServableVersion("example_tf2", 1, str(saved_models / "example_tf2" / "1"),
                               batching=BatchingOptions(batch_timeout_micros=50_000))
    rows = [[float(i), -0.5 * i] for i in range(8)]

    def one(index):
        request = classify_request("example_tf2", "classify", x_rows([rows[index]]))
        if index % 2:
            regression = inference.regress(servable, regress_request(
                "example_tf2", "regress", x_rows([rows[index]])))
            return regression.result.regressions[0].value
        return scores_of(inference.classify(servable, request).result)[0, 1]

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, range(8)))
    finally:
        servable.close()
    np.testing.assert_allclose(answers, [example_tf2_probability(row) for row in rows],
                               rtol=1e-6)


def test_client_sends_cold_start_rows_ids_as_numbers_and_names_bad_values(planted_din, din_server):
    """What a user's own rows bring: users with no history at all, integer ids for a string
    table, an id beyond int64, and a misspelt feature name."""
    inputs, _ = din_rows(planted_din, 4)
    with Client(din_server.grpc_target) as client:
        no_history = {**inputs, "hist_item_id": [[]] * 4, "hist_cate_id": [[]] * 4, "seq_length": [0] * 4}
        padding_only = {**no_history, "hist_item_id": [[""]] * 4, "hist_cate_id": [[""]] * 4}
        cold = client.predict("din", no_history)["prediction"]
        assert np.all(np.isfinite(cold))
        np.testing.assert_allclose(cold, client.predict("din", padding_only)["prediction"], atol=1e-6)
        numbers = {**no_history, "item_id": [5, 6, 7, 8]}
        as_text = client.predict("din", {**no_history, "item_id": ["5", "6", "7", "8"]})["prediction"]
        np.testing.assert_allclose(client.predict("din", numbers)["prediction"], as_text, atol=1e-6)
        rows = [{name: values[i] for name, values in numbers.items()} for i in range(4)]  # tf.Examples typed alike
        np.testing.assert_allclose(client.regress("din", rows, signature_name="regress"), as_text, atol=1e-6)
        for beyond in (2 ** 64, 2 ** 63):  # numpy makes floats of [2**63, 1]: they are checked, not rounded
            with pytest.raises(ValueError, match=rf"Input 'seq_length' expects int64 values, but row 0 holds "
                                                 rf"{beyond}, which does not fit"):
                client.predict("din", {**inputs, "seq_length": [beyond, 1, 1, 1]})
        nothing = client.predict("din", {name: [] for name in inputs})["prediction"]  # a request of no rows
        assert nothing.shape == (0,)
        misspelt = {("seq_lenght" if name == "seq_length" else name): value for name, value in inputs.items()}
        with pytest.raises(ServingError, match=r"Sent but not in the signature: \{seq_lenght\}"):
            client.predict("din", misspelt)


class _PredictRecorder(grpc.UnaryUnaryClientInterceptor):
    """Passes every call on; notes each Predict request's signature and input shapes."""

    def __init__(self):
        self.sent = []

    def intercept_unary_unary(self, continuation, details, request):
        if details.method.endswith("/Predict"):
            shapes = {name: [d.size for d in proto.tensor_shape.dim] for name, proto in request.inputs.items()}
            self.sent.append((request.model_spec.signature_name, shapes))
        return continuation(details, request)


def recording(client):
    """`client`'s Predict requests, as they leave it for the real server."""
    recorder = _PredictRecorder()
    client._predictions = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.intercept_channel(client._channel, recorder))
    return recorder


def test_client_sends_a_history_repeated_on_every_row_once(planted_din, din_export, din_server):
    """One user's 100 candidates with the history copied onto every row (a DeepCTR-style
    request, here padded with "" to 200 events: 20,000 in all, where the server's own
    serving_default scores it on one row) go out with the history once, to `shared_history`,
    and score as the rows as given; a request whose rows differ, or that names
    serving_default, goes out as given. A server batching requests refuses the one-row history
    (batching needs one row count): the client then sends the rows as given, and so from then on."""
    from feature_columns import history_input_names

    inputs, _ = din_rows(planted_din, 100)
    history = history_input_names(planted_din.model)
    one_user = {name: np.repeat(values[:1], 100, axis=0) if name in history else values
                for name, values in inputs.items()}
    expected = planted_din.model.predict(one_user, verbose=0).ravel()
    request = {name: np.concatenate([values, np.full((100, 200 - values.shape[1]), "", values.dtype)], axis=1)
               if values.ndim == 2 else values for name, values in one_user.items()}
    changed = {**request, "hist_item_id": request["hist_item_id"].copy()}
    changed["hist_item_id"][-1, 0] = request["hist_item_id"][0, 1]
    once = {name: [1, 200] if name.startswith("hist_") else [1] if name in history else [100] for name in request}
    as_given = {name: list(np.shape(values)) for name, values in request.items()}

    with Client(din_server.grpc_target) as client, RestClient(din_server.rest_url) as rest:
        sent = recording(client)
        np.testing.assert_allclose(client.predict("din", request)["prediction"], expected, atol=1e-6)
        np.testing.assert_allclose(client.predict("din", request, signature_name="serving_default")["prediction"],
                                   expected, atol=1e-6)
        np.testing.assert_allclose(client.predict("din", changed)["prediction"][:-1], expected[:-1], atol=1e-6)
        np.testing.assert_allclose(rest.predict("din", request)["prediction"], expected, atol=1e-6)
    assert sent.sent == [("shared_history", once), ("serving_default", as_given), ("serving_default", as_given)]

    with LocalServer(model_base_path=din_export.base, model_name="din", rest=False,
                     extra_args=("--enable_batching",)) as batching, Client(batching.grpc_target) as client:
        sent = recording(client)
        for _ in range(2):
            np.testing.assert_allclose(client.predict("din", request)["prediction"], expected, atol=1e-6)
    assert sent.sent == [("shared_history", once), ("serving_default", as_given), ("serving_default", as_given)]
