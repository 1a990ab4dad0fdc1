"""Serving tfrec exports over TensorFlow Serving's gRPC and REST APIs.

`Client` (gRPC) and `RestClient` (REST) query TF Serving — the real tensorflow_model_server or
`python -m serving.server`, a TF-Serving-2.20-compatible server for local use and tests.
`LocalServer` runs that server in a subprocess. Both clients raise `ServingError`.
Templates for deploying exports on the real TensorFlow Serving live in serving/deploy/.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

from serving.client import Client, RestClient, ServingError
from serving.local import LocalServer

__all__ = ["Client", "RestClient", "ServingError", "LocalServer"]
