"""The model server under load and trouble (issue 9, "Found by fuzzing and load"): a new
version published while 8 clients send requests, a corrupt version, a version whose files
were still being copied (load retries), batching that changes no output, a version unloaded
while requests still hold it (no batcher threads made again), and SIGKILL in the middle of
a load. Real `python -m serving.server` subprocesses over gRPC on 127.0.0.1."""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import gc
import os
import shutil
import signal
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, prediction_log_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from exporters.layout import staged_version_dir
from serving import Client, LocalServer, ServingError
from serving.batching import Batcher, BatchingOptions
from serving.bundle import _resource_handles
from serving.servable import ServableVersion
from tests.serving.rest_helpers import wait_for
from tests.serving.saved_models import toy_request

X = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], np.float32)
TAGS = np.array([b"ab", b"xyz"], object)
CLIENTS = 8
BATCHING = """
max_batch_size { value: 16 }
batch_timeout_micros { value: 2000 }
num_batch_threads { value: 2 }
"""


def publish(source, base_path, version):
    """Publishes a copy of `source` as `base_path/version` the way exporters do: written into
    a staging directory beside it, then renamed (exporters.layout.staged_version_dir)."""
    with staged_version_dir(str(base_path), version) as staged:
        shutil.copytree(str(source), staged.staging_dir, dirs_exist_ok=True)


def statuses(target, name):
    """{version: (state name, error_code, error_message)} from a raw GetModelStatus call."""
    with grpc.insecure_channel(target) as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        try:
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                request, timeout=10)
        except grpc.RpcError:
            return {}
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: (state_name(s.state), s.status.error_code, s.status.error_message)
            for s in response.model_version_status}


def failed_status(target, name, version):
    """The version's status once it reports an error, else None."""
    status = statuses(target, name).get(version)
    return status if status and status[1] != 0 else None


class Load:
    """CLIENTS threads, each on its own channel, sending Predict("live") until stopped.

    Every call is recorded as (start, end, version answered or None, error or None)."""

    def __init__(self, target, clients=CLIENTS, model="live", version_label=None):
        self._target = target
        self._model = model
        self._version_label = version_label
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.calls = []
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def count(self):
        with self._lock:
            return len(self.calls)

    def _run(self):
        with grpc.insecure_channel(self._target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = toy_request(X, TAGS, model_name=self._model)
            if self._version_label:
                request.model_spec.version_label = self._version_label
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    response = stub.Predict(request, timeout=30)
                    result = (response.model_spec.version.value, None)
                except grpc.RpcError as error:
                    result = (None, f"{error.code().name}: {error.details()}")
                with self._lock:
                    self.calls.append((start, time.monotonic()) + result)

    def errors(self):
        with self._lock:
            return [call[3] for call in self.calls if call[3] is not None]

    def versions(self):
        with self._lock:
            return {call[2] for call in self.calls if call[2] is not None}


@pytest.fixture
def live(tmp_path, saved_models):
    """A base path whose version 1 is a copy of toy/2 (no warm-up file)."""
    base = tmp_path / "live"
    base.mkdir()
    publish(saved_models / "toy" / "2", base, 1)
    return base


def batching_args(tmp_path):
    path = tmp_path / "batching.config"
    path.write_text(BATCHING)
    return ("--enable_batching", f"--batching_parameters_file={path}")


# ---------------------------------------------------------------- hot swap under load


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_hot_swap_under_load_fails_no_request(live, saved_models, tmp_path, batching):
    extra = batching_args(tmp_path) if batching else ()
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2, extra_args=extra) as server:
        with Load(server.grpc_target) as load:
            wait_for(lambda: load.count() >= 300)
            publish(saved_models / "toy" / "1", live, 2)
            wait_for(lambda: statuses(server.grpc_target, "live").get(1, ("",))[0] == "END")
            seen = wait_for(lambda: [c for c in load.calls if c[2] == 2])
            swap_observed = min(call[1] for call in seen)
            wait_for(lambda: load.count() >= 2000 and
                     sum(1 for c in load.calls if c[0] > swap_observed) >= 500)
        assert server.process.poll() is None
    after = [call for call in load.calls if call[0] > swap_observed]
    print(f"{len(load.calls)} requests from {CLIENTS} clients, {len(after)} started after the "
          f"first answer of version 2, errors: {len(load.errors())}")
    assert load.errors() == []
    assert len(load.calls) >= 2000
    assert after and {call[2] for call in after} == {2}
    assert load.versions() == {1, 2}


