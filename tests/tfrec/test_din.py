"""DIN end to end: quality vs the oracle, raw values, padding, save/load, export, serving."""
import grpc
import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import SparseFeat, VarLenSparseFeat
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

import tfrec.layers
from tfrec.data import df_to_inputs
from tfrec.evaluation import evaluate_binary
from tfrec.layers import AttentionSequencePooling, LocalActivationUnit
from tfrec.models import DIN, SharedHistoryModel
from tfrec.recipes import build_din
from tests.conftest import run_saved_model_cli


def rows(planted_din, n=64):
    return df_to_inputs(planted_din.test.head(n), planted_din.columns)


def predict(model, inputs):
    return model.predict(inputs, verbose=0).reshape(-1)


def test_quality_reaches_95_percent_of_the_oracle(planted_din):
    report = evaluate_binary(planted_din.model, planted_din.test, planted_din.columns, "click",
                             truth_col="p_click", group_col="user_id")
    print(f"\nDIN test AUC {report['auc']:.4f} GAUC {report['gauc']:.4f} logloss {report['logloss']:.4f} "
          f"oracle AUC {report['oracle_auc']:.4f} oracle GAUC {report['oracle_gauc']:.4f} "
          f"ratio {report['ratio_to_oracle']:.3f}")
    assert report["ratio_to_oracle"] >= 0.95
    assert report["gauc"] <= report["oracle_gauc"] + 0.02  # GAUC is defined: 5 held-out events per user
    assert 0 < report["logloss"] < 0.7


def test_unseen_raw_ids_fall_into_the_oov_bucket(planted_din):
    inputs = rows(planted_din, 4)
    inputs["item_id"] = np.array(["never-seen-1", "never-seen-2", "never-seen-3", "never-seen-4"], object)
    inputs["user_id"] = np.array(["new-user"] * 4, object)
    inputs["hist_item_id"][0, 0] = "never-seen-in-history"
    scores = predict(planted_din.model, inputs)
    assert np.all(np.isfinite(scores)) and np.all((scores > 0) & (scores < 1))
    same_context = {name: np.repeat(value[1:2], 2, axis=0) for name, value in inputs.items()}
    same_context["item_id"] = np.array(["never-seen-5", "never-seen-6"], object)
    oov = predict(planted_din.model, same_context)
    assert oov[0] == oov[1]  # two unknown items share the OOV embedding


def test_padding_never_changes_the_output(planted_din):
    inputs = rows(planted_din)
    base = predict(planted_din.model, inputs)
    padded = dict(inputs)
    for name in ("hist_item_id", "hist_cate_id"):
        padded[name] = np.pad(inputs[name], ((0, 0), (0, 13)), constant_values="")
    np.testing.assert_array_equal(predict(planted_din.model, padded), base)


def test_history_longer_than_maxlen_scores_like_its_last_maxlen_events(planted_din):
    maxlen = next(c.maxlen for c in planted_din.columns if c.name == "hist_item_id")
    n, width = 8, maxlen + 11
    picks = np.random.default_rng(1).integers(0, len(planted_din.log), (n, width))
    full = rows(planted_din, n)
    full["hist_item_id"] = planted_din.log["item_id"].to_numpy()[picks]
    full["hist_cate_id"] = planted_din.log["cate_id"].to_numpy()[picks]
    last = dict(full, hist_item_id=full["hist_item_id"][:, -maxlen:], hist_cate_id=full["hist_cate_id"][:, -maxlen:])
    if "seq_length" in full:
        full["seq_length"] = np.full(n, width, np.int32)
        last["seq_length"] = np.full(n, maxlen, np.int32)
    np.testing.assert_allclose(predict(planted_din.model, full), predict(planted_din.model, last), atol=1e-7)
    shorter = dict(last, hist_item_id=last["hist_item_id"][:, 1:], hist_cate_id=last["hist_cate_id"][:, 1:])
    if "seq_length" in shorter:
        shorter["seq_length"] = np.full(n, maxlen - 1, np.int32)
    assert not np.allclose(predict(planted_din.model, shorter), predict(planted_din.model, last))


