"""Retrieval: the ScaNN export against brute force, and tfrec's MIND / SDM / YoutubeDNN against DeepMatch 0.3.2.

    python -m benchmarks.bench_retrieval                   # every part, full sizes
    python -m benchmarks.bench_retrieval --part scann      # one part: scann | scann_settings | deepmatch | movielens
    python -m benchmarks.bench_retrieval --quick           # small sizes (a smoke test), with or without --part
    python -m benchmarks.bench_retrieval --part movielens --seeds 3  # each training contender with 3 model seeds

Writes the "retrieval" section of BENCHMARKS.md; each part rewrites only its own block inside it
("retrieval_scann", "retrieval_scann_settings", "retrieval_deepmatch", "retrieval_movielens") with the command, date and commit that produced it.

* scann: N random unit vectors (d = 64, a mixture of Gaussian clusters, fixed seed) as the
  candidates, queries from the same distribution; recall@100 against exact search, queries/s
  batched (100 queries per call) and the p50 latency of one query, for (a) scann's own pybind
  searcher built with the settings `exporters.export_retrieval` uses by default, (b) numpy brute
  force, (c) the two SavedModels `export_retrieval` writes (the ScaNN index and its brute-force
  twin), loaded with `tf.saved_model.load` and called through `serving_default`. The exports
  come from `export_retrieval` itself, on a two-tower model whose user tower is the identity on
  a 64-d query and whose item tower is an embedding table holding the N vectors, so the index
  is built by the exporter's own code. Also the index build time, the size on disk of each
  export, and the resident memory a fresh process gains by loading each one.
* deepmatch: tfrec's and DeepMatch 0.3.2's YoutubeDNN, MIND and SDM trained on the same planted
  retrieval samples with the same config; recall@50 by exact numpy search over the whole
  catalogue with each model's own user and item vectors, and training examples/s. DeepMatch
  runs in graph mode (`tf.compat.v1.disable_eager_execution()`), in its own process. Two
  tfrec-only MIND rows (its own defaults; k_max 1) show what the second interest adds, and the
  references include what perfect routing of each test history would reach
  (`history_interest_recalls`).
* movielens: the same contenders, config and recall on real data, MovieLens in GroupLens'
  format (`--data`, default data/ml-100k; `python -m benchmarks.movielens_100k` writes it on a
  machine without access to grouplens.org) through `tfrec.datasets.load_movielens_retrieval`,
  DeepMatch's own MovieLens example; with the popularity baseline.

`--seeds N` (parts deepmatch and movielens) trains every contender N times, run i with
`set_random_seed(seed + i)` and model seed 1024 + i (1024 is both libraries' default, so run 0
is the one-seed run); the recall column is then the mean, and every run's recall is listed
under the table. The speed columns are run 0's.

Every configuration runs in its own Python process (`common.run_child`). Needs `pip install
--no-deps deepmatch==0.3.2 deepctr==0.9.4` for the deepmatch part (benchmarks only).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from benchmarks.bench_din import EpochTimer  # noqa: E402
from benchmarks.bench_long_sequence import current_rss_mib, timed  # noqa: E402

SECTION = "retrieval"
PARTS = ("scann", "scann_settings", "deepmatch", "movielens")
MODULE = "benchmarks.bench_retrieval"
INTRO = ("## Retrieval: ScaNN and DeepMatch\n\nWritten by `benchmarks/bench_retrieval.py`; each part below is "
         "rewritten on its own (`--part scann|scann_settings|deepmatch|movielens`) and names the run that produced it.")

# --- part "scann" ---------------------------------------------------------------------------------
DIM, K, BATCH = 64, 100, 100
SPREAD = 1.0  # within-cluster noise relative to the unit cluster centre (a point's cosine to it ~0.7)
SCANN_SIZES = {
    "full": dict(candidates=1_000_000, queries=1_000, points_per_cluster=1_000,
                 batched=dict(warmup=1, min_reps=10, max_reps=200, budget_s=20.0),
                 single=dict(warmup=5, min_reps=50, max_reps=2_000, budget_s=15.0)),
    "quick": dict(candidates=50_000, queries=200, points_per_cluster=500,
                  batched=dict(warmup=1, min_reps=2, max_reps=20, budget_s=2.0),
                  single=dict(warmup=2, min_reps=10, max_reps=200, budget_s=1.0)),
}
TARGET_SPEEDUP, TARGET_RECALL = 20.0, 0.95
# The ScaNN export and its brute-force twin loaded in one process and called in turn (child
# "turns"): a round is one brute-force call and as many ScaNN calls as take about as long.
TURNS = {"full": dict(processes=5, rounds=15, scann_calls=20), "quick": dict(processes=2, rounds=3, scann_calls=5)}
# The ScaNN exports: export_retrieval's ScaNN options of each. "scann_fast" searches fewer leaves and
# rescores fewer points (a scratch sweep with scann's pybind searcher over the same data: recall@100
# 0.973 at 1.8x the default's speed; 8 leaves and 200 points fell to 0.939).
SCANN_EXPORTS = {"scann": {}, "scann_int8": {"reordering_dtype": "int8"},
                 "scann_fast": {"num_leaves_to_search": 10, "num_reordering_candidates": 256}}
EXPORTS = (*SCANN_EXPORTS, "brute_force")
EXPORT_NAMES = {"scann": "ScaNN export (`export_retrieval`, index=\"scann\")",
                "scann_int8": "ScaNN export, `reordering_dtype=\"int8\"`",
                "scann_fast": "ScaNN export, `num_leaves_to_search=10, num_reordering_candidates=256`",
                "brute_force": "brute-force export (its `_brute_force` twin)"}

# --- part "scann_settings": the default ScaNN settings against faster ones, on part scann's data
# and on data whose clusters are larger than a partition ------------------------------------------
SETTINGS_DATA = {  # points per cluster, the rest of the data as in part scann
    "full": {"part scann's data: 1,000 clusters of 1,000": 1_000, "50 clusters of 20,000": 20_000},
    "quick": {"100 clusters of 500": 500, "5 clusters of 10,000": 10_000},
}
SETTINGS_QUERIES = {"full": 500, "quick": 100}
SETTINGS_TIMING = dict(warmup=1, min_reps=10, max_reps=100, budget_s=4.0)

# --- part "deepmatch" -----------------------------------------------------------------------------
MODELS = ("youtubednn", "mind", "sdm")
MODEL_NAMES = {"youtubednn": "YoutubeDNN", "mind": "MIND", "sdm": "SDM"}
# tfrec-only MIND rows next to the DeepMatch-config one: MIND(columns) with its own defaults, and
# the same config with one interest (what the second interest adds).
MIND_VARIANTS = {"mind_defaults": ("MIND, tfrec's defaults (k_max 2, p 100, no dynamic_k, temperature 1)", None),
                 "mind_k1": ("MIND, k_max 1 (the DeepMatch config with one interest)", dict(k_max=1))}
IMPLS = ("tfrec", "deepmatch")
HISTORY = ["item_id", "cate_id"]
CONFIG = dict(embedding_dim=32, profile_embedding_dim=8, seq_maxlen=30, short_sess_length=5, batch_size=256,
              learning_rate=3e-3, user_dnn_hidden_units=(64, 32), temperature=0.1, k_max=2, p=100, dynamic_k=True,
              recall_k=50, seed=0)
MODEL_SEED = 1024  # both libraries' default seed of YoutubeDNN, MIND and SDM (their initialisers)
DEEPMATCH_SIZES = {
    "full": dict(users=2_000, items=2_000, events=50, epochs=6),
    "quick": dict(users=300, items=300, events=20, epochs=1),
}
# --- part "movielens": the same contenders on real data (`--data`, GroupLens' format) -----------
MOVIELENS_DATA = os.path.join(common.ROOT, "data", "ml-100k")
MOVIELENS_EPOCHS = {"full": 6, "quick": 1}


# --- children: ScaNN ------------------------------------------------------------------------------

def clustered_vectors(size):
    """(candidates (n, 64), queries (m, 64)): unit vectors around random unit cluster centres, fixed seed."""
    import numpy as np

    rng = np.random.default_rng(20240601)
    n, m = size["candidates"], size["queries"]
    centres = rng.normal(size=(max(1, n // size["points_per_cluster"]), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(count):
        points = centres[rng.integers(0, len(centres), count)] + SPREAD * rng.normal(size=(count, DIM)) / np.sqrt(DIM)
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(m)


def query_batches(queries):
    return [queries[i:i + BATCH] for i in range(0, len(queries), BATCH)]


def cycling(calls):
    """A no-argument function that runs the next of `calls` each time (round robin)."""
    state = {"i": 0}

    def run():
        call = calls[state["i"] % len(calls)]
        state["i"] += 1
        return call()
    return run


def search_report(search_batch, search_one, queries, exact, size, single=True):
    """recall@100 against `exact`, batched QPS and single-query latency of one searcher.

    `search_batch(q)` -> (len(q), >= 100) ids for a (b, 64) float32 batch; `search_one(q)` the
    same for one (64,) query. QPS = 100 / the median time of one 100-query call.
    """
    import numpy as np
    from tfrec.metrics import index_recall

    batches = query_batches(queries)
    found = np.concatenate([np.asarray(search_batch(batch))[:, :K] for batch in batches])
    batched = timed(cycling([lambda b=b: search_batch(b) for b in batches]), size["batched"])
    single = timed(cycling([lambda q=q: search_one(q) for q in queries]), size["single"]) if single else None
    return dict(recall=index_recall(found, exact, K), batch_ms=batched, single_ms=single,
                qps=1000.0 * BATCH / batched["p50_ms"], queries=len(queries))


def numpy_top_k(queries, vectors):
    """Brute force as a numpy user writes it: one matmul, argpartition, sort of the k."""
    import numpy as np

    scores = queries @ vectors.T
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def exact_top_k(queries, vectors):
    """The exact top-100 ids of every query (tfrec.metrics.top_k_indices, ties to the lower id), 20 queries at a time."""
    import numpy as np
    from tfrec.metrics import top_k_indices

    return np.concatenate([top_k_indices(queries[i:i + 20] @ vectors.T, K) for i in range(0, len(queries), 20)])


def child_truth(size_name, workdir):
    """Exact top-100 ids of every query (`exact_top_k`), then numpy brute force."""
    import numpy as np

    size = SCANN_SIZES[size_name]
    vectors, queries = clustered_vectors(size)
    started = time.perf_counter()
    exact = exact_top_k(queries, vectors)
    exact_s = time.perf_counter() - started
    np.save(os.path.join(workdir, "exact.npy"), exact)
    np.save(os.path.join(workdir, "queries.npy"), queries)
    report = search_report(lambda q: numpy_top_k(q, vectors), lambda q: numpy_top_k(q[None], vectors),
                           queries, exact, size)
    report.update(impl="numpy", exact_s=exact_s, candidates=len(vectors), peak_rss_mib=common.peak_rss_mib())
    common.emit(report)


# Parallel search: each core takes its share of a 100-query call (pybind's default sub-batch of 256
# queries would keep such a call on one thread).
PER_THREAD = -(-BATCH // (os.cpu_count() or 1))


def pybind_searcher(vectors, config):
    """scann's pybind searcher built with `config` (`exporters.retrieval._scann_config`'s keys)."""
    import scann

    builder = scann.scann_ops_pybind.builder(vectors, K, "dot_product")
    if config["num_leaves"] > 1:
        builder = builder.tree(num_leaves=config["num_leaves"], num_leaves_to_search=config["num_leaves_to_search"],
                               training_sample_size=config["training_sample_size"],
                               training_iterations=config["training_iterations"])
    builder = builder.score_ah(config["dimensions_per_block"],
                               anisotropic_quantization_threshold=config["anisotropic_quantization_threshold"],
                               training_sample_size=config["training_sample_size"], hash_type=config["hash_type"])
    builder = builder.reorder(config["num_reordering_candidates"]).set_n_training_threads(config["training_threads"])
    return builder.build()


def child_pybind(size_name, workdir):
    """scann's pybind searcher, built with export_retrieval's default ScaNN settings."""
    import numpy as np
    from exporters.retrieval import _scann_config

    size = SCANN_SIZES[size_name]
    vectors, queries = clustered_vectors(size)
    exact = np.load(os.path.join(workdir, "exact.npy"))
    config = _scann_config(len(vectors), K, {})
    started = time.perf_counter()
    searcher = pybind_searcher(vectors, config)
    build_s = time.perf_counter() - started
    per_thread = PER_THREAD
    report = search_report(lambda q: searcher.search_batched(q)[0], lambda q: searcher.search(q)[0][None],
                           queries, exact, size)
    report["parallel"] = search_report(lambda q: searcher.search_batched_parallel(q, batch_size=per_thread)[0],
                                       None, queries, exact, size, single=False)
    report.update(impl="pybind", build_s=build_s, config=config, per_thread=per_thread,
                  peak_rss_mib=common.peak_rss_mib())
    common.emit(report)


def scann_settings(default):
    """(name, export_retrieval ScaNN options): the default, fewer and more leaves searched, coarser hashing."""
    leaves = default["num_leaves_to_search"]
    return [("default", {}), ("10 leaves searched", {"num_leaves_to_search": min(10, leaves)}),
            (f"{2 * leaves} leaves searched", {"num_leaves_to_search": min(2 * leaves, default["num_leaves"])}),
            ("3 dimensions per block", {"dimensions_per_block": 3}),
            ("4 dimensions per block", {"dimensions_per_block": 4})]


def child_settings(size_name):
    """Recall@100 and batched QPS of scann's pybind searcher at each of `scann_settings`, on each of
    SETTINGS_DATA (the number of leaves searched is a search-time argument of one built searcher)."""
    from exporters.retrieval import _scann_config

    results = []
    for data_name, points in SETTINGS_DATA[size_name].items():
        size = dict(SCANN_SIZES[size_name], queries=SETTINGS_QUERIES[size_name], points_per_cluster=points,
                    batched=SETTINGS_TIMING)
        vectors, queries = clustered_vectors(size)
        exact = exact_top_k(queries, vectors)
        default = _scann_config(len(vectors), K, {})
        searchers, rows = {}, []
        for name, options in scann_settings(default):
            config = _scann_config(len(vectors), K, options)
            blocks = config["dimensions_per_block"]
            if blocks not in searchers:
                searchers[blocks] = pybind_searcher(vectors, config)
            searcher, leaves = searchers[blocks], config["num_leaves_to_search"]
            report = search_report(lambda q, searcher=searcher, leaves=leaves: searcher.search_batched_parallel(
                q, leaves_to_search=leaves, batch_size=PER_THREAD)[0], None, queries, exact, size, single=False)
            rows.append(dict(name=name, leaves=leaves, blocks=blocks, recall=report["recall"], qps=report["qps"],
                             batch_ms=report["batch_ms"]))
        results.append(dict(data=data_name, rows=rows))
    common.emit(dict(results=results, default=_scann_config(SCANN_SIZES[size_name]["candidates"], K, {})))


def identity_two_tower(vectors):
    """What export_retrieval needs of a two-tower model: user tower = the identity on a 64-d
    "query", item tower = an embedding table whose row i is candidate i (item_id i)."""
    from types import SimpleNamespace

    import tensorflow as tf

    query = tf.keras.Input((DIM,), name="query", dtype=tf.float32)
    user_tower = tf.keras.Model(query, tf.keras.layers.Activation("linear", name="user_embedding")(query),
                                name="identity_user_tower")
    item_id = tf.keras.Input((1,), name="item_id", dtype=tf.int64)
    table = tf.keras.layers.Embedding(len(vectors), DIM, name="item_table")
    item_tower = tf.keras.Model(item_id, tf.keras.layers.Flatten(name="item_embedding")(table(item_id)),
                                name="identity_item_tower")
    table.set_weights([vectors])
    return SimpleNamespace(user_tower=user_tower, item_tower=item_tower, item_input=item_id, name="identity",
                           submodules=user_tower.submodules + item_tower.submodules)


def directory_mib(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path)
               for name in names) / 2**20


def child_export(size_name, workdir):
    """export_retrieval of the identity model: the ScaNN SavedModels (one per SCANN_EXPORTS entry) and the
    default one's brute-force twin."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import pandas as pd
    from exporters import retrieval

    size = SCANN_SIZES[size_name]
    vectors, queries = clustered_vectors(size)
    model = identity_two_tower(vectors)
    # Time the index build inside export_retrieval (its own _ScannIndex, unchanged).
    build = {}
    original = retrieval._ScannIndex.__init__

    def timed_init(self, *args, **kwargs):
        started = time.perf_counter()
        original(self, *args, **kwargs)
        build["s"] = time.perf_counter() - started
    retrieval._ScannIndex.__init__ = timed_init
    candidates = pd.DataFrame({"item_id": np.arange(len(vectors), dtype=np.int64)})
    exports, export_s, build_s = {}, {}, {}
    for kind, options in SCANN_EXPORTS.items():
        started = time.perf_counter()
        exports[kind] = retrieval.export_retrieval(model, os.path.join(workdir, "exports", kind), candidates, k=K,
                                                   warmup_inputs={"query": queries[:3]}, **options)
        export_s[kind], build_s[kind] = time.perf_counter() - started, build.pop("s", None)
    retrieval._ScannIndex.__init__ = original
    export = exports["scann"]
    common.emit(dict(index=export.index,
                     paths={**{kind: e.path for kind, e in exports.items()}, "brute_force": export.brute_force_path},
                     export_s=export_s["scann"], index_build_s=build_s, scann_config=export.scann_config,
                     mib={**{kind: directory_mib(e.path) for kind, e in exports.items()},
                          "brute_force": directory_mib(export.brute_force_path),
                          "user_tower": directory_mib(export.user_tower_path),
                          "item_embeddings": directory_mib(export.item_embeddings_path)},
                     peak_rss_mib=common.peak_rss_mib()))