def test_corrupt_version_under_load_keeps_the_old_one_serving(live, saved_models):
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2) as server:
        with Load(server.grpc_target, clients=4) as load:
            wait_for(lambda: load.count() >= 100)
            with staged_version_dir(str(live), 2) as staged:
                shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir,
                                dirs_exist_ok=True)
                with open(os.path.join(staged.staging_dir, "saved_model.pb"), "wb") as f:
                    f.write(b"\x08\xffnot a SavedModel" * 20)
            status = wait_for(lambda: failed_status(server.grpc_target, "live", 2))
            counted = load.count()
            wait_for(lambda: load.count() >= counted + 200)
        # LOADING with the error: TF Serving's default 5 retries, 60 s apart, remain
        assert status[0] == "LOADING" and status[1] != 0 and status[2]
        assert statuses(server.grpc_target, "live")[1][0] == "AVAILABLE"
    assert load.errors() == []
    assert load.versions() == {1}


# ---------------------------------------------------------------- load retries


def half_copied_version(source, base_path, version):
    """Writes `base_path/version` in place (no staging), with variables.data still zeros as a
    copy in progress leaves it. Returns a function that completes the copy while keeping the
    file's size and modification time (so only a retry, not a changed file, can load it)."""
    target = os.path.join(str(base_path), str(version))
    shutil.copytree(str(source), target)
    data = os.path.join(target, "variables", "variables.data-00000-of-00001")
    content = open(data, "rb").read()
    stat = os.stat(data)
    with open(data, "wb") as f:
        f.write(b"\0" * len(content))
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def complete():
        with open(data, "wb") as f:
            f.write(content)
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return complete


def test_failed_load_is_retried_until_the_copy_is_complete(live, saved_models):
    flags = ("--max_num_load_retries=100", "--load_retry_interval_micros=300000")
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2, extra_args=flags) as server, \
            Client(server.grpc_target) as client:
        complete = half_copied_version(saved_models / "toy" / "1", live, 2)
        failed = wait_for(lambda: failed_status(server.grpc_target, "live", 2))
        # LOADING while retries remain (END would read as final), with the reason as its status
        assert failed[0] == "LOADING" and "checksum" in failed[2].lower()
        wait_for(lambda: "Retrying of Loading servable: {name: live version: 2} retry: 1"
                 in server.logs())
        # meanwhile the old version keeps serving and the status keeps the error
        assert client.predict("live", {"x": X, "tag": TAGS})["score"][0] == 14.0 + 2
        assert statuses(server.grpc_target, "live")[2][2]
        complete()
        wait_for(lambda: statuses(server.grpc_target, "live").get(2, ("",))[0] == "AVAILABLE")
        assert statuses(server.grpc_target, "live")[2][1:] == (0, "")
        assert client.predict("live", {"x": X, "tag": TAGS})["score"][0] == 14.0 + 1


def test_without_retries_a_failed_load_stays_failed(live, saved_models):
    flags = ("--max_num_load_retries=0", "--load_retry_interval_micros=100000")
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2, extra_args=flags) as server:
        complete = half_copied_version(saved_models / "toy" / "1", live, 2)
        wait_for(lambda: failed_status(server.grpc_target, "live", 2))
        complete()
        time.sleep(1.5)  # several polls and would-be retry intervals
        status = statuses(server.grpc_target, "live")
        assert status[2][0] == "END" and status[2][1] != 0
        assert status[1][0] == "AVAILABLE"
        assert "Retrying of Loading servable" not in server.logs()


