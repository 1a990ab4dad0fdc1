"""DIN in the sparse-user regime: the new embedding path against the old one, next to the oracle.

For each preset of `make_sparse_user_log` DIN (the issue's sizes: DNN 64-32, attention 32-16,
embedding 8, maxlen 30, Adam, batch 256, 3 epochs, raw string ids) trains twice:

  * new: default arguments, so l2_reg_embedding=1e-6 is the mini-batch aware penalty and "adam"
    is LazyAdam;
  * old: the same DIN with l2_reg_embedding=0 plus the old full-table penalty 1e-6 * sum ||w||^2 on
    every table (its gradient is dense, so LazyAdam runs as Keras' dense Adam).

`pytest -s` prints test AUC, train AUC and their ratios to the oracle. What the assertions hold
(see make_sparse_user_log's docstring for the repeated runs behind them):

  * both presets make DIN memorise: train AUC reaches the oracle's while test AUC stays well below;
  * at the default strength the two penalties are equally weak, so the new path is neither
    better nor worse than the old one beyond seed noise. The issue's wish "old path measurably
    lower" is not what the measurements show and is not asserted.
"""
import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import SparseEmbedding
from tfrec import metrics
from tfrec.data import (DIN_HISTORY_FEATURES, build_din_samples, df_to_dataset, df_to_inputs, din_feature_columns,
                        make_sparse_user_log)
from tfrec.models import DIN

MAXLEN, EMBEDDING_DIM, BATCH, EPOCHS, SEED = 30, 8, 256, 3, 0
OLD_FULL_TABLE_L2 = 1e-6  # DIN's default l2_reg_embedding, applied the old way
# Floors of the new default's test AUC / oracle AUC per preset: on seed-0 data with model/shuffle
# seeds 0-4 it measured 0.829-0.850 ("a") and 0.896-0.949 ("b").
FLOOR = {"a": 0.80, "b": 0.88}
# |new - old| in AUC / oracle: over those runs (and the benchmark's numpy-fed fit) new minus old
# ranged from -0.031 to +0.032, means -0.001 ("a") and -0.008 ("b"): no difference beyond noise.
PARITY = 0.04


def train(columns, train_df, full_table_l2=None):
    tf.keras.utils.set_random_seed(SEED)
    size = dict(dnn_hidden_units=(64, 32), att_hidden_size=(32, 16), seed=SEED)
    if full_table_l2 is None:
        model = DIN(columns, DIN_HISTORY_FEATURES, **size)
    else:
        model = DIN(columns, DIN_HISTORY_FEATURES, l2_reg_embedding=0, **size)
        for layer in model.layers:
            if isinstance(layer, SparseEmbedding):
                model.add_loss(lambda layer=layer: full_table_l2 * tf.reduce_sum(tf.square(layer.embeddings)))
    model.compile("adam", "binary_crossentropy")
    model.fit(df_to_dataset(train_df, columns, "click", batch_size=BATCH, seed=SEED), epochs=EPOCHS, verbose=0)
    return model


def ratios(model, frame, columns):
    scores = model.predict(df_to_inputs(frame, columns), batch_size=4096, verbose=0).reshape(-1)
    labels = frame["click"].to_numpy()
    model_auc, oracle = metrics.auc(labels, scores), metrics.auc(labels, frame["p_click"].to_numpy())
    return dict(auc=model_auc, oracle=oracle, ratio=model_auc / oracle)


@pytest.fixture(scope="module", params=["a", "b"])
def regime(request):
    setting = request.param
    log = make_sparse_user_log(setting, seed=SEED)
    train_df, test_df = build_din_samples(log, maxlen=MAXLEN, extra_cols=("p_click",), test_events=5)
    columns = din_feature_columns(log, maxlen=MAXLEN, embedding_dim=EMBEDDING_DIM, id_type="str")
    train_sample = train_df.sample(8000, random_state=SEED)
    result = {"setting": setting}
    for name, full_table_l2 in (("new", None), ("old", OLD_FULL_TABLE_L2)):
        model = train(columns, train_df, full_table_l2)
        result[name] = ratios(model, test_df, columns)
        result[name + "_train"] = ratios(model, train_sample, columns)
    print(f"\nsparse-user setting {setting!r}: {len(train_df)} train / {len(test_df)} test rows, "
          f"oracle test AUC {result['new']['oracle']:.4f}")
    for name, label in (("new", "default (mini-batch aware 1e-6 + LazyAdam)"),
                        ("old", f"old full-table {OLD_FULL_TABLE_L2:g} + dense Adam")):
        test, fit = result[name], result[name + "_train"]
        print(f"  DIN {label:45s} test AUC {test['auc']:.4f} ({test['ratio']:.3f} x oracle {test['oracle']:.4f}), "
              f"train AUC {fit['auc']:.4f} ({fit['ratio']:.3f} x oracle)")
    return result


def test_default_din_reaches_its_floor(regime):
    assert regime["new"]["ratio"] >= FLOOR[regime["setting"]]


def test_din_memorises_in_the_sparse_user_regime(regime):
    for name in ("new", "old"):
        assert regime[name + "_train"]["ratio"] >= 0.97  # the training rows are fitted to the oracle's level
        assert regime[name + "_train"]["ratio"] - regime[name]["ratio"] >= 0.05  # ... and do not generalise


def test_new_and_old_penalties_at_the_default_strength_match(regime):
    assert abs(regime["new"]["ratio"] - regime["old"]["ratio"]) <= PARITY
    assert np.isclose(regime["new"]["oracle"], regime["old"]["oracle"])


@pytest.mark.parametrize("setting", ["a", "b"])
def test_sparse_user_presets_are_sparse(setting):
    log = make_sparse_user_log(setting, seed=1, id_type="int")
    rows_per_user = log.groupby("user_id").size()
    assert rows_per_user.min() == rows_per_user.max() <= 40  # a few dozen rows per user
    views = log.groupby("item_id").size()
    assert 10 <= views.mean() <= 40 and views.median() <= 10  # items seen ~20 times, a long tail
    pd_str = make_sparse_user_log(setting, seed=1, id_type="str")
    np.testing.assert_array_equal(pd_str["p_click"].to_numpy(), log["p_click"].to_numpy())
    assert ((log["p_click"] > 0) & (log["p_click"] < 1)).all()


def test_sparse_user_log_rejects_unknown_settings():
    with pytest.raises(ValueError, match="setting"):
        make_sparse_user_log("z")
