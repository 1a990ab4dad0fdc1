import feature_columns._legacy_keras  # noqa: F401

import os

import numpy as np
import pytest
import tensorflow as tf

import exporters
from tests.exporters.conftest import EXTRA_OUTPUTS

# Rows the model never saw: sequences longer (5) and shorter (1) than in training (3), and
# users outside the vocabulary.
UNSEEN_ROWS = {
    "user": ["alice", "mallory", "carol", "zed"],
    "hist_item_id": [[1, 2, 3, 4, 5], [6, 0, 0, 0, 0], [9, 8, 7, 6, 5], [2, 2, 0, 0, 0]],
    "price": [0.5, 1.5, 0.0, 3.0],
    "context": [[0.1, 0.2, 0.3], [1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]],
}


def signature_feed(rows):
    return {
        "user": tf.constant(rows["user"]),
        "hist_item_id": tf.constant(rows["hist_item_id"], tf.int64),
        "price": tf.constant(rows["price"], tf.float32),
        "context": tf.constant(rows["context"], tf.float32),
    }


def keras_feed(rows):
    """The same rows the way the Keras model takes them: scalars as (n, 1)."""
    return {
        "user": np.array(rows["user"], dtype=object)[:, None],
        "hist_item_id": np.array(rows["hist_item_id"], dtype="int64"),
        "price": np.array(rows["price"], dtype="float32")[:, None],
        "context": np.array(rows["context"], dtype="float32"),
    }


def expected_outputs(model, rows):
    """What the signature must return: model.predict plus the extra layers, (n, 1) squeezed."""
    tensors = dict(zip(model.output_names, model.outputs))
    tensors.update({name: model.get_layer(name).output for name in EXTRA_OUTPUTS})
    predictions = tf.keras.Model(model.input, tensors).predict(keras_feed(rows), verbose=0)
    assert np.allclose(predictions["ctr"], model.predict(keras_feed(rows), verbose=0)[0])
    return {name: values[:, 0] if values.shape[1:] == (1,) else values
            for name, values in predictions.items()}


def test_export_layout(exported):
    assert os.path.basename(exported) == "1"
    assert os.path.isfile(os.path.join(exported, "saved_model.pb"))
    assert os.path.isfile(os.path.join(exported, "variables", "variables.index"))
    assert os.path.isdir(os.path.join(exported, "assets"))
    assert os.path.isfile(os.path.join(exported, "assets.extra", "tf_serving_warmup_requests"))
    assert os.listdir(os.path.dirname(exported)) == ["1"]  # no staging directory left
    # Readable by a server running as another user, as the umask allows (not mkdtemp's 0700).
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(exported).st_mode & 0o777 == 0o777 & ~umask


def test_versions_count_up_from_one_and_existing_ones_are_refused(tiny_model, tmp_path):
    export_base = tmp_path / "tiny"

    assert exporters.export_saved_model(tiny_model, export_base) == str(export_base / "1")
    assert exporters.export_saved_model(tiny_model, str(export_base)) == str(export_base / "2")
    assert exporters.export_saved_model(tiny_model, export_base, version=7) == str(
        export_base / "7")
    with pytest.raises(FileExistsError, match=f"{export_base / '2'} already exists"):
        exporters.export_saved_model(tiny_model, export_base, version=2)

    assert sorted(os.listdir(export_base)) == ["1", "2", "7"]
    assert exporters.next_version(export_base) == 8


def test_the_next_version_skips_a_file_named_as_a_version(tiny_model, tmp_path):
    """A file "2" beside version 1 made version=None fail with "version directory .../2 already
    exists; pass another version or version=None"."""
    export_base = tmp_path / "tiny"
    exporters.export_saved_model(tiny_model, export_base)
    (export_base / "2").write_text("not a version")
    assert exporters.export_saved_model(tiny_model, export_base) == str(export_base / "3")
    assert exporters.existing_versions(export_base) == [1, 3]


def test_a_version_held_by_a_zero_padded_folder_is_refused(tiny_model, tmp_path):
    """"007" is version 7 to TF Serving: version=7 wrote a second folder "7" of version 7, which a
    server already serving "007" never loads."""
    export_base = tmp_path / "tiny"
    exporters.export_saved_model(tiny_model, export_base, version=7)
    os.rename(export_base / "7", export_base / "007")
    with pytest.raises(FileExistsError, match=f"{export_base / '007'} already exists"):
        exporters.export_saved_model(tiny_model, export_base, version=7)
    assert os.listdir(export_base) == ["007"]


