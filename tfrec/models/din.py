"""Deep Interest Network (Zhou et al., KDD 2018), DeepCTR 0.9.4's signature.

inputs -> embeddings (shared by the candidate and its history) -> local activation unit over the
history -> concatenation with every other feature -> DNN -> sigmoid.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

from feature_columns import FeatureEncoder

from ..layers import AttentionSequencePooling
from ..layers.core import check_task
from .base import click_prediction, history_model


def DIN(dnn_feature_columns, history_feature_list, dnn_use_bn=False, dnn_hidden_units=(256, 128, 64),
        dnn_activation="relu", att_hidden_size=(80, 40), att_activation="dice",
        att_weight_normalization=False, l2_reg_dnn=0, l2_reg_embedding=1e-6, dnn_dropout=0, seed=1024,
        task="binary"):
    """Builds DIN as a Keras functional model.

    Args:
      dnn_feature_columns: all feature columns. For every name `f` in `history_feature_list` there
        must be a SparseFeat `f` (the candidate) and a VarLenSparseFeat `hist_f` sharing its
        embedding table (`embedding_name`).
      history_feature_list: candidate features attended over their histories, e.g.
        ["item_id", "cate_id"].
      The rest as in DeepCTR: DNN and attention sizes/activations, L2 penalties, dropout, seed,
        and `task` ("binary" or "regression").

    Returns:
      A tf.keras.Model from a dict of raw features to one output named "prediction",
      shape (batch, 1).
    """
    check_task(task)
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed)
    # Candidate ("query", (B, 1, E)) and behaviour ("keys", (B, T, E)) embeddings.
    history = encoder.history(history_feature_list, model="DIN")
    interest = AttentionSequencePooling(
        att_hidden_size, att_activation, weight_normalization=att_weight_normalization, seed=seed,
        name="attention")(history.query, history.keys, history.mask)                     # (B, 1, E)

    dnn_input = encoder.dnn_input(exclude=history.names, extra=[interest])
    output = click_prediction(dnn_input, dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn,
                              seed, task)
    return history_model(encoder.features, output, history, name="din")

