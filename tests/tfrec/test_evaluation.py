"""tfrec.evaluation's edge cases."""
import numpy as np
import pytest

from tfrec import evaluation


def test_binary_report_gauc_is_nan_only_when_no_group_has_both_labels():
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.8])
    assert np.isnan(evaluation.binary_report(labels, scores, np.arange(4))["gauc"])
    assert evaluation.binary_report(labels, scores, np.array(["a", "a", "b", "b"]))["gauc"] == pytest.approx(0.5)
    # A mistake in the groups was reported as "no GAUC" (NaN), as if no user had both labels.
    with pytest.raises(ValueError, match="groups must have the same length"):
        evaluation.binary_report(labels, scores, np.array([1, 2]))
    with pytest.raises(ValueError, match="missing"):
        evaluation.binary_report(labels, scores, np.array([np.nan, np.nan, 1.0, 1.0]))
