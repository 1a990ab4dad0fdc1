"""Progressive Layered Extraction (Tang et al., RecSys 2020), DeepCTR 0.9.4's signature.

inputs -> embeddings -> `num_levels` stacked extraction networks (Customized Gate Control):
at level j, task k's experts read task k's input, the shared experts read the shared input;
task k's gate fuses its own experts with the shared ones, and below the last level a
shared gate fuses all experts into the next level's shared input. The last level's task
outputs feed one tower per task -> prediction named by the task.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import FeatureEncoder

from ..layers.core import check_positive_int
from ..layers.experts import ExpertGate, ExpertMixture, Experts
from .multitask import check_tasks, task_seed, task_tower
from .base import RecModel

SHARED = "shared"


def PLE(dnn_feature_columns, shared_expert_num=1, specific_expert_num=1, num_levels=2,
        expert_dnn_hidden_units=(256,), tower_dnn_hidden_units=(64,), gate_dnn_hidden_units=(),
        l2_reg_embedding=0.00001, l2_reg_dnn=0, seed=1024, dnn_dropout=0, dnn_activation="relu",
        dnn_use_bn=False, task_types=("binary", "binary"), task_names=("ctr", "ctcvr")):
    """Builds PLE as a Keras functional model.

    Args:
      dnn_feature_columns: all feature columns; every feature feeds the first level.
      shared_expert_num: shared experts per level (>= 1).
      specific_expert_num: experts of each task per level (>= 1).
      num_levels: stacked extraction networks (>= 1; 1 is CGC alone).
      expert_dnn_hidden_units: each expert's MLP sizes (at least one layer).
      tower_dnn_hidden_units: each task tower's MLP sizes (may be empty).
      gate_dnn_hidden_units: MLP sizes before each gate's softmax (may be empty).
      task_types: "binary" or "regression" per task; may be mixed.
      task_names: one unique name per task ("shared" is reserved); outputs are named by them.
      The rest as in DeepCTR: L2 penalties, seed, dropout, activation, batch norm of the MLPs.

    Returns:
      A tf.keras.Model from a dict of raw features to one (batch, 1) output per task, named by
      `task_names`, in that order. Gates are layers "level_<j>_gate_<task>" over
      specific_expert_num + shared_expert_num experts (own first, then shared) and, below the
      last level, "level_<j>_gate_shared" over all experts (tasks' in task order, then shared).

    Raises:
      ValueError: bad tasks (see `check_tasks`) or an expert/level count < 1.
    """
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed, pack_small_tables=True)
    task_types, task_names = check_tasks(task_types, task_names, "PLE", features=encoder.features)
    if SHARED in task_names:
        raise ValueError(f"PLE: task name '{SHARED}' is reserved for the shared experts and gate")
    for value, name in ((shared_expert_num, "shared_expert_num"), (specific_expert_num, "specific_expert_num"),
                        (num_levels, "num_levels")):
        check_positive_int(value, name, "PLE")
    mlp = dict(activation=dnn_activation, l2_reg=l2_reg_dnn, dropout_rate=dnn_dropout, use_bn=dnn_use_bn)

    def extraction_network(task_inputs, shared_input, level, is_last):
        """One CGC level: task inputs (B, F) each and the shared input (B, F) -> the task
        outputs (B, D) each and, unless `is_last`, the next shared input (B, D)."""
        prefix = f"level_{level}_"
        # A seed per expert group (tasks', then shared), so no two groups start from equal weights.
        group_seeds = [seed + 1009 * (level * (len(task_names) + 1) + k) for k in range(len(task_names) + 1)]
        task_experts = [Experts(specific_expert_num, expert_dnn_hidden_units, seed=group_seed,
                                name=prefix + "experts_" + name, **mlp)(x)                       # (B, s, D)
                        for name, x, group_seed in zip(task_names, task_inputs, group_seeds)]
        shared_experts = Experts(shared_expert_num, expert_dnn_hidden_units, seed=group_seeds[-1],
                                 name=prefix + "experts_" + SHARED, **mlp)(shared_input)         # (B, m, D)
        task_outputs = []
        for index, (name, x, own_experts) in enumerate(zip(task_names, task_inputs, task_experts)):
            gate = ExpertGate(specific_expert_num + shared_expert_num, gate_dnn_hidden_units,
                              seed=task_seed(seed, index), name=prefix + "gate_" + name, **mlp)(x)  # (B, s+m)
            task_outputs.append(ExpertMixture(name=prefix + "mixture_" + name)(
                [own_experts, shared_experts], gate))                                            # (B, D)
        if is_last:
            return task_outputs, None
        gate = ExpertGate(len(task_names) * specific_expert_num + shared_expert_num, gate_dnn_hidden_units,
                          seed=task_seed(seed, len(task_names)), name=prefix + "gate_" + SHARED,
                          **mlp)(shared_input)                                                   # (B, T*s+m)
        shared_output = ExpertMixture(name=prefix + "mixture_" + SHARED)(task_experts + [shared_experts], gate)
        return task_outputs, shared_output

    dnn_input = encoder.dnn_input()                                                              # (B, F)
    task_inputs, shared_input = [dnn_input] * len(task_names), dnn_input
    for level in range(num_levels):
        task_inputs, shared_input = extraction_network(task_inputs, shared_input, level,
                                                       is_last=level == num_levels - 1)
    outputs = [task_tower(x, task_type, task_name, tower_dnn_hidden_units, dnn_activation, l2_reg_dnn,
                          dnn_dropout, dnn_use_bn, task_seed(seed, index))
               for index, (task_type, task_name, x) in enumerate(zip(task_types, task_names, task_inputs))]
    return RecModel(inputs=encoder.features, outputs=outputs, name="ple")