def child_load(kind, path, size_name, workdir):
    """A fresh process: load one export, its RSS delta, then recall, QPS and latency through serving_default."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    from scann.scann_ops.py import scann_ops  # noqa: F401  (registers the Scann ops; imported for both kinds)

    size = SCANN_SIZES[size_name]
    # Not clustered_vectors(): memory the candidates freed could be reused by the load and hide its cost.
    queries, exact = (np.load(os.path.join(workdir, f"{name}.npy")) for name in ("queries", "exact"))
    before = current_rss_mib()
    started = time.perf_counter()
    signature = tf.saved_model.load(path).signatures["serving_default"]
    load_s = time.perf_counter() - started
    loaded = current_rss_mib()
    started = time.perf_counter()
    signature(query=tf.constant(queries[:1]))  # the ScaNN searcher is recreated on the first call
    first_call_s = time.perf_counter() - started
    after_first = current_rss_mib()

    def search(q):
        return signature(query=tf.constant(q))["item_ids"].numpy()

    report = search_report(search, lambda q: search(q[None]), queries, exact, size)
    report.update(impl=kind, load_s=load_s, first_call_s=first_call_s, rss_before_mib=before,
                  load_mib=loaded - before, first_call_mib=after_first - before, rss_end_mib=current_rss_mib(),
                  peak_rss_mib=common.peak_rss_mib())
    common.emit(report)


def child_turns(scann_path, brute_path, size_name, workdir):
    """Both exports loaded in this one process, then `common.per_call_ms`: ms per 100-query call of
    each, the fastest of TURNS rounds in which they take turns (the same background for both)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    from scann.scann_ops.py import scann_ops  # noqa: F401  (registers the Scann ops)

    turns = TURNS[size_name]
    batches = [tf.constant(batch) for batch in query_batches(np.load(os.path.join(workdir, "queries.npy")))]
    calls = {}
    for kind, path, per_round in (("scann", scann_path, turns["scann_calls"]), ("brute_force", brute_path, 1)):
        signature = tf.saved_model.load(path).signatures["serving_default"]
        search = cycling([lambda b=b, signature=signature: signature(query=b)["item_ids"].numpy() for b in batches])

        def searches(search=search, count=per_round):
            for _ in range(count):
                search()
        calls[kind] = (searches, per_round)
    common.emit(dict(ms=common.per_call_ms(calls, 1, turns["rounds"]), rounds=turns["rounds"],
                     scann_calls=turns["scann_calls"]))


