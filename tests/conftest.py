"""Session fixtures: DIN is trained once on planted data, exported once and served once."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

# pytest-xdist runs a worker or more per core, and each would size its TensorFlow thread pools to
# every core, contending with the other workers. Measured on 2 cores, 3 training-heavy test files under
# -n 2: 326 s with the default pools, 277 s with one thread each (set then through TF_NUM_*_THREADS
# in every process these files start, one or so). Only this process: the servers
# and cluster tasks the tests start keep TensorFlow's defaults (a parameter-server cluster whose
# tasks have one inter-op thread deadlocks, and tfrec.distribute refuses to start one).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS_PER_WORKER = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS_PER_WORKER)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS_PER_WORKER)

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def run_saved_model_cli(*args):
    """Runs TensorFlow's own saved_model_cli, the independent check that an export is real."""
    return subprocess.run([SAVED_MODEL_CLI, *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="session")
def planted_din():
    """DIN trained with Keras fit on planted-truth data with raw string ids (tfrec.recipes)."""
    from tfrec.data import DIN_HISTORY_FEATURES
    from tfrec.recipes import planted_din_data, train_din

    log, train_df, test_df, columns = planted_din_data()
    model = train_din(train_df, columns)
    return SimpleNamespace(log=log, train=train_df, test=test_df, columns=columns, model=model,
                           history_features=DIN_HISTORY_FEATURES)


@pytest.fixture(scope="session")
def din_export(planted_din, tmp_path_factory):
    """The trained DIN exported as version 1 under <tmp>/models/din."""
    from exporters import export_saved_model
    from tfrec.data import df_to_inputs

    base = tmp_path_factory.mktemp("exports") / "din"
    path = export_saved_model(planted_din.model, str(base), warmup_inputs=df_to_inputs(planted_din.test.head(3), planted_din.columns),
                              model_name="din")
    return SimpleNamespace(base=str(base), path=path)


@pytest.fixture(scope="session")
def din_server(din_export):
    """The real server subprocess on 127.0.0.1 serving the DIN export as model "din"."""
    from serving import LocalServer

    with LocalServer(model_base_path=din_export.base, model_name="din") as server:
        yield server


@pytest.fixture(scope="module")
def stub(server):
    """A PredictionService stub on the module's `server` fixture (a running LocalServer)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture
def tfrec_main(capsys):
    """`tfrec ARGV` run in this process, the same `main` as the command's: a function of the
    arguments (any objects, passed as text) that returns (exit code, stdout, stderr)."""
    from tfrec.cli import main

    def run(*argv):
        capsys.readouterr()
        code = main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# Test files that share a session fixture costing more than a few seconds: pytest-xdist's
# `--dist loadfile` would otherwise send them to different workers, and each worker would build
# the fixture again (planted_din trains DIN and din_server starts a server: ~20 s of a core).
SHARED_FIXTURE_FILES = {
    "planted_din": ("tests/tfrec/test_din.py", "tests/tfrec/test_training_path.py", "tests/serving/test_inference.py"),
}


# The files that keep a worker busiest, longest first (the summed setup, call and teardown time of
# each file's tests in a 3-worker CI run on 2 cores: test_clsr 330 s, test_distribute 275 s, ...,
# test_fuzz 45 s). Under `--dist loadfile` a file runs whole on one worker, so one handed out last
# would run on alone while the other workers had nothing left: these start first, and the short
# files fill in. Run so, the suite took 1039-1051 s (two runs) against 1115-1118 s in xdist's own
# order, the workers ending within 17 s of each other.
LONGEST_FILES = (
    "tests/tfrec/test_clsr.py",
    "tests/tfrec/test_distribute.py",
    "tests/tfrec/test_sim.py",
    *SHARED_FIXTURE_FILES["planted_din"],  # 194 s together
    "tests/tfrec/test_config.py",
    "tests/test_documented_examples.py",
    "tests/tfrec/test_sdm.py",
    "tests/tfrec/test_cli_config.py",
    "tests/tfrec/test_retrieval_config.py",
    "tests/exporters/test_retrieval.py",
    "tests/serving/test_robustness.py",
    "tests/tfrec/test_multitask.py",
    "tests/tfrec/test_one_call_step.py",
    "tests/tfrec/test_deepctr_idioms.py",
    "tests/tfrec/test_sparse_regime.py",
    "tests/tfrec/test_mind.py",
    "tests/tfrec/test_saving.py",
    "tests/tfrec/test_sample_weights.py",
    "tests/serving/test_fuzz.py",
)


def pytest_collection_modifyitems(items):
    """LONGEST_FILES' tests first, in that order; every other file after them, in collection order."""
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(LONGEST_FILES)))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: a run without it (-p no:xdist) ignores it
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with the files of SHARED_FIXTURE_FILES run as one unit, in one worker, and
    the files handed out in collection order (`pytest_collection_modifyitems`), not xdist's own
    order by number of tests."""
    if config.getvalue("dist") != "loadfile":
        return None
    config.option.loadscopereorder = False
    from xdist.scheduler import LoadFileScheduling

    group_of = {path: group for group, paths in SHARED_FIXTURE_FILES.items() for path in paths}

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = super()._split_scope(nodeid)
            return group_of.get(path, path)

    return SharedFixtureScheduling(config, log)
