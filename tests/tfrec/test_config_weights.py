"""`weight:` in a run config: a column of sample weights, e.g. of a log downsampled to a fifth of
its negatives (from an ads engineer's audit: the column was read as a feature, which told the
kept negatives from the clicks, AUC 0.92 against 0.53, and every served request needed it)."""
import json

import numpy as np
import pandas as pd
import pytest

from tfrec import config as run
from tfrec import metrics
from tfrec.config import ConfigError, load_config

KEEP = 0.2  # of the negatives


def log(rows, rng):
    """Planted clicks: items 0-9 at 0.32, the other 40 at 0.02 (0.08 overall)."""
    items = rng.integers(0, 50, rows)
    history = rng.integers(0, 50, (rows, 3))
    return pd.DataFrame({"user_id": rng.integers(1, 100, rows), "item_id": [f"i{i}" for i in items],
                         "hist_item_id": ["|".join(f"i{i}" for i in row) for row in history],
                         "click": (rng.random(rows) < 0.02 + 0.3 * (items < 10)).astype(int)})


def downsampled(df, rng):
    kept = df[(df["click"] == 1) | (rng.random(len(df)) < KEEP)]
    return kept.assign(w=np.where(kept["click"] == 1, 1.0, 1 / KEEP))


CONFIG = """data: {{train: train.csv, test: {test}}}
labels: click
{weight}
columns: {{embedding_dim: 4, sequences: {{hist_item_id: {{maxlen: 3}}}}}}
model: {{name: DIN, args: {{dnn_hidden_units: [8], att_hidden_size: [4]}}}}
train: {{epochs: 4, batch_size: 128, learning_rate: 0.01}}
output: {output}
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same downsampled log trained with its weights and without, and tested on the original
    distribution (no weight column) and on a downsampled test set (weighted)."""
    root = tmp_path_factory.mktemp("weights")
    rng = np.random.default_rng(0)
    downsampled(log(12_000, rng), rng).to_csv(root / "train.csv", index=False)
    original = log(6_000, rng)
    original.to_csv(root / "original.csv", index=False)
    downsampled(original, rng).to_csv(root / "weighted_test.csv", index=False)
    configs = {}
    for name in ("weighted", "unweighted"):
        text = CONFIG.format(test="original.csv", weight="weight: w" if name == "weighted" else "", output=name)
        if name == "unweighted":
            text = text.replace("columns: {", "columns: {exclude: [w], ")
        (root / f"{name}.yaml").write_text(text)
        configs[name] = load_config(str(root / f"{name}.yaml"))
        run.train(configs[name], verbose=0)
    return root, configs


def test_the_weight_column_is_no_feature_and_weighted_training_predicts_the_original_click_rate(runs):
    root, configs = runs
    columns = json.loads((root / "weighted" / "columns.json").read_text())
    assert "w" not in json.dumps(columns)
    model, _ = run.trained(configs["weighted"])
    assert sorted(model.input_names) == ["hist_item_id", "item_id", "user_id"]
    weighted = run.evaluate(configs["weighted"])
    unweighted = run.evaluate(configs["unweighted"])
    assert weighted["weight"] is None  # the original test rows carry no weight
    rate = weighted["tasks"]["prediction"]["label_rate"]
    assert 0.06 < rate < 0.10
    # Trained without its weights, a model of a log of a fifth of its negatives predicts about 3x
    # the click rate; with them, the rate itself.
    assert unweighted["tasks"]["prediction"]["mean_prediction"] > 2 * rate
    assert abs(weighted["tasks"]["prediction"]["mean_prediction"] / rate - 1) < 0.3
    assert weighted["tasks"]["prediction"]["logloss"] < unweighted["tasks"]["prediction"]["logloss"]
    assert weighted["tasks"]["prediction"]["auc"] > 0.7


def test_test_rows_with_the_weight_column_are_weighted_in_every_metric_and_scored_without_it(runs, tmp_path):
    root, configs = runs
    config = configs["weighted"]
    config.data.test = [str(root / "weighted_test.csv")]
    try:
        report = run.evaluate(config)
        run.predict(config, [str(root / "original.csv")], str(tmp_path / "original_scores.csv"))  # no weight needed
        run.predict(config, config.data.test, str(tmp_path / "scores.csv"))
    finally:
        config.data.test = [str(root / "original.csv")]
    rows = pd.read_csv(root / "weighted_test.csv")
    scores = pd.read_csv(tmp_path / "scores.csv")["score"].to_numpy()
    labels, weights = rows["click"].to_numpy(), rows["w"].to_numpy()
    result = report["tasks"]["prediction"]
    assert report["weight"] == "w"
    assert result["auc"] == pytest.approx(metrics.auc(labels, scores, weights), abs=1e-6)
    # (Weights set by the label alone leave AUC as it is; the logloss and the rates move.)
    assert result["logloss"] != pytest.approx(metrics.logloss(labels, scores), abs=1e-3)
    assert result["logloss"] == pytest.approx(metrics.logloss(labels, scores, sample_weight=weights), abs=1e-5)
    assert result["label_rate"] == pytest.approx(np.average(labels, weights=weights))
    assert result["mean_prediction"] == pytest.approx(np.average(scores, weights=weights), abs=1e-6)


