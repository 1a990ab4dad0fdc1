"""saved_model_cli, shipped with TensorFlow, is the independent check of a real SavedModel."""
import feature_columns._legacy_keras  # noqa: F401

import re

import numpy as np

from tests.conftest import run_saved_model_cli
from tests.exporters.test_saved_model import expected_outputs


def saved_model_cli(*args):
    completed = run_saved_model_cli(*args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def tensor_infos(show_output, kind):
    """{name: (dtype, shape)} of the serving_default inputs or outputs in `show --all`."""
    section = show_output.split("signature_def['serving_default']:")[1].split("signature_def[")[0]
    return {name: (dtype, shape) for name, dtype, shape in re.findall(
        kind + r"\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([-\d, ]*\))", section)}


def test_show_lists_the_signature_inputs_and_outputs(exported):
    shown = saved_model_cli("show", "--all", "--dir", exported)

    assert tensor_infos(shown, "inputs") == {
        "user": ("DT_STRING", "(-1)"),
        "hist_item_id": ("DT_INT64", "(-1, -1)"),
        "price": ("DT_FLOAT", "(-1)"),
        "context": ("DT_FLOAT", "(-1, 3)"),
    }
    assert tensor_infos(shown, "outputs") == {
        "ctr": ("DT_FLOAT", "(-1)"),
        "cvr": ("DT_FLOAT", "(-1)"),
        "ctr_logit": ("DT_FLOAT", "(-1)"),
        "shared": ("DT_FLOAT", "(-1, 8)"),
    }
    assert "Method name is: tensorflow/serving/predict" in shown


def test_run_prints_what_the_keras_model_predicts(exported, tiny_model):
    rows = {"user": ["carol", "nobody"], "hist_item_id": [[3, 1, 4, 1], [5, 0, 0, 0]],
            "price": [0.25, 4.0], "context": [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]}
    printed = saved_model_cli(
        "run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default",
        "--input_exprs", ";".join(f"{name}={values!r}" for name, values in rows.items()))

    results = dict(re.findall(r"Result for output key (\w+):\n\[([^\]]*)\]", printed))
    for name in ("ctr", "cvr", "ctr_logit"):
        np.testing.assert_allclose(np.array(results[name].split(), dtype=float),
                                   expected_outputs(tiny_model, rows)[name], atol=1e-6)
