"""CLSR: Contrastive Learning for disentangled Long and Short-term interests (Zheng et al., WWW 2022).

"Disentangling Long and Short-Term Interests for Recommendation": one history, two interest
encoders with their own queries (the user for the long term, a GRU over the history for the
short term), each self-supervised by a proxy (the mean of the whole history, the mean of its last
events), and a learned gate that mixes them per example before the prediction tower.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns import FeatureEncoder, SparseFeat

from ..layers.clsr import (CONTRASTIVE_LOSSES, RNN_TYPES, HistoryMean, InterestContrastiveLoss,
                           HistoryRNN, InterestFusion, InterestFusionGate, LongTermInterest,
                           LongTermWeight, ShortTermInterest)
from ..layers.core import check_task
from .base import RecModel, click_prediction

# Names of the layers whose outputs a sub-model can read (see `interest_model`).
INTEREST_LAYERS = ("long_term_interest", "short_term_interest", "long_term_proxy", "short_term_proxy", "alpha")
ALPHA, FUSED_INTEREST = "alpha", "fused_interest"
# The input of `steerable_model`: the long-term weight a request scores with, in place of alpha.
LONG_TERM_WEIGHT = "long_term_weight"


def CLSR(dnn_feature_columns, history_feature_list, user_feature="user_id", rnn="gru", proxy_recent=3,
         proxy_min_length=5, contrastive_loss="triplet", margin=1.0, contrastive_weight=0.1, dnn_use_bn=False,
         dnn_hidden_units=(256, 128, 64), dnn_activation="relu", att_hidden_size=(80, 40), att_activation="dice",
         att_weight_normalization=False, l2_reg_dnn=0, l2_reg_embedding=1e-6, dnn_dropout=0, seed=1024,
         task="binary"):
    """Builds CLSR as a Keras functional model (a `RecModel`).

    Args:
      dnn_feature_columns: all feature columns. For every name `f` in `history_feature_list` a
        SparseFeat `f` (the candidate) and a VarLenSparseFeat `hist_f` sharing its embedding table,
        as for DIN; and the SparseFeat `user_feature`.
      history_feature_list: candidate features whose histories form the events, e.g.
        ["item_id", "cate_id"]; an event's embedding E(x_j) is theirs concatenated (dimension E).
      user_feature: the SparseFeat whose embedding is the long-term query q_l (projected to E by a
        bias-free Dense when its dimension differs).
      rnn: "gru" or "lstm", the short-term encoder's RNN over the events (units E). The short-term
        query and the fusion's history state are GRUs, as in the paper.
      proxy_recent: k, the short-term proxy p_s is the mean of the last k real events.
      proxy_min_length: l_t, the contrastive loss only covers histories longer than this.
      contrastive_loss: "triplet" (margin `margin`, Euclidean distance) or "bpr".
      contrastive_weight: beta, the weight of the contrastive loss added to the model's loss
        in training (`add_loss`); 0 trains without self-supervision.
      att_hidden_size, att_activation: the attention MLPs tau_l and tau_s (DIN's local activation
        unit) and the fusion gate's MLP tau_f.
      att_weight_normalization: accepted so DIN's keyword arguments carry over; CLSR's attention is
        always the paper's softmax over the real events, whatever its value.
      The rest as in DeepCTR/DIN: the prediction tower (sizes, activation, BN, dropout, L2), the
        embeddings' L2, seed, and `task` ("binary" or "regression").

    Returns:
      A RecModel from a dict of raw features to one output named "prediction", shape (batch, 1).
      Its layers "long_term_interest" (u_l), "short_term_interest" (u_s), "long_term_proxy" (p_l),
      "short_term_proxy" (p_s), all (batch, E), and "alpha" ((batch, 1) in [0, 1], the long-term
      share) can be read by a sub-model (`interest_model`) or exported with
      `exporters.export_saved_model(model, base, extra_outputs=["alpha"])`. Training with plain
      `compile(loss="binary_crossentropy")` and `fit` optimises the click loss plus
      beta * L_con; `fit`'s history reports L_con as "contrastive_loss" (and on validation data as
      "val_contrastive_loss", which `val_loss` leaves out).

    XLA: `RecModel.compile` XLA-compiles the training step by default, and CLSR keeps that
    default. Its three RNNs are Keras' generic `RNN` over GRU / LSTM cells (`HistoryRNN`), which
    compile once; Keras' GRU and LSTM layers did not (their XLA gradient recompiled for every new
    batch: 1-5 s per step instead of ~0.05 s, and LLVM eventually ran out of memory). Measured
    on 2 shared CPU cores, batch 256, E = 16, median of 4 x 8 steps after the first: with XLA
    50 ms (GRU, 30 events), 62 ms (LSTM, 30 events), 89 ms (GRU, 100 events); without, 51, 56
    and 88 ms. The steps cost the same within noise, while XLA's first step takes ~3-5 s more
    to compile; `compile(..., jit_compile=False)` opts out, e.g. for short runs.

    Differences from the official TF1 code (tsinghua-fib-lab/CLSR, whose defaults k = 3,
    l_t = 5, triplet, margin 1 and beta 0.1 are the defaults here): q_s is a GRU over the
    history started from zeros (the code starts it from a second user embedding, and adds a
    "discrepancy" loss between the two user embeddings that is left out here); psi's query is
    q_s alone (the code attends with q_s || E(target)); the short-term RNN is a GRU or LSTM (the
    code's default is its time-aware Time4LSTM) and the gate does not see the time since the last
    event; a user embedding of another dimension than E is projected to E (the code sizes W to
    the user's dimension instead); the triplet is the paper's hinge on Euclidean distances (the
    code's is a hinge per dimension on squared differences); the prediction tower also sees the
    other features, as DIN's does (the code's sees u and the target only). On the "drift" planted
    data (tests/tfrec/test_clsr.py's setup, data seeds 0, 1, 2 and seed 0 with 5,000 users) the
    code's psi query moved the test AUC by -0.006 to +0.002 and its tower by -0.010 to +0.009,
    neither consistently nor beyond what the model seed alone moves it, so both are left as
    they are.

    Against DIN: CLSR's attention pools are softmax-normalised and, with the paper's queries,
    not conditioned on the candidate in the long term: the long-term query is the user's
    embedding, an untrained row for a user unseen in training (the "drift" test users). DIN's
    target attention with sum pooling reads how often the candidate's category occurs in the
    history, which is what that data's click depends on. Over the whole "drift" history
    (maxlen 100), CLSR leads DIN for model seeds 0, 1, 2 (0.652 / 0.635 / 0.624 vs 0.625 / 0.604
    / 0.597; tests/tfrec/test_clsr.py asserts it for seed 0). Limited to the last 30 events,
    DIN does better than over the whole history and the two are level (seed 0: CLSR 0.663, DIN
    0.667); with 5,000 users at that length DIN leads on data seed 0 (0.740 vs 0.687) and CLSR
    on data seed 1 (0.705 vs 0.670).
    """
    check_task(task)
    if rnn not in RNN_TYPES:
        raise ValueError(f"rnn must be one of {RNN_TYPES}, got {rnn!r}")
    if contrastive_loss not in CONTRASTIVE_LOSSES:
        raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {contrastive_loss!r}")
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed)
    encoder.column(user_feature, SparseFeat, argument="CLSR: user_feature (the user id column)")
    history = encoder.history(history_feature_list, model="CLSR")
    events, mask = history.keys, history.mask                                      # E(x) (B, T, E), (B, T)
    dim = int(events.shape[-1])
    target = tf.keras.layers.Flatten(name="target_embedding")(history.query)      # E(target) (B, E)

    # Queries: the user's stable embedding and the state of a GRU over the history.
    q_l = tf.keras.layers.Flatten(name="user_embedding")(encoder.embed(user_feature))
    if int(q_l.shape[-1]) != dim:
        q_l = tf.keras.layers.Dense(dim, use_bias=False, kernel_initializer=tf.keras.initializers.GlorotNormal(seed),
                                    name="long_term_query")(q_l)
    q_s = HistoryRNN(dim, "gru", seed=seed + 1, name="short_term_query")(events, mask)

    # Interest encoders phi (long term) and psi (short term).
    u_l = LongTermInterest(att_hidden_size, att_activation, seed=seed + 2,
                           name="long_term_interest")(q_l, events, mask)
    u_s = ShortTermInterest(dim, rnn, att_hidden_size, att_activation, seed=seed + 3,
                            name="short_term_interest")(q_s, events, mask)

    # Interest proxies and the contrastive self-supervision.
    p_l = HistoryMean(name="long_term_proxy")(events, mask)
    p_s = HistoryMean(recent=proxy_recent, name="short_term_proxy")(events, mask)
    u_l, u_s = InterestContrastiveLoss(contrastive_loss, margin, contrastive_weight, proxy_min_length,
                                       name="contrastive")([u_l, u_s, p_l, p_s, history.lengths])

    # Adaptive fusion.
    h = HistoryRNN(dim, "gru", seed=seed + 4, name="fusion_history")(events, mask)
    alpha = InterestFusionGate(att_hidden_size, att_activation, seed=seed + 5, name=ALPHA)([h, target, u_l, u_s])
    interest = InterestFusion(name=FUSED_INTEREST)([alpha, u_l, u_s])             # u (B, E)

    # Prediction: u with the target and every other feature, as DIN's tower.
    dnn_input = encoder.dnn_input(exclude=history.names,
                                  extra=[tf.keras.layers.Reshape((1, dim), name="interest")(interest)])
    output = click_prediction(dnn_input, dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn,
                              seed, task)
    return RecModel(inputs=encoder.features, outputs=output, name="clsr")


def interest_model(model, names=INTEREST_LAYERS):
    """A model from a CLSR's raw features to {layer name: output} of its interest layers.

    Works on a freshly built CLSR and on one reloaded with `tf.keras.models.load_model`; the
    default names give u_l, u_s, p_l, p_s (batch, E) and alpha (batch, 1).
    """
    return tf.keras.Model(model.input, {name: model.get_layer(name).output for name in names},
                          name=f"{model.name}_interests")


def steerable_model(model):
    """A CLSR whose requests choose the long-term weight: alpha, seen and steered.

    Returns a Keras model over the same layers and weights as `model` (a CLSR, freshly built or
    reloaded). Its inputs are `model`'s plus "long_term_weight", (batch, 1) float32 in [0, 1],
    which takes the gate's place in u = w * u_l + (1 - w) * u_s; its outputs are "prediction",
    the score at that weight, and "alpha", the weight the gate chooses (with which `model`
    scores). w = alpha gives `model`'s prediction; w = 1 scores with the long-term interest
    alone, w = 0 with the short-term one. Export it beside the model, e.g.
    `exporters.export_saved_model(steerable_model(model), "exports/clsr_steerable")`, so that a
    request can set the balance (more of the stable interests on a home feed, more of the session
    after a search). A weight outside [0, 1] is an InvalidArgumentError naming the input.
    """
    if LONG_TERM_WEIGHT in model.input_names:
        raise ValueError(f"steerable_model: {model.name!r} already takes {LONG_TERM_WEIGHT!r}")
    names = {layer.name for layer in model.layers}
    if ALPHA not in names or FUSED_INTEREST not in names:
        raise ValueError(f"steerable_model needs a CLSR (layers {ALPHA!r} and {FUSED_INTEREST!r}); "
                         f"{model.name!r} has no such layers")
    gate = model.get_layer(ALPHA)
    weight = tf.keras.Input((1,), name=LONG_TERM_WEIGHT, dtype=tf.float32)
    chosen = LongTermWeight(LONG_TERM_WEIGHT, name="chosen_long_term_weight")(weight)
    prediction = _replayed(model, {id(gate.output): chosen})
    return tf.keras.Model({**model.input, LONG_TERM_WEIGHT: weight}, [prediction, gate.output],
                          name=f"{model.name}_steerable")


def _replayed(model, replaced):
    """`model`'s output with tensors replaced ({id(tensor): new tensor}): every layer call downstream
    of them is made again on the new tensors, with the same layers (so the same weights)."""
    replaced = dict(replaced)
    for layer in model.layers:  # a functional model lists its layers in the order they are called
        for node in layer.inbound_nodes:
            if not any(id(t) in replaced for t in tf.nest.flatten((node.call_args, node.call_kwargs))):
                continue
            args, kwargs = tf.nest.map_structure(lambda t: replaced.get(id(t), t), (node.call_args, node.call_kwargs))
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(layer(*args, **kwargs))):
                replaced[id(old)] = new
    return replaced[id(model.output)]
