"""The DIN recipe on planted-truth data shared by `tfrec demo` and the test suite.

One place for the data, the model size and the training settings, so that what the tests assert
(>= 0.95 of the oracle AUC) is what the demo shows.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

from .data import DIN_HISTORY_FEATURES, build_din_samples, df_to_dataset, din_feature_columns, make_behaviour_log

# Small enough for 2 CPU cores in well under a minute; 0.97 of the oracle AUC on the default data.
DIN_SIZE = dict(dnn_hidden_units=(64, 32), att_hidden_size=(32, 16), att_weight_normalization=True)
HELD_OUT_EVENTS = 5  # per user, so GAUC is defined on the test frame


def planted_din_data(users=2000, items=1000, events_per_user=50, maxlen=20, embedding_dim=8, seed=0):
    """(log, train_df, test_df, columns): a raw-string-id behaviour log turned into DIN samples.

    Each user's last `HELD_OUT_EVENTS` events are the test rows, so `events_per_user` must be
    above it (a ValueError otherwise: there would be no training rows)."""
    if not events_per_user > HELD_OUT_EVENTS:
        raise ValueError(f"events_per_user must be more than {HELD_OUT_EVENTS}, got {events_per_user}: each user's last "
                         f"{HELD_OUT_EVENTS} events are held out as test rows, so {events_per_user} leave none to "
                         "train on")
    log = make_behaviour_log(num_users=users, num_items=items, events_per_user=events_per_user, seed=seed,
                             id_type="str")
    train_df, test_df = build_din_samples(log, maxlen=maxlen, extra_cols=("p_click",),
                                          test_events=HELD_OUT_EVENTS)
    return log, train_df, test_df, din_feature_columns(log, maxlen=maxlen, embedding_dim=embedding_dim, id_type="str")


def build_din(columns, seed=0):
    """DIN of the recipe's size over `columns`, uncompiled."""
    from .models import DIN

    return DIN(columns, DIN_HISTORY_FEATURES, seed=seed, **DIN_SIZE)


def train_din(train_df, columns, seed=0, epochs=2, batch_size=256, learning_rate=3e-3, verbose=2):
    """The recipe's DIN, trained with plain Keras compile/fit on `train_df`'s click labels."""
    import tensorflow as tf
    from . import metrics

    tf.keras.utils.set_random_seed(seed)
    model = build_din(columns, seed)
    model.compile(tf.keras.optimizers.Adam(learning_rate), "binary_crossentropy",
                  metrics=[metrics.AUC(), metrics.LogLoss()])
    model.fit(df_to_dataset(train_df, columns, "click", batch_size=batch_size, seed=seed), epochs=epochs,
              verbose=verbose)
    return model