def test_a_failed_version_deleted_or_removed_while_retries_remain_ends(live):
    """An operator deletes a bad push, or a reload removes its model: the pending retries are
    cancelled and the version is END with its failure, as in TF Serving (it stayed LOADING for
    good, looking like a rollout in progress)."""
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2) as server:  # TF Serving's 5 retries, 60 s apart
        os.mkdir(live / "2")  # a push that never got its files
        loading = wait_for(lambda: failed_status(server.grpc_target, "live", 2))
        assert loading[0] == "LOADING" and "Could not find SavedModel" in loading[2]
        os.rmdir(live / "2")
        ended = ("END",) + loading[1:]
        wait_for(lambda: statuses(server.grpc_target, "live")[2] == ended,
                 timeout=10, what="version 2 END with its failure")
        assert statuses(server.grpc_target, "live")[1][0] == "AVAILABLE"

        os.mkdir(live / "3")
        loading = wait_for(lambda: failed_status(server.grpc_target, "live", 3))
        assert loading[0] == "LOADING"
        request = model_management_pb2.ReloadConfigRequest()
        other = request.config.model_config_list.config.add(name="other", base_path=str(live))
        other.model_version_policy.specific.versions.append(1)
        with grpc.insecure_channel(server.grpc_target) as channel:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
        wait_for(lambda: statuses(server.grpc_target, "live") == {
            1: ("END", 0, ""), 2: ended, 3: ("END",) + loading[1:]},
            timeout=10, what="every version of the removed model END")


def test_truncated_or_incomplete_variables_are_data_loss_naming_the_files(live, saved_models):
    """TensorFlow says "Read less bytes than requested" or gives a hint about devices; the
    status names the damaged folder and files. The old version keeps serving."""
    flags = ("--max_num_load_retries=0",)
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2, extra_args=flags) as server:
        with staged_version_dir(str(live), 2) as staged:
            shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir, dirs_exist_ok=True)
            data = os.path.join(staged.staging_dir, "variables", "variables.data-00000-of-00001")
            size = os.path.getsize(data)
            with open(data, "r+b") as f:
                f.truncate(size // 3)
        truncated = wait_for(lambda: failed_status(server.grpc_target, "live", 2))
        with staged_version_dir(str(live), 3) as staged:
            shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir, dirs_exist_ok=True)
            os.remove(os.path.join(staged.staging_dir, "variables", "variables.index"))
        no_index = wait_for(lambda: failed_status(server.grpc_target, "live", 3))
        assert statuses(server.grpc_target, "live")[1][0] == "AVAILABLE"
    data_loss = grpc.StatusCode.DATA_LOSS.value[0]
    assert truncated[:2] == ("END", data_loss), truncated
    assert os.path.join(str(live), "2", "variables") in truncated[2]
    assert f"a tensor of variables.index cannot be read (variables.data-00000-of-00001 has {size // 3} bytes)" \
        in truncated[2] and "Read less bytes than requested" in truncated[2]
    assert no_index[:2] == ("END", data_loss), no_index
    assert "variables.index is missing beside variables.data-00000-of-00001" in no_index[2]


