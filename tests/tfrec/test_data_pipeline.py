import numpy as np
import pandas as pd
import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
from feature_columns import DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat
from tfrec.data import df_to_dataset, df_to_inputs


@pytest.fixture
def frame():
    return pd.DataFrame({
        "user": [1, 2, 3],
        "city": ["paris", "rome", "oslo"],
        "hist": [[1, 2, 3, 4], [5], []],
        "hist_weight": [[0.1, 0.2, 0.3, 0.4], [0.5], []],
        "tags": [["x", "y"], [], ["z", "x", "y", "w"]],
        "price": [1.5, 2.0, 3.0],
        "vec": [[1, 2], np.array([3, 4]), (5, 6)],
        "label": [1, 0, 1],
        "other": [0, 1, 1],
    })


def columns():
    return [
        SparseFeat("user", 10, dtype="int64"),
        SparseFeat("city", dtype="string", vocabulary=["oslo", "paris", "rome"]),
        VarLenSparseFeat(SparseFeat("hist", 10), maxlen=2, length_name="hist_len", weight_name="hist_weight"),
        VarLenSparseFeat(SparseFeat("tags", dtype="string", vocabulary=["w", "x", "y", "z"]), maxlen=3),
        DenseFeat("price"),
        DenseFeat("vec", 2),
    ]


def test_df_to_inputs_values_shapes_dtypes(frame):
    inputs = df_to_inputs(frame, columns())
    assert set(inputs) == {"user", "city", "hist", "hist_len", "hist_weight", "tags", "price", "vec"}
    assert inputs["user"].dtype == np.int64 and inputs["user"].tolist() == [1, 2, 3]
    assert inputs["city"].dtype == object and inputs["city"].tolist() == ["paris", "rome", "oslo"]
    # Most recent maxlen items kept, oldest to newest, right-padded with 0.
    assert inputs["hist"].dtype == np.int32
    assert inputs["hist"].tolist() == [[3, 4], [5, 0], [0, 0]]
    assert inputs["hist_len"].dtype == np.int32 and inputs["hist_len"].tolist() == [2, 1, 0]
    assert inputs["hist_weight"].dtype == np.float32
    np.testing.assert_allclose(inputs["hist_weight"], [[0.3, 0.4], [0.5, 0.0], [0.0, 0.0]])
    # Strings pad with "".
    assert inputs["tags"].tolist() == [["x", "y", ""], ["", "", ""], ["x", "y", "w"]]
    assert inputs["price"].dtype == np.float32 and inputs["price"].shape == (3,)
    assert inputs["vec"].dtype == np.float32 and inputs["vec"].tolist() == [[1, 2], [3, 4], [5, 6]]


def test_df_to_inputs_prefers_the_frames_length_column(frame):
    frame["hist_len"] = [7, 7, 7]
    assert df_to_inputs(frame, columns())["hist_len"].tolist() == [7, 7, 7]


def test_int_ids_become_strings_for_string_columns():
    frame = pd.DataFrame({"item": [3, 14], "hist": [[1, 2], [3]]})
    cols = [SparseFeat("item", dtype="string", use_hash=True, vocabulary_size=8),
            VarLenSparseFeat(SparseFeat("hist", dtype="string", use_hash=True, vocabulary_size=8), maxlen=2)]
    inputs = df_to_inputs(frame, cols)
    assert inputs["item"].tolist() == ["3", "14"]
    assert inputs["hist"].tolist() == [["1", "2"], ["3", ""]]


def test_missing_column_names_feature_and_columns(frame):
    with pytest.raises(KeyError, match=r"feature 'age'.*\['user', 'city'"):
        df_to_inputs(frame, [DenseFeat("age")])


def test_bad_values_are_named(frame):
    with pytest.raises(ValueError, match="feature 'city' has dtype 'int32'"):
        df_to_inputs(frame, [SparseFeat("city", 10)])
    with pytest.raises(ValueError, match="column 'price' must hold a list"):
        df_to_inputs(frame, [VarLenSparseFeat(SparseFeat("price", 10), maxlen=2)])
    frame["hist_weight"] = [[0.1], [0.5], []]
    with pytest.raises(ValueError, match="row 0 has 1 weights for 4 items"):
        df_to_inputs(frame, columns())
    with pytest.raises(ValueError, match="feature 'vec' needs 3 float"):
        df_to_inputs(frame, [DenseFeat("vec", 3)])
    ids = SparseFeat("item_id", 2000, dtype="int64")
    with pytest.raises(ValueError, match=r"needs integer ids, but row 0 holds '1060'; the column is text: .* leading "
                                         r"zeros \('0777' in row 2\)"):
        df_to_inputs(pd.DataFrame({"item_id": ["1060", "1082", "0777"]}), [ids])
    with pytest.raises(ValueError, match=r"needs integer ids, but row 1 holds nan; missing values must be filled"):
        df_to_inputs(pd.DataFrame({"item_id": [5, None, 7]}), [ids])


