"""What a feature is: DeepCTR-style columns, their Keras Inputs, in-graph lookups and embeddings.

The bottom layer of tfrec; it imports nothing else of ours. Importing it first makes `tf.keras`
mean tf-keras (Keras 2).
"""
from . import _legacy_keras  # noqa: F401  (must run before TensorFlow is imported)

from .feature_column import (DEFAULT_GROUP_NAME, DenseFeat, SparseFeat, VarLenSparseFeat,
                             get_feature_names, validate_columns)
from .inputs import FeatureEncoder, build_input_features, indexed_key, look_up_rows
from .layers import RecentSequence, SequencePooling, SparseEmbedding, SparseIndex

__all__ = ["DEFAULT_GROUP_NAME", "DenseFeat", "SparseFeat", "VarLenSparseFeat", "get_feature_names",
           "validate_columns", "FeatureEncoder", "build_input_features", "indexed_key", "look_up_rows",
           "RecentSequence", "SequencePooling", "SparseEmbedding", "SparseIndex"]
