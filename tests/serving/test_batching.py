"""Server-side batching (--enable_batching) and clean shutdown, on a real server subprocess
started with --model_name / --model_base_path."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import threading

import grpc
import numpy as np
import pytest

from serving import Client, LocalServer, ServingError
from serving.batching import BatchingOptions

BATCHING_PARAMETERS = """
max_batch_size { value: 8 }
batch_timeout_micros { value: 300000 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 4
allowed_batch_sizes: 8
"""


@pytest.fixture(scope="module")
def server(saved_models, tmp_path_factory):
    parameters = tmp_path_factory.mktemp("batching") / "batching.config"
    parameters.write_text(BATCHING_PARAMETERS)
    running = LocalServer(model_base_path=str(saved_models / "batchy"), model_name="batchy",
                          rest=False, extra_args=("--enable_batching",
                                                  f"--batching_parameters_file={parameters}"))
    with running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_target, timeout=30) as grpc_client:
        yield grpc_client


def concurrently(client, requests):
    """Each of `requests` ({"x": rows}) sent at once from its own thread: the outputs, or the
    ServingError, of each."""
    results = [None] * len(requests)
    client.metadata("batchy")  # cache the signature, so each thread makes one Predict call
    start = threading.Barrier(len(requests))

    def call(index):
        start.wait()
        try:
            results[index] = client.predict("batchy", requests[index])
        except ServingError as error:
            results[index] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_batching_parameters_parse_like_tf_serving():
    options = BatchingOptions.from_text(BATCHING_PARAMETERS)
    assert (options.max_batch_size, options.batch_timeout_micros, options.num_batch_threads,
            options.allowed_batch_sizes) == (8, 300000, 1, (4, 8))
    with pytest.raises(ValueError, match="must equal max_batch_size"):
        BatchingOptions.from_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")


def test_concurrent_requests_run_in_one_batch_and_get_their_own_rows(client):
    rows = [np.array([[i, -i]], np.float32) for i in range(8)]
    results = concurrently(client, [{"x": x} for x in rows])
    for x, outputs in zip(rows, results):
        np.testing.assert_array_equal(outputs["y"], 2 * x)
    batch_sizes = [int(outputs["batch_rows"][0]) for outputs in results]
    assert max(batch_sizes) > 1, batch_sizes  # several requests shared one model call
    assert all(size <= 8 for size in batch_sizes)


def test_multi_row_request_is_split_back(client):
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    outputs = client.predict("batchy", {"x": x})
    np.testing.assert_array_equal(outputs["y"], 2 * x)
    assert outputs["batch_rows"].shape == (5,)


def test_request_larger_than_max_batch_size_is_refused(client):
    with pytest.raises(ServingError) as info:
        client.predict("batchy", {"x": np.zeros((9, 2), np.float32)})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message == "Task size 9 is larger than maximum input batch size 8"


def test_one_callers_bad_input_fails_that_caller_alone(client):
    rows = [np.array([[i, -i]], np.float32) for i in range(6)]
    rows[2] = np.array([[np.nan, 1.0]], np.float32)
    results = concurrently(client, [{"x": x} for x in rows])
    assert isinstance(results[2], ServingError) and results[2].code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x holds NaN or inf" in results[2].message
    for index, (x, outputs) in enumerate(zip(rows, results)):
        if index != 2:
            np.testing.assert_array_equal(outputs["y"], 2 * x)


def test_a_0_row_request_gets_0_rows_alone_or_batched_with_others(client):
    """A batch is padded to an allowed size (4 or 8) with its first row, which a 0-row request
    does not have: it must neither fail nor fail the requests batched with it."""
    empty = np.zeros((0, 2), np.float32)
    assert client.predict("batchy", {"x": empty})["y"].shape == (0, 2)
    rows = [empty, np.array([[1, 2], [3, 4], [5, 6]], np.float32), empty]
    for x, outputs in zip(rows, concurrently(client, [{"x": x} for x in rows])):
        np.testing.assert_array_equal(outputs["y"], 2 * x)


def test_sigterm_stops_the_server_with_exit_code_0(server, client):
    assert client.status("batchy")[0]["state"] == "AVAILABLE"
    assert server.stop() == 0
    assert "Server stopped" in server.logs()
