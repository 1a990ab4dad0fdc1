"""One error type for the whole serving package, and the code tables TF Serving uses.

`ServingError` carries a gRPC status code and TF Serving's message. The server raises it
wherever a request fails; both clients raise it to their callers, so code written against
`serving.Client` handles a REST failure and a gRPC failure the same way.
"""
import re

import grpc

# TF Serving's REST server answers each canonical status with this HTTP code
# (tensorflow_serving/model_servers/http_server.cc, ToHTTPStatusCode).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# The reverse is ambiguous (400 is INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE);
# a REST client can only take the most common meaning of each HTTP code.
_STATUS_OF_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_STATUS_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A failed serving call: `code` is a `grpc.StatusCode`, `message` the server's text.

    Raised by the server internals (and turned into the gRPC status / REST error JSON),
    and by `serving.Client` and `serving.RestClient`.
    """

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def http_status_of(code):
    """The HTTP status TF Serving's REST API answers for a `grpc.StatusCode`."""
    return _HTTP_STATUS.get(code, 500)


def status_code_of_http(http_status):
    """The `grpc.StatusCode` a REST client reports for an HTTP error status."""
    return _STATUS_OF_HTTP.get(http_status, grpc.StatusCode.UNKNOWN)


def status_code_of_number(number):
    """The `grpc.StatusCode` of a canonical code number (TF's `error.Code`, absl's codes)."""
    return _STATUS_OF_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def invalid_argument(message):
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message):
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message):
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def session_style_message(message):
    """An eager function error as TF Serving's session would word it: without the
    "Graph execution error: Detected at node ..." preamble and the "[Op:...]" suffix."""
    marker = "<stack traces unavailable>\n"
    if message.startswith("Graph execution error:") and marker in message:
        message = message.split(marker, 1)[1]
    return re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", message).strip()


def error_from_tf(error):
    """A ServingError carrying a TensorFlow OpError's canonical code and message."""
    return ServingError(status_code_of_number(error.error_code),
                        session_style_message(error.message))
