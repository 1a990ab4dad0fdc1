"""CLSR: its layers against numpy references, disentanglement, quality vs DIN and the oracle, export.

The models are trained once per session on the "drift" planted data (tfrec.data.long_history):
click probability moves separately with a stable long-term interest (liked categories, shown far
back in the history) and the current session (the last events); test users are unseen.
"""
import time
from types import SimpleNamespace

import numpy as np
import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from feature_columns import SparseFeat, VarLenSparseFeat

import tfrec.layers
from tfrec import metrics
from tfrec.data import df_to_dataset, df_to_inputs, long_history_feature_columns, make_long_history_setting, oracle_auc
from tfrec.evaluation import evaluate_binary
from tfrec.layers import (HistoryMean, HistoryRNN, InterestContrastiveLoss, InterestFusion, InterestFusionGate,
                          LongTermInterest, ShortTermInterest)
from tfrec.models import CLSR, DIN, interest_model, steerable_model
from tests.conftest import run_saved_model_cli

HISTORY = ["item_id", "cate_id"]
# MAXLEN covers the whole history ("drift" histories hold 50-100 events), so both models see
# the long-term interests, which lie beyond the session's last 10 events.
MAXLEN, EMBEDDING_DIM, EPOCHS, SEED = 100, 8, 4, 0
SIZE = dict(dnn_hidden_units=(64, 32), att_hidden_size=(32, 16))  # the same tower and attention sizes for both


def _compile(model, jit_compile=None):
    model.compile(tf.keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=[metrics.AUC()],
                  **({} if jit_compile is None else {"jit_compile": jit_compile}))


def _fit(model, data):
    tf.keras.utils.set_random_seed(SEED)
    _compile(model)
    started = time.perf_counter()
    history = model.fit(df_to_dataset(data.train, data.columns, "click", batch_size=256, seed=SEED), epochs=EPOCHS,
                        verbose=0)
    return SimpleNamespace(model=model, history=history.history, seconds=time.perf_counter() - started)


@pytest.fixture(scope="session")
def drift():
    train, test = make_long_history_setting("drift", seed=SEED)
    columns = long_history_feature_columns((train, test), maxlen=MAXLEN, embedding_dim=EMBEDDING_DIM, with_time=False)
    return SimpleNamespace(train=train, test=test, columns=columns, inputs=df_to_inputs(test, columns))


@pytest.fixture(scope="session")
def clsr(drift):
    """CLSR with the paper's defaults (triplet, beta 0.1), trained with the default XLA step."""
    tf.keras.utils.set_random_seed(SEED)
    return _fit(CLSR(drift.columns, HISTORY, seed=SEED, **SIZE), drift)


@pytest.fixture(scope="session")
def clsr_without_contrast(drift):
    """The ablation beta = 0."""
    tf.keras.utils.set_random_seed(SEED)
    return _fit(CLSR(drift.columns, HISTORY, contrastive_weight=0.0, seed=SEED, **SIZE), drift)


@pytest.fixture(scope="session")
def din(drift):
    tf.keras.utils.set_random_seed(SEED)
    return _fit(DIN(drift.columns, HISTORY, seed=SEED, **SIZE), drift)


@pytest.fixture(scope="session")
def clsr_export(clsr, drift, tmp_path_factory):
    from exporters import export_saved_model

    base = tmp_path_factory.mktemp("exports") / "clsr"
    path = export_saved_model(clsr.model, str(base), extra_outputs=["alpha"],
                              warmup_inputs=df_to_inputs(drift.test.head(3), drift.columns), model_name="clsr")
    return SimpleNamespace(base=str(base), path=path)


def predict(model, inputs):
    return model.predict(inputs, batch_size=4096, verbose=0).reshape(-1)


def head(inputs, n=64):
    return {name: value[:n] for name, value in inputs.items()}


def cosine(a, b):
    return np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


# ---------------------------------------------------------------------------------------------- layers

def _numpy_contrastive(u_l, u_s, p_l, p_s, lengths, loss, margin, min_length):
    def f(a, p, q):
        if loss == "bpr":
            return np.log1p(np.exp(np.sum(a * q, -1) - np.sum(a * p, -1)))
        return np.maximum(np.linalg.norm(a - p, axis=-1) - np.linalg.norm(a - q, axis=-1) + margin, 0.0)

    per_row = f(u_l, p_l, p_s) + f(p_l, u_l, u_s) + f(u_s, p_s, p_l) + f(p_s, u_s, u_l)
    valid = lengths > min_length
    return per_row[valid].mean() if valid.any() else 0.0


