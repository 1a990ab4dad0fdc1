"""The one place tfrec loads a saved Keras model: every object tfrec registers is known there.

`model.save(path)` writes a SavedModel directory (any name), an `.h5` file or a `.keras` file.
Each names tfrec's classes differently: a SavedModel and a `.keras` file by their registered
name (`tfrec>AUC`, `tfrec>SparseIndex`, `tfrec>LazyAdam`), an `.h5` file partly by the bare
class name (`RecModel`, `sampledsoftmaxloss`). Keras resolves them only if the module that
registers each one has been imported, which a script that only imports `tfrec.layers` (as the
CLI's export once did) does not do for the metrics. `load_model` imports every registering
module and passes all of them, under both names, as `custom_objects`.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import os

import tensorflow as tf

__all__ = ["load_model", "registered_objects"]

_PACKAGE = "tfrec"


def registered_objects():
    """{name: class or function} of every custom object tfrec defines, as `custom_objects`.

    Holds each object under its registered name (`"tfrec>AUC"`) and its bare name (`"AUC"`
    is *not* overridden when Keras has a different object of that name: a bare name maps to a
    tfrec object only where Keras' own lookup would fail).
    """
    # Importing these modules registers their objects with Keras.
    import tfrec.layers  # noqa: F401
    import tfrec.metrics  # noqa: F401
    import tfrec.models  # noqa: F401
    import tfrec.optimizers  # noqa: F401
    import tfrec.utils  # noqa: F401
    import feature_columns.layers  # noqa: F401

    registered = dict(tf.keras.utils.get_custom_objects())
    objects = dict(registered)
    for name, obj in registered.items():
        package, _, bare = name.partition(">")
        if bare and package == _PACKAGE and not _is_keras_name(bare):
            objects.setdefault(bare, obj)
    return objects


def _is_keras_name(name):
    """True if Keras itself knows `name` as a metric, loss, layer or optimizer class."""
    return any(hasattr(module, name) for module in (tf.keras.metrics, tf.keras.losses, tf.keras.layers,
                                                   tf.keras.optimizers))


def load_model(path, compile=True):
    """Loads a tfrec model saved with `model.save(path)`: a SavedModel directory, `.h5` or `.keras`.

    Args:
      path: what `model.save` was given, whatever its name (`din_keras`, `din.h5`, `din.keras`).
      compile: also restore the optimizer, loss and metrics (False: inference only).

    Raises:
      FileNotFoundError: nothing exists at `path`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved model at {path!r}: give the path that model.save() "
                                "(or `tfrec train`) wrote")
    return tf.keras.models.load_model(path, custom_objects=registered_objects(), compile=compile)
