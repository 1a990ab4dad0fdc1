"""SIM: the three searches against numpy, quality against the oracle and DIN, save/export/serve."""
from types import SimpleNamespace

import numpy as np
import pytest

import feature_columns  # noqa: F401
import tensorflow as tf
from feature_columns import DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat

import tfrec.layers
from tfrec.data import df_to_inputs
from tfrec.data.long_history import long_history_feature_columns, make_long_history_setting
from tfrec.data.pipeline import batched_rows, dataset_elements
from tfrec.data.planted import oracle_auc
from tfrec.layers import SimHashSearch, SoftSearch, TargetAttention, TimeGapEmbedding
from tfrec.layers import search as search_module
from tfrec.metrics import auc
from tfrec.models import DIN, SIM, SharedHistoryModel
from tests.conftest import run_saved_model_cli

HISTORY = ["item_id", "cate_id"]
SMALL = dict(dnn_hidden_units=(64, 32), att_hidden_size=(32, 16), att_weight_normalization=True)


def random_columns(maxlen, items=60, categories=6):
    return [SparseFeat("item_id", items, 8), SparseFeat("cate_id", categories, 4),
            VarLenSparseFeat(SparseFeat("hist_item_id", items, 8, embedding_name="item_id"), maxlen),
            VarLenSparseFeat(SparseFeat("hist_cate_id", categories, 4, embedding_name="cate_id"), maxlen),
            DenseFeat("timestamp", dtype="int64"), VarLenDenseFeat("hist_timestamp", maxlen, dtype="int64")]


def random_inputs(n, width, items=60, categories=6, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, width + 1, n)
    real = np.arange(width)[None, :] < lengths[:, None]
    return {"item_id": rng.integers(1, items, n), "cate_id": rng.integers(1, categories, n),
            "hist_item_id": np.where(real, rng.integers(1, items, (n, width)), 0),
            "hist_cate_id": np.where(real, rng.integers(1, categories, (n, width)), 0),
            "timestamp": np.full(n, 2_000_000_000, np.int64),
            "hist_timestamp": np.where(real, np.sort(rng.integers(10**9, 2 * 10**9, (n, width)), axis=1), 0)}


def test_hard_search_returns_exactly_the_most_recent_same_category_events():
    topk, width = 5, 120
    model = SIM(random_columns(width), HISTORY, search="hard", topk=topk, short_maxlen=4, time_feature="timestamp",
                **SMALL)
    searched = tf.keras.Model(model.inputs, model.get_layer("gsu_hist_item_id").output)
    inputs = random_inputs(64, width)
    items, (categories, times) = searched.predict(inputs, verbose=0)
    for row in range(64):
        same = np.flatnonzero((inputs["hist_cate_id"][row] == inputs["cate_id"][row])
                              & (inputs["hist_item_id"][row] != 0))[-topk:]
        expected = np.zeros((3, topk), np.int64)
        expected[:, :len(same)] = [inputs[f"hist_{f}"][row, same] for f in ("item_id", "cate_id", "timestamp")]
        np.testing.assert_array_equal([items[row], categories[row], times[row]], expected)


