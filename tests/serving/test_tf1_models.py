"""TF1 Estimator-style SavedModels (a ParseExample fed by a string placeholder of shape [-1])
load and are served over gRPC and REST with all three of their signature kinds: predict,
classify and regress (tests/serving/saved_models.py, estimator/1)."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import base64

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     regression_pb2)

from serving import LocalServer
from serving.bundle import SessionBundle, is_tf1_meta_graph, load_bundle, read_serving_meta_graph
from serving.tensors import ndarray_from_proto, ndarray_to_proto
from tests.serving.rest_helpers import rest_call
from tests.serving.saved_models import estimator_probability

ROWS = [{"x": [1.0, 2.0], "n": 3, "word": b"abc"},
        {"x": [-0.5, 0.25]},
        {"x": [4.0, 1.0], "word": b"\xff\xfebinary"}]


def example(row):
    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=row["x"]))}
    if "n" in row:
        feature["n"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[row["n"]]))
    if "word" in row:
        feature["word"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["word"]]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def expected(rows=ROWS):
    return np.array([estimator_probability(row["x"], row.get("n", 0), row.get("word", b""))
                     for row in rows], np.float32)


@pytest.fixture(scope="module")
def server(saved_models):
    with LocalServer(model_base_path=str(saved_models / "estimator"), model_name="estimator",
                     poll_wait_seconds=30) as running:
        yield running


def test_tf1_graph_loads_in_its_own_session(saved_models):
    path = str(saved_models / "estimator" / "1")
    assert is_tf1_meta_graph(read_serving_meta_graph(path))
    assert not is_tf1_meta_graph(read_serving_meta_graph(str(saved_models / "toy" / "1")))
    signature_defs, functions, owner = load_bundle(path)
    assert isinstance(owner, SessionBundle)
    assert set(functions) == set(signature_defs)
    serialized = np.array([example(row).SerializeToString() for row in ROWS], object)
    outputs = functions["regression"](inputs=tf.constant(serialized))
    np.testing.assert_allclose(outputs["outputs"].numpy()[:, 0], expected(), rtol=1e-6)
    with pytest.raises(TypeError, match="no input named bogus"):
        functions["regression"](bogus=serialized)
    owner.close()


def test_version_is_available(server):
    channel = grpc.insecure_channel(server.grpc_target)
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "estimator"}),
            timeout=30)
    finally:
        channel.close()
    [status] = response.model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)


def test_grpc_predict_on_serialized_examples(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "estimator"
    request.model_spec.signature_name = "predict"
    request.inputs["examples"].CopyFrom(ndarray_to_proto(
        np.array([example(row).SerializeToString() for row in ROWS], object)))
    response = stub.Predict(request, timeout=30)
    assert response.model_spec.signature_name == "predict"
    assert response.model_spec.version.value == 1
    probabilities = ndarray_from_proto(response.outputs["probabilities"])
    assert probabilities.shape == (3, 1)
    np.testing.assert_allclose(probabilities[:, 0], expected(), rtol=1e-6)


def test_grpc_classify_on_the_default_signature(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "estimator"
    request.input.example_list.examples.extend(example(row) for row in ROWS)
    response = stub.Classify(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.signature_name,
            response.model_spec.version.value) == ("estimator", "serving_default", 1)
    assert [[c.label for c in item.classes] for item in response.result.classifications] == [
        ["neg", "pos"]] * 3
    scores = np.array([[c.score for c in item.classes]
                       for item in response.result.classifications], np.float32)
    np.testing.assert_allclose(scores[:, 1], expected(), rtol=1e-6)
    np.testing.assert_allclose(scores[:, 0], 1.0 - expected(), rtol=1e-5)


def test_grpc_regress_with_context(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "estimator"
    request.model_spec.signature_name = "regression"
    shared = request.input.example_list_with_context
    shared.context.CopyFrom(example({"x": [0.0, 0.0], "n": 2}))
    # An example's own feature overrides the context's; the others come from the context.
    shared.examples.extend([example({"x": [1.0, 2.0]}), example({"x": [3.0, 0.0], "n": 0})])
    response = stub.Regress(request, timeout=30)
    assert response.model_spec.signature_name == "regression"
    values = [r.value for r in response.result.regressions]
    np.testing.assert_allclose(values, [estimator_probability([1.0, 2.0], 2),
                                        estimator_probability([3.0, 0.0], 0)], rtol=1e-6)


def test_metadata_keeps_the_estimator_method_names(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "estimator"
    response = stub.GetModelMetadata(request, timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    methods = {key: s.method_name for key, s in signature_map.signature_def.items()}
    assert methods["serving_default"] == "tensorflow/serving/classify"
    assert methods["regression"] == "tensorflow/serving/regress"
    assert methods["predict"] == "tensorflow/serving/predict"


def test_rest_predict_classify_and_regress(server):
    serialized = [example(row).SerializeToString() for row in ROWS]
    status, body = rest_call(server, "/v1/models/estimator:predict", {
        "signature_name": "predict",
        "instances": [{"b64": base64.b64encode(s).decode()} for s in serialized]})
    assert status == 200, body
    assert sorted(body["predictions"][0]) == ["logits", "probabilities"]
    np.testing.assert_allclose([p["probabilities"][0] for p in body["predictions"]],
                               expected(), rtol=1e-6)

    rows = [{"x": row["x"], **({"n": row["n"]} if "n" in row else {}),
             **({"word": {"b64": base64.b64encode(row["word"]).decode()}}
                if "word" in row else {})} for row in ROWS]
    status, body = rest_call(server, "/v1/models/estimator/versions/1:classify", {"examples": rows})
    assert status == 200, body
    assert [[label for label, _ in item] for item in body["results"]] == [["neg", "pos"]] * 3
    np.testing.assert_allclose([item[1][1] for item in body["results"]], expected(), rtol=1e-6)

    status, body = rest_call(server, "/v1/models/estimator:regress",
                        {"signature_name": "regression", "context": {"n": 3},
                         "examples": [{"x": [1.0, 2.0], "word": "abc"}]})
    assert status == 200, body
    np.testing.assert_allclose(body["results"], [estimator_probability([1.0, 2.0], 3, b"abc")],
                               rtol=1e-6)


def test_warmup_replays_classify_regress_and_multi_inference_records(saved_models, tmp_path):
    """TF Serving replays every kind of PredictionLog at load; a record that fails is counted."""
    import shutil

    from tensorflow_serving.apis import inference_pb2, prediction_log_pb2

    from exporters.warmup import write_warmup_file
    from serving.servable import ServableVersion

    path = str(tmp_path / "1")
    shutil.copytree(saved_models / "estimator" / "1", path)
    examples = [example(row) for row in ROWS]
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.signature_name = "classification"
    classify.input.example_list.examples.extend(examples)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.signature_name = "regression"
    regress.input.example_list.examples.extend(examples)
    multi = inference_pb2.MultiInferenceRequest()
    multi.tasks.add(model_spec={"name": "estimator", "signature_name": "regression"},
                    method_name="tensorflow/serving/regress")
    multi.input.example_list.examples.extend(examples)
    wrong = regression_pb2.RegressionRequest()
    wrong.model_spec.signature_name = "predict"  # not a regression signature: fails
    wrong.input.example_list.examples.extend(examples)
    write_warmup_file(path, [
        prediction_log_pb2.PredictionLog(classify_log={"request": classify}),
        prediction_log_pb2.PredictionLog(regress_log={"request": regress}),
        prediction_log_pb2.PredictionLog(multi_inference_log={"request": multi}),
        prediction_log_pb2.PredictionLog(regress_log={"request": wrong})])
    servable = ServableVersion("estimator", 1, path)
    try:
        assert servable.warm_up() == (3, 1)
    finally:
        servable.close()
