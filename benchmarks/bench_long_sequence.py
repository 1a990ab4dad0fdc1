"""Long sequences: SIM (hard, soft and SimHash search) and CLSR against DIN: latency, memory, quality.

    python -m benchmarks.bench_long_sequence                   # every part, full sizes
    python -m benchmarks.bench_long_sequence --part latency    # one part: latency | turns | memory | quality
    python -m benchmarks.bench_long_sequence --quick           # tiny sizes (a smoke test), with or without --part

Writes the "long_sequence" section of BENCHMARKS.md. Each part rewrites only its own block inside
it ("long_sequence_latency", "long_sequence_turns", ...), with the command,
date and commit that produced it, so the parts can run (and be rerun) separately.

* latency: p50 / p99 time to score 100 candidates for one user (a request of 100 rows sharing one
  history of L events) at each L, for SIM with each search (topk 50, short_maxlen 50, times) and DIN
  attending over the whole history (maxlen L); (a) a `tf.function` of the model on tensors, (b) the
  exported `serving_default` signature loaded with `tf.saved_model.load`, fed the dtypes a serving
  client sends, (c) gRPC Predict to `serving.LocalServer` through `serving.Client`, every row as
  given; (d)-(f) the same with the history sent once (the export's `shared_history` signature);
  (g) the request of (c) with `serving.Client`'s default signature, which itself sends the history once;
  (h), (i) the same two over REST.
  Untrained models: the cost is the same ops on the same shapes whatever the weights.
* turns: DIN against each SIM at L = 10,000 through (b) and the `shared_history` signature, all
  four exports loaded in one process and called in turn (`common.per_call_ms`: the fastest of
  several rounds), so the ratio the issue targets does not move with the machine's load between
  the latency part's processes; five such processes, their median and range.
* memory: the peak RSS of a few SIM training steps at L = 10,000, batch 256, one process per model,
  against the same process's high-water mark once data and model are built; and the largest
  tensors of the model's training step (forward and gradients) traced with static shapes.
* quality: test AUC against the oracle's on `make_long_history_setting("longterm")` (SIM, DIN) and
  ("drift") (CLSR, DIN), trained as tests/tfrec/test_sim.py does (Adam 3e-3, batch 256, 3 epochs).

Every configuration runs in its own Python process (`common.run_child`).
"""
import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402
from benchmarks.bench_din import EpochTimer, StepTimer  # noqa: E402
from benchmarks.bench_multitask import steady_examples_per_s  # noqa: E402

SECTION = "long_sequence"
PARTS = ("latency", "turns", "memory", "quality")
HISTORY = ["item_id", "cate_id"]
# The tests' sizes (tests/tfrec/test_sim.py): embedding 8, DNN (64, 32), attention (32, 16).
EMBEDDING_DIM = 8
SMALL = dict(dnn_hidden_units=(64, 32), att_hidden_size=(32, 16), att_weight_normalization=True)
SIM_CONFIG = dict(topk=50, short_maxlen=50, time_feature="timestamp")
SEARCHES = ("hard", "soft", "simhash")
LEARNING_RATE, BATCH = 3e-3, 256
CANDIDATES = 100  # rows of one latency request, all with the same user and history

SIZES = {
    "full": dict(
        lengths=(100, 1_000, 10_000), grpc_lengths=(100, 1_000, 10_000),
        warmup=5, min_reps=50, max_reps=1_000, budget_s=15.0, turn_calls=5, turn_rounds=15, turn_processes=5,
        memory_length=10_000, memory_steps=6, memory_models=("sim-hard", "sim-soft", "sim-simhash", "din"),
        overrides={"longterm": {}, "drift": {}}, long_maxlen=2_000, epochs=3, seeds=(0, 1, 2),
    ),
    "quick": dict(
        lengths=(100, 400), grpc_lengths=(400,),
        warmup=2, min_reps=10, max_reps=40, budget_s=1.0, turn_calls=2, turn_rounds=2, turn_processes=1,
        memory_length=1_000, memory_steps=3, memory_models=("sim-hard", "sim-soft", "sim-simhash", "din"),
        overrides={"longterm": dict(num_users=120, history_length=300), "drift": dict(num_users=120)},
        long_maxlen=300, epochs=1, seeds=(0,),
    ),
}
MODEL_NAMES = {
    "sim-hard": "SIM, hard search", "sim-soft": "SIM, soft search", "sim-simhash": "SIM, SimHash search",
    "din": "DIN", "clsr": "CLSR",
}
LATENCY_MODELS = ("sim-hard", "sim-soft", "sim-simhash", "din")
PATHS = {"in_process": "(a) in process, `tf.function`", "signature": "(b) exported signature",
         "grpc": "(c) gRPC, `serving_default` named",
         "in_process_shared": "(d) as (a), history sent once", "signature_shared": "(e) `shared_history` signature",
         "grpc_shared": "(f) gRPC, `shared_history`", "grpc_client": "(g) gRPC, `serving.Client`'s default",
         "rest": "(h) REST, `serving_default` named", "rest_client": "(i) REST, `serving.RestClient`'s default"}


