"""Integer ids outside a plain column's table, and inputs the user can fix (issue 10, items 3-5).

* An id outside [0, vocabulary_size) of a plain integer column is looked up as row 0 (padding,
  the column's out-of-vocabulary row), in `predict` and in the exported SavedModel alike, instead
  of failing the batch with `indices[0,0] = 99 is not in [0, 24)`.
* An id that does not fit the column's int32 Input is an error naming the feature, in the Python
  API (the export's own range check is tested in tests/exporters); never a wrapped-around id.
* Features with different row counts, and None / NaN objects in a float feature, are errors naming
  the features, where they enter the model.
"""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import exporters
from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat
from tfrec.models import DIN

HOURS = 24


@pytest.fixture(scope="module")
def din():
    columns = [SparseFeat("user_id", 10, 4), SparseFeat("hour", HOURS, 4), SparseFeat("item_id", 8, 4),
               DenseFeat("price", 1),
               VarLenSparseFeat(SparseFeat("hist_item_id", 8, 4, embedding_name="item_id"), maxlen=3)]
    tf.keras.utils.set_random_seed(0)
    model = DIN(columns, ["item_id"], dnn_hidden_units=(8,), att_hidden_size=(4,), seed=0)
    model.compile("adam", "binary_crossentropy")
    rng = np.random.default_rng(0)
    rows = 64
    x = {"user_id": rng.integers(1, 10, rows), "hour": rng.integers(0, HOURS, rows), "item_id": rng.integers(1, 8, rows),
         "price": rng.random(rows).astype("float32"), "hist_item_id": rng.integers(0, 8, (rows, 3))}
    model.fit(x, rng.integers(0, 2, rows).astype("float32"), batch_size=16, epochs=2, verbose=0)
    # Make row 0 of the hour table distinct, so "looked up as row 0" is visible in the scores.
    table = next(layer for layer in model.layers if layer.name == "emb_hour")
    table.embeddings.assign(tf.random.stateless_normal(table.embeddings.shape, (1, 2)))
    return model


def rows(hours, users=None):
    n = len(hours)
    return {"user_id": np.array(users if users is not None else [3] * n), "hour": np.array(hours),
            "item_id": np.array([2] * n), "price": np.array([0.5] * n, dtype="float32"),
            "hist_item_id": np.array([[1, 2, 0]] * n)}


def test_ids_outside_the_table_score_as_the_out_of_vocabulary_row(din):
    scores = din.predict(rows([99, 24, -3, 0, 5]), verbose=0)[:, 0]
    assert scores[0] == scores[1] == scores[2] == scores[3]  # 99, 24 and -3 look up row 0
    assert scores[4] != scores[0]  # a known hour does not
    # The whole batch is scored: a known id beside an unknown one keeps its own score.
    np.testing.assert_allclose(din.predict(rows([5]), verbose=0)[:, 0], scores[4:], rtol=1e-6)


def test_training_on_out_of_range_ids_updates_the_out_of_vocabulary_row(din):
    model = tf.keras.models.clone_model(din)
    model.set_weights(din.get_weights())
    model.compile(tf.keras.optimizers.SGD(0.5), "binary_crossentropy")
    table = next(layer for layer in model.layers if layer.name == "emb_hour")
    before = table.embeddings.numpy()
    with pytest.warns(UserWarning, match="100% of feature 'hour''s ids"):
        model.fit(rows([99, 1000]), np.array([1.0, 1.0]), verbose=0)
    changed = np.flatnonzero(np.any(table.embeddings.numpy() != before, axis=1))
    assert changed.tolist() == [0]