def test_a_bad_item_of_a_history_is_named_by_its_row_and_column():
    # The message named its place among all the rows' kept items ("row 6"), and a list mixing ids
    # and text was all text to numpy ("row 0 holds '1'").
    hist = VarLenSparseFeat(SparseFeat("hist", 10), maxlen=3)
    df = pd.DataFrame({"hist": [[1, 2], [3, 4, 5], [6, 7]]}, index=["a", "b", "c"])
    for bad, shown in [(2 ** 40, r"holds 1099511627776 \(row 2 \(index 'c'\)\), outside the int32 range"),
                       (1.5, r"but row 2 \(index 'c'\) holds 1.5; ids are whole numbers"),
                       ("x", r"but row 2 \(index 'c'\) holds 'x'; text is not an integer id")]:
        with pytest.raises(ValueError, match=rf"feature 'hist' .*{shown}"):
            df_to_inputs(df.assign(hist=[[1, 2], [3, 4, 5], [6, bad]]), [hist])
    # A row whose events are picked from a whole cell longer than maxlen (padding in its tail).
    with pytest.raises(ValueError, match=r"feature 'hist' .*but row 1 \(index 'b'\) holds 'x'"):
        df_to_inputs(df.assign(hist=[[1, 2], [3, "x", 4, 5, 0, 0], [6, 7]]), [hist])
    # A dense history's numbers and a history's weights alike.
    weighted = VarLenSparseFeat(SparseFeat("hist", 10), maxlen=3, weight_name="hist_weight")
    with pytest.raises(ValueError, match=r"feature 'hist_weight' has dtype 'float32' and needs numbers, but row 1 "
                                         r"\(index 'b'\) holds 'x'"):
        df_to_inputs(df.assign(hist_weight=[[1.0, 1.0], [1.0, "x", 1.0], [1.0, 1.0]]), [weighted])
    times = VarLenDenseFeat("hist_time", 3)
    with pytest.raises(ValueError, match=r"feature 'hist_time' has dtype 'float32' and needs numbers, but row 2 "
                                         r"\(index 'c'\) holds 'x'"):
        df_to_inputs(df.assign(hist_time=[[1.0, 2.0], [3.0, 4.0, 5.0], [6.0, "x"]]), [hist, times])


def test_df_to_dataset_batches_in_order_without_shuffle(frame):
    dataset = df_to_dataset(frame, columns(), "label", batch_size=2, shuffle=False, look_up=False)
    batches = list(dataset)
    assert [len(labels) for _, labels in batches] == [2, 1]
    features, labels = batches[0]
    assert labels.dtype.name == "float32" and labels.numpy().tolist() == [1.0, 0.0]
    assert features["hist"].numpy().tolist() == [[3, 4], [5, 0]]
    assert features["city"].numpy().tolist() == [b"paris", b"rome"]
    assert [len(l) for _, l in df_to_dataset(frame, columns(), "label", batch_size=2, drop_remainder=True)] == [2]


def test_df_to_dataset_looks_rows_up_as_the_model_would(frame):
    from feature_columns import FeatureEncoder, indexed_key

    (features, _), = list(df_to_dataset(frame, columns(), "label", batch_size=8, shuffle=False))
    raw = df_to_inputs(frame, columns())
    encoder = FeatureEncoder(columns())
    model_lookup = tf.keras.Model(encoder.features, {name: encoder.indices(name) for name in ("city", "hist")})
    expected = model_lookup.predict(raw, verbose=0)
    np.testing.assert_array_equal(features[indexed_key("city", columns()[1])].numpy(), expected["city"][:, 0])
    np.testing.assert_array_equal(features[indexed_key("hist", columns()[2])].numpy()[:, :2], expected["hist"])
    assert "city" not in features and "hist" not in features
    assert features["hist_len"].numpy().tolist() == raw["hist_len"].tolist()  # non-id inputs pass through


