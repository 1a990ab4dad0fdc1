"""DIN's local activation unit and attention pooling over a behaviour sequence."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from .core import DNN, MLPLayer, activation_layer

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


@_register
class LocalActivationUnit(MLPLayer):
    """Scores each behaviour against the candidate (DIN, Zhou et al. 2018, Fig. 2).

    query (batch, 1, E), keys (batch, T, E) or (1, T, E) (one history shared by every row) ->
    scores (batch, T, 1) from an MLP over [q, k, q - k, q * k], computed for all T positions at
    once (no loop over positions).

    The first layer W [q, k, q - k, q * k] is evaluated as q (W_q + W_d) + [k, q * k] [W_k - W_d; W_p]:
    the same function and the same (4E, units) kernel, but the query's share is computed once per
    example instead of once per position, which removes about 40% of the attention's multiply-adds.
    """

    def __init__(self, hidden_units=(64, 32), activation="sigmoid", l2_reg=0.0, dropout_rate=0.0,
                 use_bn=False, seed=1024, **kwargs):
        if not hidden_units:
            raise ValueError("LocalActivationUnit needs at least one hidden layer")
        super().__init__(hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs)
        self.first_bn = tf.keras.layers.BatchNormalization(name="first_bn") if use_bn else None
        self.first_activation = activation_layer(activation, name="first_activation")
        self.first_dropout = tf.keras.layers.Dropout(dropout_rate, seed=seed) if dropout_rate else None
        self.mlp = DNN(self.hidden_units[1:], activation, l2_reg, dropout_rate, use_bn, seed=seed + 1,
                       name="mlp") if len(self.hidden_units) > 1 else None
        self.score = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotNormal(seed),
                                           name="score")

    def build(self, query_shape, keys_shape=None):
        dim = int(query_shape[-1])
        self.first_kernel = self.add_weight(
            name="first_kernel", shape=(4 * dim, self.hidden_units[0]),
            initializer=tf.keras.initializers.GlorotNormal(self.seed),
            regularizer=tf.keras.regularizers.l2(self.l2_reg) if self.l2_reg else None)
        self.first_bias = self.add_weight(name="first_bias", shape=(self.hidden_units[0],), initializer="zeros")
        super().build(query_shape)

    def call(self, query, keys, training=None):
        w_query, w_key, w_diff, w_product = tf.split(self.first_kernel, 4, axis=0)
        # tensordot, not a broadcast tf.matmul: the kernel's gradient is then one (E, B*T) x (B*T, H)
        # product, where BatchMatMul's gradient builds a (B, E, H) gradient per example and sums it.
        per_example = tf.tensordot(query, w_query + w_diff, axes=1) + self.first_bias        # (B, 1, H)
        # Two products rather than one over [k, q * k]: keys shared by every row (one user's
        # history, batch 1) are then multiplied once, and broadcast.
        per_position = tf.tensordot(keys, w_key - w_diff, axes=1) + tf.tensordot(query * keys, w_product, axes=1)
        x = per_example + per_position
        if self.first_bn is not None:
            x = self.first_bn(x, training=training)
        x = self.first_activation(x, training=training)
        if self.first_dropout is not None:
            x = self.first_dropout(x, training=training)
        if self.mlp is not None:
            x = self.mlp(x, training=training)
        return self.score(x)


@_register
class AttentionSequencePooling(tf.keras.layers.Layer):
    """DIN's attention pooling: sum_t a(q, k_t) * k_t over the real (unmasked) behaviours.

    query (batch, 1, E), keys (batch, T, E), mask (batch, T) bool -> (batch, 1, E); keys and mask
    may have one row, shared by every query (one user's history, many candidates).
    Padding gets weight exactly 0, so it never changes the output. With
    `weight_normalization` the scores are softmax-normalised over the real behaviours (a row with
    none pools to zeros); without it they are used raw, as in the paper.
    """

    def __init__(self, att_hidden_units=(80, 40), att_activation="sigmoid", weight_normalization=False,
                 return_score=False, seed=1024, **kwargs):
        super().__init__(**kwargs)
        self.att_hidden_units = tuple(att_hidden_units)
        self.att_activation = att_activation
        self.weight_normalization = weight_normalization
        self.return_score = return_score
        self.seed = seed
        self.local_activation = LocalActivationUnit(self.att_hidden_units, att_activation, seed=seed,
                                                    name="local_activation")

    def call(self, query, keys, mask, training=None):
        scores = tf.squeeze(self.local_activation(query, keys, training=training), axis=-1)  # (B, T)
        if self.weight_normalization:
            scores = tf.where(mask, scores, tf.fill(tf.shape(scores), tf.constant(-1e9, scores.dtype)))
            scores = tf.nn.softmax(scores, axis=-1)
        scores = tf.where(mask, scores, tf.zeros_like(scores))[:, None, :]  # (B, 1, T)
        return scores if self.return_score else tf.matmul(scores, keys)

    def get_config(self):
        config = super().get_config()
        config.update(att_hidden_units=self.att_hidden_units, att_activation=self.att_activation,
                      weight_normalization=self.weight_normalization, return_score=self.return_score,
                      seed=self.seed)
        return config
