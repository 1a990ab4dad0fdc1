"""TF Serving's REST API (tensorflow_serving/model_servers/http_rest_api_handler.cc) on aiohttp.

  GET  /v1/models/NAME[/versions/V | /labels/L]            model status
  GET  /v1/models/NAME[/versions/V | /labels/L]/metadata   signature defs
  POST /v1/models/NAME[/versions/V | /labels/L]:predict    predict (row or columnar JSON)
  POST /v1/models/NAME[/versions/V | /labels/L]:classify   classify (tf.Example JSON)
  POST /v1/models/NAME[/versions/V | /labels/L]:regress    regress (tf.Example JSON)
  ANY  <prometheus path>                                    metrics (--monitoring_config_file)

Every answer is JSON. Errors are `{"error": "<message>"}` with the HTTP status TF Serving maps
the canonical code to (serving.errors.http_status_of): any other method or path under /v1/ is
`Malformed request: METHOD PATH` (400), as in TF Serving; a path outside /v1/ is 404; HTTP the
server cannot parse (bad request line, bad Content-Length, bad chunked encoding, an unknown
method) is 400; a body over the limit is 413. Messages are cut at 1,024 characters like TF
Serving's gRPC statuses (grpc_status_util.cc), so a 16,000-character model name is answered
with a short NOT_FOUND.

The server is aiohttp's low-level server on its own event loop and thread, listening with a
backlog of 1,024. Requests are read on the loop (bodies may be chunked; a request that has not
arrived completely within the read timeout is dropped, its connection closed unanswered; an
answer the client has not read within it is dropped and its connection aborted) and
run on a thread pool, so a slow model never blocks reading or accepting. `--rest_api_timeout_in_ms`
bounds each request: a body not read by then is dropped the same way, an answer not ready by
then is 504 DEADLINE_EXCEEDED (the model run itself finishes in the background). `stop()` stops
accepting, lets requests in flight finish (bounded), then closes every connection.

Model names and labels from the path are looked up among the configured models only; they
never name a file.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import asyncio
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
import zlib
from concurrent import futures

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from serving import json_examples, monitoring
from serving.errors import ServingError, http_status_of, invalid_argument
from serving.json_tensor import format_error, format_predict_response, parse_predict_request
from serving.servable import DEFAULT_SIGNATURE, metadata_response

log = logging.getLogger("serving.rest")

DEFAULT_MAX_BODY_BYTES = 256 * 2**20
DEFAULT_READ_TIMEOUT_SECONDS = 60.0
DEFAULT_NUM_THREADS = 32
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 10.0
LISTEN_BACKLOG = 1024
MAX_ERROR_MESSAGE_CHARS = 1024  # tensorflow_serving/model_servers/grpc_status_util.cc
_MAX_REQUEST_LINE_BYTES = 64 * 1024
_MAX_HEADER_FIELD_BYTES = 16 * 1024
_LINGERING_SECONDS = 1.0

_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)", re.IGNORECASE)
_MODEL_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_INT64_MAX = 2**63 - 1
_JSON = "application/json"


def truncated(message):
    """A message cut at 1,024 characters, as TF Serving cuts its statuses."""
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        return message[:MAX_ERROR_MESSAGE_CHARS] + "...TRUNCATED"
    return message


def error_json(message):
    return format_error(truncated(message))


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


class Route:
    """What a request path asks for: `api` ("predict", "classify", "regress", "metadata",
    "status"), the ModelSpec (None when the path is malformed) and `error`, the ServingError
    the path itself already gives (None if it is well-formed)."""

    __slots__ = ("api", "spec", "error")

    def __init__(self, api=None, spec=None, error=None):
        self.api, self.spec, self.error = api, spec, error

    @property
    def model_name(self):
        return self.spec.name if self.spec is not None else ""


def route(method, path):
    """The Route of `METHOD PATH` (`path` as sent: percent-encoded, without the query)."""
    malformed = invalid_argument(f"Malformed request: {method} {path}")
    try:
        if method == "POST":
            match = _PREDICT_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                return Route(verb.lower(), _model_spec(name, version, label))
        elif method == "GET":
            match = _MODEL_PATH.fullmatch(path)
            if match:
                name, version, label, subresource = match.groups()
                api = "metadata" if subresource else "status"
                if not name:
                    return Route(api, None, invalid_argument("Missing model name in request."))
                return Route(api, _model_spec(name, version, label))
    except ServingError as error:
        return Route(None, None, error)
    return Route(None, None, malformed)


class RestApi:
    """Answers REST requests from a ServerCore, synchronously (run it on a worker thread)."""

    def __init__(self, core):
        self._core = core

    def handle(self, method, path, body):
        """Returns (HTTP status, JSON text) for one request."""
        status, text, _ = self.answer(route(method, path), body, f"{method} {path}")
        return status, text

    def answer(self, request_route, body, what=""):
        """(HTTP status, JSON text, grpc.StatusCode) answering a routed request."""
        try:
            if request_route.error is not None:
                raise request_route.error
            return 200, self._dispatch(request_route, body), grpc.StatusCode.OK
        except ServingError as error:
            if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                log.error("REST %s failed: %s", what, error.message)
            return http_status_of(error.code), error_json(error.message), error.code
        except Exception as error:  # noqa: BLE001 - no request may take the server down
            log.exception("REST %s failed", what)
            return (500, error_json(f"Internal error: {type(error).__name__}: {error}"),
                    grpc.StatusCode.INTERNAL)

    def _dispatch(self, request_route, body):
        api, spec = request_route.api, request_route.spec
        if api == "predict":
            return self._predict(spec, body)
        if api in ("classify", "regress"):
            return self._examples(api, spec, body)
        if api == "metadata":
            return _metadata_json(metadata_response(self._core.servable(spec)))
        return _to_json(self._core.model_status(spec))

    def _examples(self, api, spec, body):
        handler = json_examples.rest_classify if api == "classify" else json_examples.rest_regress
        return json.dumps(handler(self._core, spec, bytes(body)))

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


# ------------------------------------------------------------------------------ HTTP


class _JsonErrorRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering what its HTTP parser rejects (bad request
    line, unknown method, bad Content-Length or chunked encoding, oversized headers) and
    unhandled errors with TF Serving's JSON error instead of aiohttp's text page.

    A client that does not read its answer within `answer_timeout` seconds has its connection
    aborted: otherwise the unsent rest of a large answer would stay buffered, and the
    connection open, for as long as the client stalls.
    """

    answer_timeout = None

    async def finish_response(self, request, resp, start_time):
        if self.answer_timeout is None:
            return await super().finish_response(request, resp, start_time)
        try:
            return await asyncio.wait_for(super().finish_response(request, resp, start_time),
                                          self.answer_timeout)
        except asyncio.TimeoutError:
            log.info("Aborting a REST connection whose client did not read its answer within "
                     "%.1f s: %s %s", self.answer_timeout, request.method, request.raw_path[:200])
            if request.transport is not None:
                request.transport.abort()  # drops the buffered rest of the answer now
            return resp, True  # as aiohttp reports a client gone mid-answer

    def handle_error(self, request, status=500, exc=None, message=None):
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response "
                                  "with the error message")
        if status >= 500:
            log.error("REST request failed: %s", exc or message, exc_info=exc)
            text = "Internal error" + (f": {exc}" if exc else "")
        else:
            reason = message or (getattr(exc, "message", None) or str(exc) if exc else "")
            reason = str(reason).split(":\n", 1)[0]  # without aiohttp's echo of the bytes
            log.debug("Malformed HTTP request: %s", reason)
            text = f"Malformed HTTP request: {reason}".rstrip(": ")
        response = web.Response(status=status, text=error_json(text), content_type=_JSON)
        response.force_close()
        return response