def test_a_fifo_or_a_lost_variables_folder_is_refused_and_the_poller_goes_on(live, saved_models):
    """A version whose saved_model.pb is a FIFO (reading it would block the model poller for
    good, so no later version would load and stopping would wait for it) is refused, naming the
    file, also behind a linked variables folder; one that lost its variables folder, or whose
    folder is empty, is DATA_LOSS naming it; version 6 then loads."""
    flags = ("--max_num_load_retries=0",)
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.2, extra_args=flags) as server:
        with staged_version_dir(str(live), 2) as staged:
            shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir, dirs_exist_ok=True)
            os.remove(os.path.join(staged.staging_dir, "saved_model.pb"))
            os.mkfifo(os.path.join(staged.staging_dir, "saved_model.pb"))
        fifo = wait_for(lambda: failed_status(server.grpc_target, "live", 2))
        with staged_version_dir(str(live), 3) as staged:
            shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir, dirs_exist_ok=True)
            shutil.rmtree(os.path.join(staged.staging_dir, "variables"))
        lost = wait_for(lambda: failed_status(server.grpc_target, "live", 3))
        with staged_version_dir(str(live), 4) as staged:  # variables/ a link to a folder holding a FIFO
            shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir, dirs_exist_ok=True)
            elsewhere = live.parent / "elsewhere"
            shutil.move(os.path.join(staged.staging_dir, "variables"), elsewhere)
            os.mkfifo(elsewhere / "variables.data-00000-of-00001.fifo")
            os.symlink(elsewhere, os.path.join(staged.staging_dir, "variables"))
        linked = wait_for(lambda: failed_status(server.grpc_target, "live", 4))
        with staged_version_dir(str(live), 5) as staged:
            shutil.copytree(str(saved_models / "toy" / "1"), staged.staging_dir, dirs_exist_ok=True)
            for entry in os.listdir(os.path.join(staged.staging_dir, "variables")):
                os.remove(os.path.join(staged.staging_dir, "variables", entry))
        empty = wait_for(lambda: failed_status(server.grpc_target, "live", 5))
        publish(saved_models / "toy" / "2", live, 6)
        wait_for(lambda: statuses(server.grpc_target, "live").get(6, ("",))[0] == "AVAILABLE")
        started = time.monotonic()
    assert time.monotonic() - started < 15
    assert fifo[:2] == ("END", grpc.StatusCode.FAILED_PRECONDITION.value[0]), fifo
    assert f"{live / '2' / 'saved_model.pb'} is not a regular file (a FIFO, socket or device)" in fifo[2]
    assert lost[:2] == ("END", grpc.StatusCode.DATA_LOSS.value[0]), lost
    assert f"{live / '3' / 'variables'} is missing" in lost[2]
    assert linked[:2] == fifo[:2] and "variables.data-00000-of-00001.fifo is not a regular file" in linked[2], linked
    assert empty[:2] == lost[:2] and f"{live / '5' / 'variables'} is empty" in empty[2], empty


