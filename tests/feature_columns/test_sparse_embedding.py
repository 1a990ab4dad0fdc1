"""SparseEmbedding: DIN's mini-batch aware L2 against a numpy reference, sparse gradients."""
import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import SparseEmbedding

ROWS, DIM, L2 = 40, 3, 0.01


def make_table(l2_reg=L2, frequency_scaling=True, prior_counts=None):
    layer = SparseEmbedding(ROWS, DIM, embeddings_initializer=tf.keras.initializers.RandomNormal(seed=1),
                            l2_reg=l2_reg, frequency_scaling=frequency_scaling)
    layer.build(None)
    if prior_counts is not None:
        layer.counts.assign(prior_counts.astype(np.float32))
        layer.lookups.assign(float(prior_counts.sum()))
    return layer


def numpy_penalty(table, counts, lookups, ids):
    """The loss of SparseEmbedding's docstring, written out from the paper's terms."""
    counts = counts + np.bincount(ids, minlength=ROWS)
    lookups = lookups + len(ids)
    share = counts[ids] / lookups                     # f_k, this batch included
    return L2 * np.mean(np.sum(table[ids] ** 2, axis=1) / share)


def test_batch_penalty_equals_the_numpy_reference():
    rng = np.random.default_rng(0)
    prior = rng.integers(0, 30, ROWS)
    layer = make_table(prior_counts=prior)
    target = np.array([[3], [7], [3], [0]], np.int32)                     # one table, two features
    history = np.array([[7, 7, 1, 0], [2, 0, 0, 0], [3, 9, 9, 9], [5, 5, 5, 5]], np.int32)
    table = layer.embeddings.numpy()
    ids = np.concatenate([target.ravel(), history.ravel()])

    out_target, out_history = layer([target, history], training=True)
    assert out_target.shape == (4, 1, DIM) and out_history.shape == (4, 4, DIM)
    np.testing.assert_array_equal(out_history.numpy(), table[history])
    (penalty,) = layer.losses
    np.testing.assert_allclose(penalty.numpy(), numpy_penalty(table, prior, prior.sum(), ids), rtol=1e-5)
    np.testing.assert_array_equal(layer.counts.numpy(), prior + np.bincount(ids, minlength=ROWS))
    assert layer.lookups.numpy() == prior.sum() + len(ids)


def test_expected_penalty_is_the_full_table_l2_at_the_same_scale():
    """Ids drawn with their long-run shares: the batch penalty averages to L2 * sum ||w_j||^2."""
    rng = np.random.default_rng(1)
    share = rng.dirichlet(np.ones(ROWS))
    layer = make_table(prior_counts=np.round(share * 1e7))  # counts already at their long-run shares
    table = layer.embeddings.numpy()
    penalties = []
    for _ in range(300):
        layer(rng.choice(ROWS, size=(64, 1), p=share).astype(np.int32), training=True)
        penalties.append(float(layer.losses[0]))
    np.testing.assert_allclose(np.mean(penalties), L2 * np.sum(table ** 2), rtol=0.05)


def test_without_frequency_scaling_each_distinct_row_counts_once():
    layer = make_table(frequency_scaling=False)
    ids = np.array([[4, 4, 9, 0], [9, 1, 1, 0]], np.int32)
    layer(ids, training=True)
    table = layer.embeddings.numpy()
    np.testing.assert_allclose(float(layer.losses[0]), L2 * np.sum(table[[0, 1, 4, 9]] ** 2), rtol=1e-6)
    assert not layer.counts.numpy().any()


def test_inference_adds_no_loss_and_counts_nothing():
    layer = make_table()
    layer(np.array([[1, 2, 3]], np.int32), training=False)
    assert not layer.losses
    assert not layer.counts.numpy().any() and layer.lookups.numpy() == 0


def test_table_gradient_is_indexed_slices_over_the_batch_rows():
    layer = make_table()
    ids = np.array([[2, 5], [5, 0]], np.int32)
    with tf.GradientTape() as tape:
        embedded = layer(ids, training=True)
        loss = tf.reduce_sum(embedded) + tf.add_n(layer.losses)
    gradient = tape.gradient(loss, layer.embeddings)
    assert isinstance(gradient, tf.IndexedSlices)
    assert set(gradient.indices.numpy().tolist()) == {0, 2, 5}


@pytest.mark.parametrize("scaling", [True, False])
def test_config_round_trips(scaling):
    layer = make_table(frequency_scaling=scaling)
    clone = SparseEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.input_dim, clone.output_dim, clone.l2_reg, clone.frequency_scaling) == (ROWS, DIM, L2, scaling)


