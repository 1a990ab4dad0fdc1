"""The Keras model class every tfrec model is: a functional model with a split training step.

Raw strings and ids come in, and the in-graph lookups (StringLookup, IntegerLookup, Hashing)
that map them to embedding indices cannot be compiled by XLA. `RecModel.train_step` therefore
runs in two parts: the lookups as ordinary TensorFlow ops, then the rest of the model (embeddings,
attention, towers), the loss and its gradients as one XLA-compiled function of the indices.
With LazyAdam the optimizer update joins that function for the dense weights and every table
small enough for its masked update, so a step of the multi-task models (small vocabularies) is
one XLA call, as in Keras' own `jit_compile=True`; as a call of its own the update measured
~1.5 ms of a ~6 ms MMOE step (one small XLA launch per weight). Larger tables get their row
update after the call, outside XLA: it de-duplicates rows with `tf.unique`, which XLA compiles
to a sort that measured ~100x slower than the plain kernel on a DIN history's 52k ids, and still
slower overall on a multi-task model's 1k ids per table. The model graph itself is unchanged, so
`predict`, `evaluate`, `save`, `.h5` and SavedModel export still take raw values through the same
lookup layers: there is no second preprocessing path that could drift from the served one.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import contextlib
import inspect
import time
import warnings
import zlib
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow as tf
from feature_columns import (RecentSequence, SparseEmbedding, SparseIndex, check_inputs, history_input_names,
                             indexed_feature, indexed_key, on_one_history)

from ..data.pipeline import without_autotuning
from ..layers import DNN, PredictionLayer
from ..layers.core import evaluating
from ..optimizers import LazyAdam, sparse_optimizer

__all__ = ["RecModel", "SharedHistoryModel", "click_prediction", "history_model"]

# Batches per call of Keras' train / test / predict function when `compile` is not given
# `steps_per_execution`: Keras' per-call work (Python, callbacks, dispatch) is a fixed cost per
# call, a noticeable share of a multi-task step of a few milliseconds.
STEPS_PER_EXECUTION = 32


class _KeptBatch:
    """A batch with fewer rows than the first one `fit` trained (an epoch's partial last batch),
    kept by the training function and trained by one eager step once its call returns.

    XLA compiles the step again for every new batch shape, and for the last batch alone that cost
    most of a short fit's first epoch: on 25,700 rows at batch 256 (the last batch 100 rows)
    against 25,600, SDM's first epoch took 14.1 against 8.4-8.8 s, MIND's 5.6 against 3.8 s
    (docs/training.md). One eager step of SDM on 100 rows takes 0.17 s, once an epoch.

    One batch is kept at a time. Another batch coming in the same call trains the kept one first,
    with the compiled step (compiled for its shape, as without keeping), so batches train in the
    order they come.
    """

    def __init__(self):
        # Made with the model's `compile`, not while a step traces: a tf.function that makes
        # variables on its first trace is traced again.
        self.rows = tf.Variable(-1, trainable=False, name="first_batch_rows")
        self.pending = tf.Variable(False, trainable=False, name="batch_kept")
        self.keeping = tf.Variable(True, trainable=False, name="keeping_batches")
        # The kept batch's tensors, serialized: one variable for any number and types of them.
        self.batch = tf.Variable(tf.constant([], tf.string), shape=tf.TensorShape(None), trainable=False,
                                 name="kept_batch")
        # Per trace of the training function (one per structure of (indexed, y, sample_weight)):
        # (that structure, which of its entries are given, their specs); `layout` numbers the kept one's.
        self.layouts = []
        self.layout = tf.Variable(0, trainable=False, name="kept_batch_layout")
        self.eager_steps = 0

    def _kept(self, layout):
        structure, slots, specs = layout
        parts = self.batch.read_value()
        values = iter(tf.ensure_shape(tf.io.parse_tensor(parts[i], spec.dtype), spec.shape)
                      for i, spec in enumerate(specs))
        return tf.nest.pack_sequence_as(structure, [next(values) if s else None for s in slots])

    def train_or_keep(self, inputs, train):
        """In the training function: `train(inputs)` (the compiled step, its updates and metrics;
        it returns tensors to wait for), or keep `inputs` (indexed, y, sample_weight) when they
        have fewer rows than the first batch. Returns tensors to wait for."""
        flat = tf.nest.flatten(inputs)
        given = [t for t in flat if t is not None]
        layout = (inputs, [t is not None for t in flat], [tf.TensorSpec(t.shape, t.dtype) for t in given])
        self.layouts.append(layout)
        number = len(self.layouts) - 1
        rows, first = tf.shape(given[0])[0], self.first_batch_rows(given[0])

        def train_kept():  # kept earlier in this call, so by this trace
            with tf.control_dependencies(train(self._kept(layout))):
                return self.pending.assign(False)

        def keep():
            with tf.control_dependencies([self.batch.assign(tf.stack([tf.io.serialize_tensor(t) for t in given])),
                                          self.layout.assign(number)]):
                return self.pending.assign(True)

        def train_this():
            with tf.control_dependencies(train(inputs)):
                return tf.constant(False)

        before = tf.cond(self.pending, train_kept, lambda: tf.constant(False))
        with tf.control_dependencies([before]):
            return [tf.cond((rows < first) & self.keeping, keep, train_this)]

    def first_batch_rows(self, tensor):
        """The rows of the first batch this `fit` trained: those of `tensor`, one of a batch's
        tensors, if it is the first."""
        rows = tf.shape(tensor)[0]
        return tf.cond(self.rows < 0, lambda: self.rows.assign(rows), self.rows.read_value)

    def train_eagerly(self, train):
        """After a call of the training function: `train` on the kept batch, eagerly. Returns
        whether a batch was kept."""
        if not bool(self.pending.numpy()):
            return False
        train(self._kept(self.layouts[int(self.layout.numpy())]))
        self.pending.assign(False)
        self.eager_steps += 1
        return True

    def stop_keeping(self):
        """From now on the compiled step trains every batch (compiling for a partial one's shape)."""
        self.keeping.assign(False)

    def restart(self):
        """A new `fit`: its first batch sets the rows again."""
        self.rows.assign(-1)


class _KeepingTrainFunction:
    """Keras' training function (a tf.function, whose attributes it passes on), then an eager
    step on the batch its call kept (`_KeptBatch`).

    Eager steps go on until together they have taken as long as the first call did (its tracing
    and compilation, a bound on compiling for the partial batch's shape); from then on the
    compiled step trains that batch too. So a long `fit` spends at most about that much more than
    compiling at once, and a short one saves the compilation.
    """

    def __init__(self, function, kept, train, metrics):
        self.function, self.kept, self.train, self.metrics = function, kept, train, metrics
        self.budget_s, self.eager_s = None, 0.0

    def __call__(self, iterator):
        started = time.perf_counter()
        try:
            logs = self.function(iterator)
        except tf.errors.OutOfRangeError:  # the data ran out within the call: its kept batch trains first
            self._train_kept(started)
            raise
        return self.metrics() if self._train_kept(started) else logs

    def _train_kept(self, call_started):
        if self.budget_s is None:  # the first call, also when its data ran out within it
            self.budget_s = time.perf_counter() - call_started
        started = time.perf_counter()
        if not self.kept.train_eagerly(self.train):
            return False
        self.eager_s += time.perf_counter() - started
        if self.eager_s >= self.budget_s:
            self.kept.stop_keeping()
        return True

    def __getattr__(self, name):
        return getattr(self.function, name)


class _TrainingSplit:
    """The model cut after its SparseIndex layers (a plain object, so Keras does not track it).

    `lookup(x)` maps raw features to the list of tensors that `core` takes: the output of every
    SparseIndex call, then the raw inputs that other layers read (dense features, lengths).
    `step(indexed, y, sample_weight)` runs the core, the loss and its gradients for the model's
    trainable variables as one tf.function, XLA-compiled when `jit_compile`; it returns
    (y_pred, gradients). When `update_in_step`, it also applies the model's optimizer to every
    gradient but those of `row_tables` (tables LazyAdam updates after the step, with
    `update_rows_after_step`), and returns only theirs (the others are None).
    `steps(count, indexed, y, sample_weight)` runs `step` on `count` stacked batches in one XLA
    loop (see `_steps`); None unless the step applies every update and the model has no sequences.
    `kept`: with `keep_partial_batches` and no `steps`, the `_KeptBatch` of `fit`'s partial last batches.
    """

    def __init__(self, model, jit_compile, keep_partial_batches=False, update_in_step=False, row_tables=()):
        indexed, read_raw, self.indexed_names, self.indexed_keys = [], [], [], []
        model_inputs = {id(t) for t in model.inputs}
        for layer in model.layers:
            for node_index, node in enumerate(layer._inbound_nodes):
                if f"{layer.name}_ib-{node_index}" not in model._network_nodes:
                    continue  # a call of a shared layer that belongs to another model
                if isinstance(layer, SparseIndex):
                    indexed.append(node.outputs)
                    self.indexed_names.append(node.inbound_layers.name)
                    self.indexed_keys.append(indexed_key(node.inbound_layers.name, layer))
                elif not node.is_input:
                    read_raw += [t for t in tf.nest.flatten(node.keras_inputs)
                                 if id(t) in model_inputs and all(t is not r for r in read_raw)]
        self.raw_names = [t._keras_history.layer.name for t in read_raw]
        self.lookup = tf.keras.Model(model.inputs, indexed + read_raw, name=f"{model.name}_lookup")
        self.core = tf.keras.Model(indexed + read_raw, model.outputs, name=f"{model.name}_core")

        def step(indexed, y, sample_weight):
            with tf.GradientTape() as tape:
                y_pred = self.core(indexed, training=True)
                loss = model.compute_loss(None, y, y_pred, sample_weight)
            gradients = tape.gradient(loss, model.trainable_variables)
            if not update_in_step:
                return y_pred, gradients
            after = [any(v is t for t in row_tables) for v in model.trainable_variables]
            pairs = [(g, v) for g, v in zip(gradients, model.trainable_variables) if g is not None]
            _build_optimizer(model.optimizer, [v for _, v in pairs])  # unless fit built it first
            model.optimizer.apply_gradients(
                (g, v) for g, v, later in zip(gradients, model.trainable_variables, after) if g is not None and not later)
            return y_pred, [g if later else None for g, later in zip(gradients, after)]

        self.update_in_step = update_in_step
        self.row_tables = list(row_tables)
        self.step = tf.function(step, jit_compile=jit_compile)
        # Several steps in one XLA call, when the step itself applies every update and the model
        # reads one value per feature (no behaviour sequences): a step of a few milliseconds, of
        # which passing the weights in and out is a noticeable share. A sequence model's step is
        # long enough that the loop's extra compilation (seconds for SIM or SDM) would not pay.
        flat = all(t.shape.rank == 2 and t.shape[1] == 1 for t in model.inputs)
        self.steps = tf.function(self._steps, jit_compile=True) \
            if update_in_step and not self.row_tables and flat else None
        # The loop shares its trace with the compiled step, so there a partial batch costs only
        # its XLA compilation (SharedBottom 0.25 s, MMOE 0.45 s): less than the eager steps a few
        # epochs would take instead (35-55 ms each). Only a model without the loop keeps it.
        self.kept = _KeptBatch() if keep_partial_batches and self.steps is None else None
        self.packed = {}
        self.step_functions = {}  # RecModel._traced_once's, by step

    def _steps(self, count, indexed, y, sample_weight):
        """`self.step` on the first `count` batches stacked along a new first axis (steps, batch,
        ...), one after the other in one XLA loop -> the predictions, stacked the same way (the rows
        past `count` zeros). The loop calls the compiled step that trains a batch of another shape,
        so the model is traced once for both.

        The weights and the optimizer's slots stay inside the call from one step to the next,
        where a call per step passes every one of them in and out: on one planted batch of 1024
        rows, MMOE's Keras step at 32 batches per call takes 7.44 ms a batch this way, against 9.80
        ms for one XLA call per batch (BENCHMARKS.md, multi-task section).
        """
        size = tf.shape(tf.nest.flatten(indexed)[0])[0]
        outputs = tf.nest.flatten(self.core.output)

        def one_step(i, predictions):
            y_pred, _ = self.step(*tf.nest.map_structure(lambda t: None if t is None else t[i],
                                                         (indexed, y, sample_weight)))
            return i + 1, [p.write(i, o) for p, o in zip(predictions, tf.nest.flatten(y_pred))]

        _, predictions = tf.while_loop(lambda i, _: i < count, one_step,
                                       [tf.constant(0), [tf.TensorArray(o.dtype, size=size) for o in outputs]])
        return tf.nest.pack_sequence_as(self.core.output, [p.stack() for p in predictions])

    def pack(self, arrays):
        """{name: (n, ...) numpy array} -> {block: (n, width)}, the arrays of each numeric dtype side by side.

        Keras slices `fit`'s numpy inputs with one gather per array and batch, in the input
        pipeline that shares the CPU with the step; a multi-task model has a dozen small inputs.
        `core_inputs` splits the blocks again (`self.packed` is their layout).
        """
        layouts, parts = {}, {}
        for name, array in arrays.items():
            if array.dtype.kind in "biuf":
                layouts.setdefault(array.dtype.name, []).append((name, array.shape[1:]))
                parts.setdefault(array.dtype.name, []).append(array.reshape(len(array), -1))
        # The layout is in the block's name: a later fit's histories of other widths then trace
        # the training function again, where a trace made for another layout would split them
        # at its widths (an error, or, for the same total width, ids fed to the wrong features).
        named = {f"__tfrec_{dtype}_block_{zlib.crc32(repr(layout).encode()):08x}__": dtype
                 for dtype, layout in layouts.items()}
        self.packed.update((block, layouts[dtype]) for block, dtype in named.items())
        blocks = {block: np.concatenate(parts[dtype], axis=1) for block, dtype in named.items()}
        return {**{name: array for name, array in arrays.items() if array.dtype.kind not in "biuf"}, **blocks}

    def _unpacked(self, x):
        if not any(block in x for block in self.packed):
            return x
        x = dict(x)
        for block, parts in self.packed.items():
            if block not in x:
                continue
            widths = [int(np.prod(shape, dtype=int)) for _, shape in parts]
            for (name, shape), column in zip(parts, tf.split(x.pop(block), widths, axis=1)):
                x[name] = tf.reshape(column, [-1, *shape])
        return x

    @property
    def indexed_key_of(self):
        """{feature name: the key its looked-up rows come under (`indexed_key`)}."""
        return dict(zip(self.indexed_names, self.indexed_keys))

    def core_inputs(self, x):
        """The core's inputs for a batch: the rows a pipeline looked up (`look_up_rows`, or
        packed by `pack`), or None."""
        if isinstance(x, Mapping):
            x = self._unpacked(x)
        if not isinstance(x, Mapping) or not self.indexed_keys or any(key not in x for key in self.indexed_keys):
            return None
        rows = [x[key] for key in self.indexed_keys]
        rows = [tf.expand_dims(r, -1) if r.shape.rank == 1 else r for r in rows]  # SparseFeat: (batch, 1)
        return rows + [x[name] for name in self.raw_names]


def _labels_per_row(y):
    """Labels (an array, a list of them or {output: array}) with each (rows, 1) array as (rows,):
    every output is (batch, 1), and Keras takes either shape, but a training function traced for
    one and called with the other is traced again for labels of unknown rank, which neither XLA
    (DIN: "tf2xla conversion failed") nor the one-loop step (MMOE) can compile."""
    def per_row(values):
        return values.reshape(-1) if isinstance(values, np.ndarray) and values.ndim == 2 and \
            values.shape[1] == 1 else values
    if isinstance(y, Mapping):
        return {name: per_row(values) for name, values in y.items()}
    if isinstance(y, (list, tuple)):
        return type(y)(per_row(values) for values in y)
    return per_row(y)


class SavedWithoutLayerTraces:
    """A `tf.keras.Model` mixin: `save` to a SavedModel folder writes no per-layer traces.

    `save_traces=False` unless the caller passes `save_traces=True`, as `exporters` does: every
    tfrec layer has `get_config` and is registered, so `load_model` rebuilds the model from its
    config instead of reviving traced functions. Keras' own `serving_default` signature (the
    model's call) is still written.
    """

    def save(self, filepath, overwrite=True, save_format=None, **kwargs):
        # Tracing every layer's call for the folder cost most of a save and of the load that
        # revived them: CLSR (100 events, the tests' sizes) saved in 9.3 s and loaded in 7.3 s
        # with traces, 1.4 s and 1.4 s without. Keras refuses the option for a `.keras` file.
        from tf_keras.src.saving.legacy.saved_model.save_impl import default_save_signature
        from tf_keras.src.saving.saving_api import get_save_format  # how Keras picks the format

        if get_save_format(filepath, save_format) == "tf" and not kwargs.get("save_traces", False):
            kwargs["save_traces"] = False
            # Keras makes its serving_default signature (the model's call) among the traces.
            if kwargs.get("signatures") is None:
                kwargs["signatures"] = default_save_signature(self)
        return super().save(filepath, overwrite=overwrite, save_format=save_format, **kwargs)

    @property
    def _trackable_saved_model_saver(self):
        # Keras revives a model of a custom class from its config and then sets the saved
        # `model.trainable` on it, which Keras applies to every layer: a table frozen with
        # SparseFeat(trainable=False) came back trainable. A trainable model (the default, as
        # from_config builds it) saved without traces (so revived only from its config) leaves
        # out the flag, and each layer keeps its own. With traces, a load without tfrec's classes
        # revives the model from the flag itself, which must then stay.
        from tf_keras.src.saving.legacy.saved_model.model_serialization import ModelSavedModelSaver
        from tf_keras.src.saving.legacy.saved_model.utils import should_save_traces

        class KeepingLayersTrainable(ModelSavedModelSaver):
            def _python_properties_internal(self):
                metadata = super()._python_properties_internal()
                if metadata.get("trainable") and not should_save_traces():
                    metadata["trainable"] = None
                return metadata

        return KeepingLayersTrainable(self)


def refuse_positional_inputs(model, x):
    """A ValueError for a list of arrays (or a data set of lists) fed to `model` of several inputs."""
    if isinstance(x, tf.data.Dataset) and isinstance(x.element_spec, tuple):
        x = x.element_spec[0]  # (features, labels...)
    if isinstance(x, (list, tuple)) and len(model.inputs) > 1:
        # Keras would match a list to the Inputs by position, whose order (by name) is not the
        # columns' order: ids of one feature would silently stand for another's.
        raise ValueError(f"model '{model.name}' takes a dict {{feature name: array}}, not a list of "
                         f"{len(x)} arrays, which would be matched to its inputs by position in the order "
                         f"{list(model.input_names)}, not the order of its feature columns")


@tf.keras.utils.register_keras_serializable(package="tfrec")
class RecModel(SavedWithoutLayerTraces, tf.keras.Model):
    """A functional `tf.keras.Model` whose `fit` compiles everything after the lookups with XLA.

    Built like any functional model, `RecModel(inputs, outputs, name=...)`; it saves, loads
    (`.h5` or SavedModel, no custom_objects needed) and exports like one. Differences in
    `compile`:

      * `jit_compile=None` (the default) means XLA: the compiled part is the model after its
        lookups, the loss and the gradients, and, when the optimizer is LazyAdam and no
        distribution strategy is in use, the update of the dense weights and of every table
        small enough for the masked update (`tfrec.optimizers.MASKED_UPDATE_MAX_SIZE` weights);
        larger tables get their row update (and their weight decay) right after the call (all
        weights do, when clipping, an EMA or a learning-rate schedule needs them in one
        `apply_gradients`, and under AMSGrad, whose update de-duplicates every table's rows with
        `tf.unique`).
        `jit_compile=False` trains without XLA (for a layer XLA cannot compile).
      * Keras' Adam ("adam" or a `tf.keras.optimizers.Adam`) becomes `tfrec.optimizers.LazyAdam`
        with the same settings: Adam on dense weights, and on embedding tables an update of only
        the rows the batch used, so a step costs the same whatever the table size.
        `lazy_adam=False` keeps Keras' Adam as given, which decays the moments of every row of
        every table at every step (as DeepCTR trains), at a cost that grows with the tables.
      * `steps_per_execution=None` means `STEPS_PER_EXECUTION` (32) batches per call of Keras'
        train / test / predict function (Keras' default 1 under a distribution strategy). A
        `fit`, `evaluate` or `predict` given a callback with per-batch hooks (`on_*_batch_begin`
        / `on_*_batch_end`, e.g. TensorBoard, a ModelCheckpoint saving every n batches) runs one
        batch per call, so the callback still sees every batch; `train_on_batch`,
        `test_on_batch` and `predict_on_batch` run one batch either way. So does a call on data
        whose size Keras cannot infer (a data set of unknown cardinality, e.g. filtered or read
        from TFRecord files, or a generator) without its number of steps: Keras refuses those at
        more than one batch per call, which an explicit `steps_per_execution` still gets. A `fit`
        whose validation data set alone is of unknown size validates one batch per call and trains
        at `STEPS_PER_EXECUTION` (with a generator as validation data, the whole fit runs one
        batch per call). When every update is
        inside the XLA call and the model has no behaviour sequences (the multi-task models),
        `fit` trains a call's batches in one XLA loop (`make_train_function`).

    A batch may also carry its features' embedding rows already looked up, under
    `feature_columns.indexed_key(name, lookup)` (what `feature_columns.look_up_rows` and
    `tfrec.data.df_to_dataset` give): `fit`, `evaluate` and `predict` then skip the model's own
    lookups, which are the same mapping.

    `core_step_function()` is the compiled function (a `tf.function`; its
    `experimental_get_tracing_count()` shows that `fit` used it).

    `save` to a SavedModel folder writes no per-layer traces (`SavedWithoutLayerTraces`).
    """

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                run_eagerly=None, steps_per_execution=None, jit_compile=None, lazy_adam=True, **kwargs):
        # A distribution strategy sums the replicas' gradients in apply_gradients, outside any
        # replica's XLA call, and schedules its own steps: it keeps Keras' defaults.
        distributed = self._is_distributed()
        # Only tfrec's own choice yields to data of unknown size; a user's keeps Keras' error.
        self._tfrec_chose_steps_per_execution = steps_per_execution is None and not distributed
        if self._tfrec_chose_steps_per_execution:
            steps_per_execution = STEPS_PER_EXECUTION
        optimizer = sparse_optimizer(optimizer) if lazy_adam else optimizer
        super().compile(optimizer, loss, metrics, loss_weights, weighted_metrics, run_eagerly,
                        steps_per_execution, jit_compile=False, **kwargs)
        self._tfrec_jit_compile = jit_compile is None or bool(jit_compile)
        self._tfrec_lazy_adam = bool(lazy_adam)
        # XLA cannot read a variable that lives on another task, as every variable does under
        # ParameterServerStrategy (on the parameter servers): there the step runs without XLA.
        on_ps = isinstance(self.distribute_strategy, tf.distribute.experimental.ParameterServerStrategy)
        xla = self._tfrec_jit_compile and not on_ps
        tables = [layer.embeddings for layer in self._flatten_layers(include_self=False)
                  if isinstance(layer, SparseEmbedding) and layer.trainable]
        # LazyAdam updates the small tables and the dense weights inside the XLA call; a large
        # table's row update needs tf.unique, which XLA compiles badly, so it follows the call.
        lazy = isinstance(self.optimizer, LazyAdam)
        row_tables = [table for table in tables if lazy and not self.optimizer.needs_no_unique([table])]
        update_in_step = xla and not distributed and lazy and \
            (not row_tables or self.optimizer.can_update_rows_after_step())
        self._split = _TrainingSplit(self, jit_compile=xla, keep_partial_batches=xla and not distributed,
                                     update_in_step=update_in_step,
                                     row_tables=row_tables if update_in_step else ())

    def _is_distributed(self):
        """Whether the model was built, or is used, under a distribution strategy."""
        return self._distribution_strategy is not None or tf.distribute.has_strategy()

    def get_compile_config(self):
        """Keras' compile config, with the XLA setting of this `compile` (not Keras' own False)
        and its `lazy_adam`."""
        config = super().get_compile_config()
        if config is not None:
            config = dict(config, jit_compile=getattr(self, "_tfrec_jit_compile", True),
                          lazy_adam=getattr(self, "_tfrec_lazy_adam", True))
        return config

    def compile_from_config(self, config):
        """Compiles a model loaded from a `.keras` file as it was compiled when saved.

        Keras skips this for a model whose `compile` is overridden; this one is, so it says how.
        """
        from tf_keras.src.saving import saving_lib  # the deserializer Keras' own method uses

        config = saving_lib.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            _build_optimizer(self.optimizer, self.trainable_variables)  # so the saved optimizer state loads

    def fit(self, x=None, y=None, *args, **kwargs):
        x, y = self._checked(x, y)
        kwargs = self._with_checked_sample_weight(x, kwargs)
        rows = self._look_up_once(x)
        if rows is not x:
            _warn_of_ids_beyond_their_table(self.name, x, rows, self._split.indexed_key_of)
        callbacks = _keras_argument(tf.keras.Model.fit, "callbacks", args, kwargs)
        # First, so the callbacks that save or read the model at an epoch's end see them fresh.
        refreshing = _RefreshingDerivedWeights(self) if self._has_derived_weights() else None
        if refreshing is not None and not isinstance(callbacks, tf.keras.callbacks.CallbackList):
            callbacks = [refreshing] + (tf.nest.flatten(callbacks) if callbacks else [])  # as Keras reads them
            at = _position(tf.keras.Model.fit, "callbacks")
            args, kwargs = (args[:at] + (callbacks,) + args[at + 1:], kwargs) if len(args) > at else \
                (args, dict(kwargs, callbacks=callbacks))
        x = x if rows is x else self._split.pack(rows)
        if not args and not self._is_distributed():
            x, y, kwargs = self._fit_arguments_without_autotuning(x, y, kwargs)
        self._build_training_variables(x if y is None else y, y is None)
        if getattr(self, "_split", None) is not None and self._split.kept is not None:
            self._split.kept.restart()
        validation = _keras_argument(tf.keras.Model.fit, "validation_data", args, kwargs)
        validation_size_unknown = self._size_unknown(
            validation, _keras_argument(tf.keras.Model.fit, "validation_steps", args, kwargs))
        # A data set's validation runs one batch per call on its own (`_validating_one_step_per_call`).
        validating_apart = validation_size_unknown and isinstance(validation, tf.data.Dataset)
        sizes_unknown = self._size_unknown(x, _keras_argument(tf.keras.Model.fit, "steps_per_epoch", args, kwargs)) or \
            (validation_size_unknown and not validating_apart)
        with self._one_step_per_execution(_hooks_batches(callbacks, "train") or _hooks_batches(callbacks, "test")
                                          or sizes_unknown), _called_first(callbacks, refreshing), \
                self._validating_one_step_per_call(validation if validating_apart else None):
            history = super().fit(x, y, *args, **kwargs)
        self.refresh_derived_weights()
        return history

    def _build_training_variables(self, data, in_dataset):
        """Creates, before `fit` first calls its training function, the variables that call would
        otherwise create while TensorFlow traces it: the optimizer's slots, the compiled losses'
        and metrics' accumulators. A tf.function that creates variables on its first trace is
        traced a second time without them, so every `fit` of a new model traced its forward and
        backward graph twice: a small DIN's first `fit` took 5.5 s, against 4.8 s traced once.
        The slots are made for every trainable weight, as `compile_from_config` makes them for a
        loaded model. `data` and `in_dataset`: as in `_build_metrics`.
        """
        if getattr(self, "_split", None) is not None:
            with self.distribute_strategy.scope():
                _build_optimizer(self.optimizer, self.trainable_variables)
        self._build_metrics(data, in_dataset)

    def _build_metrics(self, data, in_dataset):
        """Creates the compiled losses' and metrics' accumulators before `fit` or `evaluate` first
        traces a step (see `_build_training_variables`; the first `evaluate` of a loaded model
        traced its whole model twice for them).

        `data` is the call's labels, or (`in_dataset`) its data set, whose element spec gives
        them. Labels of another form (a generator, a `DatasetCreator`) leave the metrics to
        Keras, as before.
        """
        split = getattr(self, "_split", None)
        if split is None or getattr(self, "compiled_loss", None) is None or \
                (self.compiled_loss.built and self.compiled_metrics.built):
            return
        y_pred = split.core._nested_outputs  # the structure the steps' y_pred has
        if in_dataset:
            spec = getattr(data, "element_spec", None)
            labels = tf.keras.utils.unpack_x_y_sample_weight(spec)[1] if isinstance(spec, tuple) else None
            # A distributed data set's labels on several replicas: each replica's have one spec.
            labels = tf.nest.map_structure(lambda spec: getattr(spec, "_value_specs", [spec])[0], labels)
        else:
            labels = tf.nest.map_structure(tf.type_spec_from_value, data)
        # Keras numbers a metric's default name within the graph it is made in ("auc", "auc_1"):
        # in a graph of its own, as in the traced function, however many models the process
        # built before. The variables are made outside it, in `init_scope`, as they are there.
        with self.distribute_strategy.scope(), tf.__internal__.FuncGraph("compiled_metrics").as_default():
            if not self.compiled_loss.built:
                self.compiled_loss.build(y_pred)
            if labels is not None and not self.compiled_metrics.built and \
                    all(isinstance(spec, tf.TensorSpec) for spec in tf.nest.flatten(labels)):
                self.compiled_metrics.build(y_pred, self.compiled_metrics._conform_to_outputs(y_pred, labels))

    def _fit_arguments_without_autotuning(self, x, y, kwargs):
        """fit's (x, y, kwargs) with numpy training and validation arrays as data sets without
        tf.data's autotuning (`_numpy_without_autotuning`); `validation_split` split off first,
        as Keras does (the last rows, before shuffling)."""
        from tf_keras.src.engine import data_adapter  # Keras' own split of fit's arrays

        kwargs = dict(kwargs)
        if kwargs.get("validation_split") and kwargs.get("validation_data") is None and \
                _numpy_arrays(x, y, kwargs.get("sample_weight")) is not None:
            (x, y, sample_weight), kwargs["validation_data"] = data_adapter.train_validation_split(
                (x, y, kwargs.get("sample_weight")), kwargs.pop("validation_split"))
            kwargs["sample_weight"] = sample_weight
        validation = kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)) and len(validation) in (2, 3):
            validation_x, validation_y = self._checked(*validation[:2])
            evaluation = {"sample_weight": validation[2] if len(validation) == 3 else None,
                          "steps": kwargs.get("validation_steps"),
                          "batch_size": kwargs.get("validation_batch_size") or kwargs.get("batch_size")}
            validation_x, validation_y, evaluation = _numpy_without_autotuning(validation_x, validation_y, evaluation)
            kwargs["validation_data"] = validation_x if isinstance(validation_x, tf.data.Dataset) else \
                (validation_x, validation_y, evaluation.get("sample_weight"))
            kwargs["validation_steps"] = evaluation["steps"]
        epochs = kwargs.get("epochs", 1) - kwargs.get("initial_epoch", 0)
        # Keras ignores `shuffle` for a data set, so it may stay in kwargs
        return _numpy_without_autotuning(x, y, kwargs, shuffle=kwargs.get("shuffle", True), epochs=max(epochs, 1),
                                         steps="steps_per_epoch")

    def evaluate(self, x=None, y=None, *args, **kwargs):
        x, y = self._checked(x, y)
        kwargs = self._with_checked_sample_weight(x, kwargs)
        callbacks = _keras_argument(tf.keras.Model.evaluate, "callbacks", args, kwargs)
        # fit's validation passes its data set (`_use_cached_eval_dataset`), not these arrays
        if not args and not kwargs.get("_use_cached_eval_dataset") and not self._is_distributed():
            x, y, kwargs = _numpy_without_autotuning(x, y, kwargs)
        self._build_metrics(x if y is None else y, y is None)
        self.refresh_derived_weights()  # fit's validation too: training has moved the weights they derive from
        size_unknown = self._size_unknown(x, _keras_argument(tf.keras.Model.evaluate, "steps", args, kwargs))
        with self._one_step_per_execution(_hooks_batches(callbacks, "test") or size_unknown):
            return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        x, _ = self._checked(x, None)
        callbacks = _keras_argument(tf.keras.Model.predict, "callbacks", args, kwargs)
        if not args and not self._is_distributed():
            x, _, kwargs = _numpy_without_autotuning(x, None, kwargs)
        size_unknown = self._size_unknown(x, _keras_argument(tf.keras.Model.predict, "steps", args, kwargs))
        with self._one_step_per_execution(_hooks_batches(callbacks, "predict") or size_unknown):
            return super().predict(x, *args, **kwargs)

    # Keras 2 runs `steps_per_execution` steps per call of its train / test / predict function,
    # also in the *_on_batch methods, whose one batch then runs out at the second step. They run
    # the same (multi-step) function for one step.
    def train_on_batch(self, x, *args, **kwargs):
        refuse_positional_inputs(self, x)
        with self._one_step_per_execution():
            return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        refuse_positional_inputs(self, x)
        with self._one_step_per_execution():
            return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        refuse_positional_inputs(self, x)
        with self._one_step_per_execution():
            return super().predict_on_batch(x)

    def _size_unknown(self, data, steps):
        """Whether a call on `data` for `steps` should run one batch per call of Keras' functions
        because Keras cannot infer its size, and `compile` chose `steps_per_execution`."""
        if steps is not None or not getattr(self, "_tfrec_chose_steps_per_execution", False):
            return False
        if isinstance(data, tf.data.Dataset):
            return int(data.cardinality()) == tf.data.UNKNOWN_CARDINALITY
        return isinstance(data, Iterator)  # a generator: Keras' adapter for it has no size

    @contextlib.contextmanager
    def _validating_one_step_per_call(self, validation):
        """Within the block (a `fit`), fit's validation on the data set `validation` (unless None)
        reads it one batch per call, and the training keeps its steps per call.

        Keras' fit makes the data handler of its validation at the first validation, at the
        training's steps per call, and refuses data of unknown size there. The one made here, which
        fit then takes, counts one batch per call (its own setting, 1), as `evaluate` then runs
        fit's validation on such data (`_size_unknown`).
        """
        if validation is None:
            yield
            return
        from tf_keras.src.engine import data_adapter  # the handler Keras' fit keeps as `_eval_data_handler`

        self._eval_data_handler = data_adapter.get_data_handler(validation, epochs=1, model=self)
        try:
            yield
        finally:
            self._eval_data_handler = None  # as Keras' fit drops it when it ends, here also when it fails

    @contextlib.contextmanager
    def _one_step_per_execution(self, when=True):
        """Runs the block at one step per call of Keras' functions (`when`), then restores the setting.

        The functions are made first, at the compiled setting: Keras makes a one-step function
        for a setting of 1 and keeps it, and its data handler would then count 32 batches per
        call of it afterwards. A multi-step function reads the setting (a variable) at each call.
        """
        steps = self._steps_per_execution
        before = None if steps is None or not when else steps.numpy()
        if before is not None and before != 1:
            self.make_train_function()
            self.make_test_function()
            self.make_predict_function()
            steps.assign(1)
        try:
            yield
        except BaseException:
            # Restoring can fail for the same reason the block did (a lost parameter server
            # holds the variable): it must not replace that error with its own.
            if before is not None:
                with contextlib.suppress(Exception):
                    steps.assign(before)
            raise
        if before is not None:
            steps.assign(before)

    def _checked(self, x, y):
        """A dict of numpy / pandas features (and labels), checked against the model's Inputs.

        A DataFrame, or a list of arrays for a model of several inputs, is refused with what to
        pass instead.

        Mismatched row counts, None/NaN in a float feature, fractional or too-large integer ids
        raise a ValueError naming the feature (`feature_columns.check_inputs`), where Keras would
        fail deep in the graph (`ConcatOp : Dimension 0 ...`) or wrap an id around.
        """
        if hasattr(x, "columns") and hasattr(x, "iloc"):  # a pandas DataFrame
            # Keras would take the whole frame for one array: "Failed to convert a NumPy array to
            # a Tensor (Unsupported object type int)" or "expects 5 input(s), but it received 1".
            raise ValueError(f"model '{self.name}' takes a dict of features, not a DataFrame: pass "
                             f"tfrec.data.df_to_inputs(df, feature_columns) (it pads each history to its "
                             f"maxlen), or {{name: df[name] for name in model.input_names}} when every "
                             f"column already holds what its Input takes")
        refuse_positional_inputs(self, x)
        dtypes = {name: tensor.dtype.name for name, tensor in zip(self.input_names, self.inputs)}
        dtypes.update((key, "int32") for key in getattr(getattr(self, "_split", None), "indexed_keys", ()))
        self._check_looked_up_rows(x)
        x, y = check_inputs(x, dtypes, y, what=f"model '{self.name}'")
        if isinstance(x, Mapping):
            self._check_shapes(x)
            x = self._as_input_shapes(x)
            if y is not None:
                self._check_labels(y)
                y = _labels_per_row(y)
        if isinstance(x, tf.data.Dataset):
            features = x.element_spec[0] if isinstance(x.element_spec, tuple) and x.element_spec else x.element_spec
            if isinstance(features, Mapping):
                self._check_shapes(features)
            if isinstance(x.element_spec, tuple) and len(x.element_spec) > 1 and isinstance(x.element_spec[1], Mapping):
                self._check_labelled_outputs(x.element_spec[1])
        return x, y

    def _as_input_shapes(self, x):
        """{name: array} in one shape per Input: each (rows, 1) array of a (batch, 1) Input (a
        SparseFeat, a length, a DenseFeat(1)) as (rows,), and each (rows, events, 1) array of a
        sequence Input as (rows, events).

        Keras takes (rows,) or (rows, 1), but a predict / evaluate / fit traced for one and called
        with the other is traced again for inputs of unknown rank, in which the embeddings lose
        their width ("expected axis -1 of input shape to have value 8, but received input with
        shape (None, 4)"). (rows,) is what DeepCTR's scripts and tfrec's data sets give.
        (rows, maxlen, 1) is DeepCTR's shape of a VarLenSparseFeat's weights.
        """
        widths = {name: tensor.shape[-1] for name, tensor in zip(self.input_names, self.inputs)
                  if tensor.shape.rank == 2}

        def as_input(name, value):
            if name not in widths or not isinstance(value, np.ndarray):
                return value
            if widths[name] == 1 and value.ndim == 2 and value.shape[1] == 1:
                return value[:, 0]
            if widths[name] is None and value.ndim == 3 and value.shape[-1] == 1:
                return value[..., 0]
            return value

        return {name: as_input(name, value) for name, value in x.items()}

    def _check_shapes(self, x):
        """A ValueError naming the feature when {name: array} (or a data set's {name: TensorSpec})
        lacks an input, gives a sequence or a DenseFeat of dimension k one value per row, sends
        sequences of one event list (a history and its categories, times or weights) in different
        widths, or a negative true length.

        The last two are also checked in the graph (`RecentSequence`), but XLA drops such checks,
        so `fit` would train on misaligned events without a word."""
        split = getattr(self, "_split", None)
        if split is not None and any(block in x for block in split.packed):
            return  # fit's inputs, checked before it packed them (Keras' validation_split evaluates these)
        looked_up = {indexed_feature(key) for key in x}
        missing = [name for name in self.input_names if name not in x and name not in looked_up]
        if missing:
            raise ValueError(f"model '{self.name}': no data for input(s) {missing}; it takes "
                             f"{list(self.input_names)}")
        for name, tensor in zip(self.input_names, self.inputs):
            value = x.get(name)
            width = tensor.shape[-1] if tensor.shape.rank == 2 else None
            if isinstance(value, tf.TensorSpec) and value.shape.rank is not None:  # a data set's batches
                shape, given = tuple(value.shape), f"a data set of batches of shape {value.shape}"
            elif isinstance(value, np.ndarray):
                shape, given = value.shape, f"an array of shape {value.shape}"
            else:
                continue
            if width == 1 or tensor.shape.rank != 2:
                continue
            if tensor.dtype.is_floating and width is not None and shape[1:] != (width,):  # DenseFeat(k)
                raise ValueError(f"model '{self.name}': feature '{name}' needs (rows, {width}) numbers, got {given}")
            if len(shape) == 1:
                raise ValueError(f"model '{self.name}': feature '{name}' is a sequence and needs (rows, events) "
                                 f"values, padded after the events, got {given}")
        for layer in self._flatten_layers(include_self=False):
            if not isinstance(layer, RecentSequence):
                continue
            widths = {name: x[name].shape[1] for name in layer.names or () if getattr(x.get(name), "ndim", 0) > 1}
            if len(set(widths.values())) > 1:
                first, *others = widths
                other = next(name for name in others if widths[name] != widths[first])
                raise ValueError(f"model '{self.name}': '{other}' must hold one entry per event of '{first}' (the "
                                 f"same events' features, padded alike), but their widths differ "
                                 f"({widths[other]} and {widths[first]})")
            lengths = x.get(layer.length_name) if layer.length_name else None
            if isinstance(lengths, np.ndarray) and lengths.dtype.kind in "iuf" and lengths.size and lengths.min() < 0:
                row = int(np.flatnonzero(lengths.reshape(len(lengths), -1).min(axis=1) < 0)[0])
                raise ValueError(f"model '{self.name}': feature '{layer.length_name}' holds a negative length "
                                 f"in row {row}; it must be the number of events sent in the sequence (0 for none)")

    def _check_looked_up_rows(self, x):
        """A ValueError when `x` (a dict or a dataset of them) holds rows a pipeline looked up
        with other lookups than the model's own (`indexed_key`): e.g. columns inferred again from
        newer data, whose vocabulary gives other rows. The model would train and score the wrong
        embedding rows without a word."""
        keys = x.element_spec if isinstance(x, tf.data.Dataset) else x
        if isinstance(keys, tuple):
            keys = keys[0] if keys else None
        split = getattr(self, "_split", None)
        expected = split.indexed_key_of if split is not None else {}
        if not isinstance(keys, Mapping) or not expected:
            return
        for key in keys:
            name = indexed_feature(key)
            if name in expected and key != expected[name]:
                raise ValueError(
                    f"model '{self.name}': feature '{name}' was looked up with another vocabulary or table size than "
                    f"the model's (rows '{key}', the model's '{expected[name]}'), so its rows would stand for "
                    "other values; build the inputs with the columns the model was built with (a config run's "
                    "columns.json: tfrec.config.columns_from_json). A trained model's vocabularies do not grow: "
                    "new values share the out-of-vocabulary row until a model is trained on new columns")

    def _check_labels(self, y):
        """Labels as arrays: one per output (a list in output order or {output name: labels}),
        finite, and 0..1 for a binary head, or a ValueError naming the output and the row. A
        wrong label would otherwise train silently (ratings on a sigmoid head, one array for
        every head) or make every weight NaN for good."""
        outputs = list(self.output_names)
        if isinstance(y, Mapping):
            self._check_labelled_outputs(y)
            labels = {name: y[name] for name in outputs if name in y}
        elif isinstance(y, (list, tuple)) and len(outputs) > 1:
            if len(y) != len(outputs):
                raise ValueError(f"model '{self.name}' has {len(outputs)} outputs {outputs}, but {len(y)} label "
                                 "arrays were given; give one per output, in that order, or {output name: labels}")
            labels = dict(zip(outputs, y))
        elif isinstance(y, (list, tuple)) and len(y) == 1 and np.ndim(y[0]) >= 1:  # Keras' [labels] of one output
            labels = {outputs[0]: y[0]}
        elif len(outputs) > 1:
            raise ValueError(f"model '{self.name}' has {len(outputs)} outputs {outputs}, but one label array was "
                             "given, which would train every head on it; give a list of one per output, or "
                             "{output name: labels}")
        else:
            labels = {outputs[0]: y}
        widths = dict(zip(outputs, (tensor.shape[-1] for tensor in self.outputs)))
        for name, values in labels.items():
            values = np.asarray(values)
            if values.dtype.kind in "SU" or (values.dtype == object and values.size and
                                             isinstance(values.reshape(-1)[0], (str, bytes))):
                raise ValueError(f"model '{self.name}': output '{name}' needs numbers as labels, but they are "
                                 f"strings (e.g. {values.reshape(-1)[:3].tolist()}); convert them first (e.g. "
                                 "df['click'].astype(int))")
            if widths[name] == 1 and values.ndim == 2 and values.shape[1] != 1:
                raise ValueError(f"model '{self.name}': output '{name}' gives one number per row, but its labels "
                                 f"have shape {values.shape}; give (rows,) or (rows, 1) labels, one array per "
                                 "output")
            if values.ndim == 0 or values.dtype.kind not in "biuf":
                continue
            values = values.astype(np.float64)
            head = self._output_layer(name)
            binary = isinstance(head, PredictionLayer) and head.task == "binary"
            bad = ~np.isfinite(values) | ((values < 0) | (values > 1) if binary else False)
            if bad.any():
                row = int(np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))[0])
                need = "labels in [0, 1] (a binary head)" if binary else "finite labels"
                raise ValueError(f"model '{self.name}': output '{name}' needs {need}, but row {row} holds "
                                 f"{values.reshape(len(values), -1)[row].tolist()}")

    def _with_checked_sample_weight(self, x, kwargs):
        """`kwargs` with its `sample_weight` (an array, a pandas Series or a list, or {output name:
        one of those}) as float32 (rows,) arrays, or a ValueError naming the row. A NaN weight
        would make every weight of the model NaN for good, and a negative one train it away from
        its labels."""
        weights = kwargs.get("sample_weight")
        if weights is None or isinstance(weights, (tf.Tensor, tf.data.Dataset)):
            return kwargs
        rows = {len(value) for value in x.values() if hasattr(value, "__len__")} if isinstance(x, Mapping) else set()
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.output_names))
            if unknown:
                raise ValueError(f"model '{self.name}': sample_weight names {unknown}, which are not its outputs "
                                 f"{list(self.output_names)}")
            checked = {name: None if values is None else self._weights_per_row(values, rows, f"sample_weight['{name}']")
                       for name, values in weights.items()}
        elif isinstance(weights, (list, tuple)) and len(self.outputs) > 1 and len(weights) == len(self.outputs) and \
                all(values is None or hasattr(values, "__len__") for values in weights):  # one per output
            checked = [None if values is None else self._weights_per_row(values, rows, f"sample_weight['{name}']")
                       for name, values in zip(self.output_names, weights)]
        else:
            checked = self._weights_per_row(weights, rows, "sample_weight")
        return {**kwargs, "sample_weight": checked}

    def _weights_per_row(self, values, rows, what):
        values = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
        if values.dtype.kind not in "biuf" or values.ndim not in (1, 2) or values.ndim == 2 and values.shape[1] != 1:
            raise ValueError(f"model '{self.name}': {what} needs one number per row, as a (rows,) or (rows, 1) "
                             f"array, but has shape {values.shape} and dtype {values.dtype}")
        if len(rows) == 1 and len(values) not in rows:
            raise ValueError(f"model '{self.name}': {what} has {len(values)} rows, but the features have "
                             f"{rows.pop()}; give one weight per example")
        values = values.reshape(-1).astype(np.float32)
        bad = ~np.isfinite(values) | (values < 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"model '{self.name}': {what} needs finite weights >= 0, but row {row} holds "
                             f"{values[row]}")
        return values

    def _check_labelled_outputs(self, labels):
        """A ValueError when {output name: labels} lacks an output that has a loss: Keras would
        give that head a loss of 0 and never train it."""
        outputs = list(self.output_names)
        loss = getattr(self, "loss", None)
        with_loss = [name for i, name in enumerate(outputs)
                     if not (isinstance(loss, Mapping) and loss.get(name) is None)
                     and not (isinstance(loss, (list, tuple)) and i < len(loss) and loss[i] is None)]
        missing = [name for name in with_loss if name not in labels]
        if len(outputs) > 1 and missing:
            raise ValueError(f"model '{self.name}': no labels for output(s) {missing}, which would then never "
                             f"train (Keras gives them a loss of 0); label every output {outputs}, or compile "
                             "with loss None for the ones you do not train")

    def _output_layer(self, name):
        try:
            return self.get_layer(name)
        except ValueError:
            return None

    def refresh_derived_weights(self):
        """Recomputes weights derived from others, e.g. SIM's SimHash signatures of an item table.

        A layer with a `refresh_from(model)` method keeps such a cache for inference; `fit` calls
        this at the end of every epoch, before the callbacks (a ModelCheckpoint saves them fresh),
        and when it ends, `evaluate` (fit's validation too) before it starts, and the exporter
        before it writes a model, so in-process and served predictions read the same, up-to-date
        values.
        """
        for layer in self._flatten_layers(include_self=False):
            if hasattr(layer, "refresh_from"):
                layer.refresh_from(self)

    def _has_derived_weights(self):
        """Whether a layer keeps weights derived from others (`refresh_derived_weights`)."""
        return any(hasattr(layer, "refresh_from") for layer in self._flatten_layers(include_self=False))

    def _look_up_once(self, x, chunk_rows=65_536):
        """Numpy features -> their embedding rows, looked up once by the model's own layers.

        Keras slices numpy inputs batch by batch, and for raw strings that copy and the lookup
        would repeat at every step of every epoch; rows are int32 and are looked up only here.
        Anything else (a tf.data.Dataset, a generator, tensors) is returned as given.
        """
        if not isinstance(x, Mapping) or not all(isinstance(v, np.ndarray) for v in x.values()) or \
                getattr(self, "_split", None) is None or not self._split.indexed_names:
            return x
        rows = len(next(iter(x.values())))
        chunks = [self._split.lookup({k: v[i:i + chunk_rows] for k, v in x.items()}, training=False)
                  for i in range(0, rows, chunk_rows)]
        names = self._split.indexed_keys + self._split.raw_names
        return {name: np.concatenate([chunk[i].numpy() for chunk in chunks]) for i, name in enumerate(names)}

    def core_step_function(self):
        """The compiled part of a training step: (indexed, y, w) -> (y_pred, gradients); with the
        optimizer update inside (see `compile`) only the large tables' gradients are returned.

        A method, not an attribute, so SavedModel export does not serialise it.
        """
        return self._split.step

    def _step_inputs(self, data):
        """(x, (indexed, y, sample_weight)): a batch of `fit`'s data as the compiled step takes it."""
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        indexed = self._split.core_inputs(x)
        if indexed is None:
            indexed = self._split.lookup(x, training=True)
        return x, (indexed, y, _one_weight_per_row(sample_weight))

    def make_train_function(self, force=False):
        """Keras' train function. When the compiled step applies every update itself (see
        `compile`), one that reads its `steps_per_execution` batches first and trains those of the
        first one's shape in one XLA call (`_TrainingSplit.steps`, padded to that many steps so it
        compiles once); a batch of another shape and those after it get one compiled step each,
        as in Keras' own loop. Without that loop (a model with sequences, or a table updated after
        the step) and outside a distribution strategy, an epoch's partial last batch is trained
        by an eager step after the call instead (`_KeptBatch`, `_KeepingTrainFunction`)."""
        if self.train_function is not None and not force:
            return self.train_function
        function = self._train_function(force)
        if self._keeps_partial_batches():
            self.train_function = _KeepingTrainFunction(function, self._split.kept, self._eager_train_batch,
                                                        self.get_metrics_result)
        return self.train_function

    def _keeps_partial_batches(self):
        """Whether the training step keeps a partial batch for an eager step (`_KeptBatch`): with
        an XLA step but no XLA loop (`_TrainingSplit.steps`), outside a distribution strategy, and
        with Keras' own metrics update."""
        split = getattr(self, "_split", None)
        return split is not None and split.kept is not None and not self._is_distributed() \
            and not self.run_eagerly and not self._has_own_step()

    def _has_own_step(self):
        """Whether a subclass has its own train_step or compute_metrics, which its fit must run."""
        return type(self).train_step is not RecModel.train_step or \
            type(self).compute_metrics is not tf.keras.Model.compute_metrics

    def _train_function(self, force):
        split = getattr(self, "_split", None)
        steps = self._steps_per_execution
        if split is None or split.steps is None or self._has_own_step() \
                or self.run_eagerly or steps is None or self._cluster_coordinator is not None \
                or int(steps.numpy()) == 1:
            return super().make_train_function(force)
        in_one_call = int(steps.numpy())

        def train_function(iterator):
            requested = tf.cast(self._steps_per_execution, tf.int32)
            _, first = self._step_inputs(next(iterator))
            leaves = tf.nest.flatten(first)
            given = [t for t in leaves if t is not None]
            batches = [tf.TensorArray(t.dtype, size=requested, infer_shape=False).write(0, t) for t in given]

            def read(count, _, uniform, batches):
                # As an optional: data that ends within the call (a dataset of unknown length)
                # trains the batches read so far, then ends the epoch as Keras' loop does.
                optional = iterator.get_next_as_optional()

                def append():
                    batch = [t for t in tf.nest.flatten(self._step_inputs(optional.get_value())[1]) if t is not None]
                    same = tf.reduce_all([tf.reduce_all(tf.equal(tf.shape(t), tf.shape(f)))
                                          for t, f in zip(batch, given)])
                    return (tf.where(same & tf.equal(uniform, count), count + 1, uniform),
                            [b.write(count, t) for b, t in zip(batches, batch)])

                uniform, batches = tf.cond(optional.has_value(), append, lambda: (uniform, batches))
                return count + tf.cast(optional.has_value(), tf.int32), optional.has_value(), uniform, batches

            # count: the batches read; uniform: how many of them, from the first on, have its shape.
            count, _, uniform, batches = tf.while_loop(
                lambda count, more, *_: more & (count < requested), read,
                [tf.constant(1), tf.constant(True), tf.constant(1), batches])

            def restored(tensors, leading):
                """(indexed, y, sample_weight) from `tensors`, each given `leading` open dimensions."""
                tensors = iter(tensors)
                return tf.nest.pack_sequence_as(first, [None if leaf is None else tf.ensure_shape(
                    next(tensors), [None] * leading + leaf.shape[1:].as_list()) for leaf in leaves])

            # One batch a call (train_on_batch, per-batch callbacks) takes the one compiled step.
            looped = tf.where(requested > 1, uniform, 0)

            def in_one_loop():
                padding = tf.maximum(in_one_call - looped, 0)
                indexed, y, sample_weight = restored(
                    [tf.pad(b.gather(tf.range(looped)), [[0, padding]] + [[0, 0]] * leaf.shape.rank)
                     for b, leaf in zip(batches, given)], 2)
                y_pred = split.steps(looped, indexed, y, sample_weight)
                self.compiled_metrics.update_state(*tf.nest.map_structure(
                    lambda t: None if t is None else _merge_steps(t[:looped]), (y, y_pred, sample_weight)))
                with tf.control_dependencies(tf.nest.flatten(y_pred)):
                    return tf.constant(0)

            done = tf.cond(looped > 0, in_one_loop, lambda: tf.constant(0))

            def one_step(i):
                batch = restored([b.read(i) for b in batches], 1)
                with tf.control_dependencies(self._train_or_keep(batch)):  # the next step after this one
                    return i + 1

            trained = tf.while_loop(lambda i: i < count, one_step, [looped])
            self._train_counter.assign_add(tf.cast(count, self._train_counter.dtype))
            # Data that ran out within the call: its batches are trained first, then the exhausted
            # iterator's error ends the epoch, as in Keras' own loop. The iterator shares no variable
            # with the steps, and a control dependency of the tf.cond did not order the two (lowered,
            # its branch waits only for its predicate: the error came before the last batch trained
            # in 3 of 5 runs), so the predicate itself reads the steps' results.
            steps_done = tf.equal(done, 0) & (trained >= looped)
            tf.cond(steps_done & (count < requested), lambda: tf.shape(tf.nest.flatten(next(iterator))[0])[0],
                    lambda: 0)
            return self.get_metrics_result()

        self.train_tf_function = self.train_function = tf.function(train_function, reduce_retracing=True)
        return self.train_function

    def train_step(self, data):
        return self._traced_once(self._train_step, data)

    def test_step(self, data):
        return self._traced_once(self._test_step, data)

    def predict_step(self, data):
        return self._traced_once(self._predict_step, data)

    def _traced_once(self, step, data):
        """`step(data)`, as a tf.function of its own while Keras traces its train / test / predict
        function (outside a distribution strategy, which runs steps its own way).

        Keras runs `steps_per_execution` steps a call in a loop whose outputs are first assigned
        inside it, and AutoGraph traces such a loop's body twice. A tf.function called twice with
        the same input signature is traced once: for `evaluate` and `predict`, whose step is the
        whole model, that halves their tracing (a small DIN's first `predict`: 1.5-1.7 s -> 0.9-1.1 s).
        """
        split = getattr(self, "_split", None)
        if split is None or tf.executing_eagerly() or self._is_distributed():
            return step(data)
        if step.__name__ not in split.step_functions:
            split.step_functions[step.__name__] = tf.function(step)
        return split.step_functions[step.__name__](data)

    def _train_step(self, data):
        x, (indexed, y, sample_weight) = self._step_inputs(data)
        if not self._keeps_partial_batches():
            y_pred = self._train_batch(self._split.step, indexed, y, sample_weight)
            return self.compute_metrics(x, y, y_pred, sample_weight)
        with tf.control_dependencies(self._train_or_keep((indexed, y, sample_weight))):
            return self.get_metrics_result()

    def _train_or_keep(self, batch):
        """The compiled step and the metrics on `batch` (indexed, y, sample_weight), or the batch
        kept for `_eager_train_batch` (`_KeptBatch`). Returns tensors to wait for."""
        def train(batch):
            return self._train_and_measure(self._split.step, batch)

        if not self._keeps_partial_batches():
            return train(batch)
        return self._split.kept.train_or_keep(batch, train)

    def _eager_train_batch(self, batch):
        """A kept batch, trained eagerly by the step's Python function: no compilation for its shape."""
        self._train_and_measure(self._split.step.python_function, batch)

    def _train_and_measure(self, step, batch):
        """`_train_batch`, then the compiled metrics on its predictions. Returns them, flat."""
        y_pred = self._train_batch(step, *batch)
        self.compiled_metrics.update_state(batch[1], y_pred, batch[2])
        return tf.nest.flatten(y_pred)

    def _train_batch(self, step, indexed, y, sample_weight):
        """`step` (the compiled step or its Python function) on one batch, and the updates it
        leaves to do. Returns the predictions."""
        y_pred, gradients = step(indexed, y, sample_weight)
        pairs = [(g, v) for g, v in zip(gradients, self.trainable_variables) if g is not None]
        if not self._split.update_in_step:
            self.optimizer.apply_gradients(pairs)
        elif pairs:
            self.optimizer.update_rows_after_step(pairs)
        return y_pred

    def _test_step(self, data):
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        sample_weight = _one_weight_per_row(sample_weight)
        indexed = self._split.core_inputs(x)
        with evaluating():  # so layer metrics of training (CLSR's contrastive loss) get their val_ values
            if indexed is None:  # raw features: Keras' own step, fed the same float32 (batch,) weights
                return super().test_step(tf.keras.utils.pack_x_y_sample_weight(x, y, sample_weight))
            y_pred = self._split.core(indexed, training=False)
        self.compute_loss(x, y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _predict_step(self, data):
        x, _, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        indexed = self._split.core_inputs(x) if getattr(self, "_split", None) else None
        return super().predict_step(data) if indexed is None else self._split.core(indexed, training=False)


@tf.keras.utils.register_keras_serializable(package="tfrec")
class SharedHistoryModel(RecModel):
    """A RecModel whose layers broadcast one history row over every candidate row (DIN's
    attention, SIM's searches): called for inference (`model(x)`, `predict`, `evaluate`), it
    scores a batch whose rows repeat one history, as a DeepCTR-style caller sends one user's
    candidates, on that history's first row, as the export's `serving_default` does: the same
    scores, with the history searched once instead of once per row
    (`feature_columns.on_one_history`). Training steps never look.

    A class of its own rather than a flag, so that it saves, loads and `clone_model`s as a
    functional model does (a custom `get_config` would make Keras clone it from its config).
    """

    def call(self, inputs, training=None, mask=None):
        histories = history_input_names(self) if isinstance(inputs, Mapping) else []
        if (training is not None and training is not False) or not histories or \
                any(name not in inputs for name in histories):
            return super().call(inputs, training, mask)
        return on_one_history(lambda features: super(SharedHistoryModel, self).call(features, training, mask),
                              inputs, histories)


def history_model(inputs, outputs, history, name):
    """The model of a sequence model whose layers broadcast one history row over every candidate
    row, `history` its `feature_columns.History`: a `SharedHistoryModel` when every `hist_` input
    is read through that history, else a `RecModel` (a `hist_` sequence pooled into the DNN
    input has one row per candidate and would not broadcast)."""
    model = SharedHistoryModel(inputs=inputs, outputs=outputs, name=name)
    if set(history_input_names(model)) <= set(history.input_names):
        return model
    return RecModel(inputs=inputs, outputs=outputs, name=name)


def _build_optimizer(optimizer, variables):
    """Creates a Keras optimizer's slots for `variables` unless it has them (a no-op for a legacy
    optimizer), with the names one `apply_gradients` call gives them."""
    if isinstance(optimizer, tf.keras.optimizers.Optimizer):
        with tf.name_scope(optimizer.name), tf.init_scope():
            optimizer.build(variables)


def _merge_steps(stacked):
    """(steps, batch, ...) -> (steps * batch, ...)."""
    merged = tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], axis=0))
    return tf.ensure_shape(merged, [None] + stacked.shape[2:].as_list())


