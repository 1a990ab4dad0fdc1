"""Acceptance of issue 10: your own CSV data through the `tfrec` command, as a user runs it.

`tfrec train --config examples/ranking_din.yaml` -> `tfrec evaluate --config ...` ->
`tfrec export --config ...` -> `tfrec serve` (serving.LocalServer) -> `tfrec query --inputs @file`,
each a subprocess on the CSV the repository ships; then the one-line errors of ordinary mistakes
and Ctrl-C of `tfrec demo`.
"""
import json
import os
import signal
import subprocess
import sys
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
    evaluate = ok(tfrec("evaluate", *flags))
    export = ok(tfrec("export", *flags, "--export-base", base))
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
    assert f"AUC {task['auc']:.4f}  GAUC {task['gauc']:.4f}  logloss {task['logloss']:.4f}" in ranking_run.evaluate.stdout


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


def test_served_and_queried_scores_equal_the_trained_model(ranking_run, test_rows, tmp_path):
    from serving import LocalServer

    model, _, inputs = test_rows
    request = {name: np.asarray(values)[:5].tolist() for name, values in inputs.items()}
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    with LocalServer(model_base_path=str(ranking_run.base), model_name="din", rest=False) as server:
        query = ok(tfrec("query", "--target", server.grpc_target, "--model-name", "din",
                         "--inputs", f"@{request_file}"))
    served = np.array(json.loads(query.stdout)["prediction"]).reshape(-1)
    expected = model.predict({k: np.asarray(v)[:5] for k, v in inputs.items()}, verbose=0).reshape(-1)
    np.testing.assert_allclose(served, expected, atol=1e-5)


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


def test_the_same_errors_in_process_and_debug_shows_the_exception(tmp_path, capsys):
    from tfrec.cli import main
    from tfrec.config import ConfigError

    assert main(["export", "--model", str(tmp_path / "no_model"), "--export-base", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tfrec export: error: no saved model at") and "--debug" in err[0]
    (tmp_path / "run.yaml").write_text("data: {train: x.csv}\nlabels: click\nmodel: {name: DeepFM}\n")
    with pytest.raises(ConfigError, match="model.name: unknown model 'DeepFM'"):
        main(["train", "--config", str(tmp_path / "run.yaml"), "--debug"])
    with pytest.raises(ConfigError):
        main(["--debug", "train", "--config", str(tmp_path / "run.yaml")])


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


def test_ctrl_c_stops_the_demo_and_removes_its_temporary_directory(tmp_path):
    process = subprocess.Popen(TFREC + ["demo", "--users", "200", "--items", "100", "--events-per-user", "10",
                                        "--epochs", "200"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env=dict(os.environ, TMPDIR=str(tmp_path)))
    workdir = None
    for line in process.stdout:
        if line.startswith("working in "):
            workdir = Path(line.split("working in ", 1)[1].strip())
        if "Epoch 2/" in line:
            break
    assert workdir is not None and workdir.is_dir()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "tfrec demo: interrupted" in err
    assert not workdir.exists()
