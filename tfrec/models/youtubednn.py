"""YouTube DNN candidate generation (Covington et al., RecSys 2016), DeepMatch 0.3.2's signature.

user features and the mean-pooled watch history -> user DNN -> user vector; the item tower is
the item's embedding; both L2-normalised, trained with a sampled softmax over the item table.
The baseline every retrieval figure is compared against.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

from ..layers import DNN
from ..layers.retrieval import L2Normalize
from .two_tower import USER_EMBEDDING, TwoTowerBuilder


def YoutubeDNN(user_feature_columns, item_feature_columns, user_dnn_hidden_units=(64, 32), dnn_activation="relu",
               dnn_use_bn=False, l2_reg_dnn=0, l2_reg_embedding=1e-6, dnn_dropout=0, output_activation="linear",
               temperature=0.05, sampler_config=None, seed=1024):
    """Builds YoutubeDNN as a `TwoTowerModel`.

    Args:
      user_feature_columns: user features, e.g. user_id, gender and VarLenSparseFeat
        `hist_movie_id` (pooled with its combiner) on the item table (`embedding_name`).
      item_feature_columns: [SparseFeat item id]; its embedding_dim must equal the last of
        `user_dnn_hidden_units`.
      temperature: divides the cosine logits of the sampled softmax. DeepMatch's default 0.05
        is not always the best: on tests/tfrec/test_mind.py's planted data (1,000 users, 16-d, 6
        epochs) recall@50 is 0.512 at 0.05 and 0.570 at 0.1. Tune it before comparing models.
      sampler_config: a `tfrec.utils.NegativeSampler`; None is in-batch negatives without counts.
      The rest as DeepMatch's: the user DNN, L2 penalties, dropout, seed.

    Returns:
      A TwoTowerModel whose output is the per-example loss (batch, 1), with `user_tower`,
      `item_tower` and DeepMatch's `user_input` / `user_embedding` / `item_input` /
      `item_embedding`.
    """
    towers = TwoTowerBuilder(user_feature_columns, item_feature_columns, l2_reg_embedding, seed, "YoutubeDNN")
    items = towers.item_vectors(sampler_config)
    user_input = towers.encoder.dnn_input(exclude=[towers.item_name])
    hidden = DNN(user_dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn,
                 output_activation=output_activation, seed=seed, name="user_dnn")(user_input)
    user = L2Normalize(name=USER_EMBEDDING)(hidden)
    return towers.build(user, items, temperature)
