"""CLSR's building blocks (Zheng et al., WWW 2022): interest encoders, proxies, contrastive loss, fusion.

  HistoryRNN         a GRU / LSTM over the events (the short-term query, psi's outputs, the fusion state).
  LongTermInterest   phi: attention of the user query over the events, pooling their embeddings.
  ShortTermInterest  psi: an RNN over the events, attention of the session query over its outputs.
  HistoryMean        the proxies: mean of all real events (long term) or of the last k (short term).
  InterestContrastiveLoss  the four-term self-supervision of u_l, u_s against the proxies.
  InterestFusionGate alpha = sigmoid(MLP(h, target, u_l, u_s)), the long-term share of the mix.
  InterestFusion     u = alpha * u_l + (1 - alpha) * u_s.

Sequences are (batch, T, ...) with a (batch, T) bool mask, true on real events; padding never
contributes to any output.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from .attention import AttentionSequencePooling
from .core import DNN, MLPLayer, check_number, check_positive_int, in_evaluation

_register = tf.keras.utils.register_keras_serializable(package="tfrec")

RNN_TYPES = ("gru", "lstm")
CONTRASTIVE_LOSSES = ("triplet", "bpr")


@_register
class HistoryRNN(tf.keras.layers.Layer):
    """A masked GRU or LSTM over the events.

    events (batch, T, E), mask (batch, T) bool -> the outputs (batch, T, units), zero on padding
    (`return_sequences`), or else the state after the last real event (batch, units), zeros for a
    row without events. Padding never updates the state.

    The RNN is Keras' generic `RNN` over a `GRUCell` / `LSTMCell` (the same cells and weights as
    the GRU / LSTM layers, Keras' default reset_after GRU). The GRU and LSTM layers themselves
    pick a CPU or cuDNN kernel at run time, and under XLA their gradient recompiled for every new
    batch (measured ~1 s per step on CPU, every step); with a Keras mask they also bound the loop
    by the batch's longest row, another value XLA compiles as a constant. The generic RNN bounds
    it by T and compiles once.
    """

    def __init__(self, units, rnn="gru", return_sequences=False, seed=1024, **kwargs):
        super().__init__(**kwargs)
        if rnn not in RNN_TYPES:
            raise ValueError(f"rnn must be one of {RNN_TYPES}, got {rnn!r}")
        self.units = int(units)
        self.rnn = rnn
        self.return_sequences = bool(return_sequences)
        self.seed = seed
        cell = tf.keras.layers.GRUCell if rnn == "gru" else tf.keras.layers.LSTMCell
        self.recurrent = tf.keras.layers.RNN(
            cell(self.units, kernel_initializer=tf.keras.initializers.GlorotUniform(seed),
                 recurrent_initializer=tf.keras.initializers.Orthogonal(seed=seed), name="cell"),
            return_sequences=self.return_sequences, name=rnn)

    def call(self, events, mask, training=None):
        outputs = self.recurrent(events, mask=mask, training=training)
        if self.return_sequences:
            return outputs * tf.cast(mask, outputs.dtype)[..., None]
        return outputs

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape)
        return shape[:-1].concatenate([self.units]) if self.return_sequences else \
            tf.TensorShape([shape[0], self.units])

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, rnn=self.rnn, return_sequences=self.return_sequences, seed=self.seed)
        return config


@_register
class LongTermInterest(tf.keras.layers.Layer):
    """CLSR's long-term interest encoder phi.

    query q (batch, Q), events E(x) (batch, T, E), mask (batch, T) bool -> u (batch, E):

        v_j = W E(x_j)                         (W: E -> Q, no bias)
        alpha_j = tau(v_j || q || v_j - q || v_j * q),  a = softmax_j alpha over the real events
        u = sum_j a_j E(x_j)

    tau is DIN's `LocalActivationUnit` (MLP `att_hidden_units` with `att_activation`, then one
    score); it orders its input [q, v, q - v, q * v], the same function class, since its first
    layer is linear. A row without events pools to zeros. `return_weights=True` returns a
    (batch, T) instead, zero on padding and summing to 1 over the real events.
    """

    def __init__(self, att_hidden_units=(80, 40), att_activation="dice", return_weights=False, seed=1024,
                 **kwargs):
        super().__init__(**kwargs)
        self.att_hidden_units = tuple(att_hidden_units)
        self.att_activation = att_activation
        self.return_weights = return_weights
        self.seed = seed
        self.attention = AttentionSequencePooling(self.att_hidden_units, att_activation, weight_normalization=True,
                                                  return_score=True, seed=seed, name="attention")

    def build(self, query_shape, *args, **kwargs):
        self.projection = tf.keras.layers.Dense(
            int(query_shape[-1]), use_bias=False, kernel_initializer=tf.keras.initializers.GlorotNormal(self.seed),
            name="projection")
        super().build(query_shape)

    def attend(self, query, values, mask, training=None):
        """softmax_j tau(W values_j, query) over the real events -> (batch, 1, T)."""
        return self.attention(query[:, None, :], self.projection(values), mask, training=training)

    def pool(self, query, values, mask, training=None):
        weights = self.attend(query, values, mask, training=training)                   # (B, 1, T)
        return weights[:, 0, :] if self.return_weights else tf.matmul(weights, values)[:, 0, :]

    def call(self, query, events, mask, training=None):
        return self.pool(query, events, mask, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(att_hidden_units=self.att_hidden_units, att_activation=self.att_activation,
                      return_weights=self.return_weights, seed=self.seed)
        return config


@_register
class ShortTermInterest(LongTermInterest):
    """CLSR's short-term interest encoder psi.

    query q (batch, Q), events E(x) (batch, T, E), mask (batch, T) bool -> u (batch, units):

        o = RNN(E(x))   (a `HistoryRNN`, GRU or LSTM of `units`, masked)
        v_j = W o_j,  the attention of LongTermInterest with the query q,  u = sum_j b_j o_j
    """

    def __init__(self, units, rnn="gru", att_hidden_units=(80, 40), att_activation="dice", return_weights=False,
                 seed=1024, **kwargs):
        super().__init__(att_hidden_units, att_activation, return_weights, seed, **kwargs)
        self.units = int(units)
        self.rnn = rnn
        self.recurrent = HistoryRNN(self.units, rnn, return_sequences=True, seed=seed, name="rnn")

    def call(self, query, events, mask, training=None):
        outputs = self.recurrent(events, mask, training=training)                      # o (B, T, units)
        return self.pool(query, outputs, mask, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, rnn=self.rnn)
        return config


@_register
class HistoryMean(tf.keras.layers.Layer):
    """CLSR's interest proxies: the mean embedding of the real events, or of the last ones.

    events (batch, T, E), mask (batch, T) bool -> (batch, E). With `recent=k` only the k most
    recent real events count (p_s, "the last k"); with None all of them (p_l). Events are in time
    order wherever the padding is; a row without events gives zeros.
    """

    def __init__(self, recent=None, **kwargs):
        super().__init__(**kwargs)
        if recent is not None:
            check_positive_int(recent, "recent", f"HistoryMean '{self.name}'")
            recent = int(recent)
        self.recent = recent

    def call(self, events, mask):
        weight = tf.cast(mask, events.dtype)
        if self.recent is not None:
            from_newest = tf.cumsum(weight, axis=1, reverse=True)  # 1 at the newest real event
            weight *= tf.cast(from_newest <= self.recent, events.dtype)
        total = tf.reduce_sum(events * weight[..., None], axis=1)
        return tf.math.divide_no_nan(total, tf.reduce_sum(weight, axis=1, keepdims=True))

    def get_config(self):
        config = super().get_config()
        config.update(recent=self.recent)
        return config


@_register
class InterestContrastiveLoss(tf.keras.layers.Layer):
    """CLSR's self-supervision of the two interests by their proxies.

    inputs [u_l, u_s, p_l, p_s, lengths]: four (batch, E) and (batch,) or (batch, 1) history lengths.
    Returns [u_l, u_s] unchanged (the layer sits on the model's path, like ActivityRegularization);
    the loss is

        L_con = f(u_l, p_l, p_s) + f(p_l, u_l, u_s) + f(u_s, p_s, p_l) + f(p_s, u_s, u_l)

    for anchor a, positive p, negative q, with f the triplet loss max(d(a, p) - d(a, q) + margin, 0)
    (d Euclidean) or BPR softplus(<a, q> - <a, p>), averaged over the rows whose history is longer
    than `min_length` (each term, as the official code does; 0 when no row qualifies). In training
    `weight * L_con` is added with `add_loss`, and L_con itself (unweighted) is reported by
    `add_metric` as "contrastive_loss", so `fit`'s history shows it even with weight 0. An
    evaluation step (`evaluate`, `fit`'s validation: `tfrec.layers.core.evaluating`) reports
    L_con on its rows too ("val_contrastive_loss"), without adding it to the loss, as the
    embeddings' L2 penalty is left out there. Other inference computes nothing here:
    predictions and the served signature update no variable.

    The official TF1 code's triplet sums max(.., 0) over the dimensions of the squared
    differences; this is the paper's form, one hinge on Euclidean distances.
    """

    def __init__(self, loss="triplet", margin=1.0, weight=0.1, min_length=5, **kwargs):
        super().__init__(**kwargs)
        if loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive loss must be one of {CONTRASTIVE_LOSSES}, got {loss!r}")
        # A NaN or negative weight made every weight NaN, or trained the interests apart without bound
        owner = f"InterestContrastiveLoss '{self.name}'"
        check_number(weight, "weight (CLSR's contrastive_weight)", owner)
        check_number(margin, "margin", owner)
        self.loss = loss
        self.margin = float(margin)
        self.weight = float(weight)
        self.min_length = int(min_length)
        # Created here, not by add_metric inside a training call: SavedModel export traces that
        # call too, and a metric created inside the trace would be unreachable from the model.
        self.tracker = tf.keras.metrics.Mean(name="contrastive_loss")

    def pair_loss(self, anchor, positive, negative):
        """f(a, p, q) per row, (batch,)."""
        if self.loss == "bpr":
            return tf.math.softplus(tf.reduce_sum(anchor * negative, -1) - tf.reduce_sum(anchor * positive, -1))
        return tf.maximum(_distance(anchor, positive) - _distance(anchor, negative) + self.margin, 0.0)

    def per_example(self, u_l, u_s, p_l, p_s):
        """The four terms summed, per row (batch,), before masking."""
        return (self.pair_loss(u_l, p_l, p_s) + self.pair_loss(p_l, u_l, u_s)
                + self.pair_loss(u_s, p_s, p_l) + self.pair_loss(p_s, u_s, u_l))

    def contrastive_loss(self, u_l, u_s, p_l, p_s, lengths):
        """L_con: the mean of `per_example` over the rows longer than min_length, a scalar."""
        valid = tf.cast(tf.reshape(lengths, [-1]) > self.min_length, u_l.dtype)
        return tf.math.divide_no_nan(tf.reduce_sum(valid * self.per_example(u_l, u_s, p_l, p_s)),
                                     tf.reduce_sum(valid))

    def call(self, inputs, training=None):
        u_l, u_s, p_l, p_s, lengths = inputs
        if training or in_evaluation():
            value = self.contrastive_loss(u_l, u_s, p_l, p_s, lengths)
            if self.weight and training:
                self.add_loss(self.weight * value)
            self.add_metric(self.tracker(value))
        return [tf.identity(u_l), tf.identity(u_s)]

    def get_config(self):
        config = super().get_config()
        config.update(loss=self.loss, margin=self.margin, weight=self.weight, min_length=self.min_length)
        return config


def _distance(a, b):
    """Euclidean distance per row; the gradient at distance 0 is 0, not NaN."""
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(a - b), axis=-1), 1e-12))


@_register
class InterestFusionGate(MLPLayer):
    """CLSR's adaptive fusion weight: alpha = sigmoid(tau_f(h || e_target || u_l || u_s)).

    inputs: a list of (batch, d_i) tensors, concatenated -> alpha (batch, 1) in [0, 1], the share
    of the long-term interest in u = alpha * u_l + (1 - alpha) * u_s. tau_f is a `DNN` of
    `hidden_units` then a Dense(1) logit.
    """

    def __init__(self, hidden_units=(80, 40), activation="dice", l2_reg=0.0, dropout_rate=0.0, use_bn=False,
                 seed=1024, **kwargs):
        super().__init__(hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs)
        self.mlp = DNN(self.hidden_units, activation, l2_reg, dropout_rate, use_bn, seed=seed,
                       name="mlp") if self.hidden_units else None
        self.logit = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotNormal(seed),
                                           name="logit")

    def call(self, inputs, training=None):
        x = tf.concat(list(inputs), axis=-1) if isinstance(inputs, (list, tuple)) else inputs
        if self.mlp is not None:
            x = self.mlp(x, training=training)
        return tf.sigmoid(self.logit(x))

    def compute_output_shape(self, input_shape):
        first = input_shape[0] if isinstance(input_shape, (list, tuple)) and \
            isinstance(input_shape[0], (list, tuple, tf.TensorShape)) else input_shape
        return tf.TensorShape([tf.TensorShape(first)[0], 1])


@_register
class InterestFusion(tf.keras.layers.Layer):
    """CLSR's fused interest: u = alpha * u_l + (1 - alpha) * u_s.

    call([alpha (batch, 1), u_l (batch, E), u_s (batch, E)]) -> u (batch, E), with alpha from
    `InterestFusionGate`.
    """

    def call(self, inputs):
        alpha, long_term, short_term = inputs
        return alpha * long_term + (1.0 - alpha) * short_term

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[1])


@_register
class LongTermWeight(tf.keras.layers.Layer):
    """A long-term weight a request chooses in place of the gate's alpha (see `steerable_model`).

    (batch, 1) -> the same values, after checking that each lies in [0, 1]: a weight outside
    that range is an InvalidArgumentError naming the input, not an extrapolated score.
    """

    def __init__(self, input_name="long_term_weight", **kwargs):
        super().__init__(**kwargs)
        self.input_name = input_name

    def call(self, weight):
        inside = tf.reduce_all((weight >= 0.0) & (weight <= 1.0))
        check = tf.debugging.Assert(inside, [f"{self.input_name} must lie in [0, 1], got", weight], summarize=5)
        with tf.control_dependencies([check]):
            return tf.identity(weight)

    def get_config(self):
        config = super().get_config()
        config.update(input_name=self.input_name)
        return config
