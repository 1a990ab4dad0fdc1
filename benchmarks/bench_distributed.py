"""DIN training throughput on tf.distribute: 1 worker against 2 local workers (and parameter servers).

    python -m benchmarks.bench_distributed                       # writes the "distributed" section
    python -m benchmarks.bench_distributed --users 500 --steps 30 --no-ps   # a quick run

Every configuration runs the same program (this file with `--child`), launched per role with
`python -m tfrec.distribute --role ... --cluster ...` on 127.0.0.1, as docs/distributed.md does:

  * 1 worker: one process, no distribution, batches of `--batch` rows;
  * 2 workers, MultiWorkerMirroredStrategy: two processes, each reading its half of a global
    batch of 2 x `--batch` rows, gradients all-reduced over gRPC every step;
  * 2 workers + 2 ps, ParameterServerStrategy (unless --no-ps): a chief, two workers and two
    parameter servers; each worker's step takes `--batch` rows, asynchronously.

Each process trains `--warmup` steps (tracing, XLA compilation, connections), then `--steps`
timed steps; examples/sec = rows trained in the timed steps / the slowest process's wall time.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import ROOT, commit_line, machine_line, write_section
from tfrec.distribute import free_ports

SECTION = "distributed"


def _child(args):
    """One process of a configuration: trains DIN, prints its JSON report as the last line."""
    import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

    import tensorflow as tf

    from tfrec.data import DIN_HISTORY_FEATURES, build_din_samples, din_feature_columns, make_behaviour_log
    from tfrec.distribute import build_and_compile, build_strategy, dataframe_dataset_fn, distributed_dataset
    from tfrec.models import DIN

    log = make_behaviour_log(num_users=args.users, num_items=args.items, events_per_user=30, seed=0)
    train, _ = build_din_samples(log, maxlen=args.maxlen)
    columns = din_feature_columns(log, maxlen=args.maxlen, embedding_dim=args.dim)
    strategy = build_strategy(args.kind, min_shard_bytes=args.min_shard_bytes)
    workers = {"default": 1, "multi_worker": strategy.num_replicas_in_sync}.get(args.kind, 1)
    global_batch = args.batch * workers if args.kind == "multi_worker" else args.batch
    model = build_and_compile(DIN, columns, DIN_HISTORY_FEATURES, strategy=strategy, seed=0,
                              compile_kwargs={"metrics": []}, dnn_hidden_units=(64, 32), att_hidden_size=(32, 16))
    data = distributed_dataset(strategy, dataframe_dataset_fn(train, columns, "click", global_batch, seed=0,
                                                              repeat=True))
    model.fit(data, epochs=1, steps_per_epoch=args.warmup, verbose=0)
    started = time.perf_counter()
    history = model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": global_batch * args.steps, "train_rows": len(train),
                      "loss": history.history["loss"][-1], "tf_threads": os.cpu_count()}), flush=True)
    del tf


def _run(roles, child_args, timeout):
    """Starts `roles` [(job, index, runs_program)] on one local cluster; returns the programs' reports."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1")
    program = [sys.executable, "-m", "benchmarks.bench_distributed", "--child", *child_args]
    if roles is None:  # one process, no cluster
        commands = [program]
    else:
        ports = iter(free_ports(len(roles)))
        cluster = {}
        for job, index, _ in roles:
            cluster.setdefault(job, []).append(f"127.0.0.1:{next(ports)}")
        spec = ";".join(f"{job}={','.join(addresses)}" for job, addresses in cluster.items())
        commands = [[sys.executable, "-m", "tfrec.distribute", "--role", job, "--index", str(index), "--cluster", spec]
                    + (["--", *program] if runs else []) for job, index, runs in roles]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                                  start_new_session=True) for c in commands]
    runs_program = [True] if roles is None else [runs for _, _, runs in roles]
    reports = []
    try:
        deadline = time.monotonic() + timeout
        for process, runs in zip(processes, runs_program):
            if not runs:
                continue
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            if process.returncode != 0:
                raise RuntimeError(f"{' '.join(process.args)} failed:\n{err[-3000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
    return reports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--maxlen", type=int, default=50)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--batch", type=int, default=256, help="rows per worker per step")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--min-shard-bytes", type=int, default=16 << 10,
                        help="parameter_server: shard variables of at least this many bytes")
    parser.add_argument("--no-ps", action="store_true", help="skip the parameter-server configuration")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    parser.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    sizes = ["--users", args.users, "--items", args.items, "--maxlen", args.maxlen, "--dim", args.dim,
             "--batch", args.batch, "--warmup", args.warmup, "--steps", args.steps,
             "--min-shard-bytes", args.min_shard_bytes]
    sizes = [str(v) for v in sizes]
    configs = [("1 worker (no distribution)", None, "default"),
               ("2 workers, MultiWorkerMirroredStrategy", [("worker", 0, True), ("worker", 1, True)], "multi_worker")]
    if not args.no_ps:
        configs.append(("2 workers + 2 ps, ParameterServerStrategy",
                        [("ps", 0, False), ("ps", 1, False), ("worker", 0, False), ("worker", 1, False),
                         ("chief", 0, True)], "parameter_server"))
    results = []
    for name, roles, kind in configs:
        reports = _run(roles, sizes + ["--kind", kind], args.timeout)
        seconds = max(r["seconds"] for r in reports)
        rows = reports[0]["rows"]
        results.append({"name": name, "processes": 1 if roles is None else len(roles), "seconds": seconds,
                        "rows": rows, "examples_per_s": rows / seconds, "loss": reports[0]["loss"],
                        "train_rows": reports[0]["train_rows"]})
        print(f"{name}: {rows / seconds:,.0f} examples/s ({rows} rows in {seconds:.1f} s)", flush=True)
    base = results[0]["examples_per_s"]
    command = "python -m benchmarks.bench_distributed " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    lines = [
        "## Distributed training (DIN, tf.distribute, local processes)",
        "",
        f"Command: `{command.strip()}` ({machine_line()}, {commit_line()}).",
        "",
        f"DIN (attention 32-16, DNN 64-32, embedding dim {args.dim}, history maxlen {args.maxlen}) on planted "
        f"data ({args.users} users, {args.items} items, {results[0]['train_rows']} training rows), "
        f"{args.batch} rows per worker per step, {args.warmup} warm-up steps then {args.steps} timed steps. "
        "Every process runs on this one machine, launched per role with `python -m tfrec.distribute` "
        "(docs/distributed.md). The synchronous runs compile the step with XLA; the parameter-server "
        f"run cannot (its variables live on other tasks) and splits every variable of at least "
        f"2 x {args.min_shard_bytes // 1024} KiB (the user and item tables) over both servers.",
        "",
        "| configuration | processes | rows per step | examples/sec | scaling vs 1 worker |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['processes']} | {r['rows'] // args.steps} | {r['examples_per_s']:,.0f} | "
                     f"{r['examples_per_s'] / base:.2f}x |")
    lines += [
        "",
        f"**Scaling ratio, 2 local workers / 1 worker (MultiWorkerMirroredStrategy): "
        f"{results[1]['examples_per_s'] / base:.2f}.**",
        "",
        f"What limits it here: this machine has {os.cpu_count()} cores, shared with other jobs. One "
        "worker's TensorFlow thread pools already use every core, so a second worker on the same "
        "host takes cores from the first rather than adding any; each synchronous step adds a gRPC "
        "all-reduce of every gradient (the dense weights and the looked-up embedding rows) between "
        "the processes, and the parameter-server run adds round trips to the servers for every "
        "variable read and update (without XLA: it cannot read variables on other tasks) on the "
        "same cores. The figures measure the cost of distribution on one host; a speed-up needs "
        "workers on separate hosts or devices.",
    ]
    markdown = "\n".join(lines)
    if args.no_write:
        print(markdown)
    else:
        write_section(SECTION, markdown)
    return results


if __name__ == "__main__":
    main()
