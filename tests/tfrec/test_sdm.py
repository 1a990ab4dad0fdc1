"""SDM: its layers against their formulas and masks, recall@50 on planted data, the towers."""
import ast
import importlib.util
import inspect
import os
from types import SimpleNamespace

import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf

import tfrec.layers
from tfrec.data import df_to_inputs
from tfrec.data.retrieval import make_retrieval_data, retrieval_feature_columns, sdm_feature_columns
from tfrec.layers import GatedFusion, SessionSelfAttention, StackedLSTM, UserAttention
from tfrec.models import SDM, YoutubeDNN
from tfrec.utils import NegativeSampler, sampledsoftmaxloss
from tests.tfrec.retrieval_helpers import (losses_of_a_short_fit, planted_retrieval, recall_at_50, reloaded_towers,
                                           user_features)

HISTORY = ["item_id", "cate_id"]
SHORT, PREFER, DIM, EPOCHS = 5, 20, 32, 6


def random_sessions(batch=64, length=8, dim=16, seed=0, min_length=1):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_length, length + 1, batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    return rng.normal(size=(batch, length, dim)).astype(np.float32), mask


def session_stack(seed=3, dim=16):
    """The short-term branch as SDM wires it: LSTMs -> self-attention -> user attention."""
    return (StackedLSTM(dim, 2, 1, dropout_rate=0.2, seed=seed), SessionSelfAttention(4, 0.2, seed=seed),
            UserAttention(dim, use_residual=True, dropout_rate=0.2, seed=seed))


def run_stack(stack, user, sessions, mask):
    rnn, attention, pooling = stack
    hidden = rnn(sessions, mask)
    attended = attention(hidden, mask)
    return hidden.numpy(), attended.numpy(), pooling(user, attended, mask).numpy()


# --- The layers against their formulas; padding never changes an output. ---

def test_gate_output_equals_the_formula():
    rng = np.random.default_rng(0)
    user, short, long = (rng.normal(size=(64, d)).astype(np.float32) for d in (12, 8, 8))
    layer = GatedFusion(8, seed=1)
    layer(user, short, long)  # builds
    layer.bias.assign(rng.normal(size=8))  # a non-zero bias
    got = layer(user, short, long).numpy()
    w1, w2, w3, b = (v.numpy() for v in (layer.user_kernel, layer.short_kernel, layer.long_kernel, layer.bias))
    gate = 1 / (1 + np.exp(-(user @ w1 + short @ w2 + long @ w3 + b)))
    np.testing.assert_allclose(got, (1 - gate) * long + gate * short, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.gate(user, short, long).numpy(), gate, rtol=1e-5, atol=1e-6)
    # DeepMatch's form: Dense(units, sigmoid) over [p, s, e_u].
    dense = np.concatenate([w3, w2, w1]), b
    gate = 1 / (1 + np.exp(-(np.concatenate([long, short, user], axis=1) @ dense[0] + dense[1])))
    np.testing.assert_allclose(got, gate * short + (1 - gate) * long, rtol=1e-5, atol=1e-6)


