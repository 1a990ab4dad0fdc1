import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import feature_columns
from feature_columns import (DEFAULT_GROUP_NAME, DenseFeat, FeatureEncoder, RecentSequence, SequencePooling,
                             SparseFeat, SparseIndex, VarLenSparseFeat, build_input_features, get_feature_names,
                             validate_columns)
from feature_columns.feature_column import read_vocabulary_file
from feature_columns.layers import TOP_K_TWO_PASS_MIN_WIDTH
import tensorflow as tf


def test_keras_2_is_tf_keras():
    assert tf.keras.__name__.startswith("tf_keras")


def test_keras_3_already_loaded_raises_a_clear_import_error():
    code = "import tensorflow as tf; tf.keras.layers.Dense; import feature_columns"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "TF_USE_LEGACY_KERAS=1" in result.stderr


def test_deepctr_defaults():
    feat = SparseFeat("item_id", 100)
    assert (feat.embedding_dim, feat.use_hash, feat.dtype, feat.embedding_name, feat.group_name, feat.trainable) == (
        4, False, "int32", "item_id", DEFAULT_GROUP_NAME, True)
    assert SparseFeat("item_id", 10000, "auto").embedding_dim == 6 * int(10000 ** 0.25)
    seq = VarLenSparseFeat(SparseFeat("hist_item_id", 100, embedding_name="item_id"), maxlen=5)
    assert (seq.name, seq.maxlen, seq.combiner, seq.embedding_name, seq.length_name) == (
        "hist_item_id", 5, "mean", "item_id", None)
    assert DenseFeat("price").dimension == 1


def test_vocabulary_sizes_the_table():
    feat = SparseFeat("city", None, 4, dtype="string", vocabulary=["a", "b", "c"])
    assert feat.vocabulary_size == 5  # padding + OOV + 3


def test_a_vocabulary_of_bytes_is_text_and_its_lookup_saves_to_a_keras_file(tmp_path):
    # df[col].unique() of bytes (read from TFRecords or parquet): the .keras file did not load
    # ("Error when deserializing class 'SparseIndex'").
    feat = SparseFeat("city", None, 4, dtype="string", vocabulary=[b"paris", "rome", "z\u00fcrich".encode()])
    assert feat.vocabulary == ("paris", "rome", "z\u00fcrich")
    raw = tf.keras.Input((1,), dtype="string", name="city")
    model = tf.keras.Model(raw, feature_columns.inputs.index_layer(feat)(raw))
    model.save(tmp_path / "lookup.keras")
    cities = np.array([["rome"], ["z\u00fcrich"], ["oslo"]], dtype=object)
    np.testing.assert_array_equal(tf.keras.models.load_model(tmp_path / "lookup.keras")(cities), [[3], [4], [1]])


