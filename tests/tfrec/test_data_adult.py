import os

import numpy as np
import pytest

from feature_columns import DenseFeat, SparseFeat
from tfrec.data import adult_feature_columns, df_to_inputs, load_adult

ADULT_PATH = os.environ.get("UCI_ADULT_PATH") or os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "uci-adult", "adult.data")

needs_adult = pytest.mark.skipif(not os.path.isfile(ADULT_PATH), reason="UCI Adult data not present")


@pytest.fixture(scope="module")
def adult():
    return load_adult(ADULT_PATH)


@needs_adult
def test_load_adult_shapes_and_labels(adult):
    df, sparse_names, dense_names = adult
    assert len(df) == 32561
    assert sparse_names == ["workclass", "education", "occupation", "race", "sex", "native_country"]
    assert dense_names == ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
    assert list(df.columns) == sparse_names + dense_names + ["income", "never_married"]
    # Known rates of the original training file: 7,841 incomes >50K, 10,683 never married.
    assert df["income"].sum() == 7841 and df["never_married"].sum() == 10683
    # The first row: 39, State-gov, ..., Never-married, ..., <=50K.
    assert df.loc[0, "workclass"] == "State-gov" and df.loc[0, "never_married"] == 1 and df.loc[0, "income"] == 0


@needs_adult
def test_load_adult_cleans_inputs(adult):
    df, sparse_names, dense_names = adult
    assert "marital_status" not in df.columns and "relationship" not in df.columns
    for name in sparse_names:
        values = set(df[name])
        assert "?" not in values and "" not in values and not any(v != v.strip() for v in values)
    assert "unknown" in set(df["workclass"]) and "unknown" in set(df["occupation"])
    for name in dense_names:
        assert df[name].dtype == np.float32
        assert abs(df[name].mean()) < 1e-3 and abs(df[name].std() - 1) < 1e-3


@needs_adult
def test_adult_feature_columns_feed_df_to_inputs(adult):
    df, sparse_names, dense_names = adult
    columns = adult_feature_columns(df, embedding_dim=3)
    assert [c.name for c in columns] == sparse_names + dense_names
    sex = columns[sparse_names.index("sex")]
    assert isinstance(sex, SparseFeat) and sex.dtype == "string" and list(sex.vocabulary) == ["Female", "Male"]
    assert sex.embedding_dim == 3 and all(isinstance(c, DenseFeat) for c in columns[len(sparse_names):])
    inputs = df_to_inputs(df.head(4), columns)
    assert inputs["sex"].tolist() == ["Male", "Male", "Male", "Male"]
    assert inputs["age"].shape == (4,)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="UCI Adult data not found.*nowhere.data"):
        load_adult(str(tmp_path / "nowhere.data"))


def test_adult_test_file_with_its_comment_line_reads_like_adult_data(tmp_path):
    """adult.test opens with UCI's comment line "|1x3 Cross validator" and writes its labels
    ">50K." / "<=50K."; it reads as adult.data does."""
    rows = ["25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, "
            "United-States, <=50K.",
            "38, ?, 89814, HS-grad, 9, Married-civ-spouse, Farming-fishing, Husband, White, Male, 0, 0, 50, "
            "United-States, >50K."]
    path = tmp_path / "adult.test"
    path.write_text("|1x3 Cross validator\n" + "\n".join(rows) + "\n\n")
    df, _, _ = load_adult(str(path))
    assert len(df) == 2
    assert df["income"].tolist() == [0, 1] and df["never_married"].tolist() == [1, 0]
    assert df["workclass"].tolist() == ["Private", "unknown"]