def test_attention_pooling_is_masked_and_vectorised():
    layer = AttentionSequencePooling((8, 4), "dice", weight_normalization=True)
    query = tf.random.normal((3, 1, 6), seed=1)
    keys = tf.random.normal((3, 5, 6), seed=2)
    mask = tf.constant([[True] * 3 + [False] * 2, [True] * 5, [False] * 5])
    pooled = layer(query, keys, mask)
    garbage_keys = tf.where(mask[..., None], keys, 1e3)
    np.testing.assert_allclose(layer(query, garbage_keys, mask).numpy(), pooled.numpy(), atol=1e-6)
    assert pooled.numpy()[2].tolist() == [[0.0] * 6]
    scores = AttentionSequencePooling.from_config({**layer.get_config(), "return_score": True})
    scores(query, keys, mask)  # builds the weights
    scores.set_weights(layer.get_weights())
    np.testing.assert_allclose(scores(query, keys, mask).numpy().sum(axis=-1)[:2], 1.0, rtol=1e-6)


def test_local_activation_unit_equals_the_paper_formula():
    """The factored first layer computes exactly MLP([q, k, q - k, q * k])."""
    unit = LocalActivationUnit((8, 4), "dice")
    query, keys = tf.random.normal((3, 1, 6), seed=1), tf.random.normal((3, 5, 6), seed=2)
    scores = unit(query, keys, training=False)
    features = tf.concat([tf.broadcast_to(query, tf.shape(keys)), keys, query - keys, query * keys], axis=-1)
    hidden = unit.first_activation(tf.matmul(features, unit.first_kernel) + unit.first_bias, training=False)
    np.testing.assert_allclose(scores.numpy(), unit.score(unit.mlp(hidden, training=False)).numpy(), atol=1e-5)
    assert scores.shape == (3, 5, 1)


@pytest.mark.parametrize("fmt", ["savedmodel", "h5", "weights"])
def test_save_and_load_round_trip(planted_din, tmp_path, fmt):
    inputs = rows(planted_din)
    before = predict(planted_din.model, inputs)
    if fmt == "savedmodel":
        planted_din.model.save(tmp_path / "din")
        loaded = tf.keras.models.load_model(tmp_path / "din")
    elif fmt == "h5":
        planted_din.model.save(tmp_path / "din.h5")
        loaded = tf.keras.models.load_model(tmp_path / "din.h5", custom_objects=tfrec.layers.custom_objects)
    else:
        planted_din.model.save_weights(tmp_path / "din_weights.h5")
        loaded = build_din(planted_din.columns)
        loaded.load_weights(tmp_path / "din_weights.h5")
    np.testing.assert_allclose(predict(loaded, inputs), before, atol=1e-6)
    assert loaded.output_names == ["prediction"]
    assert isinstance(loaded, SharedHistoryModel)  # so it still scores a history repeated on every row once


def test_a_history_sequence_pooled_into_the_dnn_keeps_row_by_row_scoring(monkeypatch):
    """DIN scores a batch whose rows repeat one history on its first row only when every `hist_`
    input is read by its attention: a `hist_` sequence that is only pooled into the DNN input
    has one row per candidate, so such a model scores row by row (and equals itself on any rows)."""
    import feature_columns.inputs

    monkeypatch.setattr(feature_columns.inputs, "ONE_HISTORY_MIN_ELEMENTS", 1)
    item = SparseFeat("item_id", 10, 4)
    history = VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4, embedding_name="item_id"), maxlen=3)
    pooled = VarLenSparseFeat(SparseFeat("hist_genre", 5, 4), maxlen=3)
    rows = {"item_id": np.arange(1, 5)[:, None], "hist_item_id": np.tile([[1, 2, 3]], (4, 1)),
            "hist_genre": np.tile([[1, 2, 0]], (4, 1))}
    assert isinstance(DIN([item, history], ["item_id"]), SharedHistoryModel)
    model = DIN([item, history, pooled], ["item_id"])
    assert not isinstance(model, SharedHistoryModel)
    np.testing.assert_allclose(model(rows, training=False), tf.keras.Model(model.inputs, model.outputs)(rows),
                               atol=1e-6)


def test_build_errors_name_the_problem():
    item = SparseFeat("item_id", 10, 4)
    with pytest.raises(ValueError, match="needs its behaviour sequence, a VarLenSparseFeat 'hist_item_id'"):
        DIN([item], ["item_id"])
    wrong = VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4), maxlen=3)
    with pytest.raises(ValueError, match="'hist_item_id' must share the embedding table of 'item_id'"):
        DIN([item, wrong], ["item_id"])
    with pytest.raises(ValueError, match="task must be one of"):
        DIN([item], ["item_id"], task="ranking")


