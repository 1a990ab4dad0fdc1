"""DIN's local activation unit and attention pooling over a behaviour sequence."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from .core import DNN

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


@_register
class LocalActivationUnit(tf.keras.layers.Layer):
    """Scores each behaviour against the candidate (DIN, Zhou et al. 2018, Fig. 2).

    query (batch, 1, E), keys (batch, T, E) -> scores (batch, T, 1) from an MLP over
    [q, k, q - k, q * k], computed for all T positions at once (no loop over positions).
    """

    def __init__(self, hidden_units=(64, 32), activation="sigmoid", l2_reg=0.0, dropout_rate=0.0,
                 use_bn=False, seed=1024, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.activation = activation
        self.l2_reg = l2_reg
        self.dropout_rate = dropout_rate
        self.use_bn = use_bn
        self.seed = seed
        self.mlp = DNN(self.hidden_units, activation, l2_reg, dropout_rate, use_bn, seed=seed, name="mlp")
        self.score = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotNormal(seed),
                                           name="score")

    def call(self, query, keys, training=None):
        queries = tf.broadcast_to(query, tf.shape(keys))
        features = tf.concat([queries, keys, queries - keys, queries * keys], axis=-1)
        return self.score(self.mlp(features, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=self.hidden_units, activation=self.activation, l2_reg=self.l2_reg,
                      dropout_rate=self.dropout_rate, use_bn=self.use_bn, seed=self.seed)
        return config


@_register
class AttentionSequencePooling(tf.keras.layers.Layer):
    """DIN's attention pooling: sum_t a(q, k_t) * k_t over the real (unmasked) behaviours.

    query (batch, 1, E), keys (batch, T, E), mask (batch, T) bool -> (batch, 1, E).
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
