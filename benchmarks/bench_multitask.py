"""Multi-task ranking: tfrec MMOE / PLE / ESMM / SharedBottom against DeepCTR 0.9.4's own, on
planted multi-task data (with per-task oracle AUCs) and on the real UCI Adult data set.

    python benchmarks/bench_multitask.py            # full run, rewrites the "multitask" section of BENCHMARKS.md
    python benchmarks/bench_multitask.py --quick    # small data, for a smoke test

Needs `pip install --no-deps deepctr==0.9.4` beside tfrec (benchmarks only, never a dependency).
Every contender trains in its own process with the same config (batch 1024, embedding 8, each
model's DeepCTR default towers/experts, Adam 1e-3, binary cross-entropy on both heads, same
epochs) on the same integer-encoded numpy arrays: DeepCTR has no in-graph string vocabulary, so
both sides get integer ids and plain integer columns of equal vocabulary sizes.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from benchmarks.bench_din import EpochTimer  # noqa: E402

CONFIG = dict(embedding_dim=8, batch_size=1024, learning_rate=1e-3)
IMPLS = ("tfrec", "tfrec-noxla", "deepctr", "deepctr-xla")
# The quick smoke run covers every model and both libraries with fewer contenders, to start fewer processes.
SIZES = {
    "full": dict(train_rows=100_000, test_rows=25_000, epochs=5, impls=IMPLS, planted_seeds=3,
                 adult_seeds=3, adult_epochs=10, adult_models=("MMOE", "PLE", "SharedBottom")),
    "quick": dict(train_rows=5_000, test_rows=5_000, epochs=1, impls=("tfrec", "deepctr"), planted_seeds=1,
                  adult_seeds=1, adult_epochs=2, adult_models=("MMOE",)),
}
MODELS = ("MMOE", "PLE", "ESMM", "SharedBottom")  # on Adult, ESMM's ctr -> ctcvr chain does not fit the tasks
TURNS_PROCESSES = {"full": 5, "quick": 1}  # processes of `--turns` per model, one after the other
STEP_MODELS = ("PLE", "MMOE", "SharedBottom")  # the largest, a middle and the smallest step
# tfrec's default compile is XLA; DeepCTR's is not.
JIT_COMPILE = {"tfrec": {}, "tfrec-noxla": dict(jit_compile=False), "deepctr": {},
               "deepctr-xla": dict(jit_compile=True)}
IMPL_NAMES = {"tfrec": "tfrec (default compile: XLA after the lookups, LazyAdam update inside it, 32 steps per call)",
              "tfrec-noxla": "tfrec (`jit_compile=False`)",
              "deepctr": "DeepCTR (default)", "deepctr-xla": "DeepCTR (`jit_compile=True`)"}
# The UCI file (not shipped): $UCI_ADULT_PATH, else data/uci-adult/adult.data in this repository
# (ignored by git). Without it the Adult part is skipped.
ADULT_PATH = os.environ.get("UCI_ADULT_PATH", os.path.join(common.ROOT, "data", "uci-adult", "adult.data"))
PLANTED_SPARSE = ("user_id", "item_id", "cate_id", "age_group", "device", "hour")
PLANTED_DENSE = ("price", "user_activity")
# task name -> label column; ESMM's ctcvr head is trained on conversion (= click and conversion).
PLANTED_TASKS = {"ctr": "click", "ctcvr": "conversion"}
PLANTED_ORACLE = {"ctr": "p_click", "ctcvr": "p_ctcvr"}
ADULT_TASKS = {"income": "income", "never_married": "never_married"}


def integer_encoded(df, sparse_names):
    """Each sparse column as int32 ids 1..n (0 unused), by sorted value; returns (df, {name: vocabulary size})."""
    df = df.copy()
    sizes = {}
    for name in sparse_names:
        values = sorted(df[name].unique().tolist())
        df[name] = df[name].map({value: i + 1 for i, value in enumerate(values)}).astype(np.int32)
        sizes[name] = len(values) + 1
    return df, sizes


def tfrec_columns(sizes, dense_names):
    from feature_columns import DenseFeat, SparseFeat
    return ([SparseFeat(name, size, CONFIG["embedding_dim"], dtype="int32") for name, size in sizes.items()]
            + [DenseFeat(name) for name in dense_names])


def deepctr_columns(sizes, dense_names):
    """The same columns as `tfrec_columns`, as DeepCTR's own namedtuples."""
    from deepctr import feature_column as dc
    return ([dc.SparseFeat(name, size, CONFIG["embedding_dim"], dtype="int32") for name, size in sizes.items()]
            + [dc.DenseFeat(name) for name in dense_names])


def planted(size):
    """(train_df, test_df, {sparse name: vocabulary size}): the first train_rows rows train, the next test_rows test."""
    from tfrec.data import make_multitask_data

    df = make_multitask_data(num_samples=size["train_rows"] + size["test_rows"], seed=0)
    df, sizes = integer_encoded(df, PLANTED_SPARSE)
    return df.iloc[:size["train_rows"]], df.iloc[size["train_rows"]:], sizes