def test_exported_model_scores_out_of_range_ids_as_predict_does(din, tmp_path):
    path = exporters.export_saved_model(din, str(tmp_path / "din"))
    serving = tf.saved_model.load(path).signatures["serving_default"]
    feed = rows([99, 24, -3, 0, 5])
    served = serving(user_id=tf.constant(feed["user_id"], tf.int64), hour=tf.constant(feed["hour"], tf.int64),
                     item_id=tf.constant(feed["item_id"], tf.int64), price=tf.constant(feed["price"]),
                     hist_item_id=tf.constant(feed["hist_item_id"], tf.int64))
    (output,) = served.values()
    np.testing.assert_allclose(output.numpy().reshape(-1), din.predict(feed, verbose=0)[:, 0], atol=1e-5)
    # An id that does not fit the int32 Input fails there too, naming the input.
    with pytest.raises(tf.errors.InvalidArgumentError, match="user_id"):
        serving(user_id=tf.constant([5, 4294967301], tf.int64), hour=tf.constant([1, 1], tf.int64),
                item_id=tf.constant([2, 2], tf.int64), price=tf.constant([0.5, 0.5]),
                hist_item_id=tf.constant([[1, 0, 0], [1, 0, 0]], tf.int64))


def test_an_id_that_overflows_int32_is_an_error_naming_the_feature(din):
    # 4294967301 = 2**32 + 5 would wrap around to id 5 in an int32 Input.
    with pytest.raises(ValueError, match=r"feature 'user_id' holds 4294967301 \(row 1\), outside the int32 range"):
        din.predict(rows([1, 1], users=[5, 4294967301]), verbose=0)
    with pytest.raises(ValueError, match="feature 'user_id' holds 4294967301"):
        din.fit(rows([1, 1], users=[5, 4294967301]), np.array([1.0, 0.0]), verbose=0)


def test_features_with_different_row_counts_are_named_with_their_counts(din):
    feed = rows([1, 2, 3])
    feed["item_id"] = np.array([2, 2])
    with pytest.raises(ValueError, match=r"disagree on the number of rows \(user_id 3, hour 3, item_id 2, "
                                         r"price 3, hist_item_id 3\)"):
        din.predict(feed, verbose=0)
    with pytest.raises(ValueError, match="item_id 2"):
        din.evaluate(feed, np.array([1.0, 0.0, 1.0]), verbose=0)
    with pytest.raises(ValueError, match=r"labels of model '.*' have a different number of rows \(labels 2\) "
                                         r"than its features \(3\)"):
        din.fit(rows([1, 2, 3]), np.array([1.0, 0.0]), verbose=0)


@pytest.mark.parametrize("bad", [None, float("nan"), "cheap"])
def test_a_missing_or_text_value_in_a_float_feature_names_the_feature_and_row(din, bad):
    feed = rows([1, 2, 3])
    feed["price"] = pd.Series([0.5, bad, 1.0], dtype=object)  # e.g. a CSV column with a gap
    with pytest.raises(ValueError, match=r"feature 'price' needs float32 numbers, but row 1 holds .*fillna"):
        din.predict(feed, verbose=0)


def test_nan_in_a_float_array_names_the_feature(din):
    feed = rows([1, 2, 3])
    feed["price"] = np.array([0.5, 1.0, np.nan], dtype="float32")  # pandas' missing value in a float column
    with pytest.raises(ValueError, match=r"feature 'price' needs float32 numbers, but row 2 holds NaN"):
        din.fit(feed, np.array([1.0, 0.0, 1.0]), verbose=0)


@pytest.mark.parametrize("dtype", ["float32", object])
def test_an_infinity_in_a_float_feature_names_the_feature_and_row(din, dtype):
    feed = rows([1, 2, 3])
    feed["price"] = np.array([0.5, -np.inf, 1.0], dtype=dtype)  # np.log of a price of 0
    with pytest.raises(ValueError, match=r"feature 'price' needs float32 numbers, but row 1 holds -inf; replace"):
        din.predict(feed, verbose=0)


def test_a_missing_id_in_an_integer_feature_names_the_feature(din):
    feed = rows([1, 2, 3])
    feed["hour"] = pd.Series([1, None, 3], dtype=object)
    with pytest.raises(ValueError, match=r"feature 'hour' needs integer ids, but row 1 holds None"):
        din.predict(feed, verbose=0)
    feed["hour"] = np.array([1.0, 2.5, 3.0])
    with pytest.raises(ValueError, match=r"feature 'hour' needs integer ids, but row 1 holds 2.5"):
        din.predict(feed, verbose=0)


