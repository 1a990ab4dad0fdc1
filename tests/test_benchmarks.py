"""The benchmark scripts' own code, cheaply: every module imports, and the stand-in model of
bench_retrieval's ScaNN part still exports (it once lacked an attribute `export_retrieval` reads,
and the part failed unnoticed). Their figures come from running them; nothing here runs one."""
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("name", sorted(module.name for module in pkgutil.iter_modules([str(BENCHMARKS)])))
def test_benchmark_module_imports(name):
    importlib.import_module(f"benchmarks.{name}")


def test_scann_benchmarks_stand_in_model_exports_and_answers_exact_top_k(tmp_path):
    from benchmarks.bench_retrieval import clustered_vectors, identity_two_tower
    from exporters import export_retrieval
    from tfrec.metrics import top_k_indices

    vectors, queries = clustered_vectors(dict(candidates=400, queries=8, points_per_cluster=50))
    candidates = pd.DataFrame({"item_id": np.arange(len(vectors), dtype=np.int64)})
    export = export_retrieval(identity_two_tower(vectors), str(tmp_path / "identity"), candidates, k=10,
                              warmup_inputs={"query": queries[:3]})
    served = tf.saved_model.load(export.path).signatures["serving_default"](query=tf.constant(queries))
    np.testing.assert_array_equal(served["item_ids"].numpy(), top_k_indices(queries @ vectors.T, 10))