def _one_weight_per_row(sample_weight):
    """Sample weights as the compiled step always takes them, float32 (batch,): a pandas Series
    reaches a step as (batch, 1) float64, and a step traced for one form and then fed the other
    generalises to a shape XLA cannot compile ("Tried to explicitly squeeze dimension 0")."""
    return tf.nest.map_structure(
        lambda weights: None if weights is None else tf.reshape(tf.cast(weights, tf.float32), [-1]), sample_weight)


def _warn_of_ids_beyond_their_table(model_name, raw, rows, keys, share=0.01):
    """Warns, per feature, when more than `share` of the non-padding ids of the training rows
    are looked up as row 0: ids outside [0, vocabulary_size) of a plain integer column, which
    then share that one row (e.g. a table sized by nunique() for ids never label-encoded)."""
    for name, values in raw.items():
        looked_up = rows.get(keys.get(name))
        if looked_up is None or values.dtype.kind not in "iu" or looked_up.size != values.size:
            continue
        values, looked_up = values.reshape(-1), looked_up.reshape(-1)
        real = values != 0
        collapsed = real & (looked_up == 0)
        if real.any() and collapsed.sum() > share * real.sum():
            warnings.warn(f"model '{model_name}': {collapsed.sum() / real.sum():.0%} of feature '{name}''s ids "
                          f"(up to {values[collapsed].max()}) are outside its table and share row 0 (the padding / "
                          "out-of-vocabulary row); size the table by max() + 1, label-encode the ids, or give "
                          "the column a vocabulary", stacklevel=3)


