"""Building blocks shared by the models: activations, the DNN tower, the prediction head."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import contextlib
import numbers

import numpy as np
import tensorflow as tf

_register = tf.keras.utils.register_keras_serializable(package="tfrec")

TASKS = ("binary", "regression")


def _column_sums(matrix):
    """(N, H) -> (1, H), the sum over rows, as one (1, N) x (N, H) product.

    Inside XLA on CPU a reduction over the rows compiles to a scalar reduce-window loop; the
    product runs as a vectorised GEMV, about twice as fast on DIN's (51200, 80) attention units.
    """
    return tf.matmul(tf.ones([1, tf.shape(matrix)[0]], matrix.dtype), matrix)


@tf.custom_gradient
def _dice_on_batch(x, alphas, epsilon):
    """Dice in training mode on x (N, H), normalised with the batch's own mean and variance.

    Returns (output (N, H), batch mean (1, H), batch variance (1, H)). The gradient is written out
    (BatchNorm's backward pass, then the gate's), so that each of its three sums over the rows is
    one product (`_column_sums`) rather than the reductions autodiff would emit.
    """
    rows = tf.cast(tf.shape(x)[0], x.dtype)
    mean = _column_sums(x) / rows
    centred = x - mean
    variance = _column_sums(centred * centred) / rows
    inverse_std = tf.math.rsqrt(variance + epsilon)
    normalised = centred * inverse_std
    probability = tf.sigmoid(normalised)
    gate = alphas + (1.0 - alphas) * probability                  # f(s) = s * gate

    def gradient(upstream, _mean_gradient, _variance_gradient):
        through_probability = upstream * x * (1.0 - probability)  # d f / d alphas, per element
        through_normalised = through_probability * (1.0 - alphas) * probability
        sums = _column_sums(tf.concat([through_probability, through_normalised,
                                       through_normalised * normalised], axis=1))
        alphas_gradient, normalised_sum, normalised_dot = tf.split(sums, 3, axis=1)
        x_gradient = upstream * gate + inverse_std * (
            through_normalised - (normalised_sum + normalised * normalised_dot) / rows)
        return x_gradient, tf.reshape(alphas_gradient, [-1]), None

    return (x * gate, mean, variance), gradient


@_register
class Dice(tf.keras.layers.Layer):
    """Data-adaptive activation from DIN (Zhou et al., 2018), eq. (9).

    f(s) = p(s) * s + (1 - p(s)) * alpha * s, with p(s) = sigmoid(BN(s)); BN has no scale/offset
    and `alpha` is learned per unit. Any input shape; normalises over the last axis.

    `momentum` is that of BN's moving statistics, which Dice uses at inference. DeepCTR keeps
    Keras' 0.99: after the few hundred steps a CTR model often trains, the moving variance is then
    still mostly its initial 1 while the real one is tiny (embeddings start at 1e-4 scale), so
    predictions differ from training-mode outputs and test AUC drops (the ablation row of
    BENCHMARKS.md's DIN table). 0.9 tracks the training distribution.

    In training the layer computes BN itself (`_dice_on_batch`, the same function as Keras'
    BatchNormalization with the batch's statistics) and updates the BN sublayer's moving mean and
    variance as that layer would; at inference it calls the sublayer. A frozen layer (its own,
    its model's or its BN sublayer's `trainable = False`) runs as at inference, as a frozen Keras
    BatchNormalization does, so fine-tuning leaves its statistics alone. Under XLA on CPU this made
    DIN's training step about a third faster: BN's row reductions dominated it.
    """

    def __init__(self, epsilon=1e-9, momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.momentum = momentum
        self.batch_norm = tf.keras.layers.BatchNormalization(
            axis=-1, momentum=momentum, epsilon=epsilon, center=False, scale=False, name="bn")

    def build(self, input_shape):
        self.alphas = self.add_weight(name="alphas", shape=(input_shape[-1],),
                                      initializer="zeros", dtype=self.dtype)
        # Built here (training never calls it), after alphas and in its own scope: the weight
        # order and names ("<dice>/bn/moving_mean") of earlier saves.
        with tf.name_scope(self.batch_norm.name):
            self.batch_norm.build(input_shape)
        super().build(input_shape)

    def call(self, inputs, training=None):
        if training is None:
            training = tf.keras.backend.learning_phase()
        if not self.batch_norm.trainable:  # frozen, with the layer or the model: as Keras' BN, inference
            training = False
        return tf.__internal__.smart_cond.smart_cond(
            training, lambda: self._on_batch(inputs), lambda: self._with_moving_statistics(inputs))

    def _with_moving_statistics(self, inputs):
        probability = tf.sigmoid(self.batch_norm(inputs, training=False))
        return probability * inputs + (1.0 - probability) * self.alphas * inputs

    def _on_batch(self, inputs):
        units = tf.shape(inputs)[-1]
        outputs, mean, variance = _dice_on_batch(tf.reshape(inputs, [-1, units]), tf.convert_to_tensor(self.alphas),
                                                 tf.constant(self.epsilon, inputs.dtype))
        # Keras' update, moving -= (moving - batch) * (1 - momentum), skipped for an empty batch.
        decay = 1.0 - self.batch_norm.momentum
        has_rows = tf.size(inputs) > 0
        for moving, batch in ((self.batch_norm.moving_mean, mean), (self.batch_norm.moving_variance, variance)):
            moving.assign_sub(tf.where(has_rows, (moving - tf.reshape(batch, [-1])) * decay, tf.zeros_like(moving)))
        return tf.reshape(outputs, tf.shape(inputs))

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, momentum=self.momentum)
        return config


_evaluating = [False]


@contextlib.contextmanager
def evaluating():
    """Layer calls traced or run within are an evaluation step (`evaluate`, `fit`'s validation).

    Keras calls a layer with training=False there as in `predict` and in an exported signature;
    a layer that measures something besides its output in training (a self-supervised loss) also
    measures it under this context, and in no other inference.
    """
    outer, _evaluating[0] = _evaluating[0], True
    try:
        yield
    finally:
        _evaluating[0] = outer


def in_evaluation():
    """Whether the current layer call is within `evaluating()`."""
    return _evaluating[0]


def check_positive_int(value, name, owner):
    """A ValueError "<owner>: <name> must be an int >= 1" unless `value` is one (numpy ints too)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}")


def check_number(value, name, owner, positive=False):
    """A ValueError "<owner>: <name> must be a number >= 0" (> 0 when `positive`) unless `value`
    is a finite one (numpy floats too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf") or \
            (positive and value == 0):
        raise ValueError(f"{owner}: {name} must be a number {'>' if positive else '>='} 0, got {value!r}")


def check_activation(activation, owner):
    """A ValueError naming `owner` unless `activation_layer` can build `activation`."""
    if isinstance(activation, str) and activation.lower() in ("dice", "prelu"):
        return
    if isinstance(activation, type) and issubclass(activation, tf.keras.layers.Layer):
        return
    try:
        known = isinstance(activation, str) and tf.keras.activations.get(activation) is not None
    except ValueError:
        known = False
    if not known:
        raise ValueError(f"{owner}: unknown activation {activation!r}: use 'dice', 'prelu', a Keras activation "
                         "name ('relu', 'sigmoid', ...) or a Keras Layer class")


def activation_layer(activation, name=None):
    """A layer for `activation`: "dice", "prelu", any Keras activation name, or a Layer class."""
    check_activation(activation, f"layer '{name}'")
    if isinstance(activation, str):
        if activation.lower() == "dice":
            return Dice(name=name)
        if activation.lower() == "prelu":
            return tf.keras.layers.PReLU(name=name)
        return tf.keras.layers.Activation(activation, name=name)
    return activation(name=name)


class MLPLayer(tf.keras.layers.Layer):
    """Base of the layers built around an MLP (`DNN`, DIN's activation unit, expert layers, CLSR's
    fusion gate): keeps and serialises the MLP's arguments `hidden_units`, `activation`,
    `l2_reg`, `dropout_rate`, `use_bn` and `seed`, with `DNN`'s meaning."""

    def __init__(self, hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs):
        super().__init__(**kwargs)
        # A unit count of 0 would build, then abort the whole process in oneDNN at the first step.
        owner = f"{type(self).__name__} '{self.name}'"
        if not isinstance(hidden_units, (list, tuple)):
            raise ValueError(f"{owner}: hidden_units (a model's dnn_hidden_units, att_hidden_units, ...) must be a "
                             f"list or tuple of layer sizes, got {hidden_units!r}")
        for units in hidden_units:
            check_positive_int(units, "every entry of hidden_units (a layer's size)", owner)
        if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, numbers.Real) or \
                not 0 <= dropout_rate < 1:
            raise ValueError(f"{owner}: dropout_rate (a model's dnn_dropout) must be a number in [0, 1), got "
                             f"{dropout_rate!r}")
        check_activation(activation, owner)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.activation = activation
        self.l2_reg = l2_reg
        self.dropout_rate = dropout_rate
        self.use_bn = use_bn
        self.seed = seed

    def get_config(self):
        config = super().get_config()
        config.update(hidden_units=self.hidden_units, activation=self.activation, l2_reg=self.l2_reg,
                      dropout_rate=self.dropout_rate, use_bn=self.use_bn, seed=self.seed)
        return config


@_register
class DNN(MLPLayer):
    """A multi-layer perceptron: Dense -> [BatchNorm] -> activation -> [Dropout], per unit count.

    Input (batch, ..., in_dim) -> output (batch, ..., hidden_units[-1]); works on sequences too,
    e.g. DIN's attention MLP over (batch, T, 4E). `output_activation` overrides the last layer's.
    """

    def __init__(self, hidden_units, activation="relu", l2_reg=0.0, dropout_rate=0.0, use_bn=False,
                 output_activation=None, seed=1024, **kwargs):
        super().__init__(hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs)
        self.output_activation = output_activation
        regularizer = tf.keras.regularizers.l2(l2_reg) if l2_reg else None
        self.dense_layers, self.bn_layers, self.activation_layers, self.dropout_layers = [], [], [], []
        for i, units in enumerate(self.hidden_units):
            self.dense_layers.append(tf.keras.layers.Dense(
                units, kernel_initializer=tf.keras.initializers.GlorotNormal(seed=seed + i),
                kernel_regularizer=regularizer, name=f"dense_{i}"))
            if use_bn:
                self.bn_layers.append(tf.keras.layers.BatchNormalization(name=f"bn_{i}"))
            last = i == len(self.hidden_units) - 1
            act = output_activation if (last and output_activation) else activation
            self.activation_layers.append(activation_layer(act, name=f"activation_{i}"))
            if dropout_rate:
                self.dropout_layers.append(tf.keras.layers.Dropout(dropout_rate, seed=seed + i, name=f"dropout_{i}"))

    def call(self, inputs, training=None):
        x = inputs
        for i, dense in enumerate(self.dense_layers):
            x = dense(x)
            if self.use_bn:
                x = self.bn_layers[i](x, training=training)
            x = self.activation_layers[i](x, training=training)
            if self.dropout_rate:
                x = self.dropout_layers[i](x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape)
        return shape[:-1].concatenate([self.hidden_units[-1] if self.hidden_units else shape[-1]])

    def get_config(self):
        config = super().get_config()
        config.update(output_activation=self.output_activation)
        return config


@_register
class PredictionLayer(tf.keras.layers.Layer):
    """The output head: a global bias, then sigmoid for "binary" or identity for "regression".

    Input/output (batch, 1). Name it after the task so that the model's output is named.
    """

    def __init__(self, task="binary", use_bias=True, **kwargs):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        super().__init__(**kwargs)
        self.task = task
        self.use_bias = use_bias

    def build(self, input_shape):
        if self.use_bias:
            self.global_bias = self.add_weight(name="global_bias", shape=(1,), initializer="zeros")
        super().build(input_shape)

    def call(self, logits):
        x = logits + self.global_bias if self.use_bias else logits
        return tf.sigmoid(x) if self.task == "binary" else x

    def get_config(self):
        config = super().get_config()
        config.update(task=self.task, use_bias=self.use_bias)
        return config


def check_task(task, name="task"):
    if task not in TASKS:
        raise ValueError(f"{name} must be one of {TASKS}, got {task!r}")
    return task