def adult():
    """(train_df, test_df, sizes, dense names): a fixed permutation (seed 0), first 80% train, last 20% test."""
    from tfrec.data import load_adult

    df, sparse_names, dense_names = load_adult(ADULT_PATH)
    df, sizes = integer_encoded(df, sparse_names)
    df = df.iloc[np.random.default_rng(0).permutation(len(df))].reset_index(drop=True)
    cut = int(0.8 * len(df))
    return df.iloc[:cut], df.iloc[cut:], sizes, dense_names


def build(impl, model_name, sizes, dense_names, task_names, seed):
    if impl.startswith("deepctr"):
        import deepctr.models
        return getattr(deepctr.models, model_name)(deepctr_columns(sizes, dense_names), seed=seed,
                                                   task_names=task_names)
    import tfrec.models
    return getattr(tfrec.models, model_name)(tfrec_columns(sizes, dense_names), seed=seed, task_names=task_names)


def steady_examples_per_s(rows, epoch_seconds):
    """Training speed after compilation: rows per second over every epoch but the first (the only one, if alone)."""
    steady = epoch_seconds[1:] or epoch_seconds
    return rows * len(steady) / sum(steady)


def train_once(impl, model_name, train_df, test_df, sizes, dense_names, tasks, epochs, seed):
    """Trains one model; returns (model, test predictions {task: (n,)}, per-epoch seconds)."""
    import tensorflow as tf
    from tfrec.data import df_to_inputs

    tf.keras.utils.set_random_seed(seed)
    columns = tfrec_columns(sizes, dense_names)
    x_train, x_test = df_to_inputs(train_df, columns), df_to_inputs(test_df, columns)
    y_train = [train_df[label].to_numpy("float32") for label in tasks.values()]
    model = build(impl, model_name, sizes, dense_names, tuple(tasks), seed)
    model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), ["binary_crossentropy"] * len(tasks),
                  **JIT_COMPILE[impl])
    timer = EpochTimer()
    model.fit(x_train, y_train, batch_size=CONFIG["batch_size"], epochs=epochs, verbose=0, callbacks=[timer.callback])
    scores = model.predict(x_test, batch_size=4096, verbose=0)
    return model, x_test, {task: np.asarray(s).reshape(-1) for task, s in zip(tasks, scores)}, timer.seconds