def _numpy_arrays(*nests):
    """The arrays of `nests` (None left out) if all are numpy arrays, else None."""
    arrays = [a for a in tf.nest.flatten(list(nests)) if a is not None]
    return arrays if all(isinstance(a, np.ndarray) for a in arrays) else None


def _numpy_without_autotuning(x, y, kwargs, shuffle=False, epochs=1, steps="steps"):
    """(x, y, kwargs) of a `fit`, `evaluate` or `predict` whose x, y and sample weights are numpy
    arrays, given as the data set Keras would make of them, with tf.data's autotuning off.

    Keras feeds numpy arrays through one iterator per call (for all of fit's epochs), and deleting
    it waits for tf.data's autotuning thread to wake: 0-18 s after a fit of 20-30 s, 0-1.7 s after
    an evaluate or predict of 4-8 s (docs/training.md). The same data set (Keras' own numpy
    adapter: the same batches, per-epoch shuffle and sample weights) without autotuning ends at
    once. Its batch count goes to `kwargs[steps]` (Keras needs it with several steps per call).
    Other inputs, and calls given their number of steps, keep Keras' path.
    """
    from tf_keras.src.engine import data_adapter  # the adapter Keras uses for numpy arrays

    arrays = _numpy_arrays(x, y, kwargs.get("sample_weight"))
    if x is None or kwargs.get(steps) is not None or arrays is None or not arrays[0].ndim or not len(arrays[0]):
        return x, y, kwargs
    kwargs = dict(kwargs)
    adapter = data_adapter.TensorLikeDataAdapter(
        x, y, kwargs.pop("sample_weight", None), batch_size=kwargs.pop("batch_size", None), epochs=epochs,
        shuffle=shuffle)
    kwargs[steps] = adapter.get_size()
    return without_autotuning(adapter.get_dataset()), None, kwargs


