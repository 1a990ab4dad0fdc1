"""export_retrieval: top-k SavedModels over ScaNN and brute force, served and checked exactly.

A tiny YoutubeDNN (raw string item ids, in-graph vocabulary) is trained once on random data and
exported once over 5000 candidates, ScaNN forced below its default corpus threshold. The ScaNN
export is served by our real server over gRPC beside its brute-force twin; the brute-force
export is checked against numpy's exact top-k and run by TensorFlow's own saved_model_cli.
"""
import feature_columns._legacy_keras  # noqa: F401

import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import exporters
from exporters.retrieval import _BruteForceIndex, merge_interest_results
from tests.conftest import run_saved_model_cli

NUM_ITEMS = 5000
NUM_USERS = 300
K = 50
DIM = 16
HIST_LEN = 10
ITEMS = [f"item{i:05d}" for i in range(NUM_ITEMS)]


def user_rows(num_rows, seed):
    """Raw user features as a client sends them: int64 ids, string item histories."""
    rng = np.random.default_rng(seed)
    return {
        "user_id": rng.integers(1, NUM_USERS + 1, num_rows).astype("int64"),
        "gender": rng.integers(1, 3, num_rows).astype("int64"),
        "hist_item_id": np.array(ITEMS, dtype=object)[rng.integers(0, NUM_ITEMS, (num_rows, HIST_LEN))],
    }


def keras_user_feed(rows):
    return {"user_id": rows["user_id"][:, None], "gender": rows["gender"][:, None],
            "hist_item_id": rows["hist_item_id"]}


@pytest.fixture(scope="module")
def youtubednn():
    from feature_columns import SparseFeat, VarLenSparseFeat
    from tfrec.models import YoutubeDNN

    tf.keras.utils.set_random_seed(3)
    item = SparseFeat("item_id", vocabulary=ITEMS, embedding_dim=DIM, dtype="string")
    history = SparseFeat("hist_item_id", vocabulary=ITEMS, embedding_dim=DIM, dtype="string",
                         embedding_name="item_id")
    user_columns = [SparseFeat("user_id", NUM_USERS + 1, 8, dtype="int64"),
                    SparseFeat("gender", 3, 4, dtype="int64"),
                    VarLenSparseFeat(history, maxlen=HIST_LEN)]
    model = YoutubeDNN(user_columns, [item], user_dnn_hidden_units=(32, DIM))
    model.compile(tf.keras.optimizers.Adam(0.01))
    rows = user_rows(2000, seed=0)
    features = keras_user_feed(rows)
    features["item_id"] = np.array(ITEMS, dtype=object)[
        np.random.default_rng(1).integers(0, NUM_ITEMS, (2000, 1))]
    model.fit(features, np.zeros((2000, 1)), batch_size=250, epochs=1, verbose=0)  # whole batches: one XLA compile
    return model


@pytest.fixture(scope="module")
def candidates():
    """Every item once, shuffled (row order is not id order), plus a column the export ignores."""
    rng = np.random.default_rng(2)
    return pd.DataFrame({"item_id": rng.permutation(ITEMS), "popularity": rng.random(NUM_ITEMS)})


@pytest.fixture(scope="module")
def exported(youtubednn, candidates, tmp_path_factory):
    base = tmp_path_factory.mktemp("retrieval") / "youtubednn"
    warmup_rows = pd.DataFrame({name: list(values) for name, values in user_rows(3, 9).items()})
    started = time.perf_counter()
    result = exporters.export_retrieval(youtubednn, base, candidates, k=K, warmup_inputs=warmup_rows,
                                        min_candidates=1000)  # ScaNN on a 5000-item corpus
    print(f"\nexport_retrieval of {NUM_ITEMS} candidates: {time.perf_counter() - started:.1f} s, "
          f"ScaNN config {result.scann_config}")
    return result


@pytest.fixture(scope="module")
def exact(youtubednn, candidates):
    """numpy's exact top-k of user tower . item vectors, for the test users."""
    rows = user_rows(200, seed=5)
    users = youtubednn.user_tower.predict(keras_user_feed(rows), verbose=0)
    items = youtubednn.item_tower.predict(
        {"item_id": candidates["item_id"].to_numpy(dtype=object)[:, None]}, verbose=0)
    scores = users @ items.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    ids = candidates["item_id"].to_numpy()[top]
    return rows, ids, np.take_along_axis(scores, top, axis=1), scores


def constants(rows):
    return {name: tf.constant(values) for name, values in rows.items()}


def score_of(scores, candidates, ids):
    """Each returned id's exact score (rows of `scores` are users, columns candidates)."""
    column = {item: index for index, item in enumerate(candidates["item_id"])}
    return np.array([[scores[row, column[item]] for item in row_ids]
                     for row, row_ids in enumerate(ids)])


def decoded(ids):
    return np.vectorize(lambda value: value.decode())(ids)