def test_df_to_dataset_label_forms(frame):
    _, labels = next(iter(df_to_dataset(frame, columns(), ["label", "other"], batch_size=3, shuffle=False)))
    assert sorted(labels) == ["label", "other"] and labels["other"].numpy().tolist() == [0, 1, 1]
    _, labels = next(iter(df_to_dataset(frame, columns(), {"ctr": "label", "cvr": "other"}, batch_size=3,
                                        shuffle=False)))
    assert sorted(labels) == ["ctr", "cvr"] and labels["ctr"].numpy().tolist() == [1, 0, 1]
    features = next(iter(df_to_dataset(frame, columns(), batch_size=3, look_up=False)))
    assert isinstance(features, dict) and features["user"].shape == (3,)
    with pytest.raises(KeyError, match="label of task 'ctr' needs column 'missing'"):
        df_to_dataset(frame, columns(), {"ctr": "missing"})
    # A NaN / inf / text label would make every weight NaN: refused, naming the column and row.
    for bad, shown in ((np.nan, "nan"), (np.inf, "inf"), ("yes", "'yes'")):
        broken = frame.assign(other=[0, bad, 1]).set_axis(["a", "b", "c"])
        with pytest.raises(ValueError, match=rf"the label of task 'cvr' column 'other' needs finite numbers, "
                                             rf"but row 1 \(index 'b'\) holds {shown}; 1 row\(s\) do"):
            df_to_dataset(broken, columns(), {"ctr": "label", "cvr": "other"})


def test_df_to_dataset_shuffles_every_row_once_and_repeats(frame):
    users = [u for f, _ in df_to_dataset(frame, columns(), "label", batch_size=2, seed=3, look_up=False)
             for u in f["user"].numpy()]
    assert sorted(users) == [1, 2, 3]
    repeated = df_to_dataset(frame, columns(), "label", batch_size=3, repeat=True)
    assert sum(1 for _ in repeated.take(4)) == 4


def test_gaps_are_named_by_feature_and_row_and_int_ids_in_floats_are_their_text():
    columns_ = [SparseFeat("user", dtype="string", vocabulary=["5", "6"]), DenseFeat("price", 1)]
    df = pd.DataFrame({"user": [5.0, 6.0, 5.0], "price": [1.0, 2.0, 3.0]})  # an int column widened to floats
    assert df_to_inputs(df, columns_)["user"].tolist() == ["5", "6", "5"]
    with pytest.raises(ValueError, match=r"feature 'price' needs numbers, but row 1 holds NaN"):
        df_to_inputs(df.assign(price=[1.0, None, 3.0]), columns_)
    with pytest.raises(ValueError, match=r"feature 'price' needs numbers, but row 2 holds NaN"):
        next(iter(df_to_dataset(df.assign(price=[1.0, 2.0, None]), columns_, shuffle=False)))
    with pytest.raises(ValueError, match=r"feature 'user' has dtype 'string' and needs str values, but row 1 holds "
                                         r"(None|nan)"):
        df_to_inputs(pd.DataFrame({"user": ["5", None, "6"], "price": [1.0, 2.0, 3.0]}), columns_)


def test_batches_of_row_numbers_are_the_row_wise_pipelines_batches():
    """`batched_rows` (df_to_dataset's and the distributed pipeline's) shuffles and batches row
    numbers, then gathers each batch: the same batches, epoch after epoch, as shuffling and
    batching the rows themselves with the same seed, also for one shard of the rows."""
    from tfrec.data.pipeline import batched_rows

    rng = np.random.default_rng(0)
    elements = ({"id": rng.integers(0, 100, 103), "city": rng.choice(["oslo", "rome"], 103),
                 "hist": rng.integers(0, 100, (103, 4))}, rng.random(103).astype("float32"))
    for shuffle, seed, repeat, drop_remainder, shard in ((True, 7, False, False, None), (True, 8, True, True, (3, 1)),
                                                         (False, None, False, False, (2, 0))):
        rows = tf.data.Dataset.from_tensor_slices(elements)
        rows = rows.shard(*shard) if shard else rows
        rows = rows.shuffle(103, seed=seed, reshuffle_each_iteration=True) if shuffle else rows
        rows = rows.batch(10, drop_remainder=drop_remainder)
        expected = rows.repeat() if repeat else rows
        ours = batched_rows(elements, 103, 10, shuffle, seed, repeat, drop_remainder, shard)
        assert ours.element_spec == expected.element_spec
        # Two epochs, each reshuffled (repeated: 12 batches, four epochs of 3, in one iteration).
        for _ in range(1 if repeat else 2):
            pairs = list(zip(ours.take(12), expected.take(12)))
            assert len(pairs) == (12 if repeat else int(rows.cardinality()))
            for a, b in pairs:
                for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
                    np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_df_to_dataset_runs_without_autotuning_so_each_epochs_iterator_ends_at_once(frame):
    """Keras deletes a data set's iterator at every epoch's end; with tf.data's autotuning on, that
    waited for the autotuning thread to wake (5 s after each of CLSR's later epochs)."""
    import time

    dataset = df_to_dataset(frame, columns(), "label", batch_size=2, seed=0)
    assert dataset.options().autotune.enabled is False
    for _ in range(3):
        iterator = iter(dataset)
        assert sum(1 for _ in iterator) == 2
        started = time.perf_counter()
        del iterator
        assert time.perf_counter() - started < 0.5


