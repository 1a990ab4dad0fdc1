"""FeatureEncoder(pack_small_tables=True): small tables of one width in one variable, the same model."""
import numpy as np

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import SMALL_TABLE_MAX_SIZE, DenseFeat, FeatureEncoder, SparseFeat, VarLenSparseFeat
from feature_columns.inputs import small_table_packs

from tfrec.models import MMOE

PACKED = [SparseFeat("user", 50, 4), SparseFeat("device", 3, 4), SparseFeat("hour", 24, 4)]


def test_only_small_fixed_tables_read_by_sparse_features_pack_by_width():
    columns = PACKED + [
        SparseFeat("item", 30, 4), VarLenSparseFeat(SparseFeat("hist_item", 30, 4, embedding_name="item"), maxlen=5),
        SparseFeat("city", None, 4, dtype="string", vocabulary=["paris", "rome"]),   # grows with its vocabulary
        SparseFeat("shop", 40, 4, embeddings_initializer=tf.keras.initializers.Zeros()),
        SparseFeat("large", SMALL_TABLE_MAX_SIZE // 4 + 1, 4),
        SparseFeat("wide", 10, 8), SparseFeat("wide_too", 10, 8), DenseFeat("price")]
    assert small_table_packs(columns) == [["user", "device", "hour"], ["wide", "wide_too"]]

    half = SMALL_TABLE_MAX_SIZE // 8  # rows of width 4: half the bound each
    bounded = [SparseFeat(name, half, 4) for name in ("a", "b", "c")]
    assert small_table_packs(bounded) == [["a", "b"]]  # "c" would pass the bound; a pack of one is no pack


def dnn_input_model(pack):
    encoder = FeatureEncoder(PACKED + [DenseFeat("price")], l2_reg_embedding=0.1, pack_small_tables=pack)
    return tf.keras.Model(encoder.features, encoder.dnn_input())


def test_the_packed_model_computes_the_same_embeddings_and_penalty():
    separate, packed = dnn_input_model(False), dnn_input_model(True)
    assert [layer.name for layer in packed.layers if layer.name.startswith("emb_")] == ["emb_packed_user_device_hour"]
    tables = [separate.get_layer("emb_" + column.name) for column in PACKED]
    packed.get_layer("emb_packed_user_device_hour").embeddings.assign(
        np.concatenate([table.embeddings.numpy() for table in tables]))

    rng = np.random.default_rng(0)
    x = {column.name: rng.integers(0, column.vocabulary_size, (16, 1)).astype("int32") for column in PACKED}
    x["price"] = rng.random((16, 1)).astype("float32")
    for step in range(2):  # the second step's frequencies include the first's counts
        np.testing.assert_array_equal(packed(x, training=True).numpy(), separate(x, training=True).numpy())
        np.testing.assert_allclose(float(tf.add_n(packed.losses)), float(tf.add_n(separate.losses)), rtol=1e-6)


def test_a_step_leaves_the_packed_rows_outside_the_batch_bit_identical():
    columns = PACKED + [DenseFeat("price")]
    model = MMOE(columns, num_experts=2, expert_dnn_hidden_units=(8,), tower_dnn_hidden_units=(4,))
    model.compile("adam", ["binary_crossentropy"] * 2)
    table = model.get_layer("emb_packed_user_device_hour")
    rng = np.random.default_rng(1)

    def batch():
        x = {c.name: rng.integers(0, c.vocabulary_size // 2 + 1, (32, 1)).astype("int32") for c in PACKED}
        x["price"] = rng.random((32, 1)).astype("float32")
        return x, [rng.integers(0, 2, (32, 1)).astype("float32") for _ in range(2)]

    for _ in range(2):  # moments are non-zero before the step checked
        model.train_on_batch(*batch())
    optimizer = model.optimizer
    index = optimizer._index_dict[optimizer._var_key(table.embeddings)]
    state = [table.embeddings, optimizer._momentums[index], optimizer._velocities[index], table.counts]
    before = [v.numpy() for v in state]
    x, y = batch()
    model.train_on_batch(x, y)

    offsets = np.cumsum([0] + [c.vocabulary_size for c in PACKED[:-1]])
    used = np.unique(np.concatenate([x[c.name].ravel() + offset for c, offset in zip(PACKED, offsets)]))
    untouched = np.setdiff1d(np.arange(table.input_dim), used)
    assert len(untouched) > 0
    for variable, old in zip(state, before):
        np.testing.assert_array_equal(variable.numpy()[untouched], old[untouched], err_msg=variable.name)
    assert not np.array_equal(table.embeddings.numpy()[used], before[0][used])