def function_ops(export_dir):
    """Every op type in the SavedModel's graph and function library."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as pb:
        saved_model.ParseFromString(pb.read())
    graph = saved_model.meta_graphs[0].graph_def
    return ({node.op for node in graph.node}
            | {node.op for function in graph.library.function for node in function.node_def})


def test_layout_four_versioned_directories(exported, candidates, youtubednn):
    base = os.path.dirname(exported.path)
    assert exported.index == "scann" and exported.version == 1
    assert exported.num_candidates == NUM_ITEMS and exported.k == K
    assert exported.path == os.path.join(base, "1")
    assert exported.brute_force_path == base + "_brute_force" + os.sep + "1"
    assert exported.user_tower_path == base + "_user_tower" + os.sep + "1"
    assert exported.item_embeddings_path == base + "_item_embeddings" + os.sep + "1"
    for path in exported[:3]:
        assert os.path.isfile(os.path.join(path, "saved_model.pb"))
        assert os.path.isfile(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
    # ScaNN's custom ops are in the ScaNN export only; the twin needs stock TensorFlow.
    assert {"Scann>ScannSearchBatched", "Scann>TensorsToScann"} <= function_ops(exported.path)
    assert not any(op.startswith("Scann") for op in function_ops(exported.brute_force_path))

    # Item vectors for users with their own ANN service: row i is the id on line i.
    vectors = np.load(os.path.join(exported.item_embeddings_path, "item_embeddings.npy"))
    with open(os.path.join(exported.item_embeddings_path, "item_ids.txt"), encoding="utf-8") as f:
        ids = f.read().splitlines()
    assert ids == list(candidates["item_id"])
    np.testing.assert_allclose(vectors, youtubednn.item_tower.predict(
        {"item_id": np.array(ids, dtype=object)[:, None]}, verbose=0), atol=1e-6)
    with open(os.path.join(exported.item_embeddings_path, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["num_items"] == NUM_ITEMS and manifest["dimension"] == DIM
    assert manifest["id_feature"] == "item_id" and manifest["score"] == "dot_product"


def test_brute_force_export_is_numpy_exact_top_k(exported, exact, candidates):
    rows, exact_ids, exact_scores, scores = exact
    loaded = tf.saved_model.load(exported.brute_force_path)
    outputs = loaded.signatures["serving_default"](**constants(rows))
    for name, values in loaded(constants(rows)).items():  # called as a model, the same answer
        np.testing.assert_array_equal(values.numpy(), outputs[name].numpy(), err_msg=name)
    ids, returned = decoded(outputs["item_ids"].numpy()), outputs["scores"].numpy()

    assert ids.shape == returned.shape == (200, K)
    np.testing.assert_allclose(returned, exact_scores, atol=1e-5)  # the k best scores, in order
    np.testing.assert_allclose(returned, score_of(scores, candidates, ids), atol=1e-5)  # of these ids
    assert all(len(set(row)) == K for row in ids)
    assert np.mean(ids == exact_ids) > 0.99  # the rest: float ties/rounding order only


def test_brute_force_search_over_a_large_catalogue_is_top_k_with_ties_in_item_order():
    """Over a catalogue at least 160 x k items long the search ranks in two passes
    (feature_columns.top_k_indices); its answer is still top_k's, k given or a tensor."""
    rng = np.random.default_rng(3)
    vectors = np.round(rng.normal(size=(20_000, 4)), 1).astype(np.float32)  # rounded: many equal scores
    queries = tf.constant(np.round(rng.normal(size=(6, 4)), 1), tf.float32)
    index = _BruteForceIndex(vectors)
    expected = tf.math.top_k(tf.matmul(queries, vectors, transpose_b=True), 100)
    searched = tf.function(index.search, input_signature=[tf.TensorSpec([None, 4]), tf.TensorSpec([], tf.int32)])
    for indices, scores in (index.search(queries, 100), searched(queries, 100)):
        np.testing.assert_array_equal(indices, expected.indices)
        np.testing.assert_array_equal(scores, expected.values)


def test_exclude_leaves_the_items_a_request_sends_out_of_its_top_k(youtubednn, candidates, exact, tmp_path):
    """exclude="hist_item_id": the best k items outside each request's own history, from the
    ScaNN export and its brute-force twin alike (TFRS' `exclusions`)."""
    rows, plain_ids, _, scores = exact
    # Histories made of each user's own best items, so the plain top k holds them all.
    rows = dict(rows, hist_item_id=plain_ids[:, :HIST_LEN].astype(object))
    users = youtubednn.user_tower.predict(keras_user_feed(rows), verbose=0)
    items = youtubednn.item_tower.predict({"item_id": candidates["item_id"].to_numpy(dtype=object)[:, None]},
                                          verbose=0)
    scores = users @ items.T
    plain = candidates["item_id"].to_numpy()[np.argsort(-scores, axis=1, kind="stable")[:, :K]]
    seen = np.array([np.isin(candidates["item_id"].to_numpy(), history) for history in rows["hist_item_id"]])
    assert np.mean([len(set(top) & set(history)) for top, history in zip(plain, rows["hist_item_id"])]) > 3
    masked = np.where(seen, -np.inf, scores)
    top = np.argsort(-masked, axis=1, kind="stable")[:, :K]
    expected_ids, expected_scores = candidates["item_id"].to_numpy()[top], np.take_along_axis(masked, top, axis=1)

    result = exporters.export_retrieval(youtubednn, tmp_path / "seen", candidates, k=K, exclude="hist_item_id",
                                        min_candidates=1000)
    assert result.index == "scann"
    for path in (result.path, result.brute_force_path):
        outputs = tf.saved_model.load(path).signatures["serving_default"](**constants(rows))
        ids, returned = decoded(outputs["item_ids"].numpy()), outputs["scores"].numpy()
        assert ids.shape == (200, K)
        assert not any(set(row) & set(history) for row, history in zip(ids, rows["hist_item_id"]))
        if path == result.brute_force_path:
            np.testing.assert_allclose(returned, expected_scores, atol=1e-5)
            assert np.mean(ids == expected_ids) > 0.99
        else:
            assert np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, expected_ids)]) >= 0.9


def test_user_tower_export_returns_the_user_vectors(exported, exact, youtubednn):
    rows = exact[0]
    loaded = tf.saved_model.load(exported.user_tower_path)
    outputs = loaded.signatures["serving_default"](**constants(rows))
    np.testing.assert_allclose(outputs["user_embedding"].numpy(), youtubednn.user_tower.predict(
        keras_user_feed(rows), verbose=0), atol=1e-5)