# --- children: DeepMatch --------------------------------------------------------------------------

def retrieval_world(size_name):
    """The planted data, its samples (hist_*, short_* and prefer_* columns) and the in-batch counts."""
    import numpy as np
    from tfrec.data.retrieval import make_retrieval_data, retrieval_samples

    size = DEEPMATCH_SIZES[size_name]
    data = make_retrieval_data(num_users=size["users"], num_items=size["items"], events_per_user=size["events"],
                               seed=CONFIG["seed"])
    train, test = retrieval_samples(data, CONFIG["seq_maxlen"], short_sess_length=CONFIG["short_sess_length"])
    vocabulary = int(data.items["item_id"].max()) + 1
    counts = np.bincount(train["item_id"].to_numpy(), minlength=vocabulary).astype(float)
    return data, train, test, counts


def model_columns(model_name, data):
    from tfrec.data.retrieval import retrieval_feature_columns, sdm_feature_columns

    dims = dict(embedding_dim=CONFIG["embedding_dim"], profile_embedding_dim=CONFIG["profile_embedding_dim"])
    if model_name == "sdm":
        return sdm_feature_columns(data, CONFIG["short_sess_length"], CONFIG["seq_maxlen"], **dims)
    return retrieval_feature_columns(data, CONFIG["seq_maxlen"], **dims)


