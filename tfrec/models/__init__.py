"""The model zoo: one file per model, DeepCTR/DeepMatch signatures."""
from .din import DIN

__all__ = ["DIN"]