@pytest.mark.parametrize("weight, change, message", [
    ("w", {"w": -1.0}, r"weight: column 'w' must hold numbers >= 0, but data row 3 holds -1.0 \(1 row\(s\) do\)"),
    ("w", {"w": np.nan}, r"weight: column 'w' must hold numbers >= 0, but data row 3 holds nan"),
    ("w", {"w": "heavy"}, r"weight: column 'w' must hold numbers >= 0, but data row 3 holds 'heavy'"),
    ("weights", {}, r"weight: 'weights' is not a column of the training data; its columns are \["),
])
def test_weights_a_model_cannot_train_with_are_named_before_training(tmp_path, weight, change, message):
    rng = np.random.default_rng(1)
    df = downsampled(log(40, rng), rng).reset_index(drop=True)
    for column, value in change.items():
        df[column] = df[column].astype(object)
        df.loc[3, column] = value
    df.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "run.yaml").write_text(CONFIG.format(test="train.csv", weight=f"weight: {weight}", output="out"))
    with pytest.raises(ConfigError, match=message):
        run.load_frames(load_config(str(tmp_path / "run.yaml")))


@pytest.mark.parametrize("text, message", [
    ("labels: click\nweight: click\n", "weight: 'click' is a label column; the weights need a column of their own"),
    ("labels: click\nweight: [w]\n", r"weight: must be the name of the column of sample weights, got \['w'\]"),
    ("labels: click\nweight: w\ncolumns:\n  - {type: sparse, name: w, vocabulary: [1, 5]}\n", None),
])
def test_weight_mistakes_in_the_config_are_named(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: d.csv}\nmodel: {name: DIN}\n" + text)
    if message is not None:
        with pytest.raises(ConfigError, match=message):
            load_config(str(path))
        return
    with pytest.raises(ConfigError, match="columns: 'w' is the weight column, so it cannot be a feature too"):
        run.build_columns(None, load_config(str(path)))


def test_a_retrieval_run_takes_no_weight(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: d.csv}\nmodel: {name: MIND}\nretrieval: {user: u, item: i, time: t}\nweight: w\n")
    with pytest.raises(ConfigError, match="weight: weighs a ranking model's rows; MIND trains on the samples"):
        load_config(str(path))


def test_weights_reach_the_distributed_dataset_of_a_strategy(tmp_path):
    """Under `strategy: mirrored` too: with every click weighted 0 the model learns no click."""
    rng = np.random.default_rng(2)
    df = log(600, rng)
    df.assign(w=1.0 - df["click"]).to_csv(tmp_path / "train.csv", index=False)
    text = CONFIG.format(test="train.csv", weight="weight: w", output="out").replace(
        "learning_rate: 0.01}", "learning_rate: 0.05}\nstrategy: {kind: mirrored}")
    (tmp_path / "run.yaml").write_text(text)
    config = load_config(str(tmp_path / "run.yaml"))
    model = run.train(config, verbose=0)
    assert model.distribute_strategy.__class__.__name__ == "MirroredStrategy"
    assert df["click"].mean() > 0.05
    assert run.evaluate(config)["tasks"]["prediction"]["mean_prediction"] < 0.01


def test_a_multi_task_run_weighs_every_task_and_prints_weighted_metrics(tmp_path):
    rng = np.random.default_rng(3)
    df = log(800, rng).drop(columns="hist_item_id")
    df = df.assign(conversion=df["click"] * (rng.random(len(df)) < 0.5), w=np.where(df["click"] == 1, 1.0, 5.0))
    df.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "run.yaml").write_text(
        "data: {train: train.csv}\nlabels: {ctr: click, ctcvr: conversion}\nweight: w\n"
        "columns: {embedding_dim: 4}\nmodel: {name: MMOE, args: {num_experts: 2, expert_dnn_hidden_units: [8], "
        "tower_dnn_hidden_units: [4]}}\ntrain: {epochs: 1, batch_size: 100}\noutput: out\n")
    config = load_config(str(tmp_path / "run.yaml"))
    model = run.train(config, verbose=0)
    assert "w" not in model.input_names
    # Each task's AUC is compiled as a weighted metric, so the progress lines are weighted too.
    assert model.compiled_metrics._user_metrics is None
    assert set(model.compiled_metrics._user_weighted_metrics) == {"ctr", "ctcvr"}
    report = run.evaluate(config)
    assert report["weight"] == "w" and set(report["tasks"]) == {"ctr", "ctcvr"}
    test = run.load_frames(config)[1]
    assert report["tasks"]["ctr"]["label_rate"] == pytest.approx(np.average(test["click"], weights=test["w"]))
