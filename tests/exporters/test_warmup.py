import feature_columns._legacy_keras  # noqa: F401

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import exporters
from exporters import warmup
from tests.exporters.tiny_model import TRAINING_SEQUENCE_LENGTH, training_frame

SPECS = {
    "user": tf.TensorSpec([None], tf.string, "user"),
    "hist_item_id": tf.TensorSpec([None, None], tf.int64, "hist_item_id"),
    "price": tf.TensorSpec([None], tf.float32, "price"),
    "context": tf.TensorSpec([None, 3], tf.float32, "context"),
}


def feed_of(log):
    return {name: tf.make_ndarray(proto) for name, proto in log.predict_log.request.inputs.items()}


def test_warmup_file_holds_the_first_rows_as_requests_that_run(
        exported, serving_signature, tiny_model):
    logs = exporters.read_warmup_requests(exported)

    assert len(logs) == warmup.DEFAULT_NUM_WARMUP_RECORDS
    frame = training_frame().head(len(logs))
    _, input_specs = serving_signature.structured_input_signature
    for row, log in enumerate(logs):
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        assert request.model_spec.signature_name == "serving_default"
        assert set(request.inputs) == set(input_specs)
        for name, spec in input_specs.items():
            assert request.inputs[name].dtype == spec.dtype.as_datatype_enum, name
            assert spec.shape.is_compatible_with(tf.make_ndarray(request.inputs[name]).shape)
        feed = feed_of(log)
        assert feed["user"].tolist() == [frame["user"][row].encode()]
        assert feed["hist_item_id"].tolist() == [frame["hist_item_id"][row]]
        assert feed["hist_item_id"].shape == (1, TRAINING_SEQUENCE_LENGTH)

        outputs = serving_signature(**feed)
        ctr, cvr = tiny_model.predict(
            {"user": feed["user"][:, None], "hist_item_id": feed["hist_item_id"],
             "price": feed["price"][:, None], "context": feed["context"]}, verbose=0)
        np.testing.assert_allclose(outputs["ctr"].numpy(), ctr[:, 0], atol=1e-6)
        np.testing.assert_allclose(outputs["cvr"].numpy(), cvr[:, 0], atol=1e-6)


def test_without_inputs_one_row_is_synthesised_from_the_signature(tiny_model, tmp_path):
    version_dir = exporters.export_saved_model(tiny_model, tmp_path / "ranker",
                                               model_name="ctr_model")
    (log,) = exporters.read_warmup_requests(version_dir)

    assert log.predict_log.request.model_spec.name == "ctr_model"
    feed = feed_of(log)
    assert feed["user"].tolist() == [b""]
    assert feed["hist_item_id"].tolist() == [[0]]
    assert feed["price"].tolist() == [0.0]
    assert feed["context"].tolist() == [[0.0, 0.0, 0.0]]


def test_model_name_defaults_to_the_base_path_name(tiny_model, tmp_path):
    version_dir = exporters.export_saved_model(tiny_model, str(tmp_path / "din") + "/")
    (log,) = exporters.read_warmup_requests(version_dir)
    assert log.predict_log.request.model_spec.name == "din"


def test_column_arrays_are_squeezed_and_ragged_lists_right_padded():
    inputs = {
        "user": np.array([["alice"], ["bob"], ["carol"]]),
        "hist_item_id": [[1, 2, 3], [4], []],
        "price": [[0.5], [1.5], [2.5]],
        "context": np.zeros((3, 3)),
        "click": [1, 0, 1],  # not a signature input: ignored
    }
    feeds = warmup.warmup_feeds(SPECS, inputs, num_records=2)

    assert len(feeds) == 2
    assert feeds[1]["user"].tolist() == [b"bob"]
    assert feeds[1]["hist_item_id"].tolist() == [[4, 0, 0]]
    assert feeds[1]["hist_item_id"].dtype == np.int64
    assert feeds[1]["price"].dtype == np.float32 and feeds[1]["price"].tolist() == [1.5]
    assert feeds[0]["context"].shape == (1, 3) and feeds[0]["context"].dtype == np.float32


def test_dataframe_list_cells_are_padded_to_the_longest_of_the_rows_taken():
    frame = pd.DataFrame({
        "user": ["alice", "bob", "carol"],
        "hist_item_id": [[1], [2, 3], [4, 5, 6, 7]],
        "price": [1.0, 2.0, 3.0],
        "context": [[1.0, 2.0, 3.0]] * 3,
    })
    feeds = warmup.warmup_feeds(SPECS, frame, num_records=2)

    assert [feed["hist_item_id"].tolist() for feed in feeds] == [[[1, 0]], [[2, 3]]]
    assert [feed["user"].tolist() for feed in feeds] == [[b"alice"], [b"bob"]]