def train_seeds(report, impl, model_name, data, tasks, epochs, seeds, after_each=None):
    """Trains one contender once per seed (1024, 1025, ...) and adds per-seed lists to `report`:
    `auc` {task: [...]}, `examples_per_s`, `first_epoch_s`. `after_each(model, x_test)` runs after
    each training. A contender that cannot train in this mode gets report["error"]. Returns `report`."""
    from tfrec import metrics

    train_df, test_df, sizes, dense_names = data
    report.update(seeds=[1024 + i for i in range(seeds)], auc={task: [] for task in tasks}, examples_per_s=[],
                  first_epoch_s=[])
    for seed in report["seeds"]:
        try:
            model, x_test, scores, seconds = train_once(impl, model_name, train_df, test_df, sizes, dense_names, tasks,
                                                        epochs, seed=seed)
        except Exception as error:
            report["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
            return report
        report["first_epoch_s"].append(seconds[0])
        report["examples_per_s"].append(steady_examples_per_s(len(train_df), seconds))
        for task, label in tasks.items():
            report["auc"][task].append(metrics.auc(test_df[label], scores[task]))
        if after_each is not None:
            after_each(model, x_test)
    return report


def child_planted(impl, model_name, size_name):
    """One contender on the planted data, once per seed: per-seed AUCs and speeds (and ESMM's pCVR AUC)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    size = SIZES[size_name]
    train_df, test_df, sizes = planted(size)
    import tensorflow as tf
    from tfrec import metrics

    report = dict(impl=impl, model=model_name, train_rows=len(train_df), test_rows=len(test_df), epochs=size["epochs"],
                  oracle_auc={task: metrics.auc(test_df[PLANTED_TASKS[task]], test_df[p])
                              for task, p in PLANTED_ORACLE.items()})
    clicked = test_df["click"].to_numpy() == 1
    conversion = test_df["conversion"][clicked]

    def cvr_auc(model, x_test):
        # pCVR is the second input of the ctcvr = ctr x cvr product, in both implementations.
        cvr_model = tf.keras.Model(model.inputs, model.get_layer("ctcvr").input[1])
        cvr = np.asarray(cvr_model.predict(x_test, batch_size=4096, verbose=0)).reshape(-1)
        report["cvr_auc"].append(metrics.auc(conversion, cvr[clicked]))

    if model_name == "ESMM":
        report.update(cvr_auc=[], clicked_test_rows=int(clicked.sum()),
                      cvr_oracle_auc=metrics.auc(conversion, test_df["p_conversion_given_click"][clicked]))
    common.emit(train_seeds(report, impl, model_name, (train_df, test_df, sizes, PLANTED_DENSE), PLANTED_TASKS,
                            size["epochs"], size["planted_seeds"],
                            after_each=cvr_auc if model_name == "ESMM" else None))


def train_steps(impl, model_name, rows, sizes):
    """(model, x, y, {name: (call, batches per call)}): Keras' train function of `impl`'s model (compiled as
    `impl` compiles it) on one batch of planted `rows`, fed again and again from memory: at one batch per call
    ("keras_step_ms_one_per_call") and, where the compile's default runs more (tfrec's
    STEPS_PER_EXECUTION), at that default ("keras_step_ms_default")."""
    import tensorflow as tf
    from feature_columns import look_up_rows
    from tfrec.data import df_to_inputs

    columns = tfrec_columns(sizes, PLANTED_DENSE)
    x = df_to_inputs(rows, columns)
    y = tuple(tf.constant(rows[label].to_numpy("float32")) for label in PLANTED_TASKS.values())
    tf.keras.utils.set_random_seed(1024)
    model = build(impl, model_name, sizes, PLANTED_DENSE, tuple(PLANTED_TASKS), seed=1024)
    model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), ["binary_crossentropy"] * len(PLANTED_TASKS),
                  **JIT_COMPILE[impl])
    if impl.startswith("tfrec"):
        x = look_up_rows(columns, x)  # as `fit` on numpy arrays feeds the model: rows looked up once
    x = {name: tf.constant(value) for name, value in x.items()}
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    train_function = model.make_train_function()
    steps = model._steps_per_execution
    default_steps = int(steps.numpy()) if steps is not None else 1

    def keras_step(batches):
        def call():
            steps.assign(batches)  # a variable the (multi-step) train function reads
            return train_function(iterator)
        return call, batches

    fns = {"keras_step_ms_one_per_call": keras_step(1)}
    if default_steps > 1:
        fns["keras_step_ms_default"] = keras_step(default_steps)
    return model, x, y, fns


def child_step(impl, model_name, size_name):
    """Where one training step's time goes, on one fixed batch of the planted data, ms per batch.

    Every contender: Keras' train function (what `fit` calls) per batch, at one batch per call
    and, for tfrec, at its default STEPS_PER_EXECUTION batches per call. tfrec also: its compiled
    step alone (forward, backward and the LazyAdam update in one XLA call), and the same work as
    the two calls it took before the update joined the step: forward + backward as one XLA call,
    then `optimizer.apply_gradients` as a call of its own (Keras compiles each weight's update as
    a separate XLA function). And the compiled step of `separate_tables_twin`, the same model
    with its six small tables in six variables instead of one (what packing them saves).
    """
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    train_df, _, sizes = planted(SIZES[size_name])
    import tensorflow as tf
    from tfrec.models import base

    rows = train_df.iloc[:CONFIG["batch_size"]]
    model, x, y, fns = train_steps(impl, model_name, rows, sizes)
    report = dict(impl=impl, model=model_name, batch=CONFIG["batch_size"])
    if "keras_step_ms_default" in fns:
        report["steps_per_execution"] = fns["keras_step_ms_default"][1]
    if impl.startswith("tfrec"):
        indexed = model._split.core_inputs(x)
        fused = model.core_step_function()
        separate_tables, separate_inputs = separate_tables_twin(model_name, rows, sizes)
        separate = base._TrainingSplit(model, jit_compile=True, update_in_step=False).step
        _, gradients = separate(indexed, y, None)
        pairs = [(g, v) for g, v in zip(gradients, model.trainable_variables) if g is not None]

        @tf.function
        def apply(gradients):
            return model.optimizer.apply_gradients(zip(gradients, [v for _, v in pairs]))

        separate_step = separate_tables.core_step_function()
        fns.update(xla_step_ms=(lambda: fused(indexed, y, None), 1),
                   xla_step_ms_separate_tables=(lambda: separate_step(separate_inputs, y, None), 1),
                   xla_forward_backward_ms=(lambda: separate(indexed, y, None), 1),
                   optimizer_call_ms=(lambda: apply([g for g, _ in pairs]), 1))
        report.update(update_in_step=model._split.update_in_step, weights_updated=len(pairs))
    report.update(common.per_call_ms(fns, calls=32))
    if impl in ("tfrec", "deepctr-xla"):  # the XLA operations of tfrec's compiled call / DeepCTR's whole step
        report["profile"] = common.xla_op_profile(fns["xla_step_ms" if impl == "tfrec" else "keras_step_ms_one_per_call"][0])
    common.emit(report)


def child_turns(_, model_name, size_name):
    """Every contender's Keras train function at the batches per call its compile defaults to (what `fit`
    runs: tfrec's 32, DeepCTR's one), all four built in this one process and timed in turn
    (`common.per_call_ms`, the fastest of 7 rounds): ms per batch. Load from other processes then reaches
    every contender alike, which the planted part's one process per contender cannot promise."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    train_df, _, sizes = planted(SIZES[size_name])
    rows = train_df.iloc[:CONFIG["batch_size"]]
    fns = {}
    for impl in IMPLS:
        *_, steps = train_steps(impl, model_name, rows, sizes)
        fns[impl] = steps.get("keras_step_ms_default", steps["keras_step_ms_one_per_call"])
    common.emit(dict(model=model_name, batch=CONFIG["batch_size"], batches_per_call={i: f[1] for i, f in fns.items()},
                     ms_per_batch=common.per_call_ms(fns, calls=4)))


