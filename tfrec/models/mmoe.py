"""Multi-gate Mixture-of-Experts (Ma et al., KDD 2018), DeepCTR 0.9.4's signature.

inputs -> embeddings -> shared experts f_1..f_n -> per task k: gate g^k(x) = softmax(W_k x),
mixture sum_i g^k_i(x) f_i(x) -> tower h^k -> prediction named by the task.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import FeatureEncoder

from ..layers.core import check_positive_int
from ..layers.experts import ExpertGate, ExpertMixture, Experts
from .multitask import check_tasks, task_seed, task_tower
from .base import RecModel


def MMOE(dnn_feature_columns, num_experts=3, expert_dnn_hidden_units=(256, 128), tower_dnn_hidden_units=(64,),
         gate_dnn_hidden_units=(), l2_reg_embedding=0.00001, l2_reg_dnn=0, seed=1024, dnn_dropout=0,
         dnn_activation="relu", dnn_use_bn=False, task_types=("binary", "binary"), task_names=("ctr", "ctcvr")):
    """Builds MMoE as a Keras functional model.

    Args:
      dnn_feature_columns: all feature columns; every feature feeds the experts and gates.
      num_experts: number of shared experts (>= 1).
      expert_dnn_hidden_units: each expert's MLP sizes (at least one layer).
      tower_dnn_hidden_units: each task tower's MLP sizes (may be empty).
      gate_dnn_hidden_units: MLP sizes before each gate's softmax (may be empty).
      task_types: "binary" or "regression" per task; may be mixed.
      task_names: one unique name per task; outputs are named by them.
      The rest as in DeepCTR: L2 penalties, seed, dropout, activation, batch norm of the MLPs.

    Returns:
      A tf.keras.Model from a dict of raw features to one (batch, 1) output per task, named by
      `task_names`, in that order. The gates are layers "gate_<task>" (see `gate_model`).

    Raises:
      ValueError: bad tasks (see `check_tasks`) or num_experts < 1.
    """
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed, pack_small_tables=True)
    task_types, task_names = check_tasks(task_types, task_names, "MMOE", features=encoder.features)
    check_positive_int(num_experts, "num_experts", "MMOE")
    dnn_input = encoder.dnn_input()                                                          # (B, F)

    experts = Experts(num_experts, expert_dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout,
                      dnn_use_bn, seed=seed, name="experts")(dnn_input)                      # (B, n, D)
    outputs = []
    for index, (task_type, task_name) in enumerate(zip(task_types, task_names)):
        gate = ExpertGate(num_experts, gate_dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout,
                          dnn_use_bn, seed=task_seed(seed, index), name="gate_" + task_name)(dnn_input)  # (B, n)
        mixture = ExpertMixture(name="mixture_" + task_name)(experts, gate)                  # (B, D)
        outputs.append(task_tower(mixture, task_type, task_name, tower_dnn_hidden_units, dnn_activation,
                                  l2_reg_dnn, dnn_dropout, dnn_use_bn, task_seed(seed, index)))
    return RecModel(inputs=encoder.features, outputs=outputs, name="mmoe")