@pytest.mark.parametrize("make, message", [
    (lambda: SparseFeat("city", None, dtype="string"), "'city': dtype 'string' needs vocabulary"),
    (lambda: SparseFeat("city", 3, dtype="string", vocabulary=["a", "b"]), "'city': vocabulary_size=3 is too small"),
    (lambda: SparseFeat("city", None, dtype="string", vocabulary=["a", ""]), "'city': the vocabulary must not contain"),
    (lambda: SparseFeat("city", None, dtype="string", vocabulary=["a", "a"]), "'city': the vocabulary has duplicate"),
    (lambda: SparseFeat("city", None, dtype="string", vocabulary=[b"a", "a"]), "'city': the vocabulary has duplicate"),
    (lambda: SparseFeat("city", None, dtype="string", vocabulary=[b"\xff"]), r"'city': vocabulary entry b'\\xff' is "
                                                                              "not UTF-8 text"),
    (lambda: SparseFeat("city", 10, dtype="float16"), "'city': dtype must be one of"),
    (lambda: SparseFeat("city", 10, vocabulary_path="/no/such/file"), "'city': vocabulary_path"),
    (lambda: VarLenSparseFeat(SparseFeat("hist", 10), maxlen=0), "'hist': maxlen must be an int >= 1"),
    (lambda: VarLenSparseFeat(SparseFeat("hist", 10), maxlen=3, combiner="avg"), "'hist': combiner"),
    (lambda: DenseFeat("price", 0), "'price': dimension"),
])
def test_bad_columns_fail_at_construction_naming_the_column(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("make", [
    lambda name: SparseFeat(name, 10),
    lambda name: DenseFeat(name),
    lambda name: feature_columns.VarLenDenseFeat(name, 3),
    lambda name: SparseFeat("item", 10, embedding_name=name),
    lambda name: VarLenSparseFeat(SparseFeat("hist", 10), 3, length_name=name),
])
@pytest.mark.parametrize("name, fixed", [("user id", "user_id"), ("user/id", "user_id"), ("user-id", "user_id"),
                                         ("user.id", "user_id"), ("1st_item", "f_1st_item")])
def test_a_name_tensorflow_would_rename_or_refuse_fails_at_construction(make, name, fixed):
    """It becomes an input name of the model and of its SavedModel: 'user/id', 'user-id' and
    'user.id' built and trained, then failed at export with a KeyError (TensorFlow renames such a
    function argument to 'user_id'); 'user id' failed at build with a scope-name error."""
    with pytest.raises(ValueError, match=f"{re.escape(repr(name))} must start with a letter and hold only "
                                         f"letters, digits and '_' \\(e.g. '{fixed}'\\)"):
        make(name)
    make("User_ID2")


def test_bad_column_lists_fail_naming_the_columns():
    hist = VarLenSparseFeat(SparseFeat("hist_item_id", 10, embedding_name="itm"), maxlen=3)
    with pytest.warns(UserWarning, match="'hist_item_id' uses embedding_name 'itm', which no other column uses, so "
                                         "it gets a table of its own; did you mean 'item_id'"):
        validate_columns([SparseFeat("item_id", 10), hist])
    # DeepCTR's lone embedding_name: the column's table takes that name, and nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_columns([SparseFeat("item_id", 10), SparseFeat("genres", 5, embedding_name="genre_emb")])
    other_size = VarLenSparseFeat(SparseFeat("hist_item_id", 11, embedding_name="item_id"), maxlen=3)
    with pytest.raises(ValueError, match=r"'item_id' and 'hist_item_id' share embedding 'item_id' but differ in "
                                         r"vocabulary_size \(10 and 11\); columns sharing a table must agree"):
        validate_columns([SparseFeat("item_id", 10), other_size])
    other_dim = VarLenSparseFeat(SparseFeat("hist_item_id", 10, 8, embedding_name="item_id"), maxlen=3)
    with pytest.raises(ValueError, match=r"differ in embedding_dim \(4 and 8\);"):
        validate_columns([SparseFeat("item_id", 10), other_dim])
    # The table is built from the first column: a frozen item table after its history trained.
    frozen = SparseFeat("item_id", 10, trainable=False)
    with pytest.raises(ValueError, match=r"'hist_item_id' and 'item_id' share embedding 'item_id' but differ in "
                                         r"trainable \(True and False\)"):
        validate_columns([VarLenSparseFeat(SparseFeat("hist_item_id", 10, embedding_name="item_id"), maxlen=3),
                          frozen])
    validate_columns([frozen, VarLenSparseFeat(SparseFeat("hist_item_id", 10, embedding_name="item_id",
                                                          trainable=False), maxlen=3)])
    with pytest.raises(ValueError, match="'item_id' is declared twice"):
        validate_columns([SparseFeat("item_id", 10), SparseFeat("item_id", 10)])


@pytest.mark.parametrize("columns, message", [
    ([SparseFeat("n", 5), DenseFeat("seq_length"), VarLenSparseFeat(SparseFeat("hist_n", 5, embedding_name="n"), 3,
                                                                     length_name="seq_length")],
     "VarLenSparseFeat 'hist_n': length_name 'seq_length' is also the name of feature 'seq_length'"),
    ([SparseFeat("user", 5), VarLenSparseFeat(SparseFeat("hist_n", 5), 3, weight_name="user")],
     "VarLenSparseFeat 'hist_n': weight_name 'user' is also the name of feature 'user'"),
    ([VarLenSparseFeat(SparseFeat("hist_n", 5), 3, length_name="w", weight_name="w")],
     "VarLenSparseFeat 'hist_n': weight_name 'w' is also the length_name of 'hist_n'"),
    ([VarLenSparseFeat(SparseFeat("hist_a", 5), 3, length_name="n"),
      VarLenSparseFeat(SparseFeat("hist_b", 5), 3, weight_name="n")],
     "VarLenSparseFeat 'hist_b': weight_name 'n' is also the length_name of 'hist_a'"),
    ([VarLenSparseFeat(SparseFeat("hist_a", 5), 3, length_name="hist_b"), VarLenSparseFeat(SparseFeat("hist_b", 5), 3)],
     "VarLenSparseFeat 'hist_a': length_name 'hist_b' is also the name of feature 'hist_b'"),
])
def test_a_length_or_weight_name_of_another_input_fails_naming_both(columns, message):
    """One Input per name: the old code built a model reading a DenseFeat's numbers as a history's
    lengths, a SparseFeat's ids as its weights, or one input as both, without a word."""
    with pytest.raises(ValueError, match=re.escape(message)):
        FeatureEncoder(columns)
    # Sequences sharing their lengths (DIN's histories) or weights are one input read alike.
    validate_columns([VarLenSparseFeat(SparseFeat("hist_a", 5), 3, length_name="n", weight_name="w"),
                      VarLenSparseFeat(SparseFeat("hist_b", 5), 3, length_name="n", weight_name="w")])


def test_feature_names_and_inputs():
    columns = [SparseFeat("user", 10), DenseFeat("vec", 3),
               VarLenSparseFeat(SparseFeat("hist", 10, dtype="int64"), maxlen=4, length_name="len", weight_name="w")]
    assert get_feature_names(columns) == ["user", "vec", "hist", "len", "w"]
    inputs = build_input_features(columns)
    shapes = {name: (tuple(t.shape), t.dtype.name) for name, t in inputs.items()}
    assert shapes == {"user": ((None, 1), "int32"), "vec": ((None, 3), "float32"),
                      "hist": ((None, None), "int64"), "len": ((None, 1), "int32"), "w": ((None, None), "float32")}


def test_sparse_index_vocabulary_padding_and_oov():
    strings = SparseIndex(5, vocabulary=["a", "b", "c"], string_input=True)
    assert strings(tf.constant([["a", "c", "", "zzz"]])).numpy().tolist() == [[2, 4, 0, 1]]
    ints = SparseIndex(5, vocabulary=[10, 20, 30])
    assert ints(tf.constant([[30, 0, 99]], tf.int32)).numpy().tolist() == [[4, 0, 1]]


def test_sparse_index_hash_keeps_padding_and_is_stable():
    for values, padding in ((tf.constant([["a", "b", ""]]), ""), (tf.constant([[7, 8, 0]], tf.int64), 0)):
        hashed = SparseIndex(8, use_hash=True, string_input=values.dtype == tf.string)(values).numpy()
        assert hashed[0, 2] == 0 and np.all((hashed[0, :2] >= 1) & (hashed[0, :2] < 8))
        again = SparseIndex(8, use_hash=True, string_input=values.dtype == tf.string)(values).numpy()
        assert np.array_equal(hashed, again)


@pytest.mark.parametrize("column", [
    SparseFeat("plain", 6, dtype="int64"), SparseFeat("ints", 9, vocabulary=[10, 20, 30], dtype="int64"),
    SparseFeat("hashed_ints", 8, use_hash=True, dtype="int64"),
    SparseFeat("strings", dtype="string", vocabulary=["a", "0", "b"]),
    SparseFeat("hashed_strings", 8, use_hash=True, dtype="string")], ids=lambda column: column.name)
def test_is_padding_is_where_the_sequences_lookup_gives_row_0(column):
    """The numpy rule a pipeline reads long histories by, against the layer a model looks them up with."""
    sequence = VarLenSparseFeat(column, maxlen=4)
    raw = np.array(["", "0", "a", "b", "zz"], object) if column.dtype == "string" \
        else np.array([0, -3, 1, 5, 6, 10, 30, 99, 2**40], np.int64)
    looked_up = feature_columns.inputs.index_layer(sequence)(tf.constant(raw)[None, :], sequence=True).numpy()[0]
    assert feature_columns.is_padding(sequence, raw).tolist() == (looked_up == 0).tolist()


def test_recent_sequence_keeps_the_last_maxlen_items():
    recent = RecentSequence(3)
    indices = tf.constant([[1, 2, 3, 4, 5, 0, 0], [6, 7, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0]])
    assert recent(indices).numpy().tolist() == [[3, 4, 5], [6, 7, 0], [0, 0, 0]]
    assert recent(tf.constant([[9]])).numpy().tolist() == [[9, 0, 0]]
    by_length, (weights,) = recent(indices, lengths=tf.constant([[4], [1], [0]]),
                                   aligned=[tf.cast(indices, tf.float32) / 10])
    assert by_length.numpy().tolist() == [[2, 3, 4], [6, 0, 0], [0, 0, 0]]
    np.testing.assert_allclose(weights.numpy(), [[.2, .3, .4], [.6, 0, 0], [0, 0, 0]], rtol=1e-6)
    # A true length beyond the items sent (the history was cut before the request) keeps the items.
    longer = recent(tf.constant([[4, 5, 6, 0, 0, 0, 0]]), lengths=tf.constant([[80]]))
    assert longer.numpy().tolist() == [[4, 5, 6]]
    # A negative length is a mistake, not an empty history: an error naming the length's input.
    named = RecentSequence(3, length_name="hist_len")
    with pytest.raises(tf.errors.InvalidArgumentError, match="hist_len holds a negative length; it must be"):
        named(indices, lengths=tf.constant([[4], [-7], [0]]))
    assert RecentSequence.from_config(named.get_config()).length_name == "hist_len"


def test_recent_sequence_where_matches_a_numpy_reference():
    """The most recent k positions where a condition holds (SIM's hard search), on random rows."""
    rng = np.random.default_rng(0)
    batch, width, k = 64, 40, 5
    lengths = rng.integers(0, width + 1, batch)
    indices = np.where(np.arange(width)[None, :] < lengths[:, None], rng.integers(1, 50, (batch, width)), 0)
    where = rng.random((batch, width)) < 0.3
    times = rng.integers(1, 10**12, (batch, width))
    kept, (kept_times,) = RecentSequence(k)(tf.constant(indices), where=tf.constant(where),
                                            aligned=[tf.constant(times)])
    for row in range(batch):
        positions = np.flatnonzero((indices[row] != 0) & where[row])[-k:]
        expected = np.zeros(k, np.int64)
        expected[:len(positions)] = indices[row, positions]
        assert kept.numpy()[row].tolist() == expected.tolist()
        expected[:len(positions)] = times[row, positions]
        assert kept_times.numpy()[row].tolist() == expected.tolist()


@pytest.mark.parametrize("jit", [False, True])
def test_padding_between_items_is_skipped_not_paid_for_by_the_newest_items(jit):
    """Padding (or an unknown id, row 0) between a history's items: the most recent maxlen real
    items are still kept, as a numpy reference finds them, compiled or not; a batch of
    right-padded rows keeps taking the prefix path and gives the same answer."""
    rng = np.random.default_rng(1)
    batch, width, k = 64, 30, 6
    lengths = rng.integers(0, width + 1, batch)
    indices = np.where(np.arange(width)[None, :] < lengths[:, None], rng.integers(1, 50, (batch, width)), 0)
    gappy = np.where(rng.random((batch, width)) < 0.3, 0, indices)
    recent = RecentSequence(k)
    call = tf.function(lambda x, t: recent(x, aligned=[t]), jit_compile=jit)
    for rows in (indices, gappy):
        kept, (kept_times,) = call(tf.constant(rows), tf.constant(rows * 10))
        for row in range(batch):
            items = rows[row][rows[row] != 0][-k:]
            expected = np.zeros(k, np.int64)
            expected[:len(items)] = items
            assert kept.numpy()[row].tolist() == expected.tolist()
            assert kept_times.numpy()[row].tolist() == (expected * 10).tolist()


def test_aligned_sequences_of_another_width_are_refused_naming_both():
    recent = RecentSequence(3, names=["hist_item_id", "hist_timestamp"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="'hist_timestamp' must hold one entry per event of "
                                                             "'hist_item_id'"):
        recent(tf.constant([[1, 2, 3, 4]]), aligned=[tf.constant([[10, 20]])])
    assert RecentSequence.from_config(recent.get_config()).names == ["hist_item_id", "hist_timestamp"]


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64, tf.float32])
def test_top_k_indices_are_top_ks_and_compile_without_a_sort(dtype):
    """top_k's indices (ties in position order) for ints and floats; under XLA the integer case
    is ranked as float32, so it compiles to XLA's top-k, not to a sort of every row."""
    rng = np.random.default_rng(2)
    values = tf.constant(rng.integers(-70, 70, (16, 300)), dtype)  # many ties
    values = tf.tensor_scatter_nd_update(values, [[0, 0]], tf.constant([dtype.min], dtype))
    expected = tf.math.top_k(values, 20).indices
    compiled = tf.function(lambda x: feature_columns.top_k_indices(x, 20), jit_compile=True)
    np.testing.assert_array_equal(feature_columns.top_k_indices(values, 20), expected)
    np.testing.assert_array_equal(compiled(values), expected)
    hlo = compiled.experimental_get_compiler_ir(values)(stage="optimized_hlo")
    assert " sort(" not in hlo


