"""DeepCTR example scripts' shapes of code run unchanged on pandas data (issue 10, items 2-4).

The DeepCTR examples (run_classification_criteo.py, run_din.py, run_mtl.py) size each column
from the data: `SparseFeat(feat, data[feat].max() + 1, 4)` after a LabelEncoder, i.e. with numpy
integers (np.int8 for a small column), and feed `{name: data[name]}` -- pandas Series -- to fit.
Here the LabelEncoder is `pd.factorize` (same 0..n-1 codes, no sklearn).
"""
import numpy as np
import pandas as pd
import pytest

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat, get_feature_names
from tfrec.models import DIN, MMOE


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