def _position(method, name):
    """Where argument `name` of Keras' `method` (fit, evaluate or predict) stands among the
    positional arguments after its data (x, and y but for predict)."""
    return [p for p in inspect.signature(method).parameters if p not in ("self", "x", "y")].index(name)


def _keras_argument(method, name, args, kwargs):
    """Argument `name` of a call of Keras' `method` given `args` after its data and `kwargs`, or None."""
    at = _position(method, name)
    return kwargs.get(name, args[at] if len(args) > at else None)


class _RefreshingDerivedWeights(tf.keras.callbacks.Callback):
    """Refreshes the model's derived weights (`RecModel.refresh_derived_weights`) at each epoch's end."""

    def __init__(self, model):
        super().__init__()
        self.set_model(model)  # Keras sets the model of a list's callbacks, not of a CallbackList's

    def on_epoch_end(self, epoch, logs=None):
        self.model.refresh_derived_weights()


@contextlib.contextmanager
def _called_first(callbacks, callback):
    """Within the block, a `tf.keras.callbacks.CallbackList` `callbacks` calls `callback` (unless
    None) before its own: Keras' fit runs a CallbackList as given. It is as given after the block,
    for another fit. Other `callbacks` are left alone."""
    if callback is None or not isinstance(callbacks, tf.keras.callbacks.CallbackList):
        yield
        return
    callbacks.callbacks.insert(0, callback)
    try:
        yield
    finally:
        callbacks.callbacks.remove(callback)


