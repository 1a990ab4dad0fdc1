"""DeepCTR example scripts' shapes of code run unchanged on pandas data (issue 10, items 2-4).

The DeepCTR examples (run_classification_criteo.py, run_din.py, run_mtl.py) size each column
from the data: `SparseFeat(feat, data[feat].max() + 1, 4)` after a LabelEncoder, i.e. with numpy
integers (np.int8 for a small column), and feed `{name: data[name]}` -- pandas Series -- to fit.
Here the LabelEncoder is `pd.factorize` (same 0..n-1 codes, no sklearn). DeepMatch's examples
(run_youtubednn.py, run_sdm.py) do the same for the two-tower models, with histories padded by
`pad_sequences` into numpy arrays. Every model of the zoo builds and trains on such inputs.
"""
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat, get_feature_names
from tfrec.models import CLSR, DIN, ESMM, MIND, MMOE, PLE, SDM, SIM, SharedBottom, YoutubeDNN


def criteo_like_frame(rows=64, seed=0):
    rng = np.random.default_rng(seed)
    data = pd.DataFrame({
        "C1": rng.choice(["a", "b", "c", "d"], rows),
        "C2": rng.choice(["x", "y", "z"], rows),
        "I1": rng.normal(size=rows),
        "label": rng.integers(0, 2, rows),
        "income": rng.integers(0, 2, rows),
    })
    for feat in ("C1", "C2"):  # LabelEncoder: codes 0..n-1, as the smallest int numpy gives
        data[feat] = pd.factorize(data[feat])[0].astype(np.int8)
    return data


@pytest.mark.parametrize("size", [np.int8(3), np.int16(3), np.int32(3), np.int64(3), np.uint8(3)])
def test_numpy_integer_sizes_are_accepted(size):
    column = SparseFeat("C1", size, np.int64(4))
    assert (column.vocabulary_size, column.embedding_dim) == (3, 4)
    assert type(column.vocabulary_size) is int and type(column.embedding_dim) is int
    assert DenseFeat("I1", np.int64(2)).dimension == 2
    assert VarLenSparseFeat(SparseFeat("hist", size), maxlen=np.int32(5)).maxlen == 5


