"""MIND: dynamic routing against its formulas, recall@50 on planted multi-interest data, the towers."""
from types import SimpleNamespace

import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import SparseFeat

from tfrec.data.retrieval import make_retrieval_data, retrieval_feature_columns
from tfrec.layers import CapsuleLayer, InterestMask, LabelAwareAttention
from tfrec.layers.capsules import interest_number, squash
from tfrec.models import MIND, YoutubeDNN
from tfrec.utils import NegativeSampler, item_counts, sampledsoftmaxloss
from tests.tfrec.retrieval_helpers import (losses_of_a_short_fit, planted_retrieval, recall_at_50, reloaded_towers,
                                           user_features)

K_MAX, DIM, MAXLEN, EPOCHS = 2, 16, 30, 6


def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def mean_pairwise_cosine(capsules, active=None):
    """Mean cosine between two different (active) capsules of a row, over rows and pairs."""
    cos = np.einsum("bkd,bjd->bkj", unit(capsules), unit(capsules))
    k = capsules.shape[1]
    pairs = ~np.eye(k, dtype=bool)[None] & (np.ones_like(cos, bool) if active is None
                                            else (active[:, :, None] > 0) & (active[:, None, :] > 0))
    return float(cos[pairs].mean())


def random_behaviours(batch=256, length=20, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    return rng.normal(size=(batch, length, dim)).astype(np.float32), mask


# --- The routing and the attention against their formulas. ---

def test_squash_matches_its_formula():
    z = np.random.default_rng(0).normal(size=(64, 5, 8)) * np.geomspace(1e-3, 1e2, 64)[:, None, None]
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(squash(tf.constant(z, tf.float32)).numpy(), norm ** 2 / (1 + norm ** 2) * z / norm,
                               rtol=1e-4, atol=1e-7)
    assert np.all(np.linalg.norm(squash(tf.constant(z, tf.float32)).numpy(), axis=-1) < 1)
    np.testing.assert_array_equal(squash(tf.zeros([2, 3, 4])).numpy(), 0)


def test_gaussian_routing_logits_keep_capsules_apart_and_zero_logits_collapse_them():
    """B2I shares S over the capsules: with b = 0 all capsules are equal; Gaussian b keeps them apart."""
    behaviours, mask = random_behaviours()
    capsules = {std: CapsuleLayer(8, 8, 20, 4, init_std=std, seed=3)(behaviours, mask).numpy() for std in (1.0, 0.0)}
    gaussian, zeros = mean_pairwise_cosine(capsules[1.0]), mean_pairwise_cosine(capsules[0.0])
    print(f"\nrandom histories, mean pairwise capsule cosine: Gaussian logits {gaussian:.3f}, zero logits {zeros:.6f}")
    assert zeros > 1 - 1e-5
    np.testing.assert_allclose(capsules[0.0], np.repeat(capsules[0.0][:, :1], 4, axis=1), atol=1e-6)
    assert gaussian < 0.9


def test_capsule_layer_matches_numpy_routing():
    behaviours, mask = random_behaviours(batch=32, length=12, dim=6, seed=1)
    layer = CapsuleLayer(6, 5, 12, 3, iteration_times=3, seed=2)
    got = layer(behaviours, mask).numpy()
    s, logits = layer.bilinear_mapping_matrix.numpy(), layer.routing_logits.numpy()

    def squash_np(z):
        n2 = (z ** 2).sum(-1, keepdims=True)
        return n2 / (1 + n2) * z / np.sqrt(n2 + 1e-9)

    c = behaviours @ s
    b = np.broadcast_to(logits, (32, 12, 3))
    for iteration in range(3):
        w = np.exp(b - b.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True) * mask[..., None]
        u = squash_np(np.einsum("btk,btd->bkd", w, c))
        b = b + np.einsum("bkd,btd->btk", u, c)
    np.testing.assert_allclose(got, u, rtol=1e-4, atol=1e-6)


def test_padding_never_changes_capsules():
    behaviours, mask = random_behaviours(length=20)
    layer = CapsuleLayer(8, 8, 30, 3, seed=5)
    interest_mask = InterestMask(3, dynamic_k=True)(mask)
    base = layer(behaviours, mask, interest_mask).numpy()
    garbage = np.where(mask[..., None], behaviours, 1e3 * np.random.default_rng(9).normal(size=behaviours.shape))
    np.testing.assert_array_equal(layer(garbage.astype(np.float32), mask, interest_mask).numpy(), base)
    wider = np.pad(behaviours, ((0, 0), (0, 10), (0, 0)), constant_values=7.0)
    np.testing.assert_allclose(layer(wider, np.pad(mask, ((0, 0), (0, 10))), interest_mask).numpy(), base,
                               atol=1e-6)
    empty = layer(behaviours, np.zeros_like(mask)).numpy()
    np.testing.assert_array_equal(empty, 0)


def test_dynamic_k_gives_short_histories_fewer_interests():
    k_max, lengths = 4, np.arange(0, 41)
    mask = np.arange(40)[None, :] < lengths[:, None]
    got = InterestMask(k_max, dynamic_k=True)(mask).numpy()
    expected = np.maximum(1, np.minimum(k_max, np.floor(np.log2(np.maximum(lengths, 1))))).astype(int)
    np.testing.assert_array_equal(got.sum(axis=1), expected)
    np.testing.assert_array_equal(got, np.arange(k_max)[None, :] < expected[:, None])  # the first K'_u
    assert got.sum(axis=1)[[1, 2, 3, 4, 7, 8, 16]].tolist() == [1, 1, 1, 2, 2, 3, 4]
    np.testing.assert_array_equal(InterestMask(k_max)(mask).numpy(), 1.0)
    # k_max past 30: 2^31 does not fit int32, and no int32 length needs more than 30 interests.
    assert interest_number(tf.constant([1, 2 ** 30, 2 ** 31 - 1]), 40).numpy().tolist() == [1, 30, 30]
    # Inactive interests take no events: their capsules are zero, the active ones are unchanged in kind.
    behaviours, _ = random_behaviours(batch=len(lengths), length=40, seed=4)
    capsules = CapsuleLayer(8, 8, 40, k_max, seed=1)(behaviours, mask, got).numpy()
    np.testing.assert_array_equal(capsules[got == 0], 0)
    assert np.all(np.linalg.norm(capsules[(got == 1) & (lengths[:, None] > 0)], axis=-1) > 0)


def test_label_aware_attention_matches_its_formula_over_active_interests():
    rng = np.random.default_rng(2)
    interests, target = rng.normal(size=(64, 4, 8)).astype(np.float32), rng.normal(size=(64, 8)).astype(np.float32)
    active = (np.arange(4)[None, :] < rng.integers(1, 5, 64)[:, None]).astype(np.float32)
    scores = np.where(active > 0, np.einsum("bkd,bd->bk", interests, target), -np.inf)
    hard = LabelAwareAttention(4, 100)(interests, target, active).numpy()
    np.testing.assert_allclose(hard, interests[np.arange(64), scores.argmax(1)], atol=1e-6)
    mean = LabelAwareAttention(4, 0)(interests, target[:, None, :], active).numpy()
    np.testing.assert_allclose(mean, (interests * active[..., None]).sum(1) / active.sum(1, keepdims=True),
                               atol=1e-5)
    powered = np.where(active > 0, np.einsum("bkd,bd->bk", interests, target) ** 2, -np.inf)
    weights = np.exp(powered - powered.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    np.testing.assert_allclose(LabelAwareAttention(4, 2)(interests, target, active).numpy(),
                               np.einsum("bk,bkd->bd", weights, interests), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [0, 0.5, 1, 2, 100])
def test_label_aware_attention_gradients_are_finite_with_inactive_interests(p):
    """Inactive interests are zero vectors (score 0); pow(0, p) for p = 0 or 0.5 has an infinite derivative."""
    rng = np.random.default_rng(3)
    interests = tf.Variable(rng.normal(size=(16, 3, 8)).astype(np.float32) * (np.arange(3) < 2)[None, :, None])
    target = tf.constant(rng.normal(size=(16, 8)).astype(np.float32))
    active = np.tile(np.array([[1.0, 1.0, 0.0]], np.float32), (16, 1))
    with tf.GradientTape() as tape:
        user = LabelAwareAttention(3, p)(interests, target, active)
    gradient = tape.gradient(user, interests).numpy()
    assert np.all(np.isfinite(gradient))
    np.testing.assert_array_equal(gradient[:, 2], 0)  # the inactive interest takes no part
    if p == 0:
        np.testing.assert_allclose(user.numpy(), interests.numpy()[:, :2].mean(axis=1), atol=1e-6)


def test_signature_is_deepmatchs_plus_a_trailing_temperature():
    import inspect

    deepmatch = [("user_feature_columns", inspect.Parameter.empty), ("item_feature_columns", inspect.Parameter.empty),
                 ("k_max", 2), ("p", 100), ("dynamic_k", False), ("user_dnn_hidden_units", (64, 32)),
                 ("dnn_activation", "relu"), ("dnn_use_bn", False), ("l2_reg_dnn", 0), ("l2_reg_embedding", 1e-6),
                 ("dnn_dropout", 0), ("output_activation", "linear"), ("sampler_config", None), ("seed", 1024)]
    ours = [(name, p.default) for name, p in inspect.signature(MIND).parameters.items()]
    assert ours == deepmatch + [("temperature", 1.0)]


# --- Trained on planted multi-interest data: recall@50 against YoutubeDNN, popularity and the oracle. ---

@pytest.fixture(scope="module")
def planted():
    data = make_retrieval_data(num_users=1000, num_items=1000, events_per_user=40, seed=0)
    return planted_retrieval(data, retrieval_feature_columns(data, MAXLEN, embedding_dim=DIM), MAXLEN)


def fit(build, planted):
    tf.keras.utils.set_random_seed(0)
    model = build(planted.user_columns, planted.item_columns, user_dnn_hidden_units=(64, DIM),
                  sampler_config=planted.sampler)
    model.compile(tf.keras.optimizers.Adam(3e-3))
    model.fit(planted.x_train, np.zeros(len(planted.train)), batch_size=256, epochs=EPOCHS, verbose=0)
    return SimpleNamespace(model=model, recall=recall_at_50(model, planted, planted.x_test))


@pytest.fixture(scope="module")
def trained(planted):
    """MIND (DeepMatch's k_max=2, p=100, with dynamic_k) and YoutubeDNN with the same data, sizes and budget."""
    runs = {"MIND": fit(lambda *a, **kw: MIND(*a, k_max=K_MAX, dynamic_k=True, **kw), planted),
            "YoutubeDNN": fit(YoutubeDNN, planted)}
    ref = planted.references
    print(f"\nplanted retrieval data, recall@50 ({len(planted.test)} test users, {planted.data.num_items} items, "
          f"{EPOCHS} epochs): MIND {runs['MIND'].recall:.3f}, YoutubeDNN {runs['YoutubeDNN'].recall:.3f}, "
          f"popularity {ref['popularity']:.3f}; planted truth: oracle {ref['oracle']:.3f}, "
          f"mixture {ref['mixture']:.3f}, centroid {ref['centroid']:.3f}")
    return runs


def test_mind_recall_is_clearly_above_popularity_and_youtubednn(trained, planted):
    """Each model with its defaults, as a user gets them. Most of MIND's margin is YoutubeDNN's
    default temperature (DeepMatch's 0.05), not the second interest: measured on this data,
    YoutubeDNN at 0.1 reaches 0.570 and MIND with k_max 1 0.581 (MIND here: 0.589), so this is
    not evidence for the multi-interest claim; tfrec/models/mind.py's docstring has the figures."""
    mind, youtube = trained["MIND"].recall, trained["YoutubeDNN"].recall
    assert mind >= 2 * planted.references["popularity"]
    assert mind - youtube >= 0.03
    assert mind < planted.references["oracle"]


def test_trained_capsules_stay_apart_and_collapse_with_zero_routing_logits(trained, planted):
    model = trained["MIND"].model
    layer = model.get_layer("interest_capsules")
    probe = tf.keras.Model(model.inputs, list(layer._inbound_nodes[0].call_args))  # behaviours, mask, interests
    behaviours, history, mask = probe.predict(planted.x_test, verbose=0)
    zero_logits = CapsuleLayer(**{**layer.get_config(), "init_std": 0.0, "name": "zeros"})
    zero_logits(behaviours, history, mask)
    zero_logits.bilinear_mapping_matrix.assign(layer.bilinear_mapping_matrix)
    cosines = {name: mean_pairwise_cosine(capsules(behaviours, history, mask).numpy(), mask)
               for name, capsules in (("gaussian", layer), ("zeros", zero_logits))}
    print(f"\ntrained MIND on test histories, mean pairwise capsule cosine: Gaussian logits "
          f"{cosines['gaussian']:.3f}, zero logits {cosines['zeros']:.6f}")
    assert cosines["zeros"] > 1 - 1e-5
    assert cosines["gaussian"] < 0.95


def test_short_histories_get_fewer_served_interests(trained, planted):
    model = trained["MIND"].model
    inputs = user_features(model, {k: v[:64] for k, v in planted.x_test.items()})
    lengths = np.arange(64) % 8  # 0..7 events: 1, 1, 1, 1, 2, 2, 2, 2 interests for k_max=2
    inputs["hist_len"] = lengths.astype(inputs["hist_len"].dtype)
    interests, mask = model.user_tower.predict(inputs, verbose=0)
    expected = np.maximum(1, np.minimum(K_MAX, np.floor(np.log2(np.maximum(lengths, 1)))))
    np.testing.assert_array_equal(mask.sum(axis=1), expected)
    np.testing.assert_array_equal(interests[mask == 0], 0)
    assert np.all(np.linalg.norm(interests[mask == 1], axis=-1) > 0)


def test_a_negative_history_length_is_an_error_naming_it(trained, planted):
    model = trained["MIND"].model
    inputs = user_features(model, {k: v[:4] for k, v in planted.x_test.items()})
    inputs["hist_len"] = np.array([3, -7, 0, 2], inputs["hist_len"].dtype)
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_len holds a negative length; it must be"):
        model.user_tower.predict(inputs, verbose=0)


def test_extra_padding_changes_no_served_interest(trained, planted):
    model = trained["MIND"].model
    inputs = user_features(model, {k: v[:64] for k, v in planted.x_test.items()})
    padded = {k: (np.pad(v, ((0, 0), (0, 9))) if k == "hist_item_id" or k == "hist_cate_id" else v)
              for k, v in inputs.items()}
    for before, after in zip(model.user_tower.predict(inputs, verbose=0), model.user_tower.predict(padded, verbose=0)):
        np.testing.assert_allclose(after, before, atol=1e-6)


# --- The towers as served: save/load, DeepMatch's attributes, both compile forms. ---

def test_towers_give_identical_vectors_after_save_and_load_with_their_model_or_alone(trained, planted, tmp_path):
    model = trained["MIND"].model
    users = user_features(model, {k: v[:128] for k, v in planted.x_test.items()})
    items = {"item_id": planted.data.item_ids[:200]}
    before = model.user_tower.predict(users, verbose=0), model.item_tower.predict(items, verbose=0)
    for user_tower, item_tower in reloaded_towers(model, tmp_path):
        interests, mask = user_tower.predict(users, verbose=0)
        np.testing.assert_allclose(interests, before[0][0], atol=1e-6)
        np.testing.assert_array_equal(mask, before[0][1])
        np.testing.assert_allclose(item_tower.predict(items, verbose=0), before[1], atol=1e-6)


def test_deepmatch_style_user_model(trained, planted):
    model = trained["MIND"].model
    users = user_features(model, {k: v[:32] for k, v in planted.x_test.items()})
    deepmatch = tf.keras.Model(inputs=model.user_input, outputs=model.user_embedding)
    vectors = deepmatch.predict(users, verbose=0)
    assert vectors.shape == (32, K_MAX, DIM)
    np.testing.assert_allclose(vectors, model.user_tower.predict(users, verbose=0)[0], atol=1e-6)
    assert "item_id" not in [t.name for t in model.user_input]
    assert [t.name for t in model.item_input] == ["item_id"]


def test_a_tower_refuses_a_list_of_arrays_that_keras_would_match_by_position(planted):
    """A DeepCTR-style list in the order of the feature columns: the tower's inputs are in the
    order of their names, so Keras scored one feature's values as another's, without a word."""
    model = YoutubeDNN(planted.user_columns, planted.item_columns, user_dnn_hidden_units=(DIM,))
    users = user_features(model, {k: v[:4] for k, v in planted.x_test.items()})
    in_column_order = [users[name] for name in feature_columns.get_feature_names(planted.user_columns)]
    assert list(users) != feature_columns.get_feature_names(planted.user_columns)
    with pytest.raises(ValueError, match=r"_user_tower' takes a dict \{feature name: array\}, not a list of"):
        model.user_tower.predict(in_column_order, verbose=0)


@pytest.mark.parametrize("loss", [None, sampledsoftmaxloss])
def test_both_compile_forms_train(planted, loss):
    tf.keras.utils.set_random_seed(1)
    model = MIND(planted.user_columns, planted.item_columns, k_max=3, p=2, user_dnn_hidden_units=(DIM,),
                 sampler_config=NegativeSampler("uniform", 64, "item_id"))
    losses = losses_of_a_short_fit(model, planted, loss)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_build_errors_name_the_problem(planted):
    no_history = [c for c in planted.user_columns if c.name != "hist_item_id"]
    with pytest.raises(ValueError, match="needs its behaviour sequence"):
        MIND(no_history, planted.item_columns)
    with pytest.raises(ValueError, match="user tower gives 32-d vectors but the item embedding has 16"):
        MIND(planted.user_columns, planted.item_columns)


@pytest.mark.parametrize("heads", [None, 3])
def test_sampled_softmax_is_its_formula_for_counts_above_one(heads):
    """logit = <u, v> / T - log(expected count), an accidental hit removed, for counts from 0.1 to
    8 (TFRS' own correction clips its probability to 1: counts 8 and 2 were both corrected as 1);
    a multi-vector user (MIND) is scored by its best head."""
    from tfrec.layers.retrieval import SampledSoftmax
    rng = np.random.default_rng(0)
    batch, negatives, dim, temperature = 4, 3, 5, 0.5
    user = rng.normal(size=(batch, dim) if heads is None else (batch, heads, dim)).astype(np.float32)
    items = rng.normal(size=(batch + negatives, dim)).astype(np.float32)
    rows = np.array([1, 2, 3, 4, 7, 2, 9], np.int32)  # negative row 2 is the second positive: an accidental hit
    counts = np.array([8.0, 2.0, 0.5, 0.1, 1.5, 3.0, 0.2], np.float32)
    loss = SampledSoftmax(temperature)(tf.constant(user), tf.constant(items[:batch]), tf.constant(items[batch:]),
                                       tf.constant(rows), tf.constant(counts)).numpy()[:, 0]
    scores = user @ items.T if heads is None else np.einsum("bhd,cd->bhc", user, items).max(axis=1)
    logits = scores / temperature - np.log(counts)[None, :]
    hits = (rows[None, :] == rows[:batch, None]) & ~np.eye(batch, batch + negatives, dtype=bool)
    logits[hits] = -np.inf
    expected = -(np.diag(logits) - np.log(np.exp(logits).sum(axis=1)))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_a_temperature_that_is_not_above_0_is_an_error_naming_it(planted):
    """0 gave NaN losses from the first step; a negative temperature trained users away from their items."""
    towers = dict(user_dnn_hidden_units=(DIM,))
    for temperature in (0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="temperature .* must be a number > 0"):
            YoutubeDNN(planted.user_columns, planted.item_columns, temperature=temperature, **towers)
    with pytest.raises(ValueError, match="temperature .* must be a number > 0"):
        MIND(planted.user_columns, planted.item_columns, temperature=0.0, **towers)


def test_negative_sampler_takes_numpy_ints_and_names_bad_values():
    sampler = NegativeSampler("uniform", np.int64(64), "item_id")
    assert sampler.num_sampled == 64 and type(sampler.num_sampled) is int
    for bad in (-1, 2.5, True, "64"):
        with pytest.raises(ValueError, match="NegativeSampler: num_sampled must be an int >= 0"):
            NegativeSampler("uniform", bad, "item_id")


def test_item_counts_line_up_with_the_table_rows_for_any_item_column():
    vocabulary = SparseFeat("item_id", vocabulary=["a", "b", "c"], embedding_dim=4, dtype="string")
    np.testing.assert_array_equal(item_counts(["a", "c", "c", "zz"], vocabulary), [0, 1, 1, 0, 2])  # pad, OOV, a, b, c
    np.testing.assert_array_equal(item_counts(np.array([1, 1, 4]), SparseFeat("item_id", 5, 4)), [0, 2, 0, 0, 1])
    sampler = NegativeSampler("frequency", 2, "item_id", item_count=item_counts(["a", "b"], vocabulary))
    assert len(sampler.item_count) == vocabulary.vocabulary_size