def _hooks_batches(callbacks, mode):
    """Whether any of `callbacks` (a list, a single callback, a CallbackList, or None, as Keras takes
    them) has per-batch hooks for `mode` ("train", "test", "predict")."""
    if not isinstance(callbacks, tf.keras.callbacks.CallbackList):
        callbacks = tf.nest.flatten(callbacks)
    return any(getattr(c, f"_implements_{mode}_batch_hooks")() for c in callbacks
               if isinstance(c, tf.keras.callbacks.Callback))


def click_prediction(dnn_input, dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn, seed,
                     task):
    """DIN's top, shared by the ranking models on it: DNN -> logit (no bias) -> "prediction".

    dnn_input (batch, F) -> (batch, 1): a probability for task "binary", the logit for "regression".
    """
    hidden = DNN(dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn, seed=seed,
                 name="dnn")(dnn_input)
    logit = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer=tf.keras.initializers.GlorotNormal(seed),
                                  name="logit")(hidden)
    return PredictionLayer(task, name="prediction")(logit)


# `.h5` files name a Model subclass by its bare class name: make those names loadable without
# custom_objects, as the registered "tfrec>RecModel" is for SavedModels.
tf.keras.utils.get_custom_objects().update(RecModel=RecModel, SharedHistoryModel=SharedHistoryModel)
