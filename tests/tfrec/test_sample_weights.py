"""Sample weights in the Python API: applied in the compiled step whatever form they come in,
and checked where they enter the model (from an ads engineer's audit of downsampled logs)."""
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat
from tfrec.models import DIN

ROWS = 64


def din():
    columns = [SparseFeat("user_id", 10, 4), SparseFeat("item_id", 8, 4), DenseFeat("price", 1),
               VarLenSparseFeat(SparseFeat("hist_item_id", 8, 4, embedding_name="item_id"), maxlen=3)]
    tf.keras.utils.set_random_seed(0)
    model = DIN(columns, ["item_id"], dnn_hidden_units=(8,), att_hidden_size=(4,), seed=0)
    model.compile(tf.keras.optimizers.Adam(0.01), "binary_crossentropy")  # the default: XLA, 32 steps per call
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = {"user_id": rng.integers(1, 10, ROWS), "item_id": rng.integers(1, 8, ROWS),
         "price": rng.random(ROWS).astype("float32"), "hist_item_id": rng.integers(0, 8, (ROWS, 3))}
    return x, rng.integers(0, 2, ROWS).astype("float32"), rng.choice([1.0, 10.0], ROWS)


def losses(model, fits):
    """The loss of one epoch of each fit, given as fit's keyword arguments."""
    return [model.fit(**{"batch_size": 16, "shuffle": False, **fit}, epochs=1, verbose=0).history["loss"][0]
            for fit in fits]


def test_weights_in_another_form_in_the_next_fit_train_as_the_same_weights(data):
    """A pandas Series (which reaches the step as (batch, 1) float64), then a (rows,) array, then
    (rows, 1), then a tf.data.Dataset of each: the compiled step failed ("Tried to explicitly
    squeeze dimension 0") when the form changed between fits."""
    x, y, w = data

    def dataset(weights):
        return {"x": tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16), "batch_size": None}
    forms = [{"x": x, "y": y, "sample_weight": weights} for weights in (pd.Series(w), w, w[:, None].astype("float32"))]
    forms += [dataset(w), dataset(w[:, None])]
    expected = losses(din(), [{"x": x, "y": y, "sample_weight": w}] * len(forms))
    np.testing.assert_allclose(losses(din(), forms), expected, rtol=1e-5)


def test_weights_of_one_and_weights_of_zero_train_as_no_weights_and_as_dropped_rows(data):
    x, y, _ = data
    ones = losses(din(), [{"x": x, "y": y, "sample_weight": np.ones(ROWS)}])
    assert ones == pytest.approx(losses(din(), [{"x": x, "y": y}]), rel=1e-6)
    keep = np.arange(ROWS) < ROWS // 2
    weighted, dropped = din(), din()
    # Keras divides the weighted sum by all the batch's rows: 2 on half the rows is 1 on that half alone.
    weighted.fit(x, y, sample_weight=2.0 * keep, batch_size=ROWS, epochs=1, verbose=0)
    dropped.fit({name: values[keep] for name, values in x.items()}, y[keep], batch_size=ROWS, epochs=1, verbose=0)
    np.testing.assert_allclose(weighted.predict(x, verbose=0), dropped.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("weights, message", [
    (lambda w: np.where(np.arange(ROWS) == 7, np.nan, w), r"sample_weight needs finite weights >= 0, but row 7 holds nan"),
    (lambda w: -w, r"sample_weight needs finite weights >= 0, but row 0 holds -"),
    (lambda w: w[:-5], rf"sample_weight has {ROWS - 5} rows, but the features have {ROWS}; give one weight per example"),
    (lambda w: np.stack([w, w], axis=1), rf"sample_weight needs one number per row, as a \(rows,\) or \(rows, 1\) "
                                         rf"array, but has shape \({ROWS}, 2\)"),
    (lambda w: w.astype(str), r"sample_weight needs one number per row.*dtype <U"),
    (lambda w: {"ctr": w}, r"sample_weight names \['ctr'\], which are not its outputs \['prediction'\]"),
])
def test_sample_weights_a_step_cannot_use_are_named_before_anything_runs(data, weights, message):
    x, y, w = data
    model = din()
    before = [v.numpy() for v in model.weights]
    for call in (model.fit, model.evaluate):
        with pytest.raises(ValueError, match=f"model 'din': {message}"):
            call(x, y, sample_weight=weights(w), verbose=0)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.weights))


def test_a_multi_task_model_takes_weights_for_some_of_its_outputs():
    """{task: weights} or a list with None for the other outputs, as Keras takes them."""
    from tfrec.data import df_to_inputs, make_multitask_data, multitask_feature_columns
    from tfrec.models import MMOE, compile_multitask

    df = make_multitask_data(400)
    columns = multitask_feature_columns(df)
    tf.keras.utils.set_random_seed(0)
    model = compile_multitask(MMOE(columns, task_types=("binary", "binary"), task_names=("ctr", "ctcvr"),
                                   expert_dnn_hidden_units=(8,), tower_dnn_hidden_units=(4,)))
    x, ones = df_to_inputs(df, columns), np.ones(len(df))
    labels = [df["click"].to_numpy("float32"), df["conversion"].to_numpy("float32")]
    for weights, y in (({"ctr": ones}, dict(zip(("ctr", "ctcvr"), labels))), ([ones, None], labels)):
        assert np.isfinite(model.fit(x, y, sample_weight=weights, batch_size=100, verbose=0).history["loss"][0])
    with pytest.raises(ValueError, match=r"sample_weight\['ctcvr'\] needs finite weights >= 0, but row 0 holds -1"):
        model.fit(x, labels, sample_weight=[ones, -ones], verbose=0)
