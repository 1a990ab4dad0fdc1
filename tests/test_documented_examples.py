"""The Python examples of README.md and docs/, run as a reader copies them: a document's examples
in order, in one namespace, from a fresh folder; a document's `tfrec serve` flags are given to the
real server on a free port."""
import contextlib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]


def example(name, document="README.md"):
    """The code of the ```python block after `<!-- example: name -->` in `document`."""
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", (REPO / document).read_text(), re.S)
    assert match, f"{document} lost its example {name}"
    return match.group(1)


def run(name, scope, document="README.md", server=None):
    """Runs the example `name` in the namespace `scope`; given a running `server` (its gRPC
    target, the port the document's examples name), against that server."""
    code = example(name, document)
    if server is not None:
        target, port = server
        code = code.replace(f"127.0.0.1:{port}", target)
    exec(compile(code, f"{document} ({name})", "exec"), scope)
    return scope


@pytest.fixture(scope="module", autouse=True)
def reader_folder(tmp_path_factory):
    """A fresh working folder for the examples' relative paths (models/din, exports/mind)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("reader"))
        yield


@pytest.fixture(scope="module")
def scope():
    """The README's namespace after its first example (the DIN that "Export and serve" exports),
    shared by its examples as a reader's session would be."""
    return run("readme-din", {})


def test_the_deepctr_style_din_trains_on_its_raw_strings(scope):
    scores = scope["model"].predict(scope["x"], verbose=0)
    assert scores.shape == (4, 1) and np.all((scores > 0) & (scores < 1))


def test_the_data_example_builds_din_inputs_from_a_log():
    data = run("readme-data", {})
    history = next(c for c in data["columns"] if c.name == "hist_item_id")
    assert data["x"]["hist_item_id"].shape == (len(data["train_df"]), history.maxlen) and history.maxlen <= 10
    test_df = data["test_df"]
    assert len(test_df) == 50 + test_df["click"].sum()  # each user's last event, and a negative if it is a click


def test_the_multitask_example_trains_mmoe_and_reads_its_gates():
    mmoe = run("readme-multitask", {})
    assert sorted(mmoe["gates"]) == ["gate_ctcvr", "gate_ctr"]
    for weights in mmoe["gates"].values():
        assert weights.shape == (1000, 3)
        np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-5)


@contextlib.contextmanager
def served_as_documented(document="README.md"):
    """The server started with the document's `tfrec serve` flags, on free ports: yields
    (its gRPC target, the port the document's examples name)."""
    from serving import LocalServer

    command = re.search(r"^tfrec serve (.*)$", (REPO / document).read_text(), re.M).group(1)
    flags = dict(flag.lstrip("-").split("=", 1) for flag in shlex.split(command))
    assert set(flags) <= {"port", "rest_api_port", "model_name", "model_base_path"}  # LocalServer's ports are free ones
    with LocalServer(model_base_path=flags["model_base_path"], model_name=flags["model_name"]) as server:
        yield server.grpc_target, flags["port"]


@pytest.fixture(scope="module")
def readme_server(scope):
    """The README's DIN exported by its example and served with its `tfrec serve` flags."""
    run("readme-export", scope)
    with served_as_documented() as server:
        yield server


def test_the_din_is_exported_served_with_the_readmes_flags_and_answers_as_in_process(scope, readme_server):
    run("readme-query", scope, server=readme_server)
    request = {"user_id": np.array(["u1"]), "item_id": np.array(["i2"]), "hist_item_id": np.array([["i1", "i3"]]),
               "seq_length": np.array([2])}
    in_process = scope["model"].predict(request, verbose=0)[:, 0]
    np.testing.assert_allclose(scope["scores"], in_process, atol=1e-6)
    # "tf.saved_model.load("models/din/1") is callable on one dict of raw features and answers as
    # serving_default does"
    np.testing.assert_allclose(tf.saved_model.load(scope["path"])(request)["prediction"], in_process, atol=1e-6)


