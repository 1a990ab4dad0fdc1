"""TF Serving's REST `:classify` and `:regress` (tensorflow_serving/util/json_tensor.cc,
FillClassifyRegressRequestFromJson / MakeJsonFromClassificationResult /
MakeJsonFromRegressionResult; model_servers/http_rest_api_handler.cc).

Request body:

    {"signature_name": "...",                      (optional; default serving_default)
     "context": {"feature": value | [values]},     (optional; merged into every example)
     "examples": [{"feature": value | [values] | {"b64": "..."}}, ...]}

JSON integers and booleans become int64_list values, numbers with a fraction or exponent
float_list, strings and {"b64": ...} bytes_list; a feature mixing kinds, nested lists, null
or a uint64 beyond int64 is INVALID_ARGUMENT with TF Serving's message. The answers are
`{"results": [[[label, score], ...], ...]}` (classify) and `{"results": [value, ...]}`
(regress) as dicts for `json.dumps`; scores are the float values TF Serving prints (the
shortest text that reads back as the same float32, which `json.dumps` then prints).

`rest_classify` / `rest_regress` raise `ServingError` as the gRPC methods do; the REST server
maps the code to TF Serving's HTTP status and `{"error": message}`.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import base64
import binascii
import json
import math

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from serving import inference
from serving.errors import invalid_argument
from serving.json_tensor import (check_finite_or_written, format_float, format_floats, json_type,
                                 parse_json_body)

__all__ = ["rest_classify", "rest_regress", "parse_classify_regress_request"]

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
_UINT64_MAX = 2**64 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_ERROR_JSON_CHARS = 4096  # TF Serving echoes the whole document; a cap keeps errors small


def _json_numbers(values):
    """float32 values as the Python floats whose `json.dumps` texts are what TF Serving writes."""
    return [float(text) for text in format_floats(np.asarray(values, np.float64), single_precision=True)]


def _json_text(value):
    """A JSON value as rapidjson's PrettyWriter prints it in TF Serving's error messages."""
    text = json.dumps(value, indent=4, ensure_ascii=False)
    if len(text) > _MAX_ERROR_JSON_CHARS:
        text = text[:_MAX_ERROR_JSON_CHARS] + "..."
    return text


def _format_error(doc, *parts):
    return invalid_argument(f"JSON Value: {_json_text(doc)} " + "".join(parts))


def _parse_json(body):
    """TF Serving's ParseJson of a classify / regress body: a JSON object, else
    INVALID_ARGUMENT."""
    doc = parse_json_body(body)
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


_KIND_TEXT = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64",
              None: "UNKNOWN"}


def _kind_error(name, feature):
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: "
                            f"{_KIND_TEXT[feature.WhichOneof('kind')]}")


def _check_kind(name, feature, kind):
    current = feature.WhichOneof("kind")
    if current is not None and current != kind:
        raise _kind_error(name, feature)


def _unexpected(name, value):
    return invalid_argument(f"Feature: {name} has element with unexpected JSON type: "
                            f"{json_type(value)}")


def _add_value(value, name, feature):
    """TF Serving's AddValueToFeature."""
    if value is None or isinstance(value, list):
        raise _unexpected(name, value)
    if isinstance(value, bool):
        _check_kind(name, feature, "int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        if not (len(value) == 1 and isinstance(value.get("b64"), str)):
            raise _unexpected(name, value)
        _check_kind(name, feature, "bytes_list")
        text = value["b64"]
        try:
            decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument("Unable to base64 decode") from None
        feature.bytes_list.value.append(decoded)
    elif isinstance(value, str):
        _check_kind(name, feature, "bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", errors="surrogatepass"))
    elif isinstance(value, int) and value <= _UINT64_MAX and value >= _INT64_MIN:
        _check_kind(name, feature, "int64_list")
        if value > _INT64_MAX:
            raise invalid_argument(f"Feature: {name} has uint64 element. Only int64 is "
                                   f"supported.")
        feature.int64_list.value.append(value)
    else:  # a number with a fraction or exponent, or an integer beyond 64 bits (a double)
        _check_kind(name, feature, "float_list")
        number = float(check_finite_or_written(value))
        if math.isfinite(number) and not -_FLOAT32_MAX <= number <= _FLOAT32_MAX:
            raise invalid_argument(f"Cannot convert JSON value: "
                                   f"{format_float(number, False)} to float without loss "
                                   f"of precision.")
        feature.float_list.value.append(number)


