"""A model built from tfrec columns takes a one-value feature as (rows,) or (rows, 1), from call to call.

Keras conforms either to a (batch, 1) Input, but a train / test / predict function called with one
after the other (fit on one data set, evaluate on another) is traced again for inputs of unknown
rank, which Keras cannot conform: the layers reading the Inputs conform them themselves.
"""
import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import DenseFeat, FeatureEncoder, SparseFeat, VarLenSparseFeat
from feature_columns.layers import InInputShape, in_input_shape

ROWS = 48
HISTORY = VarLenSparseFeat(SparseFeat("hist_item", 20, 4, embedding_name="item"), maxlen=5, length_name="hist_len",
                           weight_name="hist_weight", weight_norm=False)
COLUMNS = [SparseFeat("user", 10, 4), SparseFeat("item", 20, 4), SparseFeat("city", None, 4, dtype="string",
                                                                            vocabulary=["paris", "rome"]),
           DenseFeat("age"), DenseFeat("price", 2), HISTORY]


def data():
    rng = np.random.default_rng(0)
    x = {"user": rng.integers(1, 10, ROWS).astype("int32"), "item": rng.integers(1, 20, ROWS).astype("int32"),
         "city": rng.choice(np.array(["paris", "rome", "oslo"], dtype=object), ROWS),
         "age": rng.random(ROWS).astype("float32"), "price": rng.random((ROWS, 2)).astype("float32"),
         "hist_item": rng.integers(0, 20, (ROWS, 5)).astype("int32"),
         "hist_len": rng.integers(0, 6, ROWS).astype("int32"),
         "hist_weight": rng.random((ROWS, 5)).astype("float32")}
    return x, rng.integers(0, 2, ROWS).astype("float32")


def as_columns(x):
    """DeepCTR's other shapes: (rows, 1) one-value features and (rows, maxlen, 1) weights."""
    return {name: values[..., None] if values.ndim == 1 or name == "hist_weight" else values
            for name, values in x.items()}


def dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def keras_model():
    encoder = FeatureEncoder(COLUMNS, seed=1)
    output = tf.keras.layers.Dense(1, activation="sigmoid")(
        encoder.dnn_input(extra=[encoder.pooled("hist_item")], exclude=["hist_item"]))
    model = tf.keras.Model(encoder.features, output)
    model.compile("adam", "binary_crossentropy")
    return model


