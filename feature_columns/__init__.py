"""What a feature is: DeepCTR-style columns, their Keras Inputs, in-graph lookups and embeddings.

The bottom layer of tfrec; it imports nothing else of ours. Importing it first makes `tf.keras`
mean tf-keras (Keras 2).
"""
from . import _legacy_keras  # noqa: F401  (must run before TensorFlow is imported)

from .feature_column import (DEFAULT_GROUP_NAME, HISTORY_PREFIX, DenseFeat, SparseFeat, VarLenDenseFeat,
                             VarLenSparseFeat, get_feature_names, history_name, validate_columns)
from .inputs import (ONE_HISTORY_MIN_ELEMENTS, FeatureEncoder, History, build_input_features, check_inputs,
                     history_input_names, indexed_feature, indexed_key, is_padding, look_up_rows, on_one_history,
                     serving_dtype)
from .layers import (SMALL_TABLE_MAX_SIZE, RecentSequence, RowOffset, SequencePooling, SparseEmbedding, SparseIndex,
                     TakePositions, most_recent_positions, positions_of_width, take_positions, top_k_indices)

__all__ = ["DEFAULT_GROUP_NAME", "HISTORY_PREFIX", "DenseFeat", "SparseFeat", "VarLenDenseFeat",
           "VarLenSparseFeat", "get_feature_names", "history_name", "validate_columns", "ONE_HISTORY_MIN_ELEMENTS",
           "FeatureEncoder", "History", "build_input_features", "check_inputs", "history_input_names",
           "indexed_feature", "indexed_key", "is_padding", "look_up_rows", "on_one_history", "serving_dtype",
           "SMALL_TABLE_MAX_SIZE", "RecentSequence", "RowOffset", "SequencePooling", "SparseEmbedding", "SparseIndex",
           "TakePositions", "most_recent_positions", "positions_of_width", "take_positions", "top_k_indices"]
