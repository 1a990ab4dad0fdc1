"""Optimizers whose step on an embedding table touches only the rows the batch looked up."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

__all__ = ["LazyAdam", "sparse_optimizer"]


@tf.keras.utils.register_keras_serializable(package="tfrec")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that updates only the looked-up rows of an embedding table.

    Dense gradients get Keras' Adam unchanged. For an `IndexedSlices` gradient (a `tf.gather`
    from a table) Keras' Adam decays both moments of every row at every step, so its cost grows
    with the table; here the moments and weights of the rows in the batch are updated and every
    other row, with its moments, is left exactly as it was (the "lazy" Adam of TF-Addons and
    TF1's `LazyAdamOptimizer`). A row's moments therefore decay only on the steps that use it.
    Slots and config are Adam's, so checkpoints and `get_config` round-trip as usual, and the
    update compiles with XLA inside a training step.
    """

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        # apply_gradients has already summed repeated rows (Optimizer._deduplicate_sparse_grad).
        rows, grads = gradient.indices, gradient.values

        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon

        index = self._index_dict[self._var_key(variable)]
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grads
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grads)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))


def sparse_optimizer(optimizer):
    """The optimizer `compile` should use: Keras' Adam (by name or instance) becomes LazyAdam.

    LazyAdam is Adam on dense weights and lazy on embedding rows, with the same hyper-parameters.
    Other optimizers are returned as given; Keras' Adagrad and SGD already update sparsely.
    """
    if isinstance(optimizer, str) and optimizer.lower() == "adam":
        return LazyAdam()
    if type(optimizer) is tf.keras.optimizers.Adam:
        return LazyAdam.from_config(optimizer.get_config())
    return optimizer
