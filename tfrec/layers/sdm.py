"""Layers of SDM's user tower (Lv et al., CIKM 2019): session LSTM, self-attention, user attention, gate.

Every layer takes an explicit (batch, T) bool `mask`, true on real events; padded positions get
attention weight exactly 0 and zero outputs, so padding (its values, or how much of it there is)
never changes a user vector. These replace DeepMatch 0.3.2's DynamicMultiRNN,
SelfMultiHeadAttention, UserAttention, AttentionSequencePoolingLayer and its Lambda gate, which
take sequence lengths and average over padded positions.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


def _zero_padding(values, mask):
    """values (batch, T, d) with the positions where mask (batch, T) is false set to 0."""
    return tf.where(mask[:, :, None], values, tf.zeros((), values.dtype))


# Sessions of at most this many steps are unrolled (see StackedLSTM.build).
MAX_UNROLLED_STEPS = 32


@_register
class StackedLSTM(tf.keras.layers.Layer):
    """SDM's recurrent layer: `num_layers` LSTMs over a session, the last few of them residual.

    call(inputs (batch, T, D), mask (batch, T) bool) -> (batch, T, units), the hidden states
    h_1..h_T of the top layer (0 at padded positions). Layer l maps its input x to LSTM_l(x),
    or to x + LSTM_l(x) if it is one of the last `num_residual_layers` layers (DeepMatch's
    ResidualWrapper around its last `rnn_num_res` cells); a residual first layer needs D = units.
    Padded positions are skipped: the state carries over them, so they change nothing.
    `dropout_rate` drops the inputs of every LSTM in training (DeepMatch's DropoutWrapper).

    Each layer is `RNN(LSTMCell)`, the LSTM without `tf.keras.layers.LSTM`'s cuDNN
    implementation selector: inside `RecModel`'s XLA-compiled training step that selector made
    every `fit` step take seconds (measured 2-7 s against 0.01 s for the same step with
    `RNN(LSTMCell)`, on 256 rows and sessions of 5).
    """

    def __init__(self, units, num_layers=2, num_residual_layers=1, dropout_rate=0.0, seed=1024, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1 or not 0 <= num_residual_layers <= num_layers:
            raise ValueError(f"StackedLSTM needs num_layers >= 1 and 0 <= num_residual_layers <= num_layers, got "
                             f"{num_layers} and {num_residual_layers}")
        self.units = int(units)
        self.num_layers = int(num_layers)
        self.num_residual_layers = int(num_residual_layers)
        self.dropout_rate = float(dropout_rate)
        self.seed = seed
        self.lstms = [tf.keras.layers.RNN(tf.keras.layers.LSTMCell(
            self.units, dropout=self.dropout_rate,
            kernel_initializer=tf.keras.initializers.GlorotUniform(seed + i),
            recurrent_initializer=tf.keras.initializers.Orthogonal(seed=seed + i), name="cell"),
            return_sequences=True, name=f"lstm_{i}") for i in range(self.num_layers)]

    def residual(self, layer):
        """Whether layer `layer` (0-based) adds its input to its output."""
        return layer >= self.num_layers - self.num_residual_layers

    def build(self, inputs_shape, mask_shape=None):
        if self.residual(0) and int(inputs_shape[-1]) != self.units:
            raise ValueError(f"StackedLSTM: a residual first layer needs inputs of units={self.units} features, got "
                             f"{int(inputs_shape[-1])}")
        # A short session of known length is unrolled: XLA then runs the steps as straight-line code
        # rather than a while loop (SDM's training step, sessions of 5: 1,169 -> 655 XLA operations,
        # 15.1 -> 14.2 ms per batch of 256). The same function, step for step.
        steps = inputs_shape[1]
        for lstm in self.lstms:
            lstm.unroll = steps is not None and int(steps) <= MAX_UNROLLED_STEPS
        super().build(inputs_shape)

    def call(self, inputs, mask, training=None):
        x = inputs
        for layer, lstm in enumerate(self.lstms):
            h = lstm(x, mask=mask, training=training)
            x = x + h if self.residual(layer) else h
        return _zero_padding(x, mask)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, num_layers=self.num_layers, num_residual_layers=self.num_residual_layers,
                      dropout_rate=self.dropout_rate, seed=self.seed)
        return config


@_register
class SessionSelfAttention(tf.keras.layers.Layer):
    """Multi-head self-attention over a session: LayerNorm(X + Dropout(MultiHead(X, X, X))).

    call(inputs (batch, T, D), mask (batch, T) bool) -> (batch, T, D) (0 at padded positions).
    `tf.keras.layers.MultiHeadAttention` with `num_heads` heads of D / num_heads dimensions
    (D must divide), its attention dropout `dropout_rate`. Position t attends to the real
    positions only, and with `causal` (DeepMatch's future_binding, its default) only to those
    at or before t. `use_residual` / `use_layer_norm` as DeepMatch's SelfMultiHeadAttention.
    `seed` seeds the output dropout; the projections start from Keras' unseeded default
    initializer and the attention dropout is unseeded (both reproducible with
    `tf.keras.utils.set_random_seed`).
    """

    def __init__(self, num_heads=4, dropout_rate=0.0, causal=True, use_residual=True, use_layer_norm=True, seed=1024,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.dropout_rate = float(dropout_rate)
        self.causal = bool(causal)
        self.use_residual = bool(use_residual)
        self.use_layer_norm = bool(use_layer_norm)
        self.seed = seed
        self.dropout = tf.keras.layers.Dropout(self.dropout_rate, seed=seed)
        self.layer_norm = tf.keras.layers.LayerNormalization(name="layer_norm") if use_layer_norm else None

    def build(self, inputs_shape, mask_shape=None):
        dim = int(inputs_shape[-1])
        if self.num_heads < 1 or dim % self.num_heads:
            raise ValueError(f"SessionSelfAttention: num_heads={self.num_heads} must divide the feature size {dim}")
        # Keras' default (unseeded) initializer: MultiHeadAttention clones its initializer for the
        # query, key and value projections, so a seeded one would start them all equal.
        self.attention = tf.keras.layers.MultiHeadAttention(
            self.num_heads, dim // self.num_heads, dropout=self.dropout_rate, name="multi_head")
        # Its projection layers now, not at its first call: a model revived from a SavedModel builds
        # this layer and then matches the saved weights to the layers it finds; weights of layers
        # made later kept their initial values. (tf-keras' MultiHeadAttention has no public build.)
        self.attention._build_from_signature(inputs_shape, inputs_shape)
        super().build(inputs_shape)

    def call(self, inputs, mask, training=None):
        attend = mask[:, None, :]                                                      # (B, 1, T) keys
        if self.causal:
            length = tf.shape(inputs)[1]
            attend &= tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)[None]    # key <= query
        x = self.attention(inputs, inputs, attention_mask=attend, training=training)
        x = self.dropout(x, training=training)
        if self.use_residual:
            x = inputs + x
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return _zero_padding(x, mask)

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, dropout_rate=self.dropout_rate, causal=self.causal,
                      use_residual=self.use_residual, use_layer_norm=self.use_layer_norm, seed=self.seed)
        return config


@_register
class UserAttention(tf.keras.layers.Layer):
    """Attention over a sequence with the user profile as the query (SDM's user attention).

    call(user (batch, U), keys (batch, T, D), mask (batch, T) bool) -> (batch, D), D = `units`:

        q = activation(W e_u + b)                          (batch, D), e_u projected to the keys
        alpha_t = softmax over the real t of q . k_t / sqrt(D)   (`scale`)
        out = sum_t alpha_t k_t  (+ the mean of the real k_t with `use_residual`)

    The paper scores x_t . e_u; the projection lets e_u and the keys differ in size (DeepMatch's
    UserAttention does the same). `use_residual` is DeepMatch's use_res, which adds the mean
    of all T keys; here the mean runs over the real ones. A row without real positions gives 0.
    `dropout_rate` drops attention weights in training.
    """

    def __init__(self, units, activation="tanh", use_residual=False, dropout_rate=0.0, scale=True, seed=1024,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = activation
        self.use_residual = bool(use_residual)
        self.dropout_rate = float(dropout_rate)
        self.scale = bool(scale)
        self.seed = seed
        self.query = tf.keras.layers.Dense(self.units, activation=activation,
                                           kernel_initializer=tf.keras.initializers.GlorotUniform(seed), name="query")
        self.dropout = tf.keras.layers.Dropout(self.dropout_rate, seed=seed)

    def call(self, user, keys, mask, training=None):
        if keys.shape[-1] is not None and int(keys.shape[-1]) != self.units:
            raise ValueError(f"UserAttention: keys have {int(keys.shape[-1])} features, units is {self.units}")
        query = self.query(user)                                                        # (B, D)
        scores = tf.einsum("bd,btd->bt", query, keys)
        if self.scale:
            scores /= tf.sqrt(tf.cast(tf.shape(keys)[-1], scores.dtype))
        scores = tf.where(mask, scores, tf.constant(-1e9, scores.dtype))
        weights = tf.where(mask, tf.nn.softmax(scores, axis=-1), tf.zeros((), scores.dtype))  # (B, T)
        weights = self.dropout(weights, training=training)
        keys = _zero_padding(keys, mask)
        out = tf.einsum("bt,btd->bd", weights, keys)
        if self.use_residual:
            count = tf.reduce_sum(tf.cast(mask, keys.dtype), axis=1, keepdims=True)
            out += tf.reduce_sum(keys, axis=1) / tf.maximum(count, 1.0)
        return out

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=self.activation, use_residual=self.use_residual,
                      dropout_rate=self.dropout_rate, scale=self.scale, seed=self.seed)
        return config


@_register
class GatedFusion(tf.keras.layers.Layer):
    """SDM's gated fusion of the short-term s and the long-term p interest, gated by the user e_u.

    call(user (batch, U), short (batch, d), long (batch, d)) -> (batch, d), d = `units`:

        G = sigmoid(W1 e_u + W2 s + W3 p + b)
        out = (1 - G) * p + G * s

    Weights `user_kernel` (U, d), `short_kernel` (d, d), `long_kernel` (d, d), `bias` (d,):
    DeepMatch's Dense(units, 'sigmoid') over [p, s, e_u], split by input.
    """

    def __init__(self, units, seed=1024, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.seed = seed

    def build(self, user_shape):
        dim = self.units

        def kernel(name, rows, offset):
            return self.add_weight(name=name, shape=(rows, dim),
                                   initializer=tf.keras.initializers.GlorotUniform(self.seed + offset))

        self.user_kernel = kernel("user_kernel", int(user_shape[-1]), 0)
        self.short_kernel = kernel("short_kernel", dim, 1)
        self.long_kernel = kernel("long_kernel", dim, 2)
        self.bias = self.add_weight(name="bias", shape=(dim,), initializer="zeros")
        super().build(user_shape)

    def gate(self, user, short, long):
        """G (batch, d)."""
        return tf.sigmoid(tf.matmul(user, self.user_kernel) + tf.matmul(short, self.short_kernel)
                          + tf.matmul(long, self.long_kernel) + self.bias)

    def call(self, user, short, long):
        for name, value in (("short", short), ("long", long)):
            if value.shape[-1] is not None and int(value.shape[-1]) != self.units:
                raise ValueError(f"GatedFusion: the {name}-term interest has {int(value.shape[-1])} features, units "
                                 f"is {self.units}")
        gate = self.gate(user, short, long)
        return (1.0 - gate) * long + gate * short

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, seed=self.seed)
        return config
