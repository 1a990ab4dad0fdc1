"""Optimizers whose step on an embedding table touches only the rows the batch looked up."""
import contextlib

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns.layers import SMALL_TABLE_MAX_SIZE

__all__ = ["LazyAdam", "sparse_optimizer"]

# A table of at most this many weights (a small table: `feature_columns.SMALL_TABLE_MAX_SIZE`) gets
# its lazy update as one masked pass over the whole table: a pass bounded by this constant needs no
# de-duplication of the batch's rows (tf.unique, which XLA compiles to a sort: inside the XLA step it
# made an MMOE step ~1.3x slower than the update outside XLA), so it compiles into the XLA training
# step. Larger tables keep the row-only update, whose cost follows the batch, not the table.
MASKED_UPDATE_MAX_SIZE = SMALL_TABLE_MAX_SIZE


@tf.keras.utils.register_keras_serializable(package="tfrec")
class LazyAdam(tf.keras.optimizers.Adam):
    """Adam that updates only the looked-up rows of an embedding table.

    Dense gradients get Keras' Adam update, bit for bit (its expressions, with the step's beta
    powers and step size built once per traced step rather than once per weight). For an
    `IndexedSlices` gradient (a `tf.gather` from a table) Keras' Adam decays both moments of every
    row at every step, so its cost grows with the table; here the moments and weights of the rows in
    the batch are updated and every other row, with its moments, is left exactly as it was (the
    "lazy" Adam of TF-Addons and TF1's `LazyAdamOptimizer`). A row's moments therefore decay only on
    the steps that use it. A table of at most `MASKED_UPDATE_MAX_SIZE` weights is updated by one
    masked pass (repeated rows summed by a segment sum, untouched rows selected back bit for bit),
    any other by gathering and scattering the batch's de-duplicated rows; both give the same update
    (up to the order in which repeated rows are summed). Under `ParameterServerStrategy` every
    table gets the row update: there workers update the tables asynchronously, and a masked pass
    writes back the whole table as it read it, so two workers' overlapping steps would each
    overwrite the other's rows (measured: MIND on 2 workers learnt about half as fast as on one).
    `weight_decay` stays Keras' and is not lazy: every weight of a table, used or not, decays at
    every step, whichever way the table is updated.
    With `amsgrad`, every weight gets Keras' AMSGrad update (not lazy), of de-duplicated rows.
    Slots and config are Adam's, so checkpoints and `get_config` round-trip as usual, and the
    update compiles with XLA inside a training step.
    """

    def can_update_rows_after_step(self):
        """Whether a step may update most weights with `apply_gradients` and some tables after it
        (`update_rows_after_step`): not when clipping, an EMA or a learning-rate schedule needs
        every weight, or the step count, in one call, nor with AMSGrad (Keras' update, which
        counts the step itself)."""
        return not (self.clipnorm or self.clipvalue or self.global_clipnorm or self.use_ema or self.amsgrad or
                    isinstance(self._learning_rate, tf.keras.optimizers.schedules.LearningRateSchedule))

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        with self._sharing_step_scalars():
            return super().apply_gradients(grads_and_vars, *args, **kwargs)

    def update_rows_after_step(self, grads_and_vars):
        """The row updates of tables left out of the `apply_gradients` call that just counted this
        step: the same step number, repeated rows summed first (`tf.unique`), the whole table
        decayed first when `weight_decay` is set, and a table's `constraint` applied after its
        update, as `apply_gradients` would have.

        So a training step can update its dense weights and small tables inside one XLA call and
        only the large tables, whose de-duplication XLA compiles badly, after it.
        """
        grads_and_vars = list(grads_and_vars)
        grads = super()._deduplicate_sparse_grad([g for g, _ in grads_and_vars])
        # As in apply_gradients: Keras decays every weight it is given, before its update.
        self._apply_weight_decay([variable for _, variable in grads_and_vars])
        with self._sharing_step_scalars():
            for gradient, (_, variable) in zip(grads, grads_and_vars):
                # apply_gradients has already counted this step in `iterations`.
                self._lazy_update(gradient, variable, counted=True)
        # As apply_gradients ends: Keras constrains every weight it updated (the whole table).
        for _, variable in grads_and_vars:
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))

    def _deduplicate_sparse_grad(self, grads):
        # The masked update of a small table sums repeated rows itself; only the others need
        # Keras' tf.unique, which stays outside any XLA function that updates small tables only.
        return [g if isinstance(g, tf.IndexedSlices) and self._sums_repeated_rows(g.dense_shape)
                else super(LazyAdam, self)._deduplicate_sparse_grad([g])[0] for g in grads]

    def _sums_repeated_rows(self, shape):
        """Whether the update of a table of this shape sums its repeated rows itself (the masked update):
        not under AMSGrad, whose update is Keras' and squares each (de-duplicated) row's gradient."""
        return not self.amsgrad and _gets_masked_update(shape)

    def update_step(self, gradient, variable):
        if self.amsgrad:
            return super().update_step(gradient, variable)
        if isinstance(gradient, tf.IndexedSlices):
            # apply_gradients updates before it increments `iterations`: this is step iterations + 1.
            return self._lazy_update(gradient, variable, counted=False)
        # Keras' dense Adam update, with this step's scalars shared by every weight.
        _, _, alpha, epsilon = self._step_scalars(variable.dtype, counted=False)
        m, v = self._moments(variable)
        m.assign_add((gradient - m) * (1 - self.beta_1))
        v.assign_add((tf.square(gradient) - v) * (1 - self.beta_2))
        variable.assign_sub((m * alpha) / (tf.sqrt(v) + epsilon))

    def _moments(self, variable):
        """Adam's first and second moment slots of `variable`."""
        index = self._index_dict[self._var_key(variable)]
        return self._momentums[index], self._velocities[index]

    @contextlib.contextmanager
    def _sharing_step_scalars(self):
        """Within this block, the weights updated in one graph share the step's scalars.

        Keras' Adam builds its beta powers, step size and epsilon for every weight, about 40% of
        the operations it adds per weight: tracing CLSR's training step spent 3.2 of its 6.4 s in
        the update; in an eager step they took 12 of MMOE's 62 ms. Each graph (a training step,
        the per-weight functions Keras compiles when the optimizer's `jit_compile` is set, or the
        eager context) builds its own: a tensor of one graph, or an eager value a function would
        capture as a constant, is never reused in another.
        """
        self._scalars_by_graph = self._no_dependency({})  # not tracked: no part of a checkpoint
        try:
            yield
        finally:
            self._scalars_by_graph = None

    def _step_scalars(self, dtype, counted):
        """(beta_1, beta_2, alpha, epsilon) as `dtype` for step t, `iterations` if it has `counted`
        the step, else `iterations` + 1: alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t), epsilon as
        Keras' Adam has it (times sqrt(1 - beta_2^t) when `adaptive_epsilon`)."""
        shared = getattr(self, "_scalars_by_graph", None)
        key = (tf.compat.v1.get_default_graph(), dtype, counted)
        if shared is not None and key in shared:
            return shared[key]
        step = tf.cast(self.iterations if counted else self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        beta_1_power, beta_2_power = tf.pow(beta_1, step), tf.pow(beta_2, step)
        alpha = tf.cast(self.learning_rate, dtype) * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon else self.epsilon
        scalars = beta_1, beta_2, alpha, epsilon
        if shared is not None:
            shared[key] = scalars
        return scalars

    def _lazy_update(self, gradient, variable, counted):
        """Adam's update of the rows in `gradient` (IndexedSlices) only (`counted`: as in `_step_scalars`)."""
        beta_1, beta_2, alpha, epsilon = self._step_scalars(variable.dtype, counted)
        m, v = self._moments(variable)
        if _gets_masked_update(variable.shape):
            num_rows = variable.shape[0]
            grads = tf.math.unsorted_segment_sum(gradient.values, gradient.indices, num_rows)
            used = tf.math.unsorted_segment_sum(tf.ones_like(gradient.indices, variable.dtype), gradient.indices,
                                                num_rows)
            used = tf.reshape(used > 0, [num_rows] + [1] * (variable.shape.rank - 1))
            m_new = tf.where(used, beta_1 * m + (1 - beta_1) * grads, m)
            v_new = tf.where(used, beta_2 * v + (1 - beta_2) * tf.square(grads), v)
            m.assign(m_new)
            v.assign(v_new)
            variable.assign(tf.where(used, variable - alpha * m_new / (tf.sqrt(v_new) + epsilon), variable))
            return
        # apply_gradients has already summed repeated rows (_deduplicate_sparse_grad).
        rows, grads = gradient.indices, gradient.values
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * grads
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(grads)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows))

    def needs_no_unique(self, tables):
        """Whether updating `tables` (variables read through tf.gather) needs no tf.unique: true
        when every one gets the masked update (never under AMSGrad). Then the whole update
        compiles well with XLA."""
        return all(self._sums_repeated_rows(table.shape) for table in tables)


def _gets_masked_update(shape):
    """Whether a table of this shape (a TensorShape, or a dense_shape tensor) gets the masked update:
    a small table, and no asynchronous training (`LazyAdam`)."""
    if isinstance(tf.distribute.get_strategy(), tf.distribute.experimental.ParameterServerStrategy):
        return False
    if isinstance(shape, tf.Tensor):
        shape = tf.get_static_value(shape)
        if shape is None:
            return False
    shape = tf.TensorShape(shape)
    return shape.rank is not None and shape.rank >= 1 and shape.is_fully_defined() and \
        shape.num_elements() <= MASKED_UPDATE_MAX_SIZE


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
