"""Dice (DIN's activation): its hand-written training pass against Keras' BatchNormalization."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from tfrec.layers import Dice


def reference_dice(inputs, alphas, batch_norm, training):
    """Dice as the paper writes it, with a Keras BatchNormalization doing the normalising."""
    probability = tf.sigmoid(batch_norm(inputs, training=training))
    return probability * inputs + (1.0 - probability) * alphas * inputs


def twin_layers(shape, momentum=0.9):
    """A Dice and a reference BN, built for `shape`, with the same random alphas and moving statistics."""
    units = shape[-1]
    rng = np.random.default_rng(3)
    dice = Dice(momentum=momentum)
    dice.build((None,) + tuple(shape[1:]))
    reference = tf.keras.layers.BatchNormalization(axis=-1, momentum=momentum, epsilon=dice.epsilon,
                                                   center=False, scale=False)
    reference.build((None,) + tuple(shape[1:]))
    dice.alphas.assign(rng.normal(size=units).astype("float32"))
    for moving in ("moving_mean", "moving_variance"):
        value = rng.uniform(0.5, 1.5, size=units).astype("float32")
        getattr(dice.batch_norm, moving).assign(value)
        getattr(reference, moving).assign(value)
    return dice, reference


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("shape", [(64, 12), (16, 7, 12)])
def test_training_pass_and_gradients_equal_keras_batch_norm(shape, jit_compile):
    dice, reference = twin_layers(shape)
    x = tf.constant(np.random.default_rng(0).normal(0.3, 2.0, size=shape).astype("float32"))
    weights = tf.constant(np.random.default_rng(1).normal(size=shape).astype("float32"))

    def loss_and_gradients(layer_fn, alphas):
        @tf.function(jit_compile=jit_compile)
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer_fn(x)
                loss = tf.reduce_sum(tf.tanh(y) * weights)  # a non-linear loss: the upstream gradient varies
            return y, tape.gradient(loss, [x, alphas])
        return run(x)

    y, (dx, dalphas) = loss_and_gradients(lambda x: dice(x, training=True), dice.alphas)
    y_ref, (dx_ref, dalphas_ref) = loss_and_gradients(
        lambda x: reference_dice(x, dice.alphas, reference, training=True), dice.alphas)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dalphas, dalphas_ref, rtol=1e-4, atol=1e-4)
    # One training call each: the moving statistics moved identically (Keras: population variance).
    np.testing.assert_allclose(dice.batch_norm.moving_mean, reference.moving_mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dice.batch_norm.moving_variance, reference.moving_variance, rtol=1e-5, atol=1e-6)


def test_inference_uses_moving_statistics_and_leaves_them_alone():
    dice, reference = twin_layers((32, 5))
    x = tf.constant(np.random.default_rng(2).normal(size=(32, 5)).astype("float32"))
    before = dice.batch_norm.moving_variance.numpy().copy()
    np.testing.assert_allclose(dice(x, training=False), reference_dice(x, dice.alphas, reference, training=False),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dice(x), dice(x, training=False))  # no training flag: inference, as in Keras
    np.testing.assert_array_equal(dice.batch_norm.moving_variance.numpy(), before)


def test_momentum_is_read_at_call_time_and_an_empty_batch_changes_nothing():
    dice, reference = twin_layers((8, 4), momentum=0.9)
    dice.batch_norm.momentum = reference.momentum = 0.99  # as the DIN benchmark's ablation sets it
    x = tf.constant(np.random.default_rng(4).normal(size=(8, 4)).astype("float32"))
    dice(x, training=True)
    reference(x, training=True)
    np.testing.assert_allclose(dice.batch_norm.moving_mean, reference.moving_mean, rtol=1e-6, atol=1e-7)
    before = [v.numpy().copy() for v in (dice.batch_norm.moving_mean, dice.batch_norm.moving_variance)]
    assert dice(tf.zeros((0, 4)), training=True).shape == (0, 4)
    for value, moving in zip(before, (dice.batch_norm.moving_mean, dice.batch_norm.moving_variance)):
        np.testing.assert_array_equal(moving.numpy(), value)


def test_symbolic_learning_phase_and_config_round_trip():
    inputs = tf.keras.Input((6,))
    model = tf.keras.Model(inputs, Dice(momentum=0.8, name="dice")(inputs))
    x = np.random.default_rng(5).normal(size=(10, 6)).astype("float32")
    model.compile("sgd", "mse")
    model.fit(x, x, epochs=1, verbose=0)  # the training branch inside Keras' train function
    clone = tf.keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    assert clone.get_layer("dice").momentum == 0.8
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    # The order of weights that earlier versions saved (set_weights and .h5 files rely on it).
    assert [w.name for w in model.get_layer("dice").weights] == [
        "dice/alphas:0", "dice/bn/moving_mean:0", "dice/bn/moving_variance:0"]


def test_a_frozen_dice_runs_as_at_inference_and_keeps_its_statistics():
    """As a frozen Keras BatchNormalization: freezing the layer, or the model around it, makes the
    training pass an inference pass, which leaves the moving statistics alone."""
    dice, reference = twin_layers((32, 5))
    x = tf.constant(np.random.default_rng(6).normal(loc=3.0, size=(32, 5)).astype("float32"))
    dice.trainable = False
    np.testing.assert_array_equal(dice(x, training=True), dice(x, training=False))

    inputs = tf.keras.Input((5,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(Dice(name="dice")(inputs)))
    model.trainable = False
    model.compile("sgd", "mse")
    statistics = [v.numpy().copy() for v in model.get_layer("dice").non_trainable_weights]
    model.fit(x, np.zeros(32), batch_size=8, verbose=0)
    for value, moving in zip(statistics, model.get_layer("dice").non_trainable_weights):
        np.testing.assert_array_equal(moving.numpy(), value)
