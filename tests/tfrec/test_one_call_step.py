"""The multi-task fast path: LazyAdam's update inside the XLA step, 32 batches per Keras call."""
import time

import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat

from tfrec import optimizers
from tfrec.data import df_to_inputs, make_multitask_data, multitask_feature_columns
from tfrec.models import DIN, MMOE, base
from tfrec.models.base import STEPS_PER_EXECUTION
from tfrec.optimizers import LazyAdam


@pytest.fixture(scope="module")
def data():
    df = make_multitask_data(600, seed=0)
    columns = multitask_feature_columns(df)
    return columns, df_to_inputs(df, columns), [df["click"].to_numpy("float32"), df["conversion"].to_numpy("float32")]


def new_model(columns, **compile_args):
    tf.keras.utils.set_random_seed(5)
    model = MMOE(columns, seed=5)
    model.compile("adam", ["binary_crossentropy"] * 2, **compile_args)
    return model


def _lazy_step(table_value, gradient):
    table = tf.Variable(table_value)
    optimizer = LazyAdam(0.1)
    for _ in range(2):  # the second step starts from non-zero moments
        optimizer.apply_gradients([(gradient, table)])
    index = optimizer._index_dict[optimizer._var_key(table)]
    return table.numpy(), optimizer._momentums[index].numpy(), optimizer._velocities[index].numpy()


def test_masked_update_of_a_small_table_equals_the_row_update(monkeypatch):
    rng = np.random.default_rng(0)
    value = rng.normal(size=(6, 3)).astype(np.float32)
    gradient = tf.IndexedSlices(tf.constant(rng.normal(size=(4, 3)).astype(np.float32)), tf.constant([4, 1, 4, 0]),
                                tf.constant([6, 3]))
    masked = _lazy_step(value, gradient)
    monkeypatch.setattr(optimizers, "MASKED_UPDATE_MAX_SIZE", 0)  # every table takes the row update
    rows = _lazy_step(value, gradient)
    for a, b in zip(masked, rows):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(masked[0][[2, 3, 5]], value[[2, 3, 5]])  # rows outside the batch, bit for bit
    np.testing.assert_array_equal(masked[1][[2, 3, 5]], 0.0)


def test_a_large_tables_update_after_the_step_applies_its_constraint_as_apply_gradients_does():
    """A table too large for the masked update is updated after the XLA step (`update_rows_after_step`);
    Keras applies a variable's `constraint` after its update, and so must that path."""
    rows = optimizers.MASKED_UPDATE_MAX_SIZE // 2 + 1
    rng = np.random.default_rng(0)
    value = rng.uniform(0.0, 0.05, size=(rows, 2)).astype(np.float32)
    gradient = tf.IndexedSlices(tf.constant([[1.0, -1.0], [1.0, 1.0]]), tf.constant([3, 7]), tf.constant([rows, 2]))
    assert not LazyAdam().needs_no_unique([tf.Variable(value)])  # a table updated after the step

    def trained(after_step, constraint):
        table, dense = tf.Variable(value, constraint=constraint), tf.Variable([1.0])
        optimizer = LazyAdam(0.1)
        optimizer.build([dense, table])
        if after_step:
            optimizer.apply_gradients([(tf.constant([1.0]), dense)])
            optimizer.update_rows_after_step([(gradient, table)])
        else:
            optimizer.apply_gradients([(tf.constant([1.0]), dense), (gradient, table)])
        return table.numpy()

    for constraint in (tf.keras.constraints.NonNeg(), tf.keras.constraints.MaxNorm(0.05, axis=1)):
        expected = trained(after_step=False, constraint=constraint)
        np.testing.assert_allclose(trained(after_step=True, constraint=constraint), expected, rtol=1e-6)
        assert not np.allclose(trained(after_step=True, constraint=None), expected)  # the constraint moved it


