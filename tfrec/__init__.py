"""tfrec: recommender models on TensorFlow 2.20 + tf-keras, from feature columns to TF Serving.

Importing tfrec makes `tf.keras` mean tf-keras (Keras 2); see feature_columns._legacy_keras.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

from . import optimizers, utils  # noqa: F401,E402  (registers LazyAdam and sampledsoftmaxloss for load_model)
from .saving import load_model  # noqa: E402

__version__ = "0.1.0"
