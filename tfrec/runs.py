"""Runs side by side: what `tfrec compare` prints from the folders `tfrec train --config` and
`tfrec evaluate` wrote (`run.json`, `metrics.json`).

A sweep (`--set train.learning_rate=0.01 --output runs/lr01`, ...) leaves one folder per run;
`compare(folders)` lines them up: the settings in which they differ, how they trained, and their
test figures, with a note when the figures are not comparable (other test rows, no evaluation).
"""
import csv
import io
import json
import math
import os
import re

from tfrec.config import METRICS_FILE, RUN_FILE, maximised, same_held_out_rows


def read_run(folder):
    """{"folder", "record" (run.json), "metrics" (metrics.json, or None before `evaluate`)}."""
    path = os.path.join(folder, RUN_FILE)
    if not os.path.isfile(path):
        what = "no such folder" if not os.path.isdir(folder) else \
            f"no {RUN_FILE}, which `tfrec train --config` writes (a run of an earlier tfrec has none)"
        raise FileNotFoundError(f"{folder}: not a run folder: {what}")
    metrics_path = os.path.join(folder, METRICS_FILE)
    return {"folder": folder, "record": _read_json(path, "tfrec train --config"),
            "metrics": _read_json(metrics_path, "tfrec evaluate --config") if os.path.isfile(metrics_path) else None}


