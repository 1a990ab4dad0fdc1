"""What the retrieval model tests share: planted data in model form, and recall of the served towers."""
from types import SimpleNamespace

import numpy as np
import tensorflow as tf

import tfrec.layers

from tfrec.data import df_to_inputs
from tfrec.data.retrieval import planted_recalls, retrieval_samples
from tfrec.evaluation import rank_candidates
from tfrec.metrics import recall_at_k
from tfrec.utils import NegativeSampler


def planted_retrieval(data, columns, maxlen, short_sess_length=None):
    """Leave-last-out samples of `data`, the model inputs of `columns` = (user, item) columns, an
    in-batch sampler with the training targets' counts (logQ), and the planted reference recalls."""
    train, test = retrieval_samples(data, maxlen, short_sess_length=short_sess_length)
    # Whole batches of 128 or 256 rows: every step is the compiled one (a partial last batch takes an eager step).
    train = train.iloc[:len(train) // 256 * 256]
    user_columns, item_columns = columns
    every = user_columns + item_columns
    counts = np.bincount(train["item_id"].to_numpy(), minlength=item_columns[0].vocabulary_size).astype(float)
    return SimpleNamespace(data=data, train=train, test=test, user_columns=user_columns, item_columns=item_columns,
                           columns=every, x_train=df_to_inputs(train, every), x_test=df_to_inputs(test, every),
                           sampler=NegativeSampler("inbatch", 0, "item_id", item_count=counts),
                           references=planted_recalls(data, train, test, k=50))


def user_features(model, inputs):
    return {t.name: inputs[t.name] for t in model.user_input}


def recall_at_50(model, planted, inputs):
    """Recall@50 of the held-out items, every item ranked exactly by the served towers."""
    top = rank_candidates(model, inputs, {"item_id": planted.data.item_ids}, 50)
    return recall_at_k(planted.test["item_id"].to_numpy(), planted.data.item_ids[top], 50)


def losses_of_a_short_fit(model, planted, loss):
    """`compile(Adam)` (loss=None: the model's own) or `compile(Adam, loss=loss)`, 3 epochs on 4,096 rows."""
    model.compile(tf.keras.optimizers.Adam(3e-3), **({} if loss is None else {"loss": loss}))
    rows = {k: v[:4096] for k, v in planted.x_train.items()}
    return model.fit(rows, np.zeros(4096), batch_size=256, epochs=3, verbose=0).history["loss"]


def reloaded_towers(model, directory):
    """(user tower, item tower) pairs loaded back from `model` saved as a SavedModel and as `.h5`,
    and from each tower saved on its own as a SavedModel (checked to hold no per-layer traces), `.h5`
    and `.keras` (what users who bring their own ANN service export)."""
    def load(path):
        return tf.keras.models.load_model(path, custom_objects=tfrec.layers.custom_objects)

    pairs = []
    for suffix in ("", ".h5"):
        model.save(directory / f"{model.name}{suffix}")
        loaded = load(directory / f"{model.name}{suffix}")
        pairs.append((loaded.user_tower, loaded.item_tower))
    for suffix in ("", ".h5", ".keras"):
        model.user_tower.save(directory / f"user_tower{suffix}")
        model.item_tower.save(directory / f"item_tower{suffix}")
        if not suffix:  # a tower's folder, like its model's, holds no per-layer traces
            assert not hasattr(tf.saved_model.load(str(directory / "user_tower")),
                               "call_and_return_all_conditional_losses")
        pairs.append((load(directory / f"user_tower{suffix}"), load(directory / f"item_tower{suffix}")))
    return pairs
