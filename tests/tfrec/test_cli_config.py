"""Acceptance of issue 10: your own CSV data through the `tfrec` command, as a user runs it.

`tfrec train --config examples/ranking_din.yaml` -> `tfrec evaluate --config ...` ->
`tfrec export --config ...` -> `tfrec serve` -> `tfrec query --inputs @file`, each a subprocess
on the CSV the repository ships, down to the server's clean exit on SIGTERM; out-of-range integer
ids scored as the OOV row in training, in the export and over gRPC; then the one-line errors of
ordinary mistakes and Ctrl-C of `tfrec demo`.

The `tfrec serve` process is shared by the tests that query it; the last of them stops it
(tests run in file order).
"""
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
RANKING = REPO / "examples" / "ranking_din.yaml"
TFREC = [sys.executable, "-m", "tfrec.cli"]


def tfrec(*args, timeout=300, **kwargs):
    env = dict(os.environ, **kwargs.pop("env", {}))
    return subprocess.run(TFREC + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=kwargs.pop("cwd", REPO), env=env, **kwargs)


def ok(result):
    assert result.returncode == 0, f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture(scope="session")
def ranking_run(tmp_path_factory):
    """The ranking example trained (1 epoch), evaluated and exported by three `tfrec` subprocesses."""
    root = tmp_path_factory.mktemp("ranking_run")
    output, base = root / "run", root / "models" / "din"
    flags = ["--config", RANKING, "--output", output]
    train = ok(tfrec("train", *flags, "--epochs", 1, "--tensorboard", root / "tensorboard"))
    # evaluate and export only read the trained model: run them side by side.
    running = [subprocess.Popen(TFREC + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
               for argv in (["evaluate", *flags], ["export", *flags, "--export-base", base])]
    outputs = [p.communicate(timeout=300) for p in running]
    evaluate, export = [ok(subprocess.CompletedProcess(p.args, p.returncode, *out)) for p, out in zip(running, outputs)]
    return SimpleNamespace(root=root, output=output, base=base, train=train, evaluate=evaluate,
                           export_path=export.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def test_rows(ranking_run):
    """(the trained Keras model, the config's test rows as model inputs)."""
    from tfrec import load_model
    from tfrec.config import load_config, load_frames, trained
    from tfrec.data import df_to_inputs

    config = load_config(str(RANKING), output=str(ranking_run.output))
    model, columns = trained(config)
    _, test_df = load_frames(config)
    assert type(load_model(ranking_run.output / "model.keras").optimizer).__name__ == "LazyAdam"
    return model, test_df.head(50), df_to_inputs(test_df.head(50), columns)


def test_train_prints_one_line_per_epoch_and_its_steps_when_stdout_is_not_a_terminal(ranking_run):
    out = ranking_run.train.stdout
    assert "\r" not in out and "\x08" not in out  # no progress bar
    assert sum(line.strip().startswith("27/27 - ") for line in out.splitlines()) == 1, out
    assert "training DIN for 1 epoch(s): done in" in out and "saving the model" in out
    assert any((ranking_run.root / "tensorboard" / "train").iterdir())  # --tensorboard wrote event files


def test_evaluate_writes_metrics_and_a_calibration_plot(ranking_run):
    metrics_file, plot = ranking_run.output / "metrics.json", ranking_run.output / "calibration.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    report = json.loads(metrics_file.read_text())
    task = report["tasks"]["prediction"]
    assert 0.0 < task["auc"] < 1.0 and 0.0 < task["gauc"] < 1.0 and task["logloss"] > 0
    assert report["rows"] == 420 and report["files"]["calibration"] == str(plot)
    line = f"AUC {task['auc']:.4f}  GAUC {task['gauc']:.4f}  logloss {task['logloss']:.4f}"
    assert line in ranking_run.evaluate.stdout


def test_evaluate_reports_the_test_ids_looked_up_as_the_out_of_vocabulary_row(ranking_run, test_rows):
    from tfrec.config import load_config, load_frames

    unknown = json.loads((ranking_run.output / "metrics.json").read_text())["unknown"]
    assert "item_id" in unknown  # min_count: 2 leaves rare items out
    model = test_rows[0]
    _, test_df = load_frames(load_config(str(RANKING), output=str(ranking_run.output)))
    rows = model.get_layer("index_item_id")(tf.constant(test_df["item_id"].astype(str).to_numpy())).numpy()
    assert unknown["item_id"] == pytest.approx(np.mean(rows == 1))  # as the model looks them up
    assert "out of vocabulary in the test rows: " in ranking_run.evaluate.stdout
    assert f"item_id {unknown['item_id']:.1%}" in ranking_run.evaluate.stdout


def ranking_config(ranking_run, tmp_path, **data):
    """The ranking example with `data` changes (absolute paths), trained in `ranking_run`."""
    import yaml

    from tfrec.config import load_config

    config = yaml.safe_load(RANKING.read_text())
    config["data"].update({key: str(value) for key, value in data.items()})
    config["data"]["train"] = str(config["data"]["train"] if "train" in data else REPO / "examples" / "data" /
                                  "ranking.csv")
    config["output"] = str(ranking_run.output)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return load_config(str(tmp_path / "run.yaml"))


def test_evaluate_reads_only_the_test_files_a_chunk_at_a_time_with_the_figures_of_one_pass(
        ranking_run, test_rows, tmp_path, monkeypatch, capsys):
    """A 5M-row test file took 13 GiB and did not finish in 10 minutes when read whole and scored
    by one predict call; it is now read and scored CHUNK_ROWS rows at a time. Nor does evaluate
    read the training files when data.test names the test rows (a nightly job whose old
    training files were rotated away failed)."""
    from tfrec import config as run
    from tfrec import evaluation

    model, _, _ = test_rows
    config = run.load_config(str(RANKING), output=str(ranking_run.output))
    _, columns = run.trained(config)
    _, test_df = run.load_frames(config)
    test_df.to_csv(tmp_path / "test.csv", index=False)
    original = (ranking_run.output / "metrics.json").read_bytes(), (ranking_run.output / "calibration.png").read_bytes()
    # Chunks of 120 rows scored 30 per call: the calls of one pass over all 420 rows at 30 per call,
    # so the scores are bit for bit those of one pass (other batch shapes change their last bits).
    monkeypatch.setattr(run, "CHUNK_ROWS", 120)
    monkeypatch.setattr(evaluation, "PREDICT_ROWS", 30)
    one_pass = evaluation.binary_report(test_df["click"].to_numpy(float),
                                        evaluation.predict_frame(model, run.prepare(test_df, columns), columns),
                                        test_df["user_id"].to_numpy())
    config = ranking_config(ranking_run, tmp_path, train=tmp_path / "rotated_away.csv", test=tmp_path / "test.csv")
    try:
        report = run.evaluate(config)
    finally:
        (ranking_run.output / "metrics.json").write_bytes(original[0])
        (ranking_run.output / "calibration.png").write_bytes(original[1])
    out = capsys.readouterr().out
    assert [line.split(" (")[0] for line in out.splitlines() if "rows scored" in line] == \
        ["  120 rows scored", "  240 rows scored", "  360 rows scored", "  420 rows scored"]
    assert report["rows"] == 420
    assert {key: report["tasks"]["prediction"][key] for key in one_pass} == pytest.approx(one_pass, abs=1e-12)
    whole = json.loads(original[0])  # the fixture's evaluate: one predict call, its own last bits
    assert report["unknown"] == pytest.approx(whole["unknown"])
    assert report["tasks"]["prediction"]["auc"] == pytest.approx(whole["tasks"]["prediction"]["auc"], abs=1e-3)
    assert report["data"] == [str(tmp_path / "test.csv")] and report["model"] == str(ranking_run.output / "model.keras")


def test_predict_writes_the_trained_models_scores_of_a_file_in_its_row_order(ranking_run, test_rows, tmp_path,
                                                                              monkeypatch, tfrec_main):
    """`tfrec predict`: batch scoring of a file, a chunk at a time, with the columns to join the
    scores back on; the scores are the trained model's."""
    import pandas as pd

    from tfrec import config as run
    from tfrec.evaluation import predict_frame

    model, _, _ = test_rows
    config = ranking_config(ranking_run, tmp_path)
    rows = pd.read_csv(REPO / "examples" / "data" / "ranking.csv").drop(columns="click")  # no labels needed
    rows.to_parquet(tmp_path / "rows.parquet")
    monkeypatch.setattr(run, "CHUNK_ROWS", 500)
    result = run.predict(config, [str(tmp_path / "rows.parquet")], str(tmp_path / "scores.csv"),
                         keep=["user_id", "timestamp"])
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert result == {"rows": len(rows), "file": str(tmp_path / "scores.csv"),
                      "columns": ["user_id", "timestamp", "score"]}
    assert list(scores.columns) == ["user_id", "timestamp", "score"]
    assert scores["user_id"].tolist() == rows["user_id"].tolist()
    assert scores["timestamp"].tolist() == rows["timestamp"].tolist()
    _, columns = run.trained(config)
    whole = rows.copy()  # every row of the file at once, its histories split by hand
    for name in ("hist_item_id", "hist_cate_id"):
        whole[name] = [cell.split("|") if isinstance(cell, str) else [] for cell in whole[name]]
    np.testing.assert_allclose(scores["score"], predict_frame(model, run.prepare(whole, columns), columns), atol=1e-6)
    assert not list(tmp_path.glob("scores.csv.*.tmp"))
    # The command: a CSV, a missing column named, a retrieval run refused.
    result = ok(tfrec("predict", "--config", RANKING, "--output", ranking_run.output, "--data",
                      REPO / "examples" / "data" / "ranking.csv", "--scores", tmp_path / "cli.csv", "--keep", "item_id"))
    assert result.stdout.strip().endswith(f"wrote {len(rows)} rows of item_id, score: {tmp_path / 'cli.csv'}")
    np.testing.assert_allclose(pd.read_csv(tmp_path / "cli.csv")["score"], scores["score"], atol=1e-6)
    # The mistakes, in this process (the same main() as the command's).
    rows.drop(columns="cate_id").to_csv(tmp_path / "lacking.csv", index=False)
    code, _, err = tfrec_main("predict", "--config", RANKING, "--output", ranking_run.output, "--data",
                              tmp_path / "lacking.csv", "--scores", tmp_path / "x.csv")
    assert code == 1 and "--data: the rows lack the column(s) ['cate_id']" in err
    assert not (tmp_path / "x.csv").exists()
    code, _, err = tfrec_main("predict", "--config", REPO / "examples" / "retrieval_mind.yaml", "--data",
                              tmp_path / "rows.parquet", "--scores", tmp_path / "x.csv")
    assert code == 1 and "tfrec predict scores rows with a ranking model" in err


def signature_feed(signature, inputs):
    specs = signature.structured_input_signature[1]
    return {name: tf.constant(np.asarray(inputs[name]).reshape((-1,) + (() if spec.shape.rank == 1 else
                                                                           np.asarray(inputs[name]).shape[1:])),
                              dtype=spec.dtype)
            for name, spec in specs.items()}


def test_exported_model_scores_equal_the_trained_model(ranking_run, test_rows):
    model, _, inputs = test_rows
    assert ranking_run.export_path == str(ranking_run.base / "1")
    signature = tf.saved_model.load(ranking_run.export_path).signatures["serving_default"]
    served = signature(**signature_feed(signature, inputs))["prediction"].numpy().reshape(-1)
    np.testing.assert_allclose(served, model.predict(inputs, verbose=0).reshape(-1), atol=1e-5)


def test_export_version_0_is_version_0(ranking_run, tfrec_main, tmp_path):
    """`--version 0` was read as no version (`args.version or ...`): the export went to the next
    free version, or to the config's export.version."""
    base = tmp_path / "din"
    code, out, err = tfrec_main("export", "--config", RANKING, "--output", ranking_run.output, "--export-base", base,
                                "--version", 0)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(base / "0")
    assert os.listdir(base) == ["0"]


def tiny_oov_model():
    """A tiny DIN on plain integer ids (no vocabulary: ids index the tables), trained one epoch on
    rows that include out-of-range ids (99 and -3 for tables of 5 and 6 rows)."""
    import tensorflow as tf

    from feature_columns import SparseFeat, VarLenSparseFeat
    from tfrec.models import DIN

    tf.keras.utils.set_random_seed(0)
    columns = [SparseFeat("user_id", 5, 4, dtype="int64"), SparseFeat("item_id", 6, 4, dtype="int64"),
               VarLenSparseFeat(SparseFeat("hist_item_id", 6, 4, dtype="int64", embedding_name="item_id"), 3)]
    rng = np.random.default_rng(0)
    x = {"user_id": rng.integers(0, 5, 64), "item_id": rng.integers(1, 6, 64),
         "hist_item_id": rng.integers(0, 6, (64, 3))}
    x["item_id"][:4] = [99, -3, 99, 6]  # out of range: trains on row 0 instead of failing the batch
    x["hist_item_id"][:2, 0] = [99, -1]
    model = DIN(columns, ["item_id"], dnn_hidden_units=(4,), att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy")
    history = model.fit(x, rng.integers(0, 2, 64), batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    return model


# Rows 0-2: one request scored with item_id 0 (the padding/OOV row), 99 and -3; rows 3-4: a
# history with an out-of-range id and the same history with 0 (padding) in its place; row 5: a
# real id in row 0's place, which must score differently (the model does read the item).
OOV_REQUEST = {"user_id": [2, 2, 2, 3, 3, 2], "item_id": [0, 99, -3, 4, 4, 1],
               "hist_item_id": [[1, 2, 0], [1, 2, 0], [1, 2, 0], [1, 99, 3], [1, 0, 3], [1, 2, 0]]}


def assert_oov_scores(scores, where):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    assert scores[1] == pytest.approx(scores[0], abs=1e-6) and scores[2] == pytest.approx(scores[0], abs=1e-6), \
        (where, scores)
    assert scores[3] == pytest.approx(scores[4], abs=1e-6), (where, scores)
    assert abs(scores[5] - scores[0]) > 1e-5, (where, scores)
    return scores


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(trained-model scores of OOV_REQUEST, the export base of the tiny model)."""
    import exporters

    model = tiny_oov_model()
    request = {name: np.asarray(values, dtype=np.int64) for name, values in OOV_REQUEST.items()}
    trained_scores = assert_oov_scores(model.predict(request, verbose=0), "training-time predict")
    base = tmp_path_factory.mktemp("tiny") / "oov"
    exporters.export_saved_model(model, str(base))
    return trained_scores, base


class ServeProcess:
    """`tfrec serve` as a subprocess on a free port; `target` once it printed its readiness line."""

    READY = "Running gRPC ModelServer at "

    def __init__(self, args, log_path, timeout=120):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(TFREC + ["serve", "--port=0"] + args, stdout=subprocess.PIPE,
                                        stderr=self._log, text=True, cwd=REPO)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout] + [lines.put(None)],
                         daemon=True).start()
        deadline = time.monotonic() + timeout
        self.stdout = []
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise AssertionError(f"tfrec serve printed no readiness line; its log:\n{self.log()[-3000:]}")
            self.stdout.append(line)
            if line.startswith(self.READY):
                self.target = line[len(self.READY):].split()[0]
                return

    def log(self):
        return Path(self.log_path).read_text()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


@pytest.fixture(scope="session")
def served(ranking_run, tiny_export, tmp_path_factory):
    """`tfrec serve --model_config_file` with the exported DIN ("din") and the tiny OOV model ("oov")."""
    from exporters import write_model_config

    root = tmp_path_factory.mktemp("serve")
    config = write_model_config(root / "models.config", {"din": str(ranking_run.base), "oov": str(tiny_export[1])})
    server = ServeProcess([f"--model_config_file={config}"], root / "serve.log")
    yield server
    server.stop()


def test_served_and_queried_scores_equal_the_trained_model(served, test_rows, tmp_path, tfrec_main):
    model, _, inputs = test_rows
    request = {name: np.asarray(values)[:5].tolist() for name, values in inputs.items()}
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    query = ok(tfrec("query", "--target", served.target, "--model-name", "din", "--inputs", f"@{request_file}"))
    served_scores = np.array(json.loads(query.stdout)["prediction"]).reshape(-1)
    expected = model.predict({k: np.asarray(v)[:5] for k, v in inputs.items()}, verbose=0).reshape(-1)
    assert served_scores.shape == (5,)
    np.testing.assert_allclose(served_scores, expected, atol=1e-5)
    # --version-label reaches the server (this config names no label).
    code, _, err = tfrec_main("query", "--target", served.target, "--model-name", "din", "--inputs", f"@{request_file}",
                              "--version-label", "canary")
    assert code == 1 and "Unrecognized servable version label: canary" in err


def test_out_of_range_ids_score_as_the_oov_row_in_training_export_and_grpc(tiny_export, served):
    import tensorflow as tf

    from serving import Client

    trained_scores, base = tiny_export
    signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    exported = signature(**{name: tf.constant(values, dtype=tf.int64) for name, values in OOV_REQUEST.items()})
    exported = assert_oov_scores(exported["prediction"].numpy(), "in-process predict of the export")
    with Client(served.target) as client:
        over_grpc = assert_oov_scores(client.predict("oov", OOV_REQUEST)["prediction"], "gRPC")
    np.testing.assert_allclose(exported, trained_scores, atol=1e-5)
    np.testing.assert_allclose(over_grpc, trained_scores, atol=1e-5)


def test_the_server_exits_cleanly_on_sigterm(served):
    assert served.stop(signal.SIGTERM) == 0, served.log()[-3000:]
    log = served.log()
    assert "Traceback" not in log and "Server stopped" in log


def test_warm_start_continues_the_earlier_run_with_its_columns(ranking_run, test_rows, tmp_path, tfrec_main):
    """Day 2: train.warm_start starts from yesterday's run (its weights and columns) on today's
    rows, where a new item gets a row of its own appended to yesterday's vocabulary (or, with
    grow_vocabularies: false, is out of vocabulary); a near-zero learning rate leaves the scores
    of yesterday's items where yesterday's model had them."""
    import pandas as pd
    import yaml

    from tfrec.config import load_config, trained
    from tfrec.data import df_to_inputs

    today = pd.read_csv(REPO / "examples" / "data" / "ranking.csv")
    today.loc[:9, "item_id"] = "i-new"
    today.loc[today.drop(index=range(10)).timestamp.idxmin(), "item_id"] = "i-once"  # a training row
    (tmp_path / "data").mkdir()
    today.to_csv(tmp_path / "data" / "ranking.csv", index=False)
    config = yaml.safe_load(RANKING.read_text())
    del config["columns"]
    # Yesterday's vocabularies kept values seen twice (columns.min_count: 2, which its columns.json
    # records): so do today's, and "i-once" stays out of vocabulary.
    config["train"].update(warm_start=str(ranking_run.output), epochs=1, learning_rate=1e-12)
    config.update(output="today", export={"base": "today/export"})
    (tmp_path / "today.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = tfrec_main("train", "--config", tmp_path / "today.yaml")
    assert code == 0
    assert "loading the model to start from" in out
    assert "growing the vocabularies by the new values (item_id +1; seen at least 2 times)" in out
    assert "model.args are not used with train.warm_start" in out  # the example's args: the model keeps its own
    before = {c["name"]: c for c in json.loads((ranking_run.output / "columns.json").read_text())}
    after = {c["name"]: c for c in json.loads((tmp_path / "today" / "columns.json").read_text())}
    for name, column in before.items():
        if column.get("embedding_name") == "item_id":
            assert after[name] == {**column, "vocabulary": column["vocabulary"] + ["i-new"],
                                   "vocabulary_size": column["vocabulary_size"] + 1}
        else:
            assert after[name] == column
        assert after[name].get("min_count") == (2 if column["type"] in ("sparse", "sequence") else None)
    yesterday, rows, inputs = test_rows
    model, columns = trained(load_config(str(tmp_path / "today.yaml")))
    np.testing.assert_allclose(model.predict(df_to_inputs(rows, columns), verbose=0),
                               yesterday.predict(inputs, verbose=0), atol=1e-5)
    row = int(model.get_layer("index_item_id")(tf.constant(["i-new"])).numpy().ravel()[0])
    assert row == len(before["item_id"]["vocabulary"]) + 2  # its own row, after yesterday's (not 1, OOV)

    config["train"]["grow_vocabularies"] = False
    (tmp_path / "today.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = tfrec_main("train", "--config", tmp_path / "today.yaml")
    assert code == 0
    assert re.search(r"grow_vocabularies is false: the values new to the vocabularies are looked up as the "
                     r"out-of-vocabulary row \(.*item_id \d+\.\d%", out)
    assert {c["name"]: c for c in json.loads((tmp_path / "today" / "columns.json").read_text())} == before
    config["train"]["grow_vocabularies"] = 1  # a count given: it overrides the recorded one
    (tmp_path / "today.yaml").write_text(yaml.safe_dump(config))
    code, out, _ = tfrec_main("train", "--config", tmp_path / "today.yaml")
    assert code == 0
    assert re.search(r"growing the vocabularies by the new values \(item_id \+\d+; seen at least once\)", out)
    vocabulary = {c["name"]: c for c in json.loads((tmp_path / "today" / "columns.json").read_text())}["item_id"]
    assert "i-once" in vocabulary["vocabulary"] and vocabulary["min_count"] == 1
    del config["train"]["grow_vocabularies"]

    # Today's data is checked before yesterday's model is loaded: a mistake there is reported first.
    today.drop(columns="cate_id").to_csv(tmp_path / "data" / "no_cate.csv", index=False)
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump({**config, "data": {**config["data"], "train": "data/no_cate.csv"}}))
    code, out, err = tfrec_main("train", "--config", tmp_path / "wrong.yaml")
    assert code == 1
    assert "lack the feature column(s) ['cate_id']" in err and "loading the model" not in out

    for change, message in [({"train": {"warm_start": str(tmp_path / "nowhere")}}, "holds no model.keras"),
                            ({"model": {"name": "SIM"}}, "holds a model named 'din', and this config trains SIM"),
                            ({"columns": "infer"}, "columns: does not apply with train.warm_start"),
                            ({"train": {"grow_vocabularies": 0}}, "train.grow_vocabularies: must be true, false")]:
        wrong = {**config, **{key: ({**config[key], **value} if isinstance(value, dict) and key in config
                                    else value) for key, value in change.items()}}
        (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(wrong))
        code, out, err = tfrec_main("train", "--config", tmp_path / "wrong.yaml")
        assert code == 1
        # Found before today's data is read against yesterday's columns (which would blame the data).
        assert message in err and "training rows" not in out


def test_ordinary_mistakes_are_one_line_errors(tmp_path):
    from serving.local import free_port

    data = REPO / "examples" / "data" / "ranking.csv"
    configs = {
        "unknown_model": f"data: {{train: {data}}}\nlabels: click\nmodel: {{name: DeepFM}}\n",
        "missing_data": "data: {train: no_such_dir/*.csv}\nlabels: click\nmodel: {name: DIN}\n",
        "bad_key": f"data: {{train: {data}}}\nlabels: click\nmodel: {{name: DIN}}\ntrian: {{epochs: 2}}\n",
    }
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    mistakes = {
        "unknown_model": (["train", "--config", tmp_path / "unknown_model.yaml"], "unknown model 'DeepFM'"),
        "missing_data": (["train", "--config", tmp_path / "missing_data.yaml"], "data.train: no file matches"),
        "bad_key": (["train", "--config", tmp_path / "bad_key.yaml"], "trian: unknown key"),
        "missing_inputs_file": (["query", "--model-name", "din", "--inputs", "@" + str(tmp_path / "none.json")],
                                "--inputs: no such file"),
        "unreachable_server": (["query", "--target", f"127.0.0.1:{free_port()}", "--model-name", "din",
                                "--timeout", "2", "--inputs", '{"user_id": ["u1"]}'], "cannot reach a model server"),
    }
    running = {name: subprocess.Popen(TFREC + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=tmp_path)
               for name, (argv, _) in mistakes.items()}
    for name, process in running.items():
        _, err = process.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.startswith("tfrec ")]
        assert process.returncode == 1, (name, err)
        assert "Traceback" not in err, (name, err)
        assert len(lines) == 1 and ": error: " in lines[0] and mistakes[name][1] in lines[0], (name, err)


def test_the_same_errors_in_process_and_debug_shows_the_exception(tmp_path, tfrec_main):
    from tfrec.cli import main
    from tfrec.config import ConfigError

    code, _, err = tfrec_main("export", "--model", tmp_path / "no_model", "--export-base", tmp_path / "m")
    assert code == 1
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfrec export: error: no saved model at") and "--debug" in err[0]
    (tmp_path / "run.yaml").write_text("data: {train: x.csv}\nlabels: click\nmodel: {name: DeepFM}\n")
    with pytest.raises(ConfigError, match="model.name: unknown model 'DeepFM'"):
        main(["train", "--config", str(tmp_path / "run.yaml"), "--debug"])
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", str(tmp_path / "run.yaml")])
    (tmp_path / "run.yaml").write_text("data: {train: x.csv}\nlabels: click\nmodel: {name: MIND}\n")
    with pytest.raises(ConfigError, match="labels: does not apply to MIND: a retrieval model learns from the "
                                          "events themselves"):
        main(["train", "--config", str(tmp_path / "run.yaml"), "--debug"])


def test_set_overrides_config_keys_and_planted_data_flags_are_refused_with_a_config(tmp_path, tfrec_main):
    """From an audit of sweeps: `--learning-rate 0.5 --seed 7` with --config exited 0 and trained
    the same model as without them."""
    from tfrec.config import load_config, model_args

    (tmp_path / "run.yaml").write_text("data: {train: x.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                       "train: {epochs: 2}\n")
    path = str(tmp_path / "run.yaml")
    config = load_config(path, overrides=["train.learning_rate=0.01", "model.args.dnn_hidden_units=[64, 32]",
                                          "split.test_fraction=0.3", "train.seed=3"])
    assert config.train.learning_rate == 0.01 and config.train.epochs == 2 and config.split.test_fraction == 0.3
    assert config.model.args == {"dnn_hidden_units": [64, 32]}
    assert model_args(config)["seed"] == 1027  # other seeds start from other weights
    assert model_args(load_config(path))["seed"] == 1024  # DeepCTR's default at seed 0
    assert model_args(load_config(path, overrides=["model.args.seed=5"]))["seed"] == 5
    for argv, message in (
            (["--set", "train.lerning_rate=0.1"], "train.lerning_rate: unknown key in 'train'"),
            (["--set", "train.epochs"], "--set 'train.epochs': give KEY=VALUE"),
            (["--set", "train.epochs.x=1"], "--set train.epochs.x: 'train.epochs' is not a section of keys"),
            (["--learning-rate", "0.5"], "--learning-rate describes the planted demo data and does nothing with "
                                         "--config -- set train.learning_rate in the config, or pass --set "
                                         "train.learning_rate=VALUE"),
            (["--users", "5"], "--users describes the planted demo data and does nothing with --config")):
        code, _, err = tfrec_main("train", "--config", path, *argv)
        assert code == 1
        err = err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_version_and_help_give_every_flag_a_text(capsys):
    from tfrec.cli import build_parser, main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "tfrec 0.1.0"

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        if name == "serve":
            continue  # tensorflow_model_server's own flags, documented by `tfrec serve --help`
        for action in sub._actions:
            assert action.help, f"tfrec {name} {action.option_strings} has no help text"


@pytest.mark.parametrize("argv", [["train", "--config", "run.yaml", "--epochs", "0"],
                                  ["train", "--output", "din.keras", "--users", "-5"],
                                  ["demo", "--top-k", "0"],
                                  ["demo", "--show-users", "-1"],  # head(-1): every user but one
                                  ["bench", "--model-name", "din", "--inputs", "{}", "--requests", "0"],
                                  ["query", "--model-name", "din", "--inputs", "{}", "--timeout", "0"]])
def test_a_count_or_timeout_of_0_is_refused_with_its_flag_before_anything_runs(argv, capsys):
    """`tfrec bench --requests 0` sent its warm-up request, then failed on an empty percentile;
    `tfrec train --config ... --epochs 0` read the data and built the model before Keras refused."""
    from tfrec.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    flag = next(a for a in argv if a.startswith("--") and a not in ("--config", "--output", "--model-name",
                                                                   "--inputs"))
    assert f"argument {flag}: must be above 0, got {argv[-1]}" in capsys.readouterr().err


def test_demo_with_no_events_left_to_train_on_names_the_flag_and_removes_its_directory(tfrec_main, tmp_path,
                                                                                       monkeypatch):
    """Each user's last 5 events are test rows: with 5 per user, fit failed inside Keras ('Expected
    input data to be non-empty')."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the demo's temporary folder goes
    code, _, err = tfrec_main("demo", "--users", 10, "--items", 20, "--events-per-user", 5)
    assert code == 1
    assert "tfrec demo: error: events_per_user must be more than 5, got 5" in err
    assert os.listdir(tmp_path) == []


def test_predict_refuses_a_scores_file_it_could_not_write_or_that_is_a_file_it_scores(tfrec_main, tmp_path):
    """--scores naming the --data file (or a file of its glob) replaced the rows with their scores;
    a folder, or a file in no folder, failed only when renamed into place, after every row was scored.
    Each is refused before the model is even looked for (this run folder holds none)."""
    rows = tmp_path / "rows.csv"
    rows.write_text("user_id,item_id\nu1,i1\n")
    flags = ["predict", "--config", RANKING, "--output", tmp_path / "run"]
    for data, scores, message in ((rows, rows, f"--scores {rows} is one of the files to score"),
                                  (tmp_path / "*.csv", rows, f"--scores {rows} is one of the files to score"),
                                  (rows, tmp_path, f"--scores {tmp_path} is a folder"),
                                  (rows, tmp_path / "no" / "s.csv", f"--scores: no folder {tmp_path / 'no'} to write")):
        code, _, err = tfrec_main(*flags, "--data", data, "--scores", scores)
        assert code == 1 and f"tfrec predict: error: {message}" in err, err
    assert rows.read_text() == "user_id,item_id\nu1,i1\n"
    code, _, err = tfrec_main(*flags, "--data", rows, "--scores", tmp_path / "scores.csv")
    assert code == 1 and "no trained model at" in err  # the next check, once the scores file is fine


def test_ctrl_c_stops_the_demo_and_removes_its_temporary_directory(tmp_path):
    # Epochs enough that Ctrl-C lands in training however late a loaded machine delivers it
    # (200 epochs of this data took 2 s: a late signal found the demo done); SIGINT handled as
    # in a terminal, whatever the test runner's parent ignores.
    process = subprocess.Popen(TFREC + ["demo", "--users", "200", "--items", "100", "--events-per-user", "10",
                                        "--epochs", "1000000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=dict(os.environ, TMPDIR=str(tmp_path)),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        workdir = None
        for line in process.stdout:
            if line.startswith("working in "):
                workdir = Path(line.split("working in ", 1)[1].strip())
            if "Epoch 2/" in line:
                break
        assert workdir is not None and workdir.is_dir()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "tfrec demo: interrupted" in err
    assert not workdir.exists()


def test_query_inputs_take_tf_servings_rest_bodies_and_name_an_empty_one():
    from tfrec.cli import CliError, read_inputs

    columns = {"user_id": ["u1", "u2"], "hist_item_id": [["i1"], []]}
    assert read_inputs(json.dumps(columns)) == columns
    assert read_inputs(json.dumps({"inputs": columns})) == columns
    assert read_inputs(json.dumps({"instances": [{"user_id": "u1", "hist_item_id": ["i1"]},
                                                 {"user_id": "u2", "hist_item_id": []}]})) == columns
    with pytest.raises(CliError, match="--inputs: the JSON object names no feature"):
        read_inputs("{}")