def quality_configs(size):
    """(setting, model, maxlen) of the quality part."""
    long_maxlen = size["long_maxlen"]
    return ([("longterm", f"sim-{search}", long_maxlen) for search in SEARCHES]
            + [("longterm", "din", 50), ("longterm", "din", long_maxlen),
               ("drift", "clsr", 100), ("drift", "din", 100)])


# --- children -----------------------------------------------------------------------------------

def without_time(columns):
    return [column for column in columns if "timestamp" not in column.name]


def build(model_name, columns):
    """(model, the columns it reads): SIM on every column, DIN and CLSR on all but the times."""
    if model_name == "din":
        from tfrec.models import DIN
        return DIN(without_time(columns), HISTORY, **SMALL), without_time(columns)
    if model_name == "clsr":
        from tfrec.models import CLSR
        return CLSR(without_time(columns), HISTORY, user_feature="user_id", **SMALL), without_time(columns)
    from tfrec.models import SIM
    return SIM(columns, HISTORY, search=model_name.split("-", 1)[1], **SIM_CONFIG, **SMALL), columns


def one_history(length, users, targets_per_user, test_share):
    """make_long_history_setting("longterm") frames whose every history has exactly `length` events."""
    from tfrec.data.long_history import make_long_history_setting

    return make_long_history_setting("longterm", num_users=users, targets_per_user=targets_per_user,
                                     history_length=length, min_history_length=length, test_share=test_share,
                                     seed=0)


def timed(fn, size):
    """{p50_ms, p99_ms, n}: `fn()` after `warmup` calls, at least min_reps times, more within budget_s."""
    for _ in range(size["warmup"]):
        fn()
    samples, deadline = [], time.perf_counter() + size["budget_s"]
    while len(samples) < size["min_reps"] or (len(samples) < size["max_reps"] and time.perf_counter() < deadline):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return dict(p50_ms=common.percentile_ms(samples, 50), p99_ms=common.percentile_ms(samples, 99), n=len(samples))


def exported_signatures(model, columns, test, base):
    """`model` exported under `base`, then ((serving_default, its feed), (shared_history, its
    feed)): the feeds are the `test` rows cast to the signature's dtypes (what a serving client
    sends), with the history as one row for shared_history."""
    import numpy as np
    import tensorflow as tf
    from exporters import export_saved_model
    from feature_columns import history_input_names
    from tfrec.data import df_to_inputs

    export_saved_model(model, base, warmup_inputs=df_to_inputs(test.head(2), columns), model_name="model")
    version = sorted(os.scandir(base), key=lambda entry: int(entry.name))[-1].path
    signatures = tf.saved_model.load(version).signatures
    request, shared = df_to_inputs(test, columns), history_input_names(model)
    specs = signatures["serving_default"].structured_input_signature[1]
    feed = {name: tf.constant(np.asarray(request[name]).astype(spec.dtype.as_numpy_dtype))
            for name, spec in specs.items()}
    shared_feed = {name: value[:1] if name in shared else value for name, value in feed.items()}
    return (signatures["serving_default"], feed), (signatures["shared_history"], shared_feed)