@pytest.mark.parametrize("k", [1, 7, 50])
def test_top_k_indices_of_wide_rows_in_two_passes_are_top_ks(k):
    """Rows at least TOP_K_TWO_PASS_MIN_WIDTH x k wide are ranked over blocks, then over the best
    blocks: the same indices as one top_k, with ties (many equal values, masked float32.min and
    -inf positions) in position order; static and dynamic widths, eager and under XLA."""
    rng = np.random.default_rng(k)
    width = TOP_K_TWO_PASS_MIN_WIDTH * k + 13           # not a whole number of blocks
    values = rng.integers(-4, 4, (6, width)).astype(np.float32)
    values[1] = rng.normal(size=width)
    values[2:4] = np.where(rng.random((2, width)) < 0.995, np.finfo(np.float32).min, values[2:4])
    values[4] = np.where(rng.random(width) < 0.5, -np.inf, values[4])
    values[5, -3:] = 10.0                                                  # the best in the last block
    values = tf.constant(values)
    expected = tf.math.top_k(values, k).indices
    dynamic = tf.function(feature_columns.top_k_indices, input_signature=[tf.TensorSpec([None, None]),
                                                                          tf.TensorSpec([], tf.int32)])
    compiled = tf.function(lambda x: feature_columns.top_k_indices(x, k), jit_compile=True)
    for indices in (feature_columns.top_k_indices(values, k), dynamic(values, k), compiled(values)):
        np.testing.assert_array_equal(indices, expected)
    static = tf.function(lambda x: feature_columns.top_k_indices(x, k)).get_concrete_function(
        tf.TensorSpec([None, width]))
    # The two passes and the sort of the chosen blocks (tf.sort is a top_k too).
    assert [node.op for node in static.graph.as_graph_def().node].count("TopKV2") == 3