def _read_json(path, writer):
    """The JSON of `path`, or a ValueError naming the file (JSON's own error names only a line)."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON ({error}): cut short or edited by hand; `{writer}` "
                             "writes it again") from None


def settings(record):
    """A run's settings as flat {"train.learning_rate": 0.01, "model.args.dnn_hidden_units": [64, 32],
    ...}: the config as run, the model's arguments with its seed, the versions, and the data files
    by name and a hash of their contents (their place is no setting)."""
    chosen = dict(record.get("settings") or {"train": record["train"], "weight": record.get("weight")})
    chosen["model"] = record["model"]
    chosen["versions"] = record["versions"]
    chosen["data"] = {**chosen.get("data", {}), **{
        part: " ".join(f"{os.path.basename(stamp['path'])}@{stamp['sha256_first_last_mib'][:8]}" for stamp in stamps)
        for part, stamps in record["data"].items() if stamps}}
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", chosen)
    return flat


def figures(run):
    """{figure name: value} of a run: the validation figure kept, then the test figures."""
    record, metrics, out = run["record"], run["metrics"], {}
    validation = record.get("validation")
    if validation:
        monitor = f"val_{record['train']['validation']['monitor']}"
        # The history holds the epochs run since a resume, if any: the last ones.
        figures = record["history"][monitor]
        epochs = validation.get("epochs", len(figures))  # recorded since runs could resume with validation
        out["kept_epoch"] = f"{validation['best_epoch']}/{epochs}"
        # An older run.json has no "figure": its history has it unless the kept epoch preceded a resume.
        kept = len(figures) - 1 - (epochs - validation["best_epoch"])
        out[monitor] = validation.get("figure", figures[kept] if kept >= 0 else None)
    if metrics is None:
        return out
    if "tasks" in metrics:  # a ranking model: each task's figures
        for task, result in metrics["tasks"].items():
            prefix = "" if task == "prediction" else f"{task}_"
            for name in ("auc", "gauc", "logloss", "mse", "mae"):
                if result.get(name) is not None:
                    out[f"{prefix}{name}"] = result[name]
    else:  # a retrieval model, next to popularity
        for name, value in metrics["model"].items():
            out[f"{name}@{metrics['k']}"] = value
        out[f"popularity_recall@{metrics['k']}"] = metrics["popularity"]["recall"]
    return out


def evaluated_on(run):
    """What a run's test figures were computed on: {"held_out": the split of the training files
    that `run.json` records (`evaluate` refuses any other)} or {"test": the test files evaluated}."""
    data = (run["metrics"] or {}).get("data")
    if isinstance(data, list):  # the files of data.test (else a text naming the test split)
        return {"held_out": None, "test": data}
    return {"held_out": run["record"].get("held_out")}


def validated_on(run):
    """What a run's validation figures were computed on: the training rows (the test split's
    complement) and the share held out of them; None without `train.validation`."""
    record = run["record"]
    if not record.get("validation"):
        return None
    return {"held_out": record.get("held_out"), "fraction": record["train"]["validation"]["fraction"]}


def _same_rows(one, other):
    """Whether two `evaluated_on` / `validated_on` records name the same rows."""
    def rest(rows):
        return {key: value for key, value in rows.items() if key != "held_out"}

    return same_held_out_rows(one["held_out"], other["held_out"]) and rest(one) == rest(other)


def _groups(runs, rows_of):
    """[[folder, ...], ...]: the runs grouped by the rows `rows_of(run)` names (None: left out)."""
    groups = []
    for run in runs:
        rows = rows_of(run)
        if rows is None:
            continue
        group = next((group for group in groups if _same_rows(group[0], rows)), None)
        if group is None:
            groups.append((rows, [run["folder"]]))
        else:
            group[1].append(run["folder"])
    return [folders for _, folders in groups]


def compare(folders):
    """(header, rows, notes): one row per run folder, its settings that differ between the runs
    (all of its `--set` overrides when there is one run), its trained rows and its figures; notes
    name runs not evaluated, runs whose test rows differ, whose figures are not comparable, and
    folders left out for holding no run.json yet (a run of `runs/*` still training)."""
    unfinished = [folder for folder in folders if os.path.isdir(folder) and not os.path.isfile(
        os.path.join(folder, RUN_FILE))]
    if len(unfinished) == len(folders):
        read_run(folders[0])  # nothing to compare: its error says why
    runs = [read_run(folder) for folder in folders if folder not in unfinished]
    flat = [settings(run["record"]) for run in runs]
    keys = sorted({key for one in flat for key in one})
    if len(runs) > 1:
        differing = [key for key in keys if len({json.dumps(one.get(key), sort_keys=True) for one in flat}) > 1]
    else:  # the keys its --set overrides gave
        given = [override.split("=", 1)[0] for override in runs[0]["record"].get("overrides", [])]
        differing = [key for key in keys if any(key == g or key.startswith(g + ".") for g in given)]
    scores = [figures(run) for run in runs]
    names = sorted(dict.fromkeys(name for one in scores for name in one),  # how each trained, then its test figures
                   key=lambda name: name != "kept_epoch" and not name.startswith("val_"))
    header = ["run"] + differing + ["rows"] + names
    rows = []
    for run, one, score in zip(runs, flat, scores):
        rows.append([run["folder"]] + [one.get(key) for key in differing]
                    + [run["record"].get("rows")] + [score.get(name) for name in names])
    notes = [f"{run['folder']}: not evaluated (`tfrec evaluate --config ... --output {run['folder']}`)"
             for run in runs if run["metrics"] is None]
    for what, key in (("test", evaluated_on), ("validation", validated_on)):
        groups = _groups([run for run in runs if run["metrics"] is not None or what == "validation"], key)
        if len(groups) > 1:
            notes.append(f"the {what} figures come from different {what} rows, so they do not compare: "
                         + "; ".join(", ".join(folders) for folders in groups))
    notes += [f"{folder}: left out: no {RUN_FILE} yet (a run still training, or not a run folder)"
              for folder in dict.fromkeys(unfinished)]
    repeated = sorted({folder for folder in folders if folders.count(folder) > 1})
    if repeated:
        notes.append(f"given more than once: {', '.join(repeated)}")
    return header, rows, notes


def format_table(header, rows):
    """The rows as aligned text columns; numbers to 4 decimals, a missing value as "-"."""
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):  # 4 decimals, unless they would hide it (a learning rate of 3e-05)
            return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"
        return str(_json_cell(value))

    table = [header] + [[cell(value) for value in row] for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip() for line in table)


def sort_rows(header, rows, column):
    """`rows` best first by `column` of `header`: a figure better higher (an AUC, a recall@k)
    descending, any other column ascending; runs without a value last. A ValueError names the
    columns there are."""
    if column not in header:
        raise ValueError(f"--sort {column}: no such column; the columns are {', '.join(header[1:])}")
    index, descending = header.index(column), maximised(column)
    present = [row for row in rows if not _missing(row[index])]
    return sorted(present, key=lambda row: _sort_key(row[index]), reverse=descending) + \
        [row for row in rows if _missing(row[index])]


def _missing(value):
    """None, or a NaN figure (a diverged validation): no value to rank by (a NaN would leave the
    order of every run to chance)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sort_key(value):
    """Numbers by value, anything else (text, a list as its JSON text) after them, its runs of
    digits by value ("3/5" before "10/12", [64,32] before [128,64]): a column may mix types."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, [])
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    # re.split with a group alternates text and digits, so equal positions compare like with like.
    return (1, 0, [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))])


def _json_cell(value):
    """A list or mapping as compact JSON (one word: the table's columns split on spaces), else the value."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True) if isinstance(value, (list, dict)) else value


def format_json(header, rows, notes):
    """{"columns": header, "runs": [{column: value}], "notes": [...]} as indented JSON text; a figure
    that is not finite is null (JSON has no NaN or Infinity: `jq` and strict parsers refuse them)."""
    def value(cell):
        return None if isinstance(cell, float) and not math.isfinite(cell) else cell

    return json.dumps({"columns": header, "runs": [{name: value(cell) for name, cell in zip(header, row)} for row in rows],
                       "notes": notes}, indent=1)


def format_csv(header, rows):
    """The table as CSV text (values unrounded; a list or mapping as JSON), for a spreadsheet or pandas."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_json_cell(value) for value in row] for row in rows)
    return text.getvalue().rstrip("\n")