def separate_tables_twin(model_name, rows, sizes):
    """(model, its compiled step's inputs): tfrec's model with its six small tables in six variables,
    as before `FeatureEncoder` packed them into one: each column names its own initializer (the
    default's distribution), which keeps its table out of a pack. The same layers otherwise."""
    import tensorflow as tf
    from feature_columns import DenseFeat, SparseFeat, look_up_rows
    from tfrec.data import df_to_inputs
    import tfrec.models

    initializer = tf.keras.initializers.RandomNormal(mean=0.0, stddev=0.0001, seed=1024)
    columns = [SparseFeat(name, size, CONFIG["embedding_dim"], dtype="int32", embeddings_initializer=initializer)
               for name, size in sizes.items()] + [DenseFeat(name) for name in PLANTED_DENSE]
    tf.keras.utils.set_random_seed(1024)
    model = getattr(tfrec.models, model_name)(columns, seed=1024, task_names=tuple(PLANTED_TASKS))
    model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), ["binary_crossentropy"] * len(PLANTED_TASKS))
    x = {name: tf.constant(value) for name, value in look_up_rows(columns, df_to_inputs(rows, columns)).items()}
    return model, model._split.core_inputs(x)


def child_adult(impl, model_name, size_name):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    size = SIZES[size_name]
    train_df, test_df, sizes, dense_names = adult()
    report = dict(impl=impl, model=model_name, train_rows=len(train_df), test_rows=len(test_df),
                  epochs=size["adult_epochs"])
    common.emit(train_seeds(report, impl, model_name, (train_df, test_df, sizes, dense_names), ADULT_TASKS,
                            size["adult_epochs"], size["adult_seeds"]))


def run(kind, impl, model_name, flag):
    """One contender in its own process; a crash is reported like an in-process failure."""
    print(f"{kind}: {model_name} {impl} ...", flush=True)
    try:
        report = common.run_child(__file__, *flag, "--child", kind, impl, model_name,
                                  env=common.XLA_TRACE_ENV if kind == "step" else None)
    except RuntimeError as error:
        report = dict(impl=impl, model=model_name, error=f"crashed: {str(error).strip().splitlines()[-1][:200]}")
    print(f"  {report.get('error') or report.get('auc', 'done')} ({report.get('wall_s', 0):.0f} s)", flush=True)
    return report


def mean_std(values):
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def planted_table(runs, tasks):
    lines = ["| model | implementation | train ex/s (mean) | vs DeepCTR default | first epoch (s) | "
             + " | ".join(f"{t} AUC, mean ± std (oracle)" for t in tasks) + " | "
             + " | ".join(f"{t} AUC / oracle" for t in tasks) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * (2 * len(tasks))]
    for (model_name, impl), run_ in runs.items():
        name = f"| {model_name} | {IMPL_NAMES[impl]} |"
        if "error" in run_:
            lines.append(f"{name} fails: {run_['error']} |  |  |" + " |" * (2 * len(tasks)))
            continue
        speed = np.mean(run_["examples_per_s"])
        base = runs.get((model_name, "deepctr"), {})
        ratio = f"{speed / np.mean(base['examples_per_s']):.2f}x" if "error" not in base and base else "n/a"
        lines.append(f"{name} {speed:.0f} | {ratio} | {np.mean(run_['first_epoch_s']):.1f} | "
                     + " | ".join(f"{mean_std(run_['auc'][t])} ({run_['oracle_auc'][t]:.4f})" for t in tasks) + " | "
                     + " | ".join(f"{np.mean(run_['auc'][t]) / run_['oracle_auc'][t]:.3f}" for t in tasks) + " |")
    return lines


def fastest(runs, model_name, impls):
    """(impl, run) of the fastest of `impls` (mean over seeds) that trained `model_name`, or None."""
    trained = [(impl, runs[(model_name, impl)]) for impl in impls
               if "error" not in runs.get((model_name, impl), {"error": "not run"})]
    return max(trained, key=lambda pair: np.mean(pair[1]["examples_per_s"])) if trained else None


def auc_difference(ours, theirs, task):
    """(mean AUC of ours - mean of theirs, its standard error) over the seeds (0 with one seed)."""
    a, b = np.asarray(ours["auc"][task]), np.asarray(theirs["auc"][task])
    error = np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)) if min(len(a), len(b)) > 1 else 0.0
    return float(a.mean() - b.mean()), float(error)