@pytest.mark.parametrize("normalize", [False, True])
def test_soft_search_top_k_equals_numpy_top_k_of_inner_products(normalize):
    rng = np.random.default_rng(1)
    batch, length, topk = 16, 300, 20
    queries = [rng.normal(size=(batch, 1, dim)) for dim in (12, 4)]
    keys = [rng.normal(size=(batch, length, dim)) * rng.gamma(1.0, size=(batch, length, 1)) for dim in (12, 4)]
    mask = rng.random((batch, length)) < 0.8
    mask[0] = np.arange(length) < topk - 3  # a row with fewer events than topk
    search = SoftSearch(topk, normalize=normalize)
    unit = (lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)) if normalize else (lambda x: x)

    def check(keys, mask):
        positions, valid = search([tf.constant(q, tf.float32) for q in queries],
                                  [tf.constant(k, tf.float32) for k in keys], tf.constant(mask))
        scores = sum(np.einsum("bqd,bld->bl", unit(q), np.broadcast_to(unit(k), (batch, length, k.shape[-1])))
                     for q, k in zip(queries, keys))
        mask = np.broadcast_to(mask, (batch, length))
        scores = np.where(mask, scores, -np.inf)
        for row in range(batch):
            expected = np.argsort(-scores[row])[:min(topk, mask[row].sum())]
            assert positions.numpy()[row][valid.numpy()[row]].tolist() == expected.tolist()
            assert not valid.numpy()[row][len(expected):].any()
        return valid.numpy()

    assert check(keys, mask)[0].sum() == topk - 3
    # One history shared by every row (keys and mask of one row: a shared_history request) is
    # searched by one product with the mask folded in; it picks what numpy does, here among
    # only 15 real events, fewer than topk.
    one_mask = np.arange(length)[None, :] % 20 == 0
    assert (check([k[:1] for k in keys], one_mask).sum(axis=1) == 15).all()


def numpy_signatures(embeddings, hyperplanes):
    bits = (embeddings @ hyperplanes > 0).astype(np.uint64)
    words = bits.shape[-1] // 64
    packed = (bits.reshape(*bits.shape[:-1], words, 64) << np.arange(64, dtype=np.uint64)).sum(axis=-1)
    return packed.astype(np.uint64)


def test_simhash_hamming_distances_equal_a_numpy_reference():
    rng = np.random.default_rng(2)
    batch, length, dim = 4, 50, 8
    layer = SimHashSearch(10, tables=["emb"], table_rows=[1], num_bits=128)
    query = tf.constant(rng.normal(size=(batch, 1, dim)), tf.float32)
    keys = tf.constant(rng.normal(size=(batch, length, dim)), tf.float32)
    layer([query], [tf.zeros((batch, length), tf.int32)], tf.ones((batch, length), tf.bool), keys=[keys])
    hyperplanes = layer.hyperplanes[0].numpy()
    query_bits, key_bits = numpy_signatures(query.numpy(), hyperplanes), numpy_signatures(keys.numpy(), hyperplanes)
    np.testing.assert_array_equal(layer.signature(keys).numpy().astype(np.uint64), key_bits)
    differing = np.unpackbits((query_bits ^ key_bits).view(np.uint8), axis=-1).sum(axis=-1)
    expected = ((query.numpy() @ hyperplanes > 0) != (keys.numpy() @ hyperplanes > 0)).sum(axis=-1)
    np.testing.assert_array_equal(differing, expected)
    np.testing.assert_array_equal(layer.hamming(layer.signature(query), layer.signature(keys)).numpy(), expected)