def test_ragged_rows_of_an_input_of_declared_length_are_padded_to_that_length():
    """A history declared with a fixed length: its rows were padded to the longest row taken, so
    rows all shorter than the declared length stopped the export with a shape mismatch, while a
    short row among full ones went through."""
    specs = {"hist_item_id": tf.TensorSpec([None, 4], tf.int64, "hist_item_id"),
             "tags": tf.TensorSpec([None, 3], tf.string, "tags")}
    feeds = warmup.warmup_feeds(specs, pd.DataFrame({"hist_item_id": [[1, 2], [3], [4, 5, 6]],
                                                     "tags": [["a"], ["b", "c"], []]}))
    assert [feed["hist_item_id"].tolist() for feed in feeds] == [[[1, 2, 0, 0]], [[3, 0, 0, 0]], [[4, 5, 6, 0]]]
    assert [feed["tags"].tolist() for feed in feeds] == [[[b"a", b"", b""]], [[b"b", b"c", b""]], [[b"", b"", b""]]]
    with pytest.raises(ValueError, match=r"warm-up input 'tags' takes rows of 3 values, but row 1 holds 4"):
        warmup.warmup_feeds(specs, {"hist_item_id": [[1], [2]], "tags": [["a"], ["b", "c", "d", "e"]]})


def test_synthetic_feed_fills_unknown_sizes_with_one():
    feed = warmup.synthetic_feed(SPECS)
    assert {name: (values.dtype, values.shape) for name, values in feed.items()} == {
        "user": (np.dtype(object), (1,)),
        "hist_item_id": (np.dtype("int64"), (1, 1)),
        "price": (np.dtype("float32"), (1,)),
        "context": (np.dtype("float32"), (1, 3)),
    }


@pytest.mark.parametrize("change, message", [
    ({"user": None}, r"no feature 'user', which the serving signature takes"),
    ({"context": np.zeros((2, 2))},
     r"'context' has shape \[2, 2\], but the serving signature takes shape \[None, 3\]"),
    ({"price": np.zeros((2, 2))}, r"'price' has shape \[2, 2\].* takes shape \[None\]"),
    ({"user": [1.5, 2.5]}, r"'user' is a string input, but holds 1.5 of type float"),  # ints are their text
    ({"price": ["cheap", "dear"]}, r"'price' cannot be converted to float32"),
    ({"hist_item_id": [[1, 2], 3]}, r"'hist_item_id' mixes list-valued and scalar rows"),
    ({"price": [1.0, 2.0, 3.0]}, r"different numbers of rows: .*'price': 3"),
])
def test_inputs_that_do_not_fit_the_signature_are_named(change, message):
    inputs = {"user": ["a", "b"], "hist_item_id": [[1], [2]], "price": [1.0, 2.0],
              "context": np.zeros((2, 3))}
    inputs.update(change)
    inputs = {name: values for name, values in inputs.items() if values is not None}
    with pytest.raises(ValueError, match=message):
        warmup.warmup_feeds(SPECS, inputs, num_records=5)


def test_int_ids_for_a_string_input_are_their_decimal_text_as_df_to_inputs_sends_them():
    inputs = {"user": np.array([7, 12]), "hist_item_id": [[1], [2]], "price": [1.0, 2.0],
              "context": np.zeros((2, 3))}
    feeds = warmup.warmup_feeds(SPECS, inputs, num_records=2)  # one row each
    assert [feed["user"].tolist() for feed in feeds] == [[b"7"], [b"12"]]


def test_warmup_that_fails_in_the_model_stops_the_export(tiny_model, tmp_path):
    # Item 12 is outside the item embedding table, so the model itself rejects the row.
    frame = training_frame().head(2)
    frame["hist_item_id"] = [frame["hist_item_id"][0], [12]]
    with pytest.raises(ValueError, match="warm-up request 1 .* fails on the serving signature"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny", warmup_inputs=frame)
    assert not (tmp_path / "tiny").exists()


def test_more_warmup_records_than_tf_serving_loads_are_refused_before_writing(tiny_model, tmp_path):
    """TF Serving refuses to load a version whose warm-up file holds more than 1000 records
    ("Number of warmup records exceeds the maximum"): 1001 were written, and the version never served."""
    frame = training_frame(1001)
    with pytest.raises(ValueError, match="num_warmup_records must be at most 1000, got 1001: TF Serving refuses"):
        exporters.export_saved_model(tiny_model, tmp_path / "tiny", warmup_inputs=frame, num_warmup_records=1001)
    assert not (tmp_path / "tiny").exists()
    assert len(warmup.warmup_feeds(SPECS, frame, num_records=1000)) == 1000
