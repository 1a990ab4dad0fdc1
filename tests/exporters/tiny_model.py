"""A tiny two-task functional model with every kind of raw input an exporter must handle.

Shared by the fixtures and by the subprocess that the atomicity test kills mid-export.
"""
import feature_columns._legacy_keras  # noqa: F401

import numpy as np
import pandas as pd
import tensorflow as tf

USER_VOCABULARY = ["alice", "bob", "carol"]
ITEM_BUCKETS = 10
TRAINING_SEQUENCE_LENGTH = 3


def build_tiny_model():
    """Inputs: user (string scalar), hist_item_id (int64 sequence), price (float scalar),
    context (float vector of 3). Outputs "ctr" and "cvr"; "ctr_logit" (None, 1) and "shared"
    (None, 8) are intermediate layers for extra_outputs."""
    tf.keras.utils.set_random_seed(7)
    inputs = {
        "user": tf.keras.Input(shape=(1,), name="user", dtype=tf.string),
        "hist_item_id": tf.keras.Input(shape=(None,), name="hist_item_id", dtype=tf.int64),
        "price": tf.keras.Input(shape=(1,), name="price", dtype=tf.float32),
        "context": tf.keras.Input(shape=(3,), name="context", dtype=tf.float32),
    }
    user_index = tf.keras.layers.StringLookup(vocabulary=USER_VOCABULARY, mask_token="")(
        inputs["user"])
    user_embedding = tf.keras.layers.Flatten()(
        tf.keras.layers.Embedding(len(USER_VOCABULARY) + 2, 4)(user_index))
    history = tf.keras.layers.GlobalAveragePooling1D()(
        tf.keras.layers.Embedding(ITEM_BUCKETS, 4, mask_zero=True)(inputs["hist_item_id"]))
    features = tf.keras.layers.Concatenate()(
        [user_embedding, history, inputs["price"], inputs["context"]])
    shared = tf.keras.layers.Dense(8, activation="relu", name="shared")(features)
    ctr_logit = tf.keras.layers.Dense(1, name="ctr_logit")(shared)
    ctr = tf.keras.layers.Activation("sigmoid", name="ctr")(ctr_logit)
    cvr = tf.keras.layers.Dense(1, activation="sigmoid", name="cvr")(shared)
    model = tf.keras.Model(inputs, [ctr, cvr], name="tiny")
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), loss="binary_crossentropy")
    return model


def training_frame(num_rows=32, seed=0):
    """A DataFrame as tfrec users train from: raw strings, list-valued sequences, labels."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user": rng.choice(USER_VOCABULARY, num_rows),
        "hist_item_id": [list(rng.integers(1, ITEM_BUCKETS, TRAINING_SEQUENCE_LENGTH))
                         for _ in range(num_rows)],
        "price": rng.random(num_rows).astype("float32"),
        "context": [list(rng.random(3).astype("float32")) for _ in range(num_rows)],
        "click": rng.integers(0, 2, num_rows),
        "conversion": rng.integers(0, 2, num_rows),
    })


def train_tiny_model():
    """The tiny model after a few steps on `training_frame`, so weights are not initial."""
    model = build_tiny_model()
    frame = training_frame()
    features = {
        "user": frame["user"].to_numpy()[:, None],
        "hist_item_id": np.array(frame["hist_item_id"].tolist(), dtype="int64"),
        "price": frame["price"].to_numpy()[:, None],
        "context": np.array(frame["context"].tolist(), dtype="float32"),
    }
    labels = [frame["click"].to_numpy(), frame["conversion"].to_numpy()]
    model.fit(features, labels, batch_size=16, epochs=1, verbose=0)
    return model
