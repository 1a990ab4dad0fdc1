"""A run killed and resumed from tfrec's backup (`tfrec.distribute.BackupAndRestore`) reads its
data on from where it stopped, and one killed after its last epoch ends as if never killed.

The model counts, in a weight of its own (so the backup restores the count with the rest), how
many times each row has trained: after a killed and resumed run of E epochs over every row,
each row counts E. Its linear part trains with plain SGD, so equal weights to a run that was
never killed also mean the same batches in the same order.
"""
import json

import numpy as np
import pandas as pd
import pytest

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import DenseFeat

ROWS, BATCH, EPOCHS = 20, 4, 3  # 5 steps an epoch


class _Died(Exception):
    """What the tests raise to end a fit as a killed process would (no `on_train_end`)."""


def _frame(rows=ROWS):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"row": np.arange(rows, dtype="float32"), "x": rng.normal(size=rows).astype("float32"),
                         "y": rng.normal(size=rows).astype("float32")})


def _counting_model(rows=ROWS):
    import tensorflow as tf

    class Counting(tf.keras.Model):
        """y = w x + b on feature "x"; `trained[i]` counts the steps row i (feature "row") trained in."""

        def __init__(self):
            super().__init__()
            self.linear = tf.keras.layers.Dense(1, kernel_initializer="ones")
            self.trained = self.add_weight("trained", shape=(rows,), initializer="zeros", trainable=False,
                                           aggregation=tf.VariableAggregation.SUM)

        def call(self, inputs):
            return self.linear(tf.reshape(inputs["x"], (-1, 1)))

        def train_step(self, data):
            x, _ = data
            rows_of_batch = tf.cast(tf.reshape(x["row"], (-1,)), tf.int32)
            self.trained.assign_add(tf.reduce_sum(tf.one_hot(rows_of_batch, rows), axis=0))
            return super().train_step(data)

    model = Counting()
    model.compile(tf.keras.optimizers.SGD(0.1), "mse")
    model({"row": tf.zeros((1,)), "x": tf.zeros((1,))})
    return model


