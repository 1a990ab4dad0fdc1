"""Search-based Interest Model (Pi et al., CIKM 2020), with ETA's SimHash search (Chen et al., 2021).

inputs -> embeddings -> General Search Unit (the topk of up to 10,000 behaviours relevant to the
candidate: hard, soft or SimHash search) -> Exact Search Unit (multi-head target attention over
those, each with its time-gap embedding) and a short-term DIN attention over the most recent
events -> concatenation with every other feature -> DNN -> sigmoid.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns import DenseFeat, FeatureEncoder, SparseEmbedding, VarLenDenseFeat, history_name
from feature_columns.inputs import concat

from ..layers import DNN, AttentionSequencePooling, PredictionLayer
from ..layers.core import check_positive_int, check_task
from ..layers.search import RelevancePooling, SimHashSearch, SoftSearch, TargetAttention, TimeGapEmbedding
from .base import click_prediction, history_model

SEARCHES = ("hard", "soft", "simhash")
SOFT_SEARCH_EMBEDDINGS = ("shared", "auxiliary")


def SIM(dnn_feature_columns, history_feature_list, search="hard", search_feature="cate_id", topk=50,
        short_maxlen=50, time_feature=None, num_heads=4, soft_search_embedding="shared", simhash_bits=64,
        dnn_use_bn=False, dnn_hidden_units=(256, 128, 64), dnn_activation="relu", att_hidden_size=(80, 40),
        att_activation="dice", att_weight_normalization=False, l2_reg_dnn=0, l2_reg_embedding=1e-6,
        dnn_dropout=0, seed=1024, task="binary"):
    """Builds SIM as a Keras functional model on DIN's columns.

    Args:
      dnn_feature_columns: all feature columns, as for DIN: for every `f` in history_feature_list
        a SparseFeat `f` and a VarLenSparseFeat `hist_f` on f's table, whose maxlen is the LONG
        history kept (up to 10,000 events).
      history_feature_list: candidate features with histories, e.g. ["item_id", "cate_id"]; soft
        and SimHash search compare an event to the candidate on all of them.
      search: the GSU. "hard": the most recent `topk` events whose `search_feature` equals the
        candidate's. "soft": the `topk` largest inner products of candidate and event
        embeddings. "simhash": ETA, the `topk` smallest Hamming distances between SimHash
        signatures of those embeddings (`simhash_bits` bits); served from signatures
        precomputed for the whole table.
      search_feature: the candidate feature hard search matches (in history_feature_list).
      topk: events the GSU hands the ESU (at most; a history with fewer eligible events hands
        all of them, so a topk above the history's maxlen keeps every event).
      short_maxlen: the most recent events the short-term DIN attention reads.
      time_feature: a DenseFeat with the request time (e.g. "timestamp", int64 seconds); its twin
        VarLenDenseFeat `hist_<time_feature>` holds the events' times. Each retrieved event is
        concatenated with an embedding of its bucketised gap to the request. None: no times.
      num_heads: heads of the ESU's multi-head target attention.
      soft_search_embedding: "shared" (soft search reads the model's own embeddings and trains
        end to end) or "auxiliary" (the paper's separate GSU embeddings, trained by an auxiliary
        CTR head over the whole history: the model then has a second output "gsu_prediction",
        to compile with the same binary loss and label as "prediction").
      The rest as DIN's (DeepCTR's): DNN and attention sizes/activations, L2 penalties, dropout,
        seed, task.

    Returns:
      A RecModel from a dict of raw features to "prediction" (batch, 1) (and "gsu_prediction"
      with an auxiliary soft search).
    """
    check_task(task)
    # 0 would build a model that silently ignores the long history (or the recent events).
    for name, value in (("topk", topk), ("short_maxlen", short_maxlen), ("num_heads", num_heads)):
        check_positive_int(value, name, "SIM")
    if search not in SEARCHES:
        raise ValueError(f"SIM: search must be one of {SEARCHES}, got {search!r}")
    if soft_search_embedding not in SOFT_SEARCH_EMBEDDINGS:
        raise ValueError(f"SIM: soft_search_embedding must be one of {SOFT_SEARCH_EMBEDDINGS}, "
                         f"got {soft_search_embedding!r}")
    if search == "hard" and search_feature not in history_feature_list:
        raise ValueError(f"SIM: hard search compares '{search_feature}', which must be in "
                         f"history_feature_list {list(history_feature_list)}")
    encoder = FeatureEncoder(dnn_feature_columns, l2_reg_embedding=l2_reg_embedding, seed=seed)
    aligned = []
    if time_feature is not None:
        encoder.column(time_feature, DenseFeat, argument="SIM: time_feature (the request's time)")
        aligned = [history_name(time_feature)]
        times = encoder.columns.get(aligned[0])
        if not isinstance(times, VarLenDenseFeat):
            got = "no such column" if times is None else f"a {type(times).__name__}"
            raise ValueError(f"SIM: time_feature={time_feature!r} needs the events' times as a VarLenDenseFeat "
                             f"'{aligned[0]}' (a sequence of numbers), got {got}")
    # Only chosen events are embedded: the short window, the GSU's picks, and (for soft and
    # SimHash search in training) the searched sequence itself.
    history = encoder.history(history_feature_list, model="SIM", aligned=aligned, embed_sequences=False)
    short_term = history.recent(short_maxlen, view="short")

    # General Search Unit: topk of the long history for this candidate.
    auxiliary_output = None
    if search == "hard":
        retrieved = history.recent(topk, matching=(history_name(search_feature), encoder.indices(search_feature)),
                                   view="gsu")
    else:
        # Soft and SimHash search compare whole events: every history feature's embedding.
        if search == "soft" and soft_search_embedding == "auxiliary":
            queries, keys = [], []
            for candidate, sequence in zip(history.candidates, history.names):
                column = encoder.column(candidate)
                # Not DeepCTR's 1e-4 scale: the auxiliary pooling is cubic in it and would start without gradient.
                table = SparseEmbedding(column.vocabulary_size, column.embedding_dim, name="gsu_emb_" + candidate,
                                        embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.1, seed=seed))
                query, key = table([encoder.indices(candidate), history.indices[sequence]])
                queries.append(query)
                keys.append(key)
            auxiliary_output = _auxiliary_ctr(concat(queries, "gsu_query"), concat(keys, "gsu_keys"), history.mask,
                                              task, seed)
        else:
            for sequence in history.names:
                encoder.lookup(sequence + "@searched", sequence, history.indices[sequence], regularize=False)
            queries = [encoder.embed(candidate) for candidate in history.candidates]
            keys = [encoder.embed(sequence + "@searched") for sequence in history.names]
        if search == "soft":
            positions, valid = SoftSearch(topk, normalize=soft_search_embedding == "shared", name="gsu")(
                queries, keys, history.mask)
        else:
            positions, valid = SimHashSearch(
                topk, tables=[encoder.table(c).name for c in history.candidates],
                table_rows=[encoder.column(c).vocabulary_size for c in history.candidates],
                num_bits=simhash_bits, seed=seed, name="gsu")(
                queries, [history.indices[s] for s in history.names], history.mask, keys=keys)
        retrieved = history.take(positions, valid, view="gsu")

    # Exact Search Unit: target attention over the retrieved events and their time gaps.
    behaviours = retrieved.keys
    if time_feature is not None:
        gaps = TimeGapEmbedding(int(behaviours.shape[-1]), seed=seed, name="time_gap")(
            encoder.features[time_feature], retrieved.aligned[aligned[0]], retrieved.mask)
        behaviours = concat([behaviours, gaps], "esu_behaviours")
    long_term_interest = TargetAttention(num_heads, seed=seed, name="esu")(
        history.query, behaviours, retrieved.mask)                                          # (B, 1, E)

    # Short-term interest: DIN's attention over the most recent events.
    short_term_interest = AttentionSequencePooling(
        att_hidden_size, att_activation, weight_normalization=att_weight_normalization, seed=seed,
        name="short_term_attention")(history.query, short_term.keys, short_term.mask)         # (B, 1, E)

    dnn_input = encoder.dnn_input(exclude=history.names + ([time_feature] if time_feature else []),
                                  extra=[long_term_interest, short_term_interest])
    output = click_prediction(dnn_input, dnn_hidden_units, dnn_activation, l2_reg_dnn, dnn_dropout, dnn_use_bn,
                              seed, task)
    outputs = output if auxiliary_output is None else [output, auxiliary_output]
    return history_model(encoder.features, outputs, history, name="sim")


def _auxiliary_ctr(query, keys, mask, task, seed):
    """SIM's auxiliary CTR model that trains the soft-search embeddings (paper, section 4.1).

    The history pooled by relevance to the candidate e_a, next to e_a, -> MLP -> "gsu_prediction".
    """
    pooled = RelevancePooling(name="gsu_relevance_pooling")(query, keys, mask)               # (B, 1, d)
    hidden = DNN((64, 32), "relu", seed=seed, name="gsu_dnn")(
        tf.keras.layers.Flatten(name="gsu_dnn_input")(concat([pooled, query], "gsu_pooled_and_query")))
    logit = tf.keras.layers.Dense(1, name="gsu_logit")(hidden)
    return PredictionLayer(task, name="gsu_prediction")(logit)
