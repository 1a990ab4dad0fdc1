"""Training any tfrec model on `tf.distribute`: one `strategy=` argument, one command per role.

    strategy = build_strategy("parameter_server")            # reads TF_CONFIG
    model = build_and_compile(DIN, columns, ["item_id", "cate_id"], strategy=strategy)
    data = distributed_dataset(strategy, dataframe_dataset_fn(train, columns, "click", 1024))
    model.fit(data, epochs=2, steps_per_epoch=500,
              callbacks=checkpoint_callbacks("ckpt/backup", save_freq=100))
    exporters.export_from_chief(model, "exports/din")         # ordinary, unsharded variables

The strategies (`build_strategy(kind)`):

  * `None` / "default": no distribution (TensorFlow's default strategy).
  * "mirrored": `tf.distribute.MirroredStrategy`, one replica per local device (GPUs, or the
    CPU), variables copied on each, gradients all-reduced.
  * "multi_worker": `tf.distribute.MultiWorkerMirroredStrategy`, the same synchronous training
    across hosts: every worker runs the same program and holds a full copy of the model.
  * "parameter_server": `tf.distribute.experimental.ParameterServerStrategy`. The program runs
    on the chief (the coordinator); workers and parameter servers only run a `tf.distribute.Server`
    (`python -m tfrec.distribute --role worker|ps ...`). Variables live on the parameter
    servers; every variable of at least `min_shard_bytes` (the embedding tables, in practice)
    is split along its rows into up to one shard per parameter server (a `ShardedVariable`).
    A worker's step gathers from each shard only the rows its batch looks up, and the sparse
    path of `RecModel` (mini-batch aware L2, `LazyAdam`) updates only those rows on the
    servers. Keras' `fit` drives the workers asynchronously through a `ClusterCoordinator`.
    XLA cannot read a variable on another task, so the step runs without it there.

The cluster is TF_CONFIG's (`{"cluster": {...}, "task": {"type": ..., "index": ...}}`), given
as the environment variable, a dict, a JSON string or a JSON file. `python -m tfrec.distribute`
starts one role of it (see `main`). docs/distributed.md has the commands.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tfrec.files import replaced_atomically

__all__ = [
    "STRATEGY_KINDS", "DEFAULT_MIN_SHARD_BYTES", "build_strategy", "parse_tf_config",
    "cluster_resolver", "embedding_partitioner", "build_and_compile", "distributed_dataset",
    "dataframe_dataset_fn", "BackupAndRestore", "checkpoint_callbacks", "unsharded_copy",
    "placed_copy", "shard_placement", "is_chief", "run_server", "main",
]

STRATEGY_KINDS = ("default", "mirrored", "multi_worker", "parameter_server")
_JOIN_WATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "join_watch.py")
DEFAULT_MIN_SHARD_BYTES = 256 << 10  # 256 KiB: 2,048 x 64 float32 (512 KiB) makes 2 shards; a DNN kernel 1
_PART = re.compile(r"/part_(\d+)(:\d+)$")


def parse_tf_config(tf_config=None):
    """TF_CONFIG as a dict: from `tf_config` (a dict, a JSON string or a JSON file path) or the
    TF_CONFIG environment variable when None. Returns {} when there is none. A `tf_config` of the
    cluster alone (one file for every task) takes this task from the TF_CONFIG variable when that
    names the same cluster (`python -m tfrec.distribute --role R --index I` sets it)."""
    if tf_config is not None:
        config = _parsed_tf_config(tf_config)
        if config and not config.get("task"):
            environment = _parsed_tf_config(os.environ.get("TF_CONFIG", ""))
            if environment.get("task") and environment["cluster"] == config["cluster"]:
                config["task"] = environment["task"]
        return config
    return _parsed_tf_config(os.environ.get("TF_CONFIG", ""))


def _parsed_tf_config(tf_config):
    """`tf_config` (a dict, JSON or a JSON file, "" for none) as a checked dict, {} for none."""
    if isinstance(tf_config, dict):
        config = dict(tf_config)
    else:
        text = str(tf_config).strip()
        config = _json_or_file(text, "TF_CONFIG") if text else {}
    if not config:
        return {}
    if not isinstance(config, dict) or "cluster" not in config:
        raise ValueError('TF_CONFIG needs {"cluster": {job: [host:port, ...]}, "task": {"type": ..., '
                         f'"index": ...}}}}, got {str(config)[:200]!r}')
    check_cluster(config["cluster"])
    if config.get("task"):
        _check_task(config["cluster"], config["task"])
    return config


def _json_or_file(text, what):
    """`text` parsed as JSON, or the JSON of the file it names; a ValueError naming `what` else."""
    if not text.startswith("{"):
        if not os.path.isfile(text):
            raise ValueError(f"{what}: {text!r} is neither JSON nor a file (no such file)")
        with open(text) as source:
            text = source.read().strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not JSON ({error}): {text[:200]!r}") from None


JOBS = ("chief", "worker", "ps", "evaluator")


def _check_task(cluster, task):
    """A ValueError naming the cluster's tasks when TF_CONFIG's `task` is not one of them (a job
    it lacks, an index past its addresses): TensorFlow's own errors name no task, or none at all
    for an index that is not a number."""
    index = task.get("index", 0) if isinstance(task, dict) else None
    index = int(index) if isinstance(index, str) and index.isdigit() else index  # "0" reads as 0, as in TensorFlow
    if isinstance(task, dict) and task.get("type") in cluster and isinstance(index, int) \
            and not isinstance(index, bool) and 0 <= index < len(cluster[task["type"]]):
        return
    tasks = ", ".join(f"{job} {i}" for job, addresses in cluster.items() for i in range(len(addresses)))
    raise ValueError(f"TF_CONFIG's task {task!r} is not a task of its cluster: give {{\"type\": job, \"index\": i}} "
                     f"of one of {tasks}")


def check_cluster(cluster):
    """A ValueError naming the first mistake of a cluster dict {job: ["host:port", ...]}: a job
    TensorFlow does not know, a job without addresses, or an address that is not host:port."""
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"a cluster is a dict {{job: [host:port, ...]}}, got {cluster!r}")
    for job, addresses in cluster.items():
        if job not in JOBS:
            raise ValueError(f"cluster job {job!r} is not one of {', '.join(JOBS)} (cluster {cluster})")
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(f"cluster job {job!r} needs a list of host:port addresses, got {addresses!r}")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit() or any(c in address for c in "=;, "):
                raise ValueError(f"cluster job {job!r}: {address!r} is not host:port")
            if not 0 < int(port) < 65536:
                raise ValueError(f"cluster job {job!r}: {address!r}: a port is a number from 1 to 65535")


@contextlib.contextmanager
def _joining(kind, tf_config, join_timeout=None):
    """Wraps the building of a strategy that waits for every task of its cluster.

    TensorFlow waits without a word, and without end, for a task that never starts (a mistyped
    host looks like a hang). So first one line names the tasks waited for; and with
    `join_timeout` seconds, a watcher process (`join_watch.py`) names the tasks that do not
    answer and ends this process (SIGKILL) if the strategy is not built by then.
    """
    if join_timeout is not None and (isinstance(join_timeout, bool) or not isinstance(join_timeout, (int, float))
                                     or not 0 < join_timeout < float("inf")):
        raise ValueError(f"join_timeout must be a number of seconds > 0 or None, got {join_timeout!r}")
    cluster, task = tf_config["cluster"], tf_config.get("task", {})
    tasks = [(f"{job} {index}", address) for job, addresses in cluster.items()
             for index, address in enumerate(addresses)]
    print(f"tfrec.distribute: {kind}: waiting until every task of the cluster is up "
          f"({', '.join(f'{name} at {address}' for name, address in tasks)})", file=sys.stderr, flush=True)
    if join_timeout is None:
        yield
        return
    own = f"{task.get('type')} {int(task.get('index', 0))}"
    watcher = subprocess.Popen([sys.executable, _JOIN_WATCH, str(os.getpid()), str(float(join_timeout)), kind,
                                json.dumps([t for t in tasks if t[0] != own])], stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watcher.stdin.close()  # end of file: the wait is over
        watcher.wait()


def cluster_resolver(tf_config=None):
    """A `SimpleClusterResolver` for a TF_CONFIG (see `parse_tf_config`), RPC layer "grpc"."""
    config = parse_tf_config(tf_config)
    if not config:
        raise ValueError("no cluster: pass tf_config= or set the TF_CONFIG environment variable")
    task = config.get("task", {})
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(config["cluster"]), task_type=task.get("type"),
        task_id=int(task.get("index", 0)), rpc_layer="grpc")


def embedding_partitioner(num_ps, min_shard_bytes=DEFAULT_MIN_SHARD_BYTES):
    """The variable partitioner of `ParameterServerStrategy`: shards of >= `min_shard_bytes`.

    A variable of B bytes is split along its first axis (an embedding table's rows) into
    min(num_ps, max(1, B // min_shard_bytes)) contiguous shards, so a small variable (a DNN
    kernel, a bias) stays whole on one server and a large table spreads over all `num_ps`.
    """
    return tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=int(min_shard_bytes), max_shards=int(num_ps))


def build_strategy(kind=None, tf_config=None, devices=None, min_shard_bytes=DEFAULT_MIN_SHARD_BYTES,
                   communication=None, join_timeout=None):
    """The `tf.distribute.Strategy` for `kind`; build and train the model in its `scope()`.

    Args:
      kind: None or "default", "mirrored", "multi_worker" or "parameter_server" (module doc).
      tf_config: the cluster for "multi_worker" and "parameter_server": a TF_CONFIG dict, JSON
        string or JSON file; None reads the TF_CONFIG environment variable. "multi_worker"
        without any cluster trains as one worker.
      devices: "mirrored" only: the local devices, e.g. ["/gpu:0", "/gpu:1"]; None for all.
      min_shard_bytes: "parameter_server" only: the smallest shard (`embedding_partitioner`).
      communication: "multi_worker" only: "ring" (gRPC, the CPU choice), "nccl" or None (auto).
      join_timeout: "multi_worker" and "parameter_server": seconds to wait for every task of the
        cluster to be up; then the tasks that do not answer are named on stderr and this process
        is ended (SIGKILL: TensorFlow's wait cannot be interrupted). None waits without end, as
        TensorFlow does.

    Returns:
      The strategy. For "parameter_server" this is the chief's: it waits for the workers and
      parameter servers of the cluster to be up.

    Raises:
      ValueError: an unknown kind; a parameter_server cluster without workers or parameter
        servers, or a chief with one inter-op thread, with which such a cluster deadlocks.
    """
    kind = "default" if kind is None else str(kind).lower().replace("-", "_")
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if kind == "multi_worker":
        options = None
        if communication:
            options = tf.distribute.experimental.CommunicationOptions(
                implementation=getattr(tf.distribute.experimental.CommunicationImplementation,
                                       str(communication).upper()))
        config = parse_tf_config(tf_config)
        if not config:  # one worker: nothing to wait for
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        with _joining(kind, config, join_timeout):
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver(config),
                                                             communication_options=options)
    if kind == "parameter_server":
        config = parse_tf_config(tf_config)
        resolver = cluster_resolver(config)
        num_ps = len(config["cluster"].get("ps", []))
        if not num_ps or not config["cluster"].get("worker"):
            raise ValueError("parameter_server needs a cluster with 'worker' and 'ps' jobs")
        if resolver.task_type not in (None, "chief"):  # it would wait for the chief it is meant to be
            raise ValueError(
                f"parameter_server: the program runs on the chief (the coordinator), not on {resolver.task_type} "
                f"{resolver.task_id}: start that task as a bare server, `python -m tfrec.distribute --role "
                f"{resolver.task_type} --index {resolver.task_id} --cluster ...` without a program")
        with _joining(kind, config, join_timeout):
            _refuse_one_inter_op_thread()
            return tf.distribute.experimental.ParameterServerStrategy(
                resolver, variable_partitioner=embedding_partitioner(num_ps, min_shard_bytes))
    raise ValueError(f"unknown strategy kind {kind!r}: expected None or one of {STRATEGY_KINDS}")


def is_chief(tf_config=None):
    """Whether this task writes the run's outputs (exports, the best model): the chief, or
    worker 0 of a cluster without a chief, or the only process of a one-host run."""
    config = parse_tf_config(tf_config)
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and \
        "chief" not in config.get("cluster", {})


def build_and_compile(model_fn, *model_args, strategy=None, compile_kwargs=None, seed=None, **model_kwargs):
    """`model_fn(*model_args, **model_kwargs)` built and compiled in `strategy`'s scope.

    Any tfrec model function (DIN, MMOE, ESMM, ...) works unchanged: the scope decides where
    its variables live (mirrored on every replica, or sharded on the parameter servers), and
    the `fit` call is the same as without distribution.

    Args:
      model_fn: a function returning an uncompiled tf.keras Model, e.g. `tfrec.models.DIN`.
      strategy: a `tf.distribute.Strategy`, a kind for `build_strategy`, or None (default).
      compile_kwargs: `model.compile` arguments; default optimizer "adam" (LazyAdam on tables),
        loss "binary_crossentropy" and metrics ["AUC"] (logged as "auc" / "val_auc").
        Optimizers and metrics given by name are created inside the scope, as they must be.
      seed: if given, `tf.keras.utils.set_random_seed(seed)` first, so every worker of a
        synchronous run (and a single-process run) starts from the same weights.

    Returns:
      The compiled model; `model.distribute_strategy` is the strategy.
    """
    if strategy is None or isinstance(strategy, str):
        strategy = build_strategy(strategy)
    compile_kwargs = dict({"optimizer": "adam", "loss": "binary_crossentropy", "metrics": ["AUC"]},
                          **(compile_kwargs or {}))
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = model_fn(*model_args, **model_kwargs)
        model.compile(**compile_kwargs)
    return model


def dataframe_dataset_fn(df, feature_columns, label_columns, global_batch_size, shuffle=True, seed=None,
                         repeat=False, weight_column=None):
    """A `dataset_fn(input_context)` over a DataFrame, for `distributed_dataset`.

    The raw values are looked up once, here, into embedding rows (`feature_columns.look_up_rows`,
    under `indexed_key(name, column)`, as `tfrec.data.df_to_dataset` does). The returned function gives
    input pipeline i of n (one per worker) every n-th row from row i, shuffled (with `seed`),
    batched by `input_context.get_per_replica_batch_size(global_batch_size)`, optionally repeated:
    under a synchronous strategy the replicas' batches make up one global batch; under
    ParameterServerStrategy every worker's step takes a batch of `global_batch_size` rows.

    The arrays are constants of the function's graph, which `ParameterServerStrategy` ships to
    every worker: fine for the thousands to a few million rows a DataFrame holds. For larger
    data, write a `dataset_fn` that reads the worker's share of files
    (`tf.data.Dataset.list_files(...).shard(ctx.num_input_pipelines, ctx.input_pipeline_id)`).
    `weight_column`: a column of sample weights, as `df_to_dataset` takes it.
    """
    from tfrec.data.pipeline import batched_rows, dataset_elements

    elements = dataset_elements(df, feature_columns, label_columns, weight_column)

    def dataset_fn(input_context=None):
        shard = (input_context.num_input_pipelines, input_context.input_pipeline_id) \
            if input_context is not None and input_context.num_input_pipelines > 1 else None
        # One replica per worker under ParameterServerStrategy: its batch is the whole global batch.
        batch = input_context.get_per_replica_batch_size(global_batch_size) \
            if input_context is not None else global_batch_size
        return batched_rows(elements, len(df), batch, shuffle, seed, repeat,
                            drop_remainder=input_context is not None and repeat, shard=shard)

    return dataset_fn


def distributed_dataset(strategy, dataset_fn, input_options=None):
    """What `model.fit` takes to read `dataset_fn(input_context)` on every worker.

    ParameterServerStrategy: a `tf.keras.utils.experimental.DatasetCreator` (Keras' fit creates
    the dataset on each worker through its ClusterCoordinator; `fit` then needs
    `steps_per_epoch`). Other strategies: `strategy.distribute_datasets_from_function`, one
    input pipeline per worker. The default strategy: the dataset itself.
    """
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return tf.keras.utils.experimental.DatasetCreator(dataset_fn, input_options=input_options)
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn, options=input_options)


class BackupAndRestore(tf.keras.callbacks.BackupAndRestore):
    """`tf.keras.callbacks.BackupAndRestore` that backs up every `save_freq` steps under
    ParameterServerStrategy too, and resumes the state of the `EarlyStopping` and
    `ModelCheckpoint` callbacks given in `keep_state_of`.

    tf-keras skips its batch hooks under ParameterServerStrategy: `fit` only schedules a step
    there, and a worker runs it later, so a backup taken at the hook would pair the variables of
    some steps with the step count of others. Here, every `save_freq` scheduled steps, the chief
    waits for the steps in flight (`ClusterCoordinator.join`) and then writes the backup with the
    number of steps done, so a restarted chief resumes mid-epoch, as under the other strategies.
    The wait drains the workers' queue once per backup: keep `save_freq` at hundreds of steps.

    Keras' `EarlyStopping` and `ModelCheckpoint(save_best_only=True)` keep their best figure (and
    `EarlyStopping` its patience count and best weights) in memory only: a resumed run would
    start both afresh, stop late, restore the best weights of the epochs since the restart, and
    overwrite the best checkpoint with the first epoch after it, however worse. For the callbacks
    in `keep_state_of`, the chief writes that state to `backup_dir/callbacks` at the start of
    every epoch (the state through the epoch before, which is what a backup taken in that epoch
    pairs with; `EarlyStopping`'s best weights as one .npz per new best epoch, the model's size),
    and a resumed `fit` hands each callback the state of the epoch it resumes in.
    With save_freq "epoch", the backup at an epoch's end also writes the next epoch's entry, with
    the state of the callbacks listed before this one. An epoch whose validation had not ended
    when the process died is not counted, as in Keras' history. Pass the callbacks to `fit` too.

    A resumed fit reads its data on from where the run had got to, not from the data's start as
    Keras' would: the steps trained before the backup are read and dropped (a seeded shuffle
    draws the same order again), except under ParameterServerStrategy. The run's end (its last
    step, the last epoch's end, an epoch after which a callback stops it) is not backed up: a
    run killed after it resumes from the backup before and does that part again, instead of
    resuming with nothing left to run. A backup that leaves `fit` no step is refused.
    """

    def __init__(self, backup_dir, *args, keep_state_of=(), **kwargs):
        super().__init__(backup_dir, *args, **kwargs)
        for callback in keep_state_of:
            if not isinstance(callback, (tf.keras.callbacks.EarlyStopping, tf.keras.callbacks.ModelCheckpoint)):
                raise ValueError(f"keep_state_of takes EarlyStopping and ModelCheckpoint callbacks, got "
                                 f"{type(callback).__name__}")
        self.keep_state_of = tuple(keep_state_of)
        self._state_dir = os.path.join(backup_dir, "callbacks")

    def _coordinated(self):
        return self.model._cluster_coordinator is not None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        # A backup was restored when it holds an epoch (tf-keras' "unused" value is -1): the
        # callbacks get their state back at the first epoch's start, after their own on_train_begin.
        self._backed_up_epoch = int(self._training_state._ckpt_saved_epoch.numpy())
        self._resume_pending = self._backed_up_epoch >= 0
        if self._resume_pending:
            self._refuse_a_backup_of_the_end()
        # The task that writes the backup (TF_CONFIG may be unset: a cluster given to build_strategy).
        self._writes_state = bool(self.keep_state_of) and self.model.distribute_strategy.extended.should_checkpoint
        self._current_weights = set()  # best-weight files holding this run's weights (a dead run's may not)
        self._position_data()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if self.keep_state_of and self._resume_pending:
            self._resume_callbacks(epoch)
        self._resume_pending = False
        if self._writes_state:
            self._write_callback_state(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if not self._coordinated():
            super().on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        """`batch` is the index in this epoch of the last step scheduled (Keras' end step)."""
        if not self._coordinated():
            return super().on_train_batch_end(batch, logs)
        self._batches_count += 1
        if self.save_freq != "epoch" and self._batches_count >= self.save_freq:
            self._batches_count = 0
            self.model._cluster_coordinator.join()
            # Every scheduled step is done now: `fit` resumes at the next one.
            self._training_state._ckpt_saved_batch.assign(batch)
            self._backup(epoch=self._current_epoch, batch=batch)

    def _backup(self, epoch, batch=0):
        last_epoch = epoch == self.params.get("epochs", 0) - 1
        if self.model.stop_training or (last_epoch and (
                self.save_freq == "epoch" or batch == (self.params.get("steps") or 0) - 1)):
            # The run's end: its last step (before the last validation), the last epoch's end, or
            # an epoch after which a callback (EarlyStopping) stops it. A run killed after such a
            # backup would resume with no epoch left, so without the fit's end (EarlyStopping's
            # best weights, the last validation, the callbacks' last state), or train on past the
            # stop. It resumes from the backup before instead and does that part again.
            return
        if self.save_freq == "epoch" and self._writes_state:
            # The run resumes at the next epoch: its state goes with this backup, as the callbacks
            # listed before this one have it (the next epoch's start writes it again in any case).
            self._write_callback_state(epoch + 1)
        super()._backup(epoch, batch)
        self._backed_up_epoch = epoch

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self.model.train_function = _unpositioned(self.model.train_function)
        if self.delete_checkpoint and self._writes_state:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    def _refuse_a_backup_of_the_end(self):
        """A ValueError when the restored backup leaves this `fit` no step to run.

        This callback backs up no run's end (`_backup`), but a backup may come from an earlier
        tfrec, which did, or from a run of more epochs: Keras would resume after the last epoch
        and end at once, with an empty history and without the fit's end (EarlyStopping's best
        weights, the last validation)."""
        epochs, steps = self.params.get("epochs") or 0, self.params.get("steps")
        if steps is None and isinstance(self.save_freq, int):
            return  # Keras cannot place a step backup in data of unknown size either
        resumed_epoch, _ = self._training_state.maybe_load_initial_counters_from_ckpt(steps, 0, "train")
        if resumed_epoch >= epochs:
            raise ValueError(
                f"BackupAndRestore: {self.backup_dir} holds the backup of a run that had trained {resumed_epoch} "
                f"epoch(s), so this fit of {epochs} epoch(s) has nothing left to train. It is the backup of another "
                "run (more epochs), or of a finished one killed before its fit ended; remove the folder to train "
                "afresh")

    def _position_data(self):
        """Makes a resumed fit read its data on from where the backed-up run had got to.

        Keras resumes at the backup's step by counting, but reads the steps from a new iterator,
        at the data's start. So Keras' train function is wrapped for this fit: at its first call,
        the iterator is moved on by the steps the restored run had trained (the model's train
        counter, restored with the backup), their batches read and dropped. Data that Keras
        iterates afresh every epoch (a finite data set, e.g. `df_to_dataset` without `repeat`)
        gets to the resumed epoch by new iterators, one per epoch trained, as each draws the next
        epoch's shuffle; other data (repeated with `steps_per_epoch`, distributed, numpy arrays)
        is one stream across the fit's epochs. A deterministic input pipeline (a seeded shuffle)
        thus gives the batches the run would have. Not under ParameterServerStrategy: workers take
        steps as they come, and nothing records how far each one's data had got.
        """
        model = self.model
        train = model.train_function = _unpositioned(model.train_function)
        if not self._resume_pending or self._coordinated():
            return
        trained = int(model._train_counter.numpy())  # restored with the backup
        if not trained:
            return
        first = None  # Keras' iterator of the resumed epoch, and the one its steps read instead
        positioned = None

        def train_function(iterator):
            nonlocal first, positioned
            if first is None and int(model._train_counter.numpy()) == trained:
                first, positioned = iterator, self._moved_on(iterator, trained)
            elif iterator is not first:  # a later epoch's own iterator (or another fit): Keras' from here on
                model.train_function = train
                return train(iterator)
            return train(positioned)

        train_function.unpositioned = train
        model.train_function = train_function

    def _moved_on(self, iterator, trained):
        """`iterator`, or one of its data set, at the step after the `trained` steps the data
        had given since the run's first fit began."""
        steps = self.params.get("steps")
        passes, skip = 0, trained
        dataset = getattr(iterator, "_dataset", None) if isinstance(iterator, tf.data.Iterator) else None
        if dataset is not None:  # a data set Keras iterates itself, outside any strategy
            size = int(dataset.cardinality())
            if size > 0 and steps == size:  # Keras makes a new iterator every epoch (DatasetAdapter)
                passes, skip = divmod(trained, size)
            elif size == tf.data.UNKNOWN_CARDINALITY and (steps is None or trained >= steps):
                # Whether Keras reads it afresh every epoch (a Keras Sequence) or as one stream (a
                # generator) is not known here: the data starts anew, as in Keras.
                tf.get_logger().warning(
                    "BackupAndRestore: the resumed fit reads its data from the start: a data set of "
                    "unknown size (a generator, a Sequence, a filter) cannot be moved on to step "
                    f"{trained} of the restored run")
                return iterator
        for _ in range(passes):  # one new iterator per epoch trained, each drawing its epoch's order
            iterator = iter(dataset)
        for _ in range(skip):
            try:
                next(iterator)
            except (StopIteration, tf.errors.OutOfRangeError):  # as far as the run got
                break
        return iterator

    # The state file: {"epochs": {epoch: [each callback's state at its start]}}; EarlyStopping's
    # best weights in "best_weights_<epoch>.npz", written once per new best epoch.

    def _states(self):
        path = os.path.join(self._state_dir, "state.json")
        if not os.path.exists(path):
            return {}
        with open(path) as source:
            return {int(epoch): states for epoch, states in json.load(source)["epochs"].items()}

    def _write_callback_state(self, epoch):
        os.makedirs(self._state_dir, exist_ok=True)
        # A resumed fit starts in the epoch of the last backup or later: earlier states are done with.
        states = {e: kept for e, kept in self._states().items() if e >= self._backed_up_epoch}
        states[epoch] = [self._state_of(callback) for callback in self.keep_state_of]
        with replaced_atomically(os.path.join(self._state_dir, "state.json")) as out:
            json.dump({"epochs": states}, out)
        referenced = {state.get("weights") for kept in states.values() for state in kept}
        for name in os.listdir(self._state_dir):  # best weights no state refers to any more
            if name.startswith("best_weights_") and name not in referenced:
                os.remove(os.path.join(self._state_dir, name))

    def _state_of(self, callback):
        if isinstance(callback, tf.keras.callbacks.ModelCheckpoint):
            return {"best": float(callback.best)}
        state = {"best": float(callback.best), "wait": int(callback.wait), "best_epoch": int(callback.best_epoch)}
        if callback.best_weights is not None:
            state["weights"] = f"best_weights_{callback.best_epoch}.npz"
            if state["weights"] not in self._current_weights:
                path = os.path.join(self._state_dir, state["weights"])
                with replaced_atomically(path, "wb") as out:
                    np.savez(out, *callback.best_weights)
                self._current_weights.add(state["weights"])
        return state

    def _resume_callbacks(self, epoch):
        """Hands each callback its state at the start of `epoch` (or of the latest epoch before)."""
        states = self._states()
        started = [e for e in states if e <= epoch]
        if not started:
            return
        for callback, state in zip(self.keep_state_of, states[max(started)]):
            callback.best = state["best"]
            if isinstance(callback, tf.keras.callbacks.EarlyStopping):
                callback.wait, callback.best_epoch = state["wait"], state["best_epoch"]
                if "weights" in state:
                    with np.load(os.path.join(self._state_dir, state["weights"])) as saved:
                        callback.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
                    self._current_weights.add(state["weights"])


def _unpositioned(train_function):
    """Keras' train function without `BackupAndRestore._position_data`'s wrapper (also one a
    fit that died left on the model)."""
    return getattr(train_function, "unpositioned", train_function)


def checkpoint_callbacks(backup_dir, save_freq=100, best_model_path=None, monitor="val_auc", mode="max",
                         delete_backup=True, keep_state_of=()):
    """The callbacks a long or distributed run needs: backup-and-restore, and the best model.

    Args:
      backup_dir: where `BackupAndRestore` keeps the run's state (weights, optimizer slots and
        step, epoch and step within it). A process that dies is restarted with the same command
        and callbacks: `fit` resumes from the last backup, so at most `save_freq` steps are done
        again, and its data from where the run was (a seeded shuffle in the same order; not
        under ParameterServerStrategy). Every worker of a run gives the same directory (shared storage across hosts,
        mounted at the same path: a relative path is made absolute from this process's folder);
        Keras writes from the chief. Under ParameterServerStrategy the chief is the process
        that restarts; a worker or parameter server that restarts loses nothing: the
        coordinator re-runs the worker's steps elsewhere, and the variables live on the servers.
      save_freq: steps between backups ("epoch" for every epoch).
      best_model_path: if given, a `ModelCheckpoint` keeps there the weights (a TensorFlow
        checkpoint, which sharded tables save and restore into) of the epoch with the best
        `monitor` ("val_auc", the validation AUC, needs `validation_data` and an "AUC"
        metric). `model.load_weights(best_model_path)` restores them. A resumed run remembers
        the best figure before the restart, so a worse epoch after it does not replace them.
      delete_backup: remove the backup when `fit` ends (Keras' default); False keeps it.
      keep_state_of: more callbacks whose state a resumed run carries on (see
        `BackupAndRestore`), e.g. the run's `tf.keras.callbacks.EarlyStopping`.
    """
    # Absolute: under ParameterServerStrategy each server writes its own shards, and a relative
    # path would be resolved against that server's working directory, not the chief's.
    best = [tf.keras.callbacks.ModelCheckpoint(
        os.path.abspath(best_model_path), monitor=monitor, mode=mode, save_best_only=True, save_weights_only=True)
    ] if best_model_path else []
    backup = BackupAndRestore(os.path.abspath(backup_dir), save_freq=save_freq, delete_checkpoint=delete_backup,
                              keep_state_of=best + list(keep_state_of))
    return [backup] + best


def _unsharded_name(variable):
    """A variable's name without its shard suffix ('t/embeddings/part_1:0' -> 't/embeddings:0')."""
    return _PART.sub(r"\2", variable.name)


def _shard_index(variable):
    match = _PART.search(variable.name)
    return int(match.group(1)) if match else 0


def _whole_variables(model):
    """{name a variable has whole: its shards in order (one for a variable not split)}, in the
    order of `model.weights`."""
    shards = {}
    for variable in model.weights:
        shards.setdefault(_unsharded_name(variable), []).append(variable)
    return {name: sorted(parts, key=_shard_index) for name, parts in shards.items()}


def shard_placement(model):
    """Where `model`'s split variables live: {name: [(device, rows) of each shard, in order]}.

    Only variables split across parameter servers are listed (under the name they have whole,
    e.g. "emb_item_id/embeddings"); an empty dict when none reached the partitioner's size.
    """
    return {name.rsplit(":", 1)[0]: [(part.device, int(part.shape[0])) for part in parts]
            for name, parts in _whole_variables(model).items() if len(parts) > 1}


def unsharded_copy(model):
    """A copy of `model` outside any strategy, whose variables are ordinary and whole.

    A table split across parameter servers (or mirrored on replicas) becomes one local variable
    with the rows of all its shards, in order. Returns the copy (a model of the same class and
    layers, not compiled), with weights equal to `model`'s.
    """
    if tf.distribute.has_strategy():
        raise ValueError("unsharded_copy makes local variables: call it outside `strategy.scope()`")
    sources = _whole_variables(model)
    copy = tf.keras.models.clone_model(model)
    for variable in copy.weights:
        shards = sources.get(variable.name)
        if not shards:
            raise ValueError(f"no variable of '{model.name}' matches '{variable.name}' of its copy")
        value = np.concatenate([s.numpy() for s in shards], axis=0) if len(shards) > 1 else shards[0].numpy()
        if value.shape != tuple(variable.shape):
            raise ValueError(f"'{variable.name}': the copy has shape {tuple(variable.shape)}, the "
                             f"shards add up to {value.shape}")
        variable.assign(value)
    return copy


def placed_copy(model):
    """A copy of `model` whose variables live where the strategy in scope puts them (split across
    the parameter servers, or mirrored on every replica), with `model`'s weights.

    The inverse of `unsharded_copy`: a model made in one process (a warm start's earlier run,
    loaded and grown) becomes one the cluster trains. Call it in `strategy.scope()`; outside
    any strategy it returns `model` itself. Returns the copy, not compiled.
    """
    if not tf.distribute.has_strategy():
        return model
    copy = tf.keras.models.clone_model(model)
    wholes = _whole_variables(copy)
    # Paired in order (the copy has the model's layers in its order): a loaded model's variables
    # are not under their layers' names, so only their own names are compared.
    if [name.split("/")[-1] for name in wholes] != [variable.name.split("/")[-1] for variable in model.weights]:
        raise ValueError(f"the copy of '{model.name}' has other variables than the model")
    for variable, (name, shards) in zip(model.weights, wholes.items()):
        value = variable.numpy()
        shapes = [tuple(shard.shape) for shard in shards]
        whole = shapes[0] if len(shards) == 1 else (sum(shape[0] for shape in shapes), *shapes[0][1:])
        if whole != value.shape:
            raise ValueError(f"'{name}': the copy has shape {whole}, the model {value.shape}")
        if len(shards) == 1:
            shards[0].assign(value)
        else:
            bounds = np.cumsum([0, *(shape[0] for shape in shapes)])
            for shard, start, stop in zip(shards, bounds, bounds[1:]):
                shard.assign(value[start:stop])  # each shard's rows, in order
    return copy


def _refuse_one_inter_op_thread():
    """Raises ValueError when this process runs TensorFlow with one inter-op thread.

    A ParameterServerStrategy cluster whose tasks have one inter-op thread deadlocks: measured
    here with TF_NUM_INTEROP_THREADS=1 in every task's environment, the chief's `fit` logged its
    first three steps and then nothing for minutes (the same cluster with the default pools, or
    with TF_NUM_INTRAOP_THREADS=1 alone, trains). Refused at start-up rather than left to hang.
    """
    threads = tf.config.threading.get_inter_op_parallelism_threads()
    from_env = os.environ.get("TF_NUM_INTEROP_THREADS", "").strip()
    if threads == 1 or (threads == 0 and from_env == "1"):
        where = "TF_NUM_INTEROP_THREADS=1" if threads == 0 else \
            "tf.config.threading.set_inter_op_parallelism_threads(1)"
        raise ValueError(
            f"parameter_server: this task runs TensorFlow with one inter-op thread ({where}), with which "
            "a ParameterServerStrategy cluster deadlocks (training stops after its first steps); leave "
            "the inter-op pool at its default, or at 2 or more threads, on every task of the cluster")


def run_server(tf_config=None):
    """Runs this task's `tf.distribute.Server` (a ParameterServerStrategy worker or ps) forever.
    Refuses a process with one inter-op thread (`build_strategy`'s parameter_server)."""
    resolver = cluster_resolver(tf_config)
    if resolver.task_type not in ("worker", "ps"):
        raise ValueError(f"only 'worker' and 'ps' tasks run a bare server, not {resolver.task_type!r}")
    _refuse_one_inter_op_thread()
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol="grpc", start=True)
    print(f"tfrec.distribute: {resolver.task_type} {resolver.task_id} serving at {server.target}", flush=True)
    server.join()


def free_ports(count, host="127.0.0.1"):
    """`count` distinct free TCP ports on `host`, for a local cluster (tests, benchmarks): all
    sockets are held open together, so no port is handed out twice."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _cluster_from_flag(value):
    """--cluster: a JSON cluster dict, a JSON file (a cluster dict or a whole TF_CONFIG), or
    'chief=h:p;worker=h:p,h:p;ps=h:p,h:p'."""
    text = value.strip()
    if text.startswith("{") or "=" not in text:
        config = _json_or_file(text, "--cluster")
        cluster = config["cluster"] if "cluster" in config else config
    else:
        cluster = {}
        for part in filter(None, (part.strip() for part in text.split(";"))):
            job, equals, addresses = part.partition("=")
            if not equals:
                raise ValueError(f"--cluster {value!r}: {part!r} is not job=host:port,... (jobs are separated by ';')")
            cluster[job.strip()] = [a.strip() for a in addresses.split(",") if a.strip()]
    check_cluster(cluster)
    return cluster


def main(argv=None):
    """`python -m tfrec.distribute --role ROLE --index I [--cluster SPEC] [-- PROGRAM ARGS...]`.

    One command per role of a cluster. With a program after `--`, sets TF_CONFIG for this role
    and runs the program in this process (the chief of a ParameterServerStrategy run, or every
    worker of a MultiWorkerMirroredStrategy run). Without one, runs the task's bare server (the
    workers and parameter servers of a ParameterServerStrategy run). `--cluster` is a JSON dict
    {job: [host:port, ...]}, a JSON file (a cluster dict or a whole TF_CONFIG) or
    "chief=h:p;worker=h:p,h:p;ps=h:p,h:p"; without it the cluster is TF_CONFIG's.
    """
    parser = argparse.ArgumentParser(prog="python -m tfrec.distribute", description=main.__doc__.split("\n")[0])
    parser.add_argument("--role", required=True, choices=["chief", "worker", "ps", "evaluator"])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--cluster", default=None, help="cluster spec (JSON, JSON file or job=h:p,...;...)")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="-- python train.py ... (the program of this role)")
    args = parser.parse_args(argv)
    try:
        cluster = _cluster_from_flag(args.cluster) if args.cluster else parse_tf_config().get("cluster")
    except ValueError as error:
        parser.error(str(error))
    if not cluster:
        parser.error("no cluster: pass --cluster or set TF_CONFIG")
    if args.role not in cluster or args.index >= len(cluster[args.role]):
        parser.error(f"the cluster has no task {args.role}:{args.index}: {cluster}")
    tf_config = {"cluster": cluster, "task": {"type": args.role, "index": args.index}}
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        try:
            return run_server(tf_config)
        except ValueError as error:
            parser.error(str(error))
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    sys.stdout.flush()
    os.execvp(program[0], program)


if __name__ == "__main__":
    main()
