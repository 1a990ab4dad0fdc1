"""fit / evaluate / predict on numpy arrays: Keras' numpy path against tfrec's (autotuning off).

    python benchmarks/bench_numpy_calls.py            # full run, rewrites the "numpy_calls" section
    python benchmarks/bench_numpy_calls.py --quick    # small data, one round (smoke test)

Keras feeds numpy arrays through one tf.data iterator per call, and deleting it waits for
tf.data's autotuning thread to wake; a tfrec model's fit, evaluate and predict feed the same
batches through Keras' numpy adapter with autotuning off (`tfrec.models.base`, docs/training.md).
One process, one compiled MMOE (the tests' planted multi-task data, default compile), the two
paths taking turns (each round in the other order): a call's wall time, and its tail, the time
from the callback that ends it (`on_train_end`, `on_test_end`, `on_predict_end`) to its return.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

SIZES = {"full": dict(rows=1_000_000, rounds=5), "quick": dict(rows=20_000, rounds=1)}
BATCH = 1024
CALLS = ("fit", "evaluate", "predict")


def measure(rows, rounds):
    import tensorflow as tf
    from tfrec.data import df_to_inputs, make_multitask_data, multitask_feature_columns
    from tfrec.models import MMOE, base

    df = make_multitask_data(rows, seed=0)
    columns = multitask_feature_columns(df)
    x, y = df_to_inputs(df, columns), [df["click"].to_numpy("float32"), df["conversion"].to_numpy("float32")]
    tf.keras.utils.set_random_seed(0)
    model = MMOE(columns, seed=0)
    model.compile("adam", ["binary_crossentropy"] * 2)
    ended = {}
    timer = tf.keras.callbacks.LambdaCallback(**{
        f"on_{hook}_end": lambda logs, call=call: ended.update({call: time.perf_counter()})
        for hook, call in zip(("train", "test", "predict"), CALLS)})
    run = {"fit": lambda: model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[timer]),
           "evaluate": lambda: model.evaluate(x, y, batch_size=BATCH, verbose=0, callbacks=[timer]),
           "predict": lambda: model.predict(x, batch_size=BATCH, verbose=0, callbacks=[timer])}
    paths = {"tfrec (autotuning off)": base._numpy_without_autotuning,
             "Keras' numpy path": lambda x, y, kwargs, **_: (x, y, kwargs)}
    for call in CALLS:  # compiles every function on both paths' first batch shapes
        for feed in paths.values():
            base._numpy_without_autotuning = feed
            run[call]()
    times = {(path, call): [] for path in paths for call in CALLS}
    for round_ in range(rounds):
        for path in list(paths)[::1 if round_ % 2 == 0 else -1]:
            base._numpy_without_autotuning = paths[path]
            for call in CALLS:
                started = time.perf_counter()
                run[call]()
                returned = time.perf_counter()
                times[path, call].append((returned - started, returned - ended[call]))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    times = measure(**size)
    lines = ["| path | call | wall s, median (range) | tail s, median (range) | calls with a tail > 0.1 s | "
             "wall - tail s, median (range) |", "|---|---|---:|---:|---:|---:|"]
    for (path, call), samples in times.items():
        wall, tail = np.array(samples).T
        lines.append(f"| {path} | `{call}` | {np.median(wall):.2f} ({wall.min():.2f}-{wall.max():.2f}) | "
                     f"{np.median(tail):.2f} ({tail.min():.2f}-{tail.max():.2f}) | "
                     f"{(tail > 0.1).sum()} of {len(tail)} | "
                     f"{np.median(wall - tail):.2f} ({(wall - tail).min():.2f}-{(wall - tail).max():.2f}) |")
    ours, keras = list(dict.fromkeys(path for path, _ in times))
    median_wall = {key: np.median([wall for wall, _ in samples]) for key, samples in times.items()}
    ratios = ", ".join(f"`{call}` {median_wall[keras, call] / median_wall[ours, call]:.2f}x" for call in CALLS)
    command = "python benchmarks/bench_numpy_calls.py" + (" --quick" if args.quick else "")
    common.write_section("numpy_calls", "\n".join([
        "## fit, evaluate and predict on numpy arrays: the iterator's wait",
        "",
        f"Command: `{command}` ({common.machine_line()}, {common.commit_line()}).",
        "",
        f"MMOE (default compile) on `make_multitask_data({size['rows']:,}, seed=0)`, numpy arrays from "
        f"`df_to_inputs`, batch {BATCH}: one epoch of `fit`, one `evaluate`, one `predict` of every row, "
        f"{size['rounds']} round(s) in one process, the two paths taking turns (after one call of each to "
        "compile). Tail: from the callback that ends the call (`on_train_end` / `on_test_end` / "
        "`on_predict_end`) to its return, the wait for tf.data's autotuning thread when Keras deletes its "
        "numpy iterator.",
        "",
        *lines,
        "",
        f"Median wall time, {keras} / {ours}: {ratios}.",
    ]))


if __name__ == "__main__":
    main()
