"""Shared plumbing for the benchmark scripts: child processes, peak memory, BENCHMARKS.md sections.

Each benchmark runs every contender in its own Python process (so peak RSS is per contender and
DeepMatch can switch TensorFlow to graph mode), in one script run, and rewrites only its own
section of BENCHMARKS.md, between `<!-- NAME:start -->` and `<!-- NAME:end -->`. A `--quick` run
(tiny sizes, a smoke test) writes BENCHMARKS.quick.md instead, so its figures never replace
measured ones.
"""
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
QUICK_BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.quick.md")
HEADER = """# tfrec benchmarks

Written by the scripts in `benchmarks/`; each section says the command that produced it. These
machines are noisy and shared, so compare figures within one run (the ratios), not across runs.
Quality is reported as the model's AUC next to the planted-truth oracle's AUC on the same rows.
"""


def peak_rss_mib():
    """This process's peak resident set size so far, in MiB.

    VmHWM where /proc has it: Linux keeps getrusage's ru_maxrss across exec, so a child started
    by a parent holding 7 GiB would report 7 GiB whatever it used itself."""
    try:
        return process_memory_mib(os.getpid(), "VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_memory_mib(pid, field="VmHWM"):
    """Another process's memory from /proc: peak resident set size (VmHWM) or current (VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} for pid {pid}")


def process_cpu_seconds(pid):
    """Another process's user + system CPU time so far, all its threads, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # from field 3 (state) on: utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_peak_rss_mib(pid):
    """Another process's peak resident set size (VmHWM), in MiB."""
    return process_memory_mib(pid, "VmHWM")


def run_child(script, *args, env=None):
    """Runs `python script args...`, whose last stdout line is a JSON object; returns it."""
    child_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    started = time.time()
    result = subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                            env=child_env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(map(str, args))} failed:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report.setdefault("wall_s", time.time() - started)
    return report


def emit(report):
    """A child's last line: its JSON report."""
    print(json.dumps(report), flush=True)


def cpu_model():
    """The CPU's model name from /proc/cpuinfo ("" where there is none): figures move by machine
    (e.g. 1M x 64 brute-force search took 72 ms a 100-query call on one, 120 ms on another)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        return ""


def machine_line():
    model = cpu_model()
    machine = platform.processor() or platform.machine()
    return (f"{machine}{f' ({model})' if model else ''}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def commit_line():
    """The checkout's commit as 'commit abc1234', with ' + uncommitted changes' if tracked files
    differ. BENCHMARKS.md is left out: every benchmark rewrites it, so the second one run would
    otherwise report the first one's section as a change."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)BENCHMARKS.md")
    except OSError:
        return "commit unknown"
    return f"commit {commit or 'unknown'}" + (" + uncommitted changes" if dirty else "")


def write_section(name, markdown):
    """Replaces (or appends) section `name` of BENCHMARKS.md (of BENCHMARKS.quick.md in a run
    with `--quick`)."""
    path = QUICK_BENCHMARKS_MD if "--quick" in sys.argv[1:] else BENCHMARKS_MD
    text = open(path).read() if os.path.exists(path) else HEADER
    block = f"<!-- {name}:start -->\n{markdown.strip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as out:
        out.write(text)
    print(f"wrote section '{name}' of {path}")


def percentile_ms(samples_s, q):
    ordered = sorted(samples_s)
    return 1000.0 * ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def _wait(out):
    """Blocks until every tensor in `out` is computed (calls return before TensorFlow finishes)."""
    import tensorflow as tf

    for t in tf.nest.flatten(out):
        if hasattr(t, "numpy"):
            t.numpy()


def per_call_ms(fns, calls, rounds=7):
    """{name: fn} -> {name: ms per call}: the fastest of `rounds` rounds of `calls` calls, the fns taking turns.

    On a shared machine another process's burst only adds time, so the fastest round is the
    closest to the cost, and taking turns exposes every fn to the same background.
    """
    for fn, _ in fns.values():
        _wait(fn())
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, (fn, per_call) in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn()
            _wait(out)
            best[name] = min(best[name], (time.perf_counter() - start) / calls / per_call * 1e3)
    return best


# XLA's CPU runtime records each compiled operation (a fusion, a dot) in a tf.profiler trace
# only with this flag, read when TensorFlow starts: `run_child(..., env=XLA_TRACE_ENV)`.
XLA_TRACE_ENV = {"XLA_FLAGS": "--xla_cpu_enable_xprof_traceme=true"}


