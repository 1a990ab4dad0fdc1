"""Embedding scale: does a DIN training step cost more when the item table grows but the batch does not?

    python benchmarks/bench_embedding_scale.py            # full run, rewrites the "embedding_scale" section of BENCHMARKS.md
    python benchmarks/bench_embedding_scale.py --quick    # smaller tables and fewer steps, for a smoke test

tfrec DIN (default towers: DNN 256-128-64, attention 80-40 Dice), batch 1024, history 50, embedding
16, integer ids. The item table (read by item_id and hist_item_id) has 10k, 1M or 5M rows; the user
table (10,001 rows) and the category table (101 rows) stay fixed. Every id is drawn uniformly from
the first 10,000 rows of its table (1..9999 for items; 0 is padding), so only the table size
changes, never the rows a batch touches. Labels are random (timing only).

Two paths per table size, each in its own process:
  * new: `RecModel.compile("adam", "binary_crossentropy")` with every default: LazyAdam (row-only
    updates of the tables), DIN's mini-batch aware L2 (1e-6) on the looked-up rows, XLA after the lookups.
  * old: what tfrec did before: the same model built with l2_reg_embedding=0, a full-table
    L2 (1e-6 * sum of squares of every table) added as a loss on each table layer, wrapped as a plain
    `tf.keras.Model` (plain train step) and compiled with Keras' Adam(1e-3), no XLA.

A child trains with `model.fit` on a tf.data pipeline of a few pre-built batches, cached and
repeated; a callback stamps the end of every step, and its figure is the median step time (ms)
over the steps after the warm-up ones. The machine is shared and its load drifts over minutes, so
the grid runs `rounds` times, one child at a time; within a round each path's table sizes run back
to back. A cell reports the median over rounds of its children's medians, and the ratio to 10k
rows is the median over rounds of that round's ratio (children a minute apart see similar load).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

CONFIG = dict(batch_size=1024, maxlen=50, embedding_dim=16, active_rows=10_000, user_rows=10_001, cate_rows=101,
              l2=1e-6, distinct_batches=8)
SIZES = {
    "full": dict(rows=(10_000, 1_000_000, 5_000_000), warmup=10, steps=30, rounds=3),
    "quick": dict(rows=(10_000, 200_000), warmup=3, steps=8, rounds=1),
}
PATHS = ("new", "old")


def columns(item_rows):
    from feature_columns import SparseFeat, VarLenSparseFeat

    dim = CONFIG["embedding_dim"]
    item = dict(vocabulary_size=item_rows, embedding_dim=dim, dtype="int64", embedding_name="item_id")
    cate = dict(vocabulary_size=CONFIG["cate_rows"], embedding_dim=dim, dtype="int64", embedding_name="cate_id")
    return [SparseFeat("user_id", CONFIG["user_rows"], dim, dtype="int64"),
            SparseFeat("item_id", **item), SparseFeat("cate_id", **cate),
            VarLenSparseFeat(SparseFeat("hist_item_id", **item), CONFIG["maxlen"], length_name="seq_length"),
            VarLenSparseFeat(SparseFeat("hist_cate_id", **cate), CONFIG["maxlen"], length_name="seq_length")]


def batches(seed=0):
    """`distinct_batches` batches of ids uniform over the first `active_rows` rows (1-based: 0 is padding)."""
    rng = np.random.default_rng(seed)
    n, maxlen = CONFIG["batch_size"] * CONFIG["distinct_batches"], CONFIG["maxlen"]
    ids = lambda *shape, high=CONFIG["active_rows"] - 1: rng.integers(1, high + 1, size=shape, dtype=np.int64)  # noqa: E731
    lengths = rng.integers(1, maxlen + 1, size=(n, 1), dtype=np.int32)
    valid = np.arange(maxlen)[None, :] < lengths
    x = {"user_id": ids(n, 1, high=CONFIG["user_rows"] - 1), "item_id": ids(n, 1),
         "cate_id": ids(n, 1, high=CONFIG["cate_rows"] - 1),
         "hist_item_id": np.where(valid, ids(n, maxlen), 0),
         "hist_cate_id": np.where(valid, ids(n, maxlen, high=CONFIG["cate_rows"] - 1), 0),
         "seq_length": lengths}
    y = rng.integers(0, 2, size=(n, 1)).astype("float32")
    return x, y


def build(path, item_rows):
    from tfrec.data import DIN_HISTORY_FEATURES
    from tfrec.models import DIN

    if path == "new":
        model = DIN(columns(item_rows), DIN_HISTORY_FEATURES, l2_reg_embedding=CONFIG["l2"])
        model.compile("adam", "binary_crossentropy")
        return model
    return common.old_path(DIN(columns(item_rows), DIN_HISTORY_FEATURES, l2_reg_embedding=0), CONFIG["l2"], 1e-3)


def child(path, item_rows, warmup, steps):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1024)
    x, y = batches()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(CONFIG["batch_size"]).cache().repeat()
    started = time.perf_counter()
    model = build(path, item_rows)
    build_s = time.perf_counter() - started
    stamps = []

    class Stamp(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=warmup + steps, epochs=1, verbose=0, callbacks=[Stamp()])
    fit_s = time.perf_counter() - started
    step_ms = 1000.0 * np.diff(stamps[warmup - 1:])
    common.emit(dict(path=path, rows=item_rows, build_s=build_s, fit_s=fit_s, warmup=warmup, steps=len(step_ms),
                     median_ms=float(np.median(step_ms)), p10_ms=float(np.percentile(step_ms, 10)),
                     p90_ms=float(np.percentile(step_ms, 90)), first_step_s=stamps[0] - started,
                     peak_rss_mib=common.peak_rss_mib()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("PATH", "ROWS", "WARMUP", "STEPS"))
    args = parser.parse_args()
    if args.child:
        path, rows, warmup, steps = args.child
        return child(path, int(rows), int(warmup), int(steps))

    size = SIZES["quick" if args.quick else "full"]
    rounds = {}
    for round_index in range(size["rounds"]):
        for path in PATHS:
            for rows in size["rows"]:
                print(f"round {round_index + 1}: {path} path, {rows} item rows ...", flush=True)
                run = common.run_child(__file__, "--child", path, rows, size["warmup"], size["steps"])
                rounds.setdefault((rows, path), []).append(run)
                print(f"  {run['median_ms']:.1f} ms/step, peak RSS {run['peak_rss_mib']:.0f} MiB", flush=True)
    median = lambda values: float(np.median(values))  # noqa: E731
    ms = {key: median([r["median_ms"] for r in results]) for key, results in rounds.items()}
    ratio = {(rows, path): median([r["median_ms"] / base["median_ms"]
                                   for r, base in zip(rounds[rows, path], rounds[size["rows"][0], path])])
             for rows, path in rounds}

    smallest, largest = size["rows"][0], size["rows"][-1]
    lines = [
        "## Embedding table size vs step time (DIN)",
        "",
        f"Command: `python benchmarks/bench_embedding_scale.py{' --quick' if args.quick else ''}` ({common.machine_line()}).",
        f"tfrec DIN, default towers (DNN 256-128-64, attention 80-40 Dice), batch {CONFIG['batch_size']}, history "
        f"{CONFIG['maxlen']}, embedding {CONFIG['embedding_dim']}, integer ids. The item table (shared by item_id and "
        f"hist_item_id) has the rows below; the user table ({CONFIG['user_rows']:,} rows) and category table "
        f"({CONFIG['cate_rows']} rows) are fixed. Every id is uniform over the first {CONFIG['active_rows']:,} rows of "
        "its table, labels are random: the batch is the same at every table size. One process per row of the table; "
        f"`model.fit` on {CONFIG['distinct_batches']} pre-built batches, cached and repeated; a child's ms/step is the "
        f"median over {size['steps']} steps after {size['warmup']} warm-up steps. The grid ran {size['rounds']} "
        "time(s), one child at a time, each path's three sizes back to back within a round; ms/step is the median "
        "over rounds of the children's medians (each round's in the next column), and the ratio to the smallest "
        "table is the median over rounds of that round's ratio, as the load of this shared machine drifts from "
        "minute to minute.",
        "",
        "* new: the default, `model.compile(\"adam\", \"binary_crossentropy\")` on the tfrec model: LazyAdam (row-only "
        f"updates of the tables), DIN's mini-batch aware L2 ({CONFIG['l2']:g}) on the rows in the batch, XLA for "
        "everything after the lookups.",
        f"* old: the path before this change, emulated: the same model with l2_reg_embedding=0 plus, on each table layer, a loss "
        f"{CONFIG['l2']:g} x (sum of squares of every table), as a plain `tf.keras.Model`, Keras `Adam(1e-3)` (decays "
        "both moments of every row each step), `jit_compile=False`.",
        "",
        f"| item table rows | path | ms/step | each round's median | vs {smallest:,} rows, same path "
        "| peak RSS (MiB) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for path in PATHS:
        for rows in size["rows"]:
            each = ", ".join(f"{r['median_ms']:.0f}" for r in rounds[rows, path])
            lines.append(f"| {rows:,} | {path} | {ms[rows, path]:.1f} | {each} | {ratio[rows, path]:.2f}x "
                         f"| {max(r['peak_rss_mib'] for r in rounds[rows, path]):.0f} |")
    growth = ratio[largest, "new"]
    lines += [
        "",
        f"Issue target: a step at {largest:,} rows costs at most 1.2x a step at {smallest:,} rows with the same batch. "
        f"New path: {growth:.2f}x ({'met' if growth <= 1.2 else 'not met'}); old path: "
        f"{ratio[largest, 'old']:.2f}x. At {largest:,} rows the new path's step is "
        f"{ms[largest, 'old'] / ms[largest, 'new']:.1f}x faster than the old one's; at {smallest:,} rows it takes "
        f"{ms[smallest, 'new'] / ms[smallest, 'old']:.2f}x the old one's time.",
    ]
    common.write_section("embedding_scale", "\n".join(lines))


if __name__ == "__main__":
    main()