@pytest.mark.parametrize("loss", ["triplet", "bpr"])
def test_contrastive_loss_equals_a_numpy_reference(loss):
    rng = np.random.default_rng(3)
    u_l, u_s, p_l, p_s = (rng.normal(size=(7, 5)).astype(np.float32) for _ in range(4))
    lengths = np.array([9, 2, 6, 5, 30, 0, 7], np.int32)  # min_length 5: rows 1, 3 and 5 are out
    layer = InterestContrastiveLoss(loss, margin=0.7, weight=0.1, min_length=5)
    value = layer.contrastive_loss(*map(tf.constant, (u_l, u_s, p_l, p_s, lengths))).numpy()
    np.testing.assert_allclose(value, _numpy_contrastive(u_l, u_s, p_l, p_s, lengths, loss, 0.7, 5), rtol=1e-5)

    # Rows at or under min_length never count, whatever they hold.
    garbage = [np.where((lengths > 5)[:, None], x, 1e3 * rng.normal(size=x.shape).astype(np.float32))
               for x in (u_l, u_s, p_l, p_s)]
    np.testing.assert_allclose(layer.contrastive_loss(*map(tf.constant, (*garbage, lengths))).numpy(), value, rtol=1e-5)
    short = np.minimum(lengths, 5)
    assert layer.contrastive_loss(*map(tf.constant, (u_l, u_s, p_l, p_s, short))).numpy() == 0.0

    # add_loss only in training, weighted by beta; the layer itself passes u_l, u_s through.
    outputs = layer([u_l, u_s, p_l, p_s, lengths], training=True)
    np.testing.assert_allclose(layer.losses[0].numpy(), 0.1 * value, rtol=1e-5)
    np.testing.assert_array_equal(outputs[0].numpy(), u_l)
    layer([u_l, u_s, p_l, p_s, lengths], training=False)
    assert not layer.losses


def test_long_term_attention_is_a_masked_softmax():
    layer = LongTermInterest((8, 4), "dice", seed=1)
    query = tf.random.normal((3, 6), seed=1)
    events = tf.random.normal((3, 5, 6), seed=2)
    mask = tf.constant([[True] * 3 + [False] * 2, [True] * 5, [False] * 5])
    pooled = layer(query, events, mask)
    garbage = tf.where(mask[..., None], events, 1e3)
    np.testing.assert_allclose(layer(query, garbage, mask).numpy(), pooled.numpy(), atol=1e-5)
    assert pooled.numpy()[2].tolist() == [0.0] * 6  # no events: zeros

    weights_layer = LongTermInterest.from_config({**layer.get_config(), "return_weights": True})
    weights_layer(query, events, mask)
    weights_layer.set_weights(layer.get_weights())
    weights = weights_layer(query, events, mask).numpy()
    np.testing.assert_allclose(weights.sum(axis=-1)[:2], 1.0, rtol=1e-6)
    assert np.all(weights[~mask.numpy()] == 0.0)
    np.testing.assert_allclose(np.einsum("bt,bte->be", weights, events.numpy()), pooled.numpy(), atol=1e-5)


def test_short_term_encoder_and_history_rnn_respect_the_mask():
    events = tf.random.normal((4, 6, 5), seed=3)
    lengths = tf.constant([6, 3, 1, 0])
    mask = tf.sequence_mask(lengths, 6)
    for rnn in ("gru", "lstm"):
        last = HistoryRNN(5, rnn, seed=2)
        state = last(events, mask).numpy()
        reference = (tf.keras.layers.GRU if rnn == "gru" else tf.keras.layers.LSTM)(5)
        reference(events, mask=mask)
        reference.set_weights(last.get_weights())  # the same cell weights as Keras' own layer
        np.testing.assert_allclose(state, reference(events, mask=mask).numpy(), atol=1e-5)
        assert state[3].tolist() == [0.0] * 5

        encoder = ShortTermInterest(5, rnn, (8, 4), "relu", seed=4)
        query = tf.random.normal((4, 5), seed=5)
        pooled = encoder(query, events, mask)
        garbage = tf.where(mask[..., None], events, 50.0)
        np.testing.assert_allclose(encoder(query, garbage, mask).numpy(), pooled.numpy(), atol=1e-5)
        assert pooled.shape == (4, 5)