def test_small_tables_update_inside_the_xla_step_and_large_ones_outside(data):
    columns, _, _ = data
    model = new_model(columns)
    assert model._split.update_in_step and int(model.steps_per_execution.numpy()) == STEPS_PER_EXECUTION
    assert new_model(columns, jit_compile=False)._split.update_in_step is False
    large = [SparseFeat("item_id", optimizers.MASKED_UPDATE_MAX_SIZE // 4 + 1, 8, dtype="int32"), DenseFeat("price")]
    mixed = new_model(large)
    assert mixed._split.update_in_step and [t.name for t in mixed._split.row_tables] == ["emb_item_id/embeddings:0"]
    # Clipping needs every gradient in one call, AMSGrad Keras' own step count: all of the update follows it.
    for optimizer in (tf.keras.optimizers.Adam(clipnorm=1.0), tf.keras.optimizers.Adam(amsgrad=True)):
        whole = MMOE(large, seed=5)
        whole.compile(optimizer, ["binary_crossentropy"] * 2)
        assert whole._split.update_in_step is False


def test_large_tables_updated_after_the_xla_call_train_like_one_update(data):
    """Dense weights and small tables updated inside the XLA call, a large table after it (same
    step number): the same training as every weight updated by one apply_gradients after it."""
    columns, x, y = data
    large = [c._replace(vocabulary_size=optimizers.MASKED_UPDATE_MAX_SIZE // c.embedding_dim + 1)
             if c.name == "user_id" else c for c in columns]
    split, whole = new_model(large), new_model(large, jit_compile=False, steps_per_execution=1)
    assert [t.name for t in split._split.row_tables] == ["emb_user_id/embeddings:0"]
    assert whole._split.update_in_step is False
    for model in (split, whole):
        model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 2 * int(np.ceil(len(y[0]) / 64))  # one count per step
    for a, b in zip(split.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-4)
    for a, b in zip(split.optimizer.variables(), whole.optimizer.variables()):
        assert a.name == b.name
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4)


def test_every_batch_trains_and_batch_callbacks_see_every_batch(data):
    columns, x, y = data
    batches = int(np.ceil(len(y[0]) / 64))
    model = new_model(columns)
    model.train_on_batch({k: v[:64] for k, v in x.items()}, [v[:64] for v in y])  # one step, before any fit
    model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert int(model.optimizer.iterations) == 1 + 2 * batches
    # Keras takes a list of callbacks, a single one or a CallbackList.
    for wrap in (lambda c: [c], lambda c: c, lambda c: tf.keras.callbacks.CallbackList([c], model=model)):
        seen = []
        model.fit(x, y, batch_size=64, verbose=0, callbacks=wrap(
            tf.keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))))
        assert seen == list(range(batches)) and int(model.steps_per_execution.numpy()) == STEPS_PER_EXECUTION
    assert int(model.optimizer.iterations) == 1 + 5 * batches


def test_one_call_step_trains_like_the_step_without_xla(data):
    columns, x, y = data
    fast, plain = new_model(columns), new_model(columns, jit_compile=False, steps_per_execution=1)
    for model in (fast, plain):
        model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(fast.predict(x, verbose=0), plain.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=2e-4)