class _Server(Server):
    """aiohttp's Server making `_JsonErrorRequestHandler`s; `answer_timeout` (seconds, None:
    no bound) is how long a client may take to read an answer."""

    def __init__(self, handler, answer_timeout=None, **kwargs):
        super().__init__(handler, **kwargs)
        self._answer_timeout = answer_timeout

    def __call__(self):
        handler = _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.answer_timeout = self._answer_timeout
        return handler


class _DroppedRequest(Exception):
    """The request did not arrive in time: close its connection without an answer."""


class RestServer:
    """The REST API served by aiohttp on its own thread and event loop.

    Args:
      core: the ServerCore.
      host, port: where to listen (port 0 picks a free one; see `.port`). Bound here, so an
        address in use raises OSError from the constructor.
      timeout: seconds per request (--rest_api_timeout_in_ms): a body not read by then drops
        the request, an answer not ready by then is 504 DEADLINE_EXCEEDED; None: no deadline.
      max_body_bytes: largest request body; a larger one is answered 413 with a JSON error.
      read_timeout: seconds a connection may take to send a whole request, to read a whole
        answer, and stay idle between requests, before it is closed (slowloris protection).
      num_threads: threads running requests (--rest_api_num_threads).
      metrics: a serving.monitoring.Metrics recording every request (default: the process's).
      metrics_path: serve `metrics.exposition()` at this path (--monitoring_config_file);
        None: no metrics page.
      shutdown_timeout: seconds `stop()` waits for requests in flight.
    """

    def __init__(self, core, host, port, timeout=None, max_body_bytes=DEFAULT_MAX_BODY_BYTES,
                 read_timeout=DEFAULT_READ_TIMEOUT_SECONDS, num_threads=DEFAULT_NUM_THREADS,
                 metrics=None, metrics_path=None,
                 shutdown_timeout=DEFAULT_SHUTDOWN_TIMEOUT_SECONDS):
        self._api = RestApi(core)
        self._timeout = timeout or None
        self._max_body_bytes = int(max_body_bytes)
        self._read_timeout = read_timeout if read_timeout and read_timeout > 0 else None
        self._metrics = metrics if metrics is not None else monitoring.METRICS
        self._metrics_path = metrics_path
        self._shutdown_timeout = shutdown_timeout
        self._executor = futures.ThreadPoolExecutor(max_workers=max(1, int(num_threads)),
                                                    thread_name_prefix="rest")
        self._sock = self._bind(host, port)
        self._port = self._sock.getsockname()[1]
        self._loop = None
        self._aio_server = None
        self._listener = None
        self._ready = threading.Event()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, name="rest-api", daemon=True)

    @staticmethod
    def _bind(host, port):
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def port(self):
        return self._port

    def start(self):
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._start_error is not None:
            raise OSError(f"cannot start the REST server: {self._start_error}")

    def stop(self):
        """Stops accepting, waits (bounded) for requests in flight, closes every connection."""
        if self._loop is not None and self._thread.is_alive():
            done = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            try:
                done.result(timeout=self._shutdown_timeout + 5)
            except Exception:  # noqa: BLE001 - stopping must not raise
                log.exception("REST server shutdown")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        else:
            self._sock.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- event loop thread -----------------------------------------------------------------

    def _run(self):
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._aio_server = _Server(
                self._handle, loop=loop, access_log=None,
                keepalive_timeout=self._read_timeout or 3600.0,
                answer_timeout=self._read_timeout,
                max_line_size=_MAX_REQUEST_LINE_BYTES, max_field_size=_MAX_HEADER_FIELD_BYTES,
                lingering_time=_LINGERING_SECONDS, auto_decompress=False)
            self._listener = loop.run_until_complete(loop.create_server(
                self._aio_server, sock=self._sock, backlog=LISTEN_BACKLOG))
        except Exception as error:  # noqa: BLE001 - reported by start()
            self._start_error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self):
        self._listener.close()  # no new connections from here on
        self._aio_server.pre_shutdown()  # idle connections close now, busy ones when answered
        await self._aio_server.shutdown(self._shutdown_timeout)
        try:
            await asyncio.wait_for(self._listener.wait_closed(), 1.0)
        except asyncio.TimeoutError:
            pass
        # Requests still running after the grace are cancelled here, while the loop runs, so that
        # closing it leaves no pending task and no executor result aimed at a closed loop.
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, request):
        started = time.monotonic()
        if request.version < (1, 0):  # as TF Serving's libevent: 400, where aiohttp would answer it
            response = self._json(400, error_json("Malformed HTTP request: HTTP/0.9 is not supported; send "
                                                  "HTTP/1.0 or HTTP/1.1"))
            response.force_close()
            return response
        raw_path = request.raw_path
        if not raw_path.startswith("/"):  # absolute-form target: http://host/v1/...
            raw_path = urllib.parse.urlsplit(raw_path).path or "/"
        raw_path = raw_path.split("?", 1)[0].split("#", 1)[0]
        method = request.method
        if self._metrics_path is not None and raw_path == self._metrics_path:
            return web.Response(body=self._metrics.exposition(),
                                headers={"Content-Type": monitoring.CONTENT_TYPE})
        deadline = started + self._timeout if self._timeout else None
        request_route = (route(method, raw_path) if _API_PATH.fullmatch(raw_path)
                         else None)
        try:
            body = await self._read_body(request, deadline)
        except _DroppedRequest:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=408)  # never sent: the connection is closed
        except ServingError as error:  # body over the limit (413), or bad gzip (400)
            self._record(request_route, error.code, started)
            too_large = error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            response = self._json(413 if too_large else http_status_of(error.code), error_json(error.message))
            if too_large:  # the rest of a body over the limit is never read
                response.force_close()
            return response
        if request_route is None:
            return self._json(404, error_json(f"Not found: {raw_path}"))
        what = f"{method} {raw_path}"
        work = self._loop.run_in_executor(self._executor, self._api.answer, request_route,
                                          body, what)
        try:
            if deadline is None:
                status, text, code = await work
            else:  # on timeout, a request still queued is cancelled; a running one finishes
                status, text, code = await asyncio.wait_for(
                    work, max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            status, text = http_status_of(code), error_json(
                f"Deadline Exceeded: no answer within --rest_api_timeout_in_ms="
                f"{round(self._timeout * 1000)}")
        self._record(request_route, code, started)
        return self._json(status, text)

    def _record(self, request_route, code, started):
        if request_route is None or request_route.api is None:
            return
        try:
            self._metrics.observe(request_route.model_name, request_route.api, code,
                                  time.monotonic() - started, entrypoint="REST")
        except Exception:  # noqa: BLE001 - metrics never fail a request
            log.exception("Recording REST metrics failed")

    @staticmethod
    def _json(status, text):
        return web.Response(status=status, text=text, content_type=_JSON)

    def _too_large(self, size_text):
        return ServingError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Request body of {size_text} bytes exceeds the limit of {self._max_body_bytes} "
            f"bytes (--rest_api_max_body_bytes)")

    async def _read_body(self, request, deadline):
        """The whole body (bytes), uncompressed if it is gzip; _DroppedRequest if it does not
        arrive in time, ServingError (413) if it is larger than the limit, (400) if its
        Content-Encoding is not gzip or its gzip data is bad."""
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise self._too_large(str(length))
        if not request.body_exists:
            return b""
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        timeout = self._read_timeout
        if deadline is not None:
            remaining = max(0.0, deadline - time.monotonic())
            timeout = remaining if timeout is None else min(timeout, remaining)
        try:
            if timeout is None:
                body = await self._read_all(request)
            else:
                body = await asyncio.wait_for(self._read_all(request), timeout)
        except asyncio.TimeoutError:
            log.info("Dropping a REST request whose body did not arrive in time: %s %s",
                     request.method, request.raw_path[:200])
            raise _DroppedRequest() from None
        except ConnectionError:  # the client went away mid-body
            log.debug("REST client disconnected while sending %s %s", request.method,
                      request.raw_path[:200])
            raise _DroppedRequest() from None
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding != "gzip":
            raise invalid_argument(f"Unsupported Content-Encoding {encoding!r}: the REST API takes a JSON "
                                   "body as it is or gzip-compressed (Content-Encoding: gzip)")
        return self._gunzip(body)

    def _gunzip(self, body):
        """A gzip-compressed body, uncompressed, as TF Serving's HTTP server does by default; the
        body limit applies to the uncompressed bytes, so a small bomb is 413, not a full memory."""
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = decompressor.decompress(body, self._max_body_bytes + 1)
        except zlib.error as error:
            raise invalid_argument(f"Content-Encoding is gzip, but the body is not gzip data: {error}") from None
        if len(data) > self._max_body_bytes:
            raise self._too_large(f"more than {self._max_body_bytes} (uncompressed)")
        if not decompressor.eof:
            raise invalid_argument("Content-Encoding is gzip, but the gzip body is truncated")
        if decompressor.unused_data:  # refused as TF Serving's zlib wrapper does: not read as JSON
            raise invalid_argument(f"Content-Encoding is gzip, but {len(decompressor.unused_data)} bytes "
                                   "follow the end of the gzip data (another gzip member or garbage)")
        return data

    async def _read_all(self, request):
        chunks, size = [], 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_body_bytes:
                raise self._too_large(f"more than {self._max_body_bytes}")
            chunks.append(chunk)
