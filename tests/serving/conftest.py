"""Session fixtures of the serving tests: the SavedModels of tests/serving/saved_models.py."""
import pytest

from tests.serving.saved_models import build_saved_models


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory):
    """Root directory holding toy/{1,2}, keras/1, tf1/1 and batchy/1 (see saved_models.py)."""
    root = tmp_path_factory.mktemp("serving_models")
    build_saved_models(root)
    return root