def xla_op_profile(fn, calls=5, top=6):
    """Where a compiled function's time goes: `fn()` run `calls` times under tf.profiler.

    Needs XLA_TRACE_ENV in the process's environment. Returns per call: `ops` (XLA operations
    run: fusions, dots, copies), `busy_ms` (their summed duration over all threads), `wall_ms`,
    and `by_kind`: the `top` kinds of operation (the name without its number: "dot",
    "reduce-window", "multiply_add_fusion", ...) with their ms.
    """
    import collections
    import glob
    import shutil
    import tempfile

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    _wait(fn())
    logdir = tempfile.mkdtemp(prefix="xla_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        _wait(out)
        wall_ms = (time.perf_counter() - start) / calls * 1e3
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    # XLA's CPU runtime traces an operation as an event named after it ("dot.5", run on whichever
    # thread the runtime picks) and marks its end with "end: dot.5". A fusion's thunk wrapper
    # ("call.N") and a loop or branch ("while.N", "conditional.N") span operations traced on their
    # own, so they are not counted again.
    by_kind, ops = collections.Counter(), 0
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        events = [(names.get(event.metadata_id, ""), event) for line in plane.lines for event in line.events]
        ended = {name[len("end: "):] for name, _ in events if name.startswith("end: ")}
        for name, event in events:
            if name in ended and not name.startswith(("call", "while", "conditional")):
                by_kind[re.sub(r"([._]\d+)+|\.clone", "", name)] += event.duration_ps / 1e9 / calls
                ops += 1
    return dict(ops=round(ops / calls), busy_ms=round(sum(by_kind.values()), 2), wall_ms=round(wall_ms, 2),
                by_kind={kind: round(ms, 2) for kind, ms in by_kind.most_common(top)})


def add_full_table_l2(model, l2):
    """The embedding penalty before mini-batch aware L2: l2 * sum of squares of every table.

    Added on each table layer, as a Keras `embeddings_regularizer` puts it, so it carries over to
    any model built on those layers; its gradient is dense, so any Adam updates whole tables.
    """
    import feature_columns
    import tensorflow as tf

    for layer in model.layers:
        if isinstance(layer, feature_columns.SparseEmbedding):
            layer.add_loss(lambda layer=layer: l2 * tf.reduce_sum(tf.square(layer.embeddings)))


def old_path(model, l2, learning_rate):
    """tfrec's training path before RecModel, on a model built with l2_reg_embedding=0.

    The full-table L2, a plain `tf.keras.Model` over the same layers (Keras' own train step, no
    lookup/XLA split) and Keras' Adam, which decays both moments of every row at every step.
    """
    import tensorflow as tf

    add_full_table_l2(model, l2)
    old = tf.keras.Model(model.inputs, model.outputs)
    if not old.losses:
        raise RuntimeError("the old-path model lost its full-table L2 loss")
    old.compile(tf.keras.optimizers.Adam(learning_rate), "binary_crossentropy", jit_compile=False)
    return old


def write_part(section, part, parts, lines, command, intro, module):
    """Rewrites block `<section>_<part>` inside section `section` of BENCHMARKS.md.

    A script whose parts run (and are rerun) separately keeps one block per part inside its
    section; the section is created with `intro` (its heading and description), and a part not
    run yet holds a placeholder naming `python -m <module> --part <part>`. `lines[0]` is the
    part's heading; the command, machine and commit stamp go right under it.
    """
    text = open(BENCHMARKS_MD).read() if os.path.exists(BENCHMARKS_MD) else ""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    body = text[text.index(start) + len(start):text.index(end)] if start in text and end in text else intro
    missing = [p for p in parts if f"<!-- {section}_{p}:start -->" not in body]
    if missing:
        body = body.rstrip() + "".join(
            f"\n\n<!-- {section}_{p}:start -->\n_Not run yet: `python -m {module} --part {p}`._"
            f"\n<!-- {section}_{p}:end -->" for p in missing)
        write_section(section, body)
    stamp = f"Command: `{command}` ({machine_line()}, {commit_line()})."
    write_section(f"{section}_{part}", "\n".join([lines[0], "", stamp] + list(lines[1:])))
