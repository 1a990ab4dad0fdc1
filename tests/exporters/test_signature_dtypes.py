"""Serving signatures take every integer feature as int64, whatever the model's Input dtype.

A DeepCTR-style id column is int32, but numpy/pandas/JSON/tf.Example clients send int64, and
TF Serving refuses a request whose dtype differs from the signature's. So the exporters
declare integer Inputs int64 and cast them inside the graph; an id that does not fit the
model's dtype fails with INVALID_ARGUMENT naming the feature. Old int32 exports still serve.
"""
import feature_columns._legacy_keras  # noqa: F401

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

import exporters
from serving import Client, LocalServer

NUM_IDS = 50
CONFIG = """
model_config_list {{
  config {{ name: "ids" base_path: "{ids}" model_platform: "tensorflow" }}
  config {{ name: "old_int32" base_path: "{old}" model_platform: "tensorflow" }}
}}
"""


def int32_model():
    """Inputs as a DeepCTR-style model declares them: int32 id "c0" (None, 1) and id sequence
    "seq", a float64 dense "f64", a string "tag"; output "p" (None, 1)."""
    tf.keras.utils.set_random_seed(3)
    c0 = tf.keras.Input((1,), name="c0", dtype=tf.int32)
    seq = tf.keras.Input((None,), name="seq", dtype=tf.int32)
    f64 = tf.keras.Input((2,), name="f64", dtype=tf.float64)
    tag = tf.keras.Input((1,), name="tag", dtype=tf.string)
    tag_index = tf.keras.layers.StringLookup(vocabulary=["a", "b"])(tag)
    parts = [
        tf.keras.layers.Flatten()(tf.keras.layers.Embedding(NUM_IDS, 4)(c0)),
        tf.keras.layers.GlobalAveragePooling1D()(
            tf.keras.layers.Embedding(NUM_IDS, 4, mask_zero=True)(seq)),
        tf.keras.layers.Lambda(lambda x: tf.cast(x, tf.float32))(f64),
        tf.keras.layers.Flatten()(tf.keras.layers.Embedding(4, 2)(tag_index)),
    ]
    output = tf.keras.layers.Dense(1, activation="sigmoid", name="p")(
        tf.keras.layers.Concatenate()(parts))
    return tf.keras.Model({"c0": c0, "seq": seq, "f64": f64, "tag": tag}, output, name="ids")


ROWS = {
    "c0": np.array([1, 7, 49]),                         # int64, numpy's default
    "seq": np.array([[1, 2, 3], [4, 0, 0], [9, 8, 0]]),
    "f64": np.array([[0.5, 1.0], [0.0, -1.0], [2.0, 3.0]]),
    "tag": np.array([b"a", b"b", b"zzz"], dtype=object),
}


def in_process(model, rows):
    return model.predict({"c0": rows["c0"].astype("int32")[:, None],
                          "seq": rows["seq"].astype("int32"),
                          "f64": rows["f64"],
                          "tag": rows["tag"][:, None]}, verbose=0)[:, 0]


class OldInt32(tf.Module):
    """What an export made before the fix looks like: an int32 signature input."""

    def __init__(self):
        super().__init__()
        self.table = tf.Variable(tf.range(NUM_IDS, dtype=tf.float32) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32, name="c0")])
    def serve(self, c0):
        return {"p": tf.gather(self.table, c0)}


@pytest.fixture(scope="module")
def model():
    return int32_model()


