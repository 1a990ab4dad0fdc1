"""Multi-Interest Network with Dynamic Routing (Li et al., CIKM 2019), DeepMatch 0.3.2's signature.

history embeddings -> B2I dynamic routing -> k_max interest capsules (K'_u of them active with
dynamic_k) -> each capsule concatenated with the user's other features -> user DNN -> k_max
interest vectors (the served user embedding, with its interest mask). In training, label-aware
attention of the target item over the interests gives the one user vector the sampled softmax
scores; at serving there is no target, and a search scores an item by its best interest.

What the second interest is worth on planted multi-interest data (`make_retrieval_data(num_users=2000,
num_items=2000, events_per_user=50, seed=0)` (3 interests a user), `retrieval_samples(data, 30)`, 32-d,
user DNN (64, 32), 6 epochs, batch 256, Adam 3e-3, in-batch negatives with logQ; the config of
BENCHMARKS.md's DeepMatch table), recall@50: YoutubeDNN (temperature 0.1) 0.482; MIND k_max=2, p=100,
dynamic_k 0.477, and k_max=1 0.480, k_max=3 0.449, no dynamic_k 0.473, p 0 / 1 / 2 0.476 / 0.486 /
0.482, temperature 0.1 0.479 (with 1.0 the interests grow to length ~10: their length is the learnt
inverse temperature), merging the interests by summed softmax instead of the best score 0.477.
With 2 planted interests a user (`interests_per_user=2`, matching k_max=2): YoutubeDNN 0.611, MIND
0.603, k_max=1 0.609. So on this data MIND is a one-interest model; the planted "mixture" (0.634)
against "centroid" (0.412) is no measure of what it could reach, for two reasons:

* The routing does not group a history by interest: a user's two capsules have a mean cosine of
  0.80, and a capsule's top category holds 47% of its routing weight, as with no grouping. c_i =
  S e_i has length ~0.7, so an agreement u_j . c_i moves the logits by less than the N(0, 1)
  initial ones, which decide the split. Routing on unit c_i with 20 * cosine agreements separates
  the capsules (cosine 0.16, top category 60%) but is no better retrieval: 0.514 and, on data seed
  1, 0.505 (one interest 0.499); without dynamic_k 0.444 (one interest 0.473); on the test's smaller
  config 0.549 against 0.589. It is not used.
* A model sees the history, not the user's interest directions. Grouped by the planted interest
  that drew each event (perfect routing), one mean true item vector per group gives 0.554 against
  0.416 for one mean of the history (BENCHMARKS.md's "history interests"); in learned item spaces
  far less: 0.507 against 0.470 with YoutubeDNN's item vectors, 0.480 against 0.435 with MIND's own
  (0.494 against 0.427 with the sharper routing above, whose 0.514 is already past them).
  Learned single vectors already beat the one-mean reference (YoutubeDNN 0.482), and the learned
  item space, more than the routing, bounds what a second interest adds.

Nor does a crowded item space, where one vector cannot hold several interests, make MIND a
multi-interest model. On `make_retrieval_data(num_users=2000, num_items=2000, events_per_user=40)`
with `latent_dim=4` or `num_categories=500` (3 interests a user; `retrieval_samples(data, 30)`, user
DNN (64, d), 6 epochs, the rest as above; temperature 0.1 for every model, p=1), the planted mixture
beats the centroid by ~0.2 in every case (e.g. latent_dim 4: 0.382 against 0.185; 500 categories:
0.648 against 0.395), yet k_max=3 against k_max=1 moved recall@50 by -0.022 to +0.023, and no gain
held across a second data or model seed (embedding dim 4, latent_dim 4: 0.207 / 0.185, data seed 1
0.191 / 0.181, model seed 1 0.191 / 0.195; dim 4, 500 categories: 0.170 / 0.147, data seed 1 0.170 /
0.172). The served interests stay nearly parallel (mean cosine 0.94-0.99); hard attention (p=100) or
15 epochs separate them (0.3-0.8) and lose 0.02-0.05. What MIND gains over YoutubeDNN in small
dimensions (+0.03 to +0.05: 0.185 against 0.153) it has with k_max=1 too: the routing and bilinear
map, not the second interest.

Real data says the same. On MovieLens 100K (`load_movielens_retrieval`, DeepMatch's example, the
config above; 943 test users), recall@50 after 6 epochs over model seeds 0-3: YoutubeDNN 0.326
(0.322-0.329); MIND k_max=2, dynamic_k, p=1, temperature 0.1 0.331 (0.319-0.346); k_max=1,
temperature 0.1 0.327 (0.314-0.335); p=1 at temperature 1.0 0.290; the DeepMatch config (p=100,
temperature 1.0) 0.305 and 0.319 (seeds 0, 1); k_max=4 0.293 and 0.287. The second interest is worth
less than the seeds' spread; the temperature and soft attention (p=1) matter more than it.

In tests/tfrec/test_mind.py's config (1,000 users, 16-d, 40 events) MIND 0.589 beats YoutubeDNN
0.512 at YoutubeDNN's default temperature 0.05 (DeepMatch's); at 0.1 YoutubeDNN reaches 0.570, and
MIND with k_max=1 0.581.
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
        learnt inverse temperature (they grow to ~10; 0.1 gives the same recall, see above).

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
    if others:  # int(): RepeatVector refuses a numpy int
        profile = tf.keras.layers.RepeatVector(int(k_max), name="profile_per_interest")(
            encoder.dnn_input(exclude=[towers.item_name] + history.names))
        user_input = tf.keras.layers.Concatenate(axis=-1, name="interest_with_profile")([profile, capsules])
    hidden = DNN(user_dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn,
                 output_activation=output_activation, seed=seed, name="user_dnn")(user_input)  # (B, K, d)
    interests = MaskInterests(name=USER_EMBEDDING)(hidden, interest_mask)

    item_vectors = items[0]                                                               # (B, d)
    training_user = LabelAwareAttention(k_max, p, name="label_aware_attention")(interests, item_vectors,
                                                                                interest_mask)
    return towers.build(interests, items, temperature, training_user=training_user)
