"""The model zoo: one file per model, DeepCTR/DeepMatch signatures."""
from .base import RecModel, SharedHistoryModel, history_model
from .din import DIN

__all__ = ["DIN", "RecModel", "SharedHistoryModel", "history_model"]

from .esmm import ESMM  # noqa: E402
from .mmoe import MMOE  # noqa: E402
from .multitask import check_multitask_labels, compile_multitask  # noqa: E402
from .ple import PLE  # noqa: E402
from .shared_bottom import SharedBottom  # noqa: E402
from ..layers.experts import gate_model  # noqa: E402

__all__ += ["ESMM", "MMOE", "PLE", "SharedBottom", "check_multitask_labels", "compile_multitask", "gate_model"]

from .sim import SIM  # noqa: E402

__all__ += ["SIM"]

from .clsr import CLSR, interest_model, steerable_model  # noqa: E402

__all__ += ["CLSR", "interest_model", "steerable_model"]

from .two_tower import TwoTowerModel  # noqa: E402
from .youtubednn import YoutubeDNN  # noqa: E402

__all__ += ["TwoTowerModel", "YoutubeDNN"]

from .mind import MIND  # noqa: E402

__all__ += ["MIND"]

from .sdm import SDM  # noqa: E402

__all__ += ["SDM"]
