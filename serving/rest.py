"""TF Serving's REST API (tensorflow_serving/model_servers/http_rest_api_handler.cc).

  GET  /v1/models/NAME[/versions/V | /labels/L]            model status
  GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signature defs
  POST /v1/models/NAME[/versions/V | /labels/L]:predict    predict (row or columnar JSON)

Errors are `{"error": "<message>"}` with the HTTP status TF Serving maps the gRPC code to.
`:classify` and `:regress` answer 501 (not implemented by this server).
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import logging
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving.servable import DEFAULT_SIGNATURE, metadata_response
from serving.errors import ServingError, http_status_of, invalid_argument
from serving.json_tensor import format_error, format_predict_response, parse_predict_request

log = logging.getLogger("serving.rest")

_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.IGNORECASE)
_MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_INT64_MAX = 2**63 - 1


def _model_spec(name, version, label):
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name or ""))
    if version:
        number = int(version)
        if number > _INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = number
    if label:
        spec.version_label = urllib.parse.unquote(label)
    return spec


def _to_json(message):
    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _metadata_json(response):
    """GetModelMetadataResponse as TF Serving writes it: the SignatureDefMap unpacked from
    its Any, so the JSON carries no "@type" (http_rest_api_util.cc, ToJsonString)."""
    signature_def_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_def_map)
    return ('{\n"model_spec": ' + _to_json(response.model_spec) +
            ',\n"metadata": {"signature_def": ' + _to_json(signature_def_map) + "}\n}\n")


class RestApi:
    """Answers REST requests from a ServerCore: `handle(method, path, body)`."""

    def __init__(self, core):
        self._core = core

    def handle(self, method, path, body):
        """Returns (HTTP status, JSON text) for one request."""
        try:
            return 200, self._dispatch(method, path, body)
        except ServingError as error:
            if error.code == grpc.StatusCode.INTERNAL:
                log.error("REST %s %s failed: %s", method, path, error.message)
            return http_status_of(error.code), format_error(error.message)
        except Exception as error:  # noqa: BLE001 - no request may take the server down
            log.exception("REST %s %s failed", method, path)
            return 500, format_error(f"Internal error: {type(error).__name__}: {error}")

    def _dispatch(self, method, path, body):
        malformed = invalid_argument(f"Malformed request: {method} {path}")
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, verb = match.groups()
            spec = _model_spec(name, version, label)
            if verb.lower() != "predict":
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{verb.lower()} is not supported by this server; use "
                                   f"predict")
            return self._predict(spec, body)
        if method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if not match:
                raise malformed
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid_argument("Missing model name in request.")
            spec = _model_spec(name, version, label)
            if subresource:
                return _metadata_json(metadata_response(self._core.servable(spec)))
            return _to_json(self._core.model_status(spec))
        raise malformed

    def _predict(self, spec, body):
        servable = None

        def input_infos(signature_name):
            nonlocal servable
            servable = self._core.servable(spec)
            name = signature_name or DEFAULT_SIGNATURE
            signature = servable.signature_defs.get(name)
            if signature is None:
                raise invalid_argument(f'Serving signature name: "{name}" not found in '
                                       f"signature def")
            return signature.inputs

        signature_name, inputs, request_format = parse_predict_request(body, input_infos)
        outputs = servable.predict(signature_name, inputs)
        return format_predict_response(outputs, request_format)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # set on the subclass made by make_http_server

    def _serve(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        body = self.rfile.read(length) if length > 0 else b""
        if length < 0:
            status, text = 400, format_error("Malformed Content-Length header")
            self.close_connection = True
        elif not path.lower().startswith("/v1/"):
            status, text = 404, format_error(f"Not found: {path}")
        else:
            status, text = self.api.handle(self.command, path, body)
        payload = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s - %s", self.address_string(), format % args)


class RestServer:
    """The REST API served by a ThreadingHTTPServer on its own thread."""

    def __init__(self, core, host, port, timeout=None):
        """`timeout`: seconds a connection may stall reading a request or writing its answer
        (--rest_api_timeout_in_ms); None waits forever."""
        handler = type("RestHandler", (_Handler,), {"api": RestApi(core), "timeout": timeout})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="rest-api",
                                        daemon=True)

    @property
    def port(self):
        return self._httpd.server_address[1]

    def start(self):
        self._thread.start()

    def stop(self):
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
