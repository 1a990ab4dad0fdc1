"""Held-out evaluation of a ranking model next to the planted-truth oracle."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np

from . import metrics
from .data import df_to_inputs


def predict_frame(model, df, feature_columns, batch_size=4096, output=None):
    """Model scores for the rows of `df`, as a flat float64 array (one output, or `output`)."""
    predictions = model.predict(df_to_inputs(df, feature_columns), batch_size=batch_size, verbose=0)
    if isinstance(predictions, dict):
        predictions = predictions[output]
    elif isinstance(predictions, list):
        predictions = predictions[model.output_names.index(output)]
    return np.asarray(predictions, dtype=np.float64).reshape(-1)


def binary_report(labels, scores, groups=None):
    """AUC and logloss of `scores` against binary `labels`, and with `groups` GAUC (NaN if no group has both labels)."""
    report = {"auc": metrics.auc(labels, scores), "logloss": metrics.logloss(labels, scores)}
    if groups is not None:
        try:
            report["gauc"] = metrics.gauc(labels, scores, groups)
        except ValueError:  # the scores passed auc() above, so no group holds both labels
            report["gauc"] = float("nan")
    return report


def evaluate_binary(model, df, feature_columns, label_col, truth_col=None, group_col=None, output=None,
                    batch_size=4096):
    """AUC, GAUC (by `group_col`; NaN if no group has both labels) and logloss of `model` on `df`, plus the oracle's AUC.

    `truth_col` holds the generator's true probability; rows where it is NaN (sampled negatives)
    are left out of the oracle figure and of the model's `auc_vs_oracle_rows`, so the ratio
    model/oracle compares like with like.
    """
    scores = predict_frame(model, df, feature_columns, batch_size, output)
    labels = df[label_col].to_numpy(dtype=np.float64)
    groups = None if group_col is None else df[group_col].to_numpy()
    report = {"rows": len(df), **binary_report(labels, scores, groups)}
    if truth_col is not None:
        truth = df[truth_col].to_numpy(dtype=np.float64)
        known = ~np.isnan(truth)
        report["oracle_auc"] = metrics.auc(labels[known], truth[known])
        report["model_auc_on_oracle_rows"] = metrics.auc(labels[known], scores[known])
        report["ratio_to_oracle"] = report["model_auc_on_oracle_rows"] / report["oracle_auc"]
        if group_col is not None and known.all() and not np.isnan(report["gauc"]):
            report["oracle_gauc"] = metrics.gauc(labels, truth, groups)
    return report