@pytest.mark.parametrize("make, message", [
    (lambda: SparseFeat("C1", True), r"SparseFeat 'C1': vocabulary_size must be an int >= 1, got True \(bool\)"),
    (lambda: SparseFeat("C1", np.bool_(True)), r"SparseFeat 'C1': vocabulary_size must be an int .* \(bool"),
    (lambda: SparseFeat("C1", 3.0), r"SparseFeat 'C1': vocabulary_size must be an int >= 1, got 3.0 \(float\)"),
    (lambda: SparseFeat("C1", np.float64(3)), r"SparseFeat 'C1': vocabulary_size .* \(float64\)"),
    (lambda: SparseFeat("C1", np.int8(0)), r"SparseFeat 'C1': vocabulary_size must be an int >= 1, got np.int8\(0\)"),
    (lambda: SparseFeat("C1", -2), r"SparseFeat 'C1': vocabulary_size must be an int >= 1, got -2"),
    (lambda: SparseFeat("C1", 5, np.float32(4)), r"SparseFeat 'C1': embedding_dim must be an int >= 1 or 'auto'"),
    (lambda: SparseFeat("C1", 5, 0), r"SparseFeat 'C1': embedding_dim must be an int >= 1 or 'auto', got 0"),
    (lambda: DenseFeat("I1", 1.5), r"DenseFeat 'I1': dimension must be an int >= 1, got 1.5"),
    (lambda: DenseFeat("I1", False), r"DenseFeat 'I1': dimension must be an int >= 1, got False"),
    (lambda: SparseFeat("C1"), r"SparseFeat 'C1': vocabulary_size is needed"),
])
def test_bools_floats_and_non_positive_sizes_are_refused_naming_the_column(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("model_name", ["MMOE", "PLE", "MIND", "CLSR"])
def test_numpy_integer_counts_of_a_model_are_accepted(encoded, model_name):
    """Counts taken from numpy (a sweep over np.arange, a config read with numpy) build the model,
    as in DeepCTR/DeepMatch: MMOE/PLE refused them, MIND failed in Keras' RepeatVector ("Expected
    an integer value for `n`") and CLSR in its short-term proxy."""
    sizes = encoded["sizes"]
    columns = [SparseFeat(feat, sizes[feat], DIM) for feat in ("user_id", "item_id", "cate_id")]
    if model_name == "MIND":
        history = VarLenSparseFeat(SparseFeat("hist_item_id", sizes["item_id"], DIM, embedding_name="item_id"),
                                   maxlen=MAXLEN, length_name="hist_len")
        model = MIND(columns[:1] + [history], columns[1:2], k_max=np.int64(2), user_dnn_hidden_units=(DIM,))
        assert model.user_tower.output_shape[0] == (None, 2, DIM)
        return
    two = np.int64(2)
    model = {"MMOE": lambda: MMOE(columns, num_experts=two, expert_dnn_hidden_units=(4,)),
             "PLE": lambda: PLE(columns, shared_expert_num=two, specific_expert_num=two, num_levels=two,
                                expert_dnn_hidden_units=(4,)),
             "CLSR": lambda: ranking_setup(encoded, "CLSR", proxy_recent=two)[0]}[model_name]()
    config = model.get_config()
    assert "np.int" not in repr(config)  # a numpy int would not go into a saved model's JSON as an int


def test_criteo_script_shape_trains_din_free_columns_on_pandas():
    # run_classification_criteo.py: sparse features sized by max() + 1 (numpy ints), dense by 1.
    data = criteo_like_frame()
    sparse_features, dense_features = ["C1", "C2"], ["I1"]
    fixlen_feature_columns = [SparseFeat(feat, vocabulary_size=data[feat].max() + 1, embedding_dim=4)
                              for feat in sparse_features] + [DenseFeat(feat, 1) for feat in dense_features]
    assert isinstance(data["C1"].max() + 1, np.integer)
    feature_names = get_feature_names(fixlen_feature_columns)
    # DeepCTR's run_din builds the history from the same encoded ids; here item C1 has a history.
    history = VarLenSparseFeat(SparseFeat("hist_C1", data["C1"].max() + 1, embedding_dim=4, embedding_name="C1"),
                               maxlen=np.int64(3))
    data["hist_C1"] = [list(row) for row in np.random.default_rng(1).integers(0, data["C1"].nunique(), (len(data), 3))]
    columns = fixlen_feature_columns + [history]
    train_model_input = {name: data[name] for name in feature_names}  # pandas Series, as DeepCTR passes them
    train_model_input["hist_C1"] = np.array(data["hist_C1"].tolist())
    model = DIN(columns, ["C1"], dnn_hidden_units=(8,), att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy", metrics=["binary_crossentropy"])
    history_ = model.fit(train_model_input, data["label"].values, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history_.history["loss"][0])
    pred = model.predict(train_model_input, batch_size=64, verbose=0)
    assert pred.shape == (len(data), 1) and np.all((pred > 0) & (pred < 1))


def test_mtl_script_shape_trains_mmoe_on_pandas():
    # run_mtl.py: SparseFeat(feat, data[feat].max() + 1, embedding_dim=4), DenseFeat(feat, 1),
    # two binary tasks, losses as a list, labels as a list of pandas .values.
    data = criteo_like_frame(seed=2)
    columns = [SparseFeat(feat, data[feat].max() + 1, embedding_dim=np.int64(4)) for feat in ["C1", "C2"]] + \
        [DenseFeat("I1", np.int32(1))]
    names = get_feature_names(columns)
    train_model_input = {name: data[name] for name in names}
    model = MMOE(columns, num_experts=2, expert_dnn_hidden_units=(8,), tower_dnn_hidden_units=(),
                 task_types=["binary", "binary"], task_names=["label_income", "label_marital"])
    model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"], metrics=["binary_crossentropy"])
    history = model.fit(train_model_input, [data["label"].values, data["income"].values], batch_size=32, epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"][0])
    predictions = model.predict(train_model_input, batch_size=64, verbose=0)
    assert [p.shape for p in predictions] == [(len(data), 1)] * 2


def test_one_value_features_may_come_as_rows_or_columns_from_call_to_call():
    # data[feat].values is (rows,), data[[feat]].values (rows, 1): both are what a (batch, 1) Input
    # takes, and a predict after one with the other failed ("expected axis -1 of input shape to
    # have value 8, but received input with shape (None, 4)").
    columns = [SparseFeat("C1", 5, 4), SparseFeat("C2", 5, 4), DenseFeat("I1", 1)]
    model = MMOE(columns, num_experts=2, expert_dnn_hidden_units=(4,), tower_dnn_hidden_units=())
    model.compile("adam", "binary_crossentropy")
    x = {"C1": np.array([1, 2, 3]), "C2": np.array([3, 2, 1]), "I1": np.array([0.5, 0.1, 0.2])}
    expected = model.predict(x, verbose=0)
    for name in x:
        as_column = model.predict({**x, name: x[name][:, None]}, verbose=0)
        np.testing.assert_allclose(np.concatenate(as_column), np.concatenate(expected), err_msg=name)
    model.fit({**x, "C1": x["C1"][:, None]}, [np.array([1, 0, 1])] * 2, verbose=0)
    model.evaluate(x, [np.array([1, 0, 1])] * 2, verbose=0)


def test_sequence_weights_in_deepctrs_shape_weigh_the_sequence():
    # run_multivalue_movielens.py: model_input["genres_weight"] = np.random.randn(rows, max_len, 1),
    # DeepCTR's Input shape of a weight_name; predict failed ("unsupported operand type(s) for -:
    # 'NoneType' and 'int'").
    columns = [SparseFeat("user", 5, 4),
               VarLenSparseFeat(SparseFeat("genres", 6, 4), maxlen=3, combiner="mean", weight_name="genres_weight")]
    model = MMOE(columns, num_experts=2, expert_dnn_hidden_units=(4,), tower_dnn_hidden_units=())
    model.compile("adam", "binary_crossentropy")
    weights = np.array([[0.5, 2.0, 0.0], [1.0, 0.0, 0.0]], dtype="float32")
    x = {"user": np.array([1, 2]), "genres": np.array([[1, 2, 0], [3, 0, 0]]), "genres_weight": weights}
    expected = model.predict(x, verbose=0)
    deepctr_shape = {**x, "genres_weight": weights[..., None]}
    np.testing.assert_allclose(np.concatenate(model.predict(deepctr_shape, verbose=0)), np.concatenate(expected))
    model.fit(deepctr_shape, [np.array([1, 0])] * 2, verbose=0)


# --- Every model on LabelEncoder ids, numpy sizes and pandas columns -----------------------------

ROWS, MAXLEN, DIM = 32, 4, 4


def pad_sequences(cells, maxlen):
    """keras' pad_sequences(..., padding="post", truncating="pre"), as DeepCTR's run_din uses."""
    out = np.zeros((len(cells), maxlen), dtype=np.int64)
    for row, cell in enumerate(cells):
        kept = list(cell)[-maxlen:]
        out[row, :len(kept)] = kept
    return out


@pytest.fixture(scope="module")
def encoded():
    return label_encoded_impressions()


def label_encoded_impressions():
    """Raw impressions with string ids and histories, label-encoded the DeepCTR way.

    user/gender: codes 0..n-1 (pd.factorize); item/cate: codes + 1 shared by the target and its
    history, so 0 stays the padding the histories are padded with (DeepCTR's run_din keeps 0 for
    padding). Sizes are `data[feat].max() + 1`: numpy integers.
    """
    rng = np.random.default_rng(0)
    items = np.array([f"item{i}" for i in range(12)])
    item_cate = {item: f"cate{i % 3}" for i, item in enumerate(items)}
    data = pd.DataFrame({
        "user_id": rng.choice([f"u{i}" for i in range(6)], ROWS),
        "gender": rng.choice(["F", "M"], ROWS),
        "item_id": rng.choice(items, ROWS),
        "price": rng.random(ROWS).astype(np.float64),
        "label": rng.integers(0, 2, ROWS),
        "conversion": 0,
    })
    data["conversion"] = data["label"] * rng.integers(0, 2, ROWS)
    data["cate_id"] = data["item_id"].map(item_cate)
    histories = [list(rng.choice(items, rng.integers(1, 7))) for _ in range(ROWS)]
    for feat in ("user_id", "gender"):
        data[feat] = pd.factorize(data[feat])[0]
    item_codes = {item: code + 1 for code, item in enumerate(pd.factorize(items)[1])}
    cate_codes = {cate: code + 1 for code, cate in enumerate(pd.factorize(pd.Series(list(item_cate.values())))[1])}
    data["item_id"] = data["item_id"].map(item_codes)
    data["cate_id"] = data["cate_id"].map(cate_codes)
    hist_item = [[item_codes[i] for i in h] for h in histories]
    hist_cate = [[cate_codes[item_cate[i]] for i in h] for h in histories]
    sizes = {feat: data[feat].max() + 1 for feat in ("user_id", "gender", "item_id", "cate_id")}
    sizes["item_id"] = max(sizes["item_id"], max(map(max, hist_item)) + 1)
    sizes["cate_id"] = max(sizes["cate_id"], max(map(max, hist_cate)) + 1)
    assert all(isinstance(size, np.integer) for size in sizes.values())
    lengths = np.array([min(len(h), MAXLEN) for h in histories])
    return dict(data=data, sizes=sizes, hist_item=hist_item, hist_cate=hist_cate, lengths=lengths)


def ranking_setup(encoded, model_name, **kwargs):
    """DIN / SIM / CLSR: run_din.py's columns and inputs (histories padded into numpy arrays)."""
    data, sizes = encoded["data"], encoded["sizes"]
    columns = [SparseFeat(feat, sizes[feat], embedding_dim=np.int64(DIM)) for feat in ("user_id", "gender", "item_id",
                                                                                       "cate_id")]
    columns += [DenseFeat("price", np.int32(1))]
    columns += [VarLenSparseFeat(SparseFeat("hist_" + feat, sizes[feat], embedding_dim=DIM, embedding_name=feat),
                                 maxlen=np.int64(MAXLEN), length_name="seq_length") for feat in ("item_id", "cate_id")]
    x = {name: data[name] for name in ("user_id", "gender", "item_id", "cate_id", "price")}
    x["hist_item_id"] = pad_sequences(encoded["hist_item"], MAXLEN)
    x["hist_cate_id"] = pad_sequences(encoded["hist_cate"], MAXLEN)
    x["seq_length"] = encoded["lengths"]
    small = dict(dnn_hidden_units=(4,), att_hidden_size=(4,))
    history = ["item_id", "cate_id"]
    model = {"DIN": lambda: DIN(columns, history, **small),
             "SIM": lambda: SIM(columns, history, search="hard", search_feature="cate_id", topk=2, short_maxlen=2,
                                num_heads=1, **small),
             "CLSR": lambda: CLSR(columns, history, user_feature="user_id", **{"proxy_recent": 1, **kwargs},
                                  proxy_min_length=1, **small)}[model_name]()
    model.compile("adam", "binary_crossentropy")
    return model, x, data["label"].values


def multitask_setup(encoded, model_name):
    """MMOE / PLE / ESMM / SharedBottom: run_mtl.py's columns, labels as a list of `.values`."""
    data, sizes = encoded["data"], encoded["sizes"]
    columns = [SparseFeat(feat, vocabulary_size=sizes[feat], embedding_dim=4) for feat in ("user_id", "gender",
                                                                                           "item_id", "cate_id")]
    columns += [DenseFeat("price", 1)]
    x = {name: data[name] for name in get_feature_names(columns)}
    tasks = dict(task_types=["binary", "binary"], task_names=["ctr", "ctcvr"])
    model = {"MMOE": lambda: MMOE(columns, num_experts=2, expert_dnn_hidden_units=(4,), tower_dnn_hidden_units=(),
                                  **tasks),
             "PLE": lambda: PLE(columns, expert_dnn_hidden_units=(4,), tower_dnn_hidden_units=(), num_levels=1,
                                **tasks),
             "ESMM": lambda: ESMM(columns, tower_dnn_hidden_units=(4,), **tasks),
             "SharedBottom": lambda: SharedBottom(columns, bottom_dnn_hidden_units=(4,), tower_dnn_hidden_units=(),
                                                  **tasks)}[model_name]()
    model.compile("adam", loss=["binary_crossentropy", "binary_crossentropy"])
    return model, x, [data["label"].values, data["conversion"].values]


def retrieval_setup(encoded, model_name):
    """YoutubeDNN / MIND / SDM: run_youtubednn.py's / run_sdm.py's columns; labels are unused zeros."""
    data, sizes = encoded["data"], encoded["sizes"]
    user_columns = [SparseFeat("user_id", sizes["user_id"], DIM), SparseFeat("gender", sizes["gender"], DIM)]
    item_columns = [SparseFeat("item_id", sizes["item_id"], DIM)]
    x = {"user_id": data["user_id"], "gender": data["gender"], "item_id": data["item_id"]}
    if model_name == "SDM":
        short, prefer = [h[-2:] for h in encoded["hist_item"]], [h[:-2] for h in encoded["hist_item"]]
        for prefix, cells, maxlen in (("short_", short, 2), ("prefer_", prefer, MAXLEN)):
            user_columns.append(VarLenSparseFeat(SparseFeat(prefix + "item_id", sizes["item_id"], DIM,
                                                            embedding_name="item_id"), maxlen=np.int64(maxlen),
                                                 combiner="mean", length_name=prefix + "sess_length"))
            x[prefix + "item_id"] = pad_sequences(cells, maxlen)
            x[prefix + "sess_length"] = np.array([min(len(c), maxlen) for c in cells])
        model = SDM(user_columns, item_columns, ["item_id"], units=DIM, rnn_layers=1, num_head=1)
    else:
        user_columns.append(VarLenSparseFeat(SparseFeat("hist_item_id", sizes["item_id"], DIM,
                                                        embedding_name="item_id"), maxlen=MAXLEN, combiner="mean",
                                             length_name="hist_len"))
        x["hist_item_id"] = pad_sequences(encoded["hist_item"], MAXLEN)
        x["hist_len"] = encoded["lengths"]
        model = YoutubeDNN(user_columns, item_columns, user_dnn_hidden_units=(DIM,)) if model_name == "YoutubeDNN" \
            else MIND(user_columns, item_columns, k_max=2, user_dnn_hidden_units=(DIM,))
    model.compile(tf.keras.optimizers.Adam(1e-3))
    return model, x, np.zeros(len(data))


SETUPS = {"DIN": ranking_setup, "SIM": ranking_setup, "CLSR": ranking_setup, "MMOE": multitask_setup,
          "PLE": multitask_setup, "ESMM": multitask_setup, "SharedBottom": multitask_setup,
          "YoutubeDNN": retrieval_setup, "MIND": retrieval_setup, "SDM": retrieval_setup}


@pytest.mark.parametrize("model_name", list(SETUPS))
def test_every_model_builds_and_trains_on_label_encoded_pandas_inputs(encoded, model_name):
    tf.keras.utils.set_random_seed(0)
    model, x, y = SETUPS[model_name](encoded, model_name)
    # Every layer has a name of its own: no TF-op glue and no Keras layer left to Keras' default
    # name ("concatenate_3", "tf.math.not_equal_1"), which changes with what was built before.
    unnamed = [layer.name for layer in model.layers if "OpLambda" in type(layer).__name__ or (
        type(layer).__module__.startswith("tf_keras.") and
        re.sub(r"_\d+$", "", layer.name) == re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower())]
    assert not unnamed, unnamed
    assert any(isinstance(v, pd.Series) for v in x.values())
    history = model.fit(x, y, batch_size=ROWS, epochs=1, verbose=0)  # one step
    assert np.isfinite(history.history["loss"][0])
    if SETUPS[model_name] is retrieval_setup:
        user = model.user_tower.predict({t.name: x[t.name] for t in model.user_input}, verbose=0)
        vectors = user[0] if isinstance(user, list) else user
        assert vectors.shape[0] == ROWS and vectors.shape[-1] == DIM and np.all(np.isfinite(vectors))
    else:
        predictions = model.predict(x, batch_size=ROWS, verbose=0)
        predictions = predictions if isinstance(predictions, list) else [predictions]
        for p in predictions:
            assert p.shape == (ROWS, 1) and np.all((p > 0) & (p < 1))