def test_scann_export_served_over_grpc_recalls_the_brute_force_top_k(
        exported, exact, candidates, tmp_path, tfrec_main):
    from serving import Client, LocalServer

    rows, _, _, scores = exact
    base = os.path.dirname(exported.path)
    config = exporters.write_model_config(tmp_path / "models.config", {
        "youtubednn": base, "youtubednn_brute_force": base + "_brute_force"})
    with LocalServer(model_config_file=str(config), rest=False) as server, \
            Client(server.grpc_target, timeout=60) as client:
        scann = client.predict("youtubednn", rows)
        brute_force = client.predict("youtubednn_brute_force", rows)
        latency = {}
        for name in ("youtubednn", "youtubednn_brute_force"):
            one_user = {feature: values[:1] for feature, values in rows.items()}
            client.predict(name, one_user)
            started = time.perf_counter()
            for _ in range(20):
                client.predict(name, one_user)
            latency[name] = (time.perf_counter() - started) / 20 * 1000
        logs = server.logs()
        one_user = json.dumps({feature: values[:1].tolist() for feature, values in rows.items()})
        code, out, _ = tfrec_main("query", "--target", server.grpc_target, "--model-name", "youtubednn_brute_force",
                                  "--inputs", one_user)
        assert code == 0
        queried = json.loads(out)  # string ids printed as text (were a TypeError)
    assert queried["item_ids"] == decoded(brute_force["item_ids"][:1]).tolist()

    for name in ("youtubednn", "youtubednn_brute_force"):  # both loaded, warm-up replayed
        assert f"Successfully loaded servable version {{name: {name} version: 1}}" in logs
    assert re.findall(r"Number of warmup records read: (\d+)\. Failed: (\d+)", logs) == [("3", "0")] * 2
    scann_ids, bf_ids = decoded(scann["item_ids"]), decoded(brute_force["item_ids"])
    assert scann_ids.shape == bf_ids.shape == (200, K)
    assert set(scann_ids.ravel()) <= set(candidates["item_id"])  # real candidate ids
    assert all(len(set(row)) == K for row in scann_ids)
    # Reordering rescored the candidates exactly: the scores are these items' dot products.
    np.testing.assert_allclose(scann["scores"], score_of(scores, candidates, scann_ids), atol=1e-4)
    assert np.all(np.diff(scann["scores"], axis=1) <= 1e-6)
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(scann_ids, bf_ids)])
    print(f"ScaNN recall@{K} vs brute force over gRPC: {recall:.3f}; one-user Predict latency "
          f"ScaNN {latency['youtubednn']:.2f} ms, brute force "
          f"{latency['youtubednn_brute_force']:.2f} ms")
    assert recall >= 0.9


def test_a_batch_is_searched_in_concurrent_slices_with_the_results_of_one_search(exported):
    from exporters.retrieval import SCANN_SEARCH_SLICES

    signature = tf.saved_model.load(exported.path).signatures["serving_default"]
    rows = user_rows(200, seed=5)
    whole = signature(**constants(rows))  # 200 queries: searched in slices
    for n in (0, 1, 2 * SCANN_SEARCH_SLICES - 1, 2 * SCANN_SEARCH_SLICES, 37):  # one search below 16 queries
        part = signature(**constants({name: values[:n] for name, values in rows.items()}))
        # Row by row, not bit for bit: ScaNN's own batched search depends on the batch's size (its
        # partition scores are one product per batch, and a near-tie can flip: with scann's API, 11
        # of 250 ids differ between 5 queries searched alone and the same 5 in a batch of 200).
        # A slice put in the wrong rows, or lost, would share almost no ids with its rows.
        assert part["item_ids"].shape[0] == part["scores"].shape[0] == n
        for got_ids, got_scores, want_ids, want_scores in zip(
                part["item_ids"].numpy(), part["scores"].numpy(), whole["item_ids"].numpy(), whole["scores"].numpy()):
            same = set(got_ids) & set(want_ids)
            assert len(same) >= 0.8 * len(want_ids)
            got, want = dict(zip(got_ids, got_scores)), dict(zip(want_ids, want_scores))
            np.testing.assert_allclose([got[i] for i in same], [want[i] for i in same], atol=1e-6)
    # In the saved graph the slices' searches are marked read-only and not chained to each other.
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(exported.path, "saved_model.pb"), "rb") as pb:
        saved_model.ParseFromString(pb.read())
    sliced = [searches for searches in (
        [node for node in function.node_def if node.op == "Scann>ScannSearchBatched"]
        for function in saved_model.meta_graphs[0].graph_def.library.function) if len(searches) > 1]
    assert sliced and all(len(searches) == SCANN_SEARCH_SLICES for searches in sliced)
    for searches in sliced:
        names = {node.name for node in searches}
        for node in searches:
            assert list(node.attr["_read_only_resource_inputs"].list.i) == [0]
            assert not {name.lstrip("^").split(":")[0] for name in node.input if name.startswith("^")} & names


