"""tfrec.evaluation's edge cases, on a tiny untrained DIN where a model is needed (its scores are
not the point): empty frames, missing columns, which GAUC refusals `binary_report` turns into NaN,
and the arguments `RecallValidation` checks before the first epoch rather than after it."""
import numpy as np
import pytest

from tfrec import evaluation


@pytest.fixture(scope="module")
def tiny_din():
    from tfrec.recipes import build_din, planted_din_data

    _, _, test_df, columns = planted_din_data(users=12, items=20, events_per_user=8, maxlen=3, embedding_dim=4)
    return build_din(columns), test_df, columns


def test_predict_outputs_of_no_rows_are_empty_arrays(tiny_din):
    """Keras refuses to predict no rows ('Expected input data to be non-empty')."""
    model, test_df, columns = tiny_din
    outputs = evaluation.predict_outputs(model, test_df.iloc[:0], columns)
    assert list(outputs) == list(model.output_names)
    assert outputs["prediction"].shape == (0,) and outputs["prediction"].dtype == np.float64
    assert evaluation.predict_frame(model, test_df.iloc[:0], columns).shape == (0,)


def test_evaluate_binary_names_what_is_wrong_with_the_frame(tiny_din):
    model, test_df, columns = tiny_din
    report = evaluation.evaluate_binary(model, test_df, columns, "click", truth_col="p_click", group_col="user_id")
    assert report["rows"] == len(test_df) and 0 <= report["auc"] <= 1 and "model_auc_on_oracle_rows" in report
    with pytest.raises(ValueError, match="no rows to evaluate"):
        evaluation.evaluate_binary(model, test_df.iloc[:0], columns, "click")
    for argument, name in (("label_col", "clicked"), ("truth_col", "p_true"), ("group_col", "uid")):
        kwargs = {"label_col": "click", argument: name}
        with pytest.raises(KeyError, match=f"{argument} '{name}' is not a column of the DataFrame; its columns are"):
            evaluation.evaluate_binary(model, test_df, columns, **kwargs)
    with pytest.raises(ValueError, match="output 'ctr' is not an output of .*; its outputs are \\['prediction'\\]"):
        evaluation.evaluate_binary(model, test_df, columns, "click", output="ctr")
    # No row of known truth: the error says it is the oracle's figure, not the model's, that is missing.
    with pytest.raises(ValueError, match="truth_col 'p_click': no oracle AUC on the 0 row"):
        evaluation.evaluate_binary(model, test_df.assign(p_click=np.nan), columns, "click", truth_col="p_click")


def test_binary_report_gauc_is_nan_only_when_no_group_has_both_labels():
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.8])
    assert np.isnan(evaluation.binary_report(labels, scores, np.arange(4))["gauc"])
    assert evaluation.binary_report(labels, scores, np.array(["a", "a", "b", "b"]))["gauc"] == pytest.approx(0.5)
    # A mistake in the groups was reported as "no GAUC" (NaN), as if no user had both labels.
    with pytest.raises(ValueError, match="groups must have the same length"):
        evaluation.binary_report(labels, scores, np.array([1, 2]))
    with pytest.raises(ValueError, match="missing"):
        evaluation.binary_report(labels, scores, np.array([np.nan, np.nan, 1.0, 1.0]))


def test_recall_validation_checks_its_arguments_before_training():
    """k above the candidates failed at the end of the first epoch; no samples divided by zero there."""
    users = {"user_id": np.arange(3), "hist_item_id": np.zeros((3, 4), np.int64)}
    items, ids = {"item_id": np.arange(5)}, np.arange(5)
    evaluation.RecallValidation(users, items, ids, np.array([1, 2, 3]), k=5)
    with pytest.raises(ValueError, match="k=6 is more than the 5 candidates"):
        evaluation.RecallValidation(users, items, ids, np.array([1, 2, 3]), k=6)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        evaluation.RecallValidation(users, items, ids, np.array([1, 2, 3]), k=2.5)
    with pytest.raises(ValueError, match="truth holds no samples"):
        evaluation.RecallValidation({"user_id": np.arange(0)}, items, ids, np.array([]), k=2)
    with pytest.raises(ValueError, match=r"user_inputs\['hist_item_id'\] has 2 rows and truth 3"):
        evaluation.RecallValidation({**users, "hist_item_id": np.zeros((2, 4))}, items, ids, np.array([1, 2, 3]), k=2)
    with pytest.raises(ValueError, match="excluded has 1 rows and truth 3"):
        evaluation.RecallValidation(users, items, ids, np.array([1, 2, 3]), k=2, excluded=[[0]])


def test_planted_din_data_needs_more_events_per_user_than_it_holds_out():
    """With 5 events per user every event was a test row, and training failed inside Keras
    ('Expected input data to be non-empty'): `tfrec demo --events-per-user 5`."""
    from tfrec.recipes import HELD_OUT_EVENTS, planted_din_data

    with pytest.raises(ValueError, match=f"events_per_user must be more than {HELD_OUT_EVENTS}, got 5"):
        planted_din_data(users=10, items=20, events_per_user=5)
    _, train_df, test_df, _ = planted_din_data(users=10, items=20, events_per_user=HELD_OUT_EVENTS + 1)
    assert len(train_df) == 10 and len(test_df) == 10 * HELD_OUT_EVENTS
