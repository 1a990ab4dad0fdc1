"""The training path every model shares: compiled fit over raw strings, lazy row updates, resume."""
import os

import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import SparseEmbedding

import exporters
from tfrec.data import df_to_dataset, df_to_inputs
from tfrec.data.retrieval import make_retrieval_data, retrieval_feature_columns, retrieval_samples
from tfrec.models import SharedHistoryModel, YoutubeDNN
from tfrec.optimizers import LazyAdam
from tfrec.recipes import build_din, planted_din_data
from tfrec.utils import NegativeSampler

BATCH = 64


@pytest.fixture(scope="module")
def small():
    _, train_df, test_df, columns = planted_din_data(users=150, items=120, events_per_user=16)
    return train_df, test_df, columns


def signature_value(array):
    """What a client sends: raw ids as str, integers as int64 (the signature's type), floats as they are."""
    if array.dtype == object:
        return array.astype(str)
    return array.astype(np.int64) if np.issubdtype(array.dtype, np.integer) else array


def new_model(columns, **compile_args):
    tf.keras.utils.set_random_seed(3)
    model = build_din(columns, seed=3)
    model.compile(compile_args.pop("optimizer", "adam"), "binary_crossentropy", **compile_args)
    return model


def batch(df, columns, start):
    rows = df.iloc[start:start + BATCH]
    return df_to_inputs(rows, columns), rows["click"].to_numpy(np.float32)


@pytest.fixture(scope="module")
def trained(small):
    train_df, _, columns = small
    model = new_model(columns)
    model.fit(df_to_dataset(train_df, columns, "click", batch_size=BATCH, seed=0), epochs=1, verbose=0)
    return model


def test_raw_string_model_trains_compiled_and_its_export_takes_raw_strings(small, trained, tmp_path):
    _, test_df, columns = small
    assert columns[0].dtype == "string"
    step = trained.core_step_function()
    assert step._jit_compile is True
    assert step.experimental_get_tracing_count() >= 1  # fit went through the compiled step
    # The compiled part really is XLA: its HLO exists and holds no string lookup.
    indexed = trained._split.lookup(df_to_inputs(test_df.head(4), columns))
    hlo = step.experimental_get_compiler_ir(indexed, tf.zeros([4]), None)(stage="hlo")
    assert "HloModule" in hlo and "LookupTable" not in hlo

    inputs = df_to_inputs(test_df.head(50), columns)
    path = exporters.export_saved_model(trained, str(tmp_path / "din"), warmup_inputs=inputs)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(**{name: tf.constant(signature_value(value)) for name, value in inputs.items()})
    (scores,) = served.values()
    np.testing.assert_allclose(scores.numpy().reshape(-1), trained.predict(inputs, verbose=0).reshape(-1),
                               atol=1e-6)


def test_fit_evaluate_and_predict_trace_their_step_once_and_keras_names_the_metrics_as_ever(small):
    """`fit` makes the optimizer's slots and the metrics before it first calls its training
    function: a tf.function that makes variables while it traces is traced a second time, and
    the step's trace is most of a small model's first epoch. So on numpy arrays and on a data set
    alike, with an epoch's partial last batch, the step is traced once; and the metrics keep the
    names Keras gives them inside its trace, not numbered on from the metrics made before.
    Keras' loop of `steps_per_execution` steps traces its body twice; the steps it calls are
    traced once. `evaluate` before any `fit` makes the metrics first too."""
    train_df, test_df, columns = small
    x, y = df_to_inputs(train_df, columns), train_df["click"].to_numpy(np.float32)
    assert len(train_df) % 100
    tf.keras.metrics.AUC()  # "auc" taken in this process: one more made here would be "auc_1"
    for data in ({"x": x, "y": y, "batch_size": 100}, {"x": df_to_dataset(train_df, columns, "click", 100, seed=0)}):
        model = new_model(columns, metrics=["AUC"])
        history = model.fit(**data, epochs=2, verbose=0,
                            validation_data=(df_to_inputs(test_df, columns), test_df["click"].to_numpy(np.float32)))
        assert model.train_function.experimental_get_tracing_count() == 1
        assert model.core_step_function().experimental_get_tracing_count() == 1
        assert sorted(history.history) == ["auc", "loss", "val_auc", "val_loss"]
        model.predict(x, batch_size=100, verbose=0)
        steps = model._split.step_functions
        assert sorted(steps) == ["_predict_step", "_test_step", "_train_step"]
        assert all(step.experimental_get_tracing_count() == 1 for step in steps.values())
    fresh = new_model(columns, metrics=["AUC"])  # evaluated before any fit, as a loaded model is
    assert sorted(fresh.evaluate(x, y, batch_size=100, verbose=0, return_dict=True)) == ["auc", "loss"]
    assert fresh._split.step_functions["_test_step"].experimental_get_tracing_count() == 1


