"""MIND's building blocks (Li et al., CIKM 2019): interest capsules by dynamic routing, label-aware attention.

  InterestMask         which of the k_max interests a user has: all, or with dynamic_k
                       max(1, min(k_max, log2(history length))) of them (eq. 9).
  CapsuleLayer         the multi-interest extractor: behaviour-to-interest (B2I) dynamic routing of
                       the history's embeddings into k_max interest capsules (Algorithm 1).
  MaskInterests        the interests with the inactive ones set to zero.
  LabelAwareAttention  the training user vector: the interests attended by the target item (eq. 10).

Sequences are (batch, T, ...) with a (batch, T) bool mask, true on real events; padding never
changes any output. Interest masks are (batch, k_max) float32, 1.0 on the active interests.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np
import tensorflow as tf

from .core import check_positive_int

_register = tf.keras.utils.register_keras_serializable(package="tfrec")

# A logit no active one comes near: softmax gives it exactly 0 weight (float32 exp underflows).
_MASKED_LOGIT = -1e9
# LabelAwareAttention switches to hard attention (the argmax) from this power on, as DeepMatch does.
HARD_ATTENTION_POWER = 100


def squash(vectors, axis=-1, epsilon=1e-9):
    """The capsule non-linearity: squash(z) = ||z||^2 / (1 + ||z||^2) * z / ||z||.

    Keeps the direction of z and maps its length into [0, 1): short vectors shrink towards 0,
    long ones approach length 1. squash(0) = 0.
    """
    squared_norm = tf.reduce_sum(tf.square(vectors), axis=axis, keepdims=True)
    return squared_norm / (1.0 + squared_norm) * vectors / tf.sqrt(squared_norm + epsilon)


def interest_number(lengths, k_max):
    """MIND's adaptive interest count (eq. 9): max(1, min(k_max, floor(log2(length)))), int32.

    Counted exactly in integers: floor(log2(n)) >= j iff n >= 2^j, so a float log2 that lands
    just under an integer (log2(8) = 2.9999998) cannot cost an interest. A history of 0 to 3
    events has 1 interest, 4-7 events 2, 8-15 events 3, ...
    """
    lengths = tf.cast(tf.reshape(lengths, [-1]), tf.int32)
    # 2^1 .. 2^k_max, but no power past 2^30: no int32 length reaches 2^31 (nor int32 holds it).
    powers = tf.constant([2 ** j for j in range(1, min(k_max, 30) + 1)], tf.int32)
    count = tf.reduce_sum(tf.cast(lengths[:, None] >= powers[None, :], tf.int32), axis=1)
    return tf.clip_by_value(count, 1, k_max)


@_register
class InterestMask(tf.keras.layers.Layer):
    """Which interests a user has: history mask (batch, T) bool -> (batch, k_max) float32.

    Without `dynamic_k` every user has all k_max interests (rows of ones). With it, a user with
    n real events has K'_u = max(1, min(k_max, floor(log2(n)))) (`interest_number`): the first
    K'_u entries are 1.0, the rest 0.0. The model serves this tensor as its "interest_mask" next
    to the interests, so a search skips the ones a user does not have.
    """

    def __init__(self, k_max, dynamic_k=False, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(k_max, "k_max", f"InterestMask '{self.name}'")
        self.k_max = int(k_max)
        self.dynamic_k = bool(dynamic_k)

    def call(self, history_mask):
        if not self.dynamic_k:
            return tf.ones([tf.shape(history_mask)[0], self.k_max], tf.float32)
        lengths = tf.reduce_sum(tf.cast(history_mask, tf.int32), axis=1)
        return tf.sequence_mask(interest_number(lengths, self.k_max), self.k_max, tf.float32)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.k_max])

    def get_config(self):
        config = super().get_config()
        config.update(k_max=self.k_max, dynamic_k=self.dynamic_k)
        return config


@_register
class CapsuleLayer(tf.keras.layers.Layer):
    """MIND's multi-interest extractor layer: B2I dynamic routing (Algorithm 1), DeepMatch's arguments.

    call(behaviours, mask, interest_mask=None): behaviours (batch, T, input_units) the history's
    item embeddings e_i, mask (batch, T) bool (true on real events), interest_mask (batch, k_max)
    float (1.0 on the active interests, default all) -> interest capsules (batch, k_max, out_units):

        c_i = S e_i                    one bilinear map S (input_units x out_units) shared by all
                                       capsules (B2I: the paper's change to capsule networks)
        b_ij ~ N(0, init_std^2)        the initial routing logits of event i and interest j
        repeat iteration_times:
            w_ij = softmax_j b_ij      over the active interests; 0 for padding events
            u_j  = squash(sum_i w_ij c_i)
            b_ij = b_ij + u_j . c_i    (all but the last iteration)

    As in DeepMatch, the routing weights of all but the last iteration see c_i through a
    stop-gradient: gradients reach S and the embeddings through the last iteration's sum.

    Why Gaussian logits: S is shared, so with b = 0 every capsule gets the same weights, the same
    sum and the same update, and all k_max capsules stay identical forever (one interest). The
    random b_ij break that symmetry. They are drawn once (a non-trainable weight of shape
    (max_len, k_max), from `seed`) and fixed, not re-drawn at every call as DeepMatch 0.3.2 does:
    re-drawn logits make a user's served interests change from one request to the next (and
    differ between a model and its reloaded copy), while fixed ones give a deterministic user
    tower. `init_std=0` gives the zero initialisation (for the comparison above). The updates
    u_j . c_i are at most |c_i| (|u_j| < 1): with the short vectors of a trained MIND (|e_i| ~0.7)
    they move the logits less than the N(0, 1) start, which then decides how a history splits
    (measured in tfrec/models/mind.py's docstring).

    Padding events get weight 0 in every iteration, so they change neither the capsules nor the
    logits of real events; inactive interests get weight 0 from every event, so their capsules
    are zero. A history without events gives zero capsules. T may be less than max_len.
    """

    def __init__(self, input_units, out_units, max_len, k_max, iteration_times=3, init_std=1.0, seed=1024,
                 **kwargs):
        super().__init__(**kwargs)
        owner = f"CapsuleLayer '{self.name}'"
        for name, value in (("input_units", input_units), ("out_units", out_units), ("max_len", max_len),
                            ("k_max", k_max), ("iteration_times", iteration_times)):
            check_positive_int(value, name, owner)
        if init_std < 0:
            raise ValueError(f"{owner}: init_std must be >= 0, got {init_std!r}")
        self.input_units, self.out_units = int(input_units), int(out_units)
        self.max_len, self.k_max = int(max_len), int(k_max)
        self.iteration_times = int(iteration_times)
        self.init_std = float(init_std)
        self.seed = seed

    def build(self, input_shape):
        length = tf.TensorShape(input_shape)[1]
        if length is not None and length > self.max_len:
            raise ValueError(f"CapsuleLayer '{self.name}': histories of {length} events, max_len is {self.max_len}")
        self.bilinear_mapping_matrix = self.add_weight(
            name="S", shape=[self.input_units, self.out_units],
            initializer=tf.keras.initializers.GlorotNormal(self.seed))
        initial = tf.keras.initializers.RandomNormal(stddev=self.init_std, seed=self.seed) if self.init_std \
            else tf.keras.initializers.Zeros()
        self.routing_logits = self.add_weight(name="routing_logits", shape=[self.max_len, self.k_max],
                                              initializer=initial, trainable=False)
        super().build(input_shape)

    def call(self, behaviours, mask, interest_mask=None):
        length = tf.shape(behaviours)[1]
        event_weight = tf.cast(mask, behaviours.dtype)[:, :, None]                          # (B, T, 1)
        mapped = tf.einsum("bte,eo->bto", behaviours, self.bilinear_mapping_matrix)           # c_i (B, T, D)
        routing_target = tf.stop_gradient(mapped)
        logits = tf.zeros_like(event_weight) + self.routing_logits[None, :length, :]         # b (B, T, K)
        if interest_mask is not None:
            active = tf.cast(interest_mask, tf.bool)[:, None, :]                              # (B, 1, K)
        for iteration in range(self.iteration_times):
            if interest_mask is not None:
                logits = tf.where(active, logits, _MASKED_LOGIT)
            weights = tf.nn.softmax(logits, axis=-1) * event_weight                          # w (B, T, K)
            if iteration < self.iteration_times - 1:
                capsules = squash(tf.einsum("btk,btd->bkd", weights, routing_target))         # (B, K, D)
                logits += tf.einsum("bkd,btd->btk", capsules, routing_target)
            else:
                capsules = squash(tf.einsum("btk,btd->bkd", weights, mapped))
        return capsules

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.k_max, self.out_units])

    def get_config(self):
        config = super().get_config()
        config.update(input_units=self.input_units, out_units=self.out_units, max_len=self.max_len,
                      k_max=self.k_max, iteration_times=self.iteration_times, init_std=self.init_std,
                      seed=self.seed)
        return config


@_register
class MaskInterests(tf.keras.layers.Layer):
    """interests (batch, k_max, d), interest_mask (batch, k_max) -> the interests, zero where inactive.

    DeepMatch's MaskUserEmbedding: a consumer that takes every row of the user embedding (e.g. one
    nearest-neighbour query per interest) gets zero vectors for the interests a user does not
    have, which score 0 against every item.
    """

    def call(self, interests, interest_mask):
        return interests * tf.cast(interest_mask, interests.dtype)[:, :, None]

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[0])


@_register
class LabelAwareAttention(tf.keras.layers.Layer):
    """The training user vector: the interests attended by the target item (eq. 10).

    call(interests, target, interest_mask=None): interests V_u (batch, k_max, d), target e_i
    (batch, d) or (batch, 1, d), interest_mask (batch, k_max) float (default all active) ->
    (batch, d):

        v_u = V_u softmax(pow(V_u^T e_i, p))    over the active interests

    p = 0 averages the active interests; larger p puts more weight on the interest closest to the
    target. From p >= 100 (DeepMatch's switch) the attention is hard: v_u is the active interest
    with the largest V_u^T e_i (the limit p -> infinity for the positive scores the interests are
    trained towards). DeepMatch takes the argmax of pow(score, p), for an even p the largest
    |score|, which can pick the interest pointing away from the target; this layer picks the one
    pointing towards it. For a fractional p, pow is applied to |score| with the score's sign
    (pow of a negative base is undefined); pow is clipped to +-1e30 so a large p cannot overflow
    into inf - inf in the softmax. Only training uses it: served users have no target, and a
    search scores every interest.
    """

    def __init__(self, k_max, pow_p=1, **kwargs):
        super().__init__(**kwargs)
        check_positive_int(k_max, "k_max", f"LabelAwareAttention '{self.name}'")
        if pow_p < 0:
            raise ValueError(f"LabelAwareAttention '{self.name}': pow_p must be >= 0, got {pow_p!r}")
        self.k_max = int(k_max)
        self.pow_p = pow_p

    def call(self, interests, target, interest_mask=None):
        target = tf.reshape(target, [-1, 1, tf.shape(interests)[-1]])
        scores = tf.reduce_sum(interests * target, axis=-1)                                  # (B, K)
        active = tf.ones_like(scores, tf.bool) if interest_mask is None else tf.cast(interest_mask, tf.bool)
        if self.pow_p >= HARD_ATTENTION_POWER:
            best = tf.argmax(tf.where(active, scores, -np.inf), axis=-1, output_type=tf.int32)
            return tf.gather(interests, best, axis=1, batch_dims=1)
        weights = tf.nn.softmax(tf.where(active, self._power(scores, active), _MASKED_LOGIT), axis=-1)
        return tf.einsum("bk,bkd->bd", weights, interests)

    def _power(self, scores, active):
        if self.pow_p == 0:
            return tf.zeros_like(scores)  # equal logits: the mean of the active interests
        # Inactive interests are zero vectors (score 0), and pow(0, p < 1) has an infinite
        # derivative: tf.where passes 0 * inf = NaN back from the branch it drops. Score them 1.
        scores = tf.where(active, scores, 1.0)
        if float(self.pow_p).is_integer():
            powered = tf.pow(scores, float(self.pow_p))
        else:
            powered = tf.sign(scores) * tf.pow(tf.maximum(tf.abs(scores), 1e-12), float(self.pow_p))
        return tf.clip_by_value(powered, -1e30, 1e30)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], input_shape[-1]])

    def get_config(self):
        config = super().get_config()
        config.update(k_max=self.k_max, pow_p=self.pow_p)
        return config