def test_padding_in_a_longer_cell_is_not_an_event_so_the_frame_keeps_what_the_model_keeps():
    """Cells post-padded (DeepCTR's pad_sequences, a CSV's empty placeholders) and longer than
    maxlen keep their most recent events, not their last cells: the model, fed the cells as they
    are, keeps the same ones, so training (on the frame) and serving (on raw rows) agree."""
    from feature_columns import VarLenDenseFeat
    from tfrec.models import DIN
    columns = [SparseFeat("item_id", 10, 4, dtype="int64"), SparseFeat("cate_id", dtype="string", vocabulary=["a", "b"]),
               VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4, dtype="int64", embedding_name="item_id"), maxlen=3),
               VarLenSparseFeat(SparseFeat("hist_cate_id", dtype="string", vocabulary=["a", "b"],
                                           embedding_name="cate_id"), maxlen=3),
               VarLenDenseFeat("hist_time", 3, dtype="int64")]
    padded = pd.DataFrame({"item_id": [7, 7, 7], "cate_id": ["a", "b", "a"],
                           "hist_item_id": [[1, 2, 3, 0, 0], [4, 0, 5, 0, 0], [1, 2, 99, 3, 4]],  # 99: out of range
                           "hist_cate_id": [["a", "b", "a", "", ""], ["b", "", "a", "", ""], ["a", "a", "b", "b", "a"]],
                           "hist_time": [[1, 2, 3, 0, 0], [4, 0, 5, 0, 0], [1, 2, 9, 3, 4]]})
    events = pd.DataFrame({"item_id": [7, 7, 7], "cate_id": ["a", "b", "a"],
                           "hist_item_id": [[1, 2, 3], [4, 5], [2, 3, 4]],
                           "hist_cate_id": [["a", "b", "a"], ["b", "a"], ["a", "b", "a"]],
                           "hist_time": [[1, 2, 3], [4, 5], [2, 3, 4]]})
    kept, expected = df_to_inputs(padded, columns), df_to_inputs(events, columns)
    for name in expected:
        assert kept[name].tolist() == expected[name].tolist(), name
    assert kept["hist_item_id"].tolist() == [[1, 2, 3], [4, 5, 0], [2, 3, 4]]

    model = DIN(columns[:4], ["item_id", "cate_id"], dnn_hidden_units=(8,), att_hidden_size=(8,))
    for weight in model.weights:  # embeddings that tell events apart
        if "embeddings" in weight.name:
            weight.assign(tf.random.stateless_normal(weight.shape, seed=[1, 2]))
    raw = {name: np.array(padded[name].tolist()) for name in ["item_id", "cate_id", "hist_item_id", "hist_cate_id"]}
    np.testing.assert_allclose(model.predict({name: kept[name] for name in raw}, verbose=0),
                               model.predict(raw, verbose=0), atol=1e-6)

    # A length column bounds the events too: the first `length` cells of a row are its items.
    columns[2] = VarLenSparseFeat(SparseFeat("hist_item_id", 10, 4, dtype="int64", embedding_name="item_id"),
                                  maxlen=3, length_name="hist_len")
    bounded = df_to_inputs(padded.assign(hist_len=[2, 5, 4]), columns)
    assert bounded["hist_item_id"].tolist() == [[1, 2, 0], [4, 5, 0], [1, 2, 3]]
    assert bounded["hist_len"].tolist() == [2, 2, 3]
    assert bounded["hist_time"].tolist() == [[1, 2, 0], [4, 5, 0], [1, 2, 3]]


