"""UCI Adult (Census Income) as a real two-task benchmark, after the MMoE paper's census tasks.

Task `income`: income > 50K. Task `never_married`: marital-status == Never-married.
marital-status and relationship are dropped from the inputs (relationship leaks marital status).
The data is not shipped: download `adult.data` from the UCI repository (ADULT_URL) and pass its
path, or set the environment variable UCI_ADULT_PATH.
Source: Becker & Kohavi (1996), UCI Machine Learning Repository, DOI 10.24432/C5XW20, CC BY 4.0.
"""
import os

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import DenseFeat, SparseFeat

__all__ = ["ADULT_TASKS", "adult_feature_columns", "load_adult"]

ADULT_PATH_VARIABLE = "UCI_ADULT_PATH"
ADULT_URL = "https://archive.ics.uci.edu/dataset/2/adult"

# The raw file's columns, with '-' written '_' so they are valid feature / op names.
_RAW_COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week",
    "native_country", "income_bracket",
]
_SPARSE = ["workclass", "education", "occupation", "race", "sex", "native_country"]
_DENSE = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]

# Task name -> label column of the frame `load_adult` returns.
ADULT_TASKS = {"income": "income", "never_married": "never_married"}


def load_adult(path=None):
    """Reads adult.data into model-ready columns and the two task labels.

    Categorical columns become str columns ('?' -> "unknown") for SparseFeat(vocabulary=...);
    numeric columns are standardised with this frame's mean and std (float32).

    Args:
      path: the UCI `adult.data` (or `adult.test`) file (no header, ", "-separated; lines
        starting with "|" are comments); None reads the file the environment variable
        UCI_ADULT_PATH names.

    Returns:
      (df, sparse_names, dense_names): df has the sparse and dense columns plus int64 labels
      `income` (1 if >50K) and `never_married` (1 if marital-status is Never-married);
      32,561 rows for the original file.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file does not have Adult's 15 columns.
    """
    path = path or os.environ.get(ADULT_PATH_VARIABLE)
    if not path or not os.path.isfile(path):
        where = f"at {os.path.abspath(path)!r}" if path else f"(no path given, {ADULT_PATH_VARIABLE} unset)"
        raise FileNotFoundError(
            f"UCI Adult data not found {where}: download the original adult.data from {ADULT_URL} "
            f"and pass path= or set {ADULT_PATH_VARIABLE}")
    # UCI's files mark comment lines with "|": adult.test opens with "|1x3 Cross validator".
    raw = pd.read_csv(path, header=None, sep=",", skipinitialspace=True, dtype=str,
                      keep_default_na=False, skip_blank_lines=True, comment="|")
    if raw.shape[1] != len(_RAW_COLUMNS):
        raise ValueError(f"{path!r} has {raw.shape[1]} columns, Adult has {len(_RAW_COLUMNS)}: {_RAW_COLUMNS}")
    raw.columns = _RAW_COLUMNS

    df = pd.DataFrame(index=raw.index)
    for name in _SPARSE:
        df[name] = raw[name].str.strip().replace({"?": "unknown", "": "unknown"})
    for name in _DENSE:
        values = pd.to_numeric(raw[name]).to_numpy(np.float64)
        std = values.std()
        df[name] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    # The training file writes ">50K"; the test file ">50K." (handled alike).
    df["income"] = raw["income_bracket"].str.strip().str.rstrip(".").eq(">50K").astype(np.int64)
    df["never_married"] = raw["marital_status"].str.strip().eq("Never-married").astype(np.int64)
    return df, list(_SPARSE), list(_DENSE)


def adult_feature_columns(df, embedding_dim=4, sparse_names=None, dense_names=None):
    """SparseFeat (string, vocabulary = the sorted values seen in df) + DenseFeat columns for
    `load_adult`'s frame; by default every categorical and numeric input column."""
    sparse_names = _SPARSE if sparse_names is None else sparse_names
    dense_names = _DENSE if dense_names is None else dense_names
    sparse = [SparseFeat(name, embedding_dim=embedding_dim, dtype="string",
                         vocabulary=sorted(df[name].unique().tolist())) for name in sparse_names]
    return sparse + [DenseFeat(name) for name in dense_names]