def in_process_call(model, request):
    """Path (a): (a `tf.function` of `model` for inference, `request`'s model inputs as tensors)."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False)), {name: tf.constant(request[name])
                                                              for name in model.input_names}


def child_latency(model_name, length, size_name, workdir):
    size = SIZES[size_name]
    import numpy as np
    import tensorflow as tf
    from feature_columns import history_input_names
    from tfrec.data import df_to_inputs
    from tfrec.data.long_history import long_history_feature_columns

    # One user's 100 impressions share that user's history: test_share 0.5 of 2 users is that user.
    train, test = one_history(length, users=2, targets_per_user=CANDIDATES, test_share=0.5)
    tf.keras.utils.set_random_seed(0)
    model, columns = build(model_name, long_history_feature_columns((train, test), length, EMBEDDING_DIM))
    model.refresh_derived_weights()  # SimHash: the signatures of the (untrained) tables, as an export has
    request = df_to_inputs(test, columns)
    if len(test) != CANDIDATES or set(test.seq_length) != {length} or test.user_id.nunique() != 1:
        raise RuntimeError("the request is not 100 rows of one user with one history of L events")
    report = dict(model=model_name, length=length, rows=len(test),
                  request_mib=sum(np.asarray(v).nbytes for v in request.values()) / 2**20)

    # (a) In process: a tf.function of the model, called on tensors.
    call, tensors = in_process_call(model, request)
    in_process = call(tensors).numpy().ravel()
    report["in_process"] = timed(lambda: call(tensors).numpy(), size)

    # (b) The exported serving_default signature, fed what a serving client sends (int64 ids and
    # times, the signature's dtype for every input).
    base = os.path.join(workdir, f"{model_name}-{length}")
    (signature, feed), (shared_signature, shared_feed) = exported_signatures(model, columns, test, base)
    report["feed_dtypes"] = sorted({value.dtype.name for value in feed.values()})
    signed = signature(**feed)["prediction"].numpy().ravel()
    report["max_abs_diff_signature"] = float(np.max(np.abs(signed - in_process)))
    report["signature"] = timed(lambda: signature(**feed)["prediction"].numpy(), size)

    # (d)-(f) The same request with the history sent once (1 row) for all 100 candidates: the model
    # called directly, the export's `shared_history` signature, and gRPC Predict to that signature.
    shared = history_input_names(model)  # the hist_ sequences and their length
    shared_request = {name: np.asarray(value)[:1] if name in shared else value for name, value in request.items()}
    shared_tensors = {name: tf.constant(shared_request[name]) for name in model.input_names}
    report["max_abs_diff_in_process_shared"] = float(np.max(np.abs(call(shared_tensors).numpy().ravel() - in_process)))
    report["in_process_shared"] = timed(lambda: call(shared_tensors).numpy(), size)
    signed = shared_signature(**shared_feed)["prediction"].numpy().ravel()
    report["max_abs_diff_signature_shared"] = float(np.max(np.abs(signed - in_process)))
    report["signature_shared"] = timed(lambda: shared_signature(**shared_feed)["prediction"].numpy(), size)
    report["request_shared_mib"] = sum(np.asarray(v).nbytes for v in shared_request.values()) / 2**20

    # (c), (f)-(i) Predict to the local model server, over gRPC and REST.
    if length in size["grpc_lengths"]:
        from serving import Client, LocalServer, RestClient

        with LocalServer(model_base_path=base, model_name="model") as server, \
                Client(server.grpc_target, timeout=600) as client, RestClient(server.rest_url, timeout=600) as rest:
            served_paths = (
                ("grpc", client, request, "serving_default"),  # (c) the rows as given, as any TF Serving client
                ("grpc_shared", client, shared_request, "shared_history"),  # (f) the history sent once by hand
                ("grpc_client", client, request, None),  # (g) the client's default: it sends the history once
                ("rest", rest, request, "serving_default"),  # (h), (i) the same over REST, where rows become JSON
                ("rest_client", rest, request, None))
            for path, served_by, feed, signature_name in served_paths:
                call = functools.partial(served_by.predict, "model", feed, signature_name=signature_name)
                served = np.asarray(call()["prediction"]).ravel()
                report[f"max_abs_diff_{path}"] = float(np.max(np.abs(served - in_process)))
                report[path] = timed(call, size)
            report["server_peak_rss_mib"] = common.process_peak_rss_mib(server.pid)
    report["peak_rss_mib"] = common.peak_rss_mib()
    common.emit(report)


def child_turns(size_name, workdir):
    """DIN and each SIM at the longest L, exported and called in turn in this one process."""
    size = SIZES[size_name]
    import tensorflow as tf
    from tfrec.data import df_to_inputs
    from tfrec.data.long_history import long_history_feature_columns

    length = size["lengths"][-1]
    train, test = one_history(length, users=2, targets_per_user=CANDIDATES, test_share=0.5)
    calls = {"in_process": {}, "signature": {}, "signature_shared": {}}
    for model_name in LATENCY_MODELS:
        tf.keras.utils.set_random_seed(0)
        model, columns = build(model_name, long_history_feature_columns((train, test), length, EMBEDDING_DIM))
        model.refresh_derived_weights()
        call, tensors = in_process_call(model, df_to_inputs(test, columns))
        calls["in_process"][model_name] = (lambda call=call, tensors=tensors: call(tensors), 1)
        signatures = exported_signatures(model, columns, test, os.path.join(workdir, f"turns-{model_name}"))
        for path, (signature, feed) in zip(("signature", "signature_shared"), signatures):
            calls[path][model_name] = (lambda signature=signature, feed=feed: signature(**feed)["prediction"], 1)
    common.emit(dict(length=length, calls=size["turn_calls"], rounds=size["turn_rounds"],
                     **{path: common.per_call_ms(fns, size["turn_calls"], size["turn_rounds"])
                        for path, fns in calls.items()}))


def current_rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def training_graph_tensors(model, batch, length, top=3):
    """The largest tensors of one training step (forward and gradients), traced with static shapes.

    Returns dict(largest=[(MiB, shape, dtype, op)], rank4_with_l=[...], unknown=count): every op
    output of the traced graph whose shape is fully known, the `top` largest by bytes; those of
    rank >= 4 with an axis of length `length`; and how many outputs have a shape not fully known
    (not covered by the check).
    """
    import tensorflow as tf

    specs = {}
    for name, tensor in zip(model.input_names, model.inputs):
        shape = [batch] + [length if d is None else d for d in tensor.shape[1:]]
        specs[name] = tf.TensorSpec(shape, tensor.dtype, name=name)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(y, model(x, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    graph = step.get_concrete_function(specs, tf.TensorSpec((batch, 1), tf.float32)).graph
    sized, unknown = [], 0
    for op in graph.get_operations():
        for output in op.outputs:
            if output.dtype == tf.resource or output.dtype == tf.variant:
                continue
            if not output.shape.is_fully_defined():
                unknown += 1
                continue
            size_mib = output.shape.num_elements() * output.dtype.size / 2**20
            sized.append((size_mib, output.shape.as_list(), output.dtype.name, op.type))
    sized.sort(key=lambda entry: -entry[0])
    return dict(largest=sized[:top], rank4_with_l=[e for e in sized if len(e[1]) >= 4 and length in e[1]],
                unknown=unknown, tensors=len(sized))


def child_memory(model_name, size_name):
    size = SIZES[size_name]
    length, steps = size["memory_length"], size["memory_steps"]
    import tensorflow as tf
    from tfrec.data import df_to_dataset
    from tfrec.data.long_history import long_history_feature_columns

    # steps x 256 rows, 8 impressions per user, every history exactly L events.
    train, _ = one_history(length, users=steps * BATCH // 8, targets_per_user=8, test_share=0.0)
    tf.keras.utils.set_random_seed(0)
    model, columns = build(model_name, long_history_feature_columns(train, length, EMBEDDING_DIM))
    model.compile(tf.keras.optimizers.Adam(LEARNING_RATE), "binary_crossentropy")
    # Not shuffled: a whole-frame shuffle buffer would add a copy of the data to the peak.
    dataset = df_to_dataset(train, columns, "click", batch_size=BATCH, shuffle=False)
    input_mib = len(train) * sum(spec.shape[1:].num_elements() * spec.dtype.size
                                 for spec in tf.nest.flatten(dataset.element_spec)) / 2**20
    report = dict(model=model_name, length=length, batch=BATCH, steps=steps, rows=len(train), input_mib=input_mib,
                  baseline_peak_mib=common.peak_rss_mib(), baseline_rss_mib=current_rss_mib())
    timer = StepTimer()
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[timer.callback])
    report.update(fit_s=time.perf_counter() - started, peak_mib=common.peak_rss_mib(), rss_after_mib=current_rss_mib(),
                  first_step_s=timer.stamps[1] - timer.stamps[0])
    later = sorted(b - a for a, b in zip(timer.stamps[1:], timer.stamps[2:]))  # the steps after the first
    report["median_step_ms"] = 1000 * later[len(later) // 2] if later else None
    report["graph"] = training_graph_tensors(model, BATCH, length)
    common.emit(report)


def child_quality(setting, model_name, maxlen, seed, size_name):
    size = SIZES[size_name]
    import tensorflow as tf
    from tfrec import metrics
    from tfrec.data import df_to_dataset
    from tfrec.data.long_history import long_history_feature_columns, make_long_history_setting
    from tfrec.data.planted import oracle_auc

    report = dict(setting=setting, model=model_name, maxlen=maxlen, seed=seed)
    train, test = make_long_history_setting(setting, seed=seed, **size["overrides"][setting])
    all_columns = long_history_feature_columns((train, test), maxlen, EMBEDDING_DIM)
    tf.keras.utils.set_random_seed(seed)
    model, columns = build(model_name, all_columns)
    model.compile(tf.keras.optimizers.Adam(LEARNING_RATE), "binary_crossentropy")
    timer = EpochTimer()
    started = time.perf_counter()
    model.fit(df_to_dataset(train, columns, "click", batch_size=BATCH, seed=seed), epochs=size["epochs"], verbose=0,
              callbacks=[timer.callback])
    fit_s = time.perf_counter() - started
    scores = model.predict(df_to_dataset(test, columns, batch_size=1024, shuffle=False), verbose=0).ravel()
    labels = test.click.to_numpy()
    report.update(train_rows=len(train), test_rows=len(test), epochs=size["epochs"], epoch_s=timer.seconds, fit_s=fit_s,
                  examples_per_s=steady_examples_per_s(len(train), timer.seconds),
                  auc=metrics.auc(labels, scores), oracle_auc=oracle_auc(labels, test.p_click.to_numpy()),
                  peak_rss_mib=common.peak_rss_mib())
    common.emit(report)


# --- parent -------------------------------------------------------------------------------------

def run(flag, *args):
    """One child; a crash comes back as {"error": ...} so the other configurations still run."""
    print(" ".join(map(str, args)), "...", flush=True)
    try:
        report = common.run_child(__file__, *flag, "--child", *args)
    except RuntimeError as error:
        report = dict(error=str(error).strip().splitlines()[-1][:300])
    print("  " + json.dumps(report)[:400], flush=True)
    return report


def ms(entry):
    return f"{entry['p50_ms']:.2f} / {entry['p99_ms']:.2f} ({entry['n']})" if entry else "-"


def each(values, spec):
    """Per-seed figures, "a / b"."""
    return " / ".join(format(value, spec) for value in values)


def verdict(met):
    return "met" if met else "**not met**"


def latency_part(size, flag, workdir):
    runs = {(model, length): run(flag, "latency", model, length, workdir)
            for length in size["lengths"] for model in LATENCY_MODELS}
    shortest, longest = size["lengths"][0], size["lengths"][-1]
    lines = [
        f"### Latency against history length: {CANDIDATES} candidates for one user",
        "",
        f"One request: the {CANDIDATES} impressions of one user of `make_long_history_setting(\"longterm\", "
        "num_users=2, targets_per_user=100, history_length=L, min_history_length=L, test_share=0.5, seed=0)` "
        f"(the test user): {CANDIDATES} rows with the same history of exactly L events (item, category, "
        "time), fed as the model's raw inputs: in (a)-(c) and (g)-(i) every row carries the whole history, in "
        "(d)-(f) the history is sent once, as one row, for all 100 candidates (the export's `shared_history` "
        "signature). Models are built with the "
        "tests' sizes (embedding 8, DNN 64-32, attention 32-16 with weight normalisation) and left untrained: "
        "the weights do not change the ops or the shapes, so not the cost either. SIM: topk 50, short_maxlen "
        "50, time_feature \"timestamp\", maxlen L (it searches the whole history); DIN: maxlen L, attending "
        "over all L events. Paths: (a) `tf.function(lambda x: model(x, training=False))` on tensors; "
        "(b) `exporters.export_saved_model`, `tf.saved_model.load(...).signatures[\"serving_default\"]`, fed "
        "numpy arrays cast to the signature's dtypes (int64 ids and times, as `serving.Client` sends); "
        "(c) gRPC Predict to `serving.LocalServer` (the model server in a subprocess on this machine) through "
        "`serving.Client` with `signature_name=\"serving_default\"`: every row goes out as given, as any TF "
        "Serving client sends it; (d) the function of (a) fed the history once; (e) the export's "
        "`shared_history` signature; (f) gRPC Predict to it (`signature_name=\"shared_history\"`); (g) the "
        "request of (c) through `serving.Client.predict` with its default signature, which sends a history "
        "repeated on every row once, to `shared_history`, when its rows hold at least "
        "`feature_columns.ONE_HISTORY_MIN_ELEMENTS` events in all (not at L = 100); (h) and (i) the same "
        "two over the server's REST API through `serving.RestClient` (JSON). Each cell: p50 / p99 ms "
        f"(sequential calls timed, after {size['warmup']} warm-up "
        f"calls; at least {size['min_reps']}, and up to {size['max_reps']} within {size['budget_s']:g} s). "
        "One process per (model, L).",
        "",
        "| model | L | request (MiB), (a)-(c) / (d)-(f) | "
        + " | ".join(f"{name} p50 / p99 ms (calls)" for name in PATHS.values()) + " |",
        "|---|---:|---:|" + "---:|" * len(PATHS),
    ]
    for (model, length), r in runs.items():
        if "error" in r:
            lines.append(f"| {MODEL_NAMES[model]} | {length:,} | fails: {r['error']} |" + " |" * len(PATHS))
            continue
        lines.append(f"| {MODEL_NAMES[model]} | {length:,} | {r['request_mib']:.1f} / {r['request_shared_mib']:.2f} | "
                     + " | ".join(ms(r.get(path)) for path in PATHS) + " |")
    diffs = [r[key] for r in runs.values() for key in r if key.startswith("max_abs_diff_")]
    if diffs:
        lines += ["", f"Scores of (b)-(i) against (a): max |diff| {max(diffs):.1e} over every request."]

    lines += ["", f"Issue targets: SIM at L = {longest:,} at least 20x faster than DIN over the same history "
              f"(DIN p50 / SIM p50), and SIM's p50 growing less than 3x from L = {shortest:,} to L = {longest:,} "
              f"(SIM p50 at {longest:,} / at {shortest:,}):", "",
              "| search | path | DIN / SIM at L = " + f"{longest:,} | target >= 20x | SIM {longest:,} / {shortest:,} "
              "| target < 3x |", "|---|---|---:|---|---:|---|"]
    for search in SEARCHES:
        model = f"sim-{search}"
        for path, path_name in PATHS.items():
            sim_long, din_long = runs[(model, longest)].get(path), runs[("din", longest)].get(path)
            sim_short = runs[(model, shortest)].get(path)
            speedup = din_long["p50_ms"] / sim_long["p50_ms"] if sim_long and din_long else None
            growth = sim_long["p50_ms"] / sim_short["p50_ms"] if sim_long and sim_short else None
            if speedup is None and growth is None:
                continue
            lines.append(f"| {search} | {path_name} | "
                         + (f"{speedup:.1f}x | {verdict(speedup >= 20)}" if speedup else "n/a | n/a") + " | "
                         + (f"{growth:.2f}x | {verdict(growth < 3)}" if growth else "n/a (not measured at "
                            f"L = {shortest:,}) | n/a") + " |")
    servers = [r["server_peak_rss_mib"] for r in runs.values() if "server_peak_rss_mib" in r]
    if servers:
        lines += ["", f"Model server peak RSS after its requests: {min(servers):.0f}-{max(servers):.0f} MiB. "
                  f"A serving_default request carries the history once per candidate ({CANDIDATES} copies of L "
                  "items, categories and times), so path (c) also pays for serialising, sending and parsing that "
                  "many int64s; a `shared_history` request (f) carries it once, and so does `serving.Client`'s "
                  "default (g). For DIN and SIM, `serving_default` and the model called in process "
                  "find the history repeated on every row (when the request's histories hold at least "
                  "`feature_columns.ONE_HISTORY_MIN_ELEMENTS` events) and run the model on one row, as "
                  "`shared_history` does, so (a), (b) and (c) search it once."]
    return lines


def turns_part(size, flag, workdir):
    runs = [run(flag, "turns", workdir) for _ in range(size["turn_processes"])]
    failed = [r["error"] for r in runs if "error" in r]
    if failed:
        return ["### DIN against SIM, taking turns in one process", "", f"Fails: {failed[0]}"]
    first = runs[0]
    length, dins = first["length"], [r["signature"]["din"] for r in runs]
    lines = [
        f"### DIN against SIM at L = {length:,}, taking turns in one process",
        "",
        f"The latency part's request ({CANDIDATES} candidates, one history of exactly L = {length:,} events) and "
        "models, exported, all four loaded in one process and called in turn: each round times "
        f"{first['calls']} calls of every model's signature, and a process's figure is the fastest of "
        f"{first['rounds']} rounds (`common.per_call_ms`; a burst of another process only adds time). So the "
        "ratio does not move with the machine's load between the latency part's processes. It still moves "
        f"from one process to the next (here DIN's (b) from {min(dins):.0f} to {max(dins):.0f} ms), so "
        f"{len(runs)} processes run one after the other; a cell is their median, the range in brackets. "
        "Paths as above: (a) the Keras model in a `tf.function` and (b) `serving_default` (both find the history "
        "repeated on every row and search it once), (e) `shared_history`.",
        "",
        "| search | path | DIN ms | SIM ms | DIN / SIM, median (range) | target >= 20x |",
        "|---|---|---:|---:|---:|---|",
    ]
    for search in SEARCHES:
        for path in ("in_process", "signature", "signature_shared"):
            din = [r[path]["din"] for r in runs]
            sim = [r[path][f"sim-{search}"] for r in runs]
            ratios = [d / s for d, s in zip(din, sim)]
            ratio = statistics.median(ratios)
            lines.append(f"| {search} | {PATHS[path]} | {statistics.median(din):.2f} | {statistics.median(sim):.2f} | "
                         f"{ratio:.1f}x ({min(ratios):.1f}-{max(ratios):.1f}) | {verdict(ratio >= 20)} |")
    return lines


def memory_part(size, flag):
    runs = {model: run(flag, "memory", model) for model in size["memory_models"]}
    length, steps = size["memory_length"], size["memory_steps"]
    lines = [
        f"### Training memory at L = {length:,}",
        "",
        f"`make_long_history_setting(\"longterm\", num_users={steps * BATCH // 8}, targets_per_user=8, "
        f"history_length={length}, min_history_length={length}, test_share=0)`: {steps * BATCH} rows, every "
        f"history exactly {length:,} events; columns with maxlen {length:,}; `model.fit` on "
        f"`df_to_dataset(..., batch_size={BATCH}, shuffle=False)` for one epoch ({steps} steps, the first "
        "traces and XLA-compiles), Adam 3e-3, the tests' sizes; SIM as in the latency part, DIN (over all "
        f"{length:,} events) for scale. One process per model. Baseline: the process's RSS high-water mark "
        "(`resource.getrusage` ru_maxrss) once the data, its dataset and the model exist (built and "
        "`compile`d; tracing and XLA compilation come with the first step), before `fit`; peak: the high-water "
        "mark after `fit`. Input: the dataset's arrays (ids as int32 rows, times int64). Median step: of the "
        "steps after the first. Largest tensor: of the model's training step (forward and gradients, "
        f"`tf.GradientTape`) traced with static shapes (batch {BATCH}, L {length:,}), every op output whose "
        "shape is fully known; the last column lists the outputs of rank >= 4 with an axis of length L "
        "(a [batch, candidates, L, d] tensor would be one).",
        "",
        "| model | baseline peak (MiB) | peak during fit (MiB) | fit adds (MiB) | input (MiB) | median step (ms) "
        "| largest tensor in the step | rank >= 4 tensors with an L axis |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for model, r in runs.items():
        if "error" in r:
            lines.append(f"| {MODEL_NAMES[model]} | fails: {r['error']} |" + " |" * 7)
            continue
        graph = r["graph"]
        mib, shape, dtype, op = graph["largest"][0]
        rank4 = "; ".join(f"{s} {d} ({m:.0f} MiB, {o})" for m, s, d, o in graph["rank4_with_l"][:4]) or "none"
        if len(graph["rank4_with_l"]) > 4:
            rank4 += f"; {len(graph['rank4_with_l']) - 4} more"
        lines.append(f"| {MODEL_NAMES[model]} | {r['baseline_peak_mib']:.0f} | {r['peak_mib']:.0f} | "
                     f"{r['peak_mib'] - r['baseline_peak_mib']:.0f} | {r['input_mib']:.0f} | "
                     f"{r['median_step_ms']:.0f} | {shape} {dtype}, {mib:.0f} MiB ({op}) | {rank4} |")
    sims = [r for model, r in runs.items() if model.startswith("sim") and "peak_mib" in r]
    if sims:
        worst = max(r["peak_mib"] for r in sims)
        unknown = max(r["graph"]["unknown"] for r in sims)
        lines += ["", f"Largest SIM peak: {worst / 1024:.2f} GiB, {worst / (24 * 1024):.1%} of 24 GiB "
                  f"({'fits' if worst < 24 * 1024 else '**does not fit**'}). "
                  f"Op outputs of unknown shape left out of the tensor check: at most {unknown} per SIM graph."]
    return lines


def quality_part(size, flag):
    runs = {}
    for setting, model, maxlen in quality_configs(size):
        for seed in size["seeds"]:
            runs[(setting, model, maxlen, seed)] = run(flag, "quality", setting, model, maxlen, seed)
    long_maxlen = size["long_maxlen"]
    overrides = {s: ", ".join(f"{k}={v}" for k, v in o.items()) for s, o in size["overrides"].items()}
    lines = [
        "### Quality on planted long histories",
        "",
        "`make_long_history_setting(setting, seed=s" + (", ...)` (overrides: " + "; ".join(
            f"\"{s}\": {o}" for s, o in overrides.items() if o) + ")" if any(overrides.values()) else ")`")
        + ": \"longterm\" (the click follows the liked categories, visible only beyond the last 50 events) for SIM "
        "and DIN, \"drift\" (the liked categories and the current session both move the click; histories of "
        "50-100 events) for CLSR and DIN. Trained as tests/tfrec/test_sim.py trains: columns from both frames "
        f"with the maxlen shown, `tf.keras.utils.set_random_seed(s)`, Adam 3e-3, `df_to_dataset(train, "
        f"batch_size={BATCH}, seed=s)`, {size['epochs']} epoch(s), the tests' sizes (SIM as in the latency "
        "part; DIN and CLSR without the time columns), scored on the test frame (unseen users). Train ex/s: "
        + ("training rows / the only epoch's wall time (includes tracing and XLA compilation)."
           if size["epochs"] == 1 else "training rows per second over every epoch after the first.")
        + " One process per (model, seed).",
        "",
        "| setting | model | maxlen | seeds | test AUC | oracle AUC | AUC / oracle | train ex/s | fit (s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for setting, model, maxlen in quality_configs(size):
        rs = [runs[(setting, model, maxlen, seed)] for seed in size["seeds"]]
        name = f"| {setting} | {MODEL_NAMES[model]} | {maxlen:,} | {', '.join(map(str, size['seeds']))} |"
        failed = [r for r in rs if "error" in r]
        if failed:
            lines.append(f"{name} fails: {failed[0]['error']} | | | | |")
            continue
        ratios = [r["auc"] / r["oracle_auc"] for r in rs]
        summary[(setting, model, maxlen)] = sum(ratios) / len(ratios)
        lines.append(f"{name} {each([r['auc'] for r in rs], '.4f')} | {each([r['oracle_auc'] for r in rs], '.4f')} | "
                     f"{each(ratios, '.3f')} | {each([r['examples_per_s'] for r in rs], '.0f')} | "
                     f"{each([r['fit_s'] for r in rs], '.0f')} |")
    notes = []
    din50 = summary.get(("longterm", "din", 50))
    for search in SEARCHES:
        sim = summary.get(("longterm", f"sim-{search}", long_maxlen))
        if sim is not None and din50 is not None:
            notes.append(f"SIM {search}: AUC / oracle {sim:.3f} (the tests require >= 0.90), "
                         f"{sim - din50:+.3f} over DIN on the last 50 events (the tests require >= +0.15)")
    clsr, din_drift = summary.get(("drift", "clsr", 100)), summary.get(("drift", "din", 100))
    if clsr is not None and din_drift is not None:
        notes.append(f"CLSR on \"drift\": AUC / oracle {clsr:.3f}, {clsr - din_drift:+.3f} against DIN")
    if notes:
        lines += ["", "Mean over seeds: " + "; ".join(notes) + "."]
    return lines


INTRO = ("## Long sequences: SIM and CLSR\n\nWritten by `benchmarks/bench_long_sequence.py`; each part below "
         "is rewritten on its own (`--part latency|turns|memory|quality`) and names the run that produced it.")


def write_part(part, lines, command):
    """Rewrites block `long_sequence_<part>` inside section `long_sequence`, creating what is missing."""
    common.write_part(SECTION, part, PARTS, lines, command, INTRO, "benchmarks.bench_long_sequence")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    parser.add_argument("--part", choices=PARTS, help="run one part only (default: all)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size_name = "quick" if args.quick else "full"
    if args.child:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        kind, *rest = args.child
        if kind == "latency":
            return child_latency(rest[0], int(rest[1]), size_name, rest[2])
        if kind == "turns":
            return child_turns(size_name, rest[0])
        if kind == "memory":
            return child_memory(rest[0], size_name)
        return child_quality(rest[0], rest[1], int(rest[2]), int(rest[3]), size_name)

    size, flag = SIZES[size_name], ["--quick"] if args.quick else []
    command = ("python -m benchmarks.bench_long_sequence" + (f" --part {args.part}" if args.part else "")
               + (" --quick" if args.quick else ""))
    for part in ([args.part] if args.part else PARTS):
        started = time.time()
        print(f"== {part} ==", flush=True)
        if part in ("latency", "turns"):
            workdir = tempfile.mkdtemp(prefix="bench-long-sequence-")
            try:
                lines = (latency_part if part == "latency" else turns_part)(size, flag, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
        elif part == "memory":
            lines = memory_part(size, flag)
        else:
            lines = quality_part(size, flag)
        print("\n".join(lines), flush=True)
        write_part(part, lines, command)
        print(f"== {part}: {time.time() - started:.0f} s ==", flush=True)


if __name__ == "__main__":
    main()