@pytest.mark.parametrize("shared", [False, True])
def test_recent_sequence_matching_keys_equals_a_numpy_reference(shared):
    """The most recent k events whose key equals the row's target (SIM's hard search), with a
    history per row and with one history shared by every row (found by sorting it once)."""
    rng = np.random.default_rng(1)
    rows, width, k = 48, 60, 4
    users = 1 if shared else rows
    lengths = rng.integers(0, width + 1, users)
    real = np.arange(width)[None, :] < lengths[:, None]
    indices = np.where(real, rng.integers(1, 50, (users, width)), 0)
    keys = np.where(real, rng.integers(0, 5, (users, width)), 0)  # few keys: long runs, key 0 on real events too
    targets = rng.integers(0, 6, (rows, 1))
    times = rng.integers(1, 10**12, (users, width))
    kept, (kept_times,) = RecentSequence(k)(tf.constant(indices), keys=tf.constant(keys),
                                            targets=tf.constant(targets), aligned=[tf.constant(times)])
    assert kept.shape == (rows, k)
    for row in range(rows):
        user = 0 if shared else row
        positions = np.flatnonzero((indices[user] != 0) & (keys[user] == targets[row, 0]))[-k:]
        expected = np.zeros((2, k), np.int64)
        expected[:, :len(positions)] = indices[user, positions], times[user, positions]
        np.testing.assert_array_equal([kept.numpy()[row], kept_times.numpy()[row]], expected)