def test_start_waits_for_load_retries_and_fails_as_tf_serving_when_a_model_cannot_load(
        tmp_path, saved_models):
    """A version still being copied at start is retried before the server announces itself;
    a configured model with no loadable version makes the start fail (exit 1, "Failed to
    start server"), as tensorflow_model_server does, also when the other models load; so does one
    whose base path holds no version its policy wants."""
    copying = tmp_path / "copying"
    complete = half_copied_version(saved_models / "toy" / "1", copying, 1)
    flags = ("--max_num_load_retries=100", "--load_retry_interval_micros=300000")
    server = LocalServer(model_base_path=str(copying), model_name="copying", rest=False,
                         extra_args=flags)

    def complete_after_the_first_try():
        wait_for(lambda: "{name: copying version: 1} failed" in server.logs(), timeout=120)
        complete()

    threading.Thread(target=complete_after_the_first_try, daemon=True).start()
    with server, Client(server.grpc_target) as client:
        assert "Retrying of Loading servable: {name: copying version: 1}" in server.logs()
        assert client.predict("copying", {"x": X, "tag": TAGS})["score"][0] == 14.0 + 1

    broken = tmp_path / "broken"
    shutil.copytree(str(saved_models / "toy" / "1"), str(broken / "1"))
    (broken / "1" / "saved_model.pb").write_bytes(b"\x08\xffnot a SavedModel")
    config = tmp_path / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "good" base_path: "{saved_models / 'toy'}" model_platform: "tensorflow" }}
  config {{ name: "broken" base_path: "{broken}" model_platform: "tensorflow" }}
}}""")
    flags = ("--max_num_load_retries=2", "--load_retry_interval_micros=200000")
    server = LocalServer(model_config_file=str(config), rest=False, extra_args=flags)
    with pytest.raises(RuntimeError, match="exited with code 1"):
        server.start()
    logs = server.logs()
    assert "Retrying of Loading servable: {name: broken version: 1} retry: 2" in logs
    assert ("Failed to start server. Error: UNKNOWN: Some servables did not become available: "
            "{{name: broken version: 1}}") in logs

    # A version the policy asks for that is not there fails at once, naming path and versions.
    config.write_text(f"""model_config_list {{
  config {{ name: "good" base_path: "{saved_models / 'toy'}" model_version_policy {{ specific {{ versions: 42 }} }} }}
}}""")
    server = LocalServer(model_config_file=str(config), rest=False)
    with pytest.raises(RuntimeError, match="exited with code 1"):
        server.start()
    assert (f"Failed to start server. Error: NOT_FOUND: Unable to find a numerical version path for servable good "
            f"at: {saved_models / 'toy'} (its version policy serves versions [42]; the folder holds [1, 2])") \
        in server.logs()


def test_a_label_moved_to_a_version_a_reload_loads_takes_effect_once_it_has_loaded(saved_models, tmp_path):
    """Rolling back in one reload (policy {2} -> {1, 2}, stable: 2 -> 1): requests by the label
    never fail (they were NOT_FOUND while version 1 loaded), and a reload whose label is refused
    changes nothing in between."""
    def config(versions, stable):
        request = model_management_pb2.ReloadConfigRequest()
        model = request.config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = "toy", str(saved_models / "toy"), "tensorflow"
        model.model_version_policy.specific.versions.extend(versions)
        model.version_labels["stable"] = stable
        return request

    path = tmp_path / "models.config"
    path.write_text(str(config([2], 2).config))
    with LocalServer(model_config_file=str(path), rest=False, poll_wait_seconds=0) as server, \
            grpc.insecure_channel(server.grpc_target) as channel:
        reload = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest
        with Load(server.grpc_target, clients=2, model="toy", version_label="stable") as load:
            wait_for(lambda: load.count() >= 50)
            assert reload(config([1, 2], 1), timeout=60).status.error_code == 0
            counted = load.count()
            wait_for(lambda: load.count() >= counted + 50)
        assert load.errors() == [] and load.versions() == {1, 2}
        answered = [call[2] for call in load.calls]
        assert answered.index(1) > answered.index(2)
        # The label is resolved when a request arrives: one in flight at the swap may still end
        # on version 2 after another client's first answer from 1, but none that starts later.
        first_new = min(end for _, end, version, _ in load.calls if version == 1)
        later = [version for start, _, version, _ in load.calls if start > first_new]
        assert len(later) >= 40 and set(later) == {1}

        with Load(server.grpc_target, clients=2, model="toy", version_label="stable") as load:
            wait_for(lambda: load.count() >= 50)
            with pytest.raises(grpc.RpcError) as refused:
                reload(config([1], 2), timeout=60)  # version 2 is unloaded: stable cannot point at it
            counted = load.count()
            wait_for(lambda: load.count() >= counted + 50)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert load.errors() == [] and load.versions() == {1}


def test_reloads_run_one_at_a_time_so_the_one_sent_last_decides(saved_models, tmp_path):
    """R1 adds a model whose load takes a while (3,000 warmup requests) and keeps label stable at
    version 1; R2, sent while R1 waits for that load, lists the same models with stable at 2. As
    TF Serving serializes ReloadConfig, R2 waits for R1: once R2 answers OK the added model
    serves, and R2's label stays (R1 used to install its labels over it when its load ended)."""
    slow = tmp_path / "slow"
    shutil.copytree(saved_models / "toy" / "1", slow / "1")
    good = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=toy_request([[1.0, 2.0, 3.0]], [b"warm"], "slow"))).SerializeToString()
    with tf.io.TFRecordWriter(str(slow / "1" / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(3000):
            writer.write(good)

    def config(stable, with_slow):
        request = model_management_pb2.ReloadConfigRequest()
        toy = request.config.model_config_list.config.add()
        toy.name, toy.base_path, toy.model_platform = "toy", str(saved_models / "toy"), "tensorflow"
        toy.model_version_policy.all.SetInParent()
        toy.version_labels["stable"] = stable
        if with_slow:
            model = request.config.model_config_list.config.add()
            model.name, model.base_path, model.model_platform = "slow", str(slow), "tensorflow"
        return request

    path = tmp_path / "models.config"
    path.write_text(str(config(1, False).config))
    with LocalServer(model_config_file=str(path), rest=False) as server, \
            grpc.insecure_channel(server.grpc_target) as channel:
        reload = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        errors = []

        def send(name, request, delay):
            time.sleep(delay)
            try:
                reload(request, timeout=120)
                if name == "R2":  # its OK means its models serve
                    predict(toy_request([[1.0, 2.0, 3.0]], [b"x"], "slow"), timeout=30)
            except grpc.RpcError as error:
                errors.append((name, error.code(), error.details()))

        threads = [threading.Thread(target=send, args=("R1", config(1, True), 0.0)),
                   threading.Thread(target=send, args=("R2", config(2, True), 0.05))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        request = toy_request([[1.0, 2.0, 3.0]], [b"x"])
        request.model_spec.version_label = "stable"
        assert predict(request, timeout=30).model_spec.version.value == 2


def test_a_reload_waits_for_the_load_retries_of_a_model_it_adds(live, saved_models, tmp_path):
    """ReloadConfig returns once an added model has loaded, retries included (it used to
    report the first failed try of a version that was still being copied)."""
    flags = ("--max_num_load_retries=100", "--load_retry_interval_micros=300000")
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0, extra_args=flags) as server, \
            Client(server.grpc_target) as client:
        added = tmp_path / "added"
        complete = half_copied_version(saved_models / "toy" / "2", added, 1)
        threading.Timer(1.0, complete).start()
        request = model_management_pb2.ReloadConfigRequest()
        for name, base in (("live", live), ("added", added)):
            model = request.config.model_config_list.config.add()
            model.name, model.base_path, model.model_platform = name, str(base), "tensorflow"
        with grpc.insecure_channel(server.grpc_target) as channel:
            response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=60)
        assert response.status.error_code == 0, response.status.error_message
        assert "Retrying of Loading servable: {name: added version: 1}" in server.logs()
        assert client.predict("added", {"x": X, "tag": TAGS})["score"][0] == 14.0 + 2


# ---------------------------------------------------------------- batching


def test_concurrent_single_rows_get_exactly_the_unbatched_outputs(saved_models, tmp_path):
    """16 concurrent one-row requests, batched (and padded to an allowed batch size), each
    get their own row: bit for bit what the row gets alone for toy (element-wise float,
    int and string outputs); for keras/1 (embedding, pooling, dense) within float32
    rounding, since a matmul over 16 rows may round differently from one over 1 row (as in
    TF Serving's batching)."""
    parameters = tmp_path / "batching.config"
    parameters.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 200000 }"
                          "\nnum_batch_threads { value: 1 }\nallowed_batch_sizes: 4\n"
                          "allowed_batch_sizes: 16\n")
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n"
                      f'  config {{ name: "toy" base_path: "{saved_models / "toy"}" }}\n'
                      f'  config {{ name: "keras" base_path: "{saved_models / "keras"}" }}\n'
                      "}\n")
    rng = np.random.default_rng(7)
    requests = [("toy", {"x": rng.normal(size=(1, 3)).astype(np.float32),
                         "tag": np.array([bytes(rng.integers(0, 256, size=i % 5))], object)})
                for i in range(8)]
    requests += [("keras", {"dense": rng.normal(size=(1, 3)).astype(np.float32),
                            "hist": rng.integers(0, 10, size=(1, 4))}) for _ in range(8)]
    functions = {
        "toy": tf.saved_model.load(str(saved_models / "toy" / "2")).signatures[
            "serving_default"],
        "keras": tf.saved_model.load(str(saved_models / "keras" / "1")).signatures[
            "serving_default"]}
    alone = [{alias: tensor.numpy() for alias, tensor in functions[model](
        **{alias: tf.constant(value) for alias, value in inputs.items()}).items()}
        for model, inputs in requests]
    with LocalServer(model_config_file=str(config), rest=False,
                     extra_args=("--enable_batching",
                                 f"--batching_parameters_file={parameters}")) as server, \
            Client(server.grpc_target) as client:
        client.metadata("toy"), client.metadata("keras")
        results = [None] * len(requests)
        barrier = threading.Barrier(len(requests))

        def call(index):
            model, inputs = requests[index]
            barrier.wait()
            results[index] = client.predict(model, inputs)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    for (model, _), got, expected in zip(requests, results, alone):
        assert set(got) == set(expected)
        for alias in expected:
            assert got[alias].dtype == expected[alias].dtype
            if model == "toy":
                np.testing.assert_array_equal(got[alias], expected[alias])
            else:
                np.testing.assert_allclose(got[alias], expected[alias], rtol=1e-6, atol=0)


