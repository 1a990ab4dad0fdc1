"""Multi-Interest Network with Dynamic Routing (Li et al., CIKM 2019), DeepMatch 0.3.2's signature.

history embeddings -> B2I dynamic routing -> k_max interest capsules (K'_u of them active with
dynamic_k) -> each capsule concatenated with the user's other features -> user DNN -> k_max
interest vectors (the served user embedding, with its interest mask). In training, label-aware
attention of the target item over the interests gives the one user vector the sampled softmax
scores; at serving there is no target, and a search scores an item by its best interest.

Measured on planted multi-interest data (`make_retrieval_data(num_users=1000, num_items=1000,
events_per_user=40)`, seeds 0, 1, 2; 16-d, 6 epochs, in-batch negatives with logQ), recall@50:
MIND (k_max=2, dynamic_k) 0.583 0.585 0.589, YoutubeDNN 0.512 0.496 0.475, popularity 0.222
0.184 0.214, oracle 0.806 0.820 0.838. MIND with k_max=1 reaches 0.581 0.570 0.577, so most of
the lead over YoutubeDNN is not the second interest. The behaviour vectors S e_i do cluster by
category (mean cosine 0.64 within one, 0.07 across), but they stay short (mean length 0.6; the
routing sees them through a stop-gradient, so nothing makes them longer), and at that scale the
routing updates u_j . c_i are too small for 3 iterations to group a history's events by
category: a capsule's top category holds 48% of its routing weight, against 47% with no grouping
(zero logits), and a user's two capsules keep a mean cosine of ~0.8.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat

from ..layers import DNN
from ..layers.capsules import CapsuleLayer, InterestMask, LabelAwareAttention, MaskInterests
from .two_tower import INTEREST_MASK, USER_EMBEDDING, TwoTowerBuilder

__all__ = ["MIND"]


def MIND(user_feature_columns, item_feature_columns, k_max=2, p=100, dynamic_k=False, user_dnn_hidden_units=(64, 32),
         dnn_activation="relu", dnn_use_bn=False, l2_reg_dnn=0, l2_reg_embedding=1e-6, dnn_dropout=0,
         output_activation="linear", sampler_config=None, seed=1024, temperature=1.0):
    """Builds MIND as a `TwoTowerModel`.

    Args:
      user_feature_columns: user features; must hold VarLenSparseFeat `hist_<item>` (the
        behaviour sequence routed into interests) on the item table (`embedding_name`). Every
        other user feature (profile SparseFeats, DenseFeats, other sequences pooled with their
        combiner) is concatenated to each interest capsule.
      item_feature_columns: [SparseFeat item id]; its embedding_dim must equal the last of
        `user_dnn_hidden_units`.
      k_max: the number of interest capsules.
      p: the power of the label-aware attention; p >= 100 is hard attention (the interest
        closest to the target).
      dynamic_k: give a user with n events max(1, min(k_max, floor(log2(n)))) interests
        instead of k_max; the others are masked in the attention and zero in the served
        interests.
      sampler_config: a `tfrec.utils.NegativeSampler`; None is in-batch negatives without counts.
      The rest as DeepMatch's: the user DNN, L2 penalties, dropout, seed.
      temperature: divides the logits of the sampled softmax (a trailing keyword, not DeepMatch's:
        the shared two-tower loss takes one). The default 1.0 keeps DeepMatch's MIND, whose
        logits are plain dot products with unnormalised user vectors; the item tower here gives
        L2-normalised items, so a logit is |interest| * cosine and the interests' length is the
        learnt inverse temperature.

    Returns:
      A TwoTowerModel whose output is the per-example loss (batch, 1). Its `user_tower` returns
      [interests (batch, k_max, d) (layer "user_embedding", zero where inactive), interest mask
      (batch, k_max) float32 (layer "interest_mask", 1.0 on the active interests)]; `item_tower`
      the L2-normalised item vectors (batch, d). Retrieve by max over active interests of
      <interest, item>. DeepMatch's `user_input` / `user_embedding` / `item_input` /
      `item_embedding` attributes work too.
    """
    towers = TwoTowerBuilder(user_feature_columns, item_feature_columns, l2_reg_embedding, seed, "MIND")
    items = towers.item_vectors(sampler_config)
    encoder = towers.encoder
    history = encoder.history([towers.item_name], model="MIND")
    behaviours = history.keys                                                             # e_i (B, T, E)
    embedding_dim, max_len = int(behaviours.shape[-1]), encoder.columns[history.names[0]].maxlen

    interest_mask = InterestMask(k_max, dynamic_k, name=INTEREST_MASK)(history.mask)       # (B, K)
    capsules = CapsuleLayer(embedding_dim, embedding_dim, max_len, k_max, seed=seed, name="interest_capsules")(
        behaviours, history.mask, interest_mask)                                          # (B, K, E)

    # The user's other features, the same for every interest (DeepMatch tiles them k_max times).
    others = [name for name in encoder.names((SparseFeat, VarLenSparseFeat, DenseFeat))
              if name not in [towers.item_name] + history.names]
    user_input = capsules
    if others:
        profile = tf.keras.layers.RepeatVector(k_max, name="profile_per_interest")(
            encoder.dnn_input(exclude=[towers.item_name] + history.names))
        user_input = tf.keras.layers.Concatenate(axis=-1, name="interest_with_profile")([profile, capsules])
    hidden = DNN(user_dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn,
                 output_activation=output_activation, seed=seed, name="user_dnn")(user_input)  # (B, K, d)
    interests = MaskInterests(name=USER_EMBEDDING)(hidden, interest_mask)

    item_vectors = items[0]                                                               # (B, d)
    training_user = LabelAwareAttention(k_max, p, name="label_aware_attention")(interests, item_vectors,
                                                                                interest_mask)
    return towers.build(interests, items, temperature, training_user=training_user)