def test_pandas_inputs_and_integral_objects_still_work(din):
    feed = rows([1, 2, 3])
    expected = din.predict(feed, verbose=0)
    feed["price"] = pd.Series([0.5, 0.5, 0.5], dtype=object)
    feed["user_id"] = pd.Series(feed["user_id"])
    np.testing.assert_allclose(din.predict(feed, verbose=0), expected, rtol=1e-6)


def test_a_whole_data_frame_is_refused_with_what_to_pass_instead(din):
    # Keras would read the frame as one array: "Failed to convert a NumPy array to a Tensor
    # (Unsupported object type int)", or for a multi-input model "expects 5 input(s), but it received 1".
    feed = rows([1, 2, 3])
    frame = pd.DataFrame({name: (list(value) if value.ndim > 1 else value) for name, value in feed.items()})
    for call in (lambda: din.predict(frame, verbose=0), lambda: din.evaluate(frame, np.zeros(3), verbose=0),
                 lambda: din.fit(frame, np.zeros(3), verbose=0)):
        with pytest.raises(ValueError, match=r"model 'din' takes a dict of features, not a DataFrame: pass "
                                             r"tfrec.data.df_to_inputs\(df, feature_columns\)"):
            call()
    np.testing.assert_allclose(din.predict({name: frame[name] for name in ("user_id", "hour", "item_id", "price")}
                                           | {"hist_item_id": feed["hist_item_id"]}, verbose=0),
                               din.predict(feed, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("mistake, message", [
    (lambda x, y: (list(x.values()), y),  # Keras would match them to the inputs by position, sorted by name
     r"model 'din' takes a dict \{feature name: array\}, not a list of 5 arrays, which would be matched to its "
     r"inputs by position in the order \['hist_item_id', 'hour', 'item_id', 'price', 'user_id'\]"),
    (lambda x, y: ({k: v for k, v in x.items() if k != "price"}, y),
     r"model 'din': no data for input\(s\) \['price'\]; it takes \['hist_item_id', 'hour', "),
    (lambda x, y: (dict(x, hist_item_id=x["hist_item_id"][:, 0]), y),  # was read as one-event histories
     r"model 'din': feature 'hist_item_id' is a sequence and needs \(rows, events\) values, padded after the "
     r"events, got an array of shape \(3,\)"),
    (lambda x, y: (dict(x, hist_item_id=pd.Series([[1, 2], [1], [3, 4, 5]]).to_numpy()), y),
     r"feature 'hist_item_id' holds a list per row \(a sequence column as pandas keeps it\); pass a \(rows, "
     r"maxlen\) array"),
    (lambda x, y: (dict(x, hist_item_id=[[1, 2], [1], [3, 4, 5]]), y),  # df[c].tolist(): Keras' "data adapter"
     r"feature 'hist_item_id' holds a list per row \(a sequence column as pandas keeps it\); pass a \(rows, "
     r"maxlen\) array"),
    (lambda x, y: (dict(x, price=x["price"].astype(str)), y),
     r"feature 'price' needs float32 values, but holds strings \(.*\); parse them first \(e.g. "
     r"pd.to_numeric\(df\['price'\]\)\)"),
    (lambda x, y: (x, np.stack([y, y], axis=1)),  # an XLA shape error in fit
     r"output 'prediction' gives one number per row, but its labels have shape \(3, 2\)"),
    (lambda x, y: (x, y.astype(int).astype(str)),  # an XLA error about a DT_STRING argument
     r"output 'prediction' needs numbers as labels, but they are strings \(e.g. \['1', '0', '1'\]\)"),
])
def test_feeding_mistakes_are_named_before_anything_runs(din, mistake, message):
    """Each failed deep in Keras or XLA (or trained on the wrong thing); now fit, evaluate and
    predict name the feature or output, and no weight moves."""
    weights = [w.numpy() for w in din.weights]
    x, y = mistake(rows([1, 2, 3]), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=message):
        din.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=message):
        din.evaluate(x, y, verbose=0)
    if y.ndim == 1 and y.dtype.kind == "f":  # a feature mistake: predict names it too
        with pytest.raises(ValueError, match=message):
            din.predict(x, verbose=0)
    assert all(np.array_equal(w, v.numpy()) for w, v in zip(weights, din.weights))


def test_a_list_of_arrays_is_refused_by_the_one_batch_methods_and_in_a_data_set(din):
    """fit / evaluate / predict refused a list; *_on_batch and fit on a data set of lists took it
    and matched it to the inputs by position (sorted by name), scoring and training one feature's
    values as another's without a word."""
    weights = [w.numpy() for w in din.weights]
    x, y = rows([1, 2, 3]), np.array([1.0, 0.0, 1.0])
    listed = [x[name] for name in ("user_id", "hour", "item_id", "price", "hist_item_id")]  # the columns' order
    message = r"model 'din' takes a dict \{feature name: array\}, not a list of 5 arrays"
    for call in (lambda: din.predict_on_batch(listed), lambda: din.test_on_batch(listed, y),
                 lambda: din.train_on_batch(listed, y),
                 lambda: din.fit(tf.data.Dataset.from_tensor_slices((tuple(listed), y)).batch(3), verbose=0)):
        with pytest.raises(ValueError, match=message):
            call()
    assert all(np.array_equal(w, v.numpy()) for w, v in zip(weights, din.weights))


def test_sequences_of_one_event_list_in_different_widths_or_negative_lengths_are_refused_by_fit_too():
    """The graph's own check of aligned widths and lengths (RecentSequence) does not run inside an
    XLA-compiled step, so fit trained on misaligned events without a word, and predict failed with
    a graph error; both are now refused before they start."""
    columns = [SparseFeat("item_id", 10, 4), SparseFeat("cate_id", 5, 4),
               VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4, embedding_name="item_id"), maxlen=4,
                                length_name="seq_length"),
               VarLenSparseFeat(SparseFeat("hist_cate_id", 5, 4, embedding_name="cate_id"), maxlen=4)]
    model = DIN(columns, ["item_id", "cate_id"], dnn_hidden_units=(4,), att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy")
    rng = np.random.default_rng(0)
    x = {"item_id": rng.integers(1, 10, 8), "cate_id": rng.integers(1, 5, 8), "seq_length": np.full(8, 3),
         "hist_item_id": rng.integers(1, 10, (8, 6)), "hist_cate_id": rng.integers(1, 5, (8, 6))}
    y = rng.integers(0, 2, 8).astype("float32")
    model.fit(x, y, verbose=0)  # histories wider than maxlen are fine: the most recent events are kept
    weights = model.get_weights()
    narrower = dict(x, hist_cate_id=x["hist_cate_id"][:, :4])
    for call in (lambda feed: model.fit(feed, y, verbose=0), lambda feed: model.predict(feed, verbose=0)):
        with pytest.raises(ValueError, match=r"model 'din': 'hist_cate_id' must hold one entry per event of "
                                             r"'hist_item_id' \(the same events' features, padded alike\), but "
                                             r"their widths differ \(4 and 6\)"):
            call(narrower)
        with pytest.raises(ValueError, match=r"feature 'seq_length' holds a negative length in row 2; it must be "
                                             r"the number of events sent in the sequence \(0 for none\)"):
            call(dict(x, seq_length=np.array([3, 3, -1, 3, 3, 3, 3, 3])))
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_numbers_for_a_string_column_are_named_with_what_to_pass():
    """TensorFlow said "Cast int64 to string is not supported" after 2,000 characters of graph,
    naming no feature (from a TFRS user's audit: ids trained as 'u17' sent as ints)."""
    from tfrec.models import YoutubeDNN

    user_columns = [SparseFeat("user_id", None, 4, dtype="string", vocabulary=["u1", "u2"])]
    item_columns = [SparseFeat("item_id", None, 4, dtype="string", vocabulary=["i1", "i2"])]
    model = YoutubeDNN(user_columns, item_columns, user_dnn_hidden_units=(4,))
    model.compile("adam")
    x = {"user_id": np.array([1, 2]), "item_id": np.array(["i1", "i2"])}
    message = (r"feature 'user_id' is read as text \(a string column: .*\), but holds int64 values \(e.g. \[1, 2\]\); "
               r"pass the ids as the text the model was trained on, e.g. df\['user_id'\].astype\(str\)")
    with pytest.raises(ValueError, match=message):
        model.fit(x, np.zeros(2), verbose=0)
    with pytest.raises(ValueError, match=message):
        model.predict(x, verbose=0)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_policy_is_refused_when_the_model_is_built(policy):
    # It failed only in fit, with AutoGraph's "'outputs' must be defined before the loop" over
    # "x and y must have the same dtype, got tf.bfloat16 != tf.float32" (YoutubeDNN: while building).
    columns = [SparseFeat("user_id", 10, 4), SparseFeat("item_id", 8, 4),
               VarLenSparseFeat(SparseFeat("hist_item_id", 8, 4, embedding_name="item_id"), maxlen=3)]
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        with pytest.raises(ValueError, match=f"the global Keras policy is '{policy}': call "
                                             r"tf.keras.mixed_precision.set_global_policy\('float32'\)"):
            DIN(columns, ["item_id"], dnn_hidden_units=(4,), att_hidden_size=(4,))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("labels, message", [
    ([1.0, 0.0, 3.0], r"output 'prediction' needs labels in \[0, 1\] \(a binary head\), but row 2 holds \[3.0\]"),
    ([1.0, -1.0, 1.0], r"but row 1 holds \[-1.0\]"),
    ([1.0, np.nan, 0.0], r"but row 1 holds \[nan\]"),  # would make every weight NaN for good
])
def test_labels_a_binary_head_cannot_learn_from_are_named_before_training(din, labels, message):
    weights = [w.numpy() for w in din.weights]
    with pytest.raises(ValueError, match=message):
        din.fit(rows([1, 2, 3]), np.array(labels), verbose=0)
    assert all(np.array_equal(w, v.numpy()) for w, v in zip(weights, din.weights))


def test_a_single_output_takes_its_labels_in_a_list_of_one_as_keras_does(din):
    weights = din.get_weights()
    din.fit(rows([1, 2, 3]), [np.array([1.0, 0.0, 1.0])], verbose=0)
    din.set_weights(weights)  # the module's other tests read this model's weights
    with pytest.raises(ValueError, match=r"output 'prediction' needs labels in \[0, 1\] \(a binary head\), but row 2 "
                                         r"holds \[3.0\]"):
        din.fit(rows([1, 2, 3]), [np.array([1.0, 0.0, 3.0])], verbose=0)


def test_labels_of_shape_rows_and_rows_by_one_train_the_same_model_in_turn():
    """DeepCTR's examples pass `train[["label"]].values`, (rows, 1); a model first fit on (rows,)
    labels then failed with "tf2xla conversion failed" (DIN) or "can't multiply sequence by
    non-int of type 'NoneType'" (MMOE's one-loop step): the training function, traced again for
    the other shape, saw labels of unknown rank."""
    from tfrec.models import MMOE

    rng = np.random.default_rng(0)
    x = {"item_id": rng.integers(1, 8, 32), "hist_item_id": rng.integers(0, 8, (32, 3)),
         "price": rng.random(32).astype("float32")}
    labels = rng.integers(0, 2, 32)
    columns = [SparseFeat("item_id", 8, 4), DenseFeat("price", 1),
               VarLenSparseFeat(SparseFeat("hist_item_id", 8, 4, embedding_name="item_id"), maxlen=3)]
    din = DIN(columns, ["item_id"], dnn_hidden_units=(4,), att_hidden_size=(4,))
    mmoe = MMOE(columns[:2], num_experts=2, expert_dnn_hidden_units=(4,))
    for model, per_output in ((din, lambda y: y), (mmoe, lambda y: [y, y])):
        model.compile("adam", "binary_crossentropy")
        for y in (labels, labels.reshape(-1, 1), labels):
            history = model.fit(x, per_output(y), batch_size=8, verbose=0)
            assert np.isfinite(history.history["loss"][0]), model.name


def test_a_later_fit_with_histories_of_other_widths_feeds_each_feature_its_own_ids():
    """fit packs the numeric inputs side by side and a traced training function split them at the
    widths of the fit that traced it: a third layout failed ("Determined shape must either match
    input shape along split_dim"), and one of the same total width fed a tag id to the item table."""
    columns = [SparseFeat("item_id", 10, 4), VarLenSparseFeat(SparseFeat("tags", 10, 4), 4),
               VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4, embedding_name="item_id"), 4)]
    model = DIN(columns, ["item_id"], dnn_hidden_units=(4,), att_hidden_size=(4,), l2_reg_embedding=0)
    model.compile("adam", "binary_crossentropy")
    labels = np.random.default_rng(0).integers(0, 2, 32)

    def fit(history, tags):
        model.fit({"item_id": np.full(32, 1), "hist_item_id": history, "tags": tags}, labels, verbose=0)

    fit(np.full((32, 4), 2), np.full((32, 2), 3))
    items = model.get_layer("emb_item_id").embeddings.numpy()
    fit(np.full((32, 3), 6), np.full((32, 3), 5))  # the same total width, 1 + 4 + 2 = 1 + 3 + 3
    changed = np.flatnonzero(np.abs(model.get_layer("emb_item_id").embeddings.numpy() - items).max(axis=1) > 0)
    assert 5 not in changed and 6 in changed, changed
    fit(np.full((32, 2), 6), np.full((32, 1), 5))


