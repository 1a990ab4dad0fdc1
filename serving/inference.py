"""Classify, Regress and MultiInference over tf.Examples, with TF Serving 2.20's semantics
(tensorflow_serving/servables/tensorflow/classifier.cc, regressor.cc, multi_inference.cc,
util.cc).

A request's `Input` (`example_list`, or `example_list_with_context` whose context is merged
into every example exactly as TF Serving does it: the serialized context followed by the
serialized example, so an example's feature overrides the context's feature of the same name)
becomes one string tensor of serialized tf.Examples, fed to the single input of a signature
that parses them. Signatures are checked as tensorflow_model_server checks them by default
(--enable_signature_method_name_check=false): any signature whose inputs and outputs have the
classify (`inputs` -> `classes` and/or `scores`) or regress (`inputs` -> `outputs`) layout is
accepted, whatever its method_name (TF2 SavedModels record every signature as predict), and
every other one is refused with INVALID_ARGUMENT and TF Serving's message.
`set_signature_method_name_check(True)` turns the method_name check on, as the flag does.

The model runs through the version's Predict path (`ServableVersion.predict`), so requests are
batched with Predict's when batching is enabled.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import threading

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, inference_pb2, model_pb2,
                                     regression_pb2)

from exporters import SERVING_SIGNATURE as DEFAULT_SIGNATURE
from serving.errors import ServingError, invalid_argument

CLASSIFY_METHOD_NAME = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD_NAME = tf.saved_model.REGRESS_METHOD_NAME
PREDICT_METHOD_NAME = tf.saved_model.PREDICT_METHOD_NAME
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"

_method_name_check = False  # tensorflow_model_server's --enable_signature_method_name_check
_method_name_check_lock = threading.Lock()


def set_signature_method_name_check(enabled):
    """TF Serving's SetSignatureMethodNameCheckFeature: with True, Classify / Regress accept
    only signatures whose method_name is classify / regress (--enable_signature_method_name_check;
    off by default in tensorflow_model_server)."""
    global _method_name_check
    with _method_name_check_lock:
        _method_name_check = bool(enabled)


# ---------------------------------------------------------------- Input -> serialized examples


def serialized_examples(input_proto):
    """TF Serving's InputToSerializedExampleTensor: a 1-D object array of serialized
    tf.Examples, the context (if any) prepended to each; INVALID_ARGUMENT "Input is empty."
    for an Input without examples."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = input_proto.example_list.examples
        prefix = b""
    elif kind == "example_list_with_context":
        examples = input_proto.example_list_with_context.examples
        prefix = input_proto.example_list_with_context.context.SerializeToString()
    else:
        examples = ()
        prefix = b""
    if not len(examples):
        raise invalid_argument("Input is empty.")
    array = np.empty(len(examples), dtype=object)
    array[:] = [prefix + example.SerializeToString() for example in examples]
    return array


# ---------------------------------------------------------------- signature checks


def _debug_string(signature):
    return text_format.MessageToString(signature)


def _signature_name(model_spec):
    return model_spec.signature_name or DEFAULT_SIGNATURE


def _check_method_and_one_input(signature, kind, method_name):
    """The checks TF Serving's PreProcessClassification and PreProcessRegression share."""
    if _method_name_check and signature.method_name != method_name:
        raise invalid_argument(
            f"Expected {kind} signature method_name to be {method_name}. "
            f"Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")


def preprocess_classification(signature):
    """TF Serving's PreProcessClassification: (input tensor name, output aliases to fetch)."""
    _check_method_and_one_input(signature, "classification", CLASSIFY_METHOD_NAME)
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(
            f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    aliases = [alias for alias in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES)
               if alias in signature.outputs]
    if not aliases:
        raise invalid_argument(
            f'Expected classification signature outputs to contain at least one of '
            f'"{CLASSIFY_OUTPUT_CLASSES}" or "{CLASSIFY_OUTPUT_SCORES}". Signature was: '
            f"{_debug_string(signature)}")
    return signature.inputs[CLASSIFY_INPUTS].name, aliases


