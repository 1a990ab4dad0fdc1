import feature_columns._legacy_keras  # noqa: F401

import pytest
import tensorflow as tf

import exporters
from tests.exporters.tiny_model import train_tiny_model, training_frame

EXTRA_OUTPUTS = ("ctr_logit", "shared")


@pytest.fixture(scope="session")
def tiny_model():
    return train_tiny_model()


@pytest.fixture(scope="session")
def exported(tiny_model, tmp_path_factory):
    """Version 1 of the tiny model, exported with DataFrame warm-up rows and extra outputs."""
    export_base = tmp_path_factory.mktemp("exports") / "tiny"
    return exporters.export_saved_model(
        tiny_model, export_base, warmup_inputs=training_frame(), extra_outputs=EXTRA_OUTPUTS)


@pytest.fixture(scope="session")
def loaded(exported):
    return tf.saved_model.load(exported)


@pytest.fixture(scope="session")
def serving_signature(loaded):
    # Taken from a `loaded` kept alive by its fixture: a signature outlives neither the
    # loaded object's variables nor its tables.
    return loaded.signatures["serving_default"]
