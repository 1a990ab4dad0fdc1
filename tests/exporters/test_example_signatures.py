"""tfrec exports carry tf.Example-parsing `classify` / `regress` signatures beside
`serving_default`, with TF Serving's method names, answering what serving_default answers."""
import feature_columns._legacy_keras  # noqa: F401

import re

import numpy as np
import pytest
import tensorflow as tf

import exporters
from exporters.saved_model import example_feature_spec, signature_input_specs
from serving.json_examples import example_from_dict
from tests.conftest import run_saved_model_cli

ROWS = [
    {"user": "carol", "hist_item_id": [3, 1, 4, 1, 5], "price": 0.25, "context": [1.0, 2.0, 3.0]},
    {"user": "nobody", "hist_item_id": [5], "price": 4.0, "context": [0.0, 0.5, 0.0]},
    {"user": "alice", "hist_item_id": [], "price": 1.5, "context": [2.0, 0.0, 1.0]},
]


def serialized(rows):
    return tf.constant([example_from_dict(row).SerializeToString() for row in rows])


def dense_inputs(rows):
    """The same rows as a serving_default client sends them: sequences right-padded with 0."""
    width = max(1, max(len(row["hist_item_id"]) for row in rows))
    return {
        "user": tf.constant([row["user"] for row in rows]),
        "hist_item_id": tf.constant([row["hist_item_id"] + [0] * (width - len(row["hist_item_id"]))
                                     for row in rows], tf.int64),
        "price": tf.constant([row["price"] for row in rows], tf.float32),
        "context": tf.constant([row["context"] for row in rows], tf.float32),
    }


def test_saved_model_cli_shows_the_signatures_and_method_names(exported):
    shown = run_saved_model_cli("show", "--all", "--dir", exported)
    assert shown.returncode == 0, shown.stderr
    sections = {name: method for name, _, method in re.findall(
        r"signature_def\['([^']+)'\]:(.*?)Method name is: ([^\n]*)", shown.stdout, re.S)
        if not name.startswith("__")}
    assert sections == {
        "serving_default": "tensorflow/serving/predict",
        "shared_history": "tensorflow/serving/predict",  # it has a hist_item_id input
        "classify": "tensorflow/serving/classify",
        "regress": "tensorflow/serving/regress",
        "regress_ctr": "tensorflow/serving/regress",
        "regress_cvr": "tensorflow/serving/regress",
        "regress_ctr_logit": "tensorflow/serving/regress",
    }
    classify = shown.stdout.split("signature_def['classify']:")[1].split("Method name")[0]
    assert re.search(r"inputs\['inputs'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)",
                     classify)
    assert re.search(r"outputs\['scores'\] tensor_info:\s+dtype: DT_FLOAT\s+shape: \(-1, 2\)",
                     classify)
    assert re.search(r"outputs\['classes'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1, 2\)",
                     classify)


def test_feature_spec_follows_the_serving_inputs(tiny_model):
    serving_model = exporters.saved_model._serving_model(tiny_model, ())
    spec = example_feature_spec(signature_input_specs(serving_model))
    assert spec == {
        "user": tf.io.FixedLenFeature([], tf.string),
        "hist_item_id": tf.io.VarLenFeature(tf.int64),
        "price": tf.io.FixedLenFeature([], tf.float32),
        "context": tf.io.FixedLenFeature([3], tf.float32),
    }


def test_example_signatures_answer_what_serving_default_answers(loaded):
    served = loaded.signatures["serving_default"](**dense_inputs(ROWS))
    examples = serialized(ROWS)
    classified = loaded.signatures["classify"](inputs=examples)
    np.testing.assert_allclose(classified["scores"][:, 1], served["ctr"], atol=1e-6)
    np.testing.assert_allclose(classified["scores"][:, 0], 1.0 - served["ctr"].numpy(),
                               atol=1e-6)
    assert classified["classes"].numpy().tolist() == [[b"0", b"1"]] * len(ROWS)
    np.testing.assert_allclose(loaded.signatures["regress"](inputs=examples)["outputs"],
                               served["ctr"], atol=1e-6)
    for name in ("ctr", "cvr", "ctr_logit"):
        np.testing.assert_allclose(
            loaded.signatures[f"regress_{name}"](inputs=examples)["outputs"], served[name],
            atol=1e-6)
    # One example alone, its sequence empty: padded to one 0, as a client pads it.
    alone = loaded.signatures["regress"](inputs=serialized(ROWS[2:]))["outputs"]
    np.testing.assert_allclose(alone, loaded.signatures["serving_default"](
        **dense_inputs(ROWS[2:]))["ctr"], atol=1e-6)


def test_a_missing_scalar_feature_is_invalid_argument(loaded):
    row = dict(ROWS[0])
    del row["price"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="price"):
        loaded.signatures["classify"](inputs=serialized([row]))


def test_a_model_tf_examples_cannot_carry_keeps_serving_default_only(tmp_path):
    image = tf.keras.Input((None, 2), name="image", dtype=tf.float32)
    model = tf.keras.Model(image, tf.keras.layers.Dense(1, activation="sigmoid", name="p")(
        tf.keras.layers.GlobalAveragePooling1D()(image)))
    path = exporters.export_saved_model(
        model, tmp_path / "odd", warmup_inputs={"image": np.zeros((1, 3, 2), np.float32)})
    assert sorted(tf.saved_model.load(path).signatures) == ["serving_default"]


def test_a_regression_head_first_gets_regress_but_no_classify(tmp_path):
    """Classify would read a regression's value as a probability ([1 - v, v] of any sign)."""
    from tfrec.layers import PredictionLayer

    price = tf.keras.Input((1,), name="price", dtype=tf.float32)
    model = tf.keras.Model(price, PredictionLayer("regression", name="revenue")(tf.keras.layers.Dense(1)(price)))
    path = exporters.export_saved_model(model, tmp_path / "revenue", warmup_inputs={"price": np.ones((1, 1), "float32")})
    assert sorted(tf.saved_model.load(path).signatures) == ["regress", "serving_default"]