def _batcher_threads(prefix):
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def test_request_after_unload_makes_no_batcher_threads(saved_models):
    options = BatchingOptions(max_batch_size=8, batch_timeout_micros=1000, num_batch_threads=3)
    servable = ServableVersion("batchy", 1, str(saved_models / "batchy" / "1"), options)
    prefix = "batchy/1/"
    x = np.array([[1.0, 2.0]], np.float32)
    assert _batcher_threads(prefix) == []
    np.testing.assert_array_equal(servable.predict("", {"x": x})["y"], 2 * x)
    assert len(_batcher_threads(prefix)) == 3

    errors, done = [], []

    def hammer():
        try:
            for _ in range(30):
                np.testing.assert_array_equal(servable.predict("", {"x": x})["y"], 2 * x)
                done.append(1)
        except Exception as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    while len(done) < 20:
        time.sleep(0.001)
    servable.close()  # what the version manager does on unload, with requests in flight
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(done) == 6 * 30
    # requests after the unload run alone on the version they hold: no batcher again
    outputs = servable.predict("", {"x": np.ones((3, 2), np.float32)})
    assert list(outputs["batch_rows"]) == [3, 3, 3]
    assert servable.batcher_threads() == []
    wait_for(lambda: _batcher_threads(prefix) == [], timeout=10)