@pytest.mark.parametrize("native_bfloat16", [True, False], ids=["cpu_with_bfloat16", "cpu_without"])
@pytest.mark.parametrize("num_bits", [64, 128, 1024])
def test_simhash_search_picks_the_nearest_events_summed_over_tables_ties_by_position(num_bits, native_bfloat16,
                                                                                   monkeypatch):
    """Two tables (item, category): the picks are numpy's stable sort of the summed distances over
    the unmasked events, whether the counts add up as uint8 (64 bits) or int32 (128, 1024). One
    history shared by every candidate (a `shared_history` request) is searched by a matmul of
    +-1 bits instead, in bfloat16 (64, 128 bits, on a CPU with bfloat16 in hardware) or float32:
    it picks the same events, also when fewer than topk are unmasked."""
    monkeypatch.setattr(search_module, "native_bfloat16", lambda: native_bfloat16)
    rng = np.random.default_rng(4)
    batch, length, dim, topk, rows = 6, 300, 8, 40, (200, 12)
    layer = SimHashSearch(topk, tables=["item", "cate"], table_rows=list(rows), num_bits=num_bits)
    queries = [tf.constant(rng.normal(size=(batch, 1, dim)), tf.float32) for _ in rows]
    histories = [rng.integers(0, r, (batch, length)) for r in rows]
    mask = rng.random((batch, length)) < 0.9
    layer(queries, histories, tf.constant(mask))
    tables = [rng.normal(size=(r, dim)).astype(np.float32) for r in rows]
    for index, (table, stored) in enumerate(zip(tables, layer.signatures)):
        stored.assign(layer.signature(tf.constant(table), table=index))
    distance = sum(layer.hamming(layer.signature(q, table=t), layer.signature(tf.constant(tables[t][h]), table=t))
                   .numpy() for t, (q, h) in enumerate(zip(queries, histories)))
    expected = np.argsort(np.where(mask, distance, 10**6), axis=1, kind="stable")[:, :topk]
    positions, valid = layer(queries, histories, tf.constant(mask), training=False)
    np.testing.assert_array_equal(positions.numpy(), expected)
    assert valid.numpy().all()
    for one_mask in (mask[:1], np.arange(length)[None, :] % 20 == 3):  # 15 real events < topk
        one_history = [history[:1] for history in histories]
        shared = layer(queries, one_history, tf.constant(one_mask), training=False)
        tiled = layer(queries, [np.repeat(history, batch, 0) for history in one_history],
                      tf.constant(np.repeat(one_mask, batch, 0)), training=False)
        for got, want in zip(shared, tiled):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert shared[1].numpy().sum(axis=1).tolist() == [15] * batch


@pytest.mark.parametrize("rows", [5000, 500], ids=["hashes_every_event", "hashes_each_row_once"])
def test_simhash_top_k_approximates_cosine_top_k_and_serves_from_precomputed_signatures(rows):
    rng = np.random.default_rng(3)
    batch, length, dim, topk = 32, 1000, 8, 50
    table = rng.normal(size=(rows, dim)).astype(np.float32)
    history = rng.integers(0, rows - 20, (batch, length))  # the last 20 rows unused
    query = rng.normal(size=(batch, 1, dim)).astype(np.float32)
    mask = tf.ones((batch, length), tf.bool)
    layer = SimHashSearch(topk, tables=["emb"], table_rows=[rows], num_bits=1024)
    trained, _ = layer([query], [history], mask, keys=[table[history]], training=True)
    unit = table[history] / np.linalg.norm(table[history], axis=-1, keepdims=True)
    cosine_top = np.argsort(-np.einsum("bqd,bld->bl", query, unit), axis=1)[:, :topk]
    overlap = np.mean([len(set(a) & set(b)) / topk for a, b in zip(trained.numpy(), cosine_top)])
    print(f"\nSimHash (1024 bits) top-{topk} overlap with cosine top-{topk}: {overlap:.3f}")
    assert overlap >= 0.8
    # Training wrote the signatures of the rows the batch used, and no other row's.
    used = np.unique(history)
    stored = layer.signatures[0].numpy()
    np.testing.assert_array_equal(stored[used], layer.signature(table[used]).numpy())
    assert not stored[rows - 20:].any()
    # Inference reads the stored signatures: refreshed from the table, they give the same picks.
    model = tf.keras.Sequential([tf.keras.layers.Embedding(rows, dim, name="emb")])
    model.build((None, 1))
    model.get_layer("emb").set_weights([table])
    layer.refresh_from(model)
    served, _ = layer([query], [history], mask, training=False)
    np.testing.assert_array_equal(served.numpy(), trained.numpy())


def test_time_gaps_fall_into_their_buckets():
    layer = TimeGapEmbedding(3, boundaries=(60, 3600))
    request = tf.constant([[10_000]], tf.int64)
    events = tf.constant([[10_000 - 5, 10_000 - 60, 10_000 - 7200, 0]], tf.int64)
    embedded = layer(request, events, tf.constant([[True, True, True, False]]))
    rows = layer.embedding.embeddings.numpy()
    np.testing.assert_allclose(embedded.numpy()[0], rows[[1, 2, 3, 0]])


