"""The REST server (serving/rest.py) under abuse, over real sockets on 127.0.0.1.

A `python -m serving.server` subprocess serving the toy model takes bursts of new
connections, half-sent requests, chunked bodies, absurd Content-Lengths, odd methods, numbers
and paths; every answer is TF Serving's JSON error and the server keeps answering good
requests. In-process RestServers over a slow fake core check the deadline
(--rest_api_timeout_in_ms), that a slow model blocks nothing else, and graceful shutdown.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import gzip
import http.client
import json
import logging
import math
import socket
import threading
import time

import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_status_pb2

from serving import LocalServer
from serving.errors import not_found
from serving.monitoring import Metrics
from serving.rest import MAX_ERROR_MESSAGE_CHARS, RestServer

READ_TIMEOUT_MS = 1000
MAX_BODY_BYTES = 1_000_000
GOOD_BODY = json.dumps({"instances": [{"x": [1, 2, 3], "tag": "ab"}]}).encode()
GOOD_ANSWER = {"predictions": [{"score": 16.0, "tag_len": 2, "tag_upper": "AB",
                                "echo_bytes": {"b64": "YWI="}}]}


@pytest.fixture(scope="module")
def server(saved_models):
    extra = (f"--rest_api_read_timeout_in_ms={READ_TIMEOUT_MS}",
             f"--rest_api_max_body_bytes={MAX_BODY_BYTES}")
    with LocalServer(model_base_path=str(saved_models / "toy"), model_name="toy",
                     extra_args=extra) as running:
        running.port = int(running.rest_url.rsplit(":", 1)[1])
        yield running


def call(port, method, path, body=None, headers=None, timeout=10):
    """(status, headers, parsed JSON or None) of one request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        data = response.read()
        return (response.status, dict(response.getheaders()),
                json.loads(data) if data else None)
    finally:
        connection.close()


