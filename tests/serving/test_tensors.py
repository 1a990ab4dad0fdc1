"""TensorProto and REST JSON conversions, and the deploy templates, without a server."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.batching import BatchingOptions
from serving import json_tensor
from serving.errors import ServingError
from serving.json_tensor import (COLUMNAR, ROW, format_float, format_predict_response,
                                 from_json_value, parse_predict_request, to_json_value)
from serving.server import read_model_config_file
from serving.tensors import TensorProtoError, message_bytes, ndarray_from_proto, ndarray_to_proto

DEPLOY = os.path.join(os.path.dirname(__file__), "..", "..", "serving", "deploy")


@pytest.mark.parametrize("array", [
    np.array([[1.5, -2.0], [3.25, 0.0]], np.float32),
    np.array([1, -2, 2**40], np.int64),
    np.array([1, 2, 3], np.int32),
    np.array([7, 255], np.uint8),
    np.array([True, False]),
    np.array([0.5, -1.0], np.float16),
    np.array([1 + 2j], np.complex64),
    np.array(3.0, np.float64),
    np.array([[b"a", b""], [b"\xff\x00", "é".encode()]], object),
])
@pytest.mark.parametrize("use_tensor_content", [False, True])
def test_proto_round_trip_matches_tensorflow(array, use_tensor_content):
    proto = ndarray_to_proto(array, use_tensor_content=use_tensor_content)
    decoded = ndarray_from_proto(proto)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_typed_fields_fill_like_tensorflow():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    proto.tensor_shape.dim.add(size=4)
    np.testing.assert_array_equal(ndarray_from_proto(proto), np.zeros(4, np.float32))
    proto.float_val.extend([1.0, 2.0])
    np.testing.assert_array_equal(ndarray_from_proto(proto), [1.0, 2.0, 2.0, 2.0])
    proto.float_val.extend([3.0, 4.0, 5.0])
    with pytest.raises(TensorProtoError, match="5 values given for shape"):
        ndarray_from_proto(proto)


@pytest.mark.parametrize("values", [[b"a", b"bc", b""], [b"a"], []])
def test_string_fields_fill_like_tensorflow(values):
    # Fewer values than the shape holds: the last one repeats, none at all gives b"".
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=values)
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=2)
    decoded = ndarray_from_proto(proto)
    expected = tf.make_ndarray(proto) if values else np.full((2, 2), b"", object)
    assert decoded.dtype == object and decoded.shape == (2, 2)
    assert decoded.tolist() == expected.tolist()


@pytest.mark.parametrize("array", [
    np.array([[0.25, -1.5]], np.float32), np.array(2.5, np.float64),
    np.array([1 - 2j, 3j], np.complex128), np.array([True, False, True]),
    np.zeros((0, 3), np.float32), np.arange(6, dtype=np.float32).reshape(2, 3).T])
def test_fixed_width_numbers_fill_their_typed_field_as_tensorflow_would(array):
    proto = ndarray_to_proto(array)
    reference = tf.make_tensor_proto(array)
    assert not proto.tensor_content
    assert (proto.dtype, proto.tensor_shape) == (reference.dtype, reference.tensor_shape)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)


def test_strings_are_encoded_as_utf8():
    proto = ndarray_to_proto(np.array(["héllo", "x"]))
    assert proto.dtype == types_pb2.DT_STRING
    assert list(proto.string_val) == ["héllo".encode(), b"x"]


def test_rest_float_text_is_shortest_round_trip():
    outputs = {"p": np.array([0.1, 1 / 3, 2.0, np.nan, -np.inf, 1e-5], np.float32)}
    text = format_predict_response(outputs, COLUMNAR)
    assert text == '{"outputs": [0.1, 0.333333343, 2.0, NaN, -Infinity, 1e-05]}'


def _write_decimal(value, single_precision):
    """TF Serving's WriteDecimal, one value at a time: the reference for `format_floats`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = "%g" % value
    if single_precision:
        if np.float32(float(text)) != np.float32(value):
            text = "%.9g" % value
    elif float(text) != value:
        text = "%.17g" % value
    return text if "." in text or "e" in text else text + ".0"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rest_float_texts_of_whole_outputs_equal_one_value_at_a_time(dtype):
    """The response writer formats an output's values at once; every text is WriteDecimal's."""
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.normal(size=2000), rng.normal(size=2000) * 1e30, rng.normal(size=2000) * 1e-40,
        np.round(rng.normal(size=2000), 3), rng.integers(-10**7, 10**7, 2000),
        [0.0, -0.0, 0.1, 1 / 3, 1e6, 123456.0, 1234567.0, 1e16, 2.0**53 + 1, 5e-324, 1e-45,
         3.4028235e38, np.nan, np.inf, -np.inf]]).astype(dtype)
    expected = [_write_decimal(v, dtype == np.float32) for v in values.astype(np.float64).tolist()]
    assert [format_float(v, dtype == np.float32) for v in values.astype(np.float64)[-20:]] == expected[-20:]
    assert format_predict_response({"v": values}, COLUMNAR) == '{"outputs": [' + ", ".join(expected) + "]}"
    rows = values[:-3].reshape(-1, 2, 2)  # row format: one entry per row, nested
    texts = expected[:-3]
    assert format_predict_response({"v": rows}, ROW) == '{"predictions": [' + ", ".join(
        f"[[{texts[i]}, {texts[i + 1]}], [{texts[i + 2]}, {texts[i + 3]}]]"
        for i in range(0, len(texts), 4)) + "]}"


