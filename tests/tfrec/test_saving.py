"""`tfrec.load_model` loads a model saved under any name, with tfrec's metrics, in a fresh process.

Regression: `tfrec train --output din_keras && tfrec export --model din_keras` failed with
`Unable to restore custom object of class "tfrec>AUC"` (`.h5`: `Unknown metric function`),
because the loading process had imported only `tfrec.layers`, not `tfrec.metrics`.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat
from tfrec import metrics
from tfrec.models import DIN

NAMES = ("din_keras", "din.h5", "din.keras")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved")
    columns = [SparseFeat("user", 4, 4), SparseFeat("item_id", 5, 4), DenseFeat("score", 1),
               VarLenSparseFeat(SparseFeat("hist_item_id", 5, 4, embedding_name="item_id"), maxlen=3)]
    model = DIN(columns, ["item_id"], dnn_hidden_units=(4,), att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy", metrics=[metrics.AUC(), metrics.LogLoss()])
    x = {"user": np.array([1, 2, 3, 1]), "item_id": np.array([1, 2, 3, 4]), "score": np.array([0.1, 0.2, 0.3, 0.4]),
         "hist_item_id": np.array([[1, 2, 0], [3, 0, 0], [4, 1, 2], [0, 0, 0]])}
    model.fit(x, np.array([1.0, 0.0, 1.0, 0.0]), verbose=0)
    for name in NAMES:
        model.save(directory / name)
    np.savez(directory / "x.npz", **x)
    np.save(directory / "expected.npy", model.predict(x, verbose=0))
    return directory


def test_load_model_needs_no_other_import_in_a_fresh_process(saved):
    # Only tfrec.saving is imported: the metrics, layers, LazyAdam and RecModel must all resolve.
    script = textwrap.dedent(f"""
        import numpy as np
        from tfrec.saving import load_model
        x = dict(np.load({str(saved / "x.npz")!r}))
        expected = np.load({str(saved / "expected.npy")!r})
        for name in {NAMES!r}:
            model = load_model({str(saved)!r} + "/" + name)
            scores = model.evaluate(x, np.array([1.0, 0.0, 1.0, 0.0]), verbose=0, return_dict=True)
            assert {{"auc", "logloss"}} <= set(scores), (name, scores)
            assert type(model.optimizer).__name__ == "LazyAdam", (name, model.optimizer)
            np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-6, err_msg=name)
            print("loaded", name, type(model.optimizer).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("loaded") == len(NAMES), result.stdout


def test_a_savedmodel_folder_holds_no_layer_traces_and_keeps_kerass_serving_signature(saved):
    """`model.save(folder)` skips the per-layer traces (load_model rebuilds tfrec models from their
    config), and still writes the signature Keras gives the folder: the model's call."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved / "din_keras"))
    assert not hasattr(loaded, "call_and_return_all_conditional_losses")  # what save_traces=True adds
    signature = loaded.signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    x = dict(np.load(saved / "x.npz"))
    feed = {name: tf.constant(value.reshape(-1, 1) if value.ndim == 1 else value, specs[name].dtype)
            for name, value in x.items()}
    np.testing.assert_allclose(signature(**feed)["prediction"].numpy(), np.load(saved / "expected.npy"), atol=1e-6)


def test_the_model_classes_are_registered_under_their_own_names():
    """A function put between `register_keras_serializable` and its class takes the class's
    registration: this catches it for every object tfrec registers."""
    import tensorflow as tf

    from tfrec.models.base import RecModel, SharedHistoryModel
    from tfrec.saving import registered_objects

    registered = {name: obj for name, obj in registered_objects().items() if name.startswith("tfrec>")}
    assert registered["tfrec>RecModel"] is RecModel and registered["tfrec>SharedHistoryModel"] is SharedHistoryModel
    assert all(name == f"tfrec>{obj.__name__}" and not obj.__name__.startswith("_")
               for name, obj in registered.items()), sorted(registered)
    assert tf.keras.utils.get_registered_name(RecModel) == "tfrec>RecModel"


def test_load_model_keeps_the_compiled_metrics(saved):
    from tfrec import load_model

    loaded = load_model(saved / "din_keras")
    x = dict(np.load(saved / "x.npz"))
    results = loaded.evaluate(x, np.array([1.0, 0.0, 1.0, 0.0]), verbose=0, return_dict=True)
    assert {"auc", "logloss"} <= set(results), results


def test_load_model_names_a_missing_path(tmp_path):
    from tfrec import load_model

    with pytest.raises(FileNotFoundError, match="no saved model at"):
        load_model(tmp_path / "nothing_here")


@pytest.mark.parametrize("name", ["din_keras", "din.h5"])
def test_tfrec_export_takes_a_model_saved_under_any_name(saved, tmp_path, tfrec_main, name):
    import tensorflow as tf

    code, out, _ = tfrec_main("export", "--model", saved / name, "--export-base", tmp_path / "din")
    assert code == 0
    path = out.strip().splitlines()[-1]
    assert path == str(tmp_path / "din" / "1")
    x = dict(np.load(saved / "x.npz"))
    signature = tf.saved_model.load(path).signatures["serving_default"]
    served = signature(user=tf.constant(x["user"], tf.int64), item_id=tf.constant(x["item_id"], tf.int64),
                       score=tf.constant(x["score"], tf.float32), hist_item_id=tf.constant(x["hist_item_id"], tf.int64))
    np.testing.assert_allclose(served["prediction"].numpy().reshape(-1), np.load(saved / "expected.npy").reshape(-1),
                               atol=1e-5)


def test_grown_tables_keep_every_weight_and_give_new_values_their_own_rows(tmp_path):
    """A warm start's model (`with_grown_tables`) answers yesterday's rows exactly as yesterday's
    model, saves and loads, and looks a new value up in its own row, not the out-of-vocabulary one."""
    import pandas as pd
    import tensorflow as tf

    import tfrec.models
    from tfrec.data import df_to_inputs, grow_vocabularies, infer_feature_columns
    from tfrec.saving import load_model, with_grown_tables

    yesterday = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u1"], "item_id": ["a", "b", "a", "c"],
                              "cate_id": ["x", "y", "x", "y"], "hist_item_id": [["a"], ["b", "a"], [], ["c"]],
                              "hist_cate_id": [["x"], ["y", "x"], [], ["y"]], "click": [1, 0, 1, 0]})
    columns = infer_feature_columns(yesterday, ["click"], embedding_dim=4)
    # SIM: its search, attention and towers around the tables (the config test grows DIN's).
    model = tfrec.models.SIM(columns, ["item_id", "cate_id"], topk=2, short_maxlen=1, dnn_hidden_units=(4,),
                             att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy")
    labels = yesterday["click"].to_numpy(np.float32)
    model.fit(df_to_inputs(yesterday, columns), labels, verbose=0, epochs=2)
    today = yesterday.assign(item_id=["a", "z", "z", "c"], hist_item_id=[["z"], ["b", "a"], [], ["y"]])
    grown_columns, grown = grow_vocabularies(columns, today)
    assert grown == {"item_id": ("a", "b", "c", "z", "y")}  # z twice, y once; user and cate tables unchanged
    assert grow_vocabularies(columns, today, min_count=2)[1] == {"item_id": ("a", "b", "c", "z")}
    grown_model = with_grown_tables(model, grown)
    before = model.predict(df_to_inputs(yesterday, columns), verbose=0)
    np.testing.assert_array_equal(grown_model.predict(df_to_inputs(yesterday, grown_columns), verbose=0),
                                  before)
    grown_model.save(tmp_path / "grown.keras")
    loaded = load_model(tmp_path / "grown.keras", compile=False)
    np.testing.assert_array_equal(loaded.predict(df_to_inputs(yesterday, grown_columns), verbose=0), before)
    assert loaded.get_layer("index_item_id")(tf.constant(["z", "y", "new"])).numpy().ravel().tolist() == [5, 6, 1]
    grown_model.compile("adam", "binary_crossentropy")  # trains on today's rows, new rows included
    grown_model.fit(df_to_inputs(today, grown_columns), labels, verbose=0)
    with pytest.raises(ValueError, match="must start with the model's 3 entries"):
        with_grown_tables(model, {"item_id": ("b", "a", "c", "z")})


def test_a_grown_simhash_sim_searches_new_items_by_the_signatures_of_their_rows():
    """SIM's SimHash search keeps a signature per row of the item table: a warm start's grown table
    gets one for each new row (from its embedding), so histories of new items are searched, not
    looked up past the end of the signatures."""
    import pandas as pd

    import tfrec.models
    from tfrec.data import df_to_inputs, grow_vocabularies, infer_feature_columns
    from tfrec.saving import with_grown_tables

    yesterday = pd.DataFrame({"user_id": ["u1", "u2", "u3", "u1"], "item_id": ["a", "b", "a", "c"],
                              "cate_id": ["x", "y", "x", "y"], "hist_item_id": [["a"], ["b", "a"], [], ["c"]],
                              "hist_cate_id": [["x"], ["y", "x"], [], ["y"]], "click": [1, 0, 1, 0]})
    columns = infer_feature_columns(yesterday, ["click"], embedding_dim=4)
    model = tfrec.models.SIM(columns, ["item_id", "cate_id"], search="simhash", topk=2, short_maxlen=1,
                             dnn_hidden_units=(4,), att_hidden_size=(4,))
    model.compile("adam", "binary_crossentropy")
    model.fit(df_to_inputs(yesterday, columns), yesterday["click"].to_numpy(np.float32), verbose=0)
    today = yesterday.assign(item_id=["a", "z", "z", "c"], hist_item_id=[["z"], ["b", "z"], [], ["y"]])
    grown_columns, grown = grow_vocabularies(columns, today)
    grown_model = with_grown_tables(model, grown)
    search = grown_model.get_layer("gsu")
    assert search.table_rows[0] == model.get_layer("gsu").table_rows[0] + 2  # z and y
    np.testing.assert_array_equal(search.signatures[0].numpy(),
                                  search.signature(grown_model.get_layer("emb_item_id").embeddings).numpy())
    np.testing.assert_array_equal(grown_model.predict(df_to_inputs(yesterday, grown_columns), verbose=0),
                                  model.predict(df_to_inputs(yesterday, columns), verbose=0))
    assert np.isfinite(grown_model.predict(df_to_inputs(today, grown_columns), verbose=0)).all()


def test_a_table_read_from_a_vocabulary_file_grows_into_a_vocabulary_list(tmp_path):
    import pandas as pd

    from tfrec.data import grow_vocabularies

    (tmp_path / "users.txt").write_text("04324\n02134\n")
    (tmp_path / "hours.txt").write_text("7\t10\n9\t3\n")  # values with counts
    columns = [SparseFeat("user_id", None, 4, dtype="string", vocabulary_path=str(tmp_path / "users.txt")),
               SparseFeat("hour", None, 4, dtype="int64", vocabulary_path=str(tmp_path / "hours.txt"))]
    today = pd.DataFrame({"user_id": ["02134", "2134", "77"], "hour": [9, 23, 7]})
    grown_columns, grown = grow_vocabularies(columns, today)
    assert grown == {"user_id": ("04324", "02134", "2134", "77"), "hour": (7, 9, 23)}
    assert [(c.vocabulary, c.vocabulary_path, c.vocabulary_size) for c in grown_columns] == [
        (("04324", "02134", "2134", "77"), None, 6), ((7, 9, 23), None, 5)]


def test_a_two_tower_models_sampler_grows_with_its_item_table_and_takes_new_counts():
    """MIND grown by a day's new items: yesterday's items keep their vectors, the negative sampler
    draws from every row of the grown table, and its logQ counts are the ones given (today's)."""
    import pandas as pd

    import tfrec.models
    from tfrec.data import df_to_inputs, grow_vocabularies, retrieval_samples, sample_feature_columns
    from tfrec.saving import with_grown_tables
    from tfrec.utils import NegativeSampler, item_counts

    def log(items):
        return pd.DataFrame({"user_id": ["u1"] * 4 + ["u2"] * 4, "item_id": items,
                             "cate_id": ["x", "y"] * 4, "timestamp": list(range(8))})

    yesterday, _ = retrieval_samples(log(["a", "b", "c", "a", "b", "c", "d", "a"]), 3, user_cols=(), min_history=1)
    user_columns, item_columns = sample_feature_columns(yesterday, 3, embedding_dim=4)
    counts = item_counts(yesterday["item_id"].to_numpy(), item_columns[0])
    model = tfrec.models.MIND(user_columns, item_columns, k_max=2, user_dnn_hidden_units=(4,),
                              sampler_config=NegativeSampler("frequency", 2, "item_id", item_count=counts))
    today, _ = retrieval_samples(log(["a", "z", "c", "z", "y", "c", "z", "a"]), 3, user_cols=(), min_history=1)
    columns, grown = grow_vocabularies(user_columns + item_columns, today)
    assert grown == {"item_id": ("b", "c", "a", "d", "z", "y")}  # z and y new; user and cate tables unchanged
    today_counts = item_counts(today["item_id"].to_numpy(), columns[-1])
    grown_model = with_grown_tables(model, grown, item_count=today_counts)

    sampler = grown_model.get_layer("negative_sampling").get_config()
    assert sampler["vocabulary_size"] == 8 and sampler["item_count"] == today_counts.tolist()
    old_items = df_to_inputs(pd.DataFrame({"item_id": ["a", "b", "c", "d"]}), item_columns)
    np.testing.assert_array_equal(grown_model.item_tower.predict(old_items, verbose=0),
                                  model.item_tower.predict(old_items, verbose=0))
    with pytest.raises(ValueError, match="table 'item_id' grows, and the model's negative sampler counts its items"):
        with_grown_tables(model, grown)  # new items would count 0: the largest logQ boost as positives
    grown_model.compile("adam")  # trains on today's samples, new items as targets and negatives
    assert np.isfinite(grown_model.fit(df_to_inputs(today, columns), epochs=2, verbose=0).history["loss"]).all()
    with pytest.raises(ValueError, match="item_count has 6 counts for an item table of 8 rows"):
        with_grown_tables(model, grown, item_count=counts)

    # new_rows="mean": new items start at the mean of yesterday's item rows (2-5: a, b, c, d),
    # not near zero; rows 0 and 1 (padding, unknown) are not items. Each table that grows does.
    table = model.get_layer("emb_item_id").embeddings.numpy()
    table[2:] = np.random.default_rng(0).normal(size=table[2:].shape)  # trained-looking rows
    model.get_layer("emb_item_id").embeddings.assign(table)
    by_mean = with_grown_tables(model, grown, item_count=today_counts, new_rows="mean")
    started = by_mean.get_layer("emb_item_id").embeddings.numpy()
    np.testing.assert_array_equal(started[:6], table)
    np.testing.assert_allclose(started[6:], np.tile(table[2:6].mean(axis=0), (2, 1)), atol=1e-3)
    assert not np.array_equal(started[6], started[7])  # plus the initializer's draw: they differ
    by_initializer = with_grown_tables(model, grown, item_count=today_counts).get_layer("emb_item_id")
    assert np.abs(by_initializer.embeddings.numpy()[6:]).max() < 1e-3
    with pytest.raises(ValueError, match="new_rows must be 'mean' or 'initializer', got 'zeros'"):
        with_grown_tables(model, grown, item_count=today_counts, new_rows="zeros")