def preprocess_regression(signature):
    """TF Serving's PreProcessRegression: (input tensor name, output aliases to fetch)."""
    _check_method_and_one_input(signature, "regression", REGRESS_METHOD_NAME)
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise invalid_argument(
            f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(
            f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    return signature.inputs[REGRESS_INPUTS].name, [REGRESS_OUTPUTS]


def _lookup_signature(servable, model_spec, kind):
    """GetClassificationSignatureDef / GetRegressionSignatureDef (the layout checks of
    PreProcess* follow, as in TF Serving)."""
    name = _signature_name(model_spec)
    signature = servable.signature_defs.get(name)
    if signature is None:
        raise invalid_argument(f"No signature was found with the name: {name}")
    if _method_name_check:
        method = CLASSIFY_METHOD_NAME if kind == "classification" else REGRESS_METHOD_NAME
        if signature.method_name != method:
            raise invalid_argument(
                f"Expected {kind} signature method_name to be {method}. Was: "
                f"{signature.method_name}")
    return name, signature


# ---------------------------------------------------------------- results


def _shape_text(array):
    return "[" + ",".join(str(dim) for dim in array.shape) + "]"


def _dtype_name(array):
    if array.dtype == object or array.dtype.kind in "SU":
        return "DT_STRING"
    try:
        return types_pb2.DataType.Name(tf.as_dtype(array.dtype).as_datatype_enum)
    except TypeError:
        return str(array.dtype)


def _label_text(label):
    """A class label for Class.label, a proto string: bytes that are not UTF-8 (which TF
    Serving's C++ copies as they are) get U+FFFD in place of the bad bytes."""
    if isinstance(label, bytes):
        return label.decode("utf-8", errors="replace")
    return str(label)


def postprocess_classification(num_examples, outputs, result):
    """TF Serving's PostProcessClassificationResult: checks `outputs` ({"classes"?,
    "scores"?} numpy arrays) and fills a ClassificationResult."""
    classes = outputs.get(CLASSIFY_OUTPUT_CLASSES)
    scores = outputs.get(CLASSIFY_OUTPUT_SCORES)
    if classes is not None:
        if classes.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                   f"{_shape_text(classes)}")
        if _dtype_name(classes) != "DT_STRING":
            raise invalid_argument(f"Expected classes Tensor of DT_STRING. Got: "
                                   f"{_dtype_name(classes)}")
        if classes.shape[0] != num_examples:
            raise invalid_argument(f"Expected classes output batch size of {num_examples}. "
                                   f"Got: {classes.shape[0]}")
    if scores is not None:
        if scores.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got "
                                   f"{_shape_text(scores)}")
        if scores.dtype != np.float32:
            raise invalid_argument(f"Expected scores Tensor of DT_FLOAT. Got: "
                                   f"{_dtype_name(scores)}")
        if scores.shape[0] != num_examples:
            raise invalid_argument(f"Expected scores output batch size of {num_examples}. "
                                   f"Got: {scores.shape[0]}")
    if classes is not None and scores is not None:
        if classes.shape[1] != scores.shape[1]:
            raise invalid_argument(f"Tensors class and score should match in dim_size(1). Got "
                                   f"{classes.shape[1]} vs. {scores.shape[1]}")
        num_classes = classes.shape[1]
    elif classes is not None:
        num_classes = classes.shape[1]
    elif scores is not None:
        num_classes = scores.shape[1]
    else:
        num_classes = 0
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            item = classifications.classes.add()
            if classes is not None:
                item.label = _label_text(classes[i, c])
            if scores is not None:
                item.score = float(scores[i, c])
    return result


def postprocess_regression(num_examples, outputs, result):
    """TF Serving's PostProcessRegressionResult: checks the "outputs" array and fills a
    RegressionResult."""
    output = outputs[REGRESS_OUTPUTS]
    if not (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or "
                               f"[batch_size, 1] but got {_shape_text(output)}")
    if num_examples != output.shape[0]:
        raise invalid_argument(f"Input batch size did not match output batch size: "
                               f"{num_examples} vs. {output.shape[0]}")
    if output.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: "
                               f"{_dtype_name(output)}")
    if output.size != num_examples:
        raise invalid_argument(f"Expected output batch size to be {num_examples}.  Got: "
                               f"{output.size}")
    for value in output.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


