"""Turns trained tf.keras models into what TensorFlow Serving loads.

* `export_saved_model`: `export_base/<version>/` with a `serving_default` signature over raw
  features, written atomically, with `assets.extra/tf_serving_warmup_requests`.
* `write_model_config` / `read_model_config`: TF Serving's `--model_config_file`.
* `export_retrieval`: a two-tower model as `export_base/<version>/` returning the top-k
  candidate ids and scores for raw user features (ScaNN or brute-force index), with a
  brute-force twin, the user tower and the item vectors beside it.
* `export_from_chief`: the same, from the chief of a `tf.distribute` run (sharded tables whole).
* `write_saved_model_version`: the shared back end (atomic version + warm-up) for exporters
  of other kinds of model.
"""
import feature_columns._legacy_keras  # noqa: F401

from exporters.layout import existing_versions, next_version, version_directories
from exporters.model_config import model_server_config, read_model_config, write_model_config
from exporters.saved_model import (SERVING_SIGNATURE, export_from_chief, export_saved_model,
                                   write_saved_model_version)
from exporters.retrieval import RetrievalExport, export_retrieval, item_id_feature
from exporters.warmup import WARMUP_DIR, WARMUP_FILE, read_warmup_requests

__all__ = [
    "RetrievalExport",
    "SERVING_SIGNATURE",
    "WARMUP_DIR",
    "WARMUP_FILE",
    "existing_versions",
    "export_from_chief",
    "export_retrieval",
    "export_saved_model",
    "model_server_config",
    "next_version",
    "read_model_config",
    "read_warmup_requests",
    "version_directories",
    "write_model_config",
    "write_saved_model_version",
]