def training_world(model_name, size_name, data_path=None):
    """(train, test, user columns, item columns, catalogue item ids, in-batch counts, epochs) of one model.

    Planted data (`retrieval_world`), or with `data_path` MovieLens in GroupLens' format through
    `tfrec.datasets.load_movielens_retrieval` (DeepMatch's MovieLens example: SDM's columns for
    SDM, YoutubeDNN / MIND's for the others), with the same lengths and embedding sizes.
    """
    import numpy as np

    if data_path is None:
        data, train, test, counts = retrieval_world(size_name)
        return (train, test, *model_columns(model_name, data), data.item_ids, counts,
                DEEPMATCH_SIZES[size_name]["epochs"])
    from tfrec.datasets import load_movielens_retrieval

    ds = load_movielens_retrieval(data_path, seq_maxlen=CONFIG["seq_maxlen"],
                                  short_sess_length=CONFIG["short_sess_length"] if model_name == "sdm" else None,
                                  embedding_dim=CONFIG["embedding_dim"],
                                  profile_embedding_dim=CONFIG["profile_embedding_dim"])
    vocabulary = ds.item_feature_columns[0].vocabulary_size
    counts = np.bincount(ds.train["item_id"].to_numpy(), minlength=vocabulary).astype(float)
    item_ids = np.unique(np.concatenate([ds.train["item_id"].to_numpy(), ds.test["item_id"].to_numpy(),
                                         np.concatenate(ds.train["hist_item_id"].to_numpy())]))
    return (ds.train, ds.test, ds.user_feature_columns, ds.item_feature_columns, item_ids, counts,
            MOVIELENS_EPOCHS[size_name])


def deepmatch_columns(columns):
    """The same columns as DeepCTR's namedtuples (what DeepMatch reads)."""
    from deepctr import feature_column as dc
    from feature_columns import SparseFeat

    def sparse(c):
        return dc.SparseFeat(c.name, c.vocabulary_size, c.embedding_dim, dtype=c.dtype, embedding_name=c.embedding_name)

    return [sparse(c) if isinstance(c, SparseFeat) else
            dc.VarLenSparseFeat(sparse(c.sparsefeat), c.maxlen, c.combiner, c.length_name) for c in columns]


def quiet_version_checks():
    """deepmatch / deepctr ask PyPI for their latest version in a thread when imported: answer
    it here, without the network (a non-200 status, which they skip silently)."""
    from types import SimpleNamespace

    import requests
    requests.get = lambda *args, **kwargs: SimpleNamespace(status_code=599)


def build_model(impl, model_name, user_columns, item_columns, counts, seed=MODEL_SEED):
    """The model (compiled) of one implementation, with the same config on both sides."""
    import tensorflow as tf

    hidden, temperature = CONFIG["user_dnn_hidden_units"], CONFIG["temperature"]
    if impl == "tfrec":
        from tfrec.models import MIND, SDM, YoutubeDNN
        from tfrec.utils import NegativeSampler
        sampler = NegativeSampler("inbatch", 0, "item_id", item_count=counts)
        columns = user_columns, item_columns
        optimizer = tf.keras.optimizers.Adam(CONFIG["learning_rate"])  # tfrec's compile makes it LazyAdam
        loss = {}
    else:
        from deepmatch.models import MIND, SDM, YoutubeDNN
        from deepmatch.utils import NegativeSampler, sampledsoftmaxloss
        sampler = NegativeSampler("inbatch", 0, "item_id", item_count=counts)
        columns = deepmatch_columns(user_columns), deepmatch_columns(item_columns)
        optimizer = tf.keras.optimizers.legacy.Adam(CONFIG["learning_rate"])  # graph mode takes only the legacy ones
        loss = dict(loss=sampledsoftmaxloss)
    if model_name == "youtubednn":
        model = YoutubeDNN(*columns, user_dnn_hidden_units=hidden, temperature=temperature, sampler_config=sampler,
                           seed=seed)
    elif model_name == "mind_defaults":
        model = MIND(*columns, user_dnn_hidden_units=hidden, sampler_config=sampler, seed=seed)
    elif model_name.startswith("mind"):  # DeepMatch's MIND has no temperature: plain dot products (tfrec's default 1.0)
        config = {**dict(k_max=CONFIG["k_max"], p=CONFIG["p"], dynamic_k=CONFIG["dynamic_k"]),
                  **(MIND_VARIANTS[model_name][1] if model_name in MIND_VARIANTS else {})}
        model = MIND(*columns, **config, user_dnn_hidden_units=hidden, sampler_config=sampler, seed=seed)
    else:
        model = SDM(*columns, HISTORY, units=CONFIG["embedding_dim"], temperature=temperature, sampler_config=sampler,
                    seed=seed)
    model.compile(optimizer=optimizer, **loss)
    return model


def input_name(tensor):
    return tensor._keras_history.layer.name


def deepmatch_interest_mask(hist_len, k_max):
    """DeepMatch's dynamic k (adaptive_interest_num): max(1, min(k_max, log2(1 + length))), floored."""
    import numpy as np

    return np.arange(k_max)[None, :] < np.maximum(1, np.minimum(k_max, np.log1p(hist_len) / np.log(2.0))
                                                  ).astype(int)[:, None]


def served_scores(impl, model_name, model, inputs, item_ids):
    """(test rows, items) scores of the served towers: <user, item>, MIND by its best active interest."""
    import numpy as np
    import tensorflow as tf

    if impl == "tfrec":
        user_model, item_model = model.user_tower, model.item_tower
        items = item_model.predict({"item_id": item_ids}, batch_size=4096, verbose=0)
    else:  # DeepMatch's documented way: Model(user_input, user_embedding), Model(item_input, item_embedding)
        user_model = tf.keras.Model(model.user_input, model.user_embedding)
        item_model = tf.keras.Model(model.item_input, model.item_embedding)
        items = item_model.predict({"item_id": item_ids.reshape(-1, 1)}, batch_size=4096, verbose=0)
    users = user_model.predict({input_name(t): inputs[input_name(t)] for t in user_model.inputs}, batch_size=4096,
                               verbose=0)
    if not model_name.startswith("mind"):
        return users @ items.T
    if impl == "tfrec":
        interests, mask = users
        active = mask > 0
    else:
        interests, active = users, deepmatch_interest_mask(inputs["hist_len"].reshape(-1), CONFIG["k_max"])
    scores = np.einsum("bkd,nd->bkn", interests, items)
    return np.where(active[:, :, None], scores, -np.inf).max(axis=1)