def test_take_positions_reads_one_shared_row_for_every_row():
    values = tf.constant([[[1.0], [2.0], [3.0]]])                                    # (1, 3, 1)
    positions = tf.constant([[2, 0], [1, 1], [0, 2]])
    valid = tf.constant([[True, True], [True, False], [False, True]])
    taken = feature_columns.take_positions(values, positions, valid)
    assert taken.numpy()[..., 0].tolist() == [[3, 1], [2, 0], [0, 3]]


def test_sequence_pooling_ignores_padding():
    embeddings = tf.constant([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]])
    mask = tf.constant([[True, True, False]])
    assert SequencePooling("mean")(embeddings, mask).numpy().tolist() == [[[2.0, 4.0]]]
    assert SequencePooling("sum")(embeddings, mask).numpy().tolist() == [[[4.0, 8.0]]]
    assert SequencePooling("max")(embeddings, mask).numpy().tolist() == [[[3.0, 6.0]]]
    # Weights as DeepCTR 0.9.4's WeightedSequenceLayer applies them (checked against it): each
    # item's embedding times the softmax of the row's weights over its items (weight_norm) or the
    # weight itself; then the combiner pools as without weights ("mean" divides by the length).
    weights = np.array([1.0, 3.0])
    items = embeddings.numpy()[0, :2]
    for weight_norm, scale in ((True, np.exp(weights) / np.exp(weights).sum()), (False, weights)):
        weighted_items = items * scale[:, None]
        for combiner, expected in (("sum", weighted_items.sum(0)), ("mean", weighted_items.mean(0)),
                                   ("max", weighted_items.max(0))):
            pooled = SequencePooling(combiner, weight_norm=weight_norm)(embeddings, mask,
                                                                        weights=tf.constant([[1.0, 3.0, 5.0]]))
            np.testing.assert_allclose(pooled.numpy()[0, 0], expected, rtol=1e-6, err_msg=f"{combiner} {weight_norm}")
    empty = SequencePooling("max")(embeddings, tf.constant([[False, False, False]]))
    assert empty.numpy().tolist() == [[[0.0, 0.0]]]