def _dies_after(steps):
    import tensorflow as tf

    class DiesAfter(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.done = 0

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            if self.done == steps:
                raise _Died()

    return DiesAfter()


COLUMNS = [DenseFeat("row"), DenseFeat("x")]


def _fit(backup_dir, data, *extra, save_freq=3, rows=ROWS, **fit_args):
    from tfrec.distribute import checkpoint_callbacks

    model = _counting_model(rows)
    callbacks = checkpoint_callbacks(backup_dir, save_freq=save_freq) + list(extra)
    model.fit(data(), epochs=EPOCHS, verbose=0, callbacks=callbacks, **fit_args)
    return model


def _killed_and_resumed(tmp_path, data, kill_after, save_freq, **fit_args):
    """(the run never killed, the run killed after `kill_after` steps and started again)."""
    whole = _fit(tmp_path / "whole", data, save_freq=save_freq, **fit_args)
    with pytest.raises(_Died):
        _fit(tmp_path / "resumed", data, _dies_after(kill_after), save_freq=save_freq, **fit_args)
    return whole, _fit(tmp_path / "resumed", data, save_freq=save_freq, **fit_args)


def _assert_same_training(whole, resumed):
    for kept, reference in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(kept, reference, rtol=1e-6)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("save_freq, kill_after", [
    (3, 11),        # backups after steps 3, 6, 9: resumed in epoch 2 of 3 at its step 5 of 5
    (5, 12),        # backups at the ends of epochs 1 and 2: resumed at the start of epoch 3
    ("epoch", 12),  # the same, backed up by epoch
])
def test_a_resumed_epoch_trains_each_row_once_in_the_order_of_the_run_never_killed(tmp_path, shuffle, save_freq,
                                                                                    kill_after):
    """`df_to_dataset` without repeat: Keras reads it afresh every epoch."""
    from tfrec.data import df_to_dataset

    def data():
        return df_to_dataset(_frame(), COLUMNS, "y", batch_size=BATCH, shuffle=shuffle, seed=7)

    whole, resumed = _killed_and_resumed(tmp_path, data, kill_after, save_freq)
    assert whole.trained.numpy().tolist() == [EPOCHS] * ROWS
    assert resumed.trained.numpy().tolist() == [EPOCHS] * ROWS
    _assert_same_training(whole, resumed)


def test_a_repeated_data_set_resumes_its_stream_across_epochs(tmp_path):
    """`repeat=True` with `steps_per_epoch`: Keras keeps one iterator for the whole fit. 22 rows
    in batches of 4 (the sixth of a pass holds 2): epochs and passes over the rows do not align."""
    from tfrec.data import df_to_dataset

    def data():
        return df_to_dataset(_frame(22), COLUMNS, "y", batch_size=BATCH, seed=7, repeat=True)

    whole, resumed = _killed_and_resumed(tmp_path, data, kill_after=11, save_freq=3, rows=22, steps_per_epoch=5)
    _assert_same_training(whole, resumed)
    # 15 steps: two passes (44 rows) and 3 batches of the third.
    assert resumed.trained.numpy().tolist() == whole.trained.numpy().tolist()
    assert sorted(resumed.trained.numpy().tolist()) == [2] * 10 + [3] * 12


@pytest.mark.parametrize("kind", ["mirrored", "multi_worker"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_distributed_run_resumes_each_workers_data_where_it_stopped(tmp_path, kind, shuffle):
    """`dataframe_dataset_fn` under a synchronous strategy (in-process: one device, one worker):
    Keras reads a distributed data set as one stream, moved on here by the steps trained."""
    from tfrec.distribute import build_strategy, dataframe_dataset_fn, distributed_dataset

    strategy = build_strategy(kind, devices=["/cpu:0"]) if kind == "mirrored" else build_strategy(kind)

    def data():
        return distributed_dataset(strategy, dataframe_dataset_fn(_frame(), COLUMNS, "y", BATCH, shuffle=shuffle,
                                                                  seed=7, repeat=True))

    with strategy.scope():
        whole, resumed = _killed_and_resumed(tmp_path, data, kill_after=11, save_freq=3, steps_per_epoch=5)
    assert resumed.trained.numpy().tolist() == [EPOCHS] * ROWS
    _assert_same_training(whole, resumed)


# ---------------------------------------------------------------------------------------------
# A kill after the last epoch's training (save_freq "epoch"): no backup of a run's end.

def _scored(scores):
    """A callback logging `val_score` = scores[epoch], a figure the test chooses."""
    import tensorflow as tf

    class Score(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_score"] = scores[epoch]

    return Score()


def _dies_at_train_end():
    import tensorflow as tf

    class DiesAtTrainEnd(tf.keras.callbacks.Callback):  # listed first: before the backup is removed
        def on_train_end(self, logs=None):
            raise _Died()

    return DiesAtTrainEnd()


@pytest.mark.parametrize("scores, patience, restore_best_weights, trained", [
    ([0.5, 0.9, 0.6], 5, True, 2),             # 3 epochs; the best (the second) restored at the end
    ([0.5, 0.9, 0.6, 0.7, 0.95], 1, False, 3),  # of 5, EarlyStopping stops after the third
])
def test_a_run_killed_after_its_last_epoch_resumes_that_epoch_and_ends_as_the_run_never_killed(
        tmp_path, scores, patience, restore_best_weights, trained):
    """save_freq "epoch": the end of the run's last epoch is not backed up. Resumed from a backup
    of it, the fit would run no epoch: an empty history, and EarlyStopping's best weights never
    restored, so the model would be the last epoch's. Nor is the end of an epoch after which
    EarlyStopping stops the run: resumed after it, the run would train on (here a fourth epoch)."""
    import tensorflow as tf

    from tfrec.data import df_to_dataset
    from tfrec.distribute import checkpoint_callbacks

    def run(folder, *first):
        model = _counting_model()
        stopping = tf.keras.callbacks.EarlyStopping("val_score", mode="max", patience=patience,
                                                    restore_best_weights=restore_best_weights)
        callbacks = [*first, _scored(scores), stopping,
                     *checkpoint_callbacks(tmp_path / folder, save_freq="epoch", keep_state_of=[stopping])]
        history = model.fit(df_to_dataset(_frame(), COLUMNS, "y", batch_size=BATCH, seed=7), epochs=len(scores),
                            verbose=0, callbacks=callbacks)
        return model, history

    whole, history = run("whole")
    assert history.epoch == [0, 1, 2] and whole.trained.numpy().tolist() == [trained] * ROWS
    with pytest.raises(_Died):
        run("resumed", _dies_at_train_end())
    resumed, history = run("resumed")
    assert history.epoch == [2]  # the third epoch again, from the backup of the one before
    _assert_same_training(whole, resumed)


def test_a_backup_of_a_runs_end_is_refused_naming_the_folder(tmp_path):
    """Keras' own BackupAndRestore (as tfrec's did with save_freq "epoch") backs up the last
    epoch's end; resumed from there, a fit would end at once with nothing trained."""
    import tensorflow as tf

    from tfrec.data import df_to_dataset
    from tfrec.distribute import BackupAndRestore

    def data():
        return df_to_dataset(_frame(), COLUMNS, "y", batch_size=BATCH, seed=7)

    with pytest.raises(_Died):
        _counting_model().fit(data(), epochs=2, verbose=0, callbacks=[
            _dies_at_train_end(), tf.keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    with pytest.raises(ValueError, match=(
            rf"BackupAndRestore: {tmp_path / 'backup'} holds the backup of a run that had trained 2 epoch\(s\), so "
            r"this fit of 2 epoch\(s\) has nothing left to train\. .*remove the folder to train afresh")):
        _counting_model().fit(data(), epochs=2, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "backup"))])
    model = _counting_model()  # of more epochs, it resumes after the second
    history = model.fit(data(), epochs=3, verbose=0, callbacks=[BackupAndRestore(str(tmp_path / "backup"))])
    assert history.epoch == [2] and model.trained.numpy().tolist() == [3] * ROWS


def test_a_config_run_killed_mid_epoch_or_after_its_end_saves_the_model_of_the_run_never_killed(tmp_path,
                                                                                              monkeypatch):
    """`tfrec train --config` with `strategy.checkpoint_dir`: DIN on shuffled rows, 12 steps an
    epoch. Killed after step 18 (backups every 4 steps), it resumes in its second epoch at step 16
    (it used to read that epoch's first rows again). Killed at the end of its fit (backups every
    epoch), it used to resume with no epoch left and fail ("training logged no val_loss")."""
    import tensorflow as tf

    from tests.tfrec.test_config import overfitting_frame, write
    from tfrec import config as run
    from tfrec import load_model
    from tfrec.config import load_config

    overfitting_frame().to_csv(tmp_path / "d.csv", index=False)

    def config(name, save_freq=None):
        backup = f"strategy: {{checkpoint_dir: {name}/backup, save_freq: {save_freq}}}\n" if save_freq else ""
        return load_config(str(write(tmp_path, (
            "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN, args: {dnn_hidden_units: [8]}}\n"
            "split: {test_fraction: 0.2, order_by: ts}\ncolumns: {exclude: [ts], sequences: {hist_item_id: {}}}\n"
            f"{backup}output: {name}\n"
            "train: {epochs: 2, batch_size: 32, validation: {fraction: 0.25, monitor: loss}}\n"), f"{name}.yaml")))

    backup = tf.keras.callbacks.BackupAndRestore
    on_train_batch_end, steps = backup.on_train_batch_end, []

    def after_step_18(callback, batch, logs=None):
        on_train_batch_end(callback, batch, logs)
        steps.append(batch)
        if len(steps) == 18:
            raise _Died()

    def at_train_end(callback, logs=None):
        raise _Died()  # before the backup is removed

    run.train(config("whole"), verbose=0)  # no backups: the same training (tested bit for bit)
    whole = load_model(str(tmp_path / "whole" / "model.keras"))
    for name, save_freq, hook, dies in (("mid_epoch", 4, "on_train_batch_end", after_step_18),
                                        ("after_its_end", "epoch", "on_train_end", at_train_end)):
        monkeypatch.setattr(backup, hook, dies)
        with pytest.raises(_Died):
            run.train(config(name, save_freq), verbose=0)
        monkeypatch.undo()
        run.train(config(name, save_freq), verbose=0)
        record = json.loads((tmp_path / name / "run.json").read_text())
        assert record["validation"]["epochs"] == 2 and len(record["history"]["val_loss"]) == 1
        _assert_same_training(whole, load_model(str(tmp_path / name / "model.keras")))