@pytest.mark.parametrize("arguments, message", [
    (dict(dnn_hidden_units=(8, 0)), r"DNN 'dnn': every entry of hidden_units \(a layer's size\) must be an int >= 1, "
                                    r"got 0"),
    (dict(dnn_hidden_units=8), r"DNN 'dnn': hidden_units \(a model's dnn_hidden_units, .*\) must be a list or tuple "
                               r"of layer sizes, got 8"),
    (dict(dnn_dropout=1.5), r"DNN 'dnn': dropout_rate \(a model's dnn_dropout\) must be a number in \[0, 1\), got 1.5"),
    (dict(dnn_activation="relux"), r"DNN 'dnn': unknown activation 'relux': use 'dice', 'prelu', a Keras activation"),
    (dict(att_activation="diceX"), r"LocalActivationUnit '\w+': unknown activation 'diceX'"),
])
def test_mlp_arguments_are_checked_when_the_model_is_built(arguments, message):
    """A layer size of 0 used to build, then abort the whole Python process in oneDNN at the first
    step of fit; the others failed with Keras' messages about 'rate' or a deserialisation."""
    item = SparseFeat("item_id", 10, 4)
    history = VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4, embedding_name="item_id"), maxlen=3)
    with pytest.raises(ValueError, match=message):
        DIN([item, history], ["item_id"], **arguments)


def test_export_passes_saved_model_cli(din_export):
    shown = run_saved_model_cli("show", "--all", "--dir", din_export.path)
    assert shown.returncode == 0, shown.stderr
    assert "signature_def['serving_default']" in shown.stdout
    for name in ("user_id", "item_id", "hist_item_id", "prediction"):
        assert f"['{name}']" in shown.stdout
    ran = run_saved_model_cli(
        "run", "--dir", din_export.path, "--tag_set", "serve", "--signature_def", "serving_default",
        "--input_exprs",
        "user_id=[b'u1'];item_id=[b'i1'];cate_id=[b'c1'];hist_item_id=[[b'i2',b'i3']];"
        "hist_cate_id=[[b'c1',b'c2']];seq_length=[2]")
    assert ran.returncode == 0, ran.stderr
    assert "prediction" in ran.stdout


def test_grpc_predict_equals_in_process_predict(planted_din, din_server):
    from serving import Client

    inputs = rows(planted_din, 100)
    with Client(din_server.grpc_target) as client:
        served = client.predict("din", inputs)
        frame = planted_din.test.head(100)[[c.name for c in planted_din.columns]].copy()
        frame["seq_length"] = inputs["seq_length"]  # list-valued cells are padded by the client
        frame = client.predict("din", frame)
    np.testing.assert_allclose(served["prediction"], predict(planted_din.model, inputs), atol=1e-5)
    np.testing.assert_allclose(frame["prediction"], served["prediction"], atol=1e-6)


def test_warmup_file_parses_as_prediction_logs(din_export):
    from tensorflow_serving.apis import prediction_log_pb2

    path = f"{din_export.path}/assets.extra/tf_serving_warmup_requests"
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    assert len(records) == 3
    assert all(r.predict_log.request.model_spec.name == "din" for r in records)
    assert set(records[0].predict_log.request.inputs) >= {"user_id", "item_id", "hist_item_id"}


def _request(planted_din, model="din", **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, value in rows(planted_din, 2).items():
        if np.issubdtype(value.dtype, np.integer):
            value = value.astype(np.int64)  # what numpy and pandas give a client; the signature's type
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def test_bad_requests_get_precise_status_codes_and_the_server_keeps_serving(planted_din, din_server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(din_server.grpc_target))

    def status_of(request):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        return caught.value.code(), caught.value.details()

    missing = _request(planted_din)
    del missing.inputs["item_id"]
    code, message = status_of(missing)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_id" in message

    wrong_dtype = _request(planted_din)
    wrong_dtype.inputs["item_id"].CopyFrom(tf.make_tensor_proto(np.array([1.5, 2.5], np.float32)))
    code, message = status_of(wrong_dtype)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_id" in message

    code, message = status_of(_request(planted_din, model="no_such_model"))
    assert code == grpc.StatusCode.NOT_FOUND and "no_such_model" in message
    code, message = status_of(_request(planted_din, version=42))
    assert code == grpc.StatusCode.NOT_FOUND and "42" in message
    code, message = status_of(_request(planted_din, signature_name="nope"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "nope" in message

    good = stub.Predict(_request(planted_din), timeout=30)
    assert good.model_spec.name == "din" and good.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(good.outputs["prediction"]),
                               predict(planted_din.model, rows(planted_din, 2)), atol=1e-5)
