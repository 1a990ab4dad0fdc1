"""Batch scoring and evaluation of large files: `tfrec evaluate` and `tfrec predict` on millions of rows.

    python benchmarks/bench_scoring.py            # full run, rewrites the "scoring" section of BENCHMARKS.md
    python benchmarks/bench_scoring.py --quick    # small files, for a smoke test

A DIN-format CSV (user_id, item_id, cate_id, `|`-joined histories of 0-10 events, timestamp,
click; 200k users and 50k items with Zipf popularity, string ids) is generated for training
(100k rows) and for testing (the sizes below). `tfrec train` fits the DIN of
examples/ranking_din.yaml (embedding 8) for one epoch. Then each command runs in its own
process, in this order: `tfrec evaluate` (the test file read and scored CHUNK_ROWS rows at a
time, the default), `tfrec evaluate` with the whole file read at once and scored by one predict
call (what evaluate did before; only at the smallest size, as it grows to 13 GiB at 5M rows),
and `tfrec predict` writing every row's score. A child's figures: wall time, rows/s (rows over
wall time, reading included), peak RSS (VmHWM of the process).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

SIZES = {"full": dict(train=100_000, test=(1_000_000, 5_000_000)),
         "quick": dict(train=20_000, test=(30_000, 60_000))}
USERS, ITEMS, CATEGORIES = 200_000, 50_000, 500


def write_rows(path, rows, seed):
    """A DIN-format CSV of `rows` impressions (the clicks depend on the item's category and the history's length)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    item_category = rng.integers(1, CATEGORIES + 1, ITEMS + 1)
    ids = lambda count, size: rng.zipf(1.2, size) % count + 1  # noqa: E731
    users, items = ids(USERS, rows), ids(ITEMS, rows)
    lengths = rng.integers(0, 11, rows)
    history = ids(ITEMS, int(lengths.sum()))
    item_text, category_text = np.char.add("i", history.astype(str)), np.char.add("c", item_category[history].astype(str))
    ends = np.concatenate([[0], np.cumsum(lengths)])
    click = 1 / (1 + np.exp(-(-2.0 + 0.8 * (item_category[items] % 3 == 0) + 0.05 * lengths)))
    pd.DataFrame({
        "user_id": np.char.add("u", users.astype(str)), "item_id": np.char.add("i", items.astype(str)),
        "cate_id": np.char.add("c", item_category[items].astype(str)),
        "hist_item_id": ["|".join(item_text[a:b]) for a, b in zip(ends[:-1], ends[1:])],
        "hist_cate_id": ["|".join(category_text[a:b]) for a, b in zip(ends[:-1], ends[1:])],
        "timestamp": 1_600_000_000 + np.sort(rng.integers(0, 30 * 86_400, rows)),
        "click": (rng.random(rows) < click).astype(int),
    }).to_csv(path, index=False)


def write_config(folder, train, test):
    import yaml

    config = yaml.safe_load(open(os.path.join(common.ROOT, "examples", "ranking_din.yaml")))
    config["data"].update(train=train, test=test)
    config["train"].update(epochs=1, batch_size=1024)
    config.update(output=os.path.join(folder, "run"), export={"base": os.path.join(folder, "export")})
    config.pop("split", None)
    path = os.path.join(folder, f"run_{os.path.basename(test)}.yaml")
    with open(path, "w") as out:
        yaml.safe_dump(config, out)
    return path


def child(command, config, whole, scores):
    """Runs one `tfrec` command in this process; emits its wall time and peak RSS."""
    from tfrec import config as run, evaluation
    from tfrec.cli import main as tfrec

    if whole == "whole":  # the file read at once, one predict call over all of it: evaluate before chunking
        run.CHUNK_ROWS = evaluation.PREDICT_ROWS = 10 ** 9
    argv = [command, "--config", config] + (["--scores", scores] if command == "predict" else [])
    started = time.perf_counter()
    code = tfrec(argv)
    common.emit({"code": code, "wall_s": time.perf_counter() - started, "peak_rss_mib": common.peak_rss_mib()})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("COMMAND", "CONFIG", "WHOLE", "SCORES"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    size = SIZES["quick" if args.quick else "full"]
    folder = tempfile.mkdtemp(prefix="tfrec-bench-scoring-")
    train = os.path.join(folder, "train.csv")
    write_rows(train, size["train"], seed=0)
    results = []
    for index, rows in enumerate(size["test"]):
        test = os.path.join(folder, f"test_{rows}.csv")
        started = time.perf_counter()
        write_rows(test, rows, seed=1 + index)
        print(f"wrote {rows} test rows in {time.perf_counter() - started:.0f} s", flush=True)
        config = write_config(folder, train, test)
        if index == 0:
            common.run_child(__file__, "--child", "train", config, "chunks", "-")
        runs = [("evaluate", "chunks")] + ([("evaluate", "whole")] if index == 0 else []) + [("predict", "chunks")]
        for command, whole in runs:
            print(f"{command} ({whole}) on {rows} rows ...", flush=True)
            report = common.run_child(__file__, "--child", command, config, whole, os.path.join(folder, "scores.csv"))
            if report["code"] != 0:
                raise RuntimeError(f"tfrec {command} failed with exit code {report['code']}")
            results.append(dict(report, command=command, whole=whole, rows=rows))
            print(f"  {report['wall_s']:.0f} s, {rows / report['wall_s']:.0f} rows/s, peak RSS "
                  f"{report['peak_rss_mib']:.0f} MiB", flush=True)

    from tfrec.config import CHUNK_ROWS

    lines = [
        "## Batch scoring and evaluation of large files (DIN)",
        "",
        f"Command: `python benchmarks/bench_scoring.py{' --quick' if args.quick else ''}` ({common.machine_line()}, "
        f"{common.commit_line()}).",
        f"DIN of examples/ranking_din.yaml (embedding 8, histories of up to 10 events), trained 1 epoch on "
        f"{size['train']:,} generated rows in that CSV format (string ids, 200k users, 50k items). Each command in its "
        "own process; rows/s is the test rows over the command's wall time, reading the CSV and loading the model "
        "included; peak RSS is the process's.",
        "",
        "| command | how the file is read and scored | test rows | wall (s) | rows/s | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    how = {("evaluate", "chunks"): f"{CHUNK_ROWS:,} rows at a time (the default)",
           ("evaluate", "whole"): "whole file, then one predict call (evaluate before this change)",
           ("predict", "chunks"): f"{CHUNK_ROWS:,} rows at a time, scores written to a CSV"}
    for r in results:
        lines.append(f"| `tfrec {r['command']}` | {how[r['command'], r['whole']]} | {r['rows']:,} | {r['wall_s']:.0f} "
                     f"| {r['rows'] / r['wall_s']:.0f} | {r['peak_rss_mib']:.0f} |")
    lines += ["", "Read whole, a 5M-row test file took 13 GiB and had not finished evaluating after 10 minutes "
              "(a user's audit on this machine); that case is not re-run here."]
    common.write_section("scoring", "\n".join(lines))


if __name__ == "__main__":
    main()
