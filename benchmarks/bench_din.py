"""DIN: tfrec against DeepCTR 0.9.4's DIN on the same planted data, plus serving latency and memory.

    python benchmarks/bench_din.py            # full run, rewrites the "din" section of BENCHMARKS.md
    python benchmarks/bench_din.py --quick    # small data, for a smoke test

Needs `pip install --no-deps deepctr==0.9.4` beside tfrec (benchmarks only, never a dependency).
Every contender trains in its own process on the same seeded log with the same config (batch
1024, history 50, embedding 16, DIN's default towers, l2_reg_embedding 1e-6, Adam 1e-3). tfrec
takes the log's ids either as raw strings ("u17", "i523": looked up in-graph) or as integer
indices; DeepCTR, which has no in-graph vocabulary, always gets the integer ones. Both id types
come from one generator run, so every contender sees the same rows and labels.

Contenders (IMPLS): tfrec with raw strings and a default `compile("adam", ...)` (XLA after the
in-graph lookups, LazyAdam, mini-batch aware L2); tfrec with raw strings on the old path (full-table
L2 on the tables, Keras' Adam, a plain Keras train step, no XLA: tfrec before the RecModel
change, emulated); tfrec with integer ids and a default compile; DeepCTR with a default compile and
with `jit_compile=True`; two diagnostic rows (raw strings, default compile with jit_compile=False;
raw strings, default compile, fed by `tfrec.data.df_to_dataset` instead of numpy arrays) and an
ablation of Dice's BatchNorm momentum. The serving part exports the first (raw strings,
default compile).
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

CONFIG = dict(maxlen=50, embedding_dim=16, batch_size=1024, l2_reg_embedding=1e-6, learning_rate=1e-3)
SIZES = {"full": dict(users=6000, items=3000, events=40, epochs=2), "quick": dict(users=600, items=300, events=20, epochs=2)}


# impl -> (ids fed to the model, path). "default": compile("adam", ...) with every default (for tfrec:
# XLA after the lookups, LazyAdam, mini-batch aware L2); "old": tfrec's path before RecModel, emulated
# (see `common.old_path`); "nojit": the default with jit_compile=False (LazyAdam and the mini-batch aware L2
# kept); "dataset": the default compile, trained on `tfrec.data.df_to_dataset` (a shuffled, batched,
# prefetched tf.data pipeline) instead of the numpy arrays every other contender gets; "xla": Adam with
# jit_compile=True; "dice-0.99": default, Dice BN momentum 0.99.
IMPLS = {
    "tfrec-str": ("str", "default"),
    "tfrec-str-old": ("str", "old"),
    "tfrec-str-nojit": ("str", "nojit"),
    "tfrec-str-dataset": ("str", "dataset"),
    "tfrec-int": ("int", "default"),
    "deepctr": ("int", "default"),
    "deepctr-xla": ("int", "xla"),
    "tfrec-int-dice-0.99": ("int", "dice-0.99"),
}
IMPL_NAMES = {
    "tfrec-str": "tfrec DIN, raw strings, default compile (XLA after lookups, LazyAdam, mini-batch aware L2)",
    "tfrec-str-old": "tfrec DIN, raw strings, old path (full-table L2, Keras Adam, no XLA)",
    "tfrec-str-nojit": "diagnostic: tfrec DIN, raw strings, default compile but `jit_compile=False`",
    "tfrec-str-dataset": "diagnostic: tfrec DIN, raw strings, default compile, fed by `tfrec.data.df_to_dataset`",
    "tfrec-int": "tfrec DIN, integer ids, default compile",
    "deepctr": "DeepCTR DIN, integer ids, default compile",
    "deepctr-xla": "DeepCTR DIN, integer ids, `jit_compile=True`",
    "tfrec-int-dice-0.99": "ablation: tfrec DIN, integer ids, default compile, Dice BN momentum 0.99 as DeepCTR",
}
SERVED = "tfrec-str"


def planted(size, id_type):
    import feature_columns  # noqa: F401
    from tfrec.data import DIN_HISTORY_FEATURES, build_din_samples, din_feature_columns, make_behaviour_log

    log = make_behaviour_log(num_users=size["users"], num_items=size["items"], events_per_user=size["events"],
                             seed=7, id_type=id_type)
    train_df, test_df = build_din_samples(log, maxlen=CONFIG["maxlen"], extra_cols=("p_click",), test_events=5)
    columns = din_feature_columns(log, maxlen=CONFIG["maxlen"], embedding_dim=CONFIG["embedding_dim"], id_type=id_type)
    return train_df, test_df, columns, DIN_HISTORY_FEATURES


def deepctr_columns(columns):
    """The same columns, as DeepCTR's own namedtuples."""
    from deepctr import feature_column as dc
    from feature_columns import SparseFeat

    out = []
    for c in columns:
        if isinstance(c, SparseFeat):
            out.append(dc.SparseFeat(c.name, c.vocabulary_size, c.embedding_dim, dtype=c.dtype,
                                     embedding_name=c.embedding_name))
        else:
            out.append(dc.VarLenSparseFeat(dc.SparseFeat(c.name, c.vocabulary_size, c.embedding_dim, dtype=c.dtype,
                                                         embedding_name=c.embedding_name),
                                           c.maxlen, length_name=c.length_name))
    return out