def raw_exchange(port, data, timeout=10):
    """Sends raw bytes, returns everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def json_of(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(body)


def assert_good_request_answered(server):
    status, _, body = call(server.port, "POST", "/v1/models/toy:predict", GOOD_BODY)
    assert (status, body) == (200, GOOD_ANSWER)


# ---------------------------------------------------------------- bursts and slow clients


def test_bursts_of_new_connections_get_no_reset_and_low_latency(server):
    """32 clients open new connections at once, 10 bursts: no reset, and p99 under 200 ms, the
    bound that catches the 1-3 s stalls of a short listen backlog. The other test worker trains
    models on the only other core meanwhile, so a slow host may miss the bound once by a few ms
    (209 ms seen): a second round of bursts is measured then; failures count in every round."""
    clients, bursts = 32, 10

    def round_of_bursts():
        barrier = threading.Barrier(clients)
        latencies, failures, lock = [], [], threading.Lock()

        def client():
            for _ in range(bursts):
                try:
                    barrier.wait(timeout=30)
                except threading.BrokenBarrierError:
                    return
                started = time.perf_counter()
                try:
                    status, _, body = call(server.port, "POST", "/v1/models/toy:predict", GOOD_BODY)
                    failure = None if (status, body) == (200, GOOD_ANSWER) else (status, body)
                except OSError as error:  # a reset or refused connection
                    failure = repr(error)
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if failure is not None:
                        failures.append(failure)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not failures, failures[:3]
        assert len(latencies) == clients * bursts
        latencies.sort()
        return latencies[int(len(latencies) * 0.99) - 1]

    call(server.port, "POST", "/v1/models/toy:predict", GOOD_BODY)  # warm
    p99 = [round_of_bursts()]
    if p99[0] >= 0.2:
        p99.append(round_of_bursts())
    assert min(p99) < 0.2, f"p99 {[f'{p * 1000:.0f} ms' for p in p99]}"


def test_half_sent_requests_block_nothing_and_are_closed_after_the_read_timeout(server):
    stalled_body = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stalled_head = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        started = time.monotonic()
        stalled_body.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 100\r\n\r\n{")
        stalled_head.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n")
        assert_good_request_answered(server)  # while both hang
        assert time.monotonic() - started < READ_TIMEOUT_MS / 1000
        assert stalled_body.recv(1024) == b""  # closed unanswered
        assert stalled_head.recv(1024) == b""
        assert time.monotonic() - started < READ_TIMEOUT_MS / 1000 + 4
    finally:
        stalled_body.close()
        stalled_head.close()
    assert_good_request_answered(server)


def test_chunked_body_is_read_whole(server):
    chunks = [GOOD_BODY[:7], GOOD_BODY[7:20], GOOD_BODY[20:]]
    data = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    raw = raw_exchange(server.port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                       + data)
    assert json_of(raw) == (200, GOOD_ANSWER)
    assert raw.count(b"HTTP/1.1") == 1  # the chunks were not read as a second request


def test_expect_100_continue_is_honoured(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(GOOD_BODY))
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(GOOD_BODY)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert json_of(raw) == (200, GOOD_ANSWER)


def test_client_leaving_mid_body_disturbs_nothing(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"instances\"")
    assert_good_request_answered(server)
    assert "Traceback" not in server.logs()


def test_a_gzip_body_is_uncompressed_as_tf_serving_does(server):
    assert call(server.port, "POST", "/v1/models/toy:predict", gzip.compress(GOOD_BODY),
                {"Content-Encoding": "gzip"})[::2] == (200, GOOD_ANSWER)
    status, _, body = call(server.port, "POST", "/v1/models/toy:predict", GOOD_BODY[:-3],
                           {"Content-Encoding": "gzip"})
    assert status == 400 and body["error"].startswith("Content-Encoding is gzip, but the body is not gzip data")
    status, _, body = call(server.port, "POST", "/v1/models/toy:predict", gzip.compress(GOOD_BODY)[:-9],
                           {"Content-Encoding": "gzip"})
    assert (status, body["error"]) == (400, "Content-Encoding is gzip, but the gzip body is truncated")
    for trailing in (b"xx", gzip.compress(b" ")):  # served as if absent / JSON cut at the member's end
        status, _, body = call(server.port, "POST", "/v1/models/toy:predict", gzip.compress(GOOD_BODY) + trailing,
                               {"Content-Encoding": "gzip"})
        assert (status, body["error"]) == (400, f"Content-Encoding is gzip, but {len(trailing)} bytes follow the "
                                                "end of the gzip data (another gzip member or garbage)")
    status, _, body = call(server.port, "POST", "/v1/models/toy:predict", gzip.compress(b" " * (MAX_BODY_BYTES + 1)),
                           {"Content-Encoding": "gzip"})
    assert status == 413 and "(uncompressed)" in body["error"]
    status, _, body = call(server.port, "POST", "/v1/models/toy:predict", GOOD_BODY, {"Content-Encoding": "br"})
    assert status == 400 and body["error"].startswith("Unsupported Content-Encoding 'br'")
    assert_good_request_answered(server)


def test_absolute_form_request_target_is_routed_by_its_path(server):
    raw = raw_exchange(server.port, b"GET http://x/v1/models/toy HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n")
    status, body = json_of(raw)
    assert status == 200 and body["model_version_status"][0]["version"] == "2"


def test_keep_alive_connection_serves_several_requests(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            connection.request("POST", "/v1/models/toy:predict", GOOD_BODY)
            response = connection.getresponse()
            assert (response.status, json.loads(response.read())) == (200, GOOD_ANSWER)
    finally:
        connection.close()


# ---------------------------------------------------------------- malformed HTTP


def test_huge_content_length_gets_a_json_error(server):
    raw = raw_exchange(server.port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 99999999999999999999\r\n\r\n{")
    status, body = json_of(raw)
    assert status == 400 and set(body) == {"error"} and "Content-Length" in body["error"]
    assert_good_request_answered(server)


@pytest.mark.parametrize("length", [MAX_BODY_BYTES + 1, 10**12])
def test_declared_body_over_the_limit_is_413_without_reading_it(server, length):
    raw = raw_exchange(server.port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: %d\r\n\r\n{" % length)
    status, body = json_of(raw)
    assert status == 413
    assert body["error"] == (f"Request body of {length} bytes exceeds the limit of "
                             f"{MAX_BODY_BYTES} bytes (--rest_api_max_body_bytes)")


def test_chunked_body_over_the_limit_is_413(server):
    chunk = b"x" * 65536
    data = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    for _ in range(MAX_BODY_BYTES // len(chunk) + 2))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            sock.sendall(data)  # the server may stop reading once over the limit
        except OSError:
            pass
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    status, body = json_of(raw)
    assert status == 413 and "exceeds the limit" in body["error"]
    assert_good_request_answered(server)


@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_malformed_requests(server, method):
    status, headers, body = call(server.port, method, "/v1/models/toy", b"{}")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert body == {"error": f"Malformed request: {method} /v1/models/toy"}


def test_head_is_a_bodiless_malformed_request(server):
    status, headers, body = call(server.port, "HEAD", "/v1/models/toy")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert body is None  # HEAD answers carry no body


def test_unknown_method_gets_a_json_error(server):
    raw = raw_exchange(server.port, b"BREW /v1/models/toy HTTP/1.1\r\nHost: x\r\n\r\n")
    status, body = json_of(raw)
    assert status == 400 and set(body) == {"error"}
    assert_good_request_answered(server)


@pytest.mark.parametrize("request_line", [b"GET /v1/models/toy\r\n\r\n", b"GET /v1/models/toy HTTP/0.9\r\n\r\n"])
def test_http_0_9_gets_a_json_400(server, request_line):
    status, body = json_of(raw_exchange(server.port, request_line))
    assert status == 400 and "HTTP/0.9 is not supported" in body["error"]
    assert_good_request_answered(server)


def test_malformed_chunked_encoding_gets_a_json_error(server):
    raw = raw_exchange(server.port, b"POST /v1/models/toy:predict HTTP/1.1\r\nHost: x\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    assert json_of(raw) == (
        400, {"error": "Malformed HTTP request: Invalid character in chunk size"})


def test_garbage_instead_of_http_gets_a_json_error(server):
    status, body = json_of(raw_exchange(server.port, b"\x16\x03\x01\x02\x00 hello\r\n\r\n"))
    assert status == 400 and body["error"].startswith("Malformed HTTP request")


# ---------------------------------------------------------------- bad JSON bodies


@pytest.mark.parametrize("body, message", [
    (b'{"instances": [' + b"9" * 5000 + b"]}",
     "JSON Parse error: Number too big to be stored in double"),
    (b"{not json", "JSON Parse error: Expecting property name enclosed in double quotes at "
                   "offset: 1"),
    (b"", "JSON Parse error: The document is empty"),
    (b"\xff\xfe", "JSON Parse error: Invalid encoding in string. at offset: 0"),
    (b"[" * 100000, "JSON Parse error"),
    (json.dumps({"instances": [{"x": [1, 2, 3], "tag": {"b64": "!!!"}}]}).encode(),
     "Unable to base64 decode"),
    (json.dumps({"inputs": {"x": [[1, 2, 3], [1, 2]], "tag": ["a", "b"]}}).encode(),
     "Encountered list at unexpected size: 2 at level: 1 expected size: 3"),
    (json.dumps({"instances": [{"x": [1, 2, 3], "tag": "a"},
                               {"x": [1, [2], 3], "tag": "b"}]}).encode(),
     "Encountered list at unexpected level: 1 expected < 1"),
    # deeper than numpy's 64 dimensions, for the unknown-rank input of "double": it was a 500
    (b'{"signature_name": "double", "inputs": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}",
     "A JSON tensor has 65 dimensions; this server decodes tensors of at most 64 dimensions"),
    (b'{"signature_name": "double", "instances": ' + b"[" * 300 + b"1" + b"]" * 300 + b"}",
     "A JSON tensor has 300 dimensions, more than TensorFlow's maximum of 254"),
])
def test_bad_json_is_400_with_tf_serving_messages(server, body, message):
    status, _, answer = call(server.port, "POST", "/v1/models/toy:predict", body)
    assert status == 400, answer
    assert set(answer) == {"error"} and message in answer["error"]


def test_big_integers_within_a_double_still_reach_the_model(server):
    status, _, answer = call(server.port, "POST", "/v1/models/toy:predict", json.dumps(
        {"signature_name": "double", "instances": [2**70]}).encode())
    assert status == 200 and answer["predictions"] == [pytest.approx(2.0**71, rel=1e-7)]


def test_json_is_read_as_tf_servings_rapidjson_reads_it(server):
    """A byte-order mark is skipped, Inf / -Inf / -NaN are numbers (kParseNanAndInfFlag), a
    repeated key keeps its first value, and a float beyond any double is refused rather than
    served as Infinity; in strings nothing changes."""
    def predict(body, verb="predict"):
        return call(server.port, "POST", f"/v1/models/toy:{verb}", body)

    assert predict(b"\xef\xbb\xbf" + GOOD_BODY)[::2] == (200, GOOD_ANSWER)
    status, _, answer = predict(
        b'{"signature_name": "double", "instances": [Inf, -Inf, -NaN, NaN, Infinity, 1.5]}')
    doubled = answer["predictions"]
    assert status == 200 and doubled[:2] == [math.inf, -math.inf] and doubled[4:] == [math.inf, 3.0]
    assert math.isnan(doubled[2]) and math.isnan(doubled[3])
    status, _, answer = predict(b'{"instances": [{"x": [Inf, 2, 3], "tag": "-NaN Inf"}]}')
    assert status == 200 and answer["predictions"][0]["tag_upper"] == "-NAN INF"
    status, _, answer = predict(b'{"signature_name": "double", "signature_name": "nope", '
                                b'"instances": [2], "instances": [3]}')
    assert (status, answer) == (200, {"predictions": [4.0]})
    for number in (b"1E400", b"-2.5e+0309", b"1" + b"0" * 400 + b".0"):
        for verb, body in (("predict", b'{"signature_name": "double", "inputs": [[' + number + b', 0]]}'),
                           ("predict", b'{"instances": [{"x": [1, ' + number + b', 3], "tag": "a"}]}'),
                           ("regress", b'{"examples": [{"x": [' + number + b', 0.0]}]}')):
            status, _, answer = predict(body, verb)
            assert status == 400 and "Number too big to be stored in double" in answer["error"]
    status, _, answer = predict(b'{"inputs": [1E30, 1e-300, Inf], "signature_name": "double"}')
    assert status == 200 and answer["outputs"] == [pytest.approx(2e30, rel=1e-6), 0.0, math.inf]
    status, _, answer = predict(b'{"inputs": [[Infinite]]}')
    assert status == 400 and "JSON Parse error: Expecting value at offset: 13" in answer["error"]


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("method, path, http_status, message", [
    ("GET", "/v1/models/../toy", 400, "Malformed request: GET /v1/models/../toy"),
    ("POST", "/v1/models/../../etc/passwd:predict", 400,
     "Malformed request: POST /v1/models/../../etc/passwd:predict"),
    ("POST", "/v1/models/%2e%2e:predict", 404, "Servable not found for request: Latest(..)"),
    ("POST", "/v1/models/%2e%2e%2ftoy:predict", 404,
     "Servable not found for request: Latest(../toy)"),
    ("GET", "/v1/models/%2E%2E/metadata", 404, "Servable not found for request: Latest(..)"),
    ("GET", "/v1/models/%2e%2e", 404, "Could not find any versions of model .."),
    ("POST", "/v1/models/toy/labels/%2e%2e:predict", 400,
     "Unrecognized servable version label: .."),
    ("POST", "/v1/models/toy/versions/99999999999999999999:predict", 400,
     "Failed to convert version: 99999999999999999999 to numeric."),
    ("POST", "/v1/models/toy/versions/-1:predict", 400,
     "Malformed request: POST /v1/models/toy/versions/-1:predict"),
    ("POST", "/v1/models/toy:explain", 400, "Malformed request: POST /v1/models/toy:explain"),
    ("GET", "/v1/models/toy:predict", 400, "Malformed request: GET /v1/models/toy:predict"),
    ("GET", "/v1/models/", 400, "Malformed request: GET /v1/models/"),
    ("GET", "/v1/models", 400, "Missing model name in request."),
    ("GET", "/v2/models/toy", 404, "Not found: /v2/models/toy"),
    ("GET", "/", 404, "Not found: /"),
    ("GET", "/v1/models/toy?x=1", 200, None),
    ("GET", "/V1/MODELS/toy/VERSIONS/2/METADATA", 200, None),
])
def test_path_tricks_get_json_errors(server, method, path, http_status, message):
    status, _, answer = call(server.port, method, path,
                             GOOD_BODY if method == "POST" else None)
    assert status == http_status, answer
    if message is not None:
        assert answer == {"error": message}
    assert_good_request_answered(server)


def test_very_long_model_name_is_not_found_with_a_cut_message(server):
    name = "n" * 16000
    status, _, answer = call(server.port, "POST", f"/v1/models/{name}:predict", GOOD_BODY)
    assert status == 404
    assert answer["error"].startswith("Servable not found for request: Latest(nnnn")
    assert answer["error"].endswith("...TRUNCATED")
    assert len(answer["error"]) == MAX_ERROR_MESSAGE_CHARS + len("...TRUNCATED")


def test_request_line_beyond_64_kib_gets_a_json_error(server):
    raw = raw_exchange(server.port, b"GET /v1/models/" + b"n" * 70000 + b" HTTP/1.1\r\n"
                                    b"Host: x\r\n\r\n")
    status, body = json_of(raw)
    assert status == 400 and body["error"].startswith("Malformed HTTP request")


@pytest.mark.parametrize("verb", ["classify", "regress", "CLASSIFY"])
def test_classify_and_regress_routes_answer_json(server, verb):
    # toy has no classify/regress signature; the route reaches serving.json_examples, which
    # checks the body first, then the signature.
    status, _, answer = call(server.port, "POST", f"/v1/models/toy/versions/2:{verb}",
                             json.dumps({"nope": 1}).encode())
    assert status == 400 and "key 'examples' is expected" in answer["error"]
    status, _, answer = call(server.port, "POST", f"/v1/models/toy:{verb}",
                             json.dumps({"examples": [{"x": [1.0, 2.0, 3.0]}]}).encode())
    assert status == 400 and set(answer) == {"error"}
    status, _, answer = call(server.port, "POST", f"/v1/models/nope:{verb}",
                             json.dumps({"examples": [{"x": [1.0]}]}).encode())
    assert status == 404 and "nope" in answer["error"]


def test_server_answers_good_requests_after_all_of_it(server):
    assert_good_request_answered(server)
    status, _, body = call(server.port, "GET", "/v1/models/toy")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    assert server.process.poll() is None
    assert "Traceback" not in server.logs()


# ---------------------------------------------------------------- in process: a slow model


class _SlowServable:
    def __init__(self, delay, entered):
        self.delay = delay
        self.entered = entered
        signature = meta_graph_pb2.SignatureDef()
        signature.inputs["x"].dtype = types_pb2.DT_FLOAT
        self.signature_defs = {"serving_default": signature}

    def predict(self, signature_name, inputs, output_filter=()):
        self.entered.set()
        time.sleep(self.delay)
        return {"y": np.asarray(inputs["x"]) * 2}


class SlowCore:
    """A ServerCore stand-in serving model "slow" whose predict takes `delay` seconds."""

    def __init__(self, delay):
        self.entered = threading.Event()
        self._servable = _SlowServable(delay, self.entered)

    def model_names(self):
        return ["slow"]

    def servable(self, spec):
        if spec.name != "slow":
            raise not_found(f"Servable not found for request: Latest({spec.name})")
        return self._servable

    def model_status(self, spec):
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(
            version=1, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        return response


def start_rest(core, **kwargs):
    rest = RestServer(core, "127.0.0.1", 0, metrics=kwargs.pop("metrics", Metrics(core)),
                      **kwargs)
    rest.start()
    return rest


SLOW_BODY = json.dumps({"instances": [1.5]}).encode()


def test_answer_not_ready_by_the_deadline_is_504():
    rest = start_rest(SlowCore(delay=1.0), timeout=0.2)
    try:
        started = time.monotonic()
        status, _, body = call(rest.port, "POST", "/v1/models/slow:predict", SLOW_BODY)
        assert status == 504 and body["error"].startswith("Deadline Exceeded")
        assert time.monotonic() - started < 0.9
    finally:
        rest.stop()


class _BigAnswerServable(_SlowServable):
    """Answers every predict with 8,000 strings of 1,000 bytes: an 8 MB JSON answer."""

    def predict(self, signature_name, inputs, output_filter=()):
        return {"y": np.array([b"x" * 1000] * 8000, dtype=object)}


def test_answer_the_client_does_not_read_is_dropped_after_the_read_timeout():
    """A client that sends a request and never reads its 8 MB answer: the connection is
    aborted once the read timeout passes, instead of the unsent answer being held for as long
    as the client stalls, and the server goes on answering."""
    core = SlowCore(delay=0)
    core._servable = _BigAnswerServable(0, core.entered)
    rest = start_rest(core, read_timeout=0.5)
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel buffers little
            sock.settimeout(10)
            sock.connect(("127.0.0.1", rest.port))
            sock.sendall(b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(SLOW_BODY), SLOW_BODY))
            time.sleep(2.0)  # the answer is ready within ~0.1 s, then stalls past the timeout
            received = b""
            try:
                while chunk := sock.recv(1 << 16):  # ends (b"" or a reset) once aborted
                    received += chunk
            except ConnectionResetError:
                pass
        assert len(received) < 8000 * 1000  # the server dropped the rest of the answer
        status, _, answer = call(rest.port, "POST", "/v1/models/slow:predict", SLOW_BODY)
        assert status == 200 and len(answer["predictions"]) == 8000
    finally:
        started = time.monotonic()
        rest.stop()
        assert time.monotonic() - started < 5  # no connection left hanging


def test_slow_model_blocks_neither_reading_nor_other_requests():
    core = SlowCore(delay=1.5)
    rest = start_rest(core, num_threads=4)
    try:
        slow = {}
        thread = threading.Thread(target=lambda: slow.update(
            answer=call(rest.port, "POST", "/v1/models/slow:predict", SLOW_BODY)))
        thread.start()
        assert core.entered.wait(timeout=5)
        started = time.monotonic()
        status, _, body = call(rest.port, "GET", "/v1/models/slow")
        assert status == 200 and body["model_version_status"][0]["version"] == "1"
        assert time.monotonic() - started < 0.5
        thread.join(timeout=10)
        assert slow["answer"][0] == 200 and slow["answer"][2] == {"predictions": [3.0]}
    finally:
        rest.stop()


def test_stop_finishes_requests_in_flight_then_refuses_connections():
    core = SlowCore(delay=0.8)
    rest = start_rest(core, shutdown_timeout=5)
    port = rest.port
    slow = {}
    thread = threading.Thread(target=lambda: slow.update(
        answer=call(port, "POST", "/v1/models/slow:predict", SLOW_BODY)))
    thread.start()
    assert core.entered.wait(timeout=5)
    started = time.monotonic()
    rest.stop()
    assert time.monotonic() - started < 5
    thread.join(timeout=10)
    assert slow["answer"][0] == 200 and slow["answer"][2] == {"predictions": [3.0]}
    with pytest.raises(ConnectionRefusedError):
        call(port, "GET", "/v1/models/slow", timeout=2)


def test_stop_cancels_a_request_beyond_the_grace(caplog):
    """A request still running when the grace ends is cancelled (its connection closed) within the
    grace, and nothing is logged as an asyncio error."""
    core = SlowCore(delay=3.0)
    rest = start_rest(core, shutdown_timeout=0.5)
    slow = {}

    def request():
        try:
            slow["answer"] = call(rest.port, "POST", "/v1/models/slow:predict", SLOW_BODY)
        except Exception as error:  # noqa: BLE001 - the connection is expected to close
            slow["error"] = error

    thread = threading.Thread(target=request)
    thread.start()
    assert core.entered.wait(timeout=5)
    with caplog.at_level("DEBUG", logger="asyncio"):
        started = time.monotonic()
        rest.stop()
        assert time.monotonic() - started < 5
        thread.join(timeout=10)
        time.sleep(3.0)  # the cancelled request's thread finishes after the loop has closed
    assert "error" in slow
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def test_stop_does_not_wait_for_idle_keep_alive_connections():
    rest = start_rest(SlowCore(delay=0), shutdown_timeout=10)
    idle = http.client.HTTPConnection("127.0.0.1", rest.port, timeout=10)
    try:
        idle.request("GET", "/v1/models/slow")
        assert idle.getresponse().read()
        started = time.monotonic()
        rest.stop()
        assert time.monotonic() - started < 2
    finally:
        idle.close()


def test_bind_failure_is_an_oserror():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError):
            RestServer(SlowCore(0), "127.0.0.1", taken.getsockname()[1])


def test_rest_requests_are_recorded_by_model_and_status():
    metrics = Metrics(SlowCore(0))
    rest = start_rest(SlowCore(delay=0), metrics=metrics)
    try:
        for _ in range(2):
            call(rest.port, "POST", "/v1/models/slow:predict", SLOW_BODY)
        call(rest.port, "POST", "/v1/models/slow:predict", b"{")
        call(rest.port, "POST", "/v1/models/random-name-123:predict", SLOW_BODY)
        call(rest.port, "GET", "/v1/models/slow")
    finally:
        rest.stop()
    counts, api_counts, latencies = metrics._snapshot()
    assert counts == {("slow", "OK"): 2, ("slow", "INVALID_ARGUMENT"): 1,
                      ("", "NOT_FOUND"): 1}  # names the server does not serve are not kept
    assert api_counts[("slow", "status", "REST", "OK")] == 1
    assert sum(latencies[("slow", "predict", "REST")][0]) == 2