def test_batches_of_one_shape_train_in_one_xla_loop_as_one_step_each(data):
    """At 32 batches per Keras call, `fit` trains the batches of the first one's shape in one XLA
    loop (`_TrainingSplit.steps`) and an epoch's partial last batch on its own: the same losses,
    weights and step count as one compiled step per call. Data that ends within a call (shorter
    than `steps_per_epoch` says) trains every batch it read, then ends training, as in Keras' loop."""
    columns, x, y = data
    looped, stepped = new_model(columns), new_model(columns, steps_per_execution=1)
    batches = int(np.ceil(len(y[0]) / 7))  # 85 of 7 rows and one of 5: two calls of 32, one of 22
    in_loops, loop = tf.Variable(0), looped._split.steps

    @tf.function
    def counted(count, *batches):  # counts the batches the XLA loop trains
        in_loops.assign_add(count)
        return loop(count, *batches)

    looped._split.steps = counted
    traced, core_call = [], looped._split.core.call  # the core's calls while a function traces it
    looped._split.core.call = lambda *args, **kwargs: traced.append(not tf.executing_eagerly()) or \
        core_call(*args, **kwargs)
    histories = [model.fit(x, y, batch_size=7, epochs=2, shuffle=False, verbose=0).history
                 for model in (looped, stepped)]
    assert int(in_loops.numpy()) == 2 * (batches - 1)  # all but each epoch's partial batch
    # The loop runs the partial batch's compiled step: one trace for both, and no eager step
    # (which a model without the loop takes instead: tests/tfrec/test_training_path.py).
    assert traced == [True] and looped._split.kept is None
    traces = loop.experimental_get_tracing_count()
    for name, values in histories[1].items():
        np.testing.assert_allclose(histories[0][name], values, rtol=1e-6)
    unknown_length = tf.data.Dataset.from_tensor_slices((x, tuple(y))).batch(7).filter(lambda *_: True)
    assert unknown_length.cardinality() == tf.data.UNKNOWN_CARDINALITY
    for model in (looped, stepped):
        model.fit(unknown_length, epochs=1, steps_per_epoch=batches + 20, verbose=0)
        assert int(model.optimizer.iterations) == 3 * batches
    assert loop.experimental_get_tracing_count() == traces  # a short call is padded, not retraced
    assert int(in_loops.numpy()) == 3 * (batches - 1)
    for a, b in zip(looped.get_weights(), stepped.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)

    class OwnStep(type(looped)):  # a subclass's own train_step is what its fit runs
        def train_step(self, data):
            return super().train_step(data)

    own = OwnStep(looped.inputs, looped.outputs)
    own.compile("adam", ["binary_crossentropy"] * 2)
    own.fit(x, y, batch_size=7, verbose=0)
    assert own._split.steps.experimental_get_tracing_count() == 0
    # A model with behaviour sequences keeps one XLA call per step (its steps are long).
    din = DIN([SparseFeat("item_id", 20, 4), VarLenSparseFeat(SparseFeat("hist_item_id", 20, 4, embedding_name="item_id"),
                                                             maxlen=5)], ["item_id"])
    din.compile("adam", "binary_crossentropy")
    assert din._split.update_in_step and din._split.steps is None


