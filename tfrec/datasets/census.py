"""UCI census-income (KDD) -> the two-task benchmark of MMoE and PLE.

Reads `census-income.data` and `census-income.test`, or the `.gz` files UCI ships
(https://archive.ics.uci.edu/dataset/117/census+income+kdd, never downloaded here): no header,
42 comma-separated columns (40 attributes, the instance weight, the income label).

The recipe is MMoE's (Ma et al., KDD 2018, section 5.2), which PLE (Tang et al., RecSys 2020)
reuses: task `income` is income > 50K, task `never_married` is marital status == "Never
married"; the marital status is removed from the inputs. The training file trains; the test
file is split at random 1:1 into validation and test (`validation_share`). Inputs follow
DeepCTR's MMOE census example (and tfrec.data.adult): the 29 categorical columns are string
SparseFeats with a vocabulary of the training file's values (unseen test values go to the
out-of-vocabulary row; "?" becomes "unknown"), the other 10 numeric columns DenseFeats
standardised with the training file's mean and standard deviation (float32). The instance
weight is a survey sampling weight ("should not be used in the classifiers", census-income.names):
it is kept as the column `instance_weight` for weighted metrics, not as an input. Caution:
det_hh_fam_stat and det_hh_summ (household status) name "never married" children, so they
nearly give away the second task; the papers keep them, `drop_marital_proxies=True` drops them.
"""
import os

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from ..data import adult_feature_columns
from ._common import LoadedDataset, reading, require_file

__all__ = ["CENSUS_COLUMNS", "CENSUS_SPARSE", "CENSUS_DENSE", "CENSUS_TASKS", "load_census_income"]

URL = "https://archive.ics.uci.edu/dataset/117/census+income+kdd (census-income.data.gz, census-income.test.gz)"
# The 42 raw columns, named as DeepCTR's and keras-mmoe's census examples name them.
CENSUS_COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa",
    "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18", "country_father",
    "country_mother", "country_self", "citizenship", "own_or_self", "vet_question", "vet_benefits", "weeks_worked",
    "year", "income_50k",
]
CENSUS_SPARSE = [
    "class_worker", "det_ind_code", "det_occ_code", "education", "hs_college", "major_ind_code", "major_occ_code",
    "race", "hisp_origin", "sex", "union_member", "unemp_reason", "full_or_part_emp", "tax_filer_stat",
    "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ", "mig_chg_msa", "mig_chg_reg",
    "mig_move_reg", "mig_same", "mig_prev_sunbelt", "fam_under_18", "country_father", "country_mother",
    "country_self", "citizenship", "vet_question",
]
CENSUS_DENSE = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp",
                "own_or_self", "vet_benefits", "weeks_worked", "year"]
MARITAL_PROXIES = ["det_hh_fam_stat", "det_hh_summ"]
# Task name -> label column.
CENSUS_TASKS = {"income": "income", "never_married": "never_married"}


def _census_file(folder, name, what):
    """The path of `name` in `folder`, or of its gzipped copy `name`.gz (as UCI ships it)."""
    plain = os.path.join(folder, name)
    if not os.path.isfile(plain) and os.path.isfile(plain + ".gz"):
        return plain + ".gz"
    return require_file(plain, "UCI census-income", f"{what} {name} (or {name}.gz)", URL)


def _read(path):
    """The file's columns, named: text, but the numeric inputs and the instance weight as numbers."""
    with reading(path, "UCI census-income", f"{len(CENSUS_COLUMNS)} comma-separated columns", URL):
        raw = pd.read_csv(path, header=None, sep=",", skipinitialspace=True, dtype=str, keep_default_na=False,
                          skip_blank_lines=True)
        if raw.shape[1] != len(CENSUS_COLUMNS):
            raise ValueError(f"it has {raw.shape[1]} columns")
        raw.columns = CENSUS_COLUMNS
        for name in CENSUS_DENSE + ["instance_weight"]:
            raw[name] = pd.to_numeric(raw[name])
    return raw


def _frame(raw, sparse, dense, mean, std):
    df = pd.DataFrame(index=raw.index)
    for name in sparse:
        df[name] = raw[name].str.strip().replace({"?": "unknown", "": "unknown"})
    for name in dense:
        df[name] = ((raw[name].to_numpy(np.float64) - mean[name]) / std[name]).astype(np.float32)
    df["instance_weight"] = raw["instance_weight"].to_numpy(np.float32)
    # The files write "- 50000." and "50000+.".
    df["income"] = raw["income_50k"].str.strip().str.rstrip(".").eq("50000+").astype(np.int64)
    df["never_married"] = raw["marital_stat"].str.strip().eq("Never married").astype(np.int64)
    return df.reset_index(drop=True)


def load_census_income(path, validation_share=0.5, seed=0, drop_marital_proxies=False, embedding_dim=4):
    """MMoE / PLE's census-income tasks (see the module docstring).

    Args:
      path: the folder with census-income.data and census-income.test (or UCI's gzipped
        census-income.data.gz and census-income.test.gz).
      validation_share: share of the test file moved to the validation frame (MMoE: 0.5; 0 keeps
        the whole test file as test).
      seed: seed of that split.
      drop_marital_proxies: drop det_hh_fam_stat and det_hh_summ from the inputs.

    Returns:
      LoadedDataset: train / validation / test with the sparse (str) and dense (float32) input
      columns, instance_weight (float32) and the int64 labels income and never_married;
      feature_columns from `tfrec.data.adult_feature_columns` on the training frame;
      label_columns CENSUS_TASKS. `MMOE(ds.feature_columns, task_types=("binary", "binary"),
      task_names=tuple(ds.label_columns))`, likewise PLE.
    """
    if not 0.0 <= validation_share < 1.0:
        raise ValueError(f"validation_share must lie in [0, 1), got {validation_share!r}")
    train_path = _census_file(path, "census-income.data", "the training file")
    test_path = _census_file(path, "census-income.test", "the test file")
    sparse = [c for c in CENSUS_SPARSE if not (drop_marital_proxies and c in MARITAL_PROXIES)]
    dense = list(CENSUS_DENSE)
    raw_train, raw_test = _read(train_path), _read(test_path)
    values = {name: raw_train[name].to_numpy(np.float64) for name in dense}
    mean = {name: v.mean() for name, v in values.items()}
    std = {name: (v.std() if v.std() > 0 else 1.0) for name, v in values.items()}
    train = _frame(raw_train, sparse, dense, mean, std)
    test = _frame(raw_test, sparse, dense, mean, std)
    in_validation = np.zeros(len(test), dtype=bool)
    in_validation[np.random.default_rng(seed).permutation(len(test))[:int(round(validation_share * len(test)))]] = True
    validation = test[in_validation].reset_index(drop=True) if validation_share > 0 else None
    test = test[~in_validation].reset_index(drop=True)
    columns = adult_feature_columns(train, embedding_dim=embedding_dim, sparse_names=sparse, dense_names=dense)
    recipe = ("MMoE (Ma et al., KDD 2018; PLE reuses it) on UCI census-income: tasks income > 50K and never "
              "married, marital status removed from the inputs, the test file split "
              f"{1 - validation_share:g}:{validation_share:g} into test and validation, vocabularies and "
              "standardisation from the training file")
    stats = {"train": len(train), "validation": 0 if validation is None else len(validation), "test": len(test),
             "train_income_rate": float(train["income"].mean()),
             "train_never_married_rate": float(train["never_married"].mean())}
    return LoadedDataset("census-income/mmoe", train, test, columns, dict(CENSUS_TASKS), validation=validation,
                         recipe=recipe, stats=stats)