def test_encoder_shares_one_table_by_embedding_name():
    columns = [SparseFeat("item_id", None, 3, dtype="string", vocabulary=["x", "y"]),
               VarLenSparseFeat(SparseFeat("hist_item_id", None, 3, dtype="string", vocabulary=["x", "y"],
                                           embedding_name="item_id"), maxlen=2)]
    encoder = FeatureEncoder(columns)
    model = tf.keras.Model(encoder.features, [encoder.embed("item_id"), encoder.embed("hist_item_id")])
    assert len(model.trainable_weights) == 1
    target, history = model.predict({"item_id": np.array(["y"]), "hist_item_id": np.array([["q", "x", "y"]])},
                                    verbose=0)
    np.testing.assert_array_equal(target[0, 0], history[0, 1])  # "y" is the most recent item
    assert feature_columns.FeatureEncoder is FeatureEncoder


def test_history_hands_a_model_aligned_query_keys_mask_lengths_and_event_times():
    item = dict(vocabulary_size=20, embedding_dim=3)
    columns = [SparseFeat("item_id", **item), SparseFeat("cate_id", 5, 2),
               VarLenSparseFeat(SparseFeat("hist_item_id", embedding_name="item_id", **item), maxlen=4),
               VarLenSparseFeat(SparseFeat("hist_cate_id", 5, 2, embedding_name="cate_id"), maxlen=4),
               feature_columns.VarLenDenseFeat("hist_timestamp", 4, dtype="int64")]
    encoder = FeatureEncoder(columns)
    history = encoder.history(["item_id", "cate_id"], aligned=["hist_timestamp"])
    same_category = tf.equal(history.indices["hist_cate_id"], encoder.indices("cate_id"))
    hard = history.recent(2, where=same_category, view="hard")
    model = tf.keras.Model(encoder.features, [history.query, history.keys, history.mask, history.lengths,
                                              history.aligned["hist_timestamp"], hard.keys,
                                              hard.aligned["hist_timestamp"]])
    assert len(model.trainable_weights) == 2  # one table per embedding_name
    inputs = {"item_id": np.array([7]), "cate_id": np.array([2]),
              "hist_item_id": np.array([[1, 2, 3, 4, 5, 6]]), "hist_cate_id": np.array([[2, 1, 2, 2, 1, 1]]),
              "hist_timestamp": np.array([[10, 20, 30, 40, 50, 60]], np.int64)}
    query, keys, mask, lengths, times, hard_keys, hard_times = model.predict(inputs, verbose=0)
    assert query.shape == (1, 1, 5) and keys.shape == (1, 4, 5)
    assert mask.tolist() == [[True] * 4] and lengths.tolist() == [4]
    assert times.tolist() == [[30, 40, 50, 60]]  # the same four most recent events as the ids
    # Hard view: the last two events of category 2 within the kept window are items 3 and 4.
    assert hard_times.tolist() == [[30, 40]]
    np.testing.assert_array_equal(hard_keys[0], keys[0, :2])
    with pytest.raises(ValueError, match="must share one maxlen"):
        FeatureEncoder(columns[:4] + [feature_columns.VarLenDenseFeat("hist_timestamp", 9)]).history(
            ["item_id", "cate_id"], aligned=["hist_timestamp"])


def test_hashed_string_sequences_take_deepctrs_zero_padding():
    """DeepCTR's hash examples pad string sequences with "0" (its Hash(mask_zero=True) makes it
    padding); a hashed string target keeps "0" as a value, as DeepCTR's mask_zero=False does."""
    index = feature_columns.SparseIndex(50, use_hash=True, string_input=True)
    raw = tf.constant([["g1", "g2", "0", ""]])
    sequence = index(raw, sequence=True).numpy()[0]
    assert sequence[2] == sequence[3] == 0 and sequence[0] > 0 and sequence[1] > 0
    assert index(tf.constant(["0"])).numpy()[0] > 0


@pytest.mark.parametrize("dtype, vocabulary, lines, message", [
    ("int64", [1.5, 2], None, r"'x': vocabulary entry 1.5 is not an integer id"),   # was looked up as id 1
    ("int64", ["a", "b"], None, r"'x': vocabulary entry 'a' is not an integer id"),
    ("string", ["a", None], None, r"'x': vocabulary entry None \(NoneType\) is not a string"),
    ("string", ["a", float("nan")], None, r"'x': vocabulary entry nan \(float\) is not a string"),
    ("string", [1, 2], None, r"'x': vocabulary entry 1 \(int\) is not a string"),
    ("string", "abc", None, r"'x': vocabulary must be a list of values, got the string 'abc'"),
    ("int64", None, "5\nabc\n", r"'x': vocabulary entry 'abc' is not an integer id"),
    ("int64", None, "5\n05\n", r"'x': the vocabulary has duplicate entries"),
    ("int64", None, "0\n5\n", r"'x': the vocabulary must not contain the padding value 0"),
])
def test_vocabulary_entries_not_of_the_column_type_fail_at_construction(tmp_path, dtype, vocabulary, lines,
                                                                        message):
    """Entries the lookup would read as other values, or fail on inside TensorFlow only when the
    model is built (without naming the column), are refused when the column is declared."""
    path = None
    if lines is not None:
        path = tmp_path / "vocab.txt"
        path.write_text(lines)
        path = str(path)
    with pytest.raises(ValueError, match=message):
        SparseFeat("x", None, 4, dtype=dtype, vocabulary=vocabulary, vocabulary_path=path)