def test_proxies_are_means_of_all_and_of_the_last_k_real_events():
    events = np.arange(2 * 6 * 2, dtype=np.float32).reshape(2, 6, 2)
    mask = np.array([[True] * 4 + [False] * 2, [True] * 6])
    p_l = HistoryMean()(events, mask).numpy()
    p_s = HistoryMean(recent=3)(events, mask).numpy()
    np.testing.assert_allclose(p_l, [events[0, :4].mean(0), events[1].mean(0)])
    np.testing.assert_allclose(p_s, [events[0, 1:4].mean(0), events[1, 3:].mean(0)])
    assert HistoryMean(recent=3)(events, np.zeros_like(mask)).numpy().tolist() == [[0.0, 0.0]] * 2


def test_fusion_mixes_the_interests_by_alpha():
    alpha = np.array([[0.0], [0.25], [1.0]], np.float32)
    long_term, short_term = np.ones((3, 2), np.float32), np.full((3, 2), 5.0, np.float32)
    np.testing.assert_allclose(InterestFusion()([alpha, long_term, short_term]).numpy(),
                               [[5.0, 5.0], [4.0, 4.0], [1.0, 1.0]])


def test_layers_round_trip_through_get_config():
    layers = [LongTermInterest((8, 4), "relu", seed=3), ShortTermInterest(6, "lstm", (8,), "dice", seed=4),
              HistoryRNN(6, "lstm", return_sequences=True, seed=5), HistoryMean(recent=2),
              InterestContrastiveLoss("bpr", margin=0.5, weight=0.2, min_length=3),
              InterestFusionGate((8, 4), "relu", seed=6), InterestFusion()]
    for layer in layers:
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
        assert type(restored) is type(layer) and restored.get_config() == config
        assert type(layer).__name__ in tfrec.layers.custom_objects


def test_build_errors_name_the_problem(drift):
    with pytest.raises(ValueError, match="rnn must be one of"):
        CLSR(drift.columns, HISTORY, rnn="transformer")
    with pytest.raises(ValueError, match="contrastive_loss must be one of"):
        CLSR(drift.columns, HISTORY, contrastive_loss="infonce")
    with pytest.raises(ValueError, match="no feature column named 'visitor'"):
        CLSR(drift.columns, HISTORY, user_feature="visitor")
    # A NaN weight made every weight NaN; a negative one, or margin, trained the interests apart without bound.
    for argument, value, message in [("contrastive_weight", float("nan"), "weight .CLSR's contrastive_weight. must be"),
                                     ("contrastive_weight", -0.1, "contrastive_weight. must be a number >= 0"),
                                     ("margin", -1.0, "margin must be a number >= 0")]:
        with pytest.raises(ValueError, match=message):
            CLSR(drift.columns, HISTORY, **{argument: value})
    item = SparseFeat("item_id", 10, 4)
    with pytest.raises(ValueError, match="needs its behaviour sequence"):
        CLSR([SparseFeat("user_id", 10, 4), item], ["item_id"])
    assert CLSR([SparseFeat("user_id", 10, 4), item, VarLenSparseFeat(
        SparseFeat("hist_item_id", 10, 4, embedding_name="item_id"), maxlen=6)], ["item_id"], rnn="lstm")


# ------------------------------------------------------------------------------- trained behaviour

def test_alpha_is_a_long_term_share_in_0_1(clsr, drift):
    alpha = interest_model(clsr.model, ["alpha"]).predict(drift.inputs, batch_size=4096, verbose=0)["alpha"]
    assert alpha.shape == (len(drift.test), 1)
    assert np.all((alpha >= 0.0) & (alpha <= 1.0))
    print(f"\nalpha on test rows: mean {alpha.mean():.3f} std {alpha.std():.3f}")
    assert alpha.std() > 0.01  # adaptive: it varies with the user and the target


def test_padding_never_changes_the_output(clsr, drift):
    inputs = head(drift.inputs)
    padded = dict(inputs)
    for name in ("hist_item_id", "hist_cate_id"):
        padded[name] = np.pad(inputs[name], ((0, 0), (0, 7)))
    np.testing.assert_array_equal(predict(clsr.model, padded), predict(clsr.model, inputs))


