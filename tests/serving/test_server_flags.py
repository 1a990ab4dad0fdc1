"""Start-up flags of `python -m serving.server` (every tensorflow_model_server flag accepted,
unknown ones and bad model config files rejected) and shape pass-through: a request tensor
whose shape differs from the signature's is fed to the model as TF Serving feeds it."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import socket
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving import Client, LocalServer, ServingError
from serving.server import _IGNORED_TF_SERVING_FLAGS, build_arg_parser
from tests.serving.rest_helpers import rest_call, wait_for
from tests.serving.start_up import run_server, start_in_process

REST_TIMEOUT_MS = 1500
IGNORED_GIVEN = ("--num_unload_threads=2", "--tensorflow_intra_op_parallelism=2",
                 "--enable_grpc_healthcheck_service", "--flush_filesystem_caches=false")


def save_tf1_column(path):
    """A TF1 SavedModel whose signature declares "x" as [-1, 1]: "y" = 2x + 1."""
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 1], name="x")
        with tf.compat.v1.Session() as session:
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": tf.compat.v1.saved_model.predict_signature_def(
                    {"x": x}, {"y": x * 2.0 + 1.0})})
            builder.save()


@pytest.fixture(scope="module")
def server(saved_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("flags")
    save_tf1_column(str(work / "column" / "1"))
    config = work / "models.config"
    config.write_text(
        'model_config_list {\n'
        f'  config {{ name: "column" base_path: "{work / "column"}" }}\n'
        f'  config {{ name: "tf1" base_path: "{saved_models / "tf1"}" }}\n'
        f'  config {{ name: "toy" base_path: "{saved_models / "toy"}" }}\n'
        '}\n')
    extra = (f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}",
             "--grpc_channel_arguments=grpc.max_connection_age_ms=600000,"
             "grpc.primary_user_agent=tfrec-test", "--num_load_threads=3", *IGNORED_GIVEN)
    with LocalServer(model_config_file=str(config), extra_args=extra) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_target) as grpc_client:
        yield grpc_client


# --- flags -------------------------------------------------------------------------------

def test_every_tf_serving_flag_parses():
    parser = build_arg_parser()
    args = parser.parse_args(["--rest_api_timeout_in_ms=100", "--grpc_channel_arguments=a=1,b=x",
                              "--saved_model_tags=serve", "--enable_batching=false"]
                             + [f"--{name}" if kind.__name__ == "_bool_flag" else
                                f"--{name}={'1' if kind in (int, float) else 'v'}"
                                for name, kind in _IGNORED_TF_SERVING_FLAGS.items()])
    assert args.grpc_channel_arguments == [("a", 1), ("b", "x")]
    assert args.rest_api_timeout_in_ms == 100
    assert args.num_unload_threads == 1 and args.enable_profiler is True


def test_ignored_tf_serving_flags_are_accepted_with_a_warning(server, client):
    logs = server.logs()
    for flag in IGNORED_GIVEN:
        name = flag.split("=")[0]
        assert f"Flag {name}=" in logs and "it is ignored" in logs, flag
    for implemented in ("--rest_api_timeout_in_ms", "--grpc_channel_arguments", "--num_load_threads"):
        assert f"Flag {implemented}=" not in logs
    np.testing.assert_allclose(client.predict("column", {"x": [[1.0], [2.0]]})["y"],
                               [[3.0], [5.0]])


def test_rest_api_timeout_closes_a_stalled_connection(server):
    port = int(server.rest_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/column:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, not answered
        assert time.monotonic() - started < 20
    assert rest_call(server, "/v1/models/column:predict", {"instances": [[1.0]]}) == (
        200, {"predictions": [[3.0]]})


def test_unknown_flag_fails_clearly():
    code, output = run_server("--model_base_path=/nonexistent", "--no_such_flag=1")
    assert code == 2
    assert "unrecognized arguments: --no_such_flag=1" in output
    assert "tensorflow_model_server" in output


def test_abbreviated_flag_is_not_taken_for_a_longer_one(capsys, caplog):
    code, output = start_in_process(capsys, caplog, "--model_base_path=/nonexistent", "--rest=8501")
    assert code == 2 and "unrecognized arguments: --rest=8501" in output


@pytest.mark.parametrize("text, problem", [
    (None, "no such file"),
    ('model_config_list { config { nme: "a" } }',
     'not a text-format ModelServerConfig: 1:30 : Message type "tensorflow.serving.ModelConfig" '
     'has no field named "nme"'),
    ('model_config_list { config { name: "a" model_platform: "tensorflow" } }',
     "model 'a' has no base_path"),
    ('model_config_list { config { name: "a" base_path: "/x" } '
     'config { name: "a" base_path: "/y" } }', "Illegal to list model a multiple times"),
    ("", "it has no model_config_list"),
    # Relative to what? tensorflow_model_server refuses it; it used to be taken from the server's directory.
    ('model_config_list { config { name: "a" base_path: "models/a" } }',
     "Expected model a to have an absolute path or URI; got base_path()=models/a"),
])
def test_invalid_model_config_file_fails_naming_the_file(tmp_path, capsys, caplog, text, problem):
    """The missing file as a process started by a user; the other mistakes in this process."""
    path = tmp_path / "models.config"
    if text is None:
        code, output = run_server(f"--model_config_file={path}")
    else:
        path.write_text(text)
        code, output = start_in_process(capsys, caplog, f"--model_config_file={path}")
    assert code == 1
    assert f"Failed to start server. Error: Invalid model config file '{path}': " in output
    assert problem in output
    assert "Running gRPC ModelServer" not in output


# --- shapes ------------------------------------------------------------------------------

def test_tf1_input_of_another_shape_is_fed_to_the_model(server, client):
    # "x" is declared [-1, 1]; TF Serving feeds [1] to the session, which answers.
    np.testing.assert_allclose(client.predict("column", {"x": [1.0]})["y"], [3.0])
    np.testing.assert_allclose(client.predict("column", {"x": [[1.0, 2.0]]})["y"],
                               [[3.0, 5.0]])
    assert rest_call(server, "/v1/models/column:predict", {"inputs": {"x": [1.0, 2.0]}}) == (
        200, {"outputs": [3.0, 5.0]})


def test_model_failing_on_another_shape_is_invalid_argument_naming_the_input(server, client):
    with pytest.raises(ServingError) as info:
        client.predict("tf1", {"x": [1.0, 2.0]})  # declared [-1, 2]; MatMul needs a matrix
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # The model's own words follow; TensorFlow's MatMul words them differently by kernel
    # ("ndims must be >= 2", "In[0] and In[1] has different ndims").
    assert 'input "x" has shape [2] where the signature declares [-1,2]; the model says:' in info.value.message
    assert "ndims" in info.value.message
    assert 'input "x" has shape [2] where the signature declares [-1,2]' in info.value.message
    status, answer = rest_call(server, "/v1/models/tf1:predict", {"inputs": {"x": [1.0, 2.0]}})
    assert status == 400 and 'input "x" has shape [2]' in answer["error"]
    np.testing.assert_allclose(client.predict("tf1", {"x": [[1.0, 2.0]]})["y"], [[21.0]])


def test_tf2_signature_input_of_another_shape_reaches_the_model(client):
    # toy's "x" is [-1, 3]: [3] gets through x * weights, then fails in reduce_sum(axis=1).
    with pytest.raises(ServingError) as info:
        client.predict("toy", {"x": [1.0, 2.0, 3.0], "tag": ["a"]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Invalid reduction dimension" in info.value.message
    assert 'input "x" has shape [3] where the signature declares [-1,3]' in info.value.message
    # the unknown-rank signature takes anything
    np.testing.assert_allclose(
        client.predict("toy", {"anything": [[[1.0]]]}, signature_name="double")["doubled"],
        [[[2.0]]])


def test_dtype_mismatch_is_still_rejected_before_the_model(client):
    with pytest.raises(ServingError) as info:
        client.predict("column", {"x": [["a"]]})
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert 'Expects input "x" to be float but string is provided' in info.value.message


# --- --num_load_threads ------------------------------------------------------------------

class SlowWarmUp(tf.Module):
    """A serving_default whose every call runs 2,000 matrix products in a row: replaying its
    warm-up requests makes its load take seconds."""

    def __init__(self):
        super().__init__()
        self.weights = tf.Variable(tf.eye(256) * 0.5)

    @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32, name="x")])
    def serve(self, x):
        _, y = tf.while_loop(lambda i, y: i < 2000, lambda i, y: (i + 1, tf.tanh(tf.matmul(y, self.weights))),
                             (tf.constant(0), x))
        return {"y": y}


def save_slow_warm_up(path, records=3):
    from exporters.warmup import prediction_log, write_warmup_file

    module = SlowWarmUp()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    write_warmup_file(path, [prediction_log({"x": np.ones((64, 256), np.float32)}, "slow")] * records)


def test_num_load_threads_loads_a_model_beside_another_ones_slow_load(tmp_path):
    from tests.serving.saved_models import save_toy

    save_slow_warm_up(str(tmp_path / "slow" / "1"))
    save_toy(str(tmp_path / "toy" / "1"), 1)
    config = tmp_path / "models.config"
    config.write_text('model_config_list {\n'  # the slow model first: one loader would load it first
                      f'  config {{ name: "slow" base_path: "{tmp_path / "slow"}" }}\n'
                      f'  config {{ name: "toy" base_path: "{tmp_path / "toy"}" }}\n}}\n')
    with LocalServer(model_config_file=str(config), rest=False, extra_args=["--num_load_threads=2"]) as server, \
            Client(server.grpc_target) as client:
        assert client.predict("toy", {"x": [[1.0, 0.0, 0.0]], "tag": ["a"]})["score"].tolist() == [2.0]
        assert client.predict("slow", {"x": np.zeros((1, 256), np.float32)})["y"].shape == (1, 256)
        lines = server.logs().splitlines()

    def line_of(text):
        return next(i for i, line in enumerate(lines) if text in line)

    slow_started = line_of("Loading servable: {name: slow version: 1}")
    slow_done = line_of("Successfully loaded servable version {name: slow version: 1}")
    toy_done = line_of("Successfully loaded servable version {name: toy version: 1}")
    # The toy model was loaded, warm-up included, while the slow one was replaying its warm-up.
    assert slow_started < toy_done < slow_done, "\n".join(lines[slow_started:slow_done + 1])
    loaders = {lines[line_of(f"Loading servable: {{name: {name} version: 1}}")].split()[3] for name in ("slow", "toy")}
    assert len(loaders) == 2 and all(name.startswith("model-loader") for name in loaders), loaders


class Sleepy(tf.Module):
    """A serving_default that waits `seconds` without using the CPU (tf.data's sleep): replaying
    its warm-up stands for a load held up by a slow or stalled read."""

    def __init__(self, seconds):
        super().__init__()
        self.microseconds = int(seconds * 1e6)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(self, x):
        slept = tf.raw_ops.SleepDataset(input_dataset=tf.data.Dataset.range(1)._variant_tensor,
                                        sleep_microseconds=tf.constant(self.microseconds, tf.int64),
                                        output_types=[tf.int64], output_shapes=[[]])
        first = tf.raw_ops.DatasetToSingleElement(dataset=slept, output_types=[tf.int64], output_shapes=[[]])[0]
        return {"y": x + tf.cast(first, tf.float32)}


def save_sleepy(path, seconds):
    from exporters.warmup import prediction_log, write_warmup_file

    module = Sleepy(seconds)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    if seconds:
        write_warmup_file(path, [prediction_log({"x": np.zeros((1, 3), np.float32)}, "sleepy")])


def test_num_load_threads_a_stuck_load_holds_back_neither_other_models_nor_the_reload_of_others(tmp_path):
    """With load threads, the poll thread does not wait for loads: while one model's new
    version is in a load that does not end (a warm-up that sleeps), another model's new version
    is found and served, a reload that adds a model completes, requests to the stuck model's
    loaded version are answered, and the server still stops at once."""
    from tests.serving.saved_models import copy_version, save_toy

    save_sleepy(str(tmp_path / "sleepy" / "1"), 0)
    save_sleepy(str(tmp_path / "staging" / "sleepy2"), 600)
    save_toy(str(tmp_path / "toy" / "1"), 1)
    save_toy(str(tmp_path / "staging" / "toy2"), 2)
    save_toy(str(tmp_path / "other" / "1"), 1)
    config = tmp_path / "models.config"
    models = [f'  config {{ name: "{name}" base_path: "{tmp_path / name}" }}\n' for name in ("sleepy", "toy")]
    config.write_text("model_config_list {\n" + "".join(models) + "}\n")
    with LocalServer(model_config_file=str(config), rest=False, poll_wait_seconds=1,
                     extra_args=["--num_load_threads=2", "--shutdown_grace_seconds=3"]) as server, \
            Client(server.grpc_target) as client:
        def states(name):
            return {status["version"]: status["state"] for status in client.status(name)}

        copy_version(str(tmp_path / "staging" / "sleepy2"), str(tmp_path / "sleepy"), 2)
        wait_for(lambda: states("sleepy").get(2) == "LOADING", 30, what="sleepy version 2 loading")
        copy_version(str(tmp_path / "staging" / "toy2"), str(tmp_path / "toy"), 2)
        wait_for(lambda: states("toy").get(2) == "AVAILABLE", 30, what="toy version 2 served beside the stuck load")
        assert client.predict("toy", {"x": [[1.0, 0.0, 0.0]], "tag": ["a"]})["score"].tolist() == [3.0]  # version 2
        added = "model_config_list {\n" + "".join(models) + f'  config {{ name: "other" base_path: "{tmp_path / "other"}" }}\n}}\n'
        client.reload_config(added, timeout=60)
        assert client.predict("other", {"x": [[1.0, 0.0, 0.0]], "tag": ["a"]})["score"].tolist() == [2.0]
        assert client.predict("sleepy", {"x": [[1.0, 2.0, 3.0]]})["y"].tolist() == [[1.0, 2.0, 3.0]]  # version 1
        assert states("sleepy") == {2: "LOADING", 1: "AVAILABLE"}
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 30
    assert "load thread(s) still in a load" in server.logs()


def test_allow_version_labels_for_unavailable_models_does_not_let_a_label_move_to_such_a_version(saved_models):
    """As TF Serving's UpdateModelVersionLabelMap: the flag lets a new label (or one keeping its
    version) name a version that is not AVAILABLE, but moving a label there is refused, labels
    unchanged; it used to be taken, and every request by that label failed."""
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_pb2
    from tensorflow_serving.config import model_server_config_pb2

    from serving.server_core import ServerCore

    def config(labels):
        return text_format.Parse(
            f'model_config_list {{ config {{ name: "toy" base_path: "{saved_models / "toy"}" '
            + "".join(f'version_labels {{ key: "{label}" value: {version} }} ' for label, version in labels.items())
            + "} }", model_server_config_pb2.ModelServerConfig())

    def served_version(label):
        return core.servable(model_pb2.ModelSpec(name="toy", version_label=label)).version

    core = ServerCore(config({}), poll_wait_seconds=0, allow_labels_for_unavailable=True)  # loads version 2 only
    core.start()
    try:
        core.wait_until_models_available(["toy"], timeout=60)
        core.reload_config(config({"stable": 2, "canary": 9}))  # canary: new, may wait for version 9
        assert served_version("stable") == 2
        with pytest.raises(ServingError) as moved:
            core.reload_config(config({"stable": 1, "canary": 9}))
        assert moved.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert moved.value.message == (
            "Request to assign label to version 1 of model toy, which is not currently available for inference "
            "(label stable; available versions: [2]; --allow_version_labels_for_unavailable_models allows it for a "
            "new label, not for moving label stable from version 2)")
        assert served_version("stable") == 2
        core.reload_config(config({"stable": 2, "canary": 9, "beta": 1}))  # kept and new labels
        assert served_version("stable") == 2
    finally:
        core.stop()


def labelled_toy_config(path, saved_models, labels):
    """A models.config serving toy (versions 1 and 2 on disk; the default policy loads 2) with `labels`."""
    path.write_text(f'model_config_list {{ config {{ name: "toy" base_path: "{saved_models / "toy"}" '
                    + "".join(f'version_labels {{ key: "{label}" value: {version} }} '
                              for label, version in labels.items()) + "} }\n")
    return path


@pytest.mark.parametrize("labels, refused, available", [
    ({"stable": 2, "canary": 7}, "version 7 of model toy", "[2]"),  # no folder 7
    ({"stable": 1}, "version 1 of model toy", "[2]"),  # on disk, but the policy loads 2 only
])
def test_a_start_up_label_on_a_version_that_did_not_load_fails_the_start(saved_models, tmp_path, labels, refused,
                                                                          available):
    """As a reload's labels, and as tensorflow_model_server: the server used to start (so a process,
    not main() in this one, which would serve on) and answer every request by such a label NOT_FOUND."""
    config = labelled_toy_config(tmp_path / "models.config", saved_models, labels)
    code, output = run_server(f"--model_config_file={config}")
    assert code == 1
    assert (f"Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version "
            f"{refused.split()[1]} of model toy, which is not currently available for inference") in output
    assert f"available versions: {available}; --allow_version_labels_for_unavailable_models allows it" in output
    assert "Running gRPC ModelServer" not in output


def test_allow_version_labels_for_unavailable_models_lets_start_up_labels_wait_for_their_versions(saved_models,
                                                                                                   tmp_path):
    config = labelled_toy_config(tmp_path / "models.config", saved_models, {"stable": 2, "canary": 7})
    with LocalServer(model_config_file=str(config), rest=False,
                     extra_args=["--allow_version_labels_for_unavailable_models"]) as server, \
            Client(server.grpc_target) as client:
        assert client.predict("toy", {"x": [[1.0, 0.0, 0.0]], "tag": ["a"]},
                              version_label="stable")["score"].tolist() == [3.0]  # version 2
        with pytest.raises(ServingError) as waiting:
            client.predict("toy", {"x": [[1.0, 0.0, 0.0]], "tag": ["a"]}, version_label="canary")
        assert waiting.value.code == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Specific(toy, 7)" in waiting.value.message