def test_every_client_call_docs_serving_lists_runs_against_the_readmes_din(readme_server):
    """docs/serving.md's listing leaves `df` and `config` to the reader: rows of the README's
    features, and the served model's config in text format."""
    listing = {"df": pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i2", "i3"],
                                   "hist_item_id": [["i1", "i3"], ["i2"]], "seq_length": [2, 1]}),
               "config": 'model_config_list { config { name: "din" base_path: "%s" model_platform: "tensorflow" } }'
                         % Path("models/din").resolve()}
    run("serving-clients", listing, "docs/serving.md", server=readme_server)


def test_the_own_data_example_runs_and_scores_the_test_rows():
    run_ = SimpleNamespace(**run("behaviour-log", {}, "docs/own_data.md"))
    assert run_.scores.shape == (len(run_.test_df), 1) and np.all((run_.scores > 0) & (run_.scores < 1))
    assert run_.test_df.groupby("user_id")["click"].size().min() >= 2
    assert {c.name for c in run_.columns} == {"user_id", "item_id", "cate_id", "hist_item_id", "hist_cate_id"}
    assert len(run_.log_test) == run_.log["user_id"].nunique()


def test_the_retrieval_example_trains_mind_and_its_export_beats_popularity():
    from tfrec.data import planted_recalls

    mind = {}
    for name in ("retrieval-mind", "retrieval-export"):
        run(name, mind, "docs/retrieval.md")
    mind = SimpleNamespace(**mind)
    served = tf.saved_model.load(mind.result.path)
    answer = served(mind.df_to_inputs(mind.test, mind.user_columns))  # int32 arrays, as df_to_inputs gives them
    top50 = answer["item_ids"].numpy()[:, :50]
    assert np.isin(top50, mind.candidates_df["item_id"]).all()
    recall = (top50 == mind.test["item_id"].to_numpy()[:, None]).any(axis=1).mean()
    reference = planted_recalls(mind.log, mind.train, mind.test, k=50)
    print(f"\ndocs/retrieval.md's MIND, served recall@50 {recall:.3f}: popularity {reference['popularity']:.3f}, "
          f"oracle {reference['oracle']:.3f}")
    assert recall >= 1.8 * reference["popularity"]


def test_the_long_sequence_example_trains_sim_and_serves_one_history_for_all_candidates():
    document = "docs/long_sequences.md"
    sim = {}
    for name in ("sim-columns", "sim-fit", "sim-export"):
        run(name, sim, document)
    print(f"\n{document}'s SIM (hard search, L = 2,000), test AUC {sim['test_auc']:.4f}, "
          f"oracle {sim['oracle_auc']:.4f}")
    assert sim["test_auc"] >= 0.85 * sim["oracle_auc"]
    assert all(sim["request"][name].shape[0] == 1 for name in sim["history"])
    with served_as_documented(document) as server:
        run("sim-query", sim, document, server=server)
    np.testing.assert_allclose(sim["scores"], sim["model"].predict(sim["one_user"], verbose=0)[:, 0], atol=1e-6)


def test_the_distributed_program_runs_alone_under_mirrored_and_exports(tmp_path):
    """docs/distributed.md's train.py as `python train.py mirrored` (the cluster strategies run
    tfrec.distribute's own programs in tests/tfrec/test_distribute.py)."""
    (tmp_path / "train.py").write_text(example("train-py", "docs/distributed.md"))
    done = subprocess.run([sys.executable, "train.py", "mirrored"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    validation_aucs = [float(auc) for auc in re.findall(r"val_auc: ([0-9.]+)", done.stdout)]
    assert len(validation_aucs) == 3 and validation_aucs[-1] > 0.7, done.stdout[-2000:]  # 0.79 when written
    assert (tmp_path / "exports" / "din" / "1" / "saved_model.pb").exists()
    assert (tmp_path / "runs" / "din" / "best").is_dir()