def test_vocabulary_entries_of_the_column_type_are_accepted(tmp_path):
    assert SparseFeat("x", None, dtype="int64", vocabulary=[np.int64(5), 6.0, "7"]).vocabulary == (5, 6, 7)
    assert SparseFeat("x", None, dtype="string", vocabulary=np.array(["a", "b"], dtype=object)).vocabulary == (
        "a", "b")
    path = tmp_path / "vocab.txt"
    path.write_text("5\n-6\n")
    column = SparseFeat("x", None, dtype="int64", vocabulary_path=str(path))
    assert column.vocabulary_size == 4
    assert SparseIndex(4, vocabulary=read_vocabulary_file(str(path)))(tf.constant([5, -6, 7, 0], tf.int64)).numpy(
        ).tolist() == [2, 3, 1, 0]


@pytest.mark.parametrize("text", ["i1\ni2\n", "2,i2\n1,i1\n"])
def test_a_vocabulary_file_with_a_byte_order_mark_looks_up_its_first_value(tmp_path, text):
    """A file saved with a UTF-8 byte-order mark (Excel, Notepad, pandas' encoding="utf-8-sig"):
    its first value was read with the mark in front, so that value went to the OOV row."""
    path = tmp_path / "vocab.txt"
    path.write_text(text, encoding="utf-8-sig")
    column = SparseFeat("item", 4, dtype="string", use_hash=text[0] == "2", vocabulary_path=str(path))
    assert read_vocabulary_file(str(path)) == ["i1", "i2"]
    rows = feature_columns.look_up_rows([column], {"item": np.array(["i1", "i2", "i3"], dtype=object)})
    assert rows[feature_columns.indexed_key("item", column)].reshape(-1).tolist() == [2, 3, 1]


def test_a_deepctr_vocabulary_csv_is_read_as_deepctr_pairs_it(tmp_path):
    """DeepCTR's `index,value` CSV, with the use_hash=True and vocabulary_size = entries + 1 it
    gives it, looks values up by that vocabulary (in index order); unknown values go to OOV."""
    path = tmp_path / "vocab.csv"
    path.write_text("2,lake\n1,emerson\n3,palmer\n")
    column = feature_columns.SparseFeat("band", 4, embedding_dim=4, use_hash=True, dtype="string",
                                        vocabulary_path=str(path))
    assert (column.use_hash, column.vocabulary_size) == (False, 5)
    assert read_vocabulary_file(str(path)) == ["emerson", "lake", "palmer"]
    rows = feature_columns.look_up_rows([column], {"band": np.array(["lake", "palmer", "genesis", ""], dtype=object)})
    assert rows[feature_columns.indexed_key("band", column)].reshape(-1).tolist() == [3, 4, 1, 0]
    with pytest.raises(ValueError, match="vocabulary_size=3 is too small for 3 vocabulary entries"):
        feature_columns.SparseFeat("band", 3, use_hash=True, dtype="string", vocabulary_path=str(path))


@pytest.mark.parametrize("entries, deepctr_dim", [(14, 6), (15, 12), (79, 12), (80, 18)])
def test_auto_embedding_dim_of_a_vocabulary_is_deepctrs(tmp_path, entries, deepctr_dim):
    """DeepCTR sizes a vocabulary's table entries + 1 and its "auto" width 6 * int(rows ** 0.25);
    tfrec's table has one row more (out-of-vocabulary), which on the old code gave 12 for 14
    entries (16 rows) where DeepCTR gives 6 (15 rows). `deepctr_dim` is what deepctr 0.9.4's
    SparseFeat(name, entries + 1, "auto", use_hash=True, vocabulary_path=...) gives."""
    path = tmp_path / "vocab.csv"
    path.write_text("".join(f"{i},v{i}\n" for i in range(1, entries + 1)))
    values = [f"v{i}" for i in range(1, entries + 1)]
    deepctr_file = SparseFeat("x", entries + 1, "auto", use_hash=True, dtype="string", vocabulary_path=str(path))
    assert (deepctr_file.vocabulary_size, deepctr_file.embedding_dim) == (entries + 2, deepctr_dim)
    plain_file = tmp_path / "vocab.txt"
    plain_file.write_text("\n".join(values) + "\n")
    for column in (SparseFeat("x", None, "auto", dtype="string", vocabulary=values),
                   SparseFeat("x", "auto", "auto", dtype="string", vocabulary_path=str(plain_file))):
        assert (column.vocabulary_size, column.embedding_dim) == (entries + 2, deepctr_dim)
    # A size given beyond the vocabulary's is the table's, and "auto" counts it, as DeepCTR does.
    assert SparseFeat("x", 256, "auto", dtype="string", vocabulary=values).embedding_dim == 24


