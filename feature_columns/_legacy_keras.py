"""Makes `tf.keras` mean tf-keras (Keras 2) before TensorFlow is first imported.

TFRS and ScaNN's Keras layer need Keras 2, while TensorFlow 2.20 defaults to Keras 3.
`tf.keras` resolves lazily on first attribute access and reads `TF_USE_LEGACY_KERAS`
then, so setting the variable here works as long as nothing has touched `tf.keras` yet.
Every tfrec package imports this module before its first TensorFlow import.
"""
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_keras_2():
    if "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    keras_module = tf.keras.__name__
    if not keras_module.startswith("tf_keras"):
        raise ImportError(
            "tfrec needs Keras 2 (tf-keras), but TensorFlow was already imported with Keras 3 "
            f"(tf.keras is {keras_module}). Import tfrec (or feature_columns) before TensorFlow, "
            "or set the environment variable TF_USE_LEGACY_KERAS=1 before starting Python, "
            "and make sure tf-keras==2.20.* is installed."
        )


_check_keras_2()