def child_train(impl, model_name, size_name, run_index=0, data_path=None):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    if impl == "deepmatch":
        quiet_version_checks()
    import numpy as np
    import feature_columns  # noqa: F401
    import tensorflow as tf
    from tfrec.data import df_to_inputs
    from tfrec.metrics import recall_at_k, top_k_indices

    if impl == "deepmatch":
        tf.compat.v1.disable_eager_execution()  # DeepMatch 0.3.2 builds on TF 2.20 only as a TF1 graph
    train, test, user_columns, item_columns, item_ids, counts, epochs = training_world(model_name, size_name,
                                                                                      data_path)
    columns = user_columns + item_columns
    x_train, x_test = df_to_inputs(train, columns), df_to_inputs(test, columns)
    if impl == "deepmatch":  # DeepCTR's Inputs are (None, 1) for a scalar feature
        x_train, x_test = ({k: v.reshape(-1, 1) if v.ndim == 1 else v for k, v in x.items()} for x in (x_train, x_test))
    run_index = int(run_index)
    tf.keras.utils.set_random_seed(CONFIG["seed"] + run_index)
    report = dict(impl=impl, model=model_name, train_rows=len(train), test_rows=len(test), items=len(item_ids),
                  epochs=epochs, seed=CONFIG["seed"] + run_index, model_seed=MODEL_SEED + run_index)
    try:
        model = build_model(impl, model_name, user_columns, item_columns, counts, MODEL_SEED + run_index)
        report.update(model_class=type(model).__name__, optimizer=type(model.optimizer).__name__,
                      params=int(sum(np.prod(w.shape) for w in model.trainable_weights)))
        if impl == "deepmatch":  # graph variables outside model.trainable_weights: the optimizer never updates them
            tracked = {id(w) for w in model.trainable_weights}
            report["untracked"] = [[v.name, int(np.prod(v.shape))] for v in tf.compat.v1.trainable_variables()
                                   if id(v) not in tracked]
        # Epoch hooks only: a per-batch callback would make tfrec's fit run one batch per Keras
        # call instead of its default 32 (DeepMatch runs one either way).
        timer = EpochTimer()
        started = time.perf_counter()
        history = model.fit(x_train, np.zeros((len(train), 1), np.float32), batch_size=CONFIG["batch_size"],
                            epochs=epochs, verbose=0, callbacks=[timer.callback])
        fit_s = time.perf_counter() - started
        scores = served_scores(impl, model_name, model, x_test, item_ids)
    except Exception as error:  # noqa: BLE001  (the table says why a contender could not run)
        report["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        return common.emit(report)
    top = item_ids[top_k_indices(scores, CONFIG["recall_k"])]
    compiled = sorted(timer.seconds[1:] or timer.seconds)  # after the first epoch every step is compiled
    report.update(fit_s=fit_s, epoch_s=timer.seconds, last_loss=float(history.history["loss"][-1]),
                  examples_per_s=len(train) / compiled[len(compiled) // 2],
                  recall=recall_at_k(test["item_id"].to_numpy(), top, CONFIG["recall_k"]),
                  peak_rss_mib=common.peak_rss_mib())
    common.emit(report)


def history_interest_recalls(data, test):
    """recall@k of two truth-space rankings built from each test row's history, not the user's truth.

    "history_interests": the history's events grouped by the planted interest that drew them
    (the log's `interest` column), one unit mean of their true item vectors per group, items
    scored by log pop_i + sharpness * max over the groups of x_i . mean (what perfect routing of
    the history into interests could give, with the true item space). "history_mean": the same
    with one group (one averaged history vector). Formulas as `planted_top_k`'s "centroid".
    """
    import numpy as np
    import pandas as pd
    from tfrec.metrics import recall_at_k, top_k_indices

    users = data.event_user
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # each user's last event: the test rows
    if not np.array_equal(data.log["timestamp"].to_numpy()[last], test["timestamp"].to_numpy()):
        raise ValueError("the test rows are not each user's last event in log order")
    first = np.r_[0, last[:-1] + 1]
    starts = np.maximum(first, last - CONFIG["seq_maxlen"])  # the history retrieval_samples keeps
    vectors = data.item_vectors
    item_rows = pd.Index(data.item_ids).get_indexer(data.log["item_id"])
    interests = data.log["interest"].to_numpy()
    log_popularity = np.log(data.items["popularity"].to_numpy())
    recalls = {}
    for name in ("history_interests", "history_mean"):
        top = np.empty((len(last), CONFIG["recall_k"]), np.int64)
        for row, (start, end) in enumerate(zip(starts, last)):
            history, groups = vectors[item_rows[start:end]], interests[start:end]
            if name == "history_mean":
                groups = np.zeros_like(groups)
            means = np.stack([history[groups == g].mean(axis=0) for g in np.unique(groups)])
            means /= np.linalg.norm(means, axis=1, keepdims=True)
            scores = data.sharpness * (means @ vectors.T).max(axis=0) + log_popularity
            top[row] = top_k_indices(scores[None], CONFIG["recall_k"])[0]
        recalls[name] = recall_at_k(test["item_id"].to_numpy(), data.item_ids[top], CONFIG["recall_k"])
    return recalls


def child_references(size_name):
    from tfrec.data.retrieval import planted_recalls

    data, train, test, _ = retrieval_world(size_name)
    common.emit(dict(planted_recalls(data, train, test, k=CONFIG["recall_k"]), **history_interest_recalls(data, test),
                     train_rows=len(train), test_rows=len(test), users=data.num_users, items=data.num_items,
                     events=len(data.log)))


def child_movielens_references(size_name, data_path):
    """The MovieLens samples' counts and the popularity baseline: the training set's top-k movies for every user."""
    import numpy as np
    from tfrec.metrics import recall_at_k

    from tfrec.datasets import read_movielens

    log = read_movielens(data_path)
    train, test, *_, item_ids, counts, _ = training_world("youtubednn", size_name, data_path)
    top = np.argsort(-counts, kind="stable")[:CONFIG["recall_k"]]
    common.emit(dict(ratings=len(log), users=int(log["user_id"].nunique()), movies=int(log["item_id"].nunique()),
                     train_rows=len(train), test_rows=len(test), items=len(item_ids),
                     popularity=recall_at_k(test["item_id"].to_numpy(), np.tile(top, (len(test), 1)),
                                            CONFIG["recall_k"])))


# --- parent ---------------------------------------------------------------------------------------

def run(flag, *args):
    """One child; a crash comes back as {"error": ...} so the other configurations still run."""
    print(" ".join(map(str, args)), "...", flush=True)
    started = time.time()
    try:
        report = common.run_child(__file__, *flag, "--child", *args)
    except RuntimeError as error:
        report = dict(error=str(error).strip().splitlines()[-1][:300])
    print(f"  ({time.time() - started:.0f} s) " + json.dumps(report)[:600], flush=True)
    return report


def fmt_ms(entry):
    return f"{entry['p50_ms']:.2f} ({entry['n']})"


def scann_part(size, flag, workdir):
    truth = run(flag, "truth", workdir)
    if "error" in truth:
        return ["### ScaNN against brute force", "", f"The exact search failed: {truth['error']}"]
    pybind = run(flag, "pybind", workdir)
    export = run(flag, "export", workdir)
    loads = {kind: (run(flag, "load", kind, export["paths"][kind], workdir) if "paths" in export
                    else dict(error=export.get("error", "no export")))
             for kind in EXPORTS}
    turns = TURNS["quick" if flag else "full"]
    runs = [run(flag, "turns", export["paths"]["scann"], export["paths"]["brute_force"], workdir)
            for _ in range(turns["processes"])] if "paths" in export else []
    n, m = size["candidates"], size["queries"]
    config = export.get("scann_config") or pybind.get("config") or {}
    lines = [
        "### ScaNN against brute force",
        "",
        f"{n:,} candidates and {m:,} queries, unit vectors of d = {DIM}: {n // size['points_per_cluster']:,} "
        f"random unit cluster centres, each point unit(centre + {SPREAD:g} * N(0, I) / sqrt({DIM})) around a "
        "uniformly drawn centre (fixed seed; queries from the same mixture). Score: dot product; k = "
        f"{K}. Exact top-{K} by `tfrec.metrics.top_k_indices` in numpy ({truth['exact_s']:.0f} s); recall@{K} "
        f"is `tfrec.metrics.index_recall` against it. Batched: calls of {BATCH} queries; QPS = {BATCH} / the "
        "median call time (calls cycling through the queries; the count of timed calls in brackets). Single: "
        "the p50 of one-query calls. The exports are `exporters.export_retrieval(model, ..., k=100)` with its "
        "default ScaNN settings, on a model whose user tower is the identity on a 64-d `query` and whose item "
        "tower is an embedding table holding the candidates (item_id i = row i), so its own code embeds the "
        "candidates and builds both indexes; each export is loaded in a fresh process "
        "(`tf.saved_model.load(path).signatures[\"serving_default\"]`, fed `query` float32 (b, 64)). scann's "
        "pybind searcher is built with the same settings (`exporters.retrieval._scann_config`): "
        + ", ".join(f"{k} {v}" for k, v in config.items()) + ".",
        "",
        f"| searcher | recall@{K} vs exact | batched QPS ({BATCH}/call) | batch p50 ms (calls) "
        "| single query p50 ms (calls) |",
        "|---|---:|---:|---:|---:|",
    ]
    if export.get("index", "scann") != "scann":
        lines[-3:-3] = [f"**`export_retrieval` built a {export['index']} index, not ScaNN** ({n:,} candidates is "
                        "below its min_candidates): both exports below are exact.", ""]
    rows = [("scann pybind (`scann_ops_pybind`, same settings), `search_batched`", pybind)]
    if "parallel" in pybind:
        rows.append((f"scann pybind, `search_batched_parallel(q, batch_size={pybind['per_thread']})` "
                     f"({os.cpu_count()} threads per call)", pybind["parallel"]))
    rows += [("numpy brute force", truth)] + [(EXPORT_NAMES[kind], loads[kind]) for kind in EXPORTS]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | fails: {r['error']} | | | |")
            continue
        lines.append(f"| {name} | {r['recall']:.4f} | {r['qps']:,.0f} | {fmt_ms(r['batch_ms'])} "
                     f"| {fmt_ms(r['single_ms']) if r['single_ms'] else '-'} |")
    scann, brute = loads["scann"], loads["brute_force"]
    if "error" not in scann and "error" not in brute:
        speedup = scann["qps"] / brute["qps"]
        single = brute["single_ms"]["p50_ms"] / scann["single_ms"]["p50_ms"]
        met = speedup >= TARGET_SPEEDUP and scann["recall"] >= TARGET_RECALL
        lines += ["", f"Issue target: QPS(ScaNN export) / QPS(brute-force export) >= {TARGET_SPEEDUP:g}x at "
                  f"recall@{K} >= {TARGET_RECALL}: {speedup:.1f}x at recall {scann['recall']:.4f} "
                  f"({'met' if met else '**not met**'}); one query at a time: {single:.1f}x."]
        for kind in SCANN_EXPORTS:
            if kind != "scann" and "error" not in loads[kind]:
                speedup, recall = loads[kind]["qps"] / brute["qps"], loads[kind]["recall"]
                met = speedup >= TARGET_SPEEDUP and recall >= TARGET_RECALL
                lines[-1] += (f" {EXPORT_NAMES[kind]}: {speedup:.1f}x at recall {recall:.4f} "
                              f"({'met' if met else '**not met**'}).")
        lines += turns_lines(runs, scann["recall"])
    if "error" not in export:
        lines += [
            "",
            "| export | index build (s) | size on disk (MiB) | load (s) | RSS gained by loading (MiB) "
            "| RSS gained after the first call (MiB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind in EXPORTS:
            r = loads[kind]
            seconds = export["index_build_s"].get(kind)
            build = "-" if seconds is None else f"{seconds:.1f}"
            if "error" in r:
                lines.append(f"| {EXPORT_NAMES[kind]} | {build} | {export['mib'][kind]:.0f} | fails | | |")
                continue
            lines.append(f"| {EXPORT_NAMES[kind]} | {build} | {export['mib'][kind]:.0f} | {r['load_s']:.1f} "
                         f"| {r['load_mib']:.0f} | {r['first_call_mib']:.0f} |")
        lines += ["", f"`export_retrieval` wrote all four directories in {export['export_s']:.0f} s (item tower "
                  "over every candidate, both indexes, user tower, item vectors "
                  f"{export['mib']['item_embeddings']:.0f} MiB, warm-up checks); the ScaNN index build inside it "
                  f"took {export['index_build_s'].get('scann') or float('nan'):.1f} s, scann pybind's build with the same "
                  f"settings {pybind.get('build_s', float('nan')):.1f} s. RSS: VmRSS of the loading process "
                  "(after `import tensorflow` and scann's ops, each export in its own process) before "
                  "`tf.saved_model.load`, after it, and after the first call (which recreates the ScaNN searcher "
                  f"from its variables). Input float32 vectors alone: {n * DIM * 4 / 2**20:.0f} MiB."]
        float_index, int8_index = loads["scann"], loads["scann_int8"]
        if "error" not in float_index and "error" not in int8_index:
            lines += ["", "The default export rescores its shortlist with the float32 item vectors: they are saved "
                      "as variables, and the searcher ScaNN builds from those variables on the first call keeps its "
                      "own copy, so a served index holds them twice. `reordering_dtype=\"int8\"` rescores with int8 "
                      "codes of the vectors (ScaNN's fixed-point reordering) and keeps no float vectors: "
                      f"{int8_index['first_call_mib']:.0f} against {float_index['first_call_mib']:.0f} MiB after the "
                      f"first call, {export['mib']['scann_int8']:.0f} against {export['mib']['scann']:.0f} MiB on "
                      f"disk, recall@{K} {int8_index['recall']:.4f} against {float_index['recall']:.4f}, and its "
                      "scores are approximate dot products."]
    return lines


def turns_lines(runs, recall):
    """The paragraph on the two exports taking turns in one process (child "turns")."""
    failed = [r["error"] for r in runs if "error" in r]
    if not runs or failed:
        return ["", f"Taking turns in one process: fails: {failed[0] if failed else 'no export'}"]
    scann, brute = ([r["ms"][kind] for r in runs] for kind in ("scann", "brute_force"))
    ratios = [b / s for b, s in zip(brute, scann)]
    ratio = statistics.median(ratios)
    met = ratio >= TARGET_SPEEDUP and recall >= TARGET_RECALL
    return ["", f"The table's exports are timed in separate processes, minutes apart, on a machine shared with "
            f"other jobs. Taken in turns instead (`--child turns`: both exports loaded in one process; a round is "
            f"one brute-force call and {runs[0]['scann_calls']} ScaNN calls of {BATCH} queries; a process's figure "
            f"is the fastest of {runs[0]['rounds']} rounds, `common.per_call_ms`), in {len(runs)} processes one "
            f"after the other: brute-force export {statistics.median(brute):.2f} ms, ScaNN export "
            f"{statistics.median(scann):.2f} ms per call (medians), QPS ratio **{ratio:.1f}x** (range "
            f"{min(ratios):.1f}-{max(ratios):.1f}x) at recall {recall:.4f}: target "
            f"{'met' if met else '**not met**'}."]


def scann_settings_part(size_name, flag):
    report = run(flag, "settings")
    heading = "### ScaNN settings: the defaults against faster ones, on easier and harder data"
    if "error" in report:
        return [heading, "", f"The sweep failed: {report['error']}"]
    default = report["default"]
    lines = [
        heading,
        "",
        f"scann's pybind searcher (`search_batched_parallel`, {PER_THREAD} queries per thread), built with "
        f"`export_retrieval`'s default settings ({default['num_leaves']:,} leaves, "
        f"{default['num_leaves_to_search']} searched, {default['dimensions_per_block']} dimensions per block, "
        f"{default['num_reordering_candidates']} rescored) and searched with fewer or more leaves, or rebuilt "
        f"with coarser hashing; {SCANN_SIZES[size_name]['candidates']:,} unit vectors of d = {DIM} drawn as in part scann, but "
        "also with clusters many times larger than a partition, so that a query's true top "
        f"{K} spreads over several partitions; {SETTINGS_QUERIES[size_name]} "
        f"queries from the same mixture, recall@{K} against exact search, QPS = {BATCH} / the median time of a "
        f"{BATCH}-query call.",
        "",
        f"| data | setting | leaves searched | dimensions per block | recall@{K} | batched QPS | batch p50 ms (calls) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in report["results"]:
        for row in result["rows"]:
            lines.append(f"| {result['data']} | {row['name']} | {row['leaves']} | {row['blocks']} "
                         f"| {row['recall']:.4f} | {row['qps']:,.0f} | {fmt_ms(row['batch_ms'])} |")
    easy, hard = ({row["name"]: row for row in result["rows"]} for result in report["results"])
    faster = "10 leaves searched"
    lines += ["", f"Searching {easy[faster]['leaves']} leaves instead of {default['num_leaves_to_search']} keeps "
              f"recall@{K} at {easy[faster]['recall']:.3f} (default {easy['default']['recall']:.3f}) on part "
              f"scann's data, where a query's neighbours share its partition, and drops it to "
              f"{hard[faster]['recall']:.3f} (default {hard['default']['recall']:.3f}) where they do not; "
              f"4 dimensions per block drop it to {easy['4 dimensions per block']['recall']:.3f} and "
              f"{hard['4 dimensions per block']['recall']:.3f}."]
    return lines


def later_epochs(report):
    """The compiled epochs' wall times, fastest-slowest."""
    later = report["epoch_s"][1:]
    return f"{min(later):.1f}-{max(later):.1f}" if later else "-"


def contender_rows(runs):
    """The table of YoutubeDNN, MIND (and its tfrec-only variants) and SDM, tfrec and DeepMatch."""
    lines = [f"| model | implementation | recall@{CONFIG['recall_k']} | train ex/s | tfrec / DeepMatch ex/s "
             "| later epochs (s) | first epoch (s) | fit (s) | trainable params | peak RSS (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in MODELS:
        base = runs[(model, "deepmatch")]
        for impl in IMPLS:
            r = runs[(model, impl)]
            name = f"| {MODEL_NAMES[model]} | {'tfrec' if impl == 'tfrec' else 'DeepMatch 0.3.2'} |"
            if "error" in r:
                lines.append(f"{name} fails: `{r['error']}` | | | | | | | |")
                continue
            ratio = (f"{r['examples_per_s'] / base['examples_per_s']:.2f}x"
                     if impl == "tfrec" and "error" not in base else "")
            lines.append(f"{name} {r['recall']:.4f} | {r['examples_per_s']:,.0f} | {ratio} "
                         f"| {later_epochs(r)} | {r['epoch_s'][0]:.1f} | {r['fit_s']:.0f} "
                         f"| {r['params']:,} | {r['peak_rss_mib']:.0f} |")
        if model == "mind":
            for variant, (title, _) in MIND_VARIANTS.items():
                r = runs[(variant, "tfrec")]
                lines.append(f"| {title} | tfrec | fails: `{r['error']}` | | | | | | | |" if "error" in r else
                             f"| {title} | tfrec | {r['recall']:.4f} | {r['examples_per_s']:,.0f} | "
                             f"| {later_epochs(r)} | {r['epoch_s'][0]:.1f} | {r['fit_s']:.0f} "
                             f"| {r['params']:,} | {r['peak_rss_mib']:.0f} |")
    return lines


def untracked_lines(runs):
    """A paragraph for each DeepMatch model whose graph holds trainable variables Keras never updates."""
    lines = []
    for model in MODELS:
        untracked = runs[(model, "deepmatch")].get("untracked")
        if untracked:
            lines += ["", f"**DeepMatch's {MODEL_NAMES[model]} does not train all its weights on this stack**: "
                      + ", ".join(f"`{name}` ({size:,} values)" for name, size in untracked)
                      + " are trainable graph variables outside `model.trainable_weights`, so Keras' optimizer never "
                      "updates them and they keep their random initial values (the trainable params column counts "
                      "only the tracked weights)."
                      + (" They are the LSTM of its `DynamicMultiRNN`, created by `tf.compat.v1.nn.rnn_cell."
                         "BasicLSTMCell` inside the layer; one cell object serves both LSTM layers, so there is one "
                         "kernel, not one per layer." if model == "sdm" else "")]
    return lines


def seeded_runs(flag, seeds, impl, model, *data):
    """One contender trained with `seeds` model seeds: run 0's report, its recall replaced by the
    mean of the runs' ("recalls": every run's, or the first failure)."""
    reports = []
    for index in range(seeds):
        reports.append(run(flag, "train", impl, model, index, *data))
        if "error" in reports[-1]:
            return reports[-1]
    recalls = [r["recall"] for r in reports]
    return dict(reports[0], recall=statistics.mean(recalls), recalls=recalls)


def train_runs(flag, seeds, *data):
    """Every contender of the table (`data`: nothing for planted data, or a MovieLens folder)."""
    contenders = [(model, impl) for model in MODELS for impl in IMPLS] + [(v, "tfrec") for v in MIND_VARIANTS]
    return {(model, impl): seeded_runs(flag, seeds, impl, model, *data) for model, impl in contenders}


def seed_lines(runs, seeds):
    """The sentence on seeds after a table's description, and with several seeds every run's recall."""
    if seeds == 1:
        return ("One data seed and one model seed: recall differences of a few points are noise "
                "(`--seeds N` trains each contender N times)."), []
    k = CONFIG["recall_k"]
    lines = ["", f"recall@{k} of each run, model seeds {MODEL_SEED}..{MODEL_SEED + seeds - 1} "
             f"(`set_random_seed({CONFIG['seed']}..{CONFIG['seed'] + seeds - 1})`): mean, sample standard "
             "deviation, runs."]
    for (model, impl), r in runs.items():
        if "recalls" in r:
            title = MIND_VARIANTS[model][0] if model in MIND_VARIANTS else MODEL_NAMES[model]
            sd = statistics.stdev(r["recalls"])
            lines.append(f"- {title}, {'tfrec' if impl == 'tfrec' else 'DeepMatch 0.3.2'}: {r['recall']:.4f} "
                         f"± {sd:.4f} (" + ", ".join(f"{x:.4f}" for x in r["recalls"]) + ")")
    return (f"One data seed and {seeds} model seeds (recall@{k}: their mean; the speed columns: the first "
            "run's)."), lines


def deepmatch_part(size, flag, seeds=1):
    references = run(flag, "references")
    runs = train_runs(flag, seeds)
    seeds_sentence, per_seed = seed_lines(runs, seeds)
    k = CONFIG["recall_k"]
    lines = [
        "### tfrec against DeepMatch 0.3.2: YoutubeDNN, MIND, SDM",
        "",
        f"`make_retrieval_data(num_users={size['users']}, num_items={size['items']}, "
        f"events_per_user={size['events']}, seed={CONFIG['seed']})`, `retrieval_samples(data, "
        f"{CONFIG['seq_maxlen']}, short_sess_length={CONFIG['short_sess_length']})`: "
        + (f"{references['train_rows']:,} training samples, {references['test_rows']:,} test rows (each user's last "
           "event)" if "error" not in references else "(the references failed)")
        + ". Both sides get the same int64 arrays (`df_to_inputs`; DeepCTR's scalar Inputs as (n, 1)) and the same "
        f"columns (`retrieval_feature_columns` / `sdm_feature_columns`, embedding {CONFIG['embedding_dim']}, profile "
        f"embedding {CONFIG['profile_embedding_dim']}; DeepMatch gets them as DeepCTR namedtuples). Config on both "
        f"sides: batch {CONFIG['batch_size']}, Adam {CONFIG['learning_rate']:g} (tfrec's compile makes it LazyAdam; "
        "DeepMatch in graph mode takes only `tf.keras.optimizers.legacy.Adam`), in-batch sampled softmax with "
        "logQ correction from the training targets' counts (`NegativeSampler(\"inbatch\", 0, \"item_id\", "
        f"item_count=counts)`, each library's own), {size['epochs']} epoch(s), `set_random_seed({CONFIG['seed']})`. "
        f"YoutubeDNN: user DNN {CONFIG['user_dnn_hidden_units']}, temperature {CONFIG['temperature']:g}. MIND: "
        f"k_max {CONFIG['k_max']}, p {CONFIG['p']}, dynamic_k, user DNN {CONFIG['user_dnn_hidden_units']}, no "
        "temperature (DeepMatch's MIND has none; tfrec's default 1.0). SDM: units "
        f"{CONFIG['embedding_dim']}, temperature {CONFIG['temperature']:g}, the rest both libraries' defaults (2 LSTM "
        "layers, 1 residual, 4 heads, dropout 0.2). DeepMatch runs in graph mode "
        "(`tf.compat.v1.disable_eager_execution()`), each contender in its own process. "
        f"Recall@{k}: every test row's user vector(s) against every catalogue item's vector, exact top {k} in "
        "numpy (`tfrec.metrics.top_k_indices`); towers as each library serves them (tfrec: `user_tower` / "
        "`item_tower`; DeepMatch: `Model(model.user_input, model.user_embedding)` and the same for items); MIND "
        "scores an item by its best active interest (DeepMatch's active interests: its own dynamic k, "
        "max(1, min(k_max, floor(log2(1 + hist_len))))). Train ex/s: training rows / the median wall time of "
        "the epochs after the first (one `fit` call with each library's defaults and an epoch timer, which has no "
        "per-batch hooks: tfrec runs 32 batches per Keras call, DeepMatch one; after the first epoch every step is "
        "compiled); later epochs: the fastest and slowest of them. The first epoch includes building the training "
        "graph (and, for tfrec, its XLA compilation); fit is the whole `fit` call. " + seeds_sentence,
        "",
    ]
    lines += contender_rows(runs) + per_seed
    if "error" not in references:
        lines += ["", f"Planted-truth recall@{k} on the same test rows (`planted_recalls`): oracle "
                  f"{references['oracle']:.4f}, mixture {references['mixture']:.4f}, centroid "
                  f"{references['centroid']:.4f}, dominant {references['dominant']:.4f}, popularity "
                  f"{references['popularity']:.4f}. From each test row's history instead of the user's planted "
                  "interests (`history_interest_recalls`: the history's events grouped by the interest that drew "
                  "them, one mean true item vector per group, scored as the centroid is): history interests "
                  f"{references['history_interests']:.4f}, history mean (one group) "
                  f"{references['history_mean']:.4f}: what perfect routing of a {CONFIG['seq_maxlen']}-event "
                  "history into interests is worth in the true item space."]
    lines += untracked_lines(runs)
    lines += ["", "Model differences that stay (each library's own design): DeepMatch's MIND draws new random "
              "routing logits at every call, serving included, and does not L2-normalise its item vectors "
              "(tfrec: fixed logits, normalised items); DeepMatch's in-batch softmax embeds and normalises the "
              "whole item table at every step; tfrec's SDM differs as its module docstring lists "
              "(`tfrec/models/sdm.py`)."]
    return lines


def movielens_part(size_name, flag, data_path, seeds=1):
    references = run(flag, "movielens_references", data_path)
    if "error" in references:  # e.g. no MovieLens files there: the loader's message says where to get them
        raise SystemExit(f"--part movielens: {references['error']}")
    runs = train_runs(flag, seeds, data_path)
    seeds_sentence, per_seed = seed_lines(runs, seeds)
    k = CONFIG["recall_k"]
    lines = [
        "### Real data: MovieLens, tfrec against DeepMatch 0.3.2",
        "",
        f"Data folder `{os.path.relpath(data_path, common.ROOT)}`: {references['ratings']:,} ratings of "
        f"{references['users']:,} users on {references['movies']:,} movies, through "
        f"`tfrec.datasets.load_movielens_retrieval(path, seq_maxlen={CONFIG['seq_maxlen']})` (with "
        f"`short_sess_length={CONFIG['short_sess_length']}` for SDM): DeepMatch's own MovieLens example, every rating "
        f"after a user's first predicts its movie from the earlier ones, each user's last rating is the test row: "
        f"{references['train_rows']:,} training samples, {references['test_rows']:,} test rows, "
        f"{references['items']:,} movies ranked. Profile features gender, age, occupation, zip. Models, config, "
        f"training and recall@{k} exactly as in the planted part above, {MOVIELENS_EPOCHS[size_name]} epoch(s); recall@{k} ranks every rated movie. "
        + seeds_sentence,
        "",
    ]
    lines += contender_rows(runs) + per_seed
    lines += ["", f"Popularity baseline (the {k} movies rated most often in training, for every user): "
              f"recall@{k} {references['popularity']:.4f}."]
    lines += untracked_lines(runs)
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke test")
    parser.add_argument("--part", choices=PARTS, help="run one part only (default: all)")
    parser.add_argument("--data", default=MOVIELENS_DATA, help="the MovieLens folder of part movielens")
    parser.add_argument("--seeds", type=int, default=1,
                        help="parts deepmatch and movielens: train every contender with this many model seeds")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size_name = "quick" if args.quick else "full"
    if args.child:
        kind, *rest = args.child
        if kind == "truth":
            return child_truth(size_name, rest[0])
        if kind == "pybind":
            return child_pybind(size_name, rest[0])
        if kind == "settings":
            return child_settings(size_name)
        if kind == "export":
            return child_export(size_name, rest[0])
        if kind == "load":
            return child_load(rest[0], rest[1], size_name, rest[2])
        if kind == "turns":
            return child_turns(rest[0], rest[1], size_name, rest[2])
        if kind == "references":
            return child_references(size_name)
        if kind == "movielens_references":
            return child_movielens_references(size_name, rest[0])
        return child_train(rest[0], rest[1], size_name, *rest[2:])  # impl, model, run index[, data]

    flag = ["--quick"] if args.quick else []
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    command = (f"python -m {MODULE}" + (f" --part {args.part}" if args.part else "")
               + (" --quick" if args.quick else "") + (f" --seeds {args.seeds}" if args.seeds > 1 else ""))
    for part in ([args.part] if args.part else PARTS):
        started = time.time()
        print(f"== {part} ==", flush=True)
        if part == "scann":
            workdir = tempfile.mkdtemp(prefix="bench-retrieval-")
            try:
                lines = scann_part(SCANN_SIZES[size_name], flag, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        elif part == "scann_settings":
            lines = scann_settings_part(size_name, flag)
        elif part == "deepmatch":
            lines = deepmatch_part(DEEPMATCH_SIZES[size_name], flag, args.seeds)
        else:
            lines = movielens_part(size_name, flag, args.data, args.seeds)
        print("\n".join(lines), flush=True)
        common.write_part(SECTION, part, PARTS, lines, command, INTRO, MODULE)
        print(f"== {part}: {time.time() - started:.0f} s ==", flush=True)


if __name__ == "__main__":
    main()