def test_multitask_labels_must_be_one_per_head():
    from tfrec.models import MMOE

    model = MMOE([SparseFeat("user_id", 10, 4), DenseFeat("price", 1)], num_experts=2, expert_dnn_hidden_units=(4,),
                 tower_dnn_hidden_units=(4,), task_names=("ctr", "ctcvr"))
    model.compile("adam", "binary_crossentropy")
    x = {"user_id": np.array([1, 2, 3]), "price": np.array([0.5, 1.0, 1.5], dtype="float32")}
    with pytest.raises(ValueError, match=r"has 2 outputs \['ctr', 'ctcvr'\], but one label array was given, which "
                                         r"would train every head on it"):
        model.fit(x, np.array([1.0, 0.0, 1.0]), verbose=0)
    with pytest.raises(ValueError, match=r"has 2 outputs \['ctr', 'ctcvr'\], but 3 label arrays were given"):
        model.fit(x, [np.ones(3)] * 3, verbose=0)
    with pytest.raises(ValueError, match=r"output 'ctcvr' needs labels in \[0, 1\]"):
        model.fit(x, {"ctr": np.ones(3), "ctcvr": np.array([0.0, 2.0, 1.0])}, verbose=0)
    model.fit(x, {"ctr": np.ones(3), "ctcvr": np.array([0.0, 0.5, 1.0])}, verbose=0)  # soft labels are fine
    # A task without labels would train at a loss of 0 (Keras' behaviour), in dicts and datasets alike.
    before = model.get_weights()
    only_ctr = r"no labels for output\(s\) \['ctcvr'\], which would then never train"
    with pytest.raises(ValueError, match=only_ctr):
        model.fit(x, {"ctr": np.ones(3)}, verbose=0)
    with pytest.raises(ValueError, match=only_ctr):
        model.fit(tf.data.Dataset.from_tensor_slices((x, {"ctr": np.ones(3)})).batch(2), verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    model.compile("adam", {"ctr": "binary_crossentropy", "ctcvr": None})  # a head left untrained on purpose
    model.fit(x, {"ctr": np.ones(3)}, verbose=0)


def test_training_ids_mostly_beyond_their_table_are_warned_of(din):
    feed = rows([1, 2, 3, 4], users=[3, 40, 50, 60])  # user_id's table has 10 rows
    with pytest.warns(UserWarning, match=r"75% of feature 'user_id''s ids \(up to 60\) are outside its table"):
        din.fit(feed, np.array([1.0, 0.0, 1.0, 0.0]), verbose=0)


def test_padding_or_an_unknown_id_between_history_items_changes_no_score(din):
    """Row 0 between a history's items (a padding placeholder, or an id beyond the table) is
    skipped: the newest item still counts (it used to be dropped, one item per gap)."""
    history = {"user_id": np.array([3, 3, 3]), "hour": np.array([5] * 3), "item_id": np.array([2] * 3),
               "price": np.array([0.5] * 3, dtype="float32"),
               "hist_item_id": np.array([[1, 0, 4], [1, 99, 4], [1, 4, 0]])}
    scores = din.predict(history, verbose=0)[:, 0]
    np.testing.assert_allclose(scores[:2], [scores[2]] * 2, rtol=1e-6)
    dropped = dict(history, hist_item_id=np.array([[1, 0, 0]]), **{k: history[k][:1] for k in
                                                                  ("user_id", "hour", "item_id", "price")})
    assert din.predict(dropped, verbose=0)[0, 0] != pytest.approx(scores[2], rel=1e-6)


def test_behaviour_sequences_of_one_event_list_must_have_equal_lengths():
    """df_to_inputs refuses `hist_timestamp` (or `hist_cate_id`) shorter than `hist_item_id` on a row:
    each would be cut to its own most recent events, pairing events with their neighbours' times."""
    from feature_columns import VarLenDenseFeat
    from tfrec.data import df_to_inputs

    columns = [SparseFeat("item_id", None, 4, dtype="string", vocabulary=["a", "b", "c"]),
               VarLenSparseFeat(SparseFeat("hist_item_id", None, 4, dtype="string", vocabulary=["a", "b", "c"],
                                           embedding_name="item_id"), maxlen=3),
               VarLenDenseFeat("hist_timestamp", 3, dtype="int64")]
    df = pd.DataFrame({"item_id": ["a", "b"], "hist_item_id": [["a", "b"], ["a", "b", "c", "a"]],
                       "hist_timestamp": [[1, 2], [1, 2]]})
    with pytest.raises(ValueError, match=r"'hist_item_id' and 'hist_timestamp' must hold one entry per event .* "
                                         r"row 1 has 4 and 2 \(1 row\(s\) differ\)"):
        df_to_inputs(df, columns)
    df.at[1, "hist_timestamp"] = [1, 2, 3, 4]
    assert df_to_inputs(df, columns)["hist_timestamp"].tolist() == [[1, 2, 0], [2, 3, 4]]


def test_rows_looked_up_with_other_columns_than_the_models_are_refused(din):
    """A warm start on columns inferred again from newer data (another table size or vocabulary)
    gave rows that stand for other values: fit, evaluate and predict now refuse them, naming the
    feature; rows from the model's own columns are taken as before."""
    from tfrec.data import df_to_dataset

    frame = pd.DataFrame({**{name: list(values) for name, values in rows([1, 2, 3, 4]).items()},
                          "click": [0.0, 1.0, 0.0, 1.0]})
    own = [SparseFeat("user_id", 10, 4), SparseFeat("hour", HOURS, 4), SparseFeat("item_id", 8, 4),
           DenseFeat("price", 1),
           VarLenSparseFeat(SparseFeat("hist_item_id", 8, 4, embedding_name="item_id"), maxlen=3)]
    grown = [SparseFeat("item_id", 12, 4) if c.name == "item_id" else
             VarLenSparseFeat(SparseFeat("hist_item_id", 12, 4, embedding_name="item_id"), maxlen=3)
             if c.name == "hist_item_id" else c for c in own]
    good = df_to_dataset(frame, own, "click", batch_size=4, shuffle=False)
    np.testing.assert_allclose(din.predict(good.map(lambda x, y: x), verbose=0),
                               din.predict(rows([1, 2, 3, 4]), verbose=0), rtol=1e-6)
    other = df_to_dataset(frame, grown, "click", batch_size=4, shuffle=False)
    message = (r"model '.*': feature '(hist_)?item_id' was looked up with another vocabulary or table size than the "
               r"model's .* build the inputs with the columns the model was built with")
    for call in (lambda: din.fit(other, epochs=1, verbose=0), lambda: din.evaluate(other, verbose=0),
                 lambda: din.predict(other.map(lambda x, y: x), verbose=0)):
        with pytest.raises(ValueError, match=message):
            call()