def test_user_attention_equals_the_formula_over_real_positions():
    rng = np.random.default_rng(1)
    keys, mask = random_sessions(dim=8, seed=1, min_length=0)
    user = rng.normal(size=(64, 5)).astype(np.float32)
    for use_residual in (False, True):
        layer = UserAttention(8, "tanh", use_residual=use_residual, seed=2)
        got = layer(user, keys, mask).numpy()
        kernel, bias = (v.numpy() for v in layer.query.weights)
        query = np.tanh(user @ kernel + bias)
        scores = np.where(mask, np.einsum("bd,btd->bt", query, keys) / np.sqrt(8), -np.inf)
        weights = np.exp(scores - scores.max(1, keepdims=True, initial=-1e30))
        weights = np.where(mask, weights, 0) / np.maximum(weights.sum(1, keepdims=True), 1e-30)
        expected = np.einsum("bt,btd->bd", weights, keys)
        if use_residual:
            expected += (keys * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(got[mask.sum(1) == 0], 0)  # no real positions: 0
    assert (mask.sum(1) == 0).any()


def test_padding_anywhere_never_changes_the_session_branch():
    """Real events scattered among garbage padding in a wider session give the same vectors."""
    stack = session_stack()
    sessions, mask = random_sessions(length=8)
    user = np.random.default_rng(5).normal(size=(64, 10)).astype(np.float32)
    hidden, attended, pooled = run_stack(stack, user, sessions, mask)

    rng, width = np.random.default_rng(6), 13
    scattered = 1e2 * rng.normal(size=(64, width, 16)).astype(np.float32)  # garbage at padded positions
    wide_mask = np.zeros((64, width), bool)
    positions = []
    for row in range(64):
        length = mask[row].sum()
        where = np.sort(rng.choice(width, length, replace=False))  # same order, padding before/between/after
        scattered[row, where] = sessions[row, :length]
        wide_mask[row, where] = True
        positions.append(where)
    wide_hidden, wide_attended, wide_pooled = run_stack(stack, user, scattered, wide_mask)
    np.testing.assert_allclose(wide_pooled, pooled, rtol=1e-5, atol=1e-5)
    for row, where in enumerate(positions):
        length = len(where)
        np.testing.assert_allclose(wide_hidden[row, where], hidden[row, :length], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(wide_attended[row, where], attended[row, :length], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(wide_hidden[~wide_mask], 0)
    np.testing.assert_array_equal(wide_attended[~wide_mask], 0)


def test_self_attention_is_causal_by_default():
    sessions, mask = random_sessions(length=8, seed=2)
    mask[:] = True
    later = sessions.copy()
    later[:, 5:] = np.random.default_rng(3).normal(size=later[:, 5:].shape)
    causal, full = SessionSelfAttention(4, seed=1), SessionSelfAttention(4, causal=False, seed=1)
    np.testing.assert_allclose(causal(later, mask).numpy()[:, :5], causal(sessions, mask).numpy()[:, :5], atol=1e-6)
    full(sessions, mask)
    full.set_weights(causal.get_weights())
    assert np.abs(full(later, mask).numpy()[:, :5] - full(sessions, mask).numpy()[:, :5]).max() > 1e-3


@pytest.mark.parametrize("residual_layers", [0, 1, 2])
def test_residual_connections_wrap_the_last_layers(residual_layers):
    """DeepMatch's ResidualWrapper on the last rnn_num_res cells: layer l gives x + LSTM_l(x) or LSTM_l(x)."""
    sessions, mask = random_sessions(length=6, dim=16, seed=4)
    layer = StackedLSTM(16, 2, residual_layers, seed=7)
    got = layer(sessions, mask).numpy()
    first, second = (lambda x, lstm=lstm: lstm(x, mask=mask).numpy() for lstm in layer.lstms)
    h = first(sessions) + (sessions if residual_layers == 2 else 0)
    expected = second(h) + (h if residual_layers >= 1 else 0)
    np.testing.assert_allclose(got, expected * mask[..., None], rtol=1e-5, atol=1e-6)
    assert [layer.residual(i) for i in range(2)] == [residual_layers == 2, residual_layers >= 1]


def test_short_sessions_are_unrolled_into_the_same_function():
    """A session of known length up to MAX_UNROLLED_STEPS runs unrolled (no while loop under XLA);
    outputs and gradients equal the looped LSTMs' with the same weights, under XLA and with padding."""
    from tfrec.layers.sdm import MAX_UNROLLED_STEPS

    sessions, mask = random_sessions(length=7, dim=16, seed=5)
    mask = tf.constant(mask)
    unrolled, looped = StackedLSTM(16, 2, 1, seed=9), StackedLSTM(16, 2, 1, seed=9)
    unrolled(sessions, mask)
    looped(sessions, mask)
    for lstm in looped.lstms:
        lstm.unroll = False
    assert all(lstm.unroll for lstm in unrolled.lstms)

    @tf.function(jit_compile=True)
    def output_and_gradients(layer, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x, mask)))
        return layer(x, mask), tape.gradient(loss, [x] + layer.trainable_weights)

    x = tf.constant(sessions)
    for got, expected in zip(tf.nest.flatten(output_and_gradients(unrolled, x)),
                             tf.nest.flatten(output_and_gradients(looped, x))):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    long_layer = StackedLSTM(16, 1, 0)
    long_layer(*random_sessions(batch=2, length=MAX_UNROLLED_STEPS + 1, dim=16))
    assert not long_layer.lstms[0].unroll  # a long session keeps the loop (its graph stays small)


def test_residual_first_layer_and_layer_counts_are_checked():
    with pytest.raises(ValueError, match="0 <= num_residual_layers <= num_layers"):
        StackedLSTM(16, 2, 3)
    with pytest.raises(ValueError, match="residual first layer needs inputs of units=16"):
        StackedLSTM(16, 1, 1)(*random_sessions(dim=8))
    StackedLSTM(16, 2, 1)(*random_sessions(dim=8))  # only the second layer is residual


def test_get_config_round_trip():
    rng = np.random.default_rng(8)
    sessions, mask = random_sessions(dim=16, seed=8)
    user = rng.normal(size=(64, 10)).astype(np.float32)
    short, long = (rng.normal(size=(64, 16)).astype(np.float32) for _ in range(2))
    cases = [(StackedLSTM(16, 3, 2, dropout_rate=0.1, seed=5, name="rnn"), (sessions, mask)),
             (SessionSelfAttention(2, 0.1, causal=False, use_layer_norm=False, seed=5, name="mha"), (sessions, mask)),
             (UserAttention(16, "relu", use_residual=True, dropout_rate=0.1, scale=False, seed=5, name="ua"),
              (user, sessions, mask)),
             (GatedFusion(16, seed=5, name="gate"), (user, short, long))]
    for layer, args in cases:
        before = layer(*args).numpy()
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config
        registered = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
        assert type(registered) is type(layer) and registered.get_config() == config
        clone(*args)
        clone.set_weights(layer.get_weights())
        np.testing.assert_allclose(clone(*args).numpy(), before, atol=1e-6)
        assert tfrec.layers.custom_objects[type(layer).__name__] is type(layer)


def test_signature_is_deepmatchs():
    deepmatch = [("user_feature_columns", inspect.Parameter.empty), ("item_feature_columns", inspect.Parameter.empty),
                 ("history_feature_list", inspect.Parameter.empty), ("units", 64), ("rnn_layers", 2),
                 ("dropout_rate", 0.2), ("rnn_num_res", 1), ("num_head", 4), ("l2_reg_embedding", 1e-6),
                 ("dnn_activation", "tanh"), ("temperature", 0.05), ("sampler_config", None), ("seed", 1024)]
    assert [(name, p.default) for name, p in inspect.signature(SDM).parameters.items()] == deepmatch
    spec = importlib.util.find_spec("deepmatch")  # read the installed source, when there is one, without importing it
    source = spec and os.path.join(os.path.dirname(spec.origin), "models", "sdm.py")
    if source and os.path.exists(source):
        function = next(node for node in ast.parse(open(source).read()).body
                        if isinstance(node, ast.FunctionDef) and node.name == "SDM")
        names = [a.arg for a in function.args.args]
        defaults = [ast.literal_eval(d) for d in function.args.defaults]
        theirs = [(n, inspect.Parameter.empty) for n in names[:len(names) - len(defaults)]]
        assert deepmatch == theirs + list(zip(names[len(names) - len(defaults):], defaults))


# --- Trained on planted retrieval data: recall@50 against popularity, YoutubeDNN and the oracle. ---

@pytest.fixture(scope="module")
def planted():
    data = make_retrieval_data(num_users=1000, num_items=1000, num_categories=10, events_per_user=30, seed=0)
    columns = sdm_feature_columns(data, SHORT, PREFER, embedding_dim=DIM, profile_embedding_dim=8)
    return planted_retrieval(data, columns, PREFER, short_sess_length=SHORT)


@pytest.fixture(scope="module")
def trained(planted):
    """SDM (DeepMatch's defaults but units and temperature) and YoutubeDNN, same data, sizes and budget."""
    tf.keras.utils.set_random_seed(0)
    sdm = SDM(planted.user_columns, planted.item_columns, HISTORY, units=DIM, temperature=0.1,
              sampler_config=planted.sampler)
    sdm.compile(tf.keras.optimizers.Adam(3e-3))
    sdm.fit(planted.x_train, np.zeros(len(planted.train)), batch_size=128, epochs=EPOCHS, verbose=0)

    tf.keras.utils.set_random_seed(0)
    user_columns, item_columns = retrieval_feature_columns(planted.data, PREFER, embedding_dim=DIM,
                                                           profile_embedding_dim=8)
    columns = user_columns + item_columns
    youtube = YoutubeDNN(user_columns, item_columns, user_dnn_hidden_units=(64, DIM), temperature=0.1,
                         sampler_config=planted.sampler)
    youtube.compile(tf.keras.optimizers.Adam(3e-3))
    youtube.fit(df_to_inputs(planted.train, columns), np.zeros(len(planted.train)), batch_size=128, epochs=EPOCHS,
                verbose=0)

    recalls = {"SDM": recall_at_50(sdm, planted, planted.x_test),
               "YoutubeDNN": recall_at_50(youtube, planted, df_to_inputs(planted.test, columns))}
    ref = planted.references
    print(f"\nplanted retrieval data, recall@50 ({len(planted.test)} test users, {planted.data.num_items} items, "
          f"{EPOCHS} epochs): SDM {recalls['SDM']:.3f}, YoutubeDNN {recalls['YoutubeDNN']:.3f} (hist of "
          f"{PREFER}), popularity {ref['popularity']:.3f}; planted truth: oracle {ref['oracle']:.3f}, "
          f"mixture {ref['mixture']:.3f}, centroid {ref['centroid']:.3f}")
    return SimpleNamespace(model=sdm, recalls=recalls)


def test_sdm_recall_is_clearly_above_popularity(trained, planted):
    recall, ref = trained.recalls["SDM"], planted.references
    assert recall >= ref["popularity"] + 0.08
    assert recall < ref["oracle"]


def test_padding_never_changes_the_user_vector(trained, planted):
    model = trained.model
    inputs = user_features(model, {k: v[:256] for k, v in planted.x_test.items()})
    before = model.user_tower.predict(inputs, verbose=0)
    rng = np.random.default_rng(0)
    changed = dict(inputs)
    for prefix in ("short_", "prefer_"):
        lengths = inputs[f"{prefix}sess_length"].reshape(-1, 1)
        for feature in HISTORY:
            name = prefix + feature
            padded = np.pad(inputs[name], ((0, 0), (0, 7)))  # wider, then garbage beyond each length
            garbage = rng.integers(1, inputs[name].max() + 1, padded.shape)
            changed[name] = np.where(np.arange(padded.shape[1])[None, :] < lengths, padded, garbage)
    assert any((changed[n][:, :inputs[n].shape[1]] != inputs[n]).any() for n in ("short_item_id", "prefer_item_id"))
    np.testing.assert_allclose(model.user_tower.predict(changed, verbose=0), before, atol=1e-6)
    assert (inputs["prefer_sess_length"] > 0).all() and np.isfinite(before).all()
    # A user with no long-term behaviour (prefer_sess_length 0) still gets a unit vector.
    empty = dict(inputs, prefer_sess_length=np.zeros_like(inputs["prefer_sess_length"]))
    vectors = model.user_tower.predict(empty, verbose=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)


def test_user_vector_is_the_l2_normalised_gate(trained, planted):
    model = trained.model
    layers = [model.get_layer(n) for n in ("user_emb_output", "short_user_attention", "prefer_output",
                                           "gated_fusion", "user_embedding")]
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    user, short, long, fused, out = probe.predict({k: v[:128] for k, v in planted.x_test.items()}, verbose=0)
    gate = layers[3]
    g = 1 / (1 + np.exp(-(user @ gate.user_kernel.numpy() + short @ gate.short_kernel.numpy()
                          + long @ gate.long_kernel.numpy() + gate.bias.numpy())))
    np.testing.assert_allclose(fused, (1 - g) * long + g * short, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, fused / np.linalg.norm(fused, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_rnn_num_res_sets_the_residual_layers(planted):
    for layers, residual in ((2, 0), (2, 2), (3, 1)):
        model = SDM(planted.user_columns, planted.item_columns, HISTORY, units=DIM, rnn_layers=layers,
                    rnn_num_res=residual)
        rnn = model.get_layer("short_rnn")
        assert (rnn.num_layers, rnn.num_residual_layers) == (layers, residual)
        assert [rnn.residual(i) for i in range(layers)] == [i >= layers - residual for i in range(layers)]
    with pytest.raises(ValueError, match="num_residual_layers <= num_layers"):
        SDM(planted.user_columns, planted.item_columns, HISTORY, units=DIM, rnn_layers=1, rnn_num_res=2)


# --- The towers as served: save/load, DeepMatch's attributes, both compile forms. ---

def test_towers_give_identical_vectors_after_save_and_load_with_their_model_or_alone(trained, planted, tmp_path):
    # Regression: the user tower saved alone as a SavedModel loaded its self-attention's projections
    # at their initial values (built lazily, after the restore), off by up to 1.2.
    model = trained.model
    users = user_features(model, {k: v[:128] for k, v in planted.x_test.items()})
    items = {"item_id": planted.data.item_ids[:200]}
    before = model.user_tower.predict(users, verbose=0), model.item_tower.predict(items, verbose=0)
    for user_tower, item_tower in reloaded_towers(model, tmp_path):
        np.testing.assert_allclose(user_tower.predict(users, verbose=0), before[0], atol=1e-6)
        np.testing.assert_allclose(item_tower.predict(items, verbose=0), before[1], atol=1e-6)


def test_deepmatch_style_user_model(trained, planted):
    model = trained.model
    users = user_features(model, {k: v[:32] for k, v in planted.x_test.items()})
    deepmatch = tf.keras.Model(inputs=model.user_input, outputs=model.user_embedding)
    vectors = deepmatch.predict(users, verbose=0)
    assert vectors.shape == (32, DIM)
    np.testing.assert_allclose(vectors, model.user_tower.predict(users, verbose=0), atol=1e-6)
    assert sorted(t.name for t in model.user_input) == sorted(
        ["user_id", "gender", "age", "short_sess_length", "prefer_sess_length"]
        + [p + f for p in ("short_", "prefer_") for f in HISTORY])
    assert [t.name for t in model.item_input] == ["item_id"]


@pytest.mark.parametrize("loss", [None, sampledsoftmaxloss])
def test_both_compile_forms_train(planted, loss):
    tf.keras.utils.set_random_seed(1)
    model = SDM(planted.user_columns, planted.item_columns, HISTORY, units=DIM, rnn_layers=1, num_head=2,
                temperature=0.1, sampler_config=NegativeSampler("uniform", 64, "item_id"))
    losses = losses_of_a_short_fit(model, planted, loss)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_build_errors_name_the_problem(planted):
    no_prefer = [c for c in planted.user_columns if c.name != "prefer_item_id"]
    with pytest.raises(ValueError, match="needs a VarLenSparseFeat 'prefer_item_id'"):
        SDM(no_prefer, planted.item_columns, HISTORY, units=DIM)
    with pytest.raises(ValueError, match=r"units \(64\) must equal the item embedding_dim \(32\)"):
        SDM(planted.user_columns, planted.item_columns, HISTORY)
    with pytest.raises(ValueError, match="num_heads=3 must divide the feature size 32"):
        SDM(planted.user_columns, planted.item_columns, HISTORY, units=DIM, num_head=3)


def test_weight_names_are_the_same_each_time_the_model_is_built(planted):
    # Regression: the LSTM cells were unnamed, so a second SDM in a process had lstm_cell_1/kernel:0.
    first, second = (SDM(planted.user_columns, planted.item_columns, HISTORY, units=DIM) for _ in range(2))
    assert [w.name for w in second.weights] == [w.name for w in first.weights]
    assert "short_rnn/lstm_0/cell/kernel:0" in [w.name for w in first.weights]