def test_a_partial_last_batch_trains_in_an_eager_step_instead_of_a_second_compilation(small):
    """XLA compiles the step for every batch shape. An epoch's partial last batch is kept by the
    training function and trained by one eager step after its call (`_KeptBatch`): nothing is
    lost or repeated, and the model trains as one whose every batch takes the same step without
    XLA. Once the eager steps have taken as long as the first call, the compiled step trains the
    partial batch (compiling for it once), so a long fit pays at most about that much."""
    train_df, test_df, columns = small
    x, y = df_to_inputs(train_df, columns), train_df["click"].to_numpy(np.float32)
    batches = -(-len(y) // 100)
    assert len(y) % 100
    kept, plain = new_model(columns), new_model(columns, jit_compile=False)
    for model in (kept, plain):
        model.fit(x, y, batch_size=100, epochs=2, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 2 * batches
    assert kept._split.kept.eager_steps == 2 and plain._split.kept is None
    assert kept.core_step_function().experimental_get_tracing_count() == 1
    test = df_to_inputs(test_df, columns)
    np.testing.assert_allclose(kept.predict(test, verbose=0), plain.predict(test, verbose=0), atol=2e-4)
    kept.train_function.budget_s = 0.0  # the next eager step uses up the budget
    kept.fit(x, y, batch_size=100, epochs=2, shuffle=False, verbose=0)
    assert kept._split.kept.eager_steps == 3 and int(kept.optimizer.iterations) == 4 * batches
    assert kept.train_function.experimental_get_tracing_count() == 1


def test_rows_looked_up_by_the_pipeline_train_and_predict_like_raw_values(small):
    train_df, test_df, columns = small
    x, y = batch(train_df, columns, 0)
    from_raw, from_rows = new_model(columns), new_model(columns)
    from_raw.train_on_batch(x, y)
    from_rows.train_on_batch(feature_columns.look_up_rows(columns, x), y)
    for a, b in zip(from_raw.get_weights(), from_rows.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    rows = df_to_dataset(test_df.head(100), columns, "click", shuffle=False)
    raw = df_to_dataset(test_df.head(100), columns, "click", shuffle=False, look_up=False)
    np.testing.assert_allclose(from_rows.predict(rows, verbose=0), from_rows.predict(raw, verbose=0), atol=1e-6)
    np.testing.assert_allclose(from_rows.evaluate(rows, verbose=0), from_rows.evaluate(raw, verbose=0), rtol=1e-6)


def test_compile_makes_adam_lazy_and_keeps_other_optimizers(small):
    columns = small[2]
    assert type(new_model(columns).optimizer) is LazyAdam
    tuned = new_model(columns, optimizer=tf.keras.optimizers.Adam(0.02, beta_1=0.8))
    assert type(tuned.optimizer) is LazyAdam
    assert np.isclose(float(tuned.optimizer.learning_rate), 0.02) and tuned.optimizer.beta_1 == 0.8
    assert type(new_model(columns, optimizer="sgd").optimizer) is tf.keras.optimizers.SGD
    assert new_model(columns, jit_compile=False).core_step_function()._jit_compile is False


def _table_state(model):
    """{variable name: value} for every embedding table, its Adam moments and its counts."""
    optimizer, state = model.optimizer, {}
    for layer in model.layers:
        if isinstance(layer, SparseEmbedding):
            index = optimizer._index_dict[optimizer._var_key(layer.embeddings)]
            state[layer.name] = layer.embeddings.numpy()
            state[layer.name + "/m"] = optimizer._momentums[index].numpy()
            state[layer.name + "/v"] = optimizer._velocities[index].numpy()
            state[layer.name + "/counts"] = layer.counts.numpy()
    return state


def test_a_step_leaves_rows_outside_the_batch_bit_identical(small):
    train_df, _, columns = small
    model = new_model(columns, optimizer=tf.keras.optimizers.Adam(0.01))
    for start in (0, BATCH):  # two steps, so moments are non-zero before the one we check
        model.train_on_batch(*batch(train_df, columns, start))
    x, y = batch(train_df, columns, 5 * BATCH)
    before = _table_state(model)
    dense_before = model.get_layer("dnn").get_weights()
    model.train_on_batch(x, y)
    after = _table_state(model)

    # The rows each table's lookups hit in this batch, by the feature each lookup belongs to.
    table_of = {c.name: "emb_" + c.embedding_name for c in columns}
    used = {}
    for name, ids in zip(model._split.indexed_names, model._split.lookup(x)):
        used.setdefault(table_of[name], set()).update(np.unique(ids.numpy()).tolist())

    for table, rows in used.items():
        untouched = np.setdiff1d(np.arange(before[table].shape[0]), sorted(rows))
        assert len(untouched) > 0
        for suffix in ("", "/m", "/v", "/counts"):
            np.testing.assert_array_equal(after[table + suffix][untouched], before[table + suffix][untouched],
                                          err_msg=f"{table}{suffix} changed outside the batch")
        touched = sorted(rows - {0})
        assert not np.array_equal(after[table][touched], before[table][touched])
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_layer("dnn").get_weights(), dense_before))


def test_lazy_adam_false_keeps_keras_adam_through_save_and_load(small, tmp_path):
    """`compile(..., lazy_adam=False)`: Keras' Adam as given, whose step moves rows outside the
    batch (their moments decay); a `.keras` file keeps the choice, and the loaded model's next
    step is the original's."""
    train_df, _, columns = small
    model = new_model(columns, optimizer=tf.keras.optimizers.Adam(0.01), lazy_adam=False)
    assert type(model.optimizer) is tf.keras.optimizers.Adam
    for start in (0, BATCH):
        model.train_on_batch(*batch(train_df, columns, start))
    x, y = batch(train_df, columns, 5 * BATCH)
    before = _table_state(model)
    model.save(str(tmp_path / "din.keras"))
    model.train_on_batch(x, y)
    used = np.unique(model._split.lookup(x)[0].numpy())  # the first lookup's table: emb_user_id
    table = "emb_" + next(c.embedding_name for c in columns if c.name == model._split.indexed_names[0])
    untouched = np.setdiff1d(np.arange(before[table].shape[0]), used)
    moved = np.any(_table_state(model)[table][untouched] != before[table][untouched], axis=1)
    assert moved.any()  # rows with moments from the earlier steps, not in this batch

    loaded = tf.keras.models.load_model(str(tmp_path / "din.keras"))
    assert type(loaded.optimizer) is tf.keras.optimizers.Adam and loaded.get_compile_config()["lazy_adam"] is False
    loaded.train_on_batch(x, y)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_lazy_adam_matches_adam_on_dense_and_sums_repeated_rows():
    dense_lazy, dense_adam = tf.Variable(np.ones((3, 2), np.float32)), tf.Variable(np.ones((3, 2), np.float32))
    lazy, adam = LazyAdam(0.1), tf.keras.optimizers.Adam(0.1)
    for step in range(3):
        gradient = tf.constant(np.full((3, 2), step + 1.0, np.float32))
        lazy.apply_gradients([(gradient, dense_lazy)])
        adam.apply_gradients([(gradient, dense_adam)])
    np.testing.assert_allclose(dense_lazy.numpy(), dense_adam.numpy(), rtol=1e-6)

    table = tf.Variable(np.zeros((4, 1), np.float32))
    LazyAdam(0.1).apply_gradients([(tf.IndexedSlices(tf.constant([[1.0], [2.0], [-4.0]]), tf.constant([2, 2, 0]),
                                                     tf.constant([4, 1])), table)])
    # One Adam step moves a row by lr * sign(summed gradient): row 2 got 1 + 2, row 0 got -4.
    np.testing.assert_allclose(table.numpy().ravel(), [0.1, 0.0, -0.1, 0.0], atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_lazy_adam_with_amsgrad_sums_repeated_rows_of_a_small_table_as_keras_does(jit_compile):
    """AMSGrad is Keras' update, which squares each row's summed gradient: a row hit twice by a
    step on a small table must not get the sum of the squares (the masked update's shortcut)."""
    def one_step(optimizer):
        table = tf.Variable(np.ones((4, 2), np.float32))
        optimizer.build([table])
        gradient = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 1]), tf.constant([4, 2]))
        tf.function(lambda: optimizer.apply_gradients([(gradient, table)]), jit_compile=jit_compile)()
        return table.numpy(), optimizer._velocities[0].numpy()

    lazy_table, lazy_v = one_step(LazyAdam(0.1, amsgrad=True))
    adam_table, adam_v = one_step(tf.keras.optimizers.Adam(0.1, amsgrad=True))
    np.testing.assert_allclose(lazy_v, adam_v, rtol=1e-6)  # row 1: (1 - beta_2) * 2^2 = 0.004
    np.testing.assert_allclose(lazy_table, adam_table, rtol=1e-6)
    assert not LazyAdam(amsgrad=True).needs_no_unique([tf.Variable(np.ones((4, 2), np.float32))])