def test_a_version_taking_other_inputs_than_the_latest_is_exported_with_a_warning(tiny_model, tmp_path, caplog):
    """A new version whose inputs differ (an inferred column's type moved with the data) would
    break the clients of the served one: the export names each change."""
    export_base = tmp_path / "tiny"
    with caplog.at_level("WARNING", logger="exporters.saved_model"):
        exporters.export_saved_model(tiny_model, export_base)
        exporters.export_saved_model(tiny_model, export_base)
    assert "takes other inputs" not in caplog.text  # the same inputs: nothing to say

    user = tf.keras.Input((1,), name="user", dtype=tf.int64)  # was a string
    history = tf.keras.Input((None,), name="hist_item_id", dtype=tf.int64)
    items = tf.keras.layers.GlobalAveragePooling1D()(tf.keras.layers.Embedding(10, 2)(history))
    score = tf.keras.layers.Dense(1, activation="sigmoid")(tf.keras.layers.Concatenate()(
        [tf.keras.layers.Flatten()(tf.keras.layers.Embedding(10, 2)(user)), items]))
    changed = tf.keras.Model({"user": user, "hist_item_id": history}, score)
    with caplog.at_level("WARNING", logger="exporters.saved_model"):
        assert exporters.export_saved_model(changed, export_base).endswith("3")
    assert f"the new version of {export_base} takes other inputs than version 2" in caplog.text
    assert "context removed; price removed; user string [None] -> int64 [None]" in caplog.text


@pytest.mark.parametrize("version, error", [(-1, ValueError), ("3", TypeError),
                                            (True, TypeError), (2**63, ValueError)])
def test_bad_version_is_refused(tiny_model, tmp_path, version, error):
    with pytest.raises(error, match="version must be a non-negative integer"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny", version=version)
    assert not (tmp_path / "tiny").exists()


def test_versions_beyond_int64_are_none_that_tf_serving_would_serve(tiny_model, tmp_path):
    """TF Serving reads version folders as int64 and ignores one named beyond: version=2**63 was
    written (never served), and a folder so named made the next version 2**63 + 1."""
    export_base = tmp_path / "tiny"
    (export_base / str(2**63)).mkdir(parents=True)
    assert exporters.existing_versions(export_base) == []
    assert exporters.export_saved_model(tiny_model, export_base) == str(export_base / "1")
    assert exporters.export_saved_model(tiny_model, export_base, version=2**63 - 1) == str(export_base / str(2**63 - 1))
    with pytest.raises(ValueError, match=r"version must be a non-negative integer of at most 2\*\*63 - 1, got "
                                         r"9223372036854775808: TF Serving reads versions as int64"):
        exporters.export_saved_model(tiny_model, export_base)
    assert sorted(os.listdir(export_base)) == sorted(["1", str(2**63 - 1), str(2**63)])


def test_signature_takes_raw_features_by_name(serving_signature):
    _, input_specs = serving_signature.structured_input_signature
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in input_specs.items()} == {
        "user": (tf.string, [None]),
        "hist_item_id": (tf.int64, [None, None]),
        "price": (tf.float32, [None]),
        "context": (tf.float32, [None, 3]),
    }
    assert {name: spec.shape.as_list()
            for name, spec in serving_signature.structured_outputs.items()} == {
        "ctr": [None], "cvr": [None], "ctr_logit": [None], "shared": [None, 8]}


def test_signature_outputs_equal_model_predict_on_unseen_lengths_and_values(
        tiny_model, serving_signature):
    outputs = serving_signature(**signature_feed(UNSEEN_ROWS))
    expected = expected_outputs(tiny_model, UNSEEN_ROWS)

    assert set(outputs) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(outputs[name].numpy(), values, atol=1e-6, err_msg=name)
    # Both unknown users fall into the one OOV bucket; with the same other features they
    # would score alike, so compare their user contribution through a fresh pair of rows.
    same_but_user = {key: [values[0], values[0]] for key, values in UNSEEN_ROWS.items()}
    same_but_user["user"] = ["mallory", "zed"]
    ctr = serving_signature(**signature_feed(same_but_user))["ctr"].numpy()
    assert ctr[0] == ctr[1]


def test_a_loaded_export_is_callable_on_one_dict_of_features(loaded, serving_signature):
    """`tf.saved_model.load(path)(features)`, as a loaded Keras model is called: tensors,
    numpy arrays and lists alike give serving_default's outputs; a missing feature is an error."""
    expected = serving_signature(**signature_feed(UNSEEN_ROWS))
    for feed in (signature_feed(UNSEEN_ROWS), {k: np.asarray(v) for k, v in UNSEEN_ROWS.items()}, UNSEEN_ROWS):
        outputs = loaded(feed)
        assert set(outputs) == set(expected)
        for name, values in expected.items():
            np.testing.assert_array_equal(outputs[name].numpy(), values.numpy(), err_msg=name)
    with pytest.raises(TypeError, match="different keys"):
        loaded({k: v for k, v in UNSEEN_ROWS.items() if k != "price"})


