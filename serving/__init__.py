"""Serving tfrec exports over TensorFlow Serving's gRPC and REST APIs.

`Client` (gRPC) and `RestClient` (REST) query TF Serving — the real tensorflow_model_server or
`python -m serving.server`, a TF-Serving-2.20-compatible server for local use and tests.
`LocalServer` runs that server in a subprocess. Both clients raise `ServingError`.
Templates for deploying exports on the real TensorFlow Serving live in serving/deploy/.

Retrieval exports with a ScaNN index (`exporters.export_retrieval`) contain ScaNN's custom ops:
`python -m serving.server` imports `scann` before it loads any model, so it serves them; the
official `tensorflow/serving` image does not ("Op type not registered 'Scann>...'") and needs
a TF Serving build linked with ScaNN's ops, or the stock-op `<name>_brute_force` export written
beside every retrieval export (serving/deploy/README.md, "Which exports run where").
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

from serving.client import Client, RestClient, ServingError
from serving.local import LocalServer

__all__ = ["Client", "RestClient", "ServingError", "LocalServer"]
