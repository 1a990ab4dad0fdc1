"""Sequential Deep Matching (Lv et al., CIKM 2019), DeepMatch 0.3.2's signature.

The user vector fuses what the user does now with what they have liked for a long time:

  e_u   user profile (every user feature but the sessions) -> Dense(units)
  s     short-term session S^u (`short_<f>` sequences) -> Dense(units) -> multi-layer LSTM ->
        multi-head self-attention -> attention with e_u as query
  p     long-term behaviour L^u (`prefer_<f>` sequences): per feature f, attention with e_u as
        query; the results concatenated -> Dense(units)
  o     G = sigmoid(W1 e_u + W2 s + W3 p + b), o = (1 - G) * p + G * s, L2-normalised

The item tower is the item's embedding, L2-normalised; both trained with a sampled softmax over
the item table (`TwoTowerBuilder`). Padding never changes a user vector (see `tfrec.layers.sdm`).

Where DeepMatch 0.3.2's SDM differs, this one follows the paper or the masks:
  * the long-term attention scores an event g_k by q . g_k with q a projection of e_u (the
    paper's dot product); DeepMatch scores tanh(w . [e_u; g_k]), in which e_u only shifts the
    scores of a row;
  * the residual mean of the session's user attention runs over the real events (DeepMatch
    averages padded positions in), and the LSTM skips padding instead of stopping at a length;
  * lengths come from each sequence column's `length_name` (DeepMatch reads the inputs
    "short_sess_length" / "prefer_sess_length" by name), and dense profile features are
    accepted (DeepMatch raises);
  * the LSTM input dropout applies in training (DeepMatch's DropoutWrapper reads the learning
    phase once, when it is built).
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns import VarLenSparseFeat
from feature_columns.inputs import concat

from ..layers.retrieval import L2Normalize
from ..layers.sdm import GatedFusion, SessionSelfAttention, StackedLSTM, UserAttention
from .two_tower import USER_EMBEDDING, TwoTowerBuilder

SHORT_PREFIX, PREFER_PREFIX = "short_", "prefer_"


def SDM(user_feature_columns, item_feature_columns, history_feature_list, units=64, rnn_layers=2, dropout_rate=0.2,
        rnn_num_res=1, num_head=4, l2_reg_embedding=1e-6, dnn_activation="tanh", temperature=0.05,
        sampler_config=None, seed=1024):
    """Builds SDM as a `TwoTowerModel`.

    Args:
      user_feature_columns: user profile features (SparseFeat, DenseFeat, and VarLenSparseFeat
        pooled with their combiner), and for every f in `history_feature_list` two
        VarLenSparseFeat: `short_f` (the current session, oldest to newest, length
        "short_sess_length" in DeepMatch's examples) and `prefer_f` (earlier behaviour, length
        "prefer_sess_length"), e.g. on f's table through `embedding_name`. The `short_`
        sequences must share one maxlen.
      item_feature_columns: [SparseFeat item id]; its embedding_dim must equal `units`.
      history_feature_list: the features f of the sequences, e.g. ["movie_id", "genres"].
      units: size of e_u, s, p and the user vector.
      rnn_layers, rnn_num_res: LSTM layers, and how many of the last ones are residual.
      dropout_rate: dropout of the LSTM inputs and of the session's attention weights.
      num_head: heads of the session self-attention (must divide `units`).
      dnn_activation: activation of the Dense layers making e_u, the session input and p, and of
        the user attention queries.
      temperature, sampler_config, l2_reg_embedding, seed: as YoutubeDNN's.

    Returns:
      A TwoTowerModel whose output is the per-example loss (batch, 1), with `user_tower`,
      `item_tower` and DeepMatch's `user_input` / `user_embedding` / `item_input` /
      `item_embedding`.
    """
    towers = TwoTowerBuilder(user_feature_columns, item_feature_columns, l2_reg_embedding, seed, "SDM")
    if int(towers.item_column.embedding_dim) != units:
        raise ValueError(f"SDM: units ({units}) must equal the item embedding_dim ({towers.item_column.embedding_dim})")
    items = towers.item_vectors(sampler_config)
    encoder = towers.encoder
    short_names, prefer_names = _session_columns(encoder, history_feature_list)

    def dense(name, offset):
        return tf.keras.layers.Dense(units, dnn_activation, name=name,
                                     kernel_initializer=tf.keras.initializers.GlorotUniform(seed + offset))

    # Every seeded layer gets its own seed: equal seeds would start equal-shaped kernels equal.
    # e_u: the user profile.
    profile = encoder.dnn_input(exclude=[towers.item_name] + short_names + prefer_names)
    user = dense("user_emb_output", 1)(profile)                                                  # (B, units)

    # s: the short-term session, LSTM -> self-attention -> user attention.
    short_mask = encoder.mask(short_names[0])                                                    # (B, T_s)
    session = concat([encoder.embed(name) for name in short_names], "short_embeddings")          # (B, T_s, E)
    session = dense("short_emb_input", 2)(session)                                               # (B, T_s, units)
    session = StackedLSTM(units, rnn_layers, rnn_num_res, dropout_rate, seed=seed + 100, name="short_rnn")(
        session, short_mask)
    session = SessionSelfAttention(num_head, dropout_rate, seed=seed + 200, name="short_self_attention")(
        session, short_mask)
    short = UserAttention(units, dnn_activation, use_residual=True, dropout_rate=dropout_rate, seed=seed + 3,
                          name="short_user_attention")(user, session, short_mask)                # (B, units)

    # p: the long-term behaviour, attended per feature with e_u as query.
    preferences = [
        UserAttention(encoder.column(name).embedding_dim, dnn_activation, seed=seed + 300 + i,
                      name=f"{name}_attention")(user, encoder.embed(name), encoder.mask(name))    # (B, d_f)
        for i, name in enumerate(prefer_names)]
    long = dense("prefer_output", 4)(concat(preferences, "preferences"))                         # (B, units)

    # o: the gated fusion.
    fused = GatedFusion(units, seed=seed + 5, name="gated_fusion")(user, short, long)
    return towers.build(L2Normalize(name=USER_EMBEDDING)(fused), items, temperature)


def _session_columns(encoder, history_feature_list):
    """The names of the `short_` and `prefer_` sequences of `history_feature_list`, checked."""
    features = list(history_feature_list)
    if not features:
        raise ValueError("SDM needs at least one feature in history_feature_list")
    names = {}
    for prefix in (SHORT_PREFIX, PREFER_PREFIX):
        names[prefix] = [prefix + f for f in features]
        for name in names[prefix]:
            if name not in encoder.columns:
                raise ValueError(f"SDM: history feature '{name[len(prefix):]}' needs a VarLenSparseFeat '{name}'; "
                                 f"columns: {list(encoder.columns)}")
            encoder.column(name, VarLenSparseFeat)
    maxlens = {encoder.columns[n].maxlen for n in names[SHORT_PREFIX]}
    if len(maxlens) != 1:
        raise ValueError(f"SDM: the short-term sequences {names[SHORT_PREFIX]} must share one maxlen, got "
                         f"{sorted(maxlens)}")
    return names[SHORT_PREFIX], names[PREFER_PREFIX]