def test_weight_decay_decays_every_row_of_a_large_table_under_the_default_compile():
    """Keras' Adam decays every weight at every step; a table too large for the masked update,
    updated after the XLA step, must be decayed too (its unused rows move by weight decay only)."""
    from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat
    from tfrec.models import DIN
    from tfrec.optimizers import MASKED_UPDATE_MAX_SIZE

    users = MASKED_UPDATE_MAX_SIZE // 4 + 10  # a large table: more weights than the masked update takes
    columns = [SparseFeat("user_id", users, 4), SparseFeat("item_id", 8, 4), DenseFeat("price", 1),
               VarLenSparseFeat(SparseFeat("hist_item_id", 8, 4, embedding_name="item_id"), maxlen=3)]
    rng = np.random.default_rng(0)
    x = {"user_id": rng.integers(1, 10, 64), "item_id": rng.integers(1, 8, 64),
         "price": rng.random(64).astype(np.float32), "hist_item_id": rng.integers(0, 8, (64, 3))}
    y = (x["item_id"] % 2).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = DIN(columns, ["item_id"], dnn_hidden_units=(8,), att_hidden_size=(4,), seed=0, l2_reg_embedding=0)
    model.compile(tf.keras.optimizers.Adam(0.05, weight_decay=0.5), "binary_crossentropy")
    table = model.get_layer("emb_user_id").embeddings
    unused = table.numpy()[10:]  # rows no example looks up
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    assert model._split.update_in_step and any(t is table for t in model._split.row_tables)  # after the XLA step
    # Four steps, each multiplying every weight by 1 - learning rate * weight decay.
    np.testing.assert_allclose(table.numpy()[10:], unused * (1 - 0.05 * 0.5) ** 4, rtol=1e-5, atol=1e-7)