def test_data_of_unknown_size_runs_one_batch_per_call_unless_the_user_set_the_steps(data):
    """Keras refuses data whose size it cannot infer (a filtered data set, a generator) at more
    than one batch per call: the default compile runs such a call one batch per call, so it works
    as in Keras, and keeps its 32 batches per call (the XLA loop) for the other calls."""
    columns, x, y = data
    known = tf.data.Dataset.from_tensor_slices((x, tuple(y))).batch(64)
    unknown = known.filter(lambda *_: True)
    batches = int(known.cardinality())

    def generator():
        yield from known.as_numpy_iterator()

    model = new_model(columns)
    history = model.fit(known, validation_data=unknown, verbose=0).history
    assert len(history["val_loss"]) == 1 and int(model.optimizer.iterations) == batches
    model.fit(unknown, verbose=0)
    model.fit(generator(), verbose=0)
    assert int(model.optimizer.iterations) == 3 * batches
    np.testing.assert_allclose(model.evaluate(unknown, verbose=0), model.evaluate(known, verbose=0), rtol=1e-6)
    for a, b in zip(model.predict(unknown.map(lambda x, _: x), verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert int(model.steps_per_execution.numpy()) == STEPS_PER_EXECUTION

    chosen = new_model(columns, steps_per_execution=4)
    with pytest.raises(ValueError, match="Could not infer the size of the data"):
        chosen.evaluate(unknown, verbose=0)


def test_validation_data_of_unknown_size_leaves_the_training_its_batches_per_call(data):
    """Only fit's validation runs one batch per call when only the validation data has an unknown
    size: the whole fit did, training too (the XLA loop of 32 steps then never ran)."""
    columns, x, y = data
    known = tf.data.Dataset.from_tensor_slices((x, tuple(y))).batch(64)
    unknown = known.filter(lambda *_: True)
    model = new_model(columns)
    seen = {"training": [], "validation": []}

    def steps_per_call(part):
        return lambda *_: seen[part].append(int(model.steps_per_execution.numpy()))

    history = model.fit(known, validation_data=unknown, epochs=2, verbose=0, callbacks=[
        tf.keras.callbacks.LambdaCallback(on_epoch_begin=steps_per_call("training"),
                                          on_test_begin=steps_per_call("validation"))]).history
    batches = int(known.cardinality())  # 10: Keras runs at most an epoch's batches per call
    assert seen == {"training": [min(batches, STEPS_PER_EXECUTION)] * 2, "validation": [1, 1]}
    assert int(model.optimizer.iterations) == 2 * batches
    np.testing.assert_allclose(history["val_loss"][-1], model.evaluate(known, verbose=0)[0], rtol=1e-6)
    assert getattr(model, "_eval_data_handler", None) is None  # a later fit makes its own


def test_numpy_fit_evaluate_and_predict_match_keras_numpy_path_and_end_with_their_work(data, monkeypatch):
    """fit (its training and validation data, given or split off by validation_split), evaluate and
    predict feed numpy arrays through Keras' own numpy data set with tf.data's autotuning off: the
    same batches (in order here, with sample weights and class weights) give the same weights,
    losses and scores as Keras' numpy path, and fit returns when its last epoch ends (deleting
    Keras' autotuned iterator waited up to seconds, docs/training.md)."""
    columns, x, y = data
    weights = np.linspace(0.5, 1.5, len(y[0])).astype("float32")
    held_out = ({k: v[:300] for k, v in x.items()}, [v[:300] for v in y], weights[:300])
    din_columns = [SparseFeat("item_id", 20, 4),
                   VarLenSparseFeat(SparseFeat("hist_item_id", 20, 4, embedding_name="item_id"), maxlen=5)]
    rng = np.random.default_rng(0)
    din_x = {"item_id": rng.integers(1, 20, 200), "hist_item_id": rng.integers(0, 20, (200, 5))}
    ended = []
    timer = tf.keras.callbacks.LambdaCallback(on_train_end=lambda logs: ended.append(time.perf_counter()))

    def run():
        fed.clear()
        model = new_model(columns)
        split = model.fit(x, y, batch_size=64, epochs=3, shuffle=False, sample_weight=weights, validation_split=0.25,
                          verbose=0, callbacks=[timer]).history
        after_last_epoch = time.perf_counter() - ended[-1]
        given = model.fit(x, y, batch_size=64, validation_data=held_out, validation_batch_size=50, verbose=0).history
        evaluated = model.evaluate(x, y, batch_size=50, sample_weight=weights, verbose=0, return_dict=True)
        tf.keras.utils.set_random_seed(5)
        din = DIN(din_columns, ["item_id"], seed=5)
        din.compile("adam", "binary_crossentropy", jit_compile=False)
        din.fit(din_x, (din_x["item_id"] % 2).astype("float32"), batch_size=32, class_weight={0: 1.0, 1: 3.0},
                shuffle=False, verbose=0)
        return [split, given, evaluated], model.predict(x, batch_size=50, verbose=0) + din.get_weights(), \
            after_last_epoch

    fed, as_dataset = [], base._numpy_without_autotuning
    monkeypatch.setattr(base, "_numpy_without_autotuning",
                        lambda *args, **kwargs: fed.append(as_dataset(*args, **kwargs)) or fed[-1])
    ours = run()
    # each fit's validation and training data, evaluate's, the DIN fit's and predict's
    assert len(fed) == 7 and all(isinstance(x, tf.data.Dataset) and y is None for x, y, _ in fed)
    assert [(kwargs["steps_per_epoch"], kwargs.get("validation_steps")) for _, _, kwargs in fed
            if "steps_per_epoch" in kwargs] == [(8, 3), (10, 6), (7, None)]
    assert ours[2] < 1.0
    monkeypatch.setattr(base, "_numpy_without_autotuning", lambda x, y, kwargs, **_: (x, y, kwargs))
    keras_path = run()
    for a, b in zip(ours[0], keras_path[0]):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=name)
    for a, b in zip(ours[1], keras_path[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
