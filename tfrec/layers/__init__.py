"""Keras layers the models are composed of. All are registered, so `custom_objects` is optional."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns.layers import (RecentSequence, RowOffset, SequencePooling, SparseEmbedding, SparseIndex,
                                    TakePositions)

from .attention import AttentionSequencePooling, LocalActivationUnit
from .core import DNN, Dice, PredictionLayer, activation_layer

# DeepCTR users pass this to load_model; every layer is registered, so it is optional.
custom_objects = {
    cls.__name__: cls
    for cls in (AttentionSequencePooling, LocalActivationUnit, DNN, Dice, PredictionLayer,
                RecentSequence, RowOffset, SequencePooling, SparseEmbedding, SparseIndex, TakePositions)
}

__all__ = ["AttentionSequencePooling", "LocalActivationUnit", "DNN", "Dice", "PredictionLayer",
           "RecentSequence", "RowOffset", "SequencePooling", "SparseEmbedding", "SparseIndex", "TakePositions",
           "activation_layer",
           "custom_objects"]

from .experts import ExpertGate, ExpertMixture, Experts, gate_model  # noqa: E402

custom_objects.update({cls.__name__: cls for cls in (ExpertGate, ExpertMixture, Experts)})
__all__ += ["ExpertGate", "ExpertMixture", "Experts", "gate_model"]

from .search import RelevancePooling, SimHashSearch, SoftSearch, TargetAttention, TimeGapEmbedding  # noqa: E402

custom_objects.update({cls.__name__: cls for cls in (RelevancePooling, SimHashSearch, SoftSearch, TargetAttention,
                                                     TimeGapEmbedding)})
__all__ += ["RelevancePooling", "SimHashSearch", "SoftSearch", "TargetAttention", "TimeGapEmbedding"]

from .clsr import (HistoryMean, HistoryRNN, InterestContrastiveLoss, InterestFusion,  # noqa: E402
                   InterestFusionGate, LongTermInterest, LongTermWeight, ShortTermInterest)

custom_objects.update({cls.__name__: cls for cls in (HistoryMean, HistoryRNN, InterestContrastiveLoss, InterestFusion,
                                                     InterestFusionGate, LongTermInterest, LongTermWeight,
                                                     ShortTermInterest)})
__all__ += ["HistoryMean", "HistoryRNN", "InterestContrastiveLoss", "InterestFusion", "InterestFusionGate",
            "LongTermInterest", "LongTermWeight", "ShortTermInterest"]

from .retrieval import L2Normalize, NegativeSampling, SampledSoftmax  # noqa: E402

custom_objects.update({cls.__name__: cls for cls in (L2Normalize, NegativeSampling, SampledSoftmax)})
__all__ += ["L2Normalize", "NegativeSampling", "SampledSoftmax"]

from .capsules import CapsuleLayer, InterestMask, LabelAwareAttention, MaskInterests  # noqa: E402

custom_objects.update({cls.__name__: cls for cls in (CapsuleLayer, InterestMask, LabelAwareAttention, MaskInterests)})
__all__ += ["CapsuleLayer", "InterestMask", "LabelAwareAttention", "MaskInterests"]

from .sdm import GatedFusion, SessionSelfAttention, StackedLSTM, UserAttention  # noqa: E402

custom_objects.update({cls.__name__: cls for cls in (GatedFusion, SessionSelfAttention, StackedLSTM, UserAttention)})
__all__ += ["GatedFusion", "SessionSelfAttention", "StackedLSTM", "UserAttention"]