def _disentangled_share(fitted, drift):
    """Shares of held-out users with long histories whose u_l is nearer p_l and u_s nearer p_s (cosine)."""
    users = drift.test.drop_duplicates("user_id")
    users = users[users["seq_length"] > 5]
    out = interest_model(fitted.model).predict(df_to_inputs(users, drift.columns), batch_size=4096, verbose=0)
    u_l, u_s, p_l, p_s = (out[n] for n in ("long_term_interest", "short_term_interest", "long_term_proxy",
                                           "short_term_proxy"))
    long_ok = cosine(u_l, p_l) > cosine(u_l, p_s)
    short_ok = cosine(u_s, p_s) > cosine(u_s, p_l)
    return len(users), long_ok.mean(), short_ok.mean(), (long_ok & short_ok).mean()


def test_contrastive_loss_disentangles_the_interests(clsr, clsr_without_contrast, drift):
    losses = clsr.history["contrastive_loss"]
    users, long_ok, short_ok, both = _disentangled_share(clsr, drift)
    _, long_0, short_0, both_0 = _disentangled_share(clsr_without_contrast, drift)
    print(f"\ncontrastive loss per epoch, beta 0.1: {np.round(losses, 3).tolist()}; "
          f"beta 0: {np.round(clsr_without_contrast.history['contrastive_loss'], 3).tolist()}")
    print(f"{users} held-out users: sim(u_l,p_l) > sim(u_l,p_s) {long_ok:.3f} (beta 0: {long_0:.3f}); "
          f"sim(u_s,p_s) > sim(u_s,p_l) {short_ok:.3f} (beta 0: {short_0:.3f}); "
          f"both {both:.3f} (beta 0: {both_0:.3f})")
    assert losses[0] > 0.1 and all(b < a for a, b in zip(losses, losses[1:]))
    assert long_ok >= 0.8 and short_ok >= 0.8 and both >= 0.8
    assert both_0 <= both - 0.2  # measurably lower without the self-supervision


def test_evaluation_reports_the_contrastive_loss_of_its_rows(clsr, drift):
    """evaluate (so fit's validation, "val_contrastive_loss") measures L_con on its rows: it read
    0.0; predict still measures nothing."""
    rows = drift.test.head(300)
    inputs = df_to_inputs(rows, drift.columns)
    contrastive = clsr.model.get_layer("contrastive")
    out = interest_model(clsr.model).predict(inputs, batch_size=300, verbose=0)
    expected = contrastive.contrastive_loss(*(out[name] for name in ("long_term_interest", "short_term_interest",
                                                                      "long_term_proxy", "short_term_proxy")),
                                            inputs["seq_length"]).numpy()
    result = clsr.model.evaluate(inputs, rows["click"].values, batch_size=300, verbose=0, return_dict=True)
    assert expected > 0.1
    np.testing.assert_allclose(result["contrastive_loss"], expected, rtol=1e-4)
    counted = contrastive.tracker.count.numpy()
    predict(clsr.model, inputs)
    assert contrastive.tracker.count.numpy() == counted


def _report(fitted, drift):
    return evaluate_binary(fitted.model, drift.test, drift.columns, "click", truth_col="p_click", group_col="user_id")


def test_quality_on_drift_data_next_to_din_and_the_oracle(clsr, clsr_without_contrast, din, drift):
    reports = {name: _report(fitted, drift) for name, fitted in
               (("CLSR", clsr), ("CLSR beta=0", clsr_without_contrast), ("DIN", din))}
    oracle = oracle_auc(drift.test["click"].to_numpy(), drift.test["p_click"].to_numpy())
    print()
    for name, report in reports.items():
        print(f"{name:12s} test AUC {report['auc']:.4f} GAUC {report['gauc']:.4f} logloss {report['logloss']:.4f} "
              f"(oracle AUC {oracle:.4f}, ratio {report['auc'] / oracle:.3f})")
    print(f"fit seconds ({EPOCHS} epochs): CLSR {clsr.seconds:.1f}, CLSR beta=0 {clsr_without_contrast.seconds:.1f}, "
          f"DIN {din.seconds:.1f}")
    # Keras' GRU layers made XLA recompile the step at every batch; with HistoryRNN it is traced
    # once (and XLA compiles it once per batch shape: the last, smaller batch is the second).
    assert clsr.model.core_step_function().experimental_get_tracing_count() == 1
    assert reports["CLSR"]["auc"] >= reports["CLSR beta=0"]["auc"] + 0.03
    assert reports["CLSR"]["auc"] >= 0.75 * oracle
    assert reports["CLSR"]["auc"] >= reports["DIN"]["auc"]