class EpochTimer:
    def __init__(self):
        import tensorflow as tf

        class _Timer(tf.keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                cb.start = time.perf_counter()

            def on_epoch_end(cb, epoch, logs=None):
                self.seconds.append(time.perf_counter() - cb.start)
        self.seconds = []
        self.callback = _Timer()


class StepTimer:
    """Stamps every step's end; `median_step_s()` is the median step of the last epoch (data feed included)."""

    def __init__(self):
        import tensorflow as tf

        class _Stamps(tf.keras.callbacks.Callback):
            def on_epoch_begin(cb, epoch, logs=None):
                self.stamps = [time.perf_counter()]

            def on_train_batch_end(cb, batch, logs=None):
                self.stamps.append(time.perf_counter())
        self.stamps = []
        self.callback = _Stamps()

    def median_step_s(self):
        steps = sorted(b - a for a, b in zip(self.stamps, self.stamps[1:]))
        return steps[len(steps) // 2]


def build_compiled(impl, columns, history):
    """The contender `impl`'s DIN, compiled as its row of the table says."""
    import tensorflow as tf

    path = IMPLS[impl][1]
    l2 = CONFIG["l2_reg_embedding"]
    if impl.startswith("deepctr"):
        from deepctr.models import DIN as DeepCTR_DIN
        model = DeepCTR_DIN(deepctr_columns(columns), history, l2_reg_embedding=l2)
    else:
        from tfrec.layers import Dice
        from tfrec.models import DIN
        model = DIN(columns, history, l2_reg_embedding=0 if path == "old" else l2)
        if path == "dice-0.99":  # ablation: DeepCTR's BN momentum inside Dice
            for layer in model._flatten_layers(include_self=False):
                if isinstance(layer, Dice):
                    layer.batch_norm.momentum = 0.99
    if path == "old":
        model = common.old_path(model, l2, CONFIG["learning_rate"])
    elif path == "nojit":
        model.compile("adam", "binary_crossentropy", jit_compile=False)
    elif path == "xla":
        model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), "binary_crossentropy", jit_compile=True)
    else:  # "adam" is Adam(1e-3); a tfrec model turns it into LazyAdam and compiles with XLA after the lookups
        model.compile("adam", "binary_crossentropy")
    return model


def child_train(impl, size_name, workdir):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    size = SIZES[size_name]
    id_type, path = IMPLS[impl]
    train_df, test_df, columns, history = planted(size, id_type)
    import tensorflow as tf
    from tfrec import metrics
    from tfrec.data import df_to_inputs

    tf.keras.utils.set_random_seed(1024)
    x_train, x_test = df_to_inputs(train_df, columns), df_to_inputs(test_df, columns)
    y_train = train_df["click"].to_numpy("float32")
    model = build_compiled(impl, columns, history)
    timer, steps = EpochTimer(), StepTimer()
    started = time.perf_counter()
    if path == "dataset":
        from tfrec.data import df_to_dataset
        model.fit(df_to_dataset(train_df, columns, "click", batch_size=CONFIG["batch_size"], seed=1024),
                  epochs=size["epochs"], verbose=0, callbacks=[timer.callback, steps.callback])
    else:
        model.fit(x_train, y_train, batch_size=CONFIG["batch_size"], epochs=size["epochs"], verbose=0,
                  callbacks=[timer.callback, steps.callback])
    fit_s = time.perf_counter() - started
    scores = model.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
    labels = test_df["click"].to_numpy()
    report = dict(impl=impl, model_class=type(model).__name__, optimizer=type(model.optimizer).__name__,
                  losses=len(model.losses), train_rows=len(train_df), test_rows=len(test_df), epochs=size["epochs"],
                  label_sum=float(y_train.sum()), fit_s=fit_s, epoch_s=timer.seconds,
                  epoch_examples_per_s=len(train_df) / timer.seconds[-1],  # last epoch: compiled, steady state
                  # the same epoch's median step: robust to a few seconds of load from other processes
                  examples_per_s=CONFIG["batch_size"] / steps.median_step_s(),
                  auc=metrics.auc(labels, scores), oracle_auc=metrics.auc(labels, test_df["p_click"].to_numpy()),
                  peak_rss_mib=common.peak_rss_mib())
    if impl == SERVED:
        from exporters import export_saved_model
        report["export"] = export_saved_model(model, os.path.join(workdir, "din"), warmup_inputs=df_to_inputs(test_df.head(3), columns))
        model.save(os.path.join(workdir, "keras_din"))
    common.emit(report)