@pytest.mark.parametrize("first_as_columns", [False, True], ids=["rows_first", "columns_first"])
def test_a_keras_model_takes_data_sets_of_either_shape_one_after_the_other(first_as_columns):
    """Failed on the old code at the second shape: 'ConcatOp : Ranks of all input tensors should match'."""
    x, y = data()
    first, second = (as_columns(x), x) if first_as_columns else (x, as_columns(x))
    model = keras_model()
    model.fit(dataset(first, y), epochs=1, verbose=0)
    expected = model.predict(dataset(first, y), verbose=0)
    np.testing.assert_allclose(model.predict(dataset(second, y), verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(model.evaluate(dataset(second, y), verbose=0),
                               model.evaluate(dataset(first, y), verbose=0), rtol=1e-6)
    model.fit(dataset(second, y), epochs=1, verbose=0)  # the training function too
    assert np.isfinite(model.predict(dataset(first, y), verbose=0)).all()


def test_a_tfrec_model_evaluates_and_predicts_data_sets_of_either_shape():
    """DIN (a RecModel): the same scores whichever shape comes first; fit after the other shape trains."""
    from tfrec.models import DIN

    x, y = data()
    model = DIN(COLUMNS, ["item"], dnn_hidden_units=(8,), att_hidden_size=(8,))
    model.compile("adam", "binary_crossentropy")
    model.fit(dataset(x, y), epochs=1, verbose=0)
    expected = model.predict(dataset(x, y), verbose=0)
    np.testing.assert_allclose(model.predict(dataset(as_columns(x), y), verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(model.evaluate(dataset(as_columns(x), y), verbose=0),
                               model.evaluate(dataset(x, y), verbose=0), rtol=1e-6)
    model.fit(dataset(as_columns(x), y), epochs=1, verbose=0)
    assert np.isfinite(model.predict(dataset(x, y), verbose=0)).all()


def test_an_input_of_unknown_rank_is_read_in_its_input_shape():
    def conformed(width):
        return tf.function(lambda values: in_input_shape(values, width), input_signature=[tf.TensorSpec(None)])

    layer = InInputShape.from_config(InInputShape(2).get_config())
    assert conformed(1).get_concrete_function().structured_outputs.shape.as_list() == [None, 1]
    np.testing.assert_array_equal(conformed(1)(tf.constant([1.0, 2.0])), [[1.0], [2.0]])
    np.testing.assert_array_equal(conformed(1)(tf.constant([[1.0], [2.0]])), [[1.0], [2.0]])
    np.testing.assert_array_equal(conformed(None)(tf.ones([2, 3, 1])), np.ones([2, 3]))  # DeepCTR's weights
    as_layer = tf.function(layer, input_signature=[tf.TensorSpec(None)])
    assert as_layer.get_concrete_function().structured_outputs.shape.as_list() == [None, 2]
    np.testing.assert_array_equal(as_layer(tf.ones([3, 2])), np.ones([3, 2]))
    known = tf.constant([1.0, 2.0])
    assert in_input_shape(known, 1) is known  # a known rank is Keras' to conform, and left as it is


@pytest.mark.parametrize("first_as_columns", [False, True], ids=["rows_first", "columns_first"])
def test_a_multitask_model_fits_data_sets_of_either_shape_one_after_the_other(first_as_columns):
    """MMOE (one XLA loop of steps over the raw dense inputs too): a second fit whose data set
    gives the DenseFeats as (rows, 1) after (rows,) failed tracing its loop ("can't multiply
    sequence by non-int of type NoneType"): the raw inputs reached it at unknown rank."""
    from tfrec.models import MMOE

    x, y = data()
    flat = {name: x[name] for name in ("user", "item", "city", "age", "price")}
    model = MMOE(COLUMNS[:5], num_experts=2, expert_dnn_hidden_units=(8,), tower_dnn_hidden_units=(4,),
                 task_types=("binary", "binary"), task_names=("ctr", "cvr"))
    model.compile("adam", "binary_crossentropy")

    def two_tasks(features):
        return tf.data.Dataset.from_tensor_slices((features, {"ctr": y, "cvr": y})).batch(16)

    first, second = (as_columns(flat), flat) if first_as_columns else (flat, as_columns(flat))
    model.fit(two_tasks(first), epochs=1, verbose=0)
    model.fit(two_tasks(second), epochs=1, verbose=0)
    np.testing.assert_allclose(model.predict(two_tasks(as_columns(flat)), verbose=0),
                               model.predict(two_tasks(flat), verbose=0), atol=1e-6)


def test_a_data_set_of_one_value_per_row_for_a_sequence_is_refused_naming_it():
    """A dict giving a sequence one value per row was refused naming the feature; a data set got
    Keras' error from deep in the graph instead. Both are refused before anything runs."""
    from tfrec.models import DIN

    x, y = data()
    model = DIN(COLUMNS, ["item"], dnn_hidden_units=(8,), att_hidden_size=(8,))
    model.compile("adam", "binary_crossentropy")
    flat_history = dict(x, hist_item=x["hist_item"][:, 0])
    message = r"feature 'hist_item' is a sequence and needs \(rows, events\) values, padded after the events, got "
    with pytest.raises(ValueError, match=message + "an array of shape"):
        model.predict(flat_history, verbose=0)
    for call in (lambda: model.fit(dataset(flat_history, y), verbose=0),
                 lambda: model.predict(dataset(flat_history, y).map(lambda features, _: features), verbose=0)):
        with pytest.raises(ValueError, match=message + r"a data set of batches of shape \(None,\)"):
            call()
    with pytest.raises(ValueError, match=r"no data for input\(s\) \['price'\]"):
        model.evaluate(dataset({k: v for k, v in x.items() if k != "price"}, y), verbose=0)
