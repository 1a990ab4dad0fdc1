"""tfrec: recommender models on TensorFlow 2.20 + tf-keras, from feature columns to TF Serving.

Importing tfrec makes `tf.keras` mean tf-keras (Keras 2); see feature_columns._legacy_keras.
It also makes Keras' random layers (Dropout, the dropout of LSTM and MultiHeadAttention) draw from
`tf.random.Generator` states: the train step is XLA-compiled, and XLA ignores the seeds of TF's
legacy stateful random ops and draws from one process-wide state instead, so a seeded `fit` would
depend on what the process compiled and ran before it.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

tf.keras.backend.experimental.enable_tf_random_generator()

from . import optimizers, utils  # noqa: F401,E402  (registers LazyAdam and sampledsoftmaxloss for load_model)
from .saving import load_model  # noqa: E402

__version__ = "0.1.0"