def test_columns_sharing_a_table_agree_on_its_initializer():
    """The table was built from the first column's initializer, silently: two columns naming
    different ones are refused (compared by class and config), and a column leaving it None takes
    the one another names, whichever comes first."""
    init = tf.keras.initializers

    def pair(target, history):
        return [SparseFeat("item_id", 5, 2, embeddings_initializer=target),
                VarLenSparseFeat(SparseFeat("hist_item_id", 5, 2, embedding_name="item_id",
                                            embeddings_initializer=history), maxlen=3)]

    def table(columns):
        encoder = FeatureEncoder(columns)
        encoder.embed("item_id")
        return encoder.table("item_id").embeddings.numpy()

    with pytest.raises(ValueError, match=r"features 'item_id' and 'hist_item_id' share embedding 'item_id' but differ "
                                         r"in embeddings_initializer \(Constant\(value=1.0\) and "
                                         r"Constant\(value=2.0\)\); columns sharing a table must agree on them"):
        validate_columns(pair(init.Constant(1.0), init.Constant(2.0)))
    with pytest.raises(ValueError, match=r"RandomNormal\(mean=0.0, stddev=0.01, seed=1\) and "
                                         r"RandomNormal\(mean=0.0, stddev=0.01, seed=2\)"):
        validate_columns(pair(init.RandomNormal(stddev=0.01, seed=1), init.RandomNormal(stddev=0.01, seed=2)))
    pretrained = np.arange(10, dtype="float32").reshape(5, 2)
    with pytest.raises(ValueError, match=r"Constant\(value=<array of shape \(5, 2\)>\) and Constant"):
        validate_columns(pair(init.Constant(pretrained), init.Constant(pretrained + 1)))
    with pytest.raises(ValueError, match=r"\(Zeros\(\) and Ones\(\)\)"):  # by name, as Keras reads them
        validate_columns(pair("zeros", "ones"))

    # Equal configs agree: each column of a DeepCTR script builds its own initializer object.
    np.testing.assert_array_equal(table(pair(init.Constant(pretrained), init.Constant(pretrained.copy()))), pretrained)
    np.testing.assert_array_equal(table(pair(init.Constant(1), init.Constant(1.0))), np.ones((5, 2)))
    np.testing.assert_array_equal(table(pair("zeros", init.Zeros())), np.zeros((5, 2)))
    # None is no initializer of its own: the one named fills the table, in either order.
    np.testing.assert_array_equal(table(pair(init.Constant(pretrained), None)), pretrained)
    np.testing.assert_array_equal(table(pair(None, init.Constant(pretrained))[::-1]), pretrained)
    np.testing.assert_array_equal(table(pair(None, init.Constant(pretrained))), pretrained)
    default = table(pair(None, None))  # both default: the encoder's own small random normal
    assert np.abs(default).max() < 0.01 and np.abs(default).max() > 0


def test_columns_sharing_a_table_name_its_vocabulary_file_by_any_path(tmp_path, monkeypatch):
    """A history naming the item table's vocabulary file by a relative path, the item by its
    absolute one, was refused ('differ in vocabulary_path'): they name one file. Another file
    with the same entries is still refused: the check does not read the files."""
    (tmp_path / "items.txt").write_text("i1\ni2\ni3\n")
    (tmp_path / "copy.txt").write_text("i1\ni2\ni3\n")
    monkeypatch.chdir(tmp_path)

    def columns(item_path, history_path):
        return [SparseFeat("item_id", dtype="string", vocabulary_path=item_path),
                VarLenSparseFeat(SparseFeat("hist_item_id", dtype="string", vocabulary_path=history_path,
                                            embedding_name="item_id"), maxlen=3)]

    validate_columns(columns(str(tmp_path / "items.txt"), "items.txt"))
    with pytest.raises(ValueError, match=r"share embedding 'item_id' but differ in vocabulary_path"):
        validate_columns(columns(str(tmp_path / "items.txt"), "copy.txt"))