def test_rest_row_response_needs_matching_batch_sizes():
    with pytest.raises(ServingError, match="Tensor name: b has inconsistent batch size: 3"):
        format_predict_response({"a": np.zeros(2), "b": np.zeros(3)}, ROW)


def test_rest_request_values_parse_alike_with_and_without_the_plain_list_shortcut():
    """Dense lists of plain scalars skip the element-by-element checks (`_plain_leaves`); on
    random nested JSON values of every kind, whatever takes the shortcut gives exactly the
    array the checked path gives, and whatever the checked path rejects never takes it."""
    rng = np.random.default_rng(0)
    leaves = [1, -3, 2**31, 2**63 - 1, -2**63, 2**64 - 1, 2**24, 2**24 - 1, 2**53, 0.5, 1e39,
              float("nan"), float("inf"), 3.4e38, True, False, "ab", "é", {"b64": "YWI="}, None]

    def value(depth):
        if depth == 0 or rng.random() < 0.2:
            return leaves[rng.integers(len(leaves))]
        if rng.random() < 0.5:  # dense: every element alike
            element = value(depth - 1)
            return [element] * int(rng.integers(0, 4))
        return [value(depth - 1) for _ in range(int(rng.integers(0, 4)))]

    dtypes = [types_pb2.DT_STRING, types_pb2.DT_INT64, types_pb2.DT_INT32, types_pb2.DT_UINT8,
              types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_BOOL, types_pb2.DT_HALF]
    shortcuts = 0
    for _ in range(3000):
        json_value, dtype = value(3), dtypes[rng.integers(len(dtypes))]
        shape = json_tensor._dense_shape(json_value)
        fast = json_tensor._plain_leaves(json_value, shape, dtype)
        checked = []
        try:
            json_tensor._fill(json_value, 0, shape, dtype, checked)
        except ServingError:
            assert fast is None, (json_value, dtype)
            continue
        if fast is not None:
            shortcuts += 1
            expected = json_tensor._to_array(checked, shape, dtype)
            got = json_tensor._to_array(fast, shape, dtype)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
    assert shortcuts > 300


def test_rest_row_requests_parse_alike_with_and_without_the_plain_list_shortcut(monkeypatch):
    """Row-format requests whose instances all name every input take the column shortcut; on
    random ones (ragged, b64, wrong types, missing keys) the arrays, or the error messages,
    equal those of the checks per instance."""
    infos = {"ids": _tensor_info(tf.TensorSpec([None, None], tf.int64)),
             "name": _tensor_info(tf.TensorSpec([None], tf.string)),
             "x": _tensor_info(tf.TensorSpec([None, 2], tf.float32))}
    rng = np.random.default_rng(1)
    choices = {"ids": [lambda: rng.integers(0, 9, 2).tolist(), lambda: [3, 4, 5], lambda: [],
                       lambda: [True, 1], lambda: 7, lambda: [2**63, 1]],
               "name": [lambda: str(rng.integers(99)), lambda: "é", lambda: {"b64": "/w=="}, lambda: 3,
                        lambda: ["a"]],
               "x": [lambda: rng.normal(size=2).tolist(), lambda: [1e39, 0.0], lambda: [1, 2, 3],
                     lambda: [float("nan"), 2**30]]}
    shortcuts = 0

    def parse(body):
        try:
            inputs = parse_predict_request(body, lambda name: infos)[1]
            return {name: value.tolist() for name, value in inputs.items()}
        except ServingError as error:
            return error.message

    for _ in range(300):
        instances = []
        plain_only = rng.random() < 0.5  # kind 0: plain values, dense across instances
        kinds = {name: 0 if plain_only else rng.integers(len(options)) for name, options in choices.items()}
        for _ in range(int(rng.integers(1, 4))):
            if rng.random() < 0.3:  # else every instance has the same kinds of values
                kinds = {name: rng.integers(len(options)) for name, options in choices.items()}
            instance = {name: choices[name][kind]() for name, kind in kinds.items()}
            if rng.random() < 0.1:
                instance.pop("x")
            instances.append(instance)
        plain = all(kind == 0 for kind in kinds.values())
        body = json.dumps({"instances": instances}).encode()
        with monkeypatch.context() as patched:
            patched.setattr(json_tensor, "_plain_leaves", lambda *args: None)
            expected = parse(body)
        got = parse(body)
        assert str(got) == str(expected), body  # str: NaN compares unequal to itself
        shortcuts += plain and isinstance(got, dict) and len(instances) > 1
    assert shortcuts > 20