def target_lines(runs, models, tasks):
    """Per model: tfrec's faster mode against DeepCTR's faster mode, the issue's target (>= 1.3x at AUC >= DeepCTR's)."""
    lines = ["| model | tfrec (faster mode) | DeepCTR (faster mode) | speed ratio | "
             + " | ".join(f"{t} AUC tfrec - DeepCTR (± s.e.)" for t in tasks) + " | target met |",
             "|---|---|---|---:|" + "---:|" * len(tasks) + "---|"]
    for model_name in models:
        ours, theirs = fastest(runs, model_name, IMPLS[:2]), fastest(runs, model_name, IMPLS[2:])
        if ours is None or theirs is None:
            lines.append(f"| {model_name} | {'fails' if ours is None else IMPL_NAMES[ours[0]]} | "
                         f"{'fails' if theirs is None else IMPL_NAMES[theirs[0]]} | n/a |" + " n/a |" * len(tasks)
                         + " n/a |")
            continue
        ratio = np.mean(ours[1]["examples_per_s"]) / np.mean(theirs[1]["examples_per_s"])
        deltas = [auc_difference(ours[1], theirs[1], t) for t in tasks]
        met = ratio >= 1.3 and all(d >= 0 for d, _ in deltas)
        lines.append(f"| {model_name} | {IMPL_NAMES[ours[0]]} | {IMPL_NAMES[theirs[0]]} | {ratio:.2f}x | "
                     + " | ".join(f"{d:+.4f} (± {e:.4f})" for d, e in deltas) + f" | {'yes' if met else 'no'} |")
    return lines


