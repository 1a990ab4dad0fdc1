"""Entire Space Multi-task Model (Ma et al., SIGIR 2018), DeepCTR 0.9.4's signature.

inputs -> embeddings shared by two towers -> pCTR = f_ctr(x), pCVR = f_cvr(x) ->
pCTCVR = pCTR x pCVR. Both supervised outputs, pCTR (label: click) and pCTCVR (label: click and
conversion), are defined on every impression, so training over the entire impression space
learns pCVR without the sample selection bias of fitting it on clicked impressions only.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns import FeatureEncoder

from .multitask import check_tasks, task_seed, task_tower
from .base import RecModel

CVR = "cvr"


def ESMM(dnn_feature_columns, tower_dnn_hidden_units=(256, 128, 64), l2_reg_embedding=0.00001, l2_reg_dnn=0,
         seed=1024, dnn_dropout=0, dnn_activation="relu", dnn_use_bn=False, task_types=("binary", "binary"),
         task_names=("ctr", "ctcvr")):
    """Builds ESMM as a Keras functional model.

    Args:
      dnn_feature_columns: all feature columns; both towers read every feature.
      tower_dnn_hidden_units: MLP sizes of the CTR and of the CVR tower.
      task_types: must be ("binary", "binary").
      task_names: the names of the pCTR and the pCTCVR outputs; "cvr" is reserved.
      The rest as in DeepCTR: L2 penalties, seed, dropout, activation, batch norm of the MLPs.

    Returns:
      A tf.keras.Model from a dict of raw features to [pCTR, pCTCVR], each (batch, 1), named by
      `task_names`. pCVR is the layer "cvr": `model.get_layer("cvr").output` (export it with
      `extra_outputs=["cvr"]`). Train with binary cross-entropy on both outputs over all
      impressions (labels: click, and click * conversion).

    Raises:
      ValueError: not exactly two tasks, a task type other than "binary", or bad task names.
    """
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed, pack_small_tables=True)
    task_types, task_names = check_tasks(task_types, task_names, "ESMM", features=encoder.features,
                                         reserved=(CVR,))
    if len(task_names) != 2:
        raise ValueError(f"ESMM: needs exactly two tasks (the CTR and the CTCVR output), got {task_names}")
    if any(task_type != "binary" for task_type in task_types):
        raise ValueError(f"ESMM: both tasks must be 'binary' (they are probabilities), got {task_types}")
    ctr_name, ctcvr_name = task_names
    dnn_input = encoder.dnn_input()                                                              # (B, F)

    tower = dict(hidden_units=tower_dnn_hidden_units, activation=dnn_activation, l2_reg=l2_reg_dnn,
                 dropout_rate=dnn_dropout, use_bn=dnn_use_bn)
    ctr = task_tower(dnn_input, "binary", ctr_name, seed=task_seed(seed, 0), **tower)            # (B, 1)
    cvr = task_tower(dnn_input, "binary", CVR, seed=task_seed(seed, 1), **tower)                 # (B, 1)
    ctcvr = tf.keras.layers.Multiply(name=ctcvr_name)([ctr, cvr])                                # (B, 1)
    return RecModel(inputs=encoder.features, outputs=[ctr, ctcvr], name="esmm")