class _Vocabulary(tf.Module):
    """A lookup table of 1,000 string ids."""

    def __init__(self):
        super().__init__()
        self.table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([f"id{i}" for i in range(1000)]), tf.range(1000, dtype=tf.int64)), -1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="ids")])
    def serve(self, ids):
        return {"index": self.table.lookup(ids)}

    request = {"ids": np.array([b"id7", b"other"])}

    @staticmethod
    def use(handle):
        return tf.raw_ops.LookupTableSizeV2(table_handle=handle)


class _ScannIndex(tf.Module):
    """A ScaNN index (TFRS' layer) of 2,000 8-d items, as a retrieval export holds one."""

    def __init__(self):
        super().__init__()
        import tensorflow_recommenders as tfrs
        items = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
        self.index = tfrs.layers.factorized_top_k.ScaNN(k=3, num_leaves=40, num_leaves_to_search=40)
        self.index.index(tf.constant(items), tf.constant([f"id{i}" for i in range(2000)]))
        self.request = {"query": items[:1]}

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32, name="query")])
    def serve(self, query):
        return {"ids": self.index(query)[1]}

    @staticmethod
    def use(handle):
        from scann.scann_ops.py.scann_ops import ScannSearcher
        return ScannSearcher(handle).search_batched(tf.zeros([1, 8]), final_num_neighbors=1)