def adult_table(runs):
    lines = ["| model | implementation | train ex/s (mean) | vs DeepCTR default | "
             + " | ".join(f"{t} AUC (mean ± std)" for t in ADULT_TASKS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(ADULT_TASKS)]
    for (model_name, impl), run_ in runs.items():
        name = f"| {model_name} | {IMPL_NAMES[impl]} |"
        if "error" in run_:
            lines.append(f"{name} fails: {run_['error']} |  |" + " |" * len(ADULT_TASKS))
            continue
        speed = float(np.mean(run_["examples_per_s"]))
        base = runs.get((model_name, "deepctr"), {})
        ratio = f"{speed / np.mean(base['examples_per_s']):.2f}x" if "examples_per_s" in base else "n/a"
        lines.append(f"{name} {speed:.0f} | {ratio} | "
                     + " | ".join(mean_std(run_["auc"][t]) for t in ADULT_TASKS) + " |")
    return lines


def step_lines(runs):
    """The step-breakdown table and what it says dominated a tfrec step before the update joined the XLA call."""
    lines = ["| model | DeepCTR (default) | DeepCTR (`jit_compile=True`) | tfrec, before: forward + backward (XLA call) "
             "| tfrec, before: optimizer update (own call) | tfrec, now: whole step (one XLA call) "
             "| tfrec, now: Keras step at 1 batch per call | tfrec, now: Keras step at default batches per call |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for model_name in STEP_MODELS:
        ours, theirs, theirs_xla = (runs.get((model_name, impl), {}) for impl in ("tfrec", "deepctr", "deepctr-xla"))
        if any("error" in r or not r for r in (ours, theirs, theirs_xla)):
            failed = next(r.get("error", "missing") for r in (ours, theirs, theirs_xla) if "error" in r or not r)
            lines.append(f"| {model_name} | fails: {failed} |" + " |" * 6)
            continue
        lines.append(f"| {model_name} | {theirs['keras_step_ms_one_per_call']:.2f} | "
                     f"{theirs_xla['keras_step_ms_one_per_call']:.2f} | {ours['xla_forward_backward_ms']:.2f} | "
                     f"{ours['optimizer_call_ms']:.2f} | {ours['xla_step_ms']:.2f} | "
                     f"{ours['keras_step_ms_one_per_call']:.2f} | {ours['keras_step_ms_default']:.2f} "
                     f"({ours['steps_per_execution']}) |")
        before = ours["xla_forward_backward_ms"] + ours["optimizer_call_ms"]
        notes.append(f"{model_name}: the two calls took {before:.2f} ms, of which the optimizer's "
                     f"{ours['optimizer_call_ms']:.2f} ms ({100 * ours['optimizer_call_ms'] / before:.0f}%) for "
                     f"{ours['weights_updated']} weights; as one XLA call the step takes {ours['xla_step_ms']:.2f} ms "
                     f"(DeepCTR's whole Keras step with XLA {theirs_xla['keras_step_ms_one_per_call']:.2f} ms), and "
                     f"{ours['steps_per_execution']} batches per Keras call instead of one save a further "
                     f"{ours['keras_step_ms_one_per_call'] - ours['keras_step_ms_default']:.2f} ms per batch")
    return lines, notes


def profile_lines(runs):
    """What the XLA operations of a step cost: tfrec's compiled call and DeepCTR's `jit_compile=True` step."""
    lines = ["| model | step | XLA operations per step | their time summed over threads (ms) | wall time (ms) "
             "| dot (ms) | the largest other kinds (ms) |", "|---|---|---:|---:|---:|---:|---|"]
    for model_name in STEP_MODELS:
        for impl, step in (("tfrec", "tfrec's compiled call"), ("deepctr-xla", "DeepCTR's Keras step, `jit_compile=True`")):
            profile = runs.get((model_name, impl), {}).get("profile")
            if profile:
                others = ", ".join(f"{kind} {ms:.2f}" for kind, ms in profile["by_kind"].items() if kind != "dot")
                lines.append(f"| {model_name} | {step} | {profile['ops']} | {profile['busy_ms']:.2f} | "
                             f"{profile['wall_ms']:.2f} | {profile['by_kind'].get('dot', 0):.2f} | {others} |")
    return lines


def dispatch_line(runs):
    """What the profiles say bounds a step: the operations' share of the wall time."""
    profiles = [run["profile"] for run in runs.values() if run.get("profile")]
    if not profiles:
        return "(no profile)"
    ops = sorted(p["ops"] for p in profiles)
    busy = sorted(p["busy_ms"] / p["wall_ms"] for p in profiles)
    return ("The operations run for " + f"{busy[0]:.2f}-{busy[-1]:.2f}" + " of the wall time summed over both "
            "threads (it could reach 2 on 2 cores; the wall time is the traced one, which the trace itself lengthens a "
            "little, so the share is a lower bound); the rest of a step is spent between them, dispatching "
            f"{ops[0]}-{ops[-1]} small operations per batch of 1024, in both implementations. A step this size is "
            "bound by the operations XLA's CPU runtime dispatches and by what each call passes in and out, not by "
            "arithmetic, and DeepCTR's XLA step dispatches as many operations. What took tfrec past 1.3x is the "
            "second: at its default 32 batches per Keras call, `fit` trains them in one XLA loop, so the weights and "
            "the optimizer's slots stay inside the call from one step to the next (the last column of the table "
            "above, against the whole step as one XLA call per batch). One Adam "
            "update for all dense weights is not the way: a trial (not kept) that concatenated their gradients, "
            "moments and weights, updated them once and split them back made the XLA step slower (2026-12-05, "
            "`python benchmarks/bench_multitask.py --child step tfrec MODEL`: MMOE 10.09 against 8.97 ms, ESMM "
            "6.52 against 5.89 ms); the concatenations and splits cost more than the per-weight kernels they replace. "
            + packing_sentence(runs))


def packing_sentence(runs):
    """What packing the six small tables into one variable saves, from the step children's twin."""
    pairs = [(model_name, run) for model_name in STEP_MODELS
             if "xla_step_ms_separate_tables" in (run := runs.get((model_name, "tfrec"), {}))]
    if not pairs:
        return ""
    return ("Fewer operations is what packing the small tables does: tfrec stores the six small tables in one "
            "variable (`FeatureEncoder(pack_small_tables=True)`), one layer call looks them up and LazyAdam makes one "
            "update instead of six. The same model with six variables (`separate_tables_twin`), its compiled step "
            "measured in turn with the packed one, takes "
            + "; ".join(f"{model_name} {run['xla_step_ms_separate_tables']:.2f} against {run['xla_step_ms']:.2f} ms "
                        f"packed ({percent_less(run['xla_step_ms'], run['xla_step_ms_separate_tables'])})"
                        for model_name, run in pairs) + ".")


def percent_less(value, reference):
    """'5% less', '3% more' or 'the same' for `value` against `reference`."""
    saving = round(100 * (1 - value / reference))
    return f"{saving}% less" if saving > 0 else f"{-saving}% more" if saving < 0 else "the same"


def faster_mode_ms(ms_per_batch, library):
    """The ms per batch of `library`'s faster contender ("tfrec" or "deepctr": with or without XLA)."""
    return min(ms for impl, ms in ms_per_batch.items() if impl.startswith(library))


def turns_section(flag, processes):
    """Section multitask_turns: each model's four contenders taking turns in one process, `processes` times."""
    runs = {model_name: [run("turns", "all", model_name, flag) for _ in range(processes)] for model_name in MODELS}
    batches = next((report["batches_per_call"] for reports in runs.values() for report in reports
                    if "batches_per_call" in report), {"tfrec": "?", "deepctr": "?"})  # "?": every child failed
    lines = ["### Speed taking turns in one process", "",
             f"Command: `python benchmarks/bench_multitask.py --turns{' --quick' if flag else ''}` "
             f"({common.machine_line()}, {common.commit_line()}).", "",
             "The planted part above trains each contender in a process of its own, one after the other, so the "
             "machine's load can change between them, and its speed ratios move by up to a fifth from run to run. "
             "Here the four contenders of a model are built in one process and their Keras train functions timed "
             f"in turn on one planted batch of {CONFIG['batch_size']} rows fed from memory, each at the batches per "
             f"call its compile defaults to (what `fit` runs: tfrec {batches['tfrec']}, DeepCTR {batches['deepctr']}): "
             "ms per batch, the fastest of 7 rounds (`--child turns`, `common.per_call_ms`). No input pipeline and no metrics "
             "between steps, so these ratios are the steps' alone. "
             f"{processes} such processes per model, one after the other; a cell is their median, the range in "
             "brackets.", "",
             "| model | " + " | ".join(IMPL_NAMES[impl] + " ms per batch" for impl in IMPLS)
             + " | tfrec / DeepCTR, faster modes | target >= 1.3x |",
             "|---|" + "---:|" * len(IMPLS) + "---:|---|"]
    for model_name, reports in runs.items():
        good = [report["ms_per_batch"] for report in reports if "ms_per_batch" in report]
        if not good:
            lines.append(f"| {model_name} | fails: {reports[0].get('error', 'no report')} |" + " |" * (len(IMPLS) + 1))
            continue
        ratios = sorted(faster_mode_ms(ms, "deepctr") / faster_mode_ms(ms, "tfrec") for ms in good)
        median = float(np.median(ratios))
        lines.append(f"| {model_name} | " + " | ".join(f"{np.median([ms[impl] for ms in good]):.2f}" for impl in IMPLS)
                     + f" | {median:.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}) | {'met' if median >= 1.3 else '**not met**'} |")
    common.write_section("multitask_turns", "\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--turns", action="store_true",
                        help="only the speed ratios measured taking turns in one process (section multitask_turns)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "IMPL", "MODEL"))
    args = parser.parse_args()
    size_name = "quick" if args.quick else "full"
    if args.child:
        kind, impl, model_name = args.child
        return {"planted": child_planted, "adult": child_adult, "step": child_step,
                "turns": child_turns}[kind](impl, model_name, size_name)

    flag = ["--quick"] if args.quick else []
    if args.turns:
        return turns_section(flag, TURNS_PROCESSES[size_name])
    size = SIZES[size_name]
    tasks = list(PLANTED_TASKS)
    planted_runs = {}
    for model_name in MODELS:
        for impl in size["impls"]:
            planted_runs[(model_name, impl)] = run("planted", impl, model_name, flag)
    # On Adult both sides run as shipped (no XLA): the XLA comparison is above, and per-seed XLA compilation
    # would dominate the wall time of these small runs.
    adult_runs = {}
    for model_name in size["adult_models"] if os.path.exists(ADULT_PATH) else ():
        for impl in ("tfrec", "deepctr"):
            adult_runs[(model_name, impl)] = run("adult", impl, model_name, flag)

    step_runs = {}
    for model_name in STEP_MODELS:
        for impl in ("tfrec", "deepctr", "deepctr-xla"):
            step_runs[(model_name, impl)] = run("step", impl, model_name, flag)

    command = f"python benchmarks/bench_multitask.py{' --quick' if args.quick else ''}"
    any_planted = next(r for r in planted_runs.values() if "train_rows" in r)
    any_adult = next((r for r in adult_runs.values() if "train_rows" in r), None)
    esmm = [(impl, run_) for (model_name, impl), run_ in planted_runs.items() if run_.get("cvr_auc")]
    lines = [
        "## Multi-task: MMOE, PLE, ESMM, SharedBottom vs DeepCTR 0.9.4",
        "",
        f"Command: `{command}` ({common.machine_line()}). Every figure below comes from this one run.",
        "",
        "### Planted multi-task data",
        "",
        f"`tfrec.data.make_multitask_data(num_samples={size['train_rows'] + size['test_rows']}, seed=0)` (default "
        f"task relatedness 0.5): first {any_planted['train_rows']} rows train, last {any_planted['test_rows']} test. "
        "Tasks: `ctr` (label click, oracle p_click) and `ctcvr` (label conversion, which implies a click; oracle "
        "p_ctcvr). Features: user_id, item_id, cate_id, age_group, device, hour as integer ids (device "
        "integer-encoded for both sides), price and user_activity dense. Config: batch "
        f"{CONFIG['batch_size']}, embedding {CONFIG['embedding_dim']}, each model's DeepCTR default sizes (MMOE: 3 "
        "experts 256-128, towers 64; PLE: 1 shared + 1 specific expert per task, 2 levels, experts 256, towers 64; "
        "ESMM: towers 256-128-64; SharedBottom: bottom 256-128, towers 64), Adam 1e-3, binary cross-entropy on both "
        f"heads, {size['epochs']} epoch(s), {size['planted_seeds']} seed(s) (1024, 1025, ...: initialisation and "
        "shuffling), each contender in its own process on the same numpy arrays; AUC and speed are means over the "
        "seeds. "
        + ("Train ex/s is the only epoch's, so it includes graph building / XLA compilation."
           if size["epochs"] == 1 else "Train ex/s is steady state: over every epoch after the first (which builds "
           "and compiles the graph; its wall time is the first-epoch column).")
        + " AUC is exact (rank based) on the test rows.",
        "",
        *planted_table(planted_runs, tasks),
        "",
        "Issue target (>= 1.3x DeepCTR's speed at equal or better AUC on every task), each side in its faster "
        "mode of the two above; \"target met\" reads the AUC condition strictly (a difference of the means >= 0), "
        "although a difference within about two standard errors (in brackets: of the difference of the means over "
        "the seeds) is within seed noise:",
        "",
        *target_lines(planted_runs, MODELS, tasks),
    ]
    if esmm:
        clicked = esmm[0][1]["clicked_test_rows"]
        lines += ["", f"ESMM's CVR head (pCVR, the factor of pCTCVR = pCTR x pCVR) on the {clicked} clicked test "
                  f"impressions, label conversion, oracle p_conversion_given_click "
                  f"{esmm[0][1]['cvr_oracle_auc']:.4f}: "
                  + "; ".join(f"{IMPL_NAMES[impl]} {mean_std(r['cvr_auc'])}" for impl, r in esmm) + "."]
    table, notes = step_lines(step_runs)
    lines += [
        "",
        "### Where a training step's time goes",
        "",
        f"One batch of {CONFIG['batch_size']} planted training rows, fed again and again from memory (no input "
        "pipeline, no shuffling), each contender in its own process; ms per batch, the fastest of 7 rounds of 32 "
        "calls, the measurements of one process taking turns (`--child step IMPL MODEL`). \"Keras step\" is "
        "Keras' train function, what `fit` calls per batch (or per `steps_per_execution` batches): data, the "
        "compiled step, metrics. \"Before\" is tfrec's step "
        "before the optimizer update joined the XLA call, rebuilt from today's parts: forward + backward as one "
        "XLA call (`_TrainingSplit(..., update_in_step=False)`), then `optimizer.apply_gradients` as a call of "
        "its own, in which Keras compiles each weight's update as a separate XLA function (one launch per "
        "weight). It uses today's LazyAdam, whose masked update of a small table needs no tf.unique; the "
        "LazyAdam of before also ran a tf.unique per table, so it took at least this long.",
        "",
        *table,
        "",
        "What dominated: inside the XLA call, the matrix products of the experts / bottom and towers (most of "
        "the time of the operations XLA runs, table below); around it, in tfrec's step "
        "before this change, the optimizer update as a call of its own (DeepCTR's `jit_compile=True` step has "
        "it inside its one XLA call) and Keras' per-call work (which both pay at one batch per call). "
        "Measured here: " + "; ".join(notes) + ". So the "
        "update now runs inside the XLA call when every table is small enough for LazyAdam's masked update "
        "(no tf.unique, which XLA compiles to a sort), and `compile` defaults to "
        "`steps_per_execution=32`.",
        "",
        "Inside the XLA call, from a `tf.profiler` trace of 5 calls (`common.xla_op_profile`, XLA's CPU runtime "
        "recording each operation it runs: a fusion of elementwise work, a matrix product (`dot`), a copy):",
        "",
        *profile_lines(step_runs),
        "",
        dispatch_line(step_runs),
    ]
    lines += ["", "### Real data: UCI Adult (census income)", ""]
    if not adult_runs:
        lines.append(f"Not run: no UCI Adult file at {ADULT_PATH} (download `adult.data` from the UCI repository "
                     "and set UCI_ADULT_PATH, or put it at data/uci-adult/adult.data).")
    elif any_adult is None:
        lines += ["Every run failed:", "", *adult_table(adult_runs)]
    else:
        lines += adult_lines(any_adult, adult_runs, size)
    common.write_section("multitask", "\n".join(lines))


def adult_lines(any_adult, adult_runs, size):
    """The Adult part: how it was run, and its table."""
    return [
        "UCI Adult's `adult.data` (the census-income training file, 32,561 rows), read by "
        "`tfrec.data.load_adult(path)`; a fixed permutation (numpy seed 0), first 80% "
        f"({any_adult['train_rows']}) train, last 20% ({any_adult['test_rows']}) test. Tasks: `income` (>50K) and "
        "`never_married` (marital-status; marital-status and relationship are not inputs). Features: 6 categorical "
        "columns as integer ids (integer-encoded for both sides), 6 standardised numeric columns. Same config as "
        f"above, {size['adult_epochs']} epochs, mean ± std over {size['adult_seeds']} seed(s) (1024, 1025, ...: "
        "initialisation and shuffling; the split is fixed). No oracle exists for real data. Each runs its default "
        "compile (tfrec: XLA after the lookups; DeepCTR: no XLA). Train ex/s as above, mean over seeds. ESMM is left out: its heads are P(click) and P(click and conversion), a chain in "
        "which the second event requires the first; income and never-married are two parallel targets, so "
        "ESMM's `ctcvr = ctr x cvr` structure would be wrong for them.",
        "",
        *adult_table(adult_runs),
    ]


if __name__ == "__main__":
    main()
