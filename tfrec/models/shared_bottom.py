"""Shared-Bottom multi-task network (hard parameter sharing; Caruana 1997, Ruder 2017),
DeepCTR 0.9.4's signature: the baseline the gated models (MMOE, PLE) are judged against.

inputs -> embeddings -> one bottom MLP shared by all tasks -> a tower per task -> prediction
named by the task.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import FeatureEncoder

from ..layers import DNN
from .multitask import check_tasks, task_seed, task_tower
from .base import RecModel


def SharedBottom(dnn_feature_columns, bottom_dnn_hidden_units=(256, 128), tower_dnn_hidden_units=(64,),
                 l2_reg_embedding=0.00001, l2_reg_dnn=0, seed=1024, dnn_dropout=0, dnn_activation="relu",
                 dnn_use_bn=False, task_types=("binary", "binary"), task_names=("ctr", "ctcvr")):
    """Builds Shared-Bottom as a Keras functional model.

    Args:
      dnn_feature_columns: all feature columns.
      bottom_dnn_hidden_units: the shared bottom MLP's sizes (may be empty: towers on embeddings).
      tower_dnn_hidden_units: each task tower's MLP sizes (may be empty).
      task_types: "binary" or "regression" per task; may be mixed.
      task_names: one unique name per task; outputs are named by them.
      The rest as in DeepCTR: L2 penalties, seed, dropout, activation, batch norm of the MLPs.

    Returns:
      A tf.keras.Model from a dict of raw features to one (batch, 1) output per task, named by
      `task_names`, in that order.

    Raises:
      ValueError: bad tasks (see `check_tasks`).
    """
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed, pack_small_tables=True)
    task_types, task_names = check_tasks(task_types, task_names, "SharedBottom", features=encoder.features)
    shared = encoder.dnn_input()                                                                 # (B, F)
    if bottom_dnn_hidden_units:
        shared = DNN(bottom_dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn, seed=seed,
                     name="shared_bottom")(shared)                                               # (B, D)
    outputs = [task_tower(shared, task_type, task_name, tower_dnn_hidden_units, dnn_activation, l2_reg_dnn,
                          dnn_dropout, dnn_use_bn, task_seed(seed, index))
               for index, (task_type, task_name) in enumerate(zip(task_types, task_names))]
    return RecModel(inputs=encoder.features, outputs=outputs, name="shared_bottom")