def test_lazy_adam_builds_the_step_scalars_once_for_every_weight_of_a_traced_step():
    """Keras' Adam builds beta_1^t, beta_2^t and the step size for each weight; LazyAdam builds
    them once per traced step (they were ~40% of the operations tracing an update adds) and still
    updates dense weights exactly as Adam, and tables as its own eager update does."""
    shapes = [(3, 2), (2,), (4, 4)]

    def table_gradient(scale):  # rows 2 and 0 of a (4, 1) table
        return tf.IndexedSlices(scale * tf.constant([[1.0], [-4.0]]), tf.constant([2, 0]), tf.constant([4, 1]))

    def train(optimizer, steps=3):
        weights = [tf.Variable(np.ones(shape, np.float32)) for shape in shapes]
        table = tf.Variable(np.zeros((4, 1), np.float32))

        @tf.function
        def step(scale):
            dense = [(tf.fill(w.shape, scale * (i + 1)), w) for i, w in enumerate(weights)]
            optimizer.apply_gradients(dense + [(table_gradient(scale), table)])

        for i in range(steps):
            step(tf.constant(i + 1.0))
        powers = sum(op.type == "Pow" for op in step.get_concrete_function(tf.constant(1.0)).graph.get_operations())
        return [w.numpy() for w in weights], table.numpy(), powers

    lazy_weights, lazy_table, lazy_powers = train(LazyAdam(0.1))
    adam_weights, _, adam_powers = train(tf.keras.optimizers.Adam(0.1))
    assert lazy_powers == 2 and adam_powers == 2 * (len(shapes) + 1)
    for lazy, adam in zip(lazy_weights, adam_weights):
        np.testing.assert_array_equal(lazy, adam)

    eager = LazyAdam(0.1)
    table = tf.Variable(np.zeros((4, 1), np.float32))
    for i in range(3):
        eager.apply_gradients([(table_gradient(i + 1.0), table)])
    np.testing.assert_array_equal(lazy_table, table.numpy())