def test_target_attention_starts_query_key_and_value_projections_apart():
    # One seeded initializer cloned for every projection would start them equal.
    layer = TargetAttention(2, seed=7)
    layer(tf.ones((3, 1, 8)), tf.ones((3, 5, 8)), tf.ones((3, 5), bool))
    kernels = {w.name.split("/")[-2]: w.numpy() for w in layer.weights if "kernel" in w.name}
    assert sorted(kernels) == ["attention_output", "key", "query", "value"]
    for first, second in (("query", "key"), ("query", "value"), ("key", "value")):
        assert not np.allclose(kernels[first], kernels[second]), (first, second)


def test_build_errors_name_the_problem():
    columns = random_columns(10)
    with pytest.raises(ValueError, match="search must be one of"):
        SIM(columns, HISTORY, search="fuzzy")
    with pytest.raises(ValueError, match="hard search compares 'brand'"):
        SIM(columns, HISTORY, search_feature="brand")
    with pytest.raises(ValueError, match="must share one maxlen"):
        SIM(columns[:5] + [VarLenDenseFeat("hist_timestamp", 7, dtype="int64")], HISTORY, time_feature="timestamp")
    # 0 built a model that ignored the long history; a fraction was truncated; 0 heads divided by zero
    for search, argument in [("hard", dict(topk=0)), ("soft", dict(topk=0)), ("simhash", dict(topk=2.5)),
                             ("hard", dict(short_maxlen=0)), ("hard", dict(num_heads=0))]:
        name = next(iter(argument))
        with pytest.raises(ValueError, match=f"SIM: {name} must be an int >= 1"):
            SIM(columns, HISTORY, search=search, **argument)
    for layer in (lambda: SoftSearch(0), lambda: SimHashSearch(0, ["item_id"], [60]), lambda: TargetAttention(0)):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            layer()


@pytest.mark.parametrize("model_name", ["hard", "soft", "simhash", "din"])
def test_one_shared_history_scores_like_the_history_on_every_row(model_name, tmp_path, caplog, monkeypatch):
    """One user's history sent once (one row, its length too) for 40 candidates gives the scores
    of the same history repeated on every row, computed row by row: in process and through the
    export's `shared_history` signature, which runs the model on the one row (it does not repeat
    it); the model called in process and `serving_default`, fed the history on every row, take
    that path too."""
    import feature_columns.inputs
    from exporters import export_saved_model

    # This request's 12,000 history events are below the gate; let the model and serving_default look anyway.
    monkeypatch.setattr(feature_columns.inputs, "ONE_HISTORY_MIN_ELEMENTS", 1)

    width = 300
    columns = random_columns(width)
    columns[2] = VarLenSparseFeat(SparseFeat("hist_item_id", 60, 8, embedding_name="item_id"), width,
                                  length_name="seq_length")
    if model_name == "din":
        model = DIN([c for c in columns if "timestamp" not in c.name], HISTORY, **SMALL)
    else:
        model = SIM(columns, HISTORY, search=model_name, topk=10, short_maxlen=8, time_feature="timestamp", **SMALL)
    model.refresh_derived_weights()  # SimHash: the tables' signatures, as the export computes them
    inputs = random_inputs(40, width, seed=3)
    inputs["seq_length"] = np.full(40, width - 20)
    history = [name for name in model.input_names if name.startswith("hist_") or name == "seq_length"]
    repeated = {name: np.repeat(inputs[name][7:8], 40, axis=0) if name in history else inputs[name]
                for name in model.input_names}
    shared = {name: repeated[name][:1] if name in history else repeated[name] for name in model.input_names}
    row_by_row = tf.keras.Model(model.inputs, model.outputs)  # the same layers, row by row
    expected = row_by_row(repeated, training=False).numpy()
    assert isinstance(model, SharedHistoryModel)
    for rows in (shared, repeated):
        np.testing.assert_allclose(model(rows, training=False).numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="one row per example .*shared_history signature"):
        model.predict(shared, verbose=0)  # predict splits rows into batches: it needs a history per row

    output, traced = model.get_layer(model.output_names[0]), []
    output_call = output.call  # called once per trace of the model (and per eager call)
    monkeypatch.setattr(output, "call", lambda *args, **kwargs: traced.append(not tf.executing_eagerly()) or
                        output_call(*args, **kwargs))
    with caplog.at_level("INFO", logger="exporters.saved_model"):
        path = export_saved_model(model, str(tmp_path / "m"), warmup_inputs={k: v[:3] for k, v in inputs.items()})
    assert "repeats the history" not in caplog.text
    # Traced three times: shared_history, the broadcast check on the warm-up rows' shapes and
    # serving_default's row-by-row branch; its one-history branch calls shared_history's function.
    assert traced.count(True) == 3
    signature = tf.saved_model.load(path).signatures["shared_history"]
    specs = signature.structured_input_signature[1]
    assert {name for name, spec in specs.items() if spec.shape[0] == 1} == set(history)
    served = signature(**{name: tf.constant(value, specs[name].dtype) for name, value in shared.items()})
    np.testing.assert_allclose(served["prediction"].numpy(), expected.ravel(), atol=1e-6)
    # serving_default: the history repeated on every row (through the one-row path), and a
    # history per row.
    default = tf.saved_model.load(path).signatures["serving_default"]
    for rows in (repeated, {name: inputs[name] for name in model.input_names}):
        served = default(**{name: tf.constant(value, specs[name].dtype) for name, value in rows.items()})
        np.testing.assert_allclose(served["prediction"].numpy(), row_by_row(rows, training=False).numpy().ravel(),
                                   atol=1e-6)