def test_the_step_without_xla_trains_as_the_default_xla_step(drift):
    """`compile(..., jit_compile=False)`, the opt-out path: the same losses, step by step, from the
    same start on the same batch."""
    rows = drift.train.head(256)
    x, y = df_to_inputs(rows, drift.columns), rows["click"].to_numpy("float32")
    losses = []
    for jit_compile in (None, False):
        tf.keras.utils.set_random_seed(SEED)
        model = CLSR(drift.columns, HISTORY, seed=SEED, **SIZE)
        _compile(model, jit_compile)
        losses.append([model.train_on_batch(x, y)[0] for _ in range(3)])  # [loss, auc] per step
    assert losses[0][2] < losses[0][0]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def _at_weight(steered, inputs, weight):
    """The steerable model's (prediction, alpha) with every row at `weight` (a number or (batch, 1))."""
    rows = len(next(iter(inputs.values())))
    weight = np.broadcast_to(np.asarray(weight, np.float32), (rows, 1))
    prediction, alpha = steered.predict(dict(inputs, long_term_weight=weight), batch_size=4096, verbose=0)
    return prediction.reshape(-1), alpha


def test_a_steerable_model_scores_at_the_requested_long_term_weight(clsr, drift):
    """steerable_model: the request's weight w replaces alpha. w = alpha is the model itself;
    w = 1 and w = 0 fuse exactly u_l and u_s; AUCs over w are printed next to the oracle."""
    steered = steerable_model(clsr.model)
    assert steered.output_names == ["prediction", "alpha"]
    alpha = interest_model(clsr.model, ["alpha"]).predict(drift.inputs, batch_size=4096, verbose=0)["alpha"]
    prediction, learned = _at_weight(steered, drift.inputs, alpha)
    np.testing.assert_allclose(prediction, predict(clsr.model, drift.inputs), atol=1e-6)
    np.testing.assert_allclose(learned, alpha, atol=1e-6)

    inputs = head(drift.inputs)
    fusion = steered.get_layer("fused_interest")  # its last call is the steerable model's
    fused = tf.keras.Model(steered.input, fusion.get_output_at(len(fusion.inbound_nodes) - 1))
    interests = interest_model(clsr.model, ["long_term_interest", "short_term_interest"])(inputs)
    for weight, interest in ((1.0, "long_term_interest"), (0.0, "short_term_interest")):
        at_weight = dict(inputs, long_term_weight=np.full((64, 1), weight, np.float32))
        np.testing.assert_allclose(fused(at_weight).numpy(), interests[interest].numpy(), atol=1e-6)

    labels = drift.test["click"].to_numpy()
    oracle = oracle_auc(labels, drift.test["p_click"].to_numpy())
    aucs = {"alpha": metrics.auc(labels, prediction)}
    for weight in (0.0, 0.5, 1.0):
        aucs[f"w={weight}"] = metrics.auc(labels, _at_weight(steered, drift.inputs, weight)[0])
    print("\nCLSR test AUC by long-term weight (oracle {:.4f}): ".format(oracle)
          + ", ".join(f"{name} {auc:.4f}" for name, auc in aucs.items()) + f"; mean alpha {alpha.mean():.3f}")
    assert len(set(round(auc, 4) for auc in aucs.values())) == len(aucs)  # the weight moves the scores

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"long_term_weight must lie in \[0, 1\]"):
        _at_weight(steered, inputs, 1.5)
    with pytest.raises(ValueError, match="needs a CLSR"):
        steerable_model(tf.keras.Model(clsr.model.input, clsr.model.get_layer("long_term_interest").output))
    with pytest.raises(ValueError, match="already takes 'long_term_weight'"):
        steerable_model(steered)


# ---------------------------------------------------------------------------- save, export, serve

@pytest.mark.parametrize("fmt", ["savedmodel", "h5"])
def test_save_and_load_round_trip(clsr, drift, tmp_path, fmt):
    inputs = head(drift.inputs)
    before = predict(clsr.model, inputs)
    if fmt == "savedmodel":
        clsr.model.save(tmp_path / "clsr")
        loaded = tf.keras.models.load_model(tmp_path / "clsr")
    else:
        clsr.model.save(tmp_path / "clsr.h5")
        loaded = tf.keras.models.load_model(tmp_path / "clsr.h5", custom_objects=tfrec.layers.custom_objects)
    np.testing.assert_allclose(predict(loaded, inputs), before, atol=1e-6)
    assert loaded.output_names == ["prediction"]
    np.testing.assert_allclose(interest_model(loaded)(inputs)["alpha"].numpy(),
                               interest_model(clsr.model)(inputs)["alpha"].numpy(), atol=1e-6)
    at_weight = dict(inputs, long_term_weight=np.full((len(before), 1), 0.3, np.float32))
    np.testing.assert_allclose(steerable_model(loaded)(at_weight)[0].numpy(),
                               steerable_model(clsr.model)(at_weight)[0].numpy(), atol=1e-6)


