"""The model server, end to end: one real `python -m serving.server` subprocess serving a
model_config_file with four models, queried over gRPC (our Client and raw stubs) and REST."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import re
import os
import shutil

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving import Client, LocalServer, RestClient, ServingError
from serving.tensors import ndarray_from_proto
from tests.serving.rest_helpers import rest_call, wait_for
from tests.serving.saved_models import copy_version, toy_request

CONFIG_TEMPLATE = """
model_config_list {{
  config {{
    name: "toy"
    base_path: "{root}/toy"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
  config {{
    name: "keras"
    base_path: "{root}/keras"
    model_platform: "tensorflow"
  }}
  config {{
    name: "tf1"
    base_path: "{root}/tf1"
  }}
  config {{
    name: "live"
    base_path: "{live}"
    model_platform: "tensorflow"
  }}
}}
"""
X = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], np.float32)
TAGS = np.array([b"ab", b"xyz"], object)


@pytest.fixture(scope="module")
def server(saved_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    live = work / "live"
    live.mkdir()
    copy_version(str(saved_models / "toy" / "2"), str(live), 1)
    config_path = work / "models.config"
    config_path.write_text(CONFIG_TEMPLATE.format(root=saved_models, live=live))
    # One quick load retry: a reload adding a model that cannot load waits for its retries.
    retries = ("--max_num_load_retries=1", "--load_retry_interval_micros=200000")
    with LocalServer(model_config_file=str(config_path), poll_wait_seconds=0.3,
                     extra_args=retries) as running:
        running.live_base = live
        running.config_text = config_path.read_text()
        yield running


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_target) as grpc_client:
        yield grpc_client


@pytest.fixture(scope="module")
def rest(server):
    return RestClient(server.rest_url)


@pytest.fixture(scope="module")
def model_stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def toy_v2(saved_models):
    return tf.saved_model.load(str(saved_models / "toy" / "2"))


def expected_toy(x, offset):
    return x @ np.array([1.0, 2.0, 3.0], np.float32) + offset


def assert_good_request_answered(client):
    outputs = client.predict("toy", {"x": X, "tag": TAGS})
    np.testing.assert_allclose(outputs["score"], expected_toy(X, 2), rtol=1e-6)


# ---------------------------------------------------------------- gRPC Predict


def test_predict_equals_in_process_function(client, toy_v2):
    outputs = client.predict("toy", {"x": X, "tag": TAGS})
    local = toy_v2.signatures["serving_default"](x=tf.constant(X), tag=tf.constant(TAGS))
    assert set(outputs) == {"score", "tag_len", "tag_upper", "echo_bytes"}
    for alias, tensor in local.items():
        np.testing.assert_array_equal(outputs[alias], tensor.numpy())
    assert list(outputs["tag_upper"]) == [b"AB", b"XYZ"]
    assert outputs["score"].dtype == np.float32 and outputs["tag_len"].dtype == np.int32


def test_response_model_spec_is_filled(stub):
    response = stub.Predict(toy_request(X, TAGS), timeout=10)
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(ndarray_from_proto(response.outputs["score"]),
                               expected_toy(X, 2), rtol=1e-6)


def test_output_filter_returns_only_requested_outputs(client, stub):
    outputs = client.predict("toy", {"x": X, "tag": TAGS}, output_filter=["tag_len"])
    assert list(outputs) == ["tag_len"]
    np.testing.assert_array_equal(outputs["tag_len"], [2, 3])
    request = toy_request(X, TAGS)
    request.output_filter.append("no_such_output")
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: no_such_output" in info.value.details()
    assert "{echo_bytes,score,tag_len,tag_upper}" in info.value.details()


def test_version_and_label_select_the_version(client, stub):
    for kwargs, offset in [({"version": 1}, 1), ({"version": 2}, 2),
                           ({"version_label": "stable"}, 1), ({"version_label": "canary"}, 2),
                           ({}, 2)]:
        outputs = client.predict("toy", {"x": X, "tag": TAGS}, **kwargs)
        np.testing.assert_allclose(outputs["score"], expected_toy(X, offset), rtol=1e-6)
    request = toy_request(X, TAGS)
    request.model_spec.version_label = "stable"
    assert stub.Predict(request, timeout=10).model_spec.version.value == 1


@pytest.mark.parametrize("kwargs, code, message", [
    ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ({"version": 7}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(toy, 7)"),
    # TF Serving answers an unknown label with INVALID_ARGUMENT (server_core.cc).
    ({"version_label": "beta"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: beta"),
    ({"signature_name": "nope"}, grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
])
def test_unknown_model_version_label_signature(client, kwargs, code, message):
    kwargs = dict(kwargs)
    model = kwargs.pop("model", "toy")
    with pytest.raises(ServingError) as info:
        client.predict(model, {"x": X, "tag": TAGS}, **kwargs)
    assert info.value.code == code
    assert info.value.message == message
    assert_good_request_answered(client)


@pytest.mark.parametrize("inputs, message_parts", [
    ({"x": X}, ["input size does not match signature: 1!=2", "Missing but required: {tag}"]),
    ({"x": X, "tag": TAGS, "extra": [1.0]},
     ["input size does not match signature: 3!=2", "Sent extra: {extra}"]),
    ({"x": X, "tag": X[:, 0]}, ['Expects input "tag" to be string but float is provided']),
    # shapes are not checked before the model (TF Serving feeds them as they are); the
    # model's own failure names the input, first
    ({"x": X[0], "tag": TAGS[:1]},
     ["Invalid reduction dimension",
      'input "x" has shape [3] where the signature declares [-1,3]; the model says: ']),
    ({"x": X[:, :2], "tag": TAGS},
     ['input "x" has shape [2,2] where the signature declares [-1,3]']),
    ({"x": [["a", "b", "c"]], "tag": ["t"]}, ['Expects input "x" to be float but string']),
])
def test_bad_inputs_are_invalid_argument_naming_the_alias(client, inputs, message_parts):
    with pytest.raises(ServingError) as info:
        client.predict("toy", inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for part in message_parts:
        assert part in info.value.message
    assert_good_request_answered(client)


@pytest.mark.parametrize("corrupt, reason", [
    (lambda t: setattr(t, "tensor_content", b"\x01\x02\x03"), "tensor_content has 3 bytes"),
    (lambda t: t.tensor_shape.dim.add(size=2**40), "more than"),
    (lambda t: t.tensor_shape.dim.add(size=-5), "negative dimension"),
    (lambda t: setattr(t, "dtype", 12345), "unsupported dtype"),
])
def test_malformed_tensor_protos_are_invalid_argument(stub, client, corrupt, reason):
    request = toy_request(X, TAGS)
    tensor = request.inputs["x"]
    tensor.ClearField("float_val")
    tensor.tensor_content = np.zeros(6, np.float32).tobytes()
    corrupt(tensor)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("tensor parsing error: x")
    assert reason in info.value.details()
    assert_good_request_answered(client)


def test_model_runtime_error_is_invalid_argument_with_tf_message(client):
    np.testing.assert_array_equal(
        client.predict("toy", {"ids": [1, 4]}, signature_name="lookup")["emb"],
        [[2.0, 3.0], [8.0, 9.0]])
    with pytest.raises(ServingError) as info:
        client.predict("toy", {"ids": [9]}, signature_name="lookup")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "indices[0] = 9 is not in [0, 5)" in info.value.message
    assert_good_request_answered(client)


def test_unknown_rank_input_takes_any_shape_and_casts_ints(client):
    for value in (3.0, [1.0, 2.0], np.arange(24, dtype=np.float32).reshape(2, 3, 4)):
        doubled = client.predict("toy", {"anything": value}, signature_name="double")["doubled"]
        np.testing.assert_array_equal(doubled, 2 * np.asarray(value, np.float32))
    # ints are cast to the signature's float32 by the client (int -> float is lossless)
    doubled = client.predict("toy", {"anything": [[1, 2]]}, signature_name="double")["doubled"]
    assert doubled.dtype == np.float32
    np.testing.assert_array_equal(doubled, [[2.0, 4.0]])


def test_keras_dict_model_from_dataframe_pads_ragged_rows(client, saved_models):
    frame = pd.DataFrame({"dense": [[0.1, 0.2, 0.3], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0]],
                          "hist": [[1, 2], [3], [4, 5, 6]]})
    outputs = client.predict("keras", frame)
    hist = np.array([[1, 2, 0], [3, 0, 0], [4, 5, 6]], np.int64)
    dense = np.array(frame["dense"].tolist(), np.float32)
    local = tf.saved_model.load(str(saved_models / "keras" / "1")).signatures["serving_default"]
    expected = local(dense=tf.constant(dense), hist=tf.constant(hist))["score"].numpy()
    assert outputs["score"].shape == (3, 1)
    np.testing.assert_allclose(outputs["score"], expected, rtol=1e-6)


def test_tf1_signature_defs_are_served(client, rest):
    assert client.metadata("tf1")["serving_default"]["inputs"] == {"x": ("float32", [-1, 2])}
    for api in (client, rest):
        np.testing.assert_array_equal(api.predict("tf1", {"x": [[1, 2], [3, 4]]})["y"],
                                      [[21.0], [43.0]])
        np.testing.assert_array_equal(
            api.predict("tf1", {"words": ["abc", ""]}, signature_name="strlen")["n"], [3, 0])


# ---------------------------------------------------------------- metadata and status


def test_metadata_lists_every_signature(client, stub):
    metadata = client.metadata("toy")
    assert set(metadata) == {"serving_default", "double", "lookup"}
    assert metadata["serving_default"]["inputs"] == {"tag": ("string", [-1]),
                                                     "x": ("float32", [-1, 3])}
    assert metadata["serving_default"]["outputs"]["score"] == ("float32", [-1])
    assert metadata["double"]["inputs"] == {"anything": ("float32", None)}
    assert metadata["lookup"]["inputs"] == {"ids": ("int64", [-1])}

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "toy"
    request.model_spec.version.value = 1
    response = stub.GetModelMetadata(request, timeout=10)
    assert response.model_spec.name == "toy" and response.model_spec.version.value == 1
    any_message = response.metadata["signature_def"]
    assert any_message.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert any_message.Unpack(signature_map)
    assert signature_map.signature_def["serving_default"].method_name == \
        "tensorflow/serving/predict"

    del request.metadata_field[:]
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must specify at least one metadata_field" in info.value.details()


def test_status_reports_versions(client, model_stub):
    assert client.status("toy") == [
        {"version": 2, "state": "AVAILABLE", "error_code": "OK", "error_message": ""},
        {"version": 1, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]
    assert [s["version"] for s in client.status("toy", version=1)] == [1]
    with pytest.raises(ServingError) as info:
        client.status("toy", version=9)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == "Could not find version 9 of model toy"
    with pytest.raises(ServingError) as info:
        client.status("nope")
    assert info.value.message == "Could not find any versions of model nope"
    with pytest.raises(grpc.RpcError) as raw:
        model_stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(), timeout=10)
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_warmup_file_with_bad_records_does_not_block_loading(server, client):
    assert client.status("toy", version=1)[0]["state"] == "AVAILABLE"
    logs = server.logs()
    assert "Number of warmup records read: 1. Failed: 2." in logs
    assert "Warmup record 1 of" in logs and "nonsense" in logs


# ---------------------------------------------------------------- REST


def test_rest_row_format(server):
    status, body = rest_call(server, "/v1/models/toy:predict", {
        "instances": [{"x": [1, 2, 3], "tag": "ab"},
                      {"x": [0.5, -1.0, 4.0], "tag": {"b64": "eHl6"}}]})
    assert status == 200
    assert body["predictions"] == [
        {"score": 16.0, "tag_len": 2, "tag_upper": "AB", "echo_bytes": {"b64": "YWI="}},
        {"score": 12.5, "tag_len": 3, "tag_upper": "XYZ", "echo_bytes": {"b64": "eHl6"}}]
    status, body = rest_call(server, "/v1/models/toy/versions/1:predict", {
        "signature_name": "double", "instances": [1.5, 2]})
    assert (status, body) == (200, {"predictions": [3.0, 4.0]})


def test_rest_columnar_format_and_labels(server):
    status, body = rest_call(server, "/v1/models/toy/labels/stable:predict", {
        "inputs": {"x": [[1, 2, 3]], "tag": ["ab"]}})
    assert status == 200
    assert body["outputs"]["score"] == [15.0]
    assert body["outputs"]["tag_upper"] == ["AB"]
    status, body = rest_call(server, "/v1/models/toy:predict", {
        "signature_name": "lookup", "inputs": [1, 4]})
    assert (status, body) == (200, {"outputs": [[2.0, 3.0], [8.0, 9.0]]})


def test_rest_client_matches_grpc_client(server, client, rest):
    for kwargs in ({}, {"version": 1}, {"output_filter": ["score"]}):
        over_grpc = client.predict("toy", {"x": X, "tag": TAGS}, **kwargs)
        over_rest = rest.predict("toy", {"x": X, "tag": TAGS}, **kwargs)
        assert set(over_grpc) == set(over_rest)
        for alias in over_grpc:
            np.testing.assert_array_equal(over_rest[alias], over_grpc[alias])
            assert over_rest[alias].dtype == over_grpc[alias].dtype
    assert rest.metadata("toy") == client.metadata("toy")
    assert rest.status("toy") == client.status("toy")


def test_rest_metadata_and_status_json(server):
    status, body = rest_call(server, "/v1/models/toy/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "toy", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["x"]["tensor_shape"]["dim"][1]["size"] == "3"
    assert "@type" not in body["metadata"]["signature_def"]
    status, body = rest_call(server, "/v1/models/toy/versions/2")
    assert (status, body) == (200, {"model_version_status": [{
        "version": "2", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]})


@pytest.mark.parametrize("path, body, http_status, message", [
    ("/v1/models/nope:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("/v1/models/toy/versions/9:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(toy, 9)"),
    ("/v1/models/toy:predict", {"signature_name": "nope", "instances": [1.0]}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/toy:predict", b"{not json", 400, "JSON Parse error"),
    ("/v1/models/toy:predict", {"inputs": {"x": [[1, 2, 3]]}}, 400,
     "Missing named input: tag in 'inputs' object."),
    ("/v1/models/toy:predict", {"instances": [{"x": ["a", "b", "c"], "tag": "t"}]}, 400,
     'JSON Value: "a" Type: String is not of expected type: float'),
    ("/v1/models/toy:predict", {"inputs": {"x": [[1, 2]], "tag": ["a"]}}, 400,
     'input "x" has shape [1,2] where the signature declares [-1,3]'),
    ("/v1/models/toy:classify", {"examples": []}, 400, "'examples' value is an empty array"),
    ("/v1/models/toy/versions/9", None, 404, "Could not find version 9 of model toy"),
    ("/v1/models", None, 400, "Missing model name in request."),
])
def test_rest_errors_use_tf_serving_codes(server, client, path, body, http_status, message):
    status, answer = rest_call(server, path, body)
    assert status == http_status
    assert set(answer) == {"error"} and message in answer["error"]
    assert_good_request_answered(client)


def test_rest_client_raises_serving_error(rest):
    with pytest.raises(ServingError) as info:
        rest.predict("nope", {"x": X, "tag": TAGS})
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.message == "Servable not found for request: Latest(nope)"
    with pytest.raises(ServingError) as info:
        rest.predict("toy", {"x": X, "tag": TAGS}, output_filter=["zz"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: zz" in info.value.message


def test_a_rest_client_at_the_grpc_port_says_the_port_does_not_speak_http(server):
    """It said 'cannot reach ...: \\x00\\x00\\x18\\x04...', the gRPC server's HTTP/2 frames."""
    with RestClient(f"http://{server.grpc_target}", retries=0) as wrong_port:
        with pytest.raises(ServingError) as info:
            wrong_port.predict("toy", {"x": X, "tag": TAGS})
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"{server.grpc_target} does not speak HTTP/REST (it answered binary data, as a gRPC port does); point " \
           "RestClient at the server's REST port (--rest_api_port), or use serving.Client" in info.value.message
    assert "\x00" not in info.value.message


def test_a_rest_client_at_another_http_server_says_its_answer_is_not_json():
    """A port answering 200 with a web page gave json's bare 'Expecting value: line 1 column 1 (char 0)'."""
    import http.server
    import threading

    class WebPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = b"<!doctype html><title>app</title>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebPage)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with RestClient(f"http://127.0.0.1:{web.server_port}", retries=0) as wrong_server:
            with pytest.raises(ServingError) as info:
                wrong_server.predict("toy", {"x": X, "tag": TAGS})
    finally:
        web.shutdown()
        web.server_close()
    assert info.value.code == grpc.StatusCode.UNKNOWN
    assert info.value.message == (
        f"the answer of http://127.0.0.1:{web.server_port}/v1/models/toy/metadata is not JSON "
        f"('<!doctype html><title>app</title>'): 127.0.0.1:{web.server_port} may not be a TF Serving REST port")


def test_clients_refuse_an_integer_outside_the_inputs_dtype_before_sending(client, rest):
    """An int32 input (another exporter's; tfrec's ids are int64) fed 2**40: named with its row
    by the client, where the server could only say that int64 is not int32."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["ids"].dtype = types_pb2.DT_INT32
    for api in (client, rest):
        assert api._prepared_inputs({"ids": [1, -2**31]}, signature)["ids"].dtype == np.int32
        with pytest.raises(ValueError, match=re.escape(
                "Input 'ids' expects int32 values, but row 2 holds 1099511627776, which does not fit")):
            api._prepared_inputs({"ids": [1, 2, 2**40]}, signature)


def test_clients_name_the_input_a_mistake_is_in(client, rest, server):
    for api in (client, rest):
        with pytest.raises(ValueError, match=re.escape(
                "Input 'x' expects float32 values, but row 0 holds None")):
            api.predict("toy", {"x": [[1.0, 2.0, None]], "tag": ["a"]})
        # A gap in a string input: None failed in the encoding (gRPC: TensorProtoError, REST:
        # AttributeError), NaN (pandas' gap, None in a DataFrame too) was sent as the text "nan".
        for missing, inputs in ((None, {"tag": ["a", None]}), (float("nan"), {"tag": ["a", float("nan")]}),
                                (float("nan"), pd.DataFrame({"tag": ["a", None]}))):
            with pytest.raises(ValueError, match=re.escape(
                    f"Input 'tag' expects string values, but row 1 holds {missing!r}")):
                api.predict("toy", {"x": [[1.0, 2.0, 3.0]] * 2, "tag": inputs["tag"]})
        with pytest.raises(ServingError) as info:  # the server's batch-size check names both
            api.predict("toy", {"x": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "tag": ["a"]})
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "tag" in info.value.message and "x" in info.value.message
    status, answer = rest_call(server, "/v1/models/toy:predict",
                               {"inputs": {"x": [[1, 2, None]], "tag": ["a"]}})
    assert status == 400 and answer["error"].startswith(
        "Failed to process input: x of 'inputs' object. Error: JSON Value: null Type: Null")


def test_clients_pad_only_the_row_lengths_a_signature_leaves_open(client, rest):
    """toy's "x" is [-1, 3]: a row of 2 values was padded with 0 and scored as [4, 5, 0] (a silent
    wrong score); it is a ValueError naming the input and the row. A history ([-1, -1]) is padded
    (test_keras_dict_model_from_dataframe_pads_ragged_rows)."""
    for api in (client, rest):
        with pytest.raises(ValueError, match=re.escape("Input 'x' takes rows of 3 values, but row 1 holds 2")):
            api.predict("toy", {"x": [[1.0, 2.0, 3.0], [4.0, 5.0]], "tag": ["a", "b"]})
        with pytest.raises(ValueError, match=re.escape("Input 'x' takes rows of 3 values, but row 0 holds 4")):
            api.predict("toy", pd.DataFrame({"x": [[1.0, 2.0, 3.0, 4.0], [4.0, 5.0, 6.0]], "tag": ["a", "b"]}))
        assert_good_request_answered(api)


def test_a_request_of_no_rows_takes_the_fixed_lengths_of_the_signature(client):
    """gRPC: toy's "x" ([-1, 3]) with no rows went out as (0, 0), which the model refused
    (INVALID_ARGUMENT 'Incompatible shapes'); it goes as (0, 3) and gets no scores. (REST's
    JSON [] holds no inner length, as in TF Serving.)"""
    assert client.predict("toy", {"x": [], "tag": []})["score"].shape == (0,)
    empty = pd.DataFrame({"x": [[1.0, 2.0, 3.0]], "tag": ["a"]}).iloc[:0]
    assert client.predict("toy", empty)["score"].shape == (0,)


# ---------------------------------------------------------------- versions on disk


def test_new_version_is_served_and_corrupt_one_is_not(server, client, saved_models):
    live = str(server.live_base)
    request = {"x": X, "tag": TAGS}
    np.testing.assert_allclose(client.predict("live", request)["score"], expected_toy(X, 2),
                               rtol=1e-6)  # live/1 is a copy of toy/2

    # A new version appears: served within a few polls, the old one unloaded.
    copy_version(str(saved_models / "toy" / "1"), live, 2)
    wait_for(lambda: [s["state"] for s in client.status("live")] == ["AVAILABLE", "END"])
    np.testing.assert_allclose(client.predict("live", request)["score"], expected_toy(X, 1),
                               rtol=1e-6)
    with pytest.raises(ServingError) as info:
        client.predict("live", request, version=1)
    assert info.value.code == grpc.StatusCode.NOT_FOUND

    # A staging directory is ignored; a corrupt version fails and version 2 keeps serving.
    os.makedirs(os.path.join(live, ".tmp-4-abc"))
    corrupt = os.path.join(live, ".tmp-3-staging")
    shutil.copytree(str(saved_models / "toy" / "2"), corrupt)
    with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
        f.write(b"\x00garbage, not a SavedModel\xff" * 10)
    os.rename(corrupt, os.path.join(live, "3"))
    statuses = wait_for(lambda: [s for s in client.status("live")
                                 if s["version"] == 3 and s["state"] == "END"])
    assert statuses[0]["error_code"] != "OK" and statuses[0]["error_message"]
    states = {s["version"]: s["state"] for s in client.status("live")}
    assert states == {3: "END", 2: "AVAILABLE", 1: "END"}
    assert client.predict("live", request, timeout=10)["score"].shape == (2,)
    np.testing.assert_allclose(client.predict("live", request)["score"], expected_toy(X, 1),
                               rtol=1e-6)


def test_client_refreshes_a_signature_that_changed_with_a_new_version(server, client,
                                                                      saved_models):
    live = str(server.live_base)
    request = {"x": [[1, 2, 3]], "tag": ["t"]}
    assert client.metadata("live")["serving_default"]["inputs"]["x"][0] == "float32"
    client.predict("live", request)  # ints cast to the cached float32 signature
    copy_version(str(saved_models / "int_toy" / "1"), live, 9)
    wait_for(lambda: {"version": 9, "state": "AVAILABLE", "error_code": "OK",
                      "error_message": ""} in client.status("live"))
    # The cached signature says float32, the new version wants int64: the first call is
    # refused, the client refetches the signature and retries.
    np.testing.assert_array_equal(client.predict("live", request)["score"], [114.0])
    assert client.metadata("live")["serving_default"]["inputs"]["x"] == ("int64", [-1, 3])


def test_reload_config_changes_labels(server, client, model_stub):
    def reload(text):
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
        model_stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=60)

    reload(server.config_text.replace('key: "stable" value: 1', 'key: "stable" value: 2'))
    try:
        outputs = client.predict("toy", {"x": X, "tag": TAGS}, version_label="stable")
        np.testing.assert_allclose(outputs["score"], expected_toy(X, 2), rtol=1e-6)
    finally:
        reload(server.config_text)
    outputs = client.predict("toy", {"x": X, "tag": TAGS}, version_label="stable")
    np.testing.assert_allclose(outputs["score"], expected_toy(X, 1), rtol=1e-6)


def _reload(model_stub, text):
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60)


def test_reloads_that_would_lose_models_or_point_labels_nowhere_are_refused(server, client, model_stub, tmp_path,
                                                                           saved_models):
    """As TF Serving: a request without a config is INVALID_ARGUMENT (it used to unload every
    model); a label naming a version that is not AVAILABLE is FAILED_PRECONDITION and the old
    labels stay; a model that is added but cannot load makes the reload fail (UNKNOWN), and one
    whose base path is missing or holds no version names the path; a serving model pointed
    elsewhere keeps serving when the new path has no version or cannot load."""
    with pytest.raises(grpc.RpcError) as empty:
        model_stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=60)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Only ModelConfigList is currently supported" in empty.value.details()
    assert_good_request_answered(client)

    with pytest.raises(grpc.RpcError) as label:
        _reload(model_stub, server.config_text.replace('key: "stable" value: 1', 'key: "stable" value: 12'))
    assert label.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "label to version 12 of model toy, which is not currently available" in label.value.details()
    outputs = client.predict("toy", {"x": X, "tag": TAGS}, version_label="stable")
    np.testing.assert_allclose(outputs["score"], expected_toy(X, 1), rtol=1e-6)

    broken = tmp_path / "broken"
    copy_version(str(saved_models / "toy" / "2"), str(broken), 1)
    (broken / "1" / "saved_model.pb").write_bytes(b"\x08\xffnot a SavedModel")
    added = server.config_text.rstrip().rstrip("}") + f'  config {{ name: "broken" base_path: "{broken}" }}\n}}\n'
    try:
        with pytest.raises(grpc.RpcError) as failed:
            _reload(model_stub, added)
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
        assert "Some servables did not become available: {{name: broken version: 1}}" in failed.value.details()
        assert_good_request_answered(client)
        # A mistyped base path, or one without a numbered version folder: an error naming it.
        for base_path, code, message in [
                (tmp_path / "typo", grpc.StatusCode.INVALID_ARGUMENT,
                 f"Could not find base path {tmp_path / 'typo'} for servable ghost"),
                (tmp_path, grpc.StatusCode.NOT_FOUND,
                 f"Unable to find a numerical version path for servable ghost at: {tmp_path}")]:
            ghost = server.config_text.rstrip().rstrip("}") + f'  config {{ name: "ghost" base_path: "{base_path}" }}\n}}\n'
            with pytest.raises(grpc.RpcError) as missing:
                _reload(model_stub, ghost)
            assert (missing.value.code(), missing.value.details()) == (code, message)
            assert_good_request_answered(client)
            _reload(model_stub, server.config_text)  # a failed reload keeps its model configured, as TF Serving
        # A serving model pointed at a path without versions: refused, nothing changes; pointed at
        # a path whose version cannot load: it keeps serving from the old path.
        before = client.status("live")
        assert "AVAILABLE" in [version["state"] for version in before]
        for base_path, code, message in [
                (tmp_path / "typo", grpc.StatusCode.INVALID_ARGUMENT, "Could not find base path"),
                (broken, grpc.StatusCode.UNKNOWN, "Some servables did not become available (their models keep "
                 f"serving from the old base path): {{{{name: live base_path: {broken}}}}}")]:
            moved = server.config_text.replace(f'base_path: "{server.live_base}"', f'base_path: "{base_path}"')
            with pytest.raises(grpc.RpcError) as refused:
                _reload(model_stub, moved)
            assert refused.value.code() == code and message in refused.value.details(), refused.value.details()
            assert client.status("live") == before  # the same versions, still AVAILABLE
            _reload(model_stub, server.config_text)
    finally:
        _reload(model_stub, server.config_text)


def test_a_reload_with_a_relative_base_path_is_refused(server, client, model_stub, saved_models):
    """As TF Serving's ValidateModelConfigList: INVALID_ARGUMENT, nothing changes. A base path
    relative to the server's directory used to be loaded from there, where TF Serving refuses it."""
    relative = os.path.relpath(saved_models / "toy", os.getcwd())  # the server runs in this directory
    added = server.config_text.rstrip().rstrip("}") + f'  config {{ name: "rel" base_path: "{relative}" }}\n}}\n'
    try:
        with pytest.raises(grpc.RpcError) as refused:
            _reload(model_stub, added)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == f"Expected model rel to have an absolute path or URI; got base_path()={relative}"
        with pytest.raises(ServingError) as unknown:
            client.predict("rel", {"x": X, "tag": TAGS})
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        assert_good_request_answered(client)
    finally:
        _reload(model_stub, server.config_text)


def test_a_model_a_reload_removes_keeps_its_versions_states(server, client, model_stub, tmp_path, saved_models):
    """As TF Serving's ServableStateMonitor: GetModelStatus of a removed model lists its versions
    END, so an operator sees it was unloaded (it was NOT_FOUND 'Could not find any versions');
    Predict is NOT_FOUND; added again, it serves."""
    copy_version(str(saved_models / "toy" / "2"), str(tmp_path / "gone"), 1)
    added = server.config_text.rstrip().rstrip("}") + f'  config {{ name: "gone" base_path: "{tmp_path / "gone"}" }}\n}}\n'
    try:
        _reload(model_stub, added)
        assert [v["state"] for v in client.status("gone")] == ["AVAILABLE"]
        _reload(model_stub, server.config_text)
        ended = {"version": 1, "state": "END", "error_code": "OK", "error_message": ""}
        assert wait_for(lambda: client.status("gone") == [ended], what="gone END")
        assert client.status("gone", version=1) == [ended]
        assert rest_call(server, "/v1/models/gone")[1]["model_version_status"][0]["state"] == "END"
        with pytest.raises(ServingError) as removed:
            client.predict("gone", {"x": X, "tag": TAGS})
        assert removed.value.code == grpc.StatusCode.NOT_FOUND
        _reload(model_stub, added)
        assert [v["state"] for v in client.status("gone")] == ["AVAILABLE"]
    finally:
        _reload(model_stub, server.config_text)


def test_a_new_base_path_serves_before_the_old_one_goes_and_zero_padded_versions_load(
        server, client, model_stub, tmp_path, saved_models):
    """A reload that moves a model to another base path keeps answering from the old path until
    the new one has loaded (it used to unload first: NOT_FOUND in between); the new path's
    version folder "007" is version 7, loaded from that folder."""
    import threading

    moved = tmp_path / "moved"
    copy_version(str(saved_models / "toy" / "1"), str(moved), 1)
    os.rename(moved / "1", moved / "007")
    missing, stop = [], threading.Event()

    def load():  # the old path's version may take other inputs (earlier tests add versions): only a gap counts
        while not stop.is_set():
            try:
                client.predict("live", {"x": X, "tag": TAGS})
            except ServingError as error:
                if error.code == grpc.StatusCode.NOT_FOUND:
                    missing.append(error)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        _reload(model_stub, server.config_text.replace(f'base_path: "{server.live_base}"', f'base_path: "{moved}"'))
        outputs = client.predict("live", {"x": X, "tag": TAGS})
        np.testing.assert_allclose(outputs["score"], expected_toy(X, 1), rtol=1e-6)  # toy/1 from "007"
        assert client.status("live")[0]["version"] == 7
    finally:
        stop.set()
        thread.join()
        _reload(model_stub, server.config_text)
    assert missing == []
