"""Mixture-of-experts building blocks for multi-task ranking (MMoE, PLE).

Experts: several MLPs over one input, stacked. ExpertGate: one task's softmax weights
over experts. ExpertMixture: the gate-weighted sum of experts. The gate is a layer of its own, so
its output (the expert utilisation a user wants to inspect) is a named tensor of the model graph;
`gate_model` turns those tensors into outputs.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from .core import DNN, MLPLayer, check_positive_int

_register = tf.keras.utils.register_keras_serializable(package="tfrec")


class _ExpertLayer(MLPLayer):
    """Keeps (and serialises) the expert count beside the DNN arguments Experts and ExpertGate share."""

    def __init__(self, num_experts, hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs):
        super().__init__(hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs)
        check_positive_int(num_experts, "num_experts", f"{type(self).__name__} '{self.name}'")
        self.num_experts = int(num_experts)

    def dnn(self, hidden_units, seed, name):
        return DNN(hidden_units, self.activation, self.l2_reg, self.dropout_rate, self.use_bn, seed=seed, name=name)

    def get_config(self):
        config = super().get_config()
        config.update(num_experts=self.num_experts)
        return config


@_register
class Experts(_ExpertLayer):
    """`num_experts` independent MLPs (`DNN`s) over the same input, stacked along a new axis.

    Input (batch, in_dim) -> output (batch, num_experts, hidden_units[-1]). Expert n is a `DNN`
    seeded with seed + 7919 * n, so the experts start apart (with one seed they would start
    identical). On CPU, separate small matmuls measured as fast as or faster than one batched
    (num_experts, in, out) einsum, so the experts stay plain DNNs.
    """

    def __init__(self, num_experts, hidden_units, activation="relu", l2_reg=0.0, dropout_rate=0.0,
                 use_bn=False, seed=1024, **kwargs):
        super().__init__(num_experts, hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs)
        if not hidden_units:
            raise ValueError(f"Experts '{self.name}': hidden_units must name at least one layer "
                             "(an expert without layers is the identity, and all experts would be equal)")
        self.experts = [self.dnn(self.hidden_units, seed + 7919 * n, f"expert_{n}") for n in range(num_experts)]

    def call(self, inputs, training=None):
        return tf.stack([expert(inputs, training=training) for expert in self.experts], axis=1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.num_experts, self.hidden_units[-1]])


@_register
class ExpertGate(_ExpertLayer):
    """One task's gate over `num_experts` experts: g^k(x) = softmax(W_gk x) (MMoE, Ma et al. 2018).

    Input (batch, in_dim) -> (batch, num_experts), each row non-negative and summing to 1.
    An optional DNN (`hidden_units`) precedes the bias-free Dense(num_experts) + softmax, as in
    DeepCTR's `gate_dnn_hidden_units`.
    """

    def __init__(self, num_experts, hidden_units=(), activation="relu", l2_reg=0.0, dropout_rate=0.0,
                 use_bn=False, seed=1024, **kwargs):
        super().__init__(num_experts, hidden_units, activation, l2_reg, dropout_rate, use_bn, seed, **kwargs)
        self.hidden = self.dnn(self.hidden_units, seed, "dnn") if self.hidden_units else None
        self.logits = tf.keras.layers.Dense(
            num_experts, use_bias=False, kernel_initializer=tf.keras.initializers.GlorotNormal(seed),
            kernel_regularizer=tf.keras.regularizers.l2(l2_reg) if l2_reg else None, name="logits")

    def call(self, inputs, training=None):
        x = self.hidden(inputs, training=training) if self.hidden is not None else inputs
        return tf.nn.softmax(self.logits(x), axis=-1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0], self.num_experts])


@_register
class ExpertMixture(tf.keras.layers.Layer):
    """The gate-weighted sum of experts, sum_n g_n * f_n.

    `experts`: (batch, N, D), or a list of groups (batch, N_i, D) in the gate's order (PLE fuses a
    task's own experts with the shared ones); `gate_weights`: (batch, N) -> (batch, D).

    A group of several experts is mixed by one einsum; a group of one (PLE's default: one expert a
    task, one shared) is scaled by its weight instead. Under XLA on CPU the einsum is a batched
    (1 x N) by (N x D) product per example, which costs more than the multiply: PLE's compiled
    step went from 8.9-10.5 to 8.4-9.9 ms (six alternating rounds in one process).
    """

    def call(self, experts, gate_weights):
        groups = list(experts) if isinstance(experts, (list, tuple)) else [experts]
        sizes = [group.shape[1] for group in groups]
        num_weights = gate_weights.shape[-1]
        if None not in sizes and num_weights is not None and sum(sizes) != num_weights:
            raise ValueError(f"ExpertMixture '{self.name}': the gate gives {num_weights} weights "
                             f"for {sum(sizes)} experts")
        if None in sizes or len(groups) == 1:
            return tf.einsum("bnd,bn->bd", tf.concat(groups, axis=1), gate_weights)
        return tf.add_n([tf.squeeze(group, 1) * weights if size == 1 else tf.einsum("bnd,bn->bd", group, weights)
                         for group, size, weights in zip(groups, sizes, tf.split(gate_weights, sizes, axis=-1))])


def gate_model(model):
    """A model from `model`'s inputs to every expert gate's weights, to inspect expert utilisation.

    Works on a freshly built MMOE/PLE and on one reloaded with `tf.keras.models.load_model`.

    Args:
      model: a Keras functional model containing ExpertGate layers (MMOE, PLE).

    Returns:
      A tf.keras.Model taking the same dict of raw features and returning
      {gate layer name: (batch, num_experts) weights}, e.g. {"gate_ctr": ..., "gate_ctcvr": ...}
      for MMOE, {"level_0_gate_ctr": ..., "level_0_gate_shared": ..., "level_1_gate_ctr": ...}
      for PLE.

    Raises:
      ValueError: `model` has no ExpertGate layer (e.g. ESMM or SharedBottom).
    """
    gates = {layer.name: layer.output for layer in model.layers if isinstance(layer, ExpertGate)}
    if not gates:
        raise ValueError(f"model '{model.name}' has no expert gates (ExpertGate layers); "
                         "gate_model applies to MMOE and PLE")
    return tf.keras.Model(inputs=model.input, outputs=gates, name=f"{model.name}_gates")