def test_save_load_and_checkpoint_resume_keep_the_optimizer_state(small, trained, tmp_path):
    train_df, test_df, columns = small
    inputs = df_to_inputs(test_df.head(32), columns)
    expected = trained.predict(inputs, verbose=0)

    trained.save(str(tmp_path / "din.h5"))
    loaded = tf.keras.models.load_model(str(tmp_path / "din.h5"))  # no custom_objects needed
    assert type(loaded) is SharedHistoryModel and type(loaded.optimizer) is LazyAdam  # DIN's class
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), expected, atol=1e-6)
    assert int(loaded.optimizer.iterations) == int(trained.optimizer.iterations)

    # Checkpoint, restore into a fresh model, take the same step on both: identical weights.
    checkpoint = tf.train.Checkpoint(model=trained, optimizer=trained.optimizer)
    path = checkpoint.save(os.path.join(tmp_path, "ckpt"))
    resumed = new_model(columns)
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).restore(path).assert_consumed()
    for name, value in _table_state(trained).items():
        np.testing.assert_array_equal(_table_state(resumed)[name], value, err_msg=name)
    x, y = batch(train_df, columns, 0)
    trained.train_on_batch(x, y)
    resumed.train_on_batch(x, y)
    for a, b in zip(trained.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fit_on_numpy_looks_rows_up_once_and_trains_like_raw_batches(small):
    train_df, _, columns = small
    x, y = batch(train_df, columns, 0)
    model = new_model(columns)
    looked_up = model._look_up_once(x)
    assert set(looked_up) == set(feature_columns.look_up_rows(columns, x))  # the pipeline's keys
    for key, rows in feature_columns.look_up_rows(columns, x).items():
        np.testing.assert_array_equal(looked_up[key].reshape(rows.shape), rows)
    by_fit, by_batch = new_model(columns), new_model(columns)
    by_fit.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    by_batch.train_on_batch(x, y)
    for a, b in zip(by_fit.get_weights(), by_batch.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_seeded_fit_does_not_depend_on_what_the_process_ran_before():
    """Dropout and drawn negatives inside the XLA-compiled step come from `tf.random.Generator`
    states, which importing tfrec turns on: XLA ignores the seed of a legacy stateful random op and
    draws from one process-wide state, so a seeded fit used to change with the random ops the
    process had compiled and run before it."""
    data = make_retrieval_data(num_users=100, num_items=200, events_per_user=12, seed=0)
    user_columns, item_columns = retrieval_feature_columns(data, 10, embedding_dim=8)
    train, _ = retrieval_samples(data, 10)
    x = df_to_inputs(train, user_columns + item_columns)

    def seeded_fit():
        tf.keras.utils.set_random_seed(0)
        model = YoutubeDNN(user_columns, item_columns, user_dnn_hidden_units=(16, 8), dnn_dropout=0.5,
                           sampler_config=NegativeSampler("uniform", 20, "item_id"))
        model.compile(tf.keras.optimizers.Adam(0.01))
        model.fit(x, np.zeros(len(train)), batch_size=64, epochs=1, verbose=0)
        return model.get_weights()

    first = seeded_fit()
    tf.function(lambda: tf.random.uniform([1000]), jit_compile=True)()  # moves XLA's process-wide state
    for before, after in zip(first, seeded_fit(), strict=True):
        np.testing.assert_array_equal(before, after)