def test_vocabulary_file_counts_seed_the_frequencies(tmp_path):
    from feature_columns import FeatureEncoder, SparseFeat, VarLenSparseFeat

    path = tmp_path / "items.tsv"
    path.write_text("shoe\t120\nhat\t3\nsock\t40\n")
    item = SparseFeat("item_id", None, 4, dtype="string", vocabulary_path=str(path))
    columns = [item, VarLenSparseFeat(SparseFeat("hist_item_id", None, 4, dtype="string",
                                                 vocabulary_path=str(path), embedding_name="item_id"), 5)]
    encoder = FeatureEncoder(columns, l2_reg_embedding=1e-4)
    encoder.embed("item_id")
    table = encoder._tables["item_id"]
    assert table.input_dim == 5  # padding, OOV, three values
    np.testing.assert_array_equal(table.counts.numpy(), [0, 0, 120, 3, 40])
    assert table.lookups.numpy() == 163


@pytest.mark.parametrize("text, problem", [("shoe\t12\nhat\n", "1 of 2 lines have a count"),
                                           ("shoe\tmany\n", "line 1: the count after the tab")])
def test_bad_vocabulary_counts_name_the_file_and_line(tmp_path, text, problem):
    from feature_columns import SparseFeat

    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        SparseFeat("item_id", None, 4, dtype="string", vocabulary_path=str(path))


@pytest.mark.parametrize("save_traces", [True, False], ids=["with_traces", "without_traces"])
def test_a_frozen_table_stays_frozen_in_a_saved_model_loaded_back(tmp_path, save_traces):
    """SparseFeat(trainable=False) (a pretrained table) in a SavedModel saved with traces, as
    `exporters` save: Keras revives the model from its config and sets its saved `trainable` on
    every layer, so on the old code the loaded model listed the frozen table among its trainable
    weights and a fit step moved it."""
    from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat

    from tfrec.models import DIN

    columns = [SparseFeat("user", 6, 4, trainable=False), SparseFeat("item", 8, 4, trainable=False),
               VarLenSparseFeat(SparseFeat("hist_item", 8, 4, embedding_name="item", trainable=False), maxlen=3),
               SparseFeat("city", 5, 4), DenseFeat("score")]
    model = DIN(columns, ["item"], dnn_hidden_units=(4,), att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy")
    model.save(tmp_path / "saved_model", save_traces=save_traces)
    restored = tf.keras.models.load_model(tmp_path / "saved_model")

    frozen = [restored.get_layer(name) for name in ("emb_user", "emb_item")]
    assert [layer.trainable for layer in frozen] == [False, False]
    assert restored.get_layer("emb_city").trainable
    assert sorted(w.name for w in restored.trainable_weights) == sorted(w.name for w in model.trainable_weights)

    rng = np.random.default_rng(0)
    x = {"user": rng.integers(1, 6, 32), "item": rng.integers(1, 8, 32), "hist_item": rng.integers(0, 8, (32, 3)),
         "city": rng.integers(1, 5, 32), "score": rng.random(32).astype("float32")}
    before = {layer.name: layer.embeddings.numpy() for layer in frozen + [restored.get_layer("emb_city")]}
    restored.compile("adam", "binary_crossentropy")
    restored.fit(x, rng.integers(0, 2, 32).astype("float32"), batch_size=32, epochs=1, verbose=0)
    for layer in frozen:
        np.testing.assert_array_equal(layer.embeddings.numpy(), before[layer.name])  # bit-identical
    assert not np.array_equal(restored.get_layer("emb_city").embeddings.numpy(), before["emb_city"])


def test_a_pretrained_table_saves_to_an_h5_file_and_loads(tmp_path):
    """SparseFeat(embeddings_initializer=Constant(matrix)), DeepCTR's pretrained table, saved as
    DeepCTR users save (`save_model(model, 'm.h5')` + `load_model`): Keras wrote the matrix into the
    file's config as a '__numpy__' object its .h5 loading cannot read, so on the old code the load
    failed ("Error when deserializing class 'SparseEmbedding' ... Unknown object: '__numpy__'")."""
    from feature_columns import SparseFeat

    from tfrec.layers import custom_objects
    from tfrec.models import MMOE

    pretrained = np.arange(15, dtype="float64").reshape(5, 3) / 10
    model = MMOE([SparseFeat("user", 5, 3, embeddings_initializer=tf.keras.initializers.Constant(pretrained),
                             trainable=False), SparseFeat("item", 5, 3)],
                 num_experts=2, expert_dnn_hidden_units=(4,), tower_dnn_hidden_units=())
    model.compile("adam", "binary_crossentropy")
    tf.keras.models.save_model(model, tmp_path / "m.h5")
    restored = tf.keras.models.load_model(tmp_path / "m.h5", custom_objects)
    table = restored.get_layer("emb_user")
    np.testing.assert_allclose(table.embeddings.numpy(), pretrained.astype("float32"))
    assert not table.trainable
    # The config keeps the matrix, as lists, and builds the same table again.
    clone = SparseEmbedding.from_config(table.get_config())
    clone.build(None)
    np.testing.assert_allclose(clone.embeddings.numpy(), pretrained.astype("float32"))