@pytest.mark.parametrize("module", [_Vocabulary, _ScannIndex], ids=["lookup table", "scann searcher"])
def test_an_unloaded_version_frees_its_resources_and_only_its_own(tmp_path, module):
    """TensorFlow keeps a loaded SavedModel's resources other than variables after the model is
    gone (each load of a 20,000-id vocabulary kept about 3 MB, of a 200,000-item ScaNN index
    28 MB: a server rolling versions grew without bound). A version's tables and searchers are
    destroyed once it is unloaded and collected; another version loaded from the same files
    keeps its own and answers."""
    saved = module()
    path = str(tmp_path / "model" / "1")
    tf.saved_model.save(saved, path, signatures=saved.serve,
                        options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
    first, second = ServableVersion("model", 1, path), ServableVersion("model", 2, path)
    resources = _resource_handles(first._loaded)
    assert len(resources) == 1
    module.use(resources[0])  # exists
    answer = first.run("serving_default", saved.request)
    first.close()  # what the version manager does on unload
    del first
    gc.collect()
    with pytest.raises(tf.errors.NotFoundError):
        module.use(resources[0])
    for alias, value in second.run("serving_default", saved.request).items():
        np.testing.assert_array_equal(value, answer[alias])


# ---------------------------------------------------------------- kill and restart


def test_sigkill_mid_load_then_restart_serves_the_same_versions(live, saved_models):
    with LocalServer(model_base_path=str(live), model_name="live", rest=False,
                     poll_wait_seconds=0.1) as server:
        with Load(server.grpc_target, clients=2) as load:
            wait_for(lambda: load.count() >= 50)
            publish(saved_models / "toy" / "1", live, 2)
            wait_for(lambda: "Loading servable: {name: live version: 2}" in server.logs(),
                     interval=0.005)
            os.kill(server.pid, signal.SIGKILL)
            server.process.wait(timeout=30)
        assert server.process.returncode == -signal.SIGKILL
    assert sorted(os.listdir(live)) == ["1", "2"]  # nothing half-written left behind
    with LocalServer(model_base_path=str(live), model_name="live", rest=False) as restarted, \
            Client(restarted.grpc_target) as client:
        assert statuses(restarted.grpc_target, "live") == {2: ("AVAILABLE", 0, "")}
        outputs = client.predict("live", {"x": X, "tag": TAGS})
        np.testing.assert_allclose(outputs["score"], X @ [1.0, 2.0, 3.0] + 1, rtol=1e-6)
        with pytest.raises(ServingError):
            client.predict("live", {"x": X, "tag": TAGS}, version=1)


def test_full_batching_queue_is_unavailable_as_in_tf_serving():
    """TF 2.20's SharedBatchScheduler answers a full queue with UNAVAILABLE (HTTP 503), which
    clients retry with backoff; bad input is never RESOURCE_EXHAUSTED."""
    release = threading.Event()

    def run(inputs):
        release.wait(30)
        return {"y": inputs["x"]}

    batcher = Batcher(run, BatchingOptions(max_batch_size=2, max_enqueued_batches=1,
                                           num_batch_threads=1), name="full")
    x = np.zeros((2, 1), np.float32)
    started = [threading.Thread(target=batcher.submit, args=({"x": x},)) for _ in range(2)]
    try:
        started[0].start()
        wait_for(lambda: batcher._queued_rows == 0 and started[0].is_alive())
        time.sleep(0.1)  # the first batch is running, blocked
        started[1].start()
        wait_for(lambda: batcher._queued_rows == 2)
        with pytest.raises(ServingError) as info:
            batcher.submit({"x": x[:1]})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert info.value.message == ("The batch scheduling queue to which this task was "
                                      "submitted is full; task size is 1 but scheduling "
                                      "capacity is only 0")
    finally:
        release.set()
        for thread in started:
            thread.join(timeout=30)
        batcher.close()
    assert batcher.threads and not any(t.is_alive() for t in batcher.threads)