def _make_model_spec(spec, name, signature_name, version):
    """TF Serving's MakeModelSpec (signature name given: "" becomes serving_default)."""
    spec.Clear()
    spec.name = name
    spec.signature_name = signature_name or DEFAULT_SIGNATURE
    spec.version.value = version


def _run(servable, signature_name, examples, aliases):
    """Runs a signature on the serialized examples through Predict's path (checks, batching);
    returns the wanted outputs as numpy arrays."""
    outputs = servable.predict(signature_name, {CLASSIFY_INPUTS: examples})
    return {alias: np.asarray(outputs[alias]) for alias in aliases if alias in outputs}


# ---------------------------------------------------------------- the three methods


def classify(servable, request):
    """A ClassificationResponse for `request` from `servable` (a ServableVersion)."""
    return _infer(servable, request, "classification")


def regress(servable, request):
    """A RegressionResponse for `request` from `servable` (a ServableVersion)."""
    return _infer(servable, request, "regression")


# kind -> (response type, its pre- and post-processing)
_KINDS = {
    "classification": (classification_pb2.ClassificationResponse, preprocess_classification,
                       postprocess_classification),
    "regression": (regression_pb2.RegressionResponse, preprocess_regression,
                   postprocess_regression),
}


def _infer(servable, request, kind):
    response_type, preprocess, postprocess = _KINDS[kind]
    name, signature = _lookup_signature(servable, request.model_spec, kind)
    response = response_type()
    _make_model_spec(response.model_spec, request.model_spec.name,
                     request.model_spec.signature_name, servable.version)
    _, aliases = preprocess(signature)
    examples = serialized_examples(request.input)
    postprocess(len(examples), _run(servable, name, examples, aliases), response.result)
    return response


def _first_model_spec(request):
    """TF Serving's GetModelSpecFromRequest: the first task's spec, else an empty one."""
    if request.tasks and request.tasks[0].HasField("model_spec"):
        return request.tasks[0].model_spec
    return model_pb2.ModelSpec()


def multi_inference(core, request):
    """A MultiInferenceResponse for `request`, served by `core` (a ServerCore: the version is
    resolved from the first task's ModelSpec, as TF Serving does)."""
    servable = core.servable(_first_model_spec(request))
    return multi_inference_on(servable, request)


def multi_inference_on(servable, request):
    """TF Serving's TensorFlowMultiInferenceRunner::Infer on one loaded version."""
    model_name = ""
    input_tensor_name = ""
    seen = set()
    plan = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = _signature_name(task.model_spec)
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        signature = servable.signature_defs.get(name)
        if signature is None:
            raise invalid_argument(f"Requested signature not found in model graph: {name}")
        if task.method_name == CLASSIFY_METHOD_NAME:
            input_name, aliases = preprocess_classification(signature)
        elif task.method_name == REGRESS_METHOD_NAME:
            input_name, aliases = preprocess_regression(signature)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {task.method_name}")
        if not input_tensor_name:
            input_tensor_name = input_name
        elif input_tensor_name != input_name:
            raise invalid_argument("Input tensor must be the same for all Signatures.")
        plan.append((task, name, aliases))
    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, name, aliases in plan:
        outputs = _run(servable, name, examples, aliases)
        result = response.results.add()
        result.model_spec.CopyFrom(task.model_spec)
        result.model_spec.version.value = servable.version
        if task.method_name == CLASSIFY_METHOD_NAME:
            postprocess_classification(len(examples), outputs, result.classification_result)
        else:
            postprocess_regression(len(examples), outputs, result.regression_result)
    return response


def replay_warmup_log(servable, prediction_log):
    """Replays a warm-up PredictionLog record of kind classify_log / regress_log /
    multi_inference_log on `servable`, as TF Serving's warm-up does (predict_log records are
    the servable's own). Returns True if the record was of one of these kinds; raises
    ServingError if it fails."""
    kind = prediction_log.WhichOneof("log_type")
    if kind == "classify_log":
        classify(servable, prediction_log.classify_log.request)
    elif kind == "regress_log":
        regress(servable, prediction_log.regress_log.request)
    elif kind == "multi_inference_log":
        multi_inference_on(servable, prediction_log.multi_inference_log.request)
    else:
        return False
    return True
