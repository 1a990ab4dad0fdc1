"""The README's Python examples, run as a reader copies them: in order, in one namespace, from a
fresh folder, with the README's `tfrec serve` flags given to the real server on a free port."""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def example(name):
    match = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", README, re.S)
    assert match, f"README.md lost its example {name}"
    return match.group(1)


def run(name, scope):
    exec(compile(example(name), f"README.md ({name})", "exec"), scope)
    return scope


@pytest.fixture(scope="module")
def scope(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.chdir(tmp_path_factory.mktemp("reader"))
    return {}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_deepctr_style_din_trains_on_its_raw_strings(scope):
    run("readme-din", scope)
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


def test_the_din_is_exported_served_with_the_readmes_flags_and_answers_as_in_process(scope):
    from serving import LocalServer

    run("readme-export", scope)
    command = re.search(r"^tfrec serve (.*)$", README, re.M).group(1)
    flags = dict(flag.lstrip("-").split("=", 1) for flag in shlex.split(command))
    assert {"port", "rest_api_port"} <= set(flags)  # LocalServer picks free ports for these two
    with LocalServer(model_base_path=flags["model_base_path"], model_name=flags["model_name"]) as server:
        query = example("readme-query").replace(f"127.0.0.1:{flags['port']}", server.grpc_target)
        exec(compile(query, "README.md (readme-query)", "exec"), scope)
    request = {"user_id": np.array(["u1"]), "item_id": np.array(["i2"]), "hist_item_id": np.array([["i1", "i3"]]),
               "seq_length": np.array([2])}
    np.testing.assert_allclose(scope["scores"], scope["model"].predict(request, verbose=0)[:, 0], atol=1e-6)