def test_an_id_outside_its_integer_dtype_is_refused_not_wrapped_around():
    # 4294967301 = 2**32 + 5: an int32 cast made it id 5, another item, silently.
    columns_ = [SparseFeat("item_id", 10)]  # DeepCTR's default dtype, int32
    df = pd.DataFrame({"item_id": [5, 4294967301]})
    with pytest.raises(ValueError, match=r"feature 'item_id' holds 4294967301 \(row 1\), outside the int32 range"):
        df_to_inputs(df, columns_)
    with pytest.raises(ValueError, match=r"feature 'item_id' holds 4294967301 \(row 1\)"):
        df_to_dataset(df.assign(label=[1, 0]), columns_, "label")
    assert df_to_inputs(df, [SparseFeat("item_id", 10, dtype="int64")])["item_id"].tolist() == [5, 4294967301]


def test_nan_or_an_infinity_in_a_dense_history_or_a_historys_weights_is_refused():
    # Padding is 0; a NaN time (or a None among the floats, which numpy casts to NaN) or weight
    # reached the model through df_to_dataset, whose batches fit does not check: every score NaN.
    df = pd.DataFrame({"hist": [[1, 2], [3, 4, 5], [6, 7]], "hist_weight": [[1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0]],
                       "hist_time": [[1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0]]})
    hist = VarLenSparseFeat(SparseFeat("hist", 10), maxlen=3, weight_name="hist_weight")
    times = VarLenDenseFeat("hist_time", 3)
    for bad, shown in [(np.nan, "NaN"), (None, "NaN"), (-np.inf, "-inf")]:
        with pytest.raises(ValueError, match=rf"feature 'hist_time' needs numbers, but row 2 holds {shown}"):
            df_to_dataset(df.assign(hist_time=[[1.0, 2.0], [3.0, 4.0, 5.0], [6.0, bad]]), [hist, times])
    with pytest.raises(ValueError, match=r"feature 'hist_weight' needs numbers, but row 1 holds NaN"):
        df_to_inputs(df.assign(hist_weight=[[1.0, 1.0], [1.0, np.nan, 1.0], [1.0, 1.0]]), [hist, times])


def test_an_infinity_in_a_dense_column_is_refused_as_nan_is():
    # np.log of a price of 0: every score and loss of a model trained on it became NaN.
    df = pd.DataFrame({"price": [0.5, 1.0, -np.inf], "vec": [[1.0, 2.0], [3.0, np.inf], [5.0, 6.0]]})
    with pytest.raises(ValueError, match=r"feature 'price' needs numbers, but row 2 holds -inf; replace"):
        df_to_inputs(df, [DenseFeat("price", 1)])
    with pytest.raises(ValueError, match=r"feature 'vec' needs numbers, but row 1 holds inf"):
        df_to_inputs(df, [DenseFeat("vec", 2)])


def test_dense_cells_of_another_size_nulls_and_dates_are_named_by_row():
    # Each was a message naming no row (numpy's "could not convert", "all input arrays must have
    # the same shape"), a raw TypeError, or, for dates, float32 nanoseconds off by minutes.
    cases = [
        (pd.Series([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.1, 0.1]]), 3,
         r"feature 'vec' needs 3 float\(s\) per row, but row 2 holds 2"),
        (pd.Series([[0.1, 0.2], [0.4, "x"]]), 2, r"feature 'vec' has dtype 'float32' and needs numbers, but row 1 holds 'x'"),
        (pd.Series(["1.5", "2", "x"], dtype=object), 1, r"needs numbers, but row 2 holds 'x'"),
        (pd.Series([True, None, False], dtype="boolean"), 1, r"needs numbers, but row 1 holds <NA>"),
        (pd.Series(pd.to_datetime(["2020-01-01", "2020-01-02"])), 1,
         r"feature 'vec' holds datetime64\[\w+\] values; give numbers, e.g. seconds since 1970: "
         r"df\['vec'\].astype\('datetime64\[s\]'\).astype\('int64'\)"),
    ]
    for values, dimension, message in cases:
        for dtype in ("float32", "int64") if "datetime" in message else ("float32",):
            with pytest.raises(ValueError, match=message):
                df_to_inputs(pd.DataFrame({"vec": values}), [DenseFeat("vec", dimension, dtype=dtype)])
    assert df_to_inputs(pd.DataFrame({"vec": pd.Series([True, False])}), [DenseFeat("vec", 1)])["vec"].tolist() == [1, 0]
    assert df_to_inputs(pd.DataFrame({"vec": [[1.0], [2.0]]}), [DenseFeat("vec", 1)])["vec"].tolist() == [1, 2]