def test_message_bytes_counts_a_predict_request_by_its_tensors_without_serializing_it():
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "din"
    request.inputs["hist"].CopyFrom(ndarray_to_proto(np.zeros((100, 1000), np.int64), use_tensor_content=True))
    request.inputs["price"].CopyFrom(ndarray_to_proto(np.zeros(100, np.float32)))  # float_val
    request.inputs["user"].CopyFrom(ndarray_to_proto(np.array([b"u1", b"u2"], object)))
    assert message_bytes(request) == 800_000 + 8 * 100 + 8 * 2
    assert abs(message_bytes(request) - request.ByteSize()) < 0.01 * request.ByteSize()
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert message_bytes(metadata) == metadata.ByteSize()


def test_rest_request_parsing_against_signature():
    infos = {"ids": tf.TensorSpec([None], tf.int64), "name": tf.TensorSpec([None], tf.string)}
    proto_infos = {alias: _tensor_info(spec) for alias, spec in infos.items()}
    signature, inputs, request_format = parse_predict_request(
        b'{"instances": [{"ids": 3, "name": {"b64": "/w=="}}, {"ids": 4, "name": "b"}]}',
        lambda name: proto_infos)
    assert (signature, request_format) == ("", ROW)
    np.testing.assert_array_equal(inputs["ids"], np.array([3, 4], np.int64))
    assert list(inputs["name"]) == [b"\xff", b"b"]


def _tensor_info(spec):
    info = meta_graph_pb2.TensorInfo(name="x:0", dtype=spec.dtype.as_datatype_enum)
    info.tensor_shape.CopyFrom(spec.shape.as_proto())
    return info


def test_json_values_round_trip_for_the_rest_client():
    strings = np.array([[b"ok", b"\xff\xfe"]], object)
    assert to_json_value(strings) == [["ok", {"b64": "//4="}]]
    np.testing.assert_array_equal(from_json_value(to_json_value(strings), types_pb2.DT_STRING),
                                  strings)
    floats = from_json_value([[1, 2.5]], types_pb2.DT_FLOAT)
    assert floats.dtype == np.float32 and floats.tolist() == [[1.0, 2.5]]


def test_deploy_templates_parse():
    config = read_model_config_file(os.path.join(DEPLOY, "models.config"))
    assert [m.name for m in config.model_config_list.config] == ["ranker", "retrieval"]
    with open(os.path.join(DEPLOY, "batching_parameters.txt")) as f:
        options = BatchingOptions.from_text(f.read())
    assert options.max_batch_size == 128 and options.num_batch_threads == 4
    from serving.monitoring import prometheus_path, read_monitoring_config_file

    monitoring = read_monitoring_config_file(os.path.join(DEPLOY, "monitoring.config"))
    assert prometheus_path(monitoring) == "/monitoring/prometheus/metrics"


def test_deploy_manifests_pass_monitoring_and_batching_files_they_mount():
    import yaml

    with open(os.path.join(DEPLOY, "docker-compose.yml")) as f:
        services = yaml.safe_load(f)["services"]
    assert set(services) == {"tf-serving", "tf-serving-scann"}
    for service in services.values():
        mounted = {volume.split(":")[1] for volume in service["volumes"]}
        for flag in service["command"]:
            if flag.endswith("_file") or "_file=" in flag:
                path = flag.split("=", 1)[1]
                assert path.startswith("/models/") or path in mounted, flag
    with open(os.path.join(DEPLOY, "kubernetes.yaml")) as f:
        documents = list(yaml.safe_load_all(f))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    for key in config_map["data"]:
        assert any(arg.endswith("=/config/" + key) for arg in args), key
    from google.protobuf import text_format

    from serving.monitoring import MonitoringConfig, prometheus_path

    monitoring = text_format.Parse(config_map["data"]["monitoring.config"], MonitoringConfig())
    assert prometheus_path(monitoring) == deployment["spec"]["template"]["metadata"][
        "annotations"]["prometheus.io/path"]


@pytest.mark.parametrize("dtype", [types_pb2.DT_BFLOAT16, types_pb2.DT_HALF, types_pb2.DT_FLOAT])
def test_client_types_python_numbers_by_the_signatures_float_dtype(dtype):
    """serving.Client sends a list of numbers for a bfloat16 input as bfloat16 (numpy sees
    bfloat16 as kind "V", so it used to go out as double and be refused)."""
    from serving.client import _cast_to_signature

    proto = ndarray_to_proto(_cast_to_signature("x", np.array([2.5, 1]), dtype))
    assert proto.dtype == dtype
    assert tf.make_ndarray(proto).astype(np.float64).tolist() == [2.5, 1.0]
