"""tfrec.distribute: multi-worker equivalence, a parameter-server cluster, kill and resume.

Every cluster runs as local processes on 127.0.0.1. This file is also the program those
processes run (`python tests/tfrec/test_distribute.py MODE OUT_JSON ...`), so the training code
the tests check is in one place. Every process a test starts is killed by that test (a
`finally`), and every wait has a deadline.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from tfrec.distribute import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS = os.path.abspath(__file__)
GLOBAL_BATCH = 64
EPOCHS = 3
STEPS_PER_EPOCH = 800 // GLOBAL_BATCH  # 12 global batches of 64 rows (the last 32 rows dropped)
SAVE_FREQ = 4
RESUMABLE_BATCH = 32
RESUMABLE_STEPS_PER_EPOCH = -(-800 // RESUMABLE_BATCH)  # 25, the last batch partial
PS_STEPS_PER_EPOCH = 12


# ---------------------------------------------------------------------------------------------
# The training programs (run in child processes, and the single-process reference in-process).

def tiny_din_data():
    """800 train / 200 test DIN rows over 100 users and 92 items (int ids), maxlen 10."""
    from tfrec.data import build_din_samples, din_feature_columns, make_behaviour_log

    log = make_behaviour_log(num_users=100, num_items=100, events_per_user=10, seed=7)
    train, test = build_din_samples(log, maxlen=10, test_events=2)
    return train, test, din_feature_columns(log, maxlen=10, embedding_dim=8)


def tiny_din(columns, **kwargs):
    from tfrec.data import DIN_HISTORY_FEATURES
    from tfrec.models import DIN

    return DIN(columns, DIN_HISTORY_FEATURES, dnn_hidden_units=(8,), att_hidden_size=(8,), **kwargs)


def train_synchronous(kind):
    """DIN trained under `build_strategy(kind)` ("default" or "multi_worker") on the same rows in
    the same order with the same global batch, each worker reading its own half of every batch
    (`dataframe_dataset_fn`). Returns the loss after every batch and every epoch.

    Keras logs a batch's loss summed over the workers' running means (tf-keras reduces
    per-replica logs with "sum" there; the epoch's loss is reduced exactly), so the batch losses
    are divided by the number of replicas: with equal halves that is the global running mean.
    """
    import tensorflow as tf

    from tfrec.distribute import build_and_compile, build_strategy, dataframe_dataset_fn, distributed_dataset

    train, _, columns = tiny_din_data()
    strategy = build_strategy(kind)
    model = build_and_compile(tiny_din, columns, strategy=strategy, seed=0, compile_kwargs={"metrics": []})
    data = distributed_dataset(strategy, dataframe_dataset_fn(train, columns, "click", GLOBAL_BATCH, shuffle=False,
                                                                repeat=True))
    losses = []
    logger = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: losses.append(logs["loss"] / strategy.num_replicas_in_sync))
    history = model.fit(data, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, callbacks=[logger], verbose=0)
    return {"batch": losses, "epoch": history.history["loss"], "replicas": strategy.num_replicas_in_sync,
            "traces": model.train_function.experimental_get_tracing_count()}, model


def run_multi_worker(out, export_base):
    """One worker of the 2-worker run; then `export_from_chief`, which every worker calls (reading
    Dice's batch-norm statistics, sync-on-read variables, is a collective of all workers)."""
    from exporters import export_from_chief

    report, model = train_synchronous("multi_worker")
    _write(out, dict(report, export=export_from_chief(model, export_base)))


def run_parameter_server_chief(out, export_base, step_log, pace_s):
    """The chief of a 2-worker, 2-ps cluster: trains DIN (with dropout) with a sharded item
    table, backing up every SAVE_FREQ steps (a restarted chief resumes from there), validating
    after each epoch and keeping the best weights by validation AUC, and exports."""
    import tensorflow as tf

    from tfrec.data import df_to_inputs
    from exporters import export_from_chief
    from tfrec.distribute import (build_and_compile, build_strategy, checkpoint_callbacks, dataframe_dataset_fn,
                                  distributed_dataset, unsharded_copy)

    train, test, columns = tiny_din_data()
    strategy = build_strategy("parameter_server", min_shard_bytes=1024)
    # With dropout: its masks come from a tf.random.Generator (as `import tfrec` makes Keras draw),
    # whose state is a variable on a parameter server that every worker's step draws from.
    model = build_and_compile(tiny_din, columns, strategy=strategy, seed=0, dnn_dropout=0.5)
    table = next(layer for layer in model.layers if layer.name == "emb_item_id").embeddings
    shards = table.variables if isinstance(table, tf.__internal__.distribute.ShardedVariable) else [table]
    before = [s.numpy() for s in shards]
    data = distributed_dataset(strategy, dataframe_dataset_fn(train, columns, "click", 32, seed=1, repeat=True))
    validation = distributed_dataset(strategy, dataframe_dataset_fn(test, columns, "click", 32, shuffle=False,
                                                                    repeat=True))
    backup, best = (os.path.join(os.path.dirname(out), name) for name in ("ps_backup", "ps_best/weights"))
    callbacks = checkpoint_callbacks(backup, save_freq=SAVE_FREQ, best_model_path=best)
    callbacks.append(_step_log_callback(step_log, float(pace_s)))
    history = model.fit(data, epochs=2, steps_per_epoch=PS_STEPS_PER_EPOCH, verbose=0, callbacks=callbacks,
                        validation_data=validation, validation_steps=len(test) // 32)
    rows = df_to_inputs(test.head(20), columns)
    sharded = model(rows, training=False).numpy()
    copy = unsharded_copy(model)
    path = export_from_chief(model, export_base, warmup_inputs=rows, model_name="din")
    _write(out, {
        "shard_devices": [s.device for s in shards], "shard_rows": [int(s.shape[0]) for s in shards],
        "table_rows": int(table.shape[0]), "iterations": int(model.optimizer.iterations.numpy()),
        "loss": history.history["loss"], "moved": [bool(np.any(b != s.numpy())) for b, s in zip(before, shards)],
        "sharded_predictions": sharded.tolist(), "copy_predictions": copy(rows, training=False).numpy().tolist(),
        "copy_table_kind": type(next(l for l in copy.layers if l.name == "emb_item_id").embeddings).__name__,
        "export": path, "val_auc": history.history["val_auc"], "best": os.path.exists(best + ".index"),
        "rows_updated": _concurrent_row_updates(strategy)})


def _concurrent_row_updates(strategy, rows=32):
    """Schedules `rows` steps on the workers, step i updating row i of one small table (on a
    parameter server) with LazyAdam, and returns how many rows the steps left changed. The two
    workers run their steps at the same time: an update that wrote back the whole table as its
    step read it (LazyAdam's masked update of a small table) lost 7-13 of 32 rows this way."""
    import tensorflow as tf

    from tfrec.optimizers import LazyAdam

    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        table = tf.Variable(tf.zeros([rows, 4]))  # 512 bytes: one shard
        optimizer = LazyAdam(0.1)
        optimizer.build([table])

    @tf.function
    def step(row):
        gradient = tf.IndexedSlices(tf.ones([1, 4]), row[None], tf.constant([rows, 4], tf.int64))
        strategy.run(lambda: optimizer.apply_gradients([(gradient, table)]))

    for row in range(rows):
        coordinator.schedule(step, args=(tf.constant(row, tf.int64),))
    coordinator.join()
    return int(np.any(table.numpy() != 0, axis=1).sum())


def _step_log_callback(path, pace_s):
    """A Keras callback appending "begin N" / "step N" / "end N" (optimizer steps, then the time)
    to `path`, durably, and sleeping `pace_s` after each step (so a test can kill mid-run)."""
    import tensorflow as tf

    class StepLog(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._supports_tf_logs = True  # it reads no logs: ParameterServerStrategy allows its batch hooks

        def _write(self, what):
            with open(path, "a") as log:
                log.write(f"{what} {int(self.model.optimizer.iterations.numpy())} {time.time():.2f}\n")
                log.flush()
                os.fsync(log.fileno())

        def on_train_begin(self, logs=None):
            self._write("begin")

        def on_train_batch_end(self, batch, logs=None):
            self._write("step")
            time.sleep(pace_s)

        def on_train_end(self, logs=None):
            self._write("end")

    return StepLog()


def run_resumable(out, backup_dir, best_path, step_log, pace_s, kind="mirrored"):
    """DIN with BackupAndRestore every SAVE_FREQ steps and the best model by validation AUC,
    under a one-device MirroredStrategy or (kind "multi_worker") as one worker of a cluster;
    a worker's `out` and `step_log` get its index as a suffix."""
    from tfrec.data import df_to_inputs
    from tfrec.distribute import build_and_compile, build_strategy, checkpoint_callbacks, parse_tf_config

    if kind == "multi_worker":
        index = parse_tf_config()["task"]["index"]
        out, step_log = f"{out}.{index}", f"{step_log}.{index}"
        strategy = build_strategy("multi_worker")
    else:
        strategy = build_strategy("mirrored", devices=["/cpu:0"])
    train, test, columns = tiny_din_data()
    model = build_and_compile(tiny_din, columns, strategy=strategy, seed=0)
    callbacks = checkpoint_callbacks(backup_dir, save_freq=SAVE_FREQ, best_model_path=best_path)
    callbacks.append(_step_log_callback(step_log, float(pace_s)))
    history = model.fit(df_to_inputs(train, columns), train["click"].to_numpy("float32"), batch_size=RESUMABLE_BATCH,
                        epochs=3, verbose=0, callbacks=callbacks,
                        validation_data=(df_to_inputs(test, columns), test["click"].to_numpy("float32")))
    _write(out, {"iterations": int(model.optimizer.iterations.numpy()),
                 "finite": bool(all(np.isfinite(w).all() for w in model.get_weights())),
                 "val_auc": history.history["val_auc"], "epochs_run": len(history.history["loss"]),
                 "steps_per_epoch": int(np.ceil(len(train) / RESUMABLE_BATCH))})


def run_recall_on_two_replicas(out):
    """MIND trained 2 epochs under a MirroredStrategy of two logical CPUs with RecallValidation.
    Writes each epoch's val_recall (each replica ranked half of the held-out samples), the recall
    of the same samples ranked in one piece by `rank_candidates` after training, and how many
    times the callback's epochs embedded the catalogue with the item tower."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tests.tfrec.retrieval_helpers import planted_retrieval
    from tfrec import evaluation
    from tfrec.data.retrieval import make_retrieval_data, retrieval_feature_columns
    from tfrec.metrics import recall_at_k
    from tfrec.models import MIND

    embedded = []
    tower_outputs = evaluation.tower_outputs

    def counted(tower, inputs, batch_size=4096):  # the real function, its item tower calls counted
        if tower.name.endswith("_item_tower"):
            embedded.append(len(next(iter(inputs.values()))))
        return tower_outputs(tower, inputs, batch_size)

    evaluation.tower_outputs = counted
    data = make_retrieval_data(num_users=200, num_items=100, events_per_user=20, seed=0)
    planted = planted_retrieval(data, retrieval_feature_columns(data, 10, embedding_dim=8), 10)
    truth = planted.test["item_id"].to_numpy()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        tf.keras.utils.set_random_seed(0)
        model = MIND(planted.user_columns, planted.item_columns, k_max=2, user_dnn_hidden_units=(8,),
                     sampler_config=planted.sampler)
        model.compile(tf.keras.optimizers.Adam(3e-3))
    validation = evaluation.RecallValidation(planted.x_test, {"item_id": data.item_ids}, data.item_ids, truth, k=10)
    history = model.fit(planted.x_train, np.zeros(len(planted.train)), batch_size=256, epochs=2, verbose=0,
                        callbacks=[validation])
    catalogue_embeddings = list(embedded)
    ranked = data.item_ids[evaluation.rank_candidates(model, planted.x_test, {"item_id": data.item_ids}, 10)]
    _write(out, {"replicas": strategy.num_replicas_in_sync, "val_recall": history.history["val_recall"],
                 "traces": model.train_function.experimental_get_tracing_count(),
                 "recall_in_one_piece": recall_at_k(truth, ranked, 10), "items": len(data.item_ids),
                 "catalogue_embeddings": catalogue_embeddings})


def _write(path, report):
    with open(path + ".tmp", "w") as out:
        json.dump(report, out)
    os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# Process plumbing for the tests.

def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", TF_USE_LEGACY_KERAS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


class _Processes:
    """Started child processes, each logging to a file; all are SIGKILLed on exit."""

    def __init__(self, log_dir):
        self.log_dir = str(log_dir)
        self.started = []

    def start(self, name, command, **env):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(**env),
                                   start_new_session=True)
        self.started.append((name, process, log))
        return process

    def wait(self, process, deadline):
        try:
            return process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"a child process outlived its time bound\n{self.logs()}")

    def log(self, name):
        """Everything the process started as `name` printed so far."""
        log = next(log for started, _, log in self.started if started == name)
        log.flush()
        with open(log.name) as source:
            return source.read()

    def logs(self, tail=3000):
        return "\n".join(f"--- {name}\n{self.log(name)[-tail:]}" for name, _, _ in self.started)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for _, process, log in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            log.close()


TEST_TIME_BOUND_S = 240


@pytest.fixture(autouse=True)
def _time_bound():
    """Fails a test still running after TEST_TIME_BOUND_S (its children are killed on the way out)."""
    def expire(signum, frame):
        raise TimeoutError(f"test exceeded its {TEST_TIME_BOUND_S} s bound")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIME_BOUND_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------
# In-process: the sparse path on a sharded table.

def _sharded(value, split, name="table"):
    """A ShardedVariable of two shards, rows [0, split) and [split, n), named as the partitioner names them."""
    import tensorflow as tf

    return tf.__internal__.distribute.ShardedVariable(
        [tf.Variable(value[:split], name=f"{name}/part_0"), tf.Variable(value[split:], name=f"{name}/part_1")])


def test_sharded_table_lookups_and_lazy_adam_touch_only_batch_rows():
    import tensorflow as tf

    from feature_columns.layers import gather_rows
    from tfrec.optimizers import LazyAdam

    value = np.arange(20, dtype=np.float32).reshape(5, 4) / 10.0
    table = _sharded(value, 3)  # rows 0-2 | 3-4, the partitioner's contiguous split
    ids = tf.constant([[0, 4], [4, 1]])
    np.testing.assert_array_equal(gather_rows(table, ids).numpy(), value[ids.numpy()])

    optimizer = LazyAdam(0.1)
    snapshots = []
    for batch in ([[0, 4]], [[1, 1]]):  # step 1 uses rows 0 and 4 (one per shard), step 2 row 1
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(gather_rows(table, tf.constant(batch))))
        grads = tape.gradient(loss, table.variables)
        assert all(isinstance(g, tf.IndexedSlices) for g in grads if g is not None)
        optimizer.apply_gradients((g, v) for g, v in zip(grads, table.variables) if g is not None)
        snapshots.append(np.concatenate([v.numpy() for v in table.variables]))
    first, second = snapshots
    assert not np.array_equal(first[[0, 4]], value[[0, 4]]) and not np.array_equal(second[1], first[1])
    # Rows 0 and 4 carry Adam momentum from step 1, yet step 2 (not using them) leaves them alone,
    # and rows 2 and 3, never used, are as initialised: only the batch's rows move, on every shard.
    np.testing.assert_array_equal(second[[0, 4]], first[[0, 4]])
    np.testing.assert_array_equal(second[[2, 3]], value[[2, 3]])


def test_mini_batch_aware_l2_on_sharded_tables_equals_unsharded():
    import tensorflow as tf

    from feature_columns import SparseEmbedding

    ids = tf.constant([[1, 4, 4], [0, 1, 4]])
    results = []
    for shard in (False, True):
        layer = SparseEmbedding(6, 3, embeddings_initializer=tf.keras.initializers.Constant(0.5), l2_reg=0.1)
        layer.build(ids.shape)
        if shard:
            layer.embeddings = _sharded(layer.embeddings.numpy(), 3, "embeddings")
            layer.counts = _sharded(layer.counts.numpy(), 3, "counts")
        for _ in range(2):
            layer(ids, training=True)
        counts = layer.counts
        counts = np.concatenate([v.numpy() for v in counts.variables]) if shard else counts.numpy()
        results.append((float(layer.losses[-1]), counts))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[1][1], [2, 4, 0, 0, 6, 0])


def test_cluster_specs_roles_and_strategy_kinds(tmp_path, monkeypatch):
    import tensorflow as tf

    from tfrec.distribute import _cluster_from_flag, build_strategy, is_chief, main, parse_tf_config, run_server

    cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"], "ps": ["p:1", "p:2"]}
    assert _cluster_from_flag("chief=c:1;worker=w:1,w:2;ps=p:1,p:2") == cluster
    assert _cluster_from_flag(json.dumps(cluster)) == cluster
    config_file = tmp_path / "tf_config.json"
    config_file.write_text(json.dumps({"cluster": cluster, "task": {"type": "ps", "index": 1}}))
    assert _cluster_from_flag(str(config_file)) == cluster
    assert parse_tf_config(str(config_file))["task"] == {"type": "ps", "index": 1}
    assert is_chief(tf_config={"cluster": cluster, "task": {"type": "chief", "index": 0}})
    assert not is_chief(tf_config={"cluster": cluster, "task": {"type": "worker", "index": 0}})
    assert is_chief(tf_config={"cluster": {"worker": ["w:1", "w:2"]}, "task": {"type": "worker", "index": 0}})
    assert not is_chief(tf_config={"cluster": {"worker": ["w:1", "w:2"]}, "task": {"type": "worker", "index": 1}})
    # One run config for every task gives the cluster alone; each task is the one TF_CONFIG names
    # (`python -m tfrec.distribute --role worker --index 1` sets it), if of the same cluster.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert parse_tf_config({"cluster": cluster})["task"] == {"type": "worker", "index": 1}
    assert not is_chief(tf_config=json.dumps({"cluster": cluster}))
    assert "task" not in parse_tf_config({"cluster": {"worker": ["w:1"]}})
    monkeypatch.delenv("TF_CONFIG")
    assert build_strategy(None) is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="unknown strategy kind"):
        build_strategy("horovod")
    with pytest.raises(ValueError, match="'worker' and 'ps'"):
        build_strategy("parameter_server", tf_config={"cluster": {"chief": ["c:1"], "worker": ["w:1"]},
                                                      "task": {"type": "chief"}})
    # A worker given the program (as under multi_worker) would wait, silent, for the chief it is meant to be.
    with pytest.raises(ValueError, match=re.escape(
            "parameter_server: the program runs on the chief (the coordinator), not on worker 1: start that task "
            "as a bare server, `python -m tfrec.distribute --role worker --index 1 --cluster ...` without a program")):
        build_strategy("parameter_server", tf_config={"cluster": cluster, "task": {"type": "worker", "index": 1}})
    # A task the cluster lacks, and a port no host has, are named before TensorFlow waits for them.
    for task in ({"type": "worker", "index": 2}, {"type": "evaluator", "index": 0}, {"type": "ps", "index": "x"}):
        with pytest.raises(ValueError, match=re.escape(
                f"TF_CONFIG's task {task!r} is not a task of its cluster: give {{\"type\": job, \"index\": i}} of "
                "one of chief 0, worker 0, worker 1, ps 0, ps 1")):
            parse_tf_config({"cluster": cluster, "task": task})
    assert parse_tf_config({"cluster": cluster, "task": {"type": "ps", "index": "1"}})["task"]["index"] == "1"
    # With one inter-op thread a parameter-server cluster deadlocks: every task refuses to start.
    # (Under pytest-xdist this process already runs one inter-op thread; the variable covers -n 0.)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "1")
    ps_cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]}
    one_thread = r"parameter_server: this task runs TensorFlow with one inter-op thread \(.+\), with which a " \
                 r"ParameterServerStrategy cluster deadlocks"
    with pytest.raises(ValueError, match=one_thread):
        build_strategy("parameter_server", tf_config={"cluster": ps_cluster, "task": {"type": "chief", "index": 0}})
    for role in ("worker", "ps"):
        with pytest.raises(ValueError, match=one_thread):
            run_server({"cluster": ps_cluster, "task": {"type": role, "index": 0}})
    monkeypatch.delenv("TF_NUM_INTEROP_THREADS")
    with pytest.raises(SystemExit):
        main(["--role", "ps", "--index", "2", "--cluster", "ps=p:1,p:2"])  # no task ps:2
    # Misspelt specs are refused, naming the mistake, rather than read as another cluster.
    for spec, message in [("worker=w:1;w:2", "'w:2' is not job=host:port"),
                          ("chief=c:1, worker=w:1", "'worker=w:1' is not host:port"),
                          ("wroker=w:1", "'wroker' is not one of chief, worker, ps, evaluator"),
                          ("worker=w", "'w' is not host:port"),
                          ("worker=w:70000", "'w:70000': a port is a number from 1 to 65535"),
                          ("worker=w:0", "'w:0': a port is a number from 1 to 65535"),
                          (str(tmp_path / "nowhere.json"), "no such file"),
                          ("{\"worker\": [\"w:1\"]", "not JSON")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            _cluster_from_flag(spec)
    with pytest.raises(ValueError, match="is neither JSON nor a file"):
        parse_tf_config(str(tmp_path / "nowhere.json"))
    with pytest.raises(ValueError, match="needs a list of host:port"):
        parse_tf_config({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}})


@pytest.mark.parametrize("kind", ["multi_worker", "parameter_server"])
def test_a_task_whose_peer_never_starts_gives_up_at_join_timeout_naming_it(kind):
    """TensorFlow waits for a task that never starts (a mistyped host) without end and holds the
    GIL meanwhile (multi_worker); with join_timeout the waiting task names every task that does
    not answer and ends, within the time asked plus start-up."""
    silent = [f"127.0.0.1:{port}" for port in free_ports(3)]
    if kind == "multi_worker":
        tf_config = {"cluster": {"worker": silent[:2]}, "task": {"type": "worker", "index": 0}}
        expected = [f"worker 1 at {silent[1]}"]
    else:
        tf_config = {"cluster": {"chief": silent[:1], "worker": silent[1:2], "ps": silent[2:]},
                     "task": {"type": "chief", "index": 0}}
        expected = [f"worker 0 at {silent[1]}", f"ps 0 at {silent[2]}"]
    program = ("import sys, json; from tfrec.distribute import build_strategy; "
               f"build_strategy({kind!r}, tf_config=json.loads(sys.argv[1]), join_timeout=3); print('built')")
    started = time.monotonic()
    waiting = subprocess.run([sys.executable, "-c", program, json.dumps(tf_config)], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert waiting.returncode == -signal.SIGKILL, waiting.stderr[-3000:]
    assert "built" not in waiting.stdout
    assert f"tfrec.distribute: {kind}: gave up after 3 s (strategy join_timeout) waiting for the cluster; nothing " \
           f"answers at {', '.join(expected)}" in waiting.stderr, waiting.stderr[-3000:]
    print(f"\n{kind}: a lone task ended {time.monotonic() - started:.1f} s after its start (join_timeout 3 s)")
    with pytest.raises(ValueError, match="join_timeout must be a number of seconds > 0"):
        from tfrec.distribute import build_strategy
        build_strategy(kind, tf_config=tf_config, join_timeout=0)


def test_checkpoint_paths_are_absolute_so_every_server_writes_where_the_chief_reads(tmp_path, monkeypatch):
    """A parameter server saves its table shards itself: a relative backup path would be resolved
    against that server's working directory, and the chief's backup would fail."""
    from tfrec.distribute import checkpoint_callbacks

    monkeypatch.chdir(tmp_path)
    backup, best = checkpoint_callbacks("runs/backup", best_model_path="runs/best/weights")
    assert backup.backup_dir == str(tmp_path / "runs" / "backup")
    assert best.filepath == str(tmp_path / "runs" / "best" / "weights")


class _Died(Exception):
    """What the test raises to end a fit as a killed process would (no `on_train_end`)."""


@pytest.mark.parametrize("save_freq, tf_config", [
    (3, None), ("epoch", None),
    # The task that writes the backup (its model's strategy says which) writes the state too, not
    # the one TF_CONFIG names: a cluster given as build_strategy(tf_config=...) sets no TF_CONFIG.
    (3, {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}})])
def test_a_resumed_run_keeps_early_stoppings_and_the_best_checkpoints_state(tmp_path, monkeypatch, save_freq,
                                                                            tf_config):
    """A run that dies and resumes stops at the epoch, keeps the weights and leaves the best
    checkpoint that the same run without the interruption does: Keras' EarlyStopping and
    ModelCheckpoint would start afresh (here: train on to epoch 7 and keep it instead of epoch 2,
    and overwrite the best checkpoint with epoch 4's weights; epochs numbered from 1)."""
    import tensorflow as tf

    from tfrec.distribute import checkpoint_callbacks

    if tf_config:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))

    scores = [0.50, 0.70, 0.60, 0.65, 0.62, 0.80, 0.90]  # best epoch 1 (from 0); patience 3 stops after epoch 4
    x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")

    class Score(tf.keras.callbacks.Callback):  # a validation figure the test chooses, logged before the others read it
        def on_epoch_end(self, epoch, logs=None):
            logs["val_score"] = scores[epoch]

    class DieAfterEpoch(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 3:
                raise _Died()

    def run(name, *extra):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.layers.Dense(4, activation="relu"), tf.keras.layers.Dense(1)])
        model.compile("adam", "mse")
        model.build((None, 3))
        stopping = tf.keras.callbacks.EarlyStopping("val_score", mode="max", patience=3, restore_best_weights=True)
        # 4 steps an epoch. A backup every 3 steps: the last one before epoch 4 ends is at its step 3
        # of 4. Every epoch: the backup at its end (the process dies after it), with its state.
        callbacks = [Score(), stopping, *checkpoint_callbacks(
            tmp_path / name / "backup", save_freq=save_freq, best_model_path=str(tmp_path / name / "best" / "weights"),
            monitor="val_score", keep_state_of=[stopping]), *extra]
        history = model.fit(x, y, batch_size=16, epochs=len(scores), shuffle=False, verbose=0, callbacks=callbacks)
        return model, stopping, history

    whole, whole_stopping, _ = run("whole")
    with pytest.raises(_Died):
        run("resumed", DieAfterEpoch())
    assert os.listdir(tmp_path / "resumed" / "backup" / "callbacks")
    resumed, resumed_stopping, history = run("resumed")
    assert history.epoch == ([3, 4] if save_freq == 3 else [4])  # resumed in epoch 4 at its last step, or after it
    for stopping in (whole_stopping, resumed_stopping):
        assert (stopping.best_epoch, stopping.best, stopping.stopped_epoch) == (1, 0.70, 4)
    for kept, reference in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_array_equal(kept, reference)
    for name, model in (("whole", whole), ("resumed", resumed)):
        best = tf.keras.models.clone_model(model)
        best.load_weights(str(tmp_path / name / "best" / "weights")).expect_partial()  # weights, not the optimizer
        for kept, reference in zip(best.get_weights(), whole.get_weights()):
            np.testing.assert_array_equal(kept, reference)
    assert os.listdir(tmp_path / "resumed" / "backup") == []  # the finished run removed its backup and state
    with pytest.raises(ValueError, match="keep_state_of takes EarlyStopping and ModelCheckpoint callbacks, got Score"):
        checkpoint_callbacks(tmp_path / "other", keep_state_of=[Score()])


# ---------------------------------------------------------------------------------------------
# Clusters of local processes.

def test_multi_worker_mirrored_matches_one_process(tmp_path):
    """2 MultiWorkerMirroredStrategy workers train DIN to the single-process loss trajectory,
    each tracing its training step once, as the single process does."""
    deadline = time.monotonic() + 140
    ports = free_ports(2)
    cluster = json.dumps({"worker": [f"127.0.0.1:{p}" for p in ports]})
    outs = [str(tmp_path / f"worker{i}.json") for i in range(2)]
    with _Processes(tmp_path) as processes:
        workers = [processes.start(f"worker{i}", [sys.executable, "-m", "tfrec.distribute", "--role", "worker",
                                                  "--index", str(i), "--cluster", cluster, "--",
                                                  sys.executable, THIS, "multi_worker", outs[i],
                                                  str(tmp_path / "exports" / "din")])
                   for i in range(2)]
        reference, _ = train_synchronous("default")  # meanwhile, in this process
        for worker in workers:
            assert processes.wait(worker, deadline) == 0, processes.logs()
    steps = STEPS_PER_EPOCH * EPOCHS
    assert len(reference["batch"]) == steps and reference["replicas"] == 1
    assert reference["traces"] == 1
    exports = [json.load(open(out))["export"] for out in outs]
    assert exports[1] is None and os.path.exists(os.path.join(exports[0], "saved_model.pb"))  # worker 0 is chief
    for out in outs:
        worker = json.load(open(out))
        assert worker["replicas"] == 2 and len(worker["batch"]) == steps
        assert worker["traces"] == 1  # fit builds the metrics before its first trace
        np.testing.assert_allclose(worker["batch"], reference["batch"], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(worker["epoch"], reference["epoch"], rtol=2e-4, atol=2e-5)
    assert reference["epoch"][-1] < reference["epoch"][0]


def test_parameter_server_shards_item_table_resumes_and_exports(tmp_path):
    """A chief, 2 workers and 2 ps (local processes): the item table lives on both servers, the
    sparse path trains it; the chief, SIGKILLed mid-epoch and started again, resumes from its
    step backup; a worker SIGKILLed while the resumed run trains, and started again, loses no
    step; a parameter server SIGKILLed fails the chief's fit, and both started again resume from
    the backup; validation and the best model work there; and the export serves what the chief
    computes."""
    import tensorflow as tf

    from tfrec.data import df_to_inputs

    deadline = time.monotonic() + 230
    ports = free_ports(5)
    cluster = {"chief": [f"127.0.0.1:{ports[0]}"], "worker": [f"127.0.0.1:{p}" for p in ports[1:3]],
               "ps": [f"127.0.0.1:{p}" for p in ports[3:5]]}
    spec = ";".join(f"{job}={','.join(addresses)}" for job, addresses in cluster.items())
    out, export_base = str(tmp_path / "chief.json"), str(tmp_path / "exports" / "din")
    step_log = str(tmp_path / "steps.log")
    chief = [sys.executable, "-m", "tfrec.distribute", "--role", "chief", "--cluster", spec, "--",
             sys.executable, THIS, "ps_chief", out, export_base, step_log]
    role = {job: [[sys.executable, "-m", "tfrec.distribute", "--role", job, "--index", str(index), "--cluster", spec]
                  for index in range(2)] for job in ("ps", "worker")}
    with _Processes(tmp_path) as processes:
        started = {f"{job}{index}": processes.start(f"{job}{index}", command)
                   for job, commands in role.items() for index, command in enumerate(commands)}
        last_done = _kill_mid_epoch(processes, [processes.start("chief", chief + ["0.15"])], [step_log], deadline)
        resumed = processes.start("chief_again", chief + ["0.15"])
        _wait_for_resumed_steps(processes, resumed, step_log, 3, deadline)
        os.killpg(started["worker1"].pid, signal.SIGKILL)
        started["worker1"].wait(timeout=30)
        processes.start("worker1_again", role["worker"][1])
        # A parameter server lost past the next backup takes its variables with it: the chief's
        # fit fails, naming it; started again (server and chief), the job resumes from the backup.
        _wait_for_resumed_steps(processes, resumed, step_log, 2 * SAVE_FREQ + 2, deadline)
        ps_lost_after = _steps(step_log)[-1]
        os.killpg(started["ps1"].pid, signal.SIGKILL)
        started["ps1"].wait(timeout=30)
        assert processes.wait(resumed, deadline) != 0, processes.logs()
        resumed_log = processes.log("chief_again")
        processes.start("ps1_again", role["ps"][1])
        third = processes.start("chief_third", chief + ["0"])
        assert processes.wait(third, deadline) == 0, processes.logs()
    _assert_resumed(step_log, last_done, run=1, runs=3)
    _assert_resumed(step_log, ps_lost_after, run=2, runs=3)
    # The coordinator saw the worker fail, and re-ran its unfinished steps on the other one.
    assert "Worker /job:worker/replica:0/task:1 failed" in resumed_log, resumed_log[-3000:]
    # The chief's error (up to TensorFlow's log lines written at exit) names the lost server.
    traceback = resumed_log[resumed_log.rindex("Traceback (most recent call last):"):]
    error = re.split(r"\n[EWI]\d{4} ", traceback[traceback.index("Error: "):])[0]
    assert "UnavailableError" in traceback and "/job:ps/replica:0/task:1" in error, traceback[:3000]
    report = json.load(open(out))
    devices = report["shard_devices"]
    assert len(devices) == 2 and sum(report["shard_rows"]) == report["table_rows"] == 101
    assert {d.split("/device:")[0] for d in devices} == {"/job:ps/replica:0/task:0", "/job:ps/replica:0/task:1"}
    assert all(report["moved"]) and np.isfinite(report["loss"]).all()
    # Workers that update one table at the same time keep each other's rows.
    assert report["rows_updated"] == 32
    # Nothing lost. The coordinator re-runs a step the killed worker had not finished: a step it
    # had half applied to the parameter servers (the kill landing inside it) counts twice.
    assert 2 * PS_STEPS_PER_EPOCH <= report["iterations"] <= 2 * PS_STEPS_PER_EPOCH + 1
    # Validation on the workers after the epoch the last run trained (it resumed in the second),
    # and the best epoch's weights kept.
    assert len(report["val_auc"]) == 1 and np.isfinite(report["val_auc"]).all() and report["best"]
    # The export: ordinary variables, and the chief's (sharded) predictions.
    assert report["copy_table_kind"] != "ShardedVariable"
    np.testing.assert_allclose(report["copy_predictions"], report["sharded_predictions"], rtol=1e-5, atol=1e-6)
    _, test, columns = tiny_din_data()
    rows = df_to_inputs(test.head(20), columns)
    signature = tf.saved_model.load(report["export"]).signatures["serving_default"]
    loaded = signature(**{name: tf.constant(value.astype(np.int64) if value.dtype.kind == "i" else value)
                          for name, value in rows.items()})["prediction"].numpy()
    np.testing.assert_allclose(loaded.reshape(-1, 1), report["sharded_predictions"], rtol=1e-5, atol=1e-6)
    # ... and over gRPC from the model server, as any single-process export.
    from serving import Client, LocalServer

    with LocalServer(model_base_path=os.path.dirname(report["export"]), model_name="din", rest=False,
                     startup_timeout=max(10.0, deadline - time.monotonic())) as server, \
            Client(server.grpc_target) as client:
        served = client.predict("din", rows)["prediction"]
    np.testing.assert_allclose(np.reshape(served, (-1, 1)), report["sharded_predictions"], rtol=1e-5, atol=1e-6)


def _steps(path, what="step"):
    if not os.path.exists(path):
        return []
    with open(path) as log:
        return [int(line.split()[1]) for line in log if line.startswith(what + " ")]


def _kill_mid_epoch(processes, first, logs, deadline, epochs_done=0, steps_per_epoch=0):
    """SIGKILLs the `first` processes once the step log `logs[0]` is mid-way through the epoch
    after `epochs_done` epochs of `steps_per_epoch` steps, past two of its backups. Returns the
    last step any of them logged."""
    kill_after = epochs_done * steps_per_epoch + 2 * SAVE_FREQ + 2
    while time.monotonic() < deadline and all(p.poll() is None for p in first):
        if (_steps(logs[0]) or [0])[-1] >= kill_after:
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in first), processes.logs()
    # The last worker is killed; a synchronous job's other workers cannot go on without it,
    # and its scheduler restarts them all: here, SIGKILL too.
    for process in reversed(first):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    return max(max(_steps(log) or [0]) for log in logs)


def _wait_for_resumed_steps(processes, process, log, count, deadline):
    """Waits until the resumed run (the second "begin" in the step log `log`) has logged `count` steps."""
    while time.monotonic() < deadline and process.poll() is None:
        begins, steps = _steps(log, "begin"), _steps(log)
        if len(begins) == 2 and steps and steps[-1] >= begins[1] + count:
            return
        time.sleep(0.05)
    pytest.fail(f"the resumed run did not reach {count} steps\n{processes.logs()}")


def _assert_resumed(log, last_done, run=1, runs=2):
    """Of `runs` runs in the step log, run `run` began from a backup less than one interval
    behind the last step the run before it logged."""
    begins = _steps(log, "begin")
    assert len(begins) == runs and begins[0] == 0
    restored = begins[run]
    assert 0 < restored <= last_done + 1 and last_done - restored < SAVE_FREQ, (restored, last_done)


def _kill_and_resume(tmp_path, workers):
    """Starts the resumable run (1 process, or `workers` multi-worker processes), SIGKILLs it
    mid-way through the second epoch, starts it again with the same commands, checks the resume.
    Bounded at 200 s: the 2-worker run took 96-140 s beside another test's training on 2 cores."""
    deadline = time.monotonic() + 200
    backup, best, step_log = (str(tmp_path / "backup"), str(tmp_path / "best" / "weights"),
                              str(tmp_path / "steps.log"))
    out = str(tmp_path / "resumed.json")
    program = [sys.executable, THIS, "resumable", out, backup, best, step_log]
    if workers == 1:
        commands, outs, logs = [program], [out], [step_log]
    else:
        spec = "worker=" + ",".join(f"127.0.0.1:{p}" for p in free_ports(workers))
        commands = [[sys.executable, "-m", "tfrec.distribute", "--role", "worker", "--index", str(i), "--cluster",
                     spec, "--"] + program for i in range(workers)]
        outs, logs = [f"{out}.{i}" for i in range(workers)], [f"{step_log}.{i}" for i in range(workers)]
    kind = ["mirrored"] if workers == 1 else ["multi_worker"]
    with _Processes(tmp_path) as processes:
        first = [processes.start(f"first{i}", c + ["0.15"] + kind) for i, c in enumerate(commands)]
        # In the second epoch: the resume restores the epoch as well as the step.
        last_done = _kill_mid_epoch(processes, first, logs, deadline, 1, RESUMABLE_STEPS_PER_EPOCH)
        second = [processes.start(f"second{i}", c + ["0"] + kind) for i, c in enumerate(commands)]
        for process in second:
            assert processes.wait(process, deadline) == 0, processes.logs()
    for log, report_path in zip(logs, outs):
        _assert_resumed(log, last_done)
        report = json.load(open(report_path))
        assert report["steps_per_epoch"] == RESUMABLE_STEPS_PER_EPOCH
        assert report["iterations"] == 3 * report["steps_per_epoch"]  # nothing lost, nothing repeated
        assert report["epochs_run"] == 2  # the second and third: Keras' history starts at the restored epoch
        assert report["finite"]
    assert os.path.exists(best + ".index")


def test_killed_worker_resumes_from_backup(tmp_path):
    """SIGKILL mid-run, restart: fit resumes from the last backup (<= one interval lost), ends
    at the planned step count with finite weights, and keeps the best model by val AUC."""
    _kill_and_resume(tmp_path, workers=1)


def test_killed_multi_worker_run_resumes_from_backup(tmp_path):
    """The same with 2 MultiWorkerMirroredStrategy workers sharing one backup directory."""
    _kill_and_resume(tmp_path, workers=2)


@pytest.mark.parametrize("kind", ["multi_worker", "parameter_server"])
def test_a_retrieval_config_trains_on_two_workers_and_the_chief_writes_the_run(tmp_path, kind):
    """`strategy: {kind: ...}` in a retrieval config. multi_worker: every worker runs the same
    `tfrec train --config` under `python -m tfrec.distribute` and the workers split each global
    batch. parameter_server: 2 servers hold the tables, split along their rows, while the chief
    runs the command and 2 workers train; the negatives are sampled by frequency, so they are
    gathered from both shards of the item table, and a warm start on the same cluster carries
    every weight into the split tables and back. Either way, the epoch kept is the best by
    recall@50 on validation samples, and the chief's run folder holds a model that evaluates
    better than popularity."""
    import yaml

    from tests.tfrec.test_retrieval_config import saved_models_validation_recall
    from tfrec.cli import main

    config = yaml.safe_load(open(os.path.join(ROOT, "examples", "retrieval_mind.yaml")))
    config["data"]["train"] = os.path.join(ROOT, "examples", "data", "events.csv")
    # Asynchronous steps under parameter_server learn more slowly: 8 epochs, the example config's,
    # reach recall@50 0.546-0.560 (0.590 in one process). Before every table got LazyAdam's row
    # update there, the workers' overlapping steps undid each other's rows: 0.508-0.534 over 8
    # epochs, and loaded CI machines left 4 epochs, 6, and once 8 below popularity's 0.416.
    epochs = 8 if kind == "parameter_server" else 4
    config["train"].update(epochs=epochs, batch_size=128, validation={"fraction": 0.1})
    config.update(output=str(tmp_path / "run"), strategy={"kind": kind, "join_timeout": 120})
    if kind == "parameter_server":
        config["retrieval"].update(sampler="frequency", num_sampled=64)
        config["strategy"]["min_shard_bytes"] = 4096  # the item table, 301 x 16 float32, in 2 shards
    config.pop("export")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    deadline = time.monotonic() + 200
    train = [sys.executable, "-m", "tfrec.cli", "train", "--config", str(tmp_path / "run.yaml")]
    with _Processes(tmp_path) as processes:
        if kind == "multi_worker":
            cluster = json.dumps({"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]})
            trainers = {f"worker{i}": processes.start(f"worker{i}", [
                sys.executable, "-m", "tfrec.distribute", "--role", "worker", "--index", str(i), "--cluster", cluster,
                "--", *train]) for i in range(2)}
        else:
            ports = iter(free_ports(5))
            cluster = json.dumps({"chief": [f"127.0.0.1:{next(ports)}"],
                                  **{job: [f"127.0.0.1:{next(ports)}" for _ in range(2)] for job in ("worker", "ps")}})
            for job in ("ps", "worker"):
                for i in range(2):
                    processes.start(f"{job}{i}", [sys.executable, "-m", "tfrec.distribute", "--role", job, "--index",
                                                  str(i), "--cluster", cluster])
            trainers = {"chief": processes.start("chief", [sys.executable, "-m", "tfrec.distribute", "--role", "chief",
                                                           "--cluster", cluster, "--", *train])}
        for name, trainer in trainers.items():
            assert processes.wait(trainer, deadline) == 0, processes.logs()
            assert f"training MIND for {epochs} epoch(s) ({kind})" in processes.log(name)
        trainer_logs = {name: processes.log(name) for name in trainers}
        if kind == "parameter_server":
            assert "parameter_server: waiting until every task of the cluster is up (chief 0 at 127.0.0.1:" \
                in processes.log("chief")
            placement = re.search(r"split across the parameter servers: .*", processes.log("chief")).group(0)
            item_table = re.search(r"emb_item_id/embeddings \((\d+) rows on ps (\d), (\d+) rows on ps (\d)\)",
                                   placement)
            assert item_table, placement
            rows, servers = item_table.group(1, 3), item_table.group(2, 4)
            assert sum(map(int, rows)) == 301 and sorted(servers) == ["0", "1"], placement
            # Tomorrow's run starts from today's on the same cluster: the model, loaded in the
            # chief, is copied into tables split across the servers. A step too small to move a
            # weight shows that every weight made the trip there and back.
            config.pop("columns")
            config["train"].update(warm_start=str(tmp_path / "run"), epochs=1, learning_rate=1e-30)
            config["output"] = str(tmp_path / "warm")
            (tmp_path / "warm.yaml").write_text(yaml.safe_dump(config))
            warm = processes.start("chief_warm", [sys.executable, "-m", "tfrec.distribute", "--role", "chief",
                                                  "--cluster", cluster, "--", *train[:-1], str(tmp_path / "warm.yaml")])
            assert processes.wait(warm, deadline) == 0, processes.logs()
            assert "split across the parameter servers: " in processes.log("chief_warm")
    assert sorted(os.listdir(tmp_path / "run")) == ["columns.json", "model.keras", "run.json"]  # the chief's alone
    # The epoch kept is the best by recall@50 on the validation samples, ranked after each epoch
    # (under multi_worker, each worker ranks half of them and they add up their hits): the saved
    # model ranked here has the recall logged for its epoch, and every worker logged the same.
    record = json.load(open(tmp_path / "run" / "run.json"))
    val_recall = record["history"]["val_recall"]
    assert len(val_recall) == epochs and record["validation"]["best_epoch"] == int(np.argmax(val_recall)) + 1
    assert saved_models_validation_recall(str(tmp_path / "run.yaml")) == pytest.approx(max(val_recall), abs=1e-9)
    for name, log in trainer_logs.items():
        assert [float(v) for v in re.findall(r"val_recall: ([0-9.]+)", log)] == pytest.approx(val_recall, abs=1e-4), name
    assert main(["evaluate", "--config", str(tmp_path / "run.yaml")]) == 0
    metrics = json.load(open(tmp_path / "run" / "metrics.json"))
    print(f"\nMIND, {kind}, {epochs} epochs: recall@50 {metrics['model']['recall']:.3f}, popularity "
          f"{metrics['popularity']['recall']:.3f}; val_recall by epoch {val_recall}")
    assert metrics["model"]["recall"] > metrics["popularity"]["recall"]
    if kind == "parameter_server":
        assert main(["evaluate", "--config", str(tmp_path / "warm.yaml")]) == 0
        warm_metrics = json.load(open(tmp_path / "warm" / "metrics.json"))
        assert warm_metrics["model"] == pytest.approx(metrics["model"], abs=1e-6)


def test_recall_validation_ranks_a_share_on_each_of_two_replicas_and_embeds_the_catalogue_once(tmp_path):
    """Under a MirroredStrategy of 2 devices (logical CPUs, in a process of its own), each replica
    ranks half of the held-out samples and their hits add up to the recall of ranking them in
    one piece; the catalogue's item vectors are computed once per epoch for both replicas; and fit
    traces its step once, as with one replica."""
    with _Processes(tmp_path) as processes:
        child = processes.start("replicas", [sys.executable, THIS, "recall_replicas", str(tmp_path / "out.json")])
        assert processes.wait(child, time.monotonic() + 150) == 0, processes.logs()
    report = json.load(open(tmp_path / "out.json"))
    assert report["replicas"] == 2
    assert report["traces"] == 1  # the labels' PerReplicaSpec gives the metrics before fit's first trace
    assert report["val_recall"][-1] == pytest.approx(report["recall_in_one_piece"], abs=1e-12)
    assert report["recall_in_one_piece"] > 0
    assert report["catalogue_embeddings"] == [report["items"]] * 2  # 2 epochs, one embedding each


MODES = {"multi_worker": run_multi_worker, "ps_chief": run_parameter_server_chief, "resumable": run_resumable,
         "recall_replicas": run_recall_on_two_replicas}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