def test_export_passes_saved_model_cli(clsr_export):
    shown = run_saved_model_cli("show", "--all", "--dir", clsr_export.path)
    assert shown.returncode == 0, shown.stderr
    for name in ("user_id", "item_id", "hist_item_id", "seq_length", "prediction", "alpha"):
        assert f"['{name}']" in shown.stdout
    ran = run_saved_model_cli(
        "run", "--dir", clsr_export.path, "--tag_set", "serve", "--signature_def", "serving_default",
        "--input_exprs", "user_id=[1];item_id=[2];cate_id=[3];hist_item_id=[[4,5,6,7,8,9]];"
                         "hist_cate_id=[[3,3,1,2,3,3]];seq_length=[6]")
    assert ran.returncode == 0, ran.stderr
    assert "prediction" in ran.stdout and "alpha" in ran.stdout


def test_grpc_predict_and_alpha_equal_in_process(clsr, clsr_export, drift):
    from serving import Client, LocalServer

    inputs = head(drift.inputs, 100)
    expected = interest_model(clsr.model, ["alpha"]).predict(inputs, verbose=0)["alpha"].reshape(-1)
    with LocalServer(model_base_path=clsr_export.base, model_name="clsr", rest=False) as server, \
            Client(server.grpc_target) as client:
        served = client.predict("clsr", inputs)
    np.testing.assert_allclose(served["prediction"], predict(clsr.model, inputs), atol=1e-5)
    np.testing.assert_allclose(served["alpha"], expected, atol=1e-5)


def test_a_steerable_export_serves_the_requested_weight_over_grpc(clsr, drift, tmp_path):
    import grpc
    from exporters import export_saved_model
    from serving import Client, LocalServer
    from serving.errors import ServingError

    steered = steerable_model(clsr.model)
    base = tmp_path / "clsr_steerable"
    warmup = dict(df_to_inputs(drift.test.head(3), drift.columns), long_term_weight=np.full((3, 1), 0.5, np.float32))
    export_saved_model(steered, str(base), warmup_inputs=warmup)
    inputs = head(drift.inputs, 20)
    weights = np.linspace(0.0, 1.0, 20, dtype=np.float32)  # one per row: the signature takes (batch,)
    expected, alpha = _at_weight(steered, inputs, weights[:, None])
    with LocalServer(model_base_path=str(base), model_name="clsr_steerable", rest=False) as server, \
            Client(server.grpc_target) as client:
        served = client.predict("clsr_steerable", dict(inputs, long_term_weight=weights))
        with pytest.raises(ServingError) as refused:
            client.predict("clsr_steerable", dict(inputs, long_term_weight=weights - 0.5))
        again = client.predict("clsr_steerable", dict(inputs, long_term_weight=weights))
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "long_term_weight must lie in [0, 1]" in refused.value.message
    for answer in (served, again):
        np.testing.assert_allclose(answer["prediction"].reshape(-1), expected, atol=1e-5)
        np.testing.assert_allclose(answer["alpha"], alpha.reshape(-1), atol=1e-5)


def test_shared_history_signature_repeats_the_history_for_every_candidate(clsr_export, drift):
    """CLSR's GRUs and fusion read the history per row, so its `shared_history` signature repeats
    the one row it is sent: the scores equal serving_default fed that history on every row."""
    loaded = tf.saved_model.load(clsr_export.path)
    rows = drift.test[drift.test.user_id == drift.test.user_id.iloc[0]]
    assert len(rows) > 1
    feed = {name: tf.constant(value, tf.int64) for name, value in df_to_inputs(rows, drift.columns).items()}
    history = ("hist_item_id", "hist_cate_id", "seq_length")
    repeated = {name: tf.repeat(value[:1], len(rows), axis=0) if name in history else value
                for name, value in feed.items()}
    shared = loaded.signatures["shared_history"](**{name: value[:1] if name in history else value
                                                    for name, value in feed.items()})
    expected = loaded.signatures["serving_default"](**repeated)
    for output in ("prediction", "alpha"):
        np.testing.assert_allclose(shared[output].numpy(), expected[output].numpy(), atol=1e-6)