@pytest.fixture(scope="module")
def export_dirs(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("signature_dtypes")
    ids = exporters.export_saved_model(
        model, root / "ids", warmup_inputs={name: values for name, values in ROWS.items()})
    old = OldInt32()
    tf.saved_model.save(old, str(root / "old_int32" / "1"),
                        signatures={"serving_default": old.serve})
    return {"root": root, "ids": ids, "old": str(root / "old_int32" / "1")}


@pytest.fixture(scope="module")
def server(export_dirs):
    root = export_dirs["root"]
    config = root / "models.config"
    config.write_text(CONFIG.format(ids=root / "ids", old=root / "old_int32"))
    with LocalServer(model_config_file=str(config), rest=False, poll_wait_seconds=30) as running:
        yield running


def plain_request(model_name, rows):
    """A request as any TF Serving client builds it: tf.make_tensor_proto of numpy arrays."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    for name, values in rows.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values))
    return request


def test_integer_inputs_are_declared_int64_others_keep_their_dtype(export_dirs):
    loaded = tf.saved_model.load(export_dirs["ids"])
    _, specs = loaded.signatures["serving_default"].structured_input_signature
    assert {name: (spec.dtype, spec.shape.as_list()) for name, spec in specs.items()} == {
        "c0": (tf.int64, [None]),
        "seq": (tf.int64, [None, None]),
        "f64": (tf.float64, [None, 2]),
        "tag": (tf.string, [None]),
    }


def test_warmup_requests_carry_int64_ids(export_dirs):
    records = exporters.read_warmup_requests(export_dirs["ids"])
    assert len(records) == 3
    inputs = records[0].predict_log.request.inputs
    assert inputs["c0"].dtype == tf.int64.as_datatype_enum
    assert inputs["seq"].dtype == tf.int64.as_datatype_enum


def test_plain_int64_grpc_request_scores_as_in_process(model, stub):
    response = stub.Predict(plain_request("ids", ROWS), timeout=60)
    served = tf.make_ndarray(response.outputs["p"])
    np.testing.assert_allclose(served, in_process(model, ROWS), atol=1e-6)


@pytest.mark.parametrize("feature, value", [("c0", 2**40), ("seq", -2**40)])
def test_id_outside_int32_is_invalid_argument_naming_the_feature(model, stub, feature, value):
    rows = {name: values.copy() for name, values in ROWS.items()}
    if feature == "c0":
        rows["c0"][1] = value
    else:
        rows["seq"][2, 1] = value
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(plain_request("ids", rows), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"Input {feature} holds values outside the int32 range" in caught.value.details()
    assert str(value) in caught.value.details()
    # The server keeps serving.
    response = stub.Predict(plain_request("ids", ROWS), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["p"]), in_process(model, ROWS),
                               atol=1e-6)


def test_old_int32_export_still_serves(server, stub):
    ids = np.array([1, 2, 40], np.int32)
    response = stub.Predict(plain_request("old_int32", {"c0": ids}), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["p"]), ids / 10.0, rtol=1e-6)
    # As on TF Serving, the raw request must match its int32 signature ...
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(plain_request("old_int32", {"c0": ids.astype(np.int64)}), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'Expects input "c0" to be int32 but int64 is provided' in caught.value.details()
    # ... while serving.Client casts numpy's int64 to it.
    with Client(server.grpc_target) as client:
        outputs = client.predict("old_int32", {"c0": ids.astype(np.int64)})
    np.testing.assert_allclose(outputs["p"], ids / 10.0, rtol=1e-6)


def test_signature_casts_and_checks_in_process(export_dirs):
    serve = tf.saved_model.load(export_dirs["ids"]).signatures["serving_default"]
    feed = {name: tf.constant(values) for name, values in ROWS.items()}
    assert serve(**feed)["p"].shape == [3]
    feed["c0"] = tf.constant([1, 2**31], tf.int64)  # one past int32's max
    feed = {name: values[:2] for name, values in feed.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input c0 holds values outside"):
        serve(**feed)


# ---------------------------------------------------------------- retrieval


def int32_two_tower():
    from tfrec.models import TwoTowerModel

    tf.keras.utils.set_random_seed(5)
    user_id = tf.keras.Input((1,), name="user_id", dtype=tf.int32)
    item_id = tf.keras.Input((1,), name="item_id", dtype=tf.int32)
    user = tf.keras.layers.Flatten(name="user_embedding")(
        tf.keras.layers.Embedding(NUM_IDS, 4)(user_id))
    item = tf.keras.layers.Flatten(name="item_embedding")(
        tf.keras.layers.Embedding(NUM_IDS, 4)(item_id))
    score = tf.keras.layers.Dot(axes=1)([user, item])
    return TwoTowerModel(inputs={"user_id": user_id, "item_id": item_id}, outputs=score,
                         name="int32_tt")


def test_retrieval_and_user_tower_signatures_take_int64_ids(tmp_path):
    model = int32_two_tower()
    item_ids = np.arange(1, NUM_IDS, dtype=np.int64)
    result = exporters.export_retrieval(model, tmp_path / "tt", pd.DataFrame({"item_id": item_ids}),
                                        k=5, index="brute_force")
    users = np.array([1, 2, 3])  # int64
    user_vectors = model.user_tower.predict(users.astype("int32")[:, None], verbose=0)
    item_vectors = model.item_tower.predict(item_ids.astype("int32")[:, None], verbose=0)
    expected = np.sort(user_vectors @ item_vectors.T, axis=1)[:, ::-1][:, :5]
    for path in (result.path, result.brute_force_path, result.user_tower_path):
        serve = tf.saved_model.load(path).signatures["serving_default"]
        _, specs = serve.structured_input_signature
        assert {name: spec.dtype for name, spec in specs.items()} == {"user_id": tf.int64}, path
        outputs = serve(user_id=tf.constant(users))
        if path == result.user_tower_path:
            np.testing.assert_allclose(outputs["user_embedding"].numpy(), user_vectors, atol=1e-6)
        else:
            np.testing.assert_allclose(outputs["scores"].numpy(), expected, rtol=1e-5)
        with pytest.raises(tf.errors.InvalidArgumentError, match="Input user_id holds values"):
            serve(user_id=tf.constant([1, 2**40], tf.int64))


def test_retrieval_candidates_beyond_the_int32_item_input_are_refused(tmp_path):
    """The item tower computes the candidates' vectors in its dtype: 2**32 + 3 wrapped around to
    item 3 and was exported with its vector, a result no request could tell from item 3's."""
    with pytest.raises(ValueError, match=r"candidates column 'item_id' holds 4294967299, beyond int32 \(the model's "
                                         r"item id input\), which would wrap around to another id"):
        exporters.export_retrieval(int32_two_tower(), tmp_path / "tt", [1, 2, 3, 2**32 + 3], k=2,
                                   index="brute_force")
    assert not (tmp_path / "tt").exists()