def test_a_root_with_a_call_of_its_own_keeps_it(tmp_path):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return 2 * x

    serving = tf.function(lambda **features: {"y": features["x"] + 1}).get_concrete_function(
        x=tf.TensorSpec([None], tf.float32))
    path = exporters.write_saved_model_version(tmp_path / "m", Doubler(), {"serving_default": serving})
    loaded = tf.saved_model.load(path)
    np.testing.assert_array_equal(loaded(tf.constant([1.0, 3.0])).numpy(), [2.0, 6.0])
    np.testing.assert_array_equal(loaded.signatures["serving_default"](x=tf.constant([1.0]))["y"].numpy(), [2.0])


def test_single_item_sequences_match_model_predict(tiny_model, serving_signature):
    rows = {"user": ["bob"], "hist_item_id": [[4]], "price": [2.0], "context": [[0.0, 1.0, 2.0]]}
    outputs = serving_signature(**signature_feed(rows))
    for name, values in expected_outputs(tiny_model, rows).items():
        np.testing.assert_allclose(outputs[name].numpy(), values, atol=1e-6, err_msg=name)


def test_unknown_extra_output_names_the_layer_and_the_choices(tiny_model, tmp_path):
    with pytest.raises(ValueError, match=r"extra output 'ctcvr' is not a layer .*'shared'"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny", extra_outputs=["ctcvr"])
    with pytest.raises(ValueError, match="extra output 'ctr' is already an output"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny", extra_outputs=["ctr"])
    assert not (tmp_path / "tiny").exists()


def test_extra_outputs_none_is_none_and_a_string_is_refused(tiny_model, tmp_path):
    """None (no extra outputs) failed with "'NoneType' object is not iterable"; a string was taken
    letter by letter ("extra output 'c' is not a layer")."""
    with pytest.raises(ValueError, match=r"extra_outputs must be a list of layer names, e.g. \['shared'\]"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny", extra_outputs="shared")
    assert not (tmp_path / "tiny").exists()
    path = exporters.export_saved_model(tiny_model, tmp_path / "tiny", extra_outputs=None)
    assert set(tf.saved_model.load(path).signatures["serving_default"].structured_outputs) == set(
        tiny_model.output_names)


def test_subclassed_model_is_refused(tmp_path):
    class Identity(tf.keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(TypeError, match="functional tf.keras Model .* got Identity"):
        exporters.export_saved_model(Identity(), tmp_path / "identity")


@pytest.mark.parametrize("name", ["user-id", "user id", "_user"])
def test_an_input_name_no_signature_can_take_is_refused_naming_it(tmp_path, name):
    """TensorFlow renames such a signature input ("user-id" -> "user_id"): the export failed
    tracing, with a KeyError deep in a TensorFlow traceback naming neither the input nor why."""
    user = tf.keras.Input((1,), name=name, dtype=tf.float32)
    model = tf.keras.Model({name: user}, tf.keras.layers.Dense(1, name="score")(user))
    with pytest.raises(ValueError, match=f"Input '{name}': name '{name}' must start with a letter and hold only "
                                         "letters, digits and '_'"):
        exporters.export_saved_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("feature, value", [("price", float("nan")), ("context", float("inf"))])
def test_nan_or_inf_in_a_float_input_is_invalid_argument_naming_it(serving_signature, feature, value):
    """A tfrec model never saw a NaN (fit refuses them): its export refuses one instead of scoring it."""
    rows = {name: list(values) for name, values in UNSEEN_ROWS.items()}
    rows[feature] = [value if i == 1 else cell for i, cell in enumerate(rows[feature])] if feature == "price" else \
        [[value, 0.0, 0.0] if i == 1 else cell for i, cell in enumerate(rows[feature])]
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"Input {feature} holds NaN or inf"):
        serving_signature(**signature_feed(rows))


def test_a_one_interest_mask_keeps_its_axis_and_a_one_column_score_is_a_vector(tmp_path):
    """A user tower's interest mask is (batch, k_max), also at k_max 1 (MIND with one interest);
    any other (batch, 1) output is a score, served as (batch,)."""
    history = tf.keras.Input((3,), dtype=tf.float32, name="hist")
    interests = tf.keras.layers.Reshape((1, 3), name="user_embedding")(history)
    mask = tf.keras.layers.Dense(1, name="interest_mask")(history)
    score = tf.keras.layers.Dense(1, name="score")(history)
    tower = tf.keras.Model({"hist": history}, [interests, mask, score])
    path = exporters.export_saved_model(tower, str(tmp_path / "tower"))
    outputs = tf.saved_model.load(path).signatures["serving_default"](hist=tf.ones((2, 3)))
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        "user_embedding": (2, 1, 3), "interest_mask": (2, 1), "score": (2,)}
