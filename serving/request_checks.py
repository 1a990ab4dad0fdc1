"""The checks every request goes through before a model runs, shared by gRPC, REST and the
client: the inputs a signature names, the output filter, each tensor's dtype, and decoding a
TensorProto within the server's limits. Messages and codes are TF Serving 2.20's
(predict_util.cc, tensorflow/cc/saved_model/util.cc).
"""
import grpc

from serving.errors import invalid_argument
from serving.tensors import (TensorProtoError, checked_size, dtype_of_array, dtype_string,
                             ndarray_from_proto, shape_of, shape_string)


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
                f"{_joined(signature.defaults)}"
                # TF Serving's text ends above; this names the culprit of a misspelt feature.
                + (f". Sent but not in the signature: {{{_joined(request - expected)}}}" if request - expected else ""))
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


def check_input_tensor(alias, info, array):
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
MODEL_FAILURE_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNIMPLEMENTED})


def decode_request_tensor(alias, proto, header=None):
    """A request TensorProto as numpy; a malformed one is INVALID_ARGUMENT naming the alias.
    `header`: the proto's entry of `request_headers`, when it has been read already."""
    try:
        return ndarray_from_proto(proto, header=header)
    except TensorProtoError as error:
        raise invalid_argument(f"tensor parsing error: {alias} ({error})") from None


def request_headers(request_inputs):
    """{alias: (numpy dtype, dims, elements)} of a request's TensorProtos (`checked_size`),
    read from their headers without decoding anything; an unsupported dtype, an invalid shape
    or a tensor beyond the per-tensor size guard is INVALID_ARGUMENT naming the alias."""
    headers = {}
    for alias, proto in sorted(request_inputs.items()):
        try:
            headers[alias] = checked_size(proto)
        except TensorProtoError as error:
            raise invalid_argument(f"tensor parsing error: {alias} ({error})") from None
    return headers


def _count(dims):
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


def check_request_elements(shapes, max_elements):
    """The elements every input of one request declares, together, against the server's cap
    (--max_request_elements; None: no cap). tfrec's own guard, before anything is decoded: a
    441-byte request may declare 10^8 elements, which TF Serving would allocate."""
    if max_elements is None:
        return
    total = sum(_count(dims) for dims in shapes.values())
    if total > max_elements:
        sizes = ", ".join(f"{alias}: {shape_string(dims)}" for alias, dims in sorted(
            shapes.items(), key=lambda item: -_count(item[1]))[:4])
        raise invalid_argument(
            f"The request's inputs hold {total} elements, more than the {max_elements} this "
            f"server accepts in one request (--max_request_elements); largest inputs: {sizes}")


def check_batch_sizes(signature, shapes):
    """Every input of a batch-major signature has the same 0th dimension (tfrec's own check).

    Applies when every input of the signature declares a known rank >= 1 with a leading -1
    (the batch dimension) or 1 (one row shared by the batch: a user's history in
    `shared_history`); among the request's inputs with a leading -1 fed with their rank, the 0th
    dimensions must agree, else INVALID_ARGUMENT naming the inputs and their sizes. An input
    fed with another rank is left to the model to judge (TF Serving feeds it as it is).
    """
    declared = {}
    for alias, info in signature.inputs.items():
        if info.WhichOneof("encoding") != "name":
            return
        dims = shape_of(info.tensor_shape)
        if not dims or dims[0] not in (-1, 1):
            return
        if dims[0] == -1:
            declared[alias] = dims
    sizes = {alias: dims[0] for alias, dims in shapes.items()
             if alias in declared and len(dims) == len(declared[alias])}
    if len(set(sizes.values())) > 1:
        by_size = {}
        for alias, size in sorted(sizes.items()):
            by_size.setdefault(size, []).append(alias)
        groups = "; ".join(f"{','.join(aliases)}: {size}"
                           for size, aliases in sorted(by_size.items(),
                                                       key=lambda item: -len(item[1])))
        raise invalid_argument(
            f"The inputs of a request must have the same batch size (0th dimension), as the "
            f"signature declares a leading batch dimension for each of them; got {groups}")