def child_step(impl, size_name):
    """Where one training step's time goes: one batch of 1024 planted rows fed again and again.

    `keras_step_ms`: Keras' train function at one batch per call, as `fit` runs it in the table
    above; for tfrec also its XLA-compiled part alone (`xla_step_ms`, the step after the lookups,
    with the update of the dense weights and small tables). `profile`: the XLA operations of the
    compiled part (tfrec) or of the whole step (DeepCTR with `jit_compile=True`), from a
    tf.profiler trace (`common.xla_op_profile`; run with `common.XLA_TRACE_ENV`).
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    train_df, _, columns, history = planted(SIZES[size_name], IMPLS[impl][0])
    import tensorflow as tf
    from feature_columns import look_up_rows
    from tfrec.data import df_to_inputs

    rows = train_df.iloc[:CONFIG["batch_size"]]
    x, y = df_to_inputs(rows, columns), tf.constant(rows["click"].to_numpy("float32"))
    tf.keras.utils.set_random_seed(1024)
    model = build_compiled(impl, columns, history)
    tfrec = not impl.startswith("deepctr")
    if tfrec:
        x = look_up_rows(columns, x)  # as `fit` on numpy arrays feeds the model: rows looked up once
    x = {name: tf.constant(value) for name, value in x.items()}
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    train_function = model.make_train_function()
    if model._steps_per_execution is not None:
        model._steps_per_execution.assign(1)
    fns = {"keras_step_ms": (lambda: train_function(iterator), 1)}
    if tfrec:
        indexed, compiled = model._split.core_inputs(x), model.core_step_function()
        fns["xla_step_ms"] = (lambda: compiled(indexed, y, None), 1)
    report = dict(impl=impl, **common.per_call_ms(fns, calls=10, rounds=5))
    report["profile"] = common.xla_op_profile(fns["xla_step_ms" if tfrec else "keras_step_ms"][0])
    common.emit(report)


def child_latency(size_name, workdir, requests):
    import numpy as np
    import feature_columns  # noqa: F401
    import tensorflow as tf
    import tfrec.models  # noqa: F401  (registers tfrec's layers, RecModel and LazyAdam for load_model)
    from serving import Client, LocalServer
    from tfrec.data import df_to_inputs

    _, test_df, columns, _ = planted(SIZES[size_name], IMPLS[SERVED][0])
    batch = df_to_inputs(test_df.sample(100, replace=True, random_state=0).reset_index(drop=True), columns)
    signature = tf.saved_model.load(sorted(os.scandir(os.path.join(workdir, "din")), key=lambda e: e.name)[-1].path
                                    ).signatures["serving_default"]
    keras_model = tf.keras.models.load_model(os.path.join(workdir, "keras_din"))
    specs = signature.structured_input_signature[1]
    # As a serving client sends them: every input in its signature dtype (integers int64).
    tensors = {name: tf.constant(np.asarray(value).astype(specs[name].dtype.as_numpy_dtype))
               for name, value in batch.items()}

    def timed(fn, n):
        fn()  # warm
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return {"p50_ms": common.percentile_ms(samples, 50), "p99_ms": common.percentile_ms(samples, 99)}

    report = {"in_process_signature": timed(lambda: signature(**tensors), requests),
              "in_process_keras_call": timed(lambda: keras_model(batch, training=False), requests)}
    with LocalServer(model_base_path=os.path.join(workdir, "din"), model_name="din", rest=False) as server, \
            Client(server.grpc_target) as client:
        served = client.predict("din", batch)["prediction"]
        report["max_abs_diff_served_vs_in_process"] = float(np.max(np.abs(served - signature(**tensors)["prediction"].numpy())))
        report["grpc_predict"] = timed(lambda: client.predict("din", batch), requests)
        report["server_peak_rss_mib"] = common.process_peak_rss_mib(server.pid)
    common.emit(report)


def step_line(name, run):
    """A row of the step-profile table."""
    profile = run["profile"]
    kinds = ", ".join(f"{kind} {ms:.1f}" for kind, ms in profile["by_kind"].items())
    compiled = f"{run['xla_step_ms']:.1f}" if "xla_step_ms" in run else "(the whole step)"
    return (f"| {name} | {run['keras_step_ms']:.1f} | {compiled} | {profile['ops']} | "
            f"{profile['busy_ms']:.1f} | {kinds} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    size_name = "quick" if args.quick else "full"
    if args.child:
        kind, *rest = args.child
        if kind == "step":
            return child_step(rest[0], size_name)
        return child_train(rest[0], size_name, rest[1]) if kind == "train" else child_latency(size_name, rest[0], int(rest[1]))

    workdir = tempfile.mkdtemp(prefix="bench-din-")
    flag = ["--quick"] if args.quick else []
    runs = {}
    for impl in IMPLS:
        print(f"training {impl} ...", flush=True)
        runs[impl] = common.run_child(__file__, *flag, "--child", "train", impl, workdir)
        print(f"  {runs[impl]['examples_per_s']:.0f} ex/s, AUC {runs[impl]['auc']:.4f}", flush=True)
    latency = common.run_child(__file__, *flag, "--child", "latency", workdir, 200 if args.quick else 500)
    steps = {impl: common.run_child(__file__, *flag, "--child", "step", impl, env=common.XLA_TRACE_ENV)
             for impl in ("tfrec-int", "deepctr-xla")}

    size = SIZES[size_name]
    if len({(run["train_rows"], run["test_rows"], run["label_sum"]) for run in runs.values()}) != 1:
        raise RuntimeError("the contenders did not train on the same rows")
    base = runs["deepctr"]
    lines = [
        "## DIN vs DeepCTR 0.9.4 DIN",
        "",
        f"Command: `python benchmarks/bench_din.py{' --quick' if args.quick else ''}` ({common.machine_line()}).",
        f"Planted behaviour log: {size['users']} users x {size['events']} events, {size['items']} items; "
        f"{base['train_rows']} train / {base['test_rows']} test samples (last 5 events of each user held out). Config: batch "
        f"{CONFIG['batch_size']}, history {CONFIG['maxlen']}, embedding {CONFIG['embedding_dim']}, DIN defaults "
        f"(DNN 256-128-64, attention 80-40 Dice, l2_reg_embedding {CONFIG['l2_reg_embedding']:g} on both sides), "
        f"Adam {CONFIG['learning_rate']:g}, {size['epochs']} epoch(s), each contender in its own process on the same "
        "rows and labels. Train examples/s is 1024 / the median step time of the last epoch (after compilation; "
        "a step's time includes feeding its batch), which a burst of load from another process on this shared "
        "machine barely moves; the last epoch's rows / wall time is in the next column. \"Raw strings\" feeds the log's ids as strings (\"u17\", \"i523\", \"c4\"), looked up "
        "in-graph by the model's StringLookup layers; \"integer ids\" feeds the same ids as table indices (DeepCTR "
        "has no in-graph vocabulary, so it always gets these). Default compile is `model.compile(\"adam\", "
        "\"binary_crossentropy\")`: on a tfrec model that means XLA for everything after the lookups, LazyAdam "
        "(row-only updates of the tables) and DIN's mini-batch aware L2 on the rows in the batch. The old path is "
        "tfrec before that change, emulated: the same model with l2_reg_embedding=0 plus a full-table L2 "
        f"({CONFIG['l2_reg_embedding']:g} x the sum of squares of each table, as a Keras embeddings_regularizer adds), "
        "a plain `tf.keras.Model` train step, Keras `Adam(1e-3)`, `jit_compile=False`.",
        "",
        "| implementation | train examples/s | vs DeepCTR default | last epoch rows / s | test AUC | oracle AUC "
        "| AUC / oracle | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for impl, run in runs.items():
        lines.append(f"| {IMPL_NAMES[impl]} | {run['examples_per_s']:.0f} | "
                     f"{run['examples_per_s'] / base['examples_per_s']:.2f}x | {run['epoch_examples_per_s']:.0f} "
                     f"| {run['auc']:.4f} | {run['oracle_auc']:.4f} "
                     f"| {run['auc'] / run['oracle_auc']:.3f} | {run['peak_rss_mib']:.0f} |")
    ratio = runs["tfrec-str"]["examples_per_s"] / base["examples_per_s"]
    lines += [
        "",
        f"Issue target: raw strings with a default compile at >= 1.3x DeepCTR's DIN (integer ids, default): "
        f"{ratio:.2f}x ({'met' if ratio >= 1.3 else 'not met'}); against DeepCTR with `jit_compile=True`: "
        f"{runs['tfrec-str']['examples_per_s'] / runs['deepctr-xla']['examples_per_s']:.2f}x. The new default is "
        f"{runs['tfrec-str']['examples_per_s'] / runs['tfrec-str-old']['examples_per_s']:.2f}x the old path on the "
        "same raw strings; with XLA off (diagnostic row) the same model and optimizer run at "
        f"{runs['tfrec-str-nojit']['examples_per_s'] / runs['tfrec-str']['examples_per_s']:.2f}x the default's speed. "
        "Every row but one is fed numpy arrays (`model.fit(x, y, batch_size=1024)`); a tfrec model's `fit` maps "
        "raw strings to table rows once per call with its own lookup layers, so its steps slice int32 rows, not "
        "strings (the old-path row, a plain Keras model, slices and looks up strings at every step). Fed by "
        "`tfrec.data.df_to_dataset` with its defaults (a tf.data pipeline of the same rows, shuffled each epoch, "
        "which maps the raw strings to table rows once, when it is built, and gathers each batch's rows by their "
        "shuffled row numbers), the raw-string default runs at "
        f"{runs['tfrec-str-dataset']['examples_per_s'] / base['examples_per_s']:.2f}x DeepCTR's default.",
        "",
        "tfrec's Dice keeps BatchNorm moving statistics with momentum 0.9 (DeepCTR: Keras' 0.99); the "
        "ablation row shows what 0.99 costs: after a few hundred steps its moving variance is still "
        "mostly the initial 1, so inference-mode scores differ from what training saw.",
        "",
        "### Where a training step's time goes",
        "",
        f"One batch of {CONFIG['batch_size']} planted rows (integer ids) fed again and again, each in its own "
        "process (`--child step IMPL`): Keras' train function at one batch per call, as `fit` runs it above, and "
        "for tfrec its XLA-compiled part alone (after the lookups: forward, backward, the update of the dense "
        "weights and small tables); ms per call, the fastest of 5 rounds of 10. The XLA operations are read "
        "from a `tf.profiler` trace of 5 calls (`common.xla_op_profile`): their number, their time summed over "
        "the threads, and the largest kinds.",
        "",
        "| step | Keras step (ms) | compiled part (ms) | XLA operations | their summed time (ms) | largest kinds (ms) |",
        "|---|---:|---:|---:|---:|---|",
        *[step_line(IMPL_NAMES[impl], run) for impl, run in steps.items()],
        "",
        "What dominated tfrec's compiled step before the changes this table measures (the same trace, taken "
        "on the code before them while making them, on 2026-11-30, when this machine ran the step faster than "
        "in the table's run; the step then took 43 ms): the "
        "column sums of DIN's attention units, 13 ms, which XLA on CPU compiles to scalar reduce-window "
        "loops: Dice's BatchNorm statistics and their gradients, and the kernel gradients of the attention's "
        "first layer, computed per example by a broadcast `tf.matmul` and then summed. The first layer now uses "
        "`tf.tensordot` (one kernel-gradient product over all positions) and Dice computes its training pass "
        "and gradient with its column sums as matrix products (`tfrec.layers.core._dice_on_batch`, the same "
        "function as Keras' BatchNormalization, tested against it): the compiled step fell to 35 ms. A third "
        "change moved the update of the dense weights and small tables into the compiled call (only the user "
        "table, above `MASKED_UPDATE_MAX_SIZE`, is updated after it): the Keras step fell from 48 to 37 ms.",
        "",
        "### Serving latency, 100 candidates per request",
        "",
        f"The first tfrec model above (raw strings, default compile), exported with `exporters.export_saved_model`, {500 if not args.quick else 200} "
        "sequential requests after one warm-up, client and server on this machine.",
        "",
        "| path | p50 (ms) | p99 (ms) |",
        "|---|---:|---:|",
        f"| gRPC Predict to `serving.server` (real subprocess, `serving.Client`) | {latency['grpc_predict']['p50_ms']:.2f} | {latency['grpc_predict']['p99_ms']:.2f} |",
        f"| in-process SavedModel signature call | {latency['in_process_signature']['p50_ms']:.2f} | {latency['in_process_signature']['p99_ms']:.2f} |",
        f"| in-process Keras `model(x)` | {latency['in_process_keras_call']['p50_ms']:.2f} | {latency['in_process_keras_call']['p99_ms']:.2f} |",
        "",
        f"Served scores vs in-process: max |diff| {latency['max_abs_diff_served_vs_in_process']:.1e}. "
        f"Server peak RSS with the DIN export loaded, after the requests: {latency['server_peak_rss_mib']:.0f} MiB.",
    ]
    common.write_section("din", "\n".join(lines))


if __name__ == "__main__":
    main()