def test_serving_default_and_the_model_search_a_history_repeated_on_every_row_once(tmp_path):
    """A DeepCTR-style request (one user's history copied onto each of its 100 candidate rows)
    through `serving_default`, or to the model in process, runs the search once, as
    `shared_history` does: at L = 8,000 it takes a fraction of the time of the same request with
    one row's history changed, which is searched row by row. Both score as the model does row by
    row."""
    import time

    from exporters import export_saved_model

    width, rows = 8000, 100
    model = SIM(random_columns(width), HISTORY, search="hard", topk=10, short_maxlen=8, time_feature="timestamp",
                **SMALL)
    inputs = random_inputs(rows, width, seed=5)
    path = export_saved_model(model, str(tmp_path / "m"), warmup_inputs={k: v[:2] for k, v in inputs.items()})
    default = tf.saved_model.load(path).signatures["serving_default"]
    specs = default.structured_input_signature[1]
    one_history = {name: np.repeat(value[:1], rows, axis=0) if name.startswith("hist_") else value
                   for name, value in inputs.items()}
    one_changed = {name: value.copy() for name, value in one_history.items()}
    one_changed["hist_item_id"][-1, 0] = (one_changed["hist_item_id"][-1, 0] % 59) + 1
    requests = {layout: {name: tf.constant(value, specs[name].dtype) for name, value in feed.items()}
                for layout, feed in (("one history", one_history), ("one row changed", one_changed))}
    in_process = tf.function(lambda features: model(features, training=False))
    paths = {"serving_default": lambda request: default(**request)["prediction"], "in process": in_process}
    best = {(path, layout): float("inf") for path in paths for layout in requests}
    for _ in range(7):  # interleaved, the fastest of each: robust to a busy machine
        for (path, layout) in best:
            started = time.perf_counter()
            paths[path](requests[layout]).numpy()
            best[path, layout] = min(best[path, layout], time.perf_counter() - started)
    for path in paths:
        assert best[path, "one history"] < 0.5 * best[path, "one row changed"], best
    row_by_row = tf.keras.Model(model.inputs, model.outputs)  # the same layers, row by row
    for layout, feed in (("one history", one_history), ("one row changed", one_changed)):
        expected = row_by_row(feed, training=False).numpy()
        np.testing.assert_allclose(default(**requests[layout])["prediction"].numpy(), expected.ravel(), atol=1e-5)
        np.testing.assert_allclose(in_process(requests[layout]).numpy(), expected, atol=1e-5)
    # Fewer history rows than candidates is not one shared history: the model rejects it.
    with pytest.raises(tf.errors.InvalidArgumentError):
        default(**{name: value[:rows // 2] if name.startswith("hist_") else value
                   for name, value in requests["one history"].items()})


# --- Trained on planted long histories: the long-term signal lies beyond the last 50 events. ---

LONG_MAXLEN = 2000


@pytest.fixture(scope="module")
def long_history():
    train, test = make_long_history_setting("longterm", seed=0)
    return SimpleNamespace(train=train, test=test, oracle=oracle_auc(test.click.to_numpy(), test.p_click.to_numpy()))


def long_history_rows(data, maxlen):
    """Columns keeping the last `maxlen` events, and the train and test frames' rows as tensors.

    Reading 12,800 histories of up to 2,000 events into arrays, looking them up and copying them
    into tensors takes seconds, so models on the same columns share them (`df_to_dataset` is
    `batched_rows` of `dataset_elements`, batch for batch)."""
    columns = long_history_feature_columns((data.train, data.test), maxlen)

    def rows(frame, labels=None):
        return tf.nest.map_structure(tf.convert_to_tensor, dataset_elements(frame, columns, labels))

    return SimpleNamespace(columns=columns, train=rows(data.train, "click"), test=rows(data.test))


def train_and_score(data, build, rows, epochs=3):
    tf.keras.utils.set_random_seed(0)
    model = build(rows.columns)
    model.compile(tf.keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(batched_rows(rows.train, len(data.train), batch_size=256, seed=0), epochs=epochs, verbose=0)
    scores = model.predict(batched_rows(rows.test, len(data.test), batch_size=1024, shuffle=False), verbose=0).ravel()
    return SimpleNamespace(model=model, columns=rows.columns, auc=auc(data.test.click.to_numpy(), scores))


@pytest.fixture(scope="module")
def trained(long_history):
    def sim(search):
        return lambda columns: SIM(columns, HISTORY, search=search, topk=50, short_maxlen=50,
                                   time_feature="timestamp", **SMALL)

    long_rows = long_history_rows(long_history, LONG_MAXLEN)
    models = {search: train_and_score(long_history, sim(search), long_rows) for search in ("hard", "soft", "simhash")}
    no_time = lambda columns: [c for c in columns if "timestamp" not in c.name]  # noqa: E731
    models["din50"] = train_and_score(long_history, lambda c: DIN(no_time(c), HISTORY, **SMALL),
                                      long_history_rows(long_history, 50))
    print(f"\nlong-history test AUC, oracle {long_history.oracle:.4f}: " + ", ".join(
        f"{name} {run.auc:.4f} ({run.auc / long_history.oracle:.3f})" for name, run in models.items()))
    return models


@pytest.mark.parametrize("search", ["hard", "soft", "simhash"])
def test_sim_reaches_90_percent_of_the_oracle_and_beats_din_on_the_last_50_events(long_history, trained, search):
    ratio, din_ratio = trained[search].auc / long_history.oracle, trained["din50"].auc / long_history.oracle
    assert ratio >= 0.90
    assert ratio - din_ratio >= 0.15


def test_sim_scores_a_long_history_only_through_its_searches(trained, long_history):
    """Events older than the window DIN sees change SIM's score, and padding never does."""
    run = trained["hard"]
    inputs = df_to_inputs(long_history.test.head(32), run.columns)
    base = run.model.predict(inputs, verbose=0)
    padded = {k: (np.pad(v, ((0, 0), (0, 7))) if k.startswith("hist_") else v) for k, v in inputs.items()}
    np.testing.assert_allclose(run.model.predict(padded, verbose=0), base, atol=1e-6)
    recent_only = dict(inputs)
    for name in ("hist_item_id", "hist_cate_id", "hist_timestamp"):
        kept = inputs[name].copy()
        for row, length in enumerate(inputs["seq_length"]):
            kept[row, :max(int(length) - 50, 0)] = 0
        recent_only[name] = kept
    assert not np.allclose(run.model.predict(recent_only, verbose=0), base, atol=1e-4)


@pytest.fixture(scope="module")
def simhash_export(trained, long_history, tmp_path_factory):
    from exporters import export_saved_model

    run = trained["simhash"]
    base = tmp_path_factory.mktemp("sim_exports") / "sim"
    path = export_saved_model(run.model, str(base), warmup_inputs=df_to_inputs(long_history.test.head(2), run.columns),
                              model_name="sim")
    return SimpleNamespace(base=str(base), path=path, run=run)


def test_saved_model_and_h5_round_trip(trained, long_history, tmp_path):
    run = trained["simhash"]
    inputs = df_to_inputs(long_history.test.head(64), run.columns)
    before = run.model.predict(inputs, verbose=0)
    run.model.save(tmp_path / "sim")
    run.model.save(tmp_path / "sim.h5")
    for loaded in (tf.keras.models.load_model(tmp_path / "sim"),
                   tf.keras.models.load_model(tmp_path / "sim.h5", custom_objects=tfrec.layers.custom_objects)):
        np.testing.assert_allclose(loaded.predict(inputs, verbose=0), before, atol=1e-6)


def test_export_passes_saved_model_cli_and_serves_equal_to_in_process(simhash_export, long_history):
    from serving import Client, LocalServer, ServingError

    shown = run_saved_model_cli("show", "--all", "--dir", simhash_export.path)
    assert shown.returncode == 0, shown.stderr
    for name in ("hist_item_id", "hist_timestamp", "timestamp", "prediction"):
        assert f"['{name}']" in shown.stdout
    inputs = df_to_inputs(long_history.test.head(100), simhash_export.run.columns)
    in_process = simhash_export.run.model.predict(inputs, verbose=0).ravel()
    # One user's impressions: the history once, through the shared_history signature.
    user = long_history.test[long_history.test.user_id == long_history.test.user_id.iloc[0]]
    one_user = df_to_inputs(user, simhash_export.run.columns)
    one_user_in_process = simhash_export.run.model.predict(one_user, verbose=0).ravel()
    history = ("hist_item_id", "hist_cate_id", "hist_timestamp", "seq_length")
    assert all(np.all(one_user[name] == one_user[name][:1]) for name in history)
    with LocalServer(model_base_path=simhash_export.base, model_name="sim") as server, \
            Client(server.grpc_target) as client:
        served = client.predict("sim", inputs)
        shared = {name: value[:1] if name in history else value for name, value in one_user.items()}
        served_shared = client.predict("sim", shared, signature_name="shared_history")
        # Candidates of other row counts: the batch check names them (not a graph's ConcatOp).
        with pytest.raises(ServingError, match=r"must have the same batch size .*; item_id: 1$"):
            client.predict("sim", {**shared, "item_id": shared["item_id"][:1]}, signature_name="shared_history")
    np.testing.assert_allclose(served["prediction"], in_process, atol=1e-5)
    assert len(user) > 1
    np.testing.assert_allclose(served_shared["prediction"], one_user_in_process, atol=1e-5)


def _simhash_sim_and_its_stale_rows(width=8):
    """A compiled SIM(search="simhash") and a function counting the rows whose stored signatures
    differ from those of the tables' current rows."""
    tf.keras.utils.set_random_seed(0)
    model = SIM(random_columns(width), HISTORY, search="simhash", topk=2, short_maxlen=2, num_heads=1,
                simhash_bits=8, **SMALL)
    model.compile(tf.keras.optimizers.Adam(0.1), "binary_crossentropy")
    search = next(layer for layer in model._flatten_layers() if isinstance(layer, SimHashSearch))

    def stale_rows():
        return sum(int(np.any(signatures.numpy() != search.signature(model.get_layer(name).embeddings, table).numpy(),
                              axis=-1).sum()) for table, (signatures, name) in enumerate(zip(search.signatures,
                                                                                            search.tables)))

    return model, stale_rows


def test_simhash_signatures_are_fresh_for_validation_and_for_callbacks_at_each_epoch_end():
    """Training moves the tables after the signatures of their rows are written: fit's validation
    and a callback saving the model at an epoch's end (ModelCheckpoint) read them refreshed."""
    width = 8
    model, stale_rows = _simhash_sim_and_its_stale_rows(width)
    rng = np.random.default_rng(0)
    x, validation_x = random_inputs(128, width), random_inputs(64, width, seed=1)
    y, validation_y = rng.integers(0, 2, 128).astype(np.float32), rng.integers(0, 2, 64).astype(np.float32)
    stale = {"validation": [], "epoch end": []}
    model.fit(x, y, batch_size=32, epochs=2, validation_data=(validation_x, validation_y), verbose=0,
              callbacks=[tf.keras.callbacks.LambdaCallback(
                  on_test_begin=lambda logs: stale["validation"].append(stale_rows()),
                  on_epoch_end=lambda epoch, logs: stale["epoch end"].append(stale_rows()))])
    assert stale == {"validation": [0, 0], "epoch end": [0, 0]}


def test_simhash_signatures_are_fresh_at_each_epoch_end_for_a_callback_list_too():
    # Keras' fit runs a CallbackList as given, without the list fit adds the refresh to: its callbacks
    # read the signatures of the rows as they were before the epoch (no validation refreshed them).
    width = 8
    model, stale_rows = _simhash_sim_and_its_stale_rows(width)
    stale = []
    callbacks = tf.keras.callbacks.CallbackList(
        [tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: stale.append(stale_rows()))], model=model)
    labels = np.random.default_rng(0).integers(0, 2, 128).astype(np.float32)
    model.fit(random_inputs(128, width), labels, batch_size=32, epochs=2, verbose=0, callbacks=callbacks)
    assert stale == [0, 0]
    assert [type(callback) for callback in callbacks.callbacks] == [tf.keras.callbacks.LambdaCallback]  # as given


def test_auxiliary_soft_search_trains_its_own_embeddings_with_a_second_head():
    width = 40
    model = SIM(random_columns(width), HISTORY, search="soft", soft_search_embedding="auxiliary", topk=5,
                short_maxlen=4, time_feature="timestamp", **SMALL)
    assert model.output_names == ["prediction", "gsu_prediction"]
    gsu_tables = [model.get_layer(f"gsu_emb_{name}") for name in HISTORY]
    before = [table.embeddings.numpy().copy() for table in gsu_tables]
    inputs = random_inputs(64, width)
    labels = np.random.default_rng(0).integers(0, 2, 64).astype(np.float32)
    model.compile("adam", "binary_crossentropy")
    model.fit(inputs, {"prediction": labels, "gsu_prediction": labels}, batch_size=32, epochs=1, verbose=0)
    for table, old in zip(gsu_tables, before):
        assert not np.allclose(table.embeddings.numpy(), old)


def test_relevance_pooling_is_the_relevance_weighted_mean_of_real_events():
    rng = np.random.default_rng(4)
    query, keys = rng.normal(size=(3, 1, 4)), rng.normal(size=(3, 6, 4))
    mask = np.array([[True] * 6, [True] * 2 + [False] * 4, [False] * 6])
    pooled = tfrec.layers.RelevancePooling()(tf.constant(query, tf.float32), tf.constant(keys, tf.float32),
                                             tf.constant(mask)).numpy()
    for row in range(3):
        real = keys[row][mask[row]]
        expected = (real @ query[row, 0])[:, None] * real
        expected = expected.sum(axis=0) / max(len(real), 1)
        np.testing.assert_allclose(pooled[row, 0], expected, rtol=1e-5, atol=1e-6)