def scann_state_variables(export_dir):
    """{name: shape} of the ScaNN searcher's variables in an export's checkpoint."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    return {key.split("/")[-3]: tuple(shape) for key, shape in reader.get_variable_to_shape_map().items()
            if "/state/" in key}


def test_int8_reordering_keeps_no_float_vectors_and_recalls_the_exact_top_k(
        youtubednn, exported, exact, candidates, tmp_path):
    rows, _, _, scores = exact
    result = exporters.export_retrieval(youtubednn, tmp_path / "int8", candidates, k=K, min_candidates=1000,
                                        reordering_dtype="int8")
    assert result.index == "scann" and result.scann_config["reordering_dtype"] == "int8"
    assert exported.scann_config["reordering_dtype"] == "float32"
    # The float index saves (and a loaded one holds) every item vector; the int8 one only int8 codes.
    float_state, int8_state = scann_state_variables(exported.path), scann_state_variables(result.path)
    assert float_state["dataset"] == (NUM_ITEMS, DIM) and float_state["int8_dataset"] == ()
    assert int8_state["dataset"] == () and int8_state["int8_dataset"] == (NUM_ITEMS, DIM)
    served = tf.saved_model.load(result.path).signatures["serving_default"](**constants(rows))
    ids = decoded(served["item_ids"].numpy())
    exact_scores = score_of(scores, candidates, ids)
    # Approximate scores: the int8 codes' dot products, within the quantization error.
    error = np.abs(served["scores"].numpy() - exact_scores).max() / np.abs(exact_scores).max()
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, exact[1])])
    print(f"int8 reordering: recall@{K} {recall:.3f}, largest score error {error:.4f} of the largest score")
    assert 0 < error < 0.02
    assert recall >= 0.9


def test_saved_model_cli_runs_the_brute_force_export_and_shows_both(exported, youtubednn, candidates):
    rows = {"user_id": [7, 250], "gender": [1, 2],
            "hist_item_id": [["item00001", "item04999", "item00042"], ["item00100", "", ""]]}
    commands = [
        ("run", "--dir", exported.brute_force_path, "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--input_exprs", ";".join(f"{name}={values!r}" for name, values in rows.items())),
        ("show", "--all", "--dir", exported.brute_force_path),
        ("show", "--all", "--dir", exported.path)]
    with ThreadPoolExecutor(len(commands)) as pool:  # three TensorFlow start-ups at once
        printed, *shown = pool.map(lambda command: run_saved_model_cli(*command), commands)
    assert printed.returncode == 0, printed.stderr[-3000:]
    ids_text = printed.stdout.split("Result for output key item_ids:")[1].split("Result for")[0]
    ids = np.array(re.findall(r"b'(item\d+)'", ids_text)).reshape(2, K)

    feed = {"user_id": np.array(rows["user_id"])[:, None], "gender": np.array(rows["gender"])[:, None],
            "hist_item_id": np.array(rows["hist_item_id"], dtype=object)}
    users = youtubednn.user_tower.predict(feed, verbose=0)
    items = youtubednn.item_tower.predict(
        {"item_id": candidates["item_id"].to_numpy(dtype=object)[:, None]}, verbose=0)
    expected = candidates["item_id"].to_numpy()[np.argsort(-(users @ items.T), axis=1)[:, :K]]
    assert np.mean(ids == expected) > 0.98

    for output in shown:  # the brute-force export, then the ScaNN one
        assert output.returncode == 0, output.stderr[-3000:]
        assert (f"outputs['item_ids'] tensor_info:\n        dtype: DT_STRING\n"
                f"        shape: (-1, {K})") in output.stdout
        assert ("inputs['hist_item_id'] tensor_info:\n        dtype: DT_STRING\n"
                "        shape: (-1, -1)") in output.stdout


@pytest.mark.parametrize("change, message", [
    (lambda frame: frame.iloc[:0], "the candidate set is empty"),
    (lambda frame: frame.rename(columns={"item_id": "movie_id"}),
     r"no column 'item_id' \(the model's item id feature\); "
     r"its columns are \['movie_id', 'popularity'\]"),
    (lambda frame: frame.head(30), r"k must be an integer in \[1, number of candidates = 30\], got 50"),
    (lambda frame: pd.concat([frame.head(100), frame.head(1)]), r"repeats 1 id\(s\)"),
    (lambda frame: list(frame["item_id"]) + [frame["item_id"].iloc[0].encode()], r"repeats 1 id\(s\)"),  # b"x", "x"
    (lambda frame: set(frame["item_id"]), r"candidates must be item ids \(a list, numpy array or Series\), a dict "
                                          r"or a pandas DataFrame with the 'item_id' column, got set"),
    (lambda frame: {"movie_id": frame["item_id"]}, r"the candidates dict has no 'item_id' entry \(the model's "
                                                   r"item id feature\); its keys are \['movie_id'\]"),
    (lambda frame: np.stack([frame["item_id"]] * 2, axis=1), r"one id per candidate, shape \(n,\) or \(n, 1\); "
                                                            r"got shape \(\d+, 2\)"),
    (lambda frame: frame.assign(item_id=np.arange(len(frame)) + 0.5), "must hold strings"),  # ints: their text
    # splitlines() splits there too: item_ids.txt had a line more than item_embeddings.npy rows
    (lambda frame: list(frame["item_id"][:-1]) + ["item\u2028x"], r"ids must not contain line breaks"),
    (lambda frame: list(frame["item_id"][:-1]) + ["item\x85x"], r"ids must not contain line breaks"),
])
def test_bad_candidates_are_refused_before_anything_is_written(
        youtubednn, candidates, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        exporters.export_retrieval(youtubednn, tmp_path / "r", change(candidates), k=K)
    assert os.listdir(tmp_path) == []


def test_candidates_may_be_what_pandas_gives_for_a_columns_unique_ids(youtubednn, candidates):
    """Series.unique() (an ArrowStringArray under pandas 3) and an Index hold the ids as a list does."""
    from exporters.retrieval import _candidate_ids, _towers
    column, item_input = candidates["item_id"], _towers(youtubednn)[2]
    for ids in (column.unique(), pd.Index(column), column.value_counts().index):
        assert sorted(_candidate_ids(ids, item_input)) == sorted(column)


def test_exclude_refuses_a_sequence_of_another_tables_ids():
    """hist_cate_id holds categories: excluding them would drop the items that share their numbers."""
    from feature_columns import SparseFeat, VarLenSparseFeat
    from tfrec.models import YoutubeDNN
    item = SparseFeat("item_id", 200, DIM, dtype="int64")
    model = YoutubeDNN([SparseFeat("user_id", 10, 4, dtype="int64"),
                        VarLenSparseFeat(SparseFeat("hist_item_id", 200, DIM, embedding_name="item_id",
                                                    dtype="int64"), maxlen=5),
                        VarLenSparseFeat(SparseFeat("hist_cate_id", 20, 4, dtype="int64"), maxlen=5)],
                       [item], user_dnn_hidden_units=(DIM,))
    with pytest.raises(ValueError, match=r"exclude: 'hist_cate_id' must be a sequence of item ids \(like "
                                         r"hist_item_id\), but it is looked up in another table"):
        exporters.export_retrieval(model, "/nonexistent/never/written", np.arange(1, 200), k=10,
                                   index="brute_force", exclude="hist_cate_id")


def test_an_export_that_stops_midway_publishes_none_of_the_four(youtubednn, candidates, tmp_path, monkeypatch):
    """The retrieval model is written last: when writing it fails (a full disk here; a killed
    process alike), its brute-force twin, user tower and item vectors, already written, are not
    published either. Every base path keeps the versions it had, and the next export is version
    1 in all four, where a server would otherwise have loaded a twin the index never got."""
    from exporters import warmup

    write = warmup.write_warmup_file

    def disk_full_for_the_retrieval_model(saved_model_dir, logs):
        if os.path.dirname(saved_model_dir) == str(tmp_path / "r"):
            raise OSError("No space left on device")
        write(saved_model_dir, logs)

    monkeypatch.setattr(warmup, "write_warmup_file", disk_full_for_the_retrieval_model)
    with pytest.raises(OSError, match="No space left on device"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, k=K, index="brute_force")
    bases = ["r", "r_brute_force", "r_item_embeddings", "r_user_tower"]
    assert {name: os.listdir(tmp_path / name) for name in sorted(os.listdir(tmp_path))} == {b: [] for b in bases}
    monkeypatch.undo()
    result = exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, k=K, index="brute_force")
    assert result.version == 1
    assert {name: os.listdir(tmp_path / name) for name in sorted(os.listdir(tmp_path))} == {b: ["1"] for b in bases}


def test_an_export_with_another_k_than_the_served_version_says_so(youtubednn, candidates, tmp_path, caplog):
    """Tomorrow's k (the width of every answer) differs from the version being served: the
    export warns, naming the outputs and their shapes, as it does for changed inputs."""
    # The candidates as a user may hold them: a list of ids, a dict of (n, 1) features, a Series.
    ids = candidates["item_id"]
    exporters.export_retrieval(youtubednn, tmp_path / "r", ids.tolist(), k=K, index="brute_force")
    with caplog.at_level("WARNING", logger="exporters.saved_model"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", {"item_id": ids.to_numpy(dtype=object)[:, None]},
                                   k=K, index="brute_force")
        assert "answers other outputs" not in caplog.text  # the same k: nothing to say
        exporters.export_retrieval(youtubednn, tmp_path / "r", ids, k=K // 2, index="brute_force")
    for version in (1, 2, 3):
        with open(tmp_path / "r_item_embeddings" / str(version) / "item_ids.txt", encoding="utf-8") as f:
            assert f.read().splitlines() == [str(i) for i in ids]
    assert f"the new version of {tmp_path / 'r'} answers other outputs than version 2" in caplog.text
    assert re.search(rf"item_ids \w+ \[None, {K}\] -> \w+ \[None, {K // 2}\]; scores float32 \[None, {K}\] -> "
                     rf"float32 \[None, {K // 2}\]", caplog.text), caplog.text


def test_no_layer_keeps_a_list_as_long_as_the_catalogue(youtubednn):
    """Keras tracks a layer's list attributes and walks every entry whenever it lists the layer's
    weights or saves it: each of an export's saves walked the 5,000-id vocabulary dozens of times
    (0.4 s a save). The vocabulary and a sampler's item counts are kept as tuples; their configs
    still hold lists, and the layers rebuilt from them map and draw as before."""
    from tensorflow.python.trackable.data_structures import TrackableDataStructure

    from feature_columns import SparseIndex
    from tfrec.layers import NegativeSampling

    sampler = NegativeSampling("frequency", 5, NUM_ITEMS + 2, item_count=[0.0, 0.0] + [1.0] * NUM_ITEMS, seed=1)
    index = next(layer for layer in youtubednn.layers if isinstance(layer, SparseIndex) and layer.vocabulary)
    for layer in (youtubednn, sampler):
        tracked = [len(value) for module in layer._flatten_modules()
                   for value in getattr(module, "_self_tracked_trackables", ())
                   if isinstance(value, TrackableDataStructure)]
        assert max(tracked, default=0) < 10, tracked
    assert type(index.get_config()["vocabulary"]) is list and type(sampler.get_config()["item_count"]) is list
    copy = SparseIndex.from_config(index.get_config())
    ids = tf.constant([[ITEMS[7], "", "unknown"]])
    assert copy(ids).numpy().tolist() == index(ids).numpy().tolist() == [[9, 0, 1]]
    drawn = [layer(tf.constant([2, 3]), training=True)[0].numpy()
             for layer in (sampler, NegativeSampling.from_config(sampler.get_config()))]
    np.testing.assert_array_equal(drawn[0], drawn[1])


def test_bad_index_options_and_models_are_refused(youtubednn, candidates, tmp_path):
    with pytest.raises(ValueError, match=r"index must be one of \('scann', 'brute_force'\)"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, index="hnsw")
    with pytest.raises(ValueError, match=r"unknown ScaNN option\(s\) \['leaves'\]"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, leaves=10)
    with pytest.raises(ValueError, match="reordering_dtype must be 'float32' or 'int8', got 'bfloat16'"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, min_candidates=1,
                                   reordering_dtype="bfloat16")
    with pytest.raises(ValueError, match="num_leaves_to_search=80 exceeds num_leaves=70"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, min_candidates=1,
                                   num_leaves=70, num_leaves_to_search=80)
    for option, message in [({"anisotropic_quantization_threshold": "high"}, "anisotropic_quantization_threshold must"),
                            ({"parallel": "no"}, "parallel must be True or False, got 'no'"),
                            ({"training_threads": -1}, "training_threads must be an integer >= 0"),
                            ({"hash_type": "lut8"}, "hash_type must be 'lut16' or 'lut256'")]:
        with pytest.raises(ValueError, match=f"ScaNN option {message}"):
            exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, min_candidates=1, **option)
    with pytest.raises(ValueError, match=r"ScaNN option\(s\) \['num_leaves'\] have no effect with "
                                         r"index='brute_force'"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, index="brute_force", num_leaves=5)
    with pytest.raises(ValueError, match=r"no column 'item_id' .*\(it is the frame's index: call "
                                         r"candidates.reset_index\(\) first\)"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates.set_index("item_id"))
    with pytest.raises(ValueError, match=r"exclude: 'hist_cate_id' is not a feature of the user tower; its "
                                         r"features are \['gender', 'hist_item_id', 'user_id'\]"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, exclude="hist_cate_id")
    with pytest.raises(ValueError, match="exclude: 'user_id' must be a sequence of item ids .* int64 of shape "
                                         r"\(None, 1\), and the item id is string"):
        exporters.export_retrieval(youtubednn, tmp_path / "r", candidates, exclude=["hist_item_id", "user_id"])
    ranker = tf.keras.Model(youtubednn.inputs, youtubednn.outputs)
    with pytest.raises(TypeError, match="needs a two-tower model"):
        exporters.export_retrieval(ranker, tmp_path / "r", candidates)
    assert os.listdir(tmp_path) == []


# ----- multi-interest user towers: per-interest search, merged in the graph -----------------

NUM_INTERESTS, SMALL_DIM, SMALL_ITEMS = 4, 8, 300


def multi_interest_model():
    """A TwoTowerModel whose user tower returns [(batch, 4, 8) interests, (batch, 4) mask] as
    MIND's does: user u has 1 + u % 4 valid interests; masked interests are 10x longer, so
    any leak of them into the results would dominate the scores."""
    from tfrec.models import TwoTowerModel

    tf.keras.utils.set_random_seed(11)
    user_id = tf.keras.Input((1,), name="user_id", dtype=tf.int64)
    item_id = tf.keras.Input((1,), name="item_id", dtype=tf.int64)
    raw = tf.keras.layers.Reshape((NUM_INTERESTS, SMALL_DIM))(tf.keras.layers.Flatten()(
        tf.keras.layers.Embedding(64, NUM_INTERESTS * SMALL_DIM)(user_id)))
    mask = tf.keras.layers.Lambda(
        lambda ids: tf.cast(tf.range(NUM_INTERESTS, dtype=tf.int64)[tf.newaxis, :]
                            <= ids % NUM_INTERESTS, tf.float32), name="interest_mask")(user_id)
    interests = tf.keras.layers.Lambda(
        lambda args: args[0] * (1.0 + 9.0 * (1.0 - args[1]))[:, :, tf.newaxis],
        name="user_embedding")([raw, mask])
    items = tf.keras.layers.Flatten(name="item_embedding")(
        tf.keras.layers.Embedding(SMALL_ITEMS + 1, SMALL_DIM)(item_id))
    score = tf.keras.layers.Lambda(
        lambda args: tf.reduce_max(tf.einsum("bkd,bd->bk", args[0], args[1]), 1, keepdims=True)
    )([interests, items])
    return TwoTowerModel(inputs={"user_id": user_id, "item_id": item_id}, outputs=score,
                         name="multi")


def numpy_merged_top_k(model, users, item_ids, k):
    interests, mask = model.user_tower.predict(users[:, None], verbose=0)
    vectors = model.item_tower.predict(item_ids[:, None], verbose=0)
    scores = np.einsum("bkd,nd->bkn", interests, vectors)
    scores = np.where(mask[:, :, None] > 0, scores, -np.inf).max(axis=1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return item_ids[top], np.take_along_axis(scores, top, axis=1), scores


def exact_scores_of(all_scores, ids):
    """The merged exact score of each returned id (candidate column j holds id 300 - j)."""
    return all_scores[np.arange(len(ids))[:, None], SMALL_ITEMS - ids]


def test_multi_interest_results_merge_by_item_with_masked_interests_ignored(tmp_path, caplog):
    model = multi_interest_model()
    item_ids = np.arange(1, SMALL_ITEMS + 1, dtype=np.int64)[::-1].copy()  # raw ids, not row order
    users = np.arange(1, 41, dtype=np.int64)
    k = 20
    with caplog.at_level(logging.WARNING, logger="exporters.retrieval"):
        result = exporters.export_retrieval(
            model, tmp_path / "multi", pd.DataFrame({"item_id": item_ids}), k=k)
    assert result.index == "brute_force"  # 300 candidates < min_candidates: no ScaNN
    assert "300 candidates < min_candidates=20000" in caplog.text

    expected_ids, expected_scores, all_scores = numpy_merged_top_k(model, users, item_ids, k)
    for path in (result.path, result.brute_force_path):
        outputs = tf.saved_model.load(path).signatures["serving_default"](user_id=tf.constant(users))
        ids, scores = outputs["item_ids"].numpy(), outputs["scores"].numpy()
        assert ids.dtype == np.int64 and ids.shape == (len(users), k)
        assert all(len(set(row)) == k for row in ids)  # each item once
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)  # max over valid interests
        np.testing.assert_allclose(scores, exact_scores_of(all_scores, ids), rtol=1e-5)
        assert np.mean(ids == expected_ids) > 0.99


def test_mind_searches_each_active_interest_with_scann_and_brute_force(tmp_path):
    """MIND with dynamic_k (1 to 4 active interests, inactive ones zero): each export returns
    the exact max-over-active-interests top-k (ScaNN forced, reordering every candidate)."""
    mind = pytest.importorskip("tfrec.models.mind")
    from feature_columns import SparseFeat, VarLenSparseFeat

    item = SparseFeat("item_id", SMALL_ITEMS + 1, SMALL_DIM, dtype="int64")
    history = SparseFeat("hist_item_id", SMALL_ITEMS + 1, SMALL_DIM, dtype="int64",
                         embedding_name="item_id")
    user_columns = [SparseFeat("user_id", 41, 4, dtype="int64"), VarLenSparseFeat(history, maxlen=8)]
    model = mind.MIND(user_columns, [item], k_max=NUM_INTERESTS, dynamic_k=True,
                      user_dnn_hidden_units=(16, SMALL_DIM))
    rng = np.random.default_rng(4)
    lengths = np.arange(40) % 8 + 1  # 1..8 events: 1, 2 or 3 active interests
    rows = {"user_id": rng.integers(1, 41, 40).astype("int64"),
            "hist_item_id": np.where(np.arange(8) < lengths[:, None],
                                     rng.integers(1, SMALL_ITEMS + 1, (40, 8)), 0).astype("int64")}
    item_ids = np.arange(1, SMALL_ITEMS + 1, dtype=np.int64)
    k = 20
    result = exporters.export_retrieval(
        model, tmp_path / "mind", pd.DataFrame({"item_id": item_ids}), k=k,
        min_candidates=1, num_reordering_candidates=SMALL_ITEMS)
    assert result.index == "scann"

    interests, mask = model.user_tower.predict(
        {"user_id": rows["user_id"][:, None], "hist_item_id": rows["hist_item_id"]}, verbose=0)
    assert {int(n) for n in mask.sum(axis=1)} > {1}  # several users have several interests
    vectors = model.item_tower.predict(item_ids[:, None], verbose=0)
    all_scores = np.where(mask[:, :, None] > 0, np.einsum("bkd,nd->bkn", interests, vectors),
                          -np.inf).max(axis=1)
    expected = -np.sort(-all_scores, axis=1)[:, :k]
    for path in (result.path, result.brute_force_path):
        outputs = tf.saved_model.load(path).signatures["serving_default"](**constants(rows))
        ids, scores = outputs["item_ids"].numpy(), outputs["scores"].numpy()
        assert all(len(set(row)) == k for row in ids)
        np.testing.assert_allclose(scores, all_scores[np.arange(40)[:, None], ids - 1], atol=1e-6)
        if path == result.brute_force_path:
            np.testing.assert_allclose(scores, expected, atol=1e-6)
        else:
            top = np.argsort(-all_scores, axis=1)[:, :k] + 1
            assert np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, top)]) >= 0.9

    # Excluding the history: the merged interests' best k among the items each user has not seen.
    seen = np.zeros_like(all_scores, dtype=bool)  # column j is item j + 1; 0 pads a history
    for row, history in enumerate(rows["hist_item_id"]):
        seen[row, history[history > 0] - 1] = True
    expected = -np.sort(-np.where(seen, -np.inf, all_scores), axis=1)[:, :k]
    result = exporters.export_retrieval(model, tmp_path / "mind_unseen", pd.DataFrame({"item_id": item_ids}), k=k,
                                        index="brute_force", exclude="hist_item_id")
    outputs = tf.saved_model.load(result.path).signatures["serving_default"](**constants(rows))
    ids, scores = outputs["item_ids"].numpy(), outputs["scores"].numpy()
    assert not any(set(row) & set(history) for row, history in zip(ids, rows["hist_item_id"]))
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_merge_keeps_each_items_best_score_over_valid_interests():
    # Row 0: item 5 found by both interests (best 0.9), interest 2 masked (its 0.99 ignored),
    # empty slots (-1). Row 1: no valid results beyond two items -> padded with -1 / -inf.
    indices = tf.constant([[[5, 3, -1], [7, 5, 1], [2, 4, 6]],
                           [[8, -1, -1], [8, 9, -1], [1, 2, 3]]], tf.int32)
    scores = tf.constant([[[0.5, 0.4, np.nan], [0.8, 0.9, 0.1], [0.99, 0.98, 0.97]],
                          [[0.3, np.nan, np.nan], [0.2, 0.1, np.nan], [0.9, 0.9, 0.9]]], tf.float32)
    valid = tf.constant([[True, True, False], [True, True, False]])
    merged_indices, merged_scores = merge_interest_results(indices, scores, valid, 4)

    assert merged_indices.numpy().tolist() == [[5, 7, 3, 1], [8, 9, -1, -1]]
    np.testing.assert_allclose(merged_scores.numpy(),
                               [[0.9, 0.8, 0.4, 0.1], [0.3, 0.1, -np.inf, -np.inf]])


def test_candidates_the_item_table_does_not_know_are_left_out_with_a_warning(youtubednn, candidates, tmp_path,
                                                                             caplog):
    """Unknown items would all get the one untrained OOV vector and score alike. The padding id ""
    is no item either: it was exported with the padding row's vector, and came back as a result
    with a finite score, where "" marks an empty slot."""
    new_items = pd.DataFrame({"item_id": [f"new{i}" for i in range(20)] + [""], "popularity": 0.0})
    with caplog.at_level("WARNING", logger="exporters.retrieval"):
        result = exporters.export_retrieval(youtubednn, tmp_path / "r", pd.concat([candidates, new_items]), k=K,
                                            index="brute_force")
    assert result.num_candidates == NUM_ITEMS
    assert "21 of 5021 candidates are not in the item table's vocabulary or are its padding id" in caplog.text
    served = tf.saved_model.load(result.path).signatures["serving_default"](**constants(user_rows(4, 3)))
    assert not set(decoded(served["item_ids"].numpy().reshape(-1)).tolist()) & set(new_items["item_id"])
    with pytest.raises(ValueError, match="none of the 21 candidates is an item the model was trained with"):
        exporters.export_retrieval(youtubednn, tmp_path / "none", new_items, k=5, index="brute_force")


def test_the_padding_id_is_left_out_of_a_hashed_item_tables_catalogue(tmp_path, caplog):
    """A hashed item table knows every id, but "" (or 0) is still its padding, no item: it was
    exported as a candidate, and served as a recommendation, where "" marks an empty slot."""
    from feature_columns import SparseFeat, VarLenSparseFeat
    from tfrec.models import YoutubeDNN

    for dtype, items, padding in (("string", ["a", "b", "c", "d"], ""), ("int64", [3, 5, 7, 9], 0)):
        item = SparseFeat("item_id", 50, embedding_dim=4, dtype=dtype, use_hash=True)
        history = VarLenSparseFeat(SparseFeat("hist_item_id", 50, embedding_dim=4, dtype=dtype, use_hash=True,
                                              embedding_name="item_id"), maxlen=3)
        model = YoutubeDNN([history], [item], user_dnn_hidden_units=(4,))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="exporters.retrieval"):
            result = exporters.export_retrieval(model, tmp_path / dtype, pd.DataFrame({"item_id": items + [padding]}),
                                                k=4, index="brute_force")
        assert result.num_candidates == 4
        assert "1 of 5 candidates are not in the item table's vocabulary or are its padding id" in caplog.text
        with open(os.path.join(result.item_embeddings_path, "item_ids.txt"), encoding="utf-8") as ids:
            assert ids.read().split() == [str(item) for item in items]
        history_rows = tf.constant([items[:2] + [padding]] * 2, tf.string if dtype == "string" else tf.int64)
        served = tf.saved_model.load(result.path).signatures["serving_default"](hist_item_id=history_rows)
        assert sorted(served["item_ids"].numpy()[0].tolist()) == sorted(
            item.encode() if dtype == "string" else item for item in items)


def test_cli_exports_a_saved_retrieval_model_over_a_catalogue_file(youtubednn, tmp_path, tfrec_main):
    """`tfrec export --model --candidates --k` writes the retrieval export (it used to write a
    ranking export of the training loss); a catalogue of int ids reaches a string item table
    as their decimal text; without --candidates it says what is needed."""
    youtubednn.save(tmp_path / "yt.keras")
    catalogue = tmp_path / "items.csv"
    pd.DataFrame({"item_id": ITEMS[:300]}).to_csv(catalogue, index=False)
    base = tmp_path / "exports" / "yt"
    code, out, _ = tfrec_main("export", "--model", tmp_path / "yt.keras", "--export-base", base,
                              "--candidates", catalogue, "--k", 7)
    assert code == 0 and out.strip().endswith(os.path.join("yt", "1"))
    loaded = tf.saved_model.load(str(base) + "_brute_force/1")
    rows = user_rows(2, 5)
    outputs = loaded.signatures["serving_default"](**constants(rows))
    assert outputs["item_ids"].shape == (2, 7)
    plain = decoded(outputs["item_ids"].numpy())
    assert set(plain.ravel()) <= set(ITEMS[:300])

    # --exclude: each row's own top 3, sent as its history, are left out of version 2's answer.
    rows["hist_item_id"] = plain[:, :3].astype(object)
    assert tfrec_main("export", "--model", tmp_path / "yt.keras", "--export-base", base,
                      "--candidates", catalogue, "--k", 7, "--exclude", "hist_item_id")[0] == 0
    unseen = decoded(tf.saved_model.load(str(base) + "_brute_force/2").signatures["serving_default"](
        **constants(rows))["item_ids"].numpy())
    assert not any(set(row) & set(history) for row, history in zip(unseen, rows["hist_item_id"]))

    unknown = tmp_path / "unknown.csv"
    pd.DataFrame({"item_id": ["new1", "new2"]}).to_csv(unknown, index=False)
    code, out, error = tfrec_main("export", "--model", tmp_path / "yt.keras", "--export-base", base,
                                  "--candidates", unknown)
    assert code == 1 and "none of the 2 candidates is an item the model was trained with" in error
    assert "exporting the top 100 of 2 candidates" in out  # without --k, the default k (it said 'top None')

    code, _, error = tfrec_main("export", "--model", tmp_path / "yt.keras", "--export-base", base)
    assert code == 1
    assert "is a retrieval (two-tower) model: its export serves the top k items of a catalogue" in error
    assert "pass --candidates ITEMS.csv (or .parquet) with the item id column 'item_id'" in error


def test_candidates_never_trained_as_targets_are_named_in_a_warning(tmp_path, caplog):
    """With an in-batch sampler, an item whose item_count is 0 was never a softmax candidate:
    the export warns with how many and which, and keeps them (the caller's choice)."""
    import logging

    from feature_columns import SparseFeat, VarLenSparseFeat
    from tfrec.models import YoutubeDNN
    from tfrec.utils import NegativeSampler, item_counts

    items = ["a", "b", "c", "d", "e"]
    item = SparseFeat("item_id", vocabulary=items, embedding_dim=4, dtype="string")
    history = VarLenSparseFeat(SparseFeat("hist_item_id", vocabulary=items, embedding_dim=4, dtype="string",
                                          embedding_name="item_id"), maxlen=3)
    counts = item_counts(pd.Series(["a", "b", "b", "e"]), item)  # "c" and "d" never a target
    candidates = pd.DataFrame({"item_id": items})
    for sampler, warned in (("inbatch", True), ("uniform", False)):
        model = YoutubeDNN([history], [item], user_dnn_hidden_units=(4,),
                           sampler_config=NegativeSampler(sampler, 0 if sampler == "inbatch" else 2,
                                                          "item_id", item_count=counts))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="exporters.retrieval"):
            result = exporters.export_retrieval(model, tmp_path / sampler, candidates, k=5, index="brute_force")
        assert result.num_candidates == 5
        assert ("2 of 5 candidates (e.g. ['c', 'd']) were never a training target" in caplog.text) == warned