def _example(value, example):
    """TF Serving's MakeExampleFromJsonObject."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        if isinstance(content, list):
            for item in content:
                _add_value(item, name, feature)
        else:
            _add_value(content, name, feature)
        example.features.feature[name].CopyFrom(feature)
    return example


def parse_classify_regress_request(body, request):
    """Fills a ClassificationRequest / RegressionRequest (its model_spec already names the
    model) from a REST body, as FillClassifyRegressRequestFromJson."""
    doc = _parse_json(body)
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a "
                                     "string value.")
        request.model_spec.signature_name = doc["signature_name"]
    has_context = "context" in doc
    if has_context:
        _example(doc["context"], request.input.example_list_with_context.context)
    if "examples" not in doc:
        raise _format_error(doc, "When method is classify, key 'examples' is expected and "
                                 "was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = (request.input.example_list_with_context.examples if has_context
              else request.input.example_list.examples)
    for value in examples:
        _example(value, target.add())
    return request


def classification_json(result):
    """MakeJsonFromClassificationResult, as a dict."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    scores = iter(_json_numbers([item.score for classifications in result.classifications
                                 for item in classifications.classes]))
    return {"results": [[[item.label, next(scores)] for item in classifications.classes]
                        for classifications in result.classifications]}


def regression_json(result):
    """MakeJsonFromRegressionResult, as a dict."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    return {"results": _json_numbers([item.value for item in result.regressions])}


def _with_spec(request, model_spec):
    if model_spec is not None:
        request.model_spec.CopyFrom(model_spec)
        request.model_spec.ClearField("signature_name")
    return request


def rest_classify(core, model_spec, body_bytes):
    """POST /v1/models/NAME[/versions/V|/labels/L]:classify -> the JSON answer as a dict.

    `model_spec`: a ModelSpec naming the model (and version or label) from the URL; the
    signature comes from the body. Raises ServingError (INVALID_ARGUMENT for a bad body)."""
    request = _with_spec(classification_pb2.ClassificationRequest(), model_spec)
    parse_classify_regress_request(body_bytes, request)
    response = inference.classify(core.servable(request.model_spec), request)
    return classification_json(response.result)


def rest_regress(core, model_spec, body_bytes):
    """POST /v1/models/NAME[/versions/V|/labels/L]:regress -> the JSON answer as a dict."""
    request = _with_spec(regression_pb2.RegressionRequest(), model_spec)
    parse_classify_regress_request(body_bytes, request)
    response = inference.regress(core.servable(request.model_spec), request)
    return regression_json(response.result)


def examples_json(examples):
    """Example protos -> the REST "examples" list (client side): int64 -> ints, float ->
    floats, bytes -> text, or {"b64": ...} when not UTF-8."""
    return [_feature_map_json(example) for example in examples]


def _feature_map_json(example):
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "int64_list":
            out[name] = list(feature.int64_list.value)
        elif kind == "float_list":
            out[name] = _json_numbers(feature.float_list.value)
        elif kind == "bytes_list":
            out[name] = [_bytes_json(v) for v in feature.bytes_list.value]
        else:
            out[name] = []
    return out


def _bytes_json(value):
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def example_from_dict(features):
    """{feature: value | list} -> tf.train.Example, typed like the REST parser types JSON:
    Python/numpy ints and bools -> int64_list, floats -> float_list, str/bytes -> bytes_list.
    """
    example = example_pb2.Example()
    for name, value in features.items():
        feature = example.features.feature[str(name)]
        values = _as_list(value)
        for item in values:
            if isinstance(item, (bool, np.bool_, int, np.integer)):  # booleans are 0/1 ints
                _check_kind(name, feature, "int64_list")
                feature.int64_list.value.append(int(item))
            elif isinstance(item, (float, np.floating)):
                _check_kind(name, feature, "float_list")
                feature.float_list.value.append(float(item))
            elif isinstance(item, (bytes, np.bytes_)):
                _check_kind(name, feature, "bytes_list")
                feature.bytes_list.value.append(bytes(item))
            elif isinstance(item, str):
                _check_kind(name, feature, "bytes_list")
                feature.bytes_list.value.append(item.encode("utf-8"))
            else:
                raise invalid_argument(f"Feature: {name} has element of unsupported type "
                                       f"{type(item).__name__}")
        if not values:
            feature.Clear()
    return example


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, float) and math.isnan(value):
        return []
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist() if value.dtype != object else list(value.reshape(-1))
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
