"""Training on your own data from a small YAML file: `tfrec train|evaluate|export --config run.yaml`.

A run config names the data (CSV or Parquet files, or a glob), the label column(s), the feature
columns (listed, or "infer": vocabularies built from the training split, with an
out-of-vocabulary row and a minimum count), the model and its arguments, the train/test split,
the training settings, where the run's files go and where the SavedModel is exported. Every
relative path in a config is relative to the directory of the config file. Example configs:
`examples/ranking_din.yaml`, `examples/multitask_mmoe.yaml`; the reference is docs/own_data.md.

    config = load_config("examples/ranking_din.yaml")
    model = train(config)          # writes <output>/model.keras and <output>/columns.json
    report = evaluate(config)      # writes <output>/metrics.json and <output>/calibration.png
    model, columns = trained(config)   # what `tfrec export --config` exports (tfrec.cli)

Exporting is the CLI's job (`tfrec export --config`): tfrec does not import `exporters`.

Every mistake in a config is a `ConfigError` naming the file and the key.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import ast
import contextlib
import dataclasses
import glob
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from feature_columns import HISTORY_PREFIX, DenseFeat, SparseFeat, VarLenDenseFeat, VarLenSparseFeat

from tfrec import distribute
from tfrec.files import replaced_atomically

__all__ = ["ConfigError", "RunConfig", "load_config", "read_data", "split_data", "infer_columns",
           "columns_to_json", "columns_from_json", "train", "trained", "evaluate", "predict", "MODELS"]

RANKING_MODELS = ("DIN", "SIM", "CLSR")  # one label; DIN's columns, a history hist_<f> per target feature <f>
MULTITASK_MODELS = ("MMOE", "PLE", "ESMM", "SharedBottom")
MODELS = RANKING_MODELS + MULTITASK_MODELS
RETRIEVAL_MODELS = ("YoutubeDNN", "MIND", "SDM")  # an interaction log in, the top k of a catalogue out
RETRIEVAL_EMBEDDING_DIM = 32  # their default columns.embedding_dim (DeepMatch's examples)
MODEL_FILE = "model.keras"
COLUMNS_FILE = "columns.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.png"
GATES_FILE = "gates.png"
RUN_FILE = "run.json"  # how the run was made: config, overrides, versions, seeds, data files, losses
SKIPPED_LINES_FILE = "skipped_lines.csv"  # data.bad_lines: skip: every line left out (file, line, text)
# Rows that `evaluate` and `predict` read and score at once: their memory is one chunk's, whatever
# the file's size (reading a 5M-row CSV whole, then one predict call over it, took 13 GiB).
CHUNK_ROWS = 200_000
BAD_LINES = ("error", "skip")  # data.bad_lines: what a CSV line with more cells than its header does


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key (or the flag, and
    then `hint` says what to do)."""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.hint = hint


# --- The config, section by section ---------------------------------------------------------


@dataclass
class DataConfig:
    """`data:` where the rows are.

    Attributes:
      train: files (CSV `.csv`/`.csv.gz`/`.tsv`, or Parquet `.parquet`/`.pq`), absolute after
        loading; each entry may be a glob.
      test: files of a separate test set; None splits `train` (see `SplitConfig`).
      sequence_separator: how a CSV cell holds a sequence (`"i3|i7|i9"`, spaces around an item
        dropped: `"i3 | i7"` is i3, i7; a JSON list `["i3", "i7", "i9"]`, or pandas' `['i3', 'i7']`,
        is read as one too); Parquet holds lists.
      fill: {column: value} for the empty cells of a column, in the training and test files
        alike, as pandas' `fillna` (`{price: 0}`); also a label's (`{conversion: 0}` where a
        log leaves it blank without a click); not for sequences.
      items: (retrieval) the catalogue, files with the item column, one row per item: what
        evaluation ranks and the export serves; None: every item that is a training target.
      bad_lines: "error" (a CSV line with more cells than its header stops the command, naming
        the file and line) or "skip" (such lines are left out, each file's count and first lines
        are printed, and every one is kept, with its file, line number and text, in the run
        folder's `skipped_lines.csv`).
    """
    train: list
    test: Optional[list] = None
    items: Optional[list] = None
    sequence_separator: str = "|"
    fill: dict = field(default_factory=dict)
    bad_lines: str = "error"


@dataclass
class ColumnsConfig:
    """`columns:` the features: `infer` (the default) or an explicit list.

    Attributes:
      infer: build the columns from the training split (True), or use `explicit`.
      explicit: [{"type": "sparse" | "sequence" | "dense" | "dense_sequence", "name": ..., other
        SparseFeat / VarLenSparseFeat / DenseFeat / VarLenDenseFeat arguments}], when `infer`
        is False.
      min_count: (infer) values seen fewer times in the training split go to the
        out-of-vocabulary row.
      embedding_dim: (infer) every table's dimension (retrieval models: 32 by default).
      dense: (infer) numeric columns fed as numbers; default: every float column. A sequence
        listed here is a sequence of numbers (SIM's event times `hist_timestamp`; with its
        `timestamp` listed too, both are int64 when they hold integers).
      sequences: (infer) {name: {"maxlen": n}}: list-valued columns (behaviour histories). A
        sequence `hist_<f>` shares the table of column `<f>` (DeepCTR's naming). Default: the
        list-valued columns of a Parquet file.
      exclude: (infer) columns that are neither features nor labels (ids of the row, truths).
    """
    infer: bool = True
    explicit: list = field(default_factory=list)
    min_count: int = 1
    embedding_dim: int = 8
    dense: Optional[list] = None
    sequences: dict = field(default_factory=dict)
    exclude: list = field(default_factory=list)


@dataclass
class ModelConfig:
    """`model:` one of `MODELS` and keyword arguments of its builder (`tfrec.models.<name>`)."""
    name: str
    args: dict = field(default_factory=dict)


@dataclass
class SplitConfig:
    """`split:` the test rows, when `data.test` is not given.

    Attributes:
      test_fraction: share of rows held out, in (0, 1).
      order_by: a column (e.g. a timestamp): the last rows by it are the test set; None: random.
      seed: the random split's seed.
    """
    test_fraction: float = 0.2
    order_by: Optional[str] = None
    seed: int = 0


@dataclass
class ValidationConfig:
    """`train.validation:` rows held out of the training split to choose the epoch.

    `fraction` of the training rows (the last by `split.order_by`, else a random share drawn with
    `split.seed`; a retrieval model's samples: a random share) are not trained on; after each
    epoch the model is scored on them, and the weights of the epoch with the best `monitor` are
    the ones saved. The test rows never take part, so `evaluate` stays an unbiased estimate.

    Attributes:
      fraction: the share of the training rows, in (0, 1).
      monitor: the figure that picks the epoch, as Keras logs it without "val_": "auc" or
        "logloss" (one label), "<task>_auc", "<task>_mae" or "<task>_loss" (several), "recall"
        (a retrieval model's recall@k), "loss" (any model).
        Default: the AUC (the first task's), or a retrieval model's recall (loss where it has
        none). AUCs and recall are maximised, the others minimised.
      patience: epochs without a better `monitor` after which training stops; None: every epoch runs.
    """
    fraction: float = 0.1
    monitor: Optional[str] = None
    patience: Optional[int] = None


@dataclass
class TrainConfig:
    """`train:` Keras fit settings (Adam with `learning_rate`).

    `warm_start`: the folder of an earlier run of the same model (its `output`): training starts
    from its weights, with its columns (the `columns` section is not used); the optimizer starts
    afresh. `grow_vocabularies` (true by default with a warm start): a value of the new data that
    a vocabulary lacks gets a row of its own, appended after the old ones, which keep their
    weights, when the new data holds it as often as the earlier run's vocabularies required (its
    `columns.min_count`, which `columns.json` records) or, given an int N, at least N times;
    false: such values are looked up as the out-of-vocabulary row. A retrieval model's sampler
    counts the new data's targets.

    `validation`: a `ValidationConfig` (early stopping and the best epoch), or None: every row
    trains and the last epoch's weights are saved.

    `lazy_adam`: true (the default) updates only the embedding rows a batch used
    (`tfrec.optimizers.LazyAdam`); false trains with Keras' Adam as given, which decays every
    row's moments at every step, as DeepCTR trains (`RecModel.compile(..., lazy_adam=False)`).
    """
    epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 0.001
    lazy_adam: bool = True
    seed: int = 0  # the rows' shuffle and, unless model.args.seed is set, the initial weights
    warm_start: Optional[str] = None
    grow_vocabularies: Any = None
    validation: Optional[ValidationConfig] = None


@dataclass
class EvaluateConfig:
    """`evaluate:` `group`, the column GAUC averages over (e.g. user_id); None: no GAUC."""
    group: Optional[str] = None


@dataclass
class ExportConfig:
    """`export:` `base`, the model's --model_base_path; `version` None: the next free one;
    `extra_outputs`: layer names exported too (ESMM's "cvr"); `index`: a retrieval model's index
    options, `exporters.export_retrieval`'s `index` and ScaNN settings (e.g. `{min_candidates:
    1000}` builds ScaNN from 1,000 items instead of 20,000)."""
    base: Optional[str] = None
    version: Optional[int] = None
    extra_outputs: list = field(default_factory=list)
    index: Optional[dict] = None


@dataclass
class RetrievalConfig:
    """`retrieval:` how YoutubeDNN, MIND and SDM read `data.train`, an interaction log.

    The log has one row per event: a user, an item, a time, and optionally the item's category
    and the user's profile. Every event after a user's first `min_history` ones is a sample that
    predicts its item from the `seq_maxlen` events before it; each user's last event is their
    test sample (leave-last-out, `tfrec.data.retrieval_samples`).

    Attributes:
      user, item, category, time: the log's columns (category None: the log has none).
      time_format: how the time column writes dates (a strptime format, '%d/%m/%Y %H:%M');
        None: numbers or year-first (ISO 8601) dates.
      profile: the user's profile columns (gender, age, ...), embedded beside the user id.
      seq_maxlen: the events a sample's history keeps (SDM: its long-term preference).
      short_sess_length: SDM's short-term session in events (SDM only; default 5).
      min_history: the fewest earlier events a sample has.
      sampler: the negatives of the sampled softmax: "inbatch" (the batch's other items),
        "uniform" or "frequency" (`tfrec.utils.NegativeSampler`), with a logQ correction.
      num_sampled: negatives drawn per batch besides the batch's items ("uniform",
        "frequency"; >= 1 for them).
      k: the top k that evaluation scores (recall, hit rate, NDCG) and the export serves.
      exclude_seen: leave the items of a user's history (the request's, when served) out of
        their top k, in evaluation and in the export; for catalogues where users do not come
        back to an item.
      embed_user: the user id is a feature (DeepMatch's default); false: a user is their profile
        and history only, so users new since training are not all served through one row.
    """
    user: str = "user_id"
    item: str = "item_id"
    category: Optional[str] = "cate_id"
    time: str = "timestamp"
    time_format: Optional[str] = None
    profile: list = field(default_factory=list)
    seq_maxlen: int = 50
    short_sess_length: Optional[int] = None
    min_history: int = 1
    sampler: str = "inbatch"
    num_sampled: int = 0
    k: int = 50
    exclude_seen: bool = False
    embed_user: bool = True


@dataclass
class StrategyConfig:
    """`strategy:` how training is spread (`tfrec.distribute`, docs/distributed.md).

    Attributes:
      kind: None (one process), "mirrored", "multi_worker" or "parameter_server".
      tf_config: the cluster (a TF_CONFIG dict, or a JSON file); None reads $TF_CONFIG.
      checkpoint_dir: BackupAndRestore's folder: a run killed mid-epoch resumes from there.
      save_freq: steps between backups (or "epoch").
      min_shard_bytes: parameter_server: tables at least this big are split across the servers.
      join_timeout: multi_worker, parameter_server: seconds to wait for the cluster's other tasks
        to be up, then name the ones that do not answer and end; None waits as long as it takes.
    """
    kind: Optional[str] = None
    tf_config: object = None
    checkpoint_dir: Optional[str] = None
    save_freq: object = 100
    min_shard_bytes: int = 256 << 10
    join_timeout: Optional[float] = None


@dataclass
class RunConfig:
    """A whole run: what `load_config` returns. `path` is the config file, `output` the run's folder."""
    path: str
    data: DataConfig
    labels: object  # a column name, a list of names, or {task name: column}; None for retrieval
    model: ModelConfig
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    retrieval: Optional[RetrievalConfig] = None  # set for a retrieval model
    output: str = "runs/run"
    # A column of sample weights (not a feature): each training row's loss counts this many times
    # (every task's); evaluate weighs its metrics by it when the test rows have it.
    weight: Optional[str] = None
    overrides: list = field(default_factory=list)  # the `--set` texts applied to the file

    @property
    def tasks(self):
        """{task name: label column}; a single label column is task "prediction"; none for retrieval."""
        if self.labels is None:
            return {}
        if isinstance(self.labels, str):
            return {"prediction": self.labels}
        if isinstance(self.labels, dict):
            return dict(self.labels)
        return {name: name for name in self.labels}

    @property
    def multitask(self):
        return self.model.name in MULTITASK_MODELS

    def output_file(self, name):
        return os.path.join(self.output, name)


_SECTIONS = {"data": DataConfig, "columns": ColumnsConfig, "model": ModelConfig, "split": SplitConfig,
             "train": TrainConfig, "evaluate": EvaluateConfig, "export": ExportConfig,
             "strategy": StrategyConfig, "retrieval": RetrievalConfig}
_TOP_LEVEL = ("data", "labels", "weight", "columns", "model", "split", "train", "evaluate", "export", "strategy",
              "retrieval", "output")


def _fail(path, key, problem):
    raise ConfigError(f"{path}: {key}: {problem}")


def _check_keys(path, section, given, allowed):
    unknown = sorted(set(given) - set(allowed), key=str)
    if unknown:
        where = f"'{section}'" if section else "the top level"
        # YAML reads {fraction:0.1} as the key "fraction:0.1" with no value
        spacing = f" (YAML needs a space after the colon: {{{str(unknown[0]).replace(':', ': ', 1)}}})" \
            if ":" in str(unknown[0]) else ""
        _fail(path, f"{section + '.' if section else ''}{unknown[0]}",
              f"unknown key in {where}; known keys: {', '.join(allowed)}{spacing}")


def _int(path, key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _number(path, key, value, low, high):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        _fail(path, key, f"must be a number in ({low}, {high}), got {value!r}")
    return float(value)


def _names(path, key, value):
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail(path, key, f"must be a column name or a list of column names, got {value!r}")
    return value


def _files(path, key, value):
    """Config paths -> absolute paths (relative ones resolved against the config's folder)."""
    entries = _names(path, key, value)
    if not entries:
        _fail(path, key, "needs a file, a glob or a list of them (CSV or Parquet)")
    return [_resolve(path, entry) for entry in entries]


def _resolve(path, entry):
    entry = os.path.expanduser(entry)
    return entry if os.path.isabs(entry) else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), entry))


def _section(path, raw, name):
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(path, name, f"must be a mapping of keys, got {type(value).__name__} {value!r}")
    allowed = [f.name for f in dataclasses.fields(_SECTIONS[name])]
    if name == "columns":
        allowed = [a for a in allowed if a != "explicit"]
    _check_keys(path, name, value, allowed)
    return value


def _parse_labels(path, labels):
    if labels is None:
        _fail(path, "labels", "is required: the label column, a list of them, or {task name: column}")
    if isinstance(labels, str) and labels:
        return labels
    if isinstance(labels, list) and labels and all(isinstance(v, str) and v for v in labels):
        return labels
    if isinstance(labels, dict) and labels and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return labels
    _fail(path, "labels", f"must be a column name, a list of column names or {{task: column}}, got {labels!r}")


def _parse_columns(path, raw):
    value = raw.get("columns", "infer")
    if value == "infer" or value is None:
        return ColumnsConfig()
    if isinstance(value, list):
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                _fail(path, f"columns[{i}]", f"must be a mapping with a 'name', got {entry!r}")
            if entry.get("type") not in _COLUMN_TYPES:
                _fail(path, f"columns[{i}].type", f"must be one of {', '.join(_COLUMN_TYPES)}, "
                      f"got {entry.get('type')!r} (column '{entry['name']}')")
        return ColumnsConfig(infer=False, explicit=value)
    if not isinstance(value, dict):
        _fail(path, "columns", f"must be 'infer', a mapping of infer options, or a list of columns, got {value!r}")
    section = _section(path, raw, "columns")
    config = ColumnsConfig(**section)
    if config.infer is not True:
        _fail(path, "columns.infer", "a mapping of options means infer: true; list the columns instead to "
              "give them explicitly")
    _int(path, "columns.min_count", config.min_count, 1)
    _int(path, "columns.embedding_dim", config.embedding_dim, 1)
    config.dense = _names(path, "columns.dense", config.dense)
    config.exclude = _names(path, "columns.exclude", config.exclude) or []
    if not isinstance(config.sequences, dict):
        _fail(path, "columns.sequences", f"must map a column to {{maxlen: n}}, got {config.sequences!r}")
    for name, options in config.sequences.items():
        options = options or {}
        if not isinstance(options, dict):
            _fail(path, f"columns.sequences.{name}", f"must be a mapping like {{maxlen: 20}}, got {options!r}")
        _check_keys(path, f"columns.sequences.{name}", options, ("maxlen",))
        if "maxlen" in options:
            _int(path, f"columns.sequences.{name}.maxlen", options["maxlen"], 1)
        config.sequences[name] = options
    return config


def load_config(path, output=None, export_base=None, overrides=()):
    """Reads and checks a run config (YAML).

    Args:
      path: the YAML file.
      output: overrides the config's `output` folder (relative to the current directory).
      export_base: overrides `export.base` (relative to the current directory).
      overrides: "key.path=value" texts (`tfrec train --set`), each setting one key of the file
        before it is checked; the value is read as YAML ("0.01", "[64, 32]", "{maxlen: 20}").

    Returns:
      A `RunConfig` with absolute paths.

    Raises:
      ConfigError: the file is missing or not YAML, or a key is unknown, missing or of the wrong
        kind (the message names the file and the key).
    """
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run config is a mapping with the keys {', '.join(_TOP_LEVEL)}")
    for override in overrides:
        _override(raw, override)
    _check_keys(path, "", raw, _TOP_LEVEL)
    if "data" not in raw:
        _fail(path, "data", "is required: {train: <CSV or Parquet files or a glob>}")
    data = _section(path, raw, "data")
    if "train" not in data:
        _fail(path, "data.train", "is required: CSV or Parquet files or a glob")
    fill = data.get("fill") or {}
    if not isinstance(fill, dict) or not all(isinstance(value, (int, float, str)) and not isinstance(value, bool)
                                             for value in fill.values()):
        _fail(path, "data.fill", f"must map a column to the number or text for its empty cells, e.g. "
              f"{{price: 0}}, got {fill!r}")
    separator = data.get("sequence_separator", "|")
    if not isinstance(separator, str) or not separator:  # str.split would refuse it at the first history cell
        _fail(path, "data.sequence_separator", f"must be the text between a CSV sequence's items, such as '|', "
              f"got {separator!r}")
    if data.get("bad_lines", "error") not in BAD_LINES:
        _fail(path, "data.bad_lines", f"must be one of {', '.join(BAD_LINES)}, got {data['bad_lines']!r}")
    data = DataConfig(train=_files(path, "data.train", data["train"]),
                      test=_files(path, "data.test", data["test"]) if data.get("test") else None,
                      items=_files(path, "data.items", data["items"]) if data.get("items") else None,
                      sequence_separator=separator, fill=fill,
                      bad_lines=data.get("bad_lines", "error"))
    if "model" not in raw:
        _fail(path, "model", f"is required: {{name: one of {', '.join(MODELS + RETRIEVAL_MODELS)}, args: {{...}}}}")
    model = _section(path, raw, "model")
    if model.get("name") not in MODELS + RETRIEVAL_MODELS:
        _fail(path, "model.name", f"unknown model {model.get('name')!r}; tfrec trains one of "
              f"{', '.join(MODELS + RETRIEVAL_MODELS)} from a config")
    retrieval = _parse_retrieval(path, raw, model["name"], data)
    if not isinstance(model.get("args", {}) or {}, dict):
        _fail(path, "model.args", f"must be a mapping of the model's keyword arguments, got {model['args']!r}")
    model = ModelConfig(name=model["name"], args=dict(model.get("args") or {}))
    split = SplitConfig(**_section(path, raw, "split"))
    _number(path, "split.test_fraction", split.test_fraction, 0.0, 1.0)
    train = TrainConfig(**_section(path, raw, "train"))
    _int(path, "train.epochs", train.epochs, 1)
    _int(path, "train.batch_size", train.batch_size, 1)
    _number(path, "train.learning_rate", train.learning_rate, 0.0, float("inf"))
    if not isinstance(train.lazy_adam, bool):
        _fail(path, "train.lazy_adam", f"must be true or false, got {train.lazy_adam!r}")
    if train.warm_start is not None:
        if not isinstance(train.warm_start, str):
            _fail(path, "train.warm_start", f"must be the folder of an earlier run, got {train.warm_start!r}")
        train.warm_start = _resolve(path, train.warm_start)
        if raw.get("columns") is not None:
            _fail(path, "columns", "does not apply with train.warm_start: the run starts from the earlier run's "
                  "columns; remove one of them")
    if train.grow_vocabularies is not None:
        if train.warm_start is None:
            _fail(path, "train.grow_vocabularies", "applies only with train.warm_start (a new run infers its "
                  "vocabularies from its own data)")
        if not isinstance(train.grow_vocabularies, bool) and not (
                isinstance(train.grow_vocabularies, int) and train.grow_vocabularies >= 1):
            _fail(path, "train.grow_vocabularies", "must be true, false or the times a new value must be seen (an "
                  f"integer >= 1), got {train.grow_vocabularies!r}")
    elif train.warm_start is not None:
        train.grow_vocabularies = True
    export_section = ExportConfig(**_section(path, raw, "export"))
    if export_base is not None:
        export_section.base = os.path.abspath(export_base)
    elif export_section.base is not None:
        export_section.base = _resolve(path, export_section.base)
    if export_section.version is not None:
        _int(path, "export.version", export_section.version, 1)
    export_section.extra_outputs = _names(path, "export.extra_outputs", export_section.extra_outputs) or []
    if export_section.index is not None and (not isinstance(export_section.index, dict) or not retrieval):
        _fail(path, "export.index", "takes a retrieval model's index options as a mapping, e.g. {min_candidates: 1000} "
              f"or {{index: brute_force}}; got {export_section.index!r}" + ("" if retrieval else
                                                                         f" for {model.name}, a ranking model"))
    for key, where in (("k", "retrieval.k (or --k)"), ("version", "export.version"),
                       ("exclude", "retrieval.exclude_seen (or --exclude)")):
        if key in (export_section.index or {}):
            _fail(path, f"export.index.{key}", f"is not an index option: set {where}")
    if output is not None:
        output = os.path.abspath(output)
    elif raw.get("output") is not None:
        if not isinstance(raw["output"], str):
            _fail(path, "output", f"must be a folder, got {raw['output']!r}")
        output = _resolve(path, raw["output"])
    else:
        output = _resolve(path, os.path.join("runs", os.path.splitext(os.path.basename(path))[0]))
    config = RunConfig(path=os.path.abspath(path), data=data,
                       labels=None if retrieval else _parse_labels(path, raw.get("labels")), model=model,
                       columns=_parse_columns(path, raw), split=split, train=train,
                       evaluate=EvaluateConfig(**_section(path, raw, "evaluate")), export=export_section,
                       strategy=_parse_strategy(path, raw), retrieval=retrieval, output=output)
    config.weight = _parse_weight(path, raw.get("weight"), config)
    config.train.validation = _parse_validation(path, config.train.validation, config)
    config.overrides = list(overrides)
    if retrieval and "embedding_dim" not in (raw.get("columns") or {}):
        config.columns.embedding_dim = RETRIEVAL_EMBEDDING_DIM
    if config.model.name in RANKING_MODELS and len(config.tasks) != 1:
        _fail(path, "labels", f"{config.model.name} has one output: give one label column, got {config.labels!r}")
    if config.multitask and isinstance(config.labels, str):
        _fail(path, "labels", f"{config.model.name} is multi-task: give {{task name: column}} or a list of columns")
    return config


def _parse_weight(path, weight, config):
    if weight is None:
        return None
    if not isinstance(weight, str) or not weight:
        _fail(path, "weight", f"must be the name of the column of sample weights, got {weight!r}")
    if config.retrieval:
        _fail(path, "weight", f"weighs a ranking model's rows; {config.model.name} trains on the samples it makes "
              "from the log, which carry no weight")
    if weight in config.tasks.values():
        _fail(path, "weight", f"'{weight}' is a label column; the weights need a column of their own")
    return weight


def _parse_validation(path, raw, config):
    if raw is None:
        return None
    key = "train.validation"
    if not isinstance(raw, dict):
        _fail(path, key, f"must be a mapping such as {{fraction: 0.1, patience: 2}}, got {raw!r}")
    _check_keys(path, key, raw, [f.name for f in dataclasses.fields(ValidationConfig)])
    validation = ValidationConfig(**raw)
    _number(path, f"{key}.fraction", validation.fraction, 0.0, 1.0)
    if validation.patience is not None:
        _int(path, f"{key}.patience", validation.patience, 1)
    logged = list(validation_figures(config))
    if isinstance(validation.monitor, str) and validation.monitor.startswith("val_") and \
            validation.monitor[len("val_"):] in logged:  # Keras' name of the figure
        validation.monitor = validation.monitor[len("val_"):]
    if validation.monitor is None:
        validation.monitor = logged[1] if len(logged) > 1 and maximised(logged[1]) else "loss"
    elif validation.monitor not in logged:
        _fail(path, f"{key}.monitor", f"{validation.monitor!r} is not a figure of {config.model.name}'s validation; "
              f"it logs {', '.join(logged)}")
    return validation


def maximised(figure):
    """Whether a figure is better higher (an AUC, a recall, a hit rate, an NDCG) rather than lower
    (a loss, an error): a validation figure, with or without "val_", or a test figure of
    `metrics.json` as `tfrec compare` names it ("recall@50")."""
    return figure.split("@")[0].endswith(("auc", "recall", "hit_rate", "ndcg"))


def validation_figures(config):
    """{figure: the label column whose AUC it is, or None}: the figures a run's validation logs
    (without "val_"), loss first: Keras' for a model compiled by `_compile`, and a retrieval
    model's recall@k (`RecallValidation`)."""
    if config.retrieval:
        return {"loss": None, "recall": None}
    if not config.multitask:
        return {"loss": None, "auc": next(iter(config.tasks.values())), "logloss": None}
    types = config.model.args.get("task_types") or ["binary"] * len(config.tasks)
    figures = {"loss": None}
    for (task, label), task_type in zip(config.tasks.items(), types):
        figures.update({f"{task}_auc": label} if task_type == "binary" else {f"{task}_mae": None})
        figures[f"{task}_loss"] = None
    return figures


def _override(raw, text):
    """Sets the key `text` ("train.learning_rate=0.01") names in the config's mapping `raw`."""
    import yaml

    key, equals, value = text.partition("=")
    parts = key.strip().split(".")
    if not equals or not all(parts):
        raise ConfigError(f"--set {text!r}: give KEY=VALUE, e.g. --set train.learning_rate=0.01")
    section = raw
    for depth, part in enumerate(parts[:-1]):
        section = section.setdefault(part, {})
        if section is None or not isinstance(section, dict):
            raise ConfigError(f"--set {key}: '{'.'.join(parts[:depth + 1])}' is not a section of keys in the config")
    try:
        section[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: the value {value!r} is not YAML: {' '.join(str(error).split())}") from None


_RETRIEVAL_COLUMN_OPTIONS = ("embedding_dim", "min_count")


def _parse_retrieval(path, raw, model_name, data):
    """The `retrieval:` section of a retrieval model's config, checked (None for other models);
    a ConfigError for a key that a retrieval run would ignore."""
    if model_name not in RETRIEVAL_MODELS:
        if "retrieval" in raw:
            _fail(path, "retrieval", f"is for the retrieval models {', '.join(RETRIEVAL_MODELS)}; {model_name} "
                  "learns from labelled rows")
        if data.items:
            _fail(path, "data.items", f"is a retrieval model's catalogue; {model_name} scores the rows it is given")
        return None
    why = {"labels": "a retrieval model learns from the events themselves (each event's item is its positive)",
           "split": "a retrieval run holds out each user's last event (leave-last-out)",
           "evaluate": "a retrieval run reports recall, hit rate and NDCG at retrieval.k"}
    for key, reason in why.items():
        if raw.get(key) is not None:
            _fail(path, key, f"does not apply to {model_name}: {reason}; remove it")
    if data.test:
        _fail(path, "data.test", f"does not apply to {model_name}: a retrieval run holds out each user's last "
              "event of data.train (leave-last-out); give one log")
    columns = raw.get("columns")
    if columns is not None and (not isinstance(columns, dict) or set(columns) - set(_RETRIEVAL_COLUMN_OPTIONS)):
        _fail(path, "columns", f"{model_name}'s columns come from retrieval: (the user, item, category and "
              f"profile columns); columns: takes only {', '.join(_RETRIEVAL_COLUMN_OPTIONS)}, got {columns!r}")
    export = raw.get("export") or {}
    if isinstance(export, dict) and export.get("extra_outputs"):
        _fail(path, "export.extra_outputs", "a retrieval export answers item_ids and scores; remove it")
    settings = RetrievalConfig(**_section(path, raw, "retrieval"))
    for key in ("user", "item", "time"):
        _names(path, f"retrieval.{key}", getattr(settings, key))
    if settings.category is not None:
        _names(path, "retrieval.category", settings.category)
    if settings.time_format is not None and (not isinstance(settings.time_format, str) or "%" not in settings.time_format):
        _fail(path, "retrieval.time_format", f"must be a strptime format like '%d/%m/%Y %H:%M', got "
              f"{settings.time_format!r}")
    settings.profile = _names(path, "retrieval.profile", settings.profile) or []
    named = [settings.user, settings.item, settings.category, settings.time, *settings.profile]
    named = [name for name in named if name is not None]
    if len(set(named)) < len(named):
        _fail(path, "retrieval", f"user, item, category, time and profile name one column each, got {named}")
    _int(path, "retrieval.seq_maxlen", settings.seq_maxlen, 1)
    _int(path, "retrieval.min_history", settings.min_history, 1)
    _int(path, "retrieval.k", settings.k, 1)
    for key in ("exclude_seen", "embed_user"):
        if not isinstance(getattr(settings, key), bool):
            _fail(path, f"retrieval.{key}", f"must be true or false, got {getattr(settings, key)!r}")
    if model_name == "SDM":
        if settings.short_sess_length is None:
            settings.short_sess_length = 5
        _int(path, "retrieval.short_sess_length", settings.short_sess_length, 1)
    elif settings.short_sess_length is not None:
        _fail(path, "retrieval.short_sess_length", f"is SDM's short-term session; {model_name} reads one history "
              "of retrieval.seq_maxlen events")
    from tfrec.utils import SAMPLERS

    if settings.sampler not in SAMPLERS:
        _fail(path, "retrieval.sampler", f"must be one of {', '.join(SAMPLERS)}, got {settings.sampler!r}")
    _int(path, "retrieval.num_sampled", settings.num_sampled, 1 if settings.sampler != "inbatch" else 0)
    return settings


def _parse_strategy(path, raw):
    section = _section(path, raw, "strategy")
    given = {key for key, value in section.items() if value is not None}
    strategy = StrategyConfig(**section)
    if strategy.kind is not None and strategy.kind not in distribute.STRATEGY_KINDS:
        _fail(path, "strategy.kind", f"must be one of {', '.join(distribute.STRATEGY_KINDS)}, got {strategy.kind!r}")
    if isinstance(strategy.tf_config, str) and not strategy.tf_config.lstrip().startswith("{"):
        strategy.tf_config = _resolve(path, strategy.tf_config)
        if not os.path.isfile(strategy.tf_config):
            _fail(path, "strategy.tf_config", f"no file {strategy.tf_config}: give a TF_CONFIG JSON file, a JSON "
                  "string or a dict")
    if strategy.tf_config is not None:
        try:
            distribute.parse_tf_config(strategy.tf_config)
        except ValueError as error:
            _fail(path, "strategy.tf_config", str(error))
    if strategy.checkpoint_dir is not None:
        strategy.checkpoint_dir = _resolve(path, strategy.checkpoint_dir)
    if strategy.save_freq != "epoch":
        _int(path, "strategy.save_freq", strategy.save_freq, 1)
    _int(path, "strategy.min_shard_bytes", strategy.min_shard_bytes, 1)
    if strategy.join_timeout is not None:
        strategy.join_timeout = _number(path, "strategy.join_timeout", strategy.join_timeout, 0, float("inf"))
    # A setting the run would not read is refused rather than left to do nothing.
    alone = f"strategy.kind is {strategy.kind or 'not set'}, which trains in this one process"
    for key in ("tf_config", "join_timeout"):
        if key in given and strategy.kind not in ("multi_worker", "parameter_server"):
            _fail(path, f"strategy.{key}", f"is for a cluster (kind multi_worker or parameter_server), but {alone}")
    if "min_shard_bytes" in given and strategy.kind != "parameter_server":
        _fail(path, "strategy.min_shard_bytes", f"splits tables across parameter servers (kind parameter_server), "
              f"but strategy.kind is {strategy.kind or 'not set'}")
    if "save_freq" in given and strategy.checkpoint_dir is None:
        _fail(path, "strategy.save_freq", "is how often to back up to strategy.checkpoint_dir, which is not set: "
              "set it to back up (a killed run then resumes), or leave save_freq out")
    return strategy


# --- Data ----------------------------------------------------------------------------------


def _expand(patterns, key, config_path):
    files = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matched = [m for m in matched if os.path.isfile(m)]
        if not matched:
            if key.startswith("--"):  # a command's flag, relative to the working directory
                raise ConfigError(f"{key}: no file matches {pattern!r}", hint="check the path")
            raise ConfigError(f"{config_path}: {key}: no file matches {pattern!r} (relative paths are relative to "
                              "the config file's folder)")
        files += matched
    return files


def _read_file(path, text_columns=(), bad_lines="error", skipped_to=None):
    """One CSV/Parquet file as a DataFrame (rows numbered 0..n-1). In a CSV, `text_columns` (where
    present) are read as text, not parsed as numbers, and so is a column of whole numbers written
    with leading zeros ("02134", "000123": ids, not amounts), which would otherwise become 2134 and
    123 and meet other ids; its empty cells stay missing values (NaN), as in any text column. A
    Parquet file keeps its types (`_parquet_frame`)."""
    import pandas as pd

    sep = _csv_separator(path)
    if sep is None:  # a Parquet log keeps its int ids (`retrieval_run` makes a mix with CSV text)
        df = _parquet_frame(_parquet_file(path).read(), text_columns)
        df.index = pd.RangeIndex(len(df))  # a frame saved with its own rows (3, 9, ...) is numbered as in chunks
        return df
    with _reading(path, bad_lines, skipped_to):
        text_columns = _csv_text_columns(path, sep, text_columns, bad_lines)
        return _whole_number_ids(_without_trailing_spaces(_read_csv(path, sep, text_columns, bad_lines)), text_columns)


def _csv_text_columns(path, sep, text_columns, bad_lines):
    """The columns of a CSV to read as text: `text_columns`, and those of `_zero_padded_columns`.
    Found by one scan of the whole file before it is read, whole or a chunk at a time, so both
    reads make the same columns text whatever a chunk holds."""
    names = _csv_names(path, sep)
    return list(text_columns) + _zero_padded_columns(path, sep, set(names) - set(text_columns), bad_lines)


# A cell as pyarrow reads it, which keeps the spaces around it and the quotes of one that follows
# a space (' "05"'), where pandas drops both: a whole number, and one written with a leading zero.
_WHOLE_NUMBER = r'^\s*"?[+-]?\d+"?\s*$'
_LEADING_ZERO = r'^\s*"?[+-]?0\d'
# pandas' default na_values: the cells read_csv makes missing (NaN), in a text column too.
_MISSING_TEXTS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                  "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def _zero_padded_columns(path, sep, names, bad_lines):
    """The columns among `names` of a CSV that are read as text for their leading zeros: every cell
    a whole number or empty (a missing value, as pandas reads "" or "NA"), some written "007" (then
    "007" and "7" are two ids, and a gap in the column does not make them the floats 7.0 and 7.0).
    Found in one streaming pass of the file, by `_read_file` and before a chunked read alike.
    pyarrow reads the text fast; a file it cannot parse (a line with fewer cells, a quoted line
    break) is read by pandas."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    missing = pa.array(_MISSING_TEXTS, pa.string())

    def skip(row):  # the lines pandas leaves out (more cells than the header); it keeps shorter ones
        return "skip" if bad_lines == "skip" and row.actual_columns > row.expected_columns else "error"

    def scan(batches):  # batches: {name: the cells' text} a block of lines at a time
        whole, padded = {name for name in names if name in header}, set()
        for texts in batches:
            for name in sorted(whole):
                text = texts[name]
                numbers = pc.match_substring_regex(text, _WHOLE_NUMBER)
                if not pc.all(numbers).as_py():  # the other cells must be gaps
                    others = pc.utf8_trim(pc.utf8_trim_whitespace(pc.filter(text, pc.invert(numbers))), '"')
                    if not pc.all(pc.is_in(others, value_set=missing)).as_py():
                        whole.discard(name)
                        continue
                if name not in padded and pc.any(pc.match_substring_regex(text, _LEADING_ZERO)).as_py():
                    padded.add(name)
        return sorted(padded & whole)

    header = list(_csv_names(path, sep))
    texts = {name: pa.string() for name in names if name in header}
    if not texts:
        return []
    try:
        with csv.open_csv(path, read_options=csv.ReadOptions(column_names=header, skip_rows=1),
                          parse_options=csv.ParseOptions(delimiter=sep, invalid_row_handler=skip),
                          convert_options=csv.ConvertOptions(include_columns=sorted(texts),
                                                             column_types=texts)) as batches:
            return scan(batches)
    except pa.ArrowInvalid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ParserWarning)  # the read of the data counts the lines
            chunks = _read_csv(path, sep, sorted(texts), bad_lines, chunksize=CHUNK_ROWS)
            # pandas' gaps (NaN) as "", a missing text
            return scan({name: pa.array(chunk[name].fillna(""), pa.string()) for name in texts} for chunk in chunks)


def _csv_separator(path):
    """The separator of a CSV/TSV file, None for Parquet, or a ConfigError for another kind of file."""
    lower = path.lower()
    if lower.endswith((".parquet", ".pq")):
        return None
    if lower.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
        return "\t" if lower.endswith(".tsv") else ","
    raise ConfigError(f"{path}: unknown file type; data files are CSV (.csv, .csv.gz, .tsv) or Parquet "
                      "(.parquet, .pq)")


def _read_csv(path, sep, text_columns, bad_lines, **options):
    """pandas' read_csv of a data file: `text_columns` (where present) as text, malformed lines as
    `bad_lines` says; `options` as read_csv takes them (chunksize: a reader of chunks)."""
    import pandas as pd

    names = _csv_names(path, sep)
    unnamed = [position for position, name in enumerate(names, 1) if not name]
    if unnamed:  # pandas would read it as "Unnamed: 0", which columns: infer made a feature
        raise ConfigError(f"{path}: column {unnamed[0]} of the header (counted from 1) has no name",
                          hint="name it in the header, or leave it out: pandas' to_csv writes the row index as an "
                               "unnamed first column unless given index=False")
    twice = sorted(set(names[names.duplicated()]))
    if twice:  # pandas would read the second as "<name>.1", another column (a label's twin: a leaked feature)
        raise ConfigError(f"{path}: the header names {twice} more than once", hint="give each column its own name, "
                          "or drop the repeated columns")
    header = set(names)
    # index_col=False: lines with a cell more than the header are never read with the first as a
    # row label, which shifts every column by one; a separator ending each line is no column
    # (pandas drops the empty cells), and other extra cells are named by `_reading`. Spaces after a
    # separator ("u1, i5") are no part of the cell: " i5" would be another item than "i5"; nor
    # are those before one (`_csv_names`, `_without_trailing_spaces`).
    return pd.read_csv(path, sep=sep, names=list(names), header=0,
                       dtype={name: str for name in text_columns if name in header},
                       on_bad_lines=_PANDAS_BAD_LINES[bad_lines], index_col=False, skipinitialspace=True, **options)


def _csv_names(path, sep):
    """The cells of a CSV's header line, as the reads name the columns: spaces around a name are no
    part of it ("user_id " is user_id)."""
    import pandas as pd

    return pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False,
                       skipinitialspace=True).iloc[0].str.rstrip()


def _without_trailing_spaces(df):
    """`df` (a CSV's frame) with its text cells' trailing spaces dropped, as read_csv drops the
    leading ones (skipinitialspace): "u1 " is the user "u1", not another id."""
    import pandas as pd

    for name in df.columns:
        if pd.api.types.is_string_dtype(df[name].dtype):
            df[name] = df[name].str.rstrip()
    return df


def _whole_number_ids(df, text_columns):
    """`df` with the ids of its `text_columns` written as whole-number floats ("39.0": pandas writes
    an int column with gaps so) as the whole number ("39"), as `id_text` makes the 39.0 that the
    column is read as when its type is inferred: the same ids in train, evaluate and predict, and
    the ones a request sends."""
    for name in text_columns:
        if name in df.columns:
            df[name] = df[name].str.replace(r"^([+-]?\d+)\.0+$", r"\1", regex=True)
    return df


# pandas' on_bad_lines for each data.bad_lines: "warn" leaves a line out with a ParserWarning
# naming it, which `_reading` counts.
_PANDAS_BAD_LINES = {"error": "error", "skip": "warn"}


@contextlib.contextmanager
def _reading(path, bad_lines="error", skipped_to=None):
    """pandas' parser errors ("Expected 7 fields in line 50002, saw 8") as ConfigErrors naming the
    file; with bad_lines "skip", the lines it left out are counted and printed, never lost silently,
    and with `skipped_to` (a CSV file's path) written there with their text."""
    import pandas as pd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            yield
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: {str(error).strip()}",
                              hint="fix or drop the malformed line of the file (pandas counts lines from 1, the "
                                   "header included), or set data.bad_lines: skip") from None
        except pd.errors.EmptyDataError:  # pandas' "No columns to parse from file" names none of a glob's files
            raise ConfigError(f"{path}: the file is empty, without even a header line",
                              hint="remove it from the data files, or write the header of its columns") from None
    skipped = [line for warning in caught if issubclass(warning.category, pd.errors.ParserWarning)
               for line in str(warning.message).strip().splitlines() if line.startswith("Skipping line")]
    if any(str(warning.message).startswith("Length of header or names does not match") for warning in caught):
        # pandas took the first line's cells as the width and dropped the cells beyond the header
        raise ConfigError(f"{path}: {_longer_line(path)}; pandas would drop the extra cells",
                          hint="name every column in the header, or remove the extra cells")
    for warning in caught:  # anything else is shown as it would have been
        if not issubclass(warning.category, pd.errors.ParserWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    if skipped:
        if skipped_to:
            _record_skipped_lines(skipped_to, path, [int(re.match(r"Skipping line (\d+)", line).group(1))
                                                     for line in skipped])
        print(f"note: {path}: left out {len(skipped)} malformed line(s) (data.bad_lines: skip): "
              f"{'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''}"
              + (f"; all of them, with their text, in {skipped_to}" if skipped_to else ""), flush=True)


def _longer_line(path):
    """Where the first line of a CSV file with a non-empty cell beyond its header is, as pandas
    counts lines (from 1, the header included)."""
    import csv
    import gzip

    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8-sig", errors="replace",
                                                       newline="") as lines:
        reader = csv.reader(lines, delimiter=_csv_separator(path))
        header = next(reader)
        for cells in reader:
            if any(cell.strip() for cell in cells[len(header):]):
                return f"line {reader.line_num} has {len(cells)} cells, but the header names {len(header)} columns"
    return f"a line has more cells than the header names columns ({len(header)})"


def _record_skipped_lines(record, path, numbers):
    """Adds lines `numbers` of the data file `path` (counted from 1, the header included, as pandas
    counts them), with their text, to the CSV `record` (columns file, line, text); the lines it
    holds already, of this or another file, stay. So the lines `data.bad_lines: skip` leaves out of
    the data can still be read, fixed and fed again."""
    import gzip

    import pandas as pd

    wanted, texts = set(numbers), {}
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8", errors="replace",
                                                       newline="") as lines:
        for number, line in enumerate(lines, 1):
            if number in wanted:
                texts[number] = line.rstrip("\r\n")
                if len(texts) == len(wanted):
                    break
    rows = pd.DataFrame({"file": path, "line": sorted(texts), "text": [texts[n] for n in sorted(texts)]})
    if os.path.exists(record):
        rows = pd.concat([pd.read_csv(record, dtype={"file": str, "text": str}, keep_default_na=False), rows])
    os.makedirs(os.path.dirname(os.path.abspath(record)), exist_ok=True)
    with replaced_atomically(record) as handle:  # each worker of a cluster records the same lines
        rows.drop_duplicates(["file", "line"], keep="last").sort_values(["file", "line"]).to_csv(handle, index=False)


def _with_index_as_columns(df):
    """A Parquet frame whose named index (a pandas frame's `set_index("item_id")` before
    `to_parquet`), which pandas restores as the index, back among its columns: it holds data, and
    as an index it would be no column, its feature missing or, with `columns: infer`, left out
    without a word. An unnamed index (row labels) is no data and stays out."""
    return df.reset_index() if any(name is not None for name in df.index.names) else df


def _parquet_file(path):
    """pyarrow's ParquetFile of `path`, or a ConfigError naming the file."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow ({error}); pip install pyarrow") from None
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as error:  # pyarrow's "Parquet file size is 0 bytes" names no file
        raise ConfigError(f"{path}: cannot be read as Parquet: {error}") from None


def _parquet_frame(data, text_columns):
    """The frame of a Parquet table or batch, with the file's types, read whole or in chunks alike.
    An int column of `text_columns` (ids) with a null is pandas' nullable int (7 and <NA>): to_pandas
    makes it floats (7.0) when the file has no pandas metadata (as Spark writes it), which a kept
    column would write as "7.0" and a chunk without the null would not."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    df = _with_index_as_columns(data.to_pandas())
    for name in text_columns:
        if name in df.columns and name in data.schema.names and pa.types.is_integer(data.schema.field(name).type) \
                and df[name].dtype.kind == "f":
            column = data.column(name)
            # an array, not a Series: to_pandas gave df the file's own index (a frame's saved rows 3, 9, ...)
            df[name] = pd.arrays.IntegerArray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False),
                                              pc.is_null(column).to_numpy(zero_copy_only=False))
    return df


def _read_file_chunks(path, text_columns=(), chunk_rows=None, bad_lines="error", skipped_to=None):
    """`_read_file`'s frame of one file, `chunk_rows` rows at a time, without holding the file whole:
    the same columns text (`_csv_text_columns`), a Parquet file's types kept. Other columns are
    typed per chunk, as pandas reads them (a chunk of ids with a gap gets floats, which prepare()
    handles)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    sep = _csv_separator(path)
    if sep is None:
        for batch in _parquet_file(path).iter_batches(batch_size=chunk_rows):
            yield _parquet_frame(batch, text_columns)
        return
    with _reading(path, bad_lines, skipped_to):
        text_columns = _csv_text_columns(path, sep, text_columns, bad_lines)
        reader = _read_csv(path, sep, text_columns, bad_lines, chunksize=chunk_rows)
    while True:
        with _reading(path, bad_lines, skipped_to):  # around each read only: the caller's own warnings pass
            chunk = next(reader, None)
        if chunk is None:
            return
        yield _whole_number_ids(_without_trailing_spaces(chunk), text_columns)


def read_data(files, key="data.train", config_path="config", sequences=(), separator="|", numeric=(),
              text_columns=(), bad_lines="error", skipped_to=None):
    """One DataFrame from CSV/Parquet files (globs expanded), sequence cells turned into lists.

    A CSV cell of a sequence column holds its items joined by `separator` ("i3|i7|i9"; empty for
    none; an empty item between two separators is a placeholder, read as padding, so the
    sequences of one event stay aligned); a Parquet cell holds a list already. In a CSV, the
    column `<f>` of a sequence `hist_<f>` is read as text, as the sequence's items are: an id
    "007" stays "007" on both. The sequences in `numeric` (event times, the ids of an integer
    table) hold numbers, ints when every item is one, and their placeholders are 0; their `<f>`
    is read as pandas reads it. Columns in `text_columns` are read as text too.
    """
    import pandas as pd

    targets = _text_columns(sequences, numeric, text_columns)
    frames = [_read_file(f, targets, bad_lines, skipped_to) for f in _expand(files, key, config_path)]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return _with_sequences(df, config_path, sequences, separator, numeric)


def read_data_chunks(files, key="data.test", config_path="config", sequences=(), separator="|", numeric=(),
                     text_columns=(), chunk_rows=None, bad_lines="error", skipped_to=None):
    """`read_data`'s frame, at most `chunk_rows` rows (default CHUNK_ROWS) at a time: a file of any
    size in the memory of one chunk. The rows are numbered on across chunks and files (the index),
    as `read_data` numbers them."""
    import pandas as pd

    targets, offset = _text_columns(sequences, numeric, text_columns), 0
    for path in _expand(files, key, config_path):
        for chunk in _read_file_chunks(path, targets, chunk_rows, bad_lines, skipped_to):
            chunk.index = pd.RangeIndex(offset, offset + len(chunk))
            offset += len(chunk)
            yield _with_sequences(chunk, config_path, sequences, separator, numeric)


def _text_columns(sequences, numeric, text_columns):
    """Columns a CSV holds as text: `text_columns`, and the `<f>` of each sequence `hist_<f>` of ids,
    read as text as the sequence's items are (an id "007" stays "007" on both)."""
    return [name[len(HISTORY_PREFIX):] for name in sequences
            if name.startswith(HISTORY_PREFIX) and name not in numeric] + list(text_columns)


def _with_sequences(df, config_path, sequences, separator, numeric):
    """`df` with each sequence column's cells as lists (numbers in the `numeric` ones)."""
    for name in sequences:
        if name not in df.columns:
            raise ConfigError(f"{config_path}: columns.sequences: '{name}' is not a column of the data; its "
                              f"columns are {list(df.columns)}")
        _check_separator(df[name], name, separator, config_path)
        df[name] = [_sequence_cell(cell, separator) for cell in df[name].to_numpy()]
        if name in numeric:
            df[name] = _numeric_cells(df[name], name, config_path)
    return df


def _numeric_cells(cells, name, config_path):
    """Sequence cells as arrays of numbers: int64 when every item is written as a whole number
    ("17"; 17.0 is a float), else float64; a placeholder "" is 0."""
    import numpy as np

    texts = [["0" if item == "" else str(item) for item in cell] for cell in cells]
    for dtype in (np.int64, np.float64):
        try:
            return [np.array(cell, dtype=dtype) for cell in texts]
        except (ValueError, OverflowError):
            continue
    bad = next(item for cell in texts for item in cell if not _is_number(item))
    raise ConfigError(f"{config_path}: '{name}' is a sequence of numbers (event times in columns.dense, or the ids "
                      f"of an integer table), but holds {bad!r}",
                      hint="give the sequence as numbers in the data, or declare its column differently")


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _check_separator(cells, name, separator, config_path):
    """A ConfigError when a sequence's text cells seem joined by another separator: none holds
    `separator` and most of those with more than one character hold "," or ";" (each such cell
    would otherwise be read as one item)."""
    text = [cell for cell in cells if isinstance(cell, str) and len(cell) > 1 and not _is_json_list(cell)]
    if not text or any(separator in cell for cell in text):
        return
    for other in (",", ";"):
        if sum(other in cell for cell in text) * 2 > len(text):
            raise ConfigError(f"{config_path}: data.sequence_separator: no cell of '{name}' holds {separator!r}, "
                              f"but most hold {other!r} (e.g. {text[0]!r}); set sequence_separator: {other!r}")


def _is_json_list(cell):
    return cell.startswith("[") and cell.endswith("]")


def _sequence_cell(cell, separator):
    if isinstance(cell, str):
        if _is_json_list(cell):  # '["i3", "i7"]' (JSON) or "['i3', 'i7']" (pandas' to_csv of a list)
            for parse in (json.loads, ast.literal_eval):
                try:
                    return ["" if item is None else str(item) for item in parse(cell)]
                except (ValueError, SyntaxError, TypeError):
                    pass
        # "i3 | i7" or "i3, i7": the spaces belong to the separator, not to the ids, which would
        # otherwise miss their rows in the table the candidate column reads.
        return [item.strip() for item in cell.split(separator)] if cell.strip() else []
    if cell is None or (isinstance(cell, float) and cell != cell):
        return []
    return list(cell)


def split_data(df, config):
    """(train_df, test_df) by `config.split`: the last rows by `order_by`, or a seeded random split."""
    return _hold_out(df, config, config.split.test_fraction, "split.test_fraction", ("training", "test"),
                     config.split.order_by)


def validation_split(df, config, out=None):
    """(fit_df, validation_df): `train.validation.fraction` of the training rows held out as
    `split_data` holds out the test rows (validation_df None without `train.validation`)."""
    validation = config.train.validation
    if validation is None:
        return df, None
    # A retrieval model's samples are split at random: its order is each user's events.
    fit_df, validation_df = _hold_out(df, config, validation.fraction, "train.validation.fraction",
                                      ("training", "validation"), None if config.retrieval else config.split.order_by)
    monitored = validation_figures(config)[validation.monitor]  # the label of an AUC
    if monitored is not None:
        counts = validation_df[monitored].value_counts()
        if len(counts) < 2:
            raise ConfigError(f"{config.path}: train.validation: the {len(validation_df)} validation rows' "
                              f"'{monitored}' is always {counts.index[0]}, so their AUC is undefined; raise "
                              "train.validation.fraction or monitor loss")
        if counts.min() < FEW_VALIDATION_ROWS:
            print(f"note: the validation rows hold {counts.min()} of '{monitored}' = {counts.idxmin()}: an AUC of so "
                  "few moves by chance from epoch to epoch, and so may the epoch kept; raise "
                  "train.validation.fraction", file=out or sys.stdout)
    order = "at random" if config.retrieval or not config.split.order_by else f"the last by {config.split.order_by}"
    rows = "samples" if config.retrieval else "rows"
    print(f"validation: {len(validation_df)} of the training {rows} ({order}), not trained on; the epoch with the "
          f"best val_{validation.monitor} is kept" + (f", and training stops after {validation.patience} epoch(s) "
                                                       "without a better one" if validation.patience else ""),
          file=out or sys.stdout)
    return fit_df, validation_df


# Fewer validation rows of a class than this make the AUC that picks the epoch noisy.
FEW_VALIDATION_ROWS = 50


def _hold_out(df, config, fraction, key, names, order_by):
    """(kept, held out): `fraction` of the rows of `df`, the last by column `order_by` or drawn
    with `split.seed`, each part in the file's order."""
    import numpy as np

    n_held_out = int(round(len(df) * fraction))
    if n_held_out < 1 or n_held_out >= len(df):
        raise ConfigError(f"{config.path}: {key}: {fraction} of {len(df)} rows leaves no {names[0]} or no "
                          f"{names[1]} rows")
    if order_by is not None:
        if order_by not in df.columns:
            raise ConfigError(f"{config.path}: split.order_by: '{order_by}' is not a column; the columns are "
                              f"{list(df.columns)}")
        times = sortable_times(df[order_by], f"{config.path}: split.order_by")
        order = np.argsort(times.values, kind="stable")  # a numpy array, UTC datetime64 for dates
    else:
        order = np.random.default_rng(config.split.seed).permutation(len(df))
    kept, held_out = np.sort(order[:-n_held_out]), np.sort(order[-n_held_out:])
    return df.iloc[kept].reset_index(drop=True), df.iloc[held_out].reset_index(drop=True)


def sortable_times(times, where, time_format=None, format_key=None):
    """A column of times as values that sort by time: numbers and datetimes as they are, text as
    dates of `time_format`, else year-first (ISO 8601) dates. Other text is a ConfigError naming
    `where` ("<config>: <key>") and the row: sorted as text, 12/02/2024 would come after 01/03/2025,
    and day and month are never guessed (`format_key`: the key that gives `time_format`)."""
    import numpy as np
    import pandas as pd

    if times.dtype.kind in "iufM":
        return times
    parsed = pd.to_datetime(times.astype(str), format=time_format or "ISO8601", errors="coerce", utc=True)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        other_dates = (f"for other dates give {format_key} (e.g. '%d/%m/%Y %H:%M')" if format_key else
                       "convert other dates to one of those in the data")
        expected = f"dates in {format_key} {time_format!r}" if time_format else (
            f"numbers (epoch seconds) or year-first dates (2024-03-01 09:05); {other_dates}, so day and month are "
            "never guessed")
        raise ConfigError(f"{where}: column '{times.name}' holds {times.iloc[bad[0]]!r} in data row {bad[0]} "
                          f"({len(bad)} such cell(s)); it must hold {expected}")
    return parsed


def load_frames(config, feature_columns=None):
    """(train_df, test_df) of a config: its test files, or its split of the training files.

    `feature_columns`: a trained model's columns, whose sequences the files hold (else the
    config's `columns` section says which)."""
    sequences, numeric, text = _file_columns(config, feature_columns)
    df = fill(read_data(config.data.train, "data.train", config.path, sequences, config.data.sequence_separator,
                         numeric, text, config.data.bad_lines, skipped_lines_file(config)), config, sequences)
    _check_labels(df, config, weight_required=True)
    if feature_columns is None and config.columns.infer:
        numeric = numeric + _plain_integer_sequences(df, sequences, numeric, config.path)  # test files alike
    if config.data.test:
        test = fill(read_data(config.data.test, "data.test", config.path, sequences, config.data.sequence_separator,
                              numeric, text, config.data.bad_lines, skipped_lines_file(config)), config, sequences)
        _check_labels(test, config)
        return df, test
    return split_data(df, config)


def _plain_integer_sequences(df, sequences, numeric, config_path):
    """Columns to infer from a CSV: an id sequence whose every item, and the `<f>` of a `hist_<f>`
    whose every value, is a whole number in [1, 2^63) written plainly ("42"; not "042", "+42" or "4.0";
    an empty placeholder or a 0 in the sequence is padding) is turned into numbers in `df`, as
    Parquet's lists of ints are, so its table is an int64 one and requests send numbers. Any
    other stays text, so "007" stays "007". Returns the sequences turned."""
    import numpy as np

    from tfrec.data.columns import INT64_ID_END

    def plain(value, padding=False):  # an int64 table's id, as "18446744073709551615" is not
        return isinstance(value, str) and ((padding and value in ("", "0")) or
                                           (value.isascii() and value.isdigit() and value[0] != "0"
                                            and int(value) < INT64_ID_END))

    turned = []
    for name in sequences:
        owner = name[len(HISTORY_PREFIX):] if name.startswith(HISTORY_PREFIX) else None
        owner = owner if owner in df.columns else None
        if name in numeric or not all(isinstance(cell, list) and all(plain(item, True) for item in cell)
                                      for cell in df[name]):
            continue
        if owner is not None and not all(plain(value) for value in df[owner]):
            continue
        df[name] = _numeric_cells(df[name], name, config_path)
        if owner is not None:
            df[owner] = df[owner].astype(np.int64)
        turned.append(name)
    return turned


def skipped_lines_file(config):
    """Where the lines `data.bad_lines: skip` leaves out are kept: the run folder's
    `SKIPPED_LINES_FILE`, or None with `bad_lines: error` (a malformed line stops the command)."""
    return config.output_file(SKIPPED_LINES_FILE) if config.data.bad_lines == "skip" else None


def _file_columns(config, feature_columns=None):
    """(sequence columns, those of numbers, text columns) of the data files, by a trained model's
    columns or else the config's `columns` section. A string column's ids are read as written:
    "04324" is looked up as "04324", as requests send it. The ids of an integer table's sequence
    are numbers ("42|5" is 42, 5), and so is the column it shares the table with."""
    columns = config.columns
    if feature_columns is None and not columns.infer:
        feature_columns = explicit_columns(config)
    if feature_columns is None:  # inferred from the files: every id sequence is read as text
        sequences = list(columns.sequences)
        return sequences, [name for name in sequences if name in (columns.dense or ())], []
    sequences = [c.name for c in feature_columns if isinstance(c, (VarLenSparseFeat, VarLenDenseFeat))]
    numeric = [c.name for c in feature_columns if isinstance(c, VarLenDenseFeat) or
               (isinstance(c, VarLenSparseFeat) and c.dtype != "string")]
    text = [c.name for c in feature_columns if isinstance(c, SparseFeat) and c.dtype == "string"]
    return sequences, numeric, text


def data_chunks(config, feature_columns, files, key, labels=True, text_columns=()):
    """The rows of `files` (a pattern or list, as data.test takes) for a trained model, `CHUNK_ROWS`
    at a time: read, filled (`data.fill`), labels checked (if `labels`), gaps in categorical
    columns made padding (`prepare`); `text_columns` (no features) read as text."""
    sequences, numeric, text = _file_columns(config, feature_columns)
    text = text + list(text_columns)
    for chunk in read_data_chunks(files, key, config.path, sequences, config.data.sequence_separator, numeric, text,
                                  bad_lines=config.data.bad_lines, skipped_to=skipped_lines_file(config)):
        chunk = fill(chunk, config, sequences)
        if labels:
            _check_labels(chunk, config)
        yield prepare(chunk, feature_columns)


def test_chunks(config, feature_columns):
    """The prepared test rows of a trained run, `CHUNK_ROWS` at a time. With `data.test`, only the
    test files are read, a chunk at a time; else the training files are read whole, to split them."""
    if config.data.test:
        yield from data_chunks(config, feature_columns, config.data.test, "data.test")
        return
    test = prepare(load_frames(config, feature_columns)[1], feature_columns)
    for start in range(0, len(test), CHUNK_ROWS):
        yield test.iloc[start:start + CHUNK_ROWS]


def fill(df, config, sequences):
    """`df` with the empty cells of the `data.fill` columns filled."""
    for name, value in config.data.fill.items():
        if name not in df.columns:
            _fail(config.path, f"data.fill.{name}", f"is not a column of the data; its columns are {list(df.columns)}")
        if name in sequences:
            _fail(config.path, f"data.fill.{name}", "is a sequence: its empty cells are not filled (an empty "
                  "sequence is an empty history)")
        df[name] = df[name].fillna(value)
    return df


def _check_labels(df, config, weight_required=False):
    """A ConfigError naming the column and row of a label (or sample weight) the model cannot
    learn from. The `weight` column may be missing from test rows (a test set of the original,
    not downsampled, distribution), not from training rows (`weight_required`)."""
    import numpy as np

    from tfrec.data.behaviour import check_esmm_labels

    names = config.model.args.get("task_names")
    if config.multitask and names is not None and list(names) != list(config.tasks):
        raise ConfigError(f"{config.path}: model.args.task_names: the tasks are named by labels, in their order "
                          f"{list(config.tasks)}, but task_names is {list(names)}; remove task_names (task_types "
                          "follow the labels' order)")
    types = dict(zip(config.tasks, config.model.args.get("task_types", ())) if config.multitask else ())
    for task, column in config.tasks.items():
        if column not in df.columns:
            raise ConfigError(f"{config.path}: labels: '{column}' is not a column of the data; its columns are "
                              f"{list(df.columns)}")
        values = df[column].to_numpy()
        binary = types.get(task, "binary") == "binary"
        if values.dtype.kind not in "biuf":
            bad = next((row for row, value in enumerate(values) if not _is_number(str(value))), None)
            if bad is not None:  # else numbers read as text ("01"), converted below
                raise ConfigError(f"{config.path}: labels: column '{column}' must hold numbers"
                                  f"{' 0/1' if binary else ''}, but data row {df.index[bad]} holds {values[bad]!r}; "
                                  "map such values to numbers first")
        values = values.astype(float)
        if np.isnan(values).any():
            missing = np.flatnonzero(np.isnan(values))
            raise ConfigError(f"{config.path}: labels: column '{column}' has {len(missing)} empty cell(s), the "
                              f"first in data row {df.index[missing[0]]}; if an empty cell means a known value "
                              f"(a conversion left blank where there was no click: 0), give it with data: "
                              f"{{fill: {{{column}: 0}}}}, else drop those rows")
        if binary and not np.isin(values, (0, 1)).all():
            bad = np.flatnonzero(~np.isin(values, (0, 1)))
            raise ConfigError(f"{config.path}: labels: column '{column}' must hold 0/1 (a binary task), but data "
                              f"row {df.index[bad[0]]} holds {values[bad[0]]:g} (values seen: "
                              f"{sorted(set(np.unique(values).tolist()))[:10]}); map them to 0/1 first")
    if config.weight is not None:
        _check_weights(df, config, weight_required)
    if config.model.name == "ESMM" and len(config.tasks) == 2:
        (ctr, click), (ctcvr, conversion) = config.tasks.items()
        try:  # ESMM's first output is the click, its second click-and-convert: the order matters
            check_esmm_labels(df, click_col=click, conversion_col=conversion)
        except ValueError as error:
            raise ConfigError(f"{config.path}: labels: ESMM reads its first label ('{ctr}': {click}) as the click and "
                              f"its second ('{ctcvr}': {conversion}) as the conversion after a click, but {error}; "
                              "list the click first, e.g. labels: {ctr: click, ctcvr: conversion}") from None


def _check_weights(df, config, required):
    import numpy as np

    column = config.weight
    if column not in df.columns:
        if required:
            raise ConfigError(f"{config.path}: weight: '{column}' is not a column of the training data; its columns "
                              f"are {list(df.columns)}")
        return
    values = df[column]
    if values.dtype.kind not in "biuf":
        import pandas as pd

        values = pd.to_numeric(values, errors="coerce")
    values = values.to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if len(bad):
        value = df[column].iloc[bad[0]]
        raise ConfigError(f"{config.path}: weight: column '{column}' must hold numbers >= 0, but data row "
                          f"{df.index[bad[0]]} holds {value.item() if isinstance(value, np.generic) else value!r} "
                          f"({len(bad)} row(s) do); fill, fix or drop those rows")


# --- Columns -------------------------------------------------------------------------------

_COLUMN_TYPES = ("sparse", "sequence", "dense", "dense_sequence")


def infer_columns(train_df, config):
    """Feature columns from the training split, by `config.columns` (`tfrec.data.infer_feature_columns`)."""
    from tfrec.data import ColumnInferenceError, infer_feature_columns

    options = config.columns
    try:
        columns = infer_feature_columns(train_df, config.tasks.values(), options.exclude + [config.weight] * (
                                            config.weight is not None), options.dense,
                                        options.sequences, options.min_count, options.embedding_dim)
    except ColumnInferenceError as error:
        key = "columns" if error.key is None else f"columns.{error.key}"
        raise ConfigError(f"{config.path}: {key}: {error.problem}") from None
    names = {column.name for column in columns}
    for column in columns:
        target = column.name[len(HISTORY_PREFIX):]
        if type(column) is SparseFeat and column.name.startswith(HISTORY_PREFIX) and target in names:
            raise ConfigError(f"{config.path}: columns.sequences: '{column.name}' pairs with '{target}' but is read "
                              f"as one value per row; list it under columns.sequences (a CSV cell joins its items "
                              f"with {config.data.sequence_separator!r})")
    return columns


def explicit_columns(config):
    """The columns a config lists: `type` sparse -> SparseFeat, sequence -> VarLenSparseFeat, dense ->
    DenseFeat, dense_sequence -> VarLenDenseFeat (event times)."""
    columns = []
    for i, entry in enumerate(config.columns.explicit):
        kwargs = {k: v for k, v in entry.items() if k not in ("type", "maxlen", "combiner", "length_name")}
        if isinstance(kwargs.get("vocabulary_path"), str):  # relative to the config, as every path
            kwargs["vocabulary_path"] = _resolve(config.path, kwargs["vocabulary_path"])
        try:
            if entry["type"] == "dense":
                columns.append(DenseFeat(**kwargs))
            elif entry["type"] == "dense_sequence":
                columns.append(VarLenDenseFeat(maxlen=entry.get("maxlen"), **kwargs))
            elif entry["type"] == "sparse":
                columns.append(SparseFeat(**kwargs))
            else:
                columns.append(VarLenSparseFeat(SparseFeat(**kwargs), maxlen=entry.get("maxlen"),
                                                combiner=entry.get("combiner", "mean"),
                                                length_name=entry.get("length_name")))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{config.path}: columns[{i}] ('{entry['name']}'): {error}") from None
    return columns


def columns_to_json(columns, min_count=None):
    """A list of feature columns as JSON-ready dicts (no initializers or transform functions).
    `min_count`: recorded in the entry of each column with a vocabulary (how often a value had to
    be seen to get a row), for a warm start; `columns_from_json` leaves it out."""
    out = []
    for column in columns:
        if isinstance(column, VarLenSparseFeat):
            out.append({"type": "sequence", **_sparse_fields(column.sparsefeat, min_count), "maxlen": column.maxlen,
                        "combiner": column.combiner, "length_name": column.length_name})
        elif isinstance(column, SparseFeat):
            out.append({"type": "sparse", **_sparse_fields(column, min_count)})
        elif isinstance(column, DenseFeat):
            if column.transform_fn is not None:
                raise ValueError(f"column '{column.name}': a transform_fn cannot be written to JSON")
            out.append({"type": "dense", "name": column.name, "dimension": column.dimension, "dtype": column.dtype})
        elif isinstance(column, VarLenDenseFeat):
            out.append({"type": "dense_sequence", "name": column.name, "maxlen": column.maxlen, "dtype": column.dtype})
        else:
            raise ValueError(f"column '{column.name}': {type(column).__name__} cannot be written to JSON")
    return out


def _sparse_fields(column, min_count=None):
    if column.embeddings_initializer is not None:
        raise ValueError(f"column '{column.name}': an embeddings_initializer cannot be written to JSON")
    fields = {"name": column.name, "vocabulary_size": column.vocabulary_size, "embedding_dim": column.embedding_dim,
              "use_hash": column.use_hash, "vocabulary_path": column.vocabulary_path, "dtype": column.dtype,
              "embedding_name": column.embedding_name,
              "vocabulary": None if column.vocabulary is None else list(column.vocabulary)}
    if min_count and column.vocabulary is not None:
        fields["min_count"] = int(min_count)
    return fields


def columns_from_json(entries):
    """The inverse of `columns_to_json`."""
    columns = []
    for entry in entries:
        entry = dict(entry)
        entry.pop("min_count", None)  # how the vocabulary was made (`columns_to_json`), not a column argument
        kind = entry.pop("type")
        if kind in ("dense", "dense_sequence"):
            columns.append(DenseFeat(**entry) if kind == "dense" else VarLenDenseFeat(**entry))
            continue
        sequence = {k: entry.pop(k) for k in ("maxlen", "combiner", "length_name") if k in entry}
        sparse = SparseFeat(**entry)
        columns.append(VarLenSparseFeat(sparse, **sequence) if kind == "sequence" else sparse)
    return columns


def build_columns(train_df, config):
    columns = infer_columns(train_df, config) if config.columns.infer else explicit_columns(config)
    check_no_answer_is_a_feature(columns, config, "columns")
    return columns


def check_no_answer_is_a_feature(columns, config, key):
    """A ConfigError (at `key`) when a label or the sample weight column is one of `columns`: the
    model would read the answer it is asked to predict (a downsampled log's weights tell the kept
    negatives from the clicks), and need it to score a row."""
    labels = set(config.tasks.values())
    leaked = [column.name for column in columns if column.name in labels]
    if leaked:
        raise ConfigError(f"{config.path}: {key}: {leaked} are labels, so they cannot be features too")
    if config.weight in {column.name for column in columns}:
        raise ConfigError(f"{config.path}: {key}: '{config.weight}' is the weight column, so it cannot be a "
                          "feature too")


# --- Steps ---------------------------------------------------------------------------------


@contextlib.contextmanager
def step(what, out=None):
    """Prints `what ...` before a long step and `what: done in 12.3 s` after it."""
    out = out or sys.stdout
    print(f"{what} ...", file=out, flush=True)
    started = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - started:.1f} s", file=out, flush=True)


def model_args(config):
    """`model.args`, with the model's `seed` (of its initial weights) following `train.seed`:
    DeepCTR's default 1024 at seed 0, 1024 + seed otherwise, so that runs of other seeds start
    from other weights (they only shuffled the rows otherwise)."""
    return {"seed": 1024 + config.train.seed, **config.model.args}


def build_model(config, columns):
    """The config's model over `columns`, uncompiled (task names from the labels for multi-task)."""
    import tfrec.models

    args = model_args(config)
    if config.multitask:
        args.setdefault("task_names", list(config.tasks))
        args.setdefault("task_types", ["binary"] * len(config.tasks))
    elif "history_feature_list" not in args:
        args["history_feature_list"] = [c.name[len("hist_"):] for c in columns
                                        if isinstance(c, VarLenSparseFeat) and c.name.startswith("hist_")
                                        and c.embedding_name == c.name[len("hist_"):]]
    builder = getattr(tfrec.models, config.model.name)
    try:
        model = builder(columns, **args)
    except TypeError as error:
        raise ConfigError(f"{config.path}: model.args: {error}") from None
    except ValueError as error:
        raise ConfigError(f"{config.path}: model: {error}") from None
    if not config.multitask and len(model.outputs) != 1:  # SIM's auxiliary soft search adds "gsu_prediction"
        raise ConfigError(f"{config.path}: model.args: this {config.model.name} has the outputs "
                          f"{model.output_names}, and a config trains one output on its one label; train it in "
                          "Python with a loss per output")
    return model


def _compile(model, config):
    import tensorflow as tf

    from tfrec import metrics
    from tfrec.models import compile_multitask

    optimizer = tf.keras.optimizers.Adam(config.train.learning_rate)
    if config.multitask:
        compile_multitask(model, optimizer, weighted_metrics=config.weight is not None,
                          lazy_adam=config.train.lazy_adam)
    else:
        # With sample weights, the metrics Keras prints are weighted too (its loss divides by the rows).
        model.compile(optimizer, "binary_crossentropy", lazy_adam=config.train.lazy_adam,
                      **{"weighted_metrics" if config.weight else "metrics": [metrics.AUC(), metrics.LogLoss()]})


def _label_columns(config):
    return config.tasks if config.multitask else next(iter(config.tasks.values()))


def train(config, verbose=2, tensorboard=None, out=None):
    """Trains the config's model on its training split and writes it to `config.output`.

    Writes `model.keras` (load it with `tfrec.load_model`) and `columns.json` (the feature
    columns, for `evaluate` and `export`).

    Args:
      verbose: Keras' fit verbosity (1: a progress bar, 2: one line per epoch, 0: silent).
      tensorboard: a folder for TensorBoard logs, or None.

    Returns:
      The trained Keras model.
    """
    import tensorflow as tf

    if config.retrieval:
        from tfrec import retrieval_run

        return retrieval_run.train(config, verbose, tensorboard, out)
    warm = warm_start_columns(config, out) if config.train.warm_start else None
    with step(f"reading {len(config.data.train)} data file(s)", out):
        train_df, test_df = load_frames(config, warm.columns if warm else None)
    print(f"{len(train_df)} training rows, {len(test_df)} test rows", file=out or sys.stdout)
    _say_repeated_rows(train_df, test_df, out)
    train_df, validation_df = validation_split(train_df, config, out)  # vocabularies from the rows trained on
    if warm:
        check_no_answer_is_a_feature(warm.columns, config, "weight (a feature of the run in train.warm_start)")
    columns = warm.columns if warm else build_columns(train_df, config)
    train_df = prepare(train_df, columns)
    _check_dense(train_df, columns, config)
    if validation_df is not None:
        validation_df = prepare(validation_df, columns)
        _check_dense(validation_df, columns, config)
    _check_test_rows(test_df, columns, config)  # before loading or training a model, not after it
    tf.keras.utils.set_random_seed(config.train.seed)
    strategy = strategy_of(config)
    if warm:
        warm_model, columns = grown(warm_start_model(config, out), columns, train_df, warm.growth, out)

    def make_model():
        model = distribute.placed_copy(warm_model) if warm else build_model(config, columns)
        _compile(model, config)
        return model

    return fit_and_save(config, strategy, make_model, columns, train_df, _label_columns(config), warm, verbose,
                        tensorboard, out, validation_df)


def strategy_of(config):
    """The config's `tf.distribute` strategy. Built before any model, a warm start's included:
    a parameter-server chief connects to its cluster then, and variables made before are lost."""
    settings = config.strategy
    return distribute.build_strategy(settings.kind, tf_config=settings.tf_config,
                                     min_shard_bytes=settings.min_shard_bytes, join_timeout=settings.join_timeout)


def fit_and_save(config, strategy, make_model, columns, train_df, labels, warm, verbose=2, tensorboard=None,
                 out=None, validation_df=None, validation_callbacks=()):
    """Trains `make_model()` (a compiled model, built in the scope of `strategy`) on
    the rows of `train_df` (`labels`: their label columns, None for a two-tower model's samples),
    with the run's TensorBoard logs and backups; checks its losses and saves it with `columns`
    and the count its vocabularies required (`warm`: the `WarmStartColumns` of a warm start, or
    None). With `validation_df` (`validation_split`), keeps the best epoch's weights and stops
    early as `train.validation` says; `validation_callbacks` log the validation figures Keras'
    own evaluation does not (a retrieval model's val_recall). Returns the model."""
    import numpy as np
    import tensorflow as tf

    from tfrec.data import df_to_dataset

    settings = config.strategy
    with strategy.scope():  # the model, its optimizer and metrics live where the strategy puts them
        model = make_model()
    if settings.kind == "parameter_server":
        _say_shards(model, settings.min_shard_bytes, out)
    callbacks = []
    if tensorboard:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=tensorboard))
    validation = config.train.validation if validation_df is not None else None
    early_stopping = None
    if validation:
        # Keras' own early stopping; its best weights are restored at the end, stopped or not.
        early_stopping = tf.keras.callbacks.EarlyStopping(
            f"val_{validation.monitor}", mode="max" if maximised(validation.monitor) else "min",
            patience=validation.patience or config.train.epochs, restore_best_weights=True)
        callbacks += [*validation_callbacks, early_stopping]  # it reads what the validation callbacks log
    if settings.checkpoint_dir:
        claim_backup_folder(settings.checkpoint_dir, config, columns)
        # A resumed run carries on early stopping's count, best figure and best weights.
        callbacks += distribute.checkpoint_callbacks(settings.checkpoint_dir, settings.save_freq,
                                                     keep_state_of=[early_stopping] if early_stopping else [])
    fit_args = {}
    if settings.kind is None:
        dataset = df_to_dataset(train_df, columns, labels, batch_size=config.train.batch_size, seed=config.train.seed,
                                weight_column=config.weight)
        if validation_df is not None:
            fit_args["validation_data"] = df_to_dataset(validation_df, columns, labels, shuffle=False,
                                                        batch_size=config.train.batch_size, weight_column=config.weight)
    else:
        def distributed(df, shuffle):
            return distribute.distributed_dataset(strategy, distribute.dataframe_dataset_fn(
                df, columns, labels, config.train.batch_size, shuffle=shuffle, seed=config.train.seed, repeat=True,
                weight_column=config.weight))

        # Keras needs the length of a distributed dataset: an epoch is one pass over the rows
        # (a final partial batch is left to the next epoch's shuffle). Keras keeps one iterator
        # across epochs when given steps_per_epoch, so the data repeats (else epoch 2 runs dry).
        dataset = distributed(train_df, shuffle=True)
        fit_args["steps_per_epoch"] = max(1, len(train_df) // config.train.batch_size)
        if validation_df is not None:
            # Keras needs the steps of a distributed dataset, and whole batches keep the workers in
            # step: the last batch is filled up with the first rows again, so that every epoch's
            # steps take the same rows (Keras keeps one iterator of the repeated data across epochs).
            steps = -(-len(validation_df) // config.train.batch_size)
            whole = validation_df.iloc[np.arange(steps * config.train.batch_size) % len(validation_df)]
            fit_args.update(validation_data=distributed(whole, shuffle=False), validation_steps=steps)
    with step(f"training {config.model.name} for {config.train.epochs} epoch(s)"
              + (f" ({settings.kind})" if settings.kind else ""), out):
        history = model.fit(dataset, epochs=config.train.epochs, verbose=verbose, callbacks=callbacks, **fit_args)
    check_losses(history.history.get("loss", []))
    kept = {"rows": len(validation_df), **_say_best_epoch(config, history, early_stopping, out)} \
        if validation else None
    # A new run's inferred vocabularies hold the values seen columns.min_count times (listed
    # columns: no count); a warm start's grew by its own count.
    save(model, columns, config, out, min_count=warm.recorded if warm else
         config.columns.min_count if config.columns.infer else None,
         record=run_record(config, len(train_df), history.history, kept))
    return model


def _say_best_epoch(config, history, early_stopping, out=None):
    """Prints which epoch's weights training kept (`early_stopping`'s best, which a run resumed
    from its backup remembers from before the restart); returns {"best_epoch", "epochs"}
    (numbered from 1; a resumed run counts on from its earlier epochs) and "figure", the kept
    epoch's val_<monitor> (a resumed run's history lacks the epochs before the restart)."""
    monitor = config.train.validation.monitor
    if not history.history.get(f"val_{monitor}"):  # load_config checked the name against validation_figures
        raise RuntimeError(f"training logged no val_{monitor}, only {sorted(history.history)}")
    best_epoch, epochs = early_stopping.best_epoch + 1, history.epoch[-1] + 1
    stopped = f"; stopped after epoch {epochs} of {config.train.epochs}" if epochs < config.train.epochs else ""
    print(f"kept epoch {best_epoch} (val_{monitor} {early_stopping.best:.4f}){stopped}", file=out or sys.stdout)
    return {"best_epoch": best_epoch, "epochs": epochs, "figure": float(early_stopping.best)}


def run_record(config, rows, history, validation=None):
    """What `run.json` keeps of a training run, to reproduce it and to tell runs apart: the
    config file and its `--set` overrides, the settings as trained (epochs after `--epochs`), the
    seeds, the versions, the data files (`_file_stamps`; `held_out`: what the test split depends
    on), each epoch's losses and metrics and, with `train.validation`, {"rows": n, "best_epoch":
    k, "epochs": e, "figure": f}, the validation rows, the epoch kept, the last epoch run (from 1)
    and the kept epoch's validation figure.
    `settings`: every section of the config as run (defaults and overrides applied), which
    `tfrec compare` lines up."""
    import platform

    import tensorflow as tf

    from tfrec import __version__

    train_files = _file_stamps(config.data.train)  # each file read once: its stamps serve both entries
    settings = dataclasses.asdict(config)
    for where in ("path", "overrides", "output", "export"):  # where the run reads and writes, not how it trains
        settings.pop(where)
    return {"config": config.path, "overrides": config.overrides, "settings": settings,
            "model": {"name": config.model.name,
                                                                           "args": model_args(config)},
            "train": dataclasses.asdict(config.train), "weight": config.weight, "rows": rows,
            "data": {"train": train_files, "test": _file_stamps(config.data.test or [])},
            "held_out": held_out_inputs(config, train_files),
            "versions": {"tfrec": __version__, "tensorflow": tf.__version__, "python": platform.python_version()},
            "history": {name: [float(value) for value in values] for name, values in history.items()},
            "validation": validation,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


_STAMP_BYTES = 1 << 20


def _file_stamps(patterns):
    """Each file of `patterns`: its path, its size and the SHA-256 of its first and last MiB (what
    changes with the rows, without reading a large file whole)."""
    import hashlib

    stamps = []
    for path in sorted(path for pattern in patterns for path in glob.glob(pattern)):
        size, digest = os.path.getsize(path), hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(handle.read(_STAMP_BYTES))
            if size > _STAMP_BYTES:
                handle.seek(max(_STAMP_BYTES, size - _STAMP_BYTES))
                digest.update(handle.read())
        stamps.append({"path": path, "bytes": size, "sha256_first_last_mib": digest.hexdigest()})
    return stamps


def held_out_inputs(config, train_files=None):
    """What a test split of the training files depends on: the files as they are (by name, size
    and content: a folder copied or moved elsewhere holds the same rows), and the split and
    retrieval settings; None with data.test, whose rows are the test files. `train_files`:
    `_file_stamps(config.data.train)`, when the caller has them."""
    if config.data.test:
        return None
    files = [{"name": os.path.basename(stamp["path"]), **{k: v for k, v in stamp.items() if k != "path"}}
             for stamp in (train_files if train_files is not None else _file_stamps(config.data.train))]
    if config.retrieval:  # each user's last events, by the keys that make the samples
        settings = dataclasses.asdict(config.retrieval)
        return {"data.train": files, "retrieval": {key: settings[key] for key in _SAMPLE_KEYS}}
    return {"data.train": files, "split": dataclasses.asdict(config.split)}


_SAMPLE_KEYS = ("user", "item", "category", "time", "time_format", "seq_maxlen", "short_sess_length", "min_history")


def same_held_out_rows(one, other):
    """Whether two `held_out_inputs` records make the same test split (split.seed draws nothing
    when split.order_by orders the rows)."""
    def rows(held_out):
        if held_out and held_out.get("split", {}).get("order_by") is not None:
            return {**held_out, "split": {k: v for k, v in held_out["split"].items() if k != "seed"}}
        return held_out

    return rows(one) == rows(other)


def check_held_out_rows_unchanged(config, out=None):
    """A ConfigError when the test split `evaluate` would make now is not the one `train` held out
    (the training files or the split settings changed since, as `run.json` records them): it
    would score rows the model trained on. Test files (data.test) that are training files of the
    run are named in a note."""
    path = config.output_file(RUN_FILE)
    if not os.path.exists(path):  # a run older than run.json
        return
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if config.data.test:
        trained = {(stamp["bytes"], stamp["sha256_first_last_mib"]) for stamp in record["data"]["train"]}
        for stamp in _file_stamps(config.data.test):
            if (stamp["bytes"], stamp["sha256_first_last_mib"]) in trained:
                print(f"note: data.test {stamp['path']} is a file the model trained on (its size and contents are "
                      f"those of a data.train file {path} records): its figures score rows the model has seen",
                      file=out or sys.stdout)
        return
    then = record.get("held_out")
    now = held_out_inputs(config)
    if then is None or same_held_out_rows(then, now):
        return
    changed = [key for key in now if key != "data.train" and now[key] != then.get(key)]
    if now["data.train"] != then.get("data.train"):
        changed.insert(0, "data.train (its files' names, sizes or contents)")
    raise ConfigError(f"{config.path}: the test rows would be another split of data.train than the one `tfrec "
                      f"train` held out ({', '.join(changed)} changed since, as {path} records): the model would "
                      "be scored on rows it trained on",
                      hint="train again, or give the test rows as data.test")


def _say_shards(model, min_shard_bytes, out=None):
    """One line on which variables the parameter servers split, and where each shard lives."""
    placement = distribute.shard_placement(model)
    if not placement:
        print(f"no variable reaches twice strategy.min_shard_bytes ({min_shard_bytes} bytes): each lives whole "
              "on one parameter server", file=out or sys.stdout)
        return

    def task(device):  # "/job:ps/replica:0/task:1/device:CPU:0" -> "ps 1"
        match = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", device)
        return f"{match.group(1)} {match.group(2)}" if match else device

    print("split across the parameter servers: " + "; ".join(
        f"{name} ({', '.join(f'{rows} rows on {task(device)}' for device, rows in shards)})"
        for name, shards in placement.items()), file=out or sys.stdout)


@dataclass
class WarmStartColumns:
    """The columns of the run in `train.warm_start`, and how its vocabularies grow today.

    Attributes:
      columns: the earlier run's feature columns.
      growth: how often a value new to a vocabulary must be in today's rows to get a row
        (`train.grow_vocabularies`; true: the earlier run's count); 0: no growth.
      recorded: the count today's run records in its `columns.json`, for tomorrow's.
    """
    columns: list
    growth: int
    recorded: Optional[int]


def warm_start_columns(config, out=None):
    """`WarmStartColumns` of the run in `train.warm_start`: read before today's data (which is
    read with them), and before its model is loaded, so that a mistake in the data is reported
    first. A ConfigError when the folder holds no trained run. A folder whose `columns.json`
    records no count (an older tfrec wrote it) grows by values seen once, and a line on `out`
    says so and how to ask for more."""
    folder = config.train.warm_start
    for name in (MODEL_FILE, COLUMNS_FILE):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ConfigError(f"{config.path}: train.warm_start: {folder} holds no {name}: give the output folder of "
                              "an earlier `tfrec train --config` run")
    _check_warm_start_model(config, _saved_model_name(os.path.join(folder, MODEL_FILE)))
    with open(os.path.join(folder, COLUMNS_FILE), encoding="utf-8") as handle:
        entries = json.load(handle)
    earlier = max((entry["min_count"] for entry in entries if entry.get("min_count")), default=None)
    wanted = config.train.grow_vocabularies
    if earlier is None and wanted is True and any(entry.get("vocabulary") is not None for entry in entries):
        print(f"{COLUMNS_FILE} of {folder} does not record how often a value had to be seen to get a row (an older "
              "tfrec wrote it): new values get one when seen once today; to keep rare values out as the earlier run "
              "did, set train.grow_vocabularies to its columns.min_count", file=out or sys.stdout)
    growth = (earlier or 1) if wanted is True else int(wanted)
    return WarmStartColumns(columns_from_json(entries), growth, growth or earlier)


def _saved_model_name(path):
    """The name of the model in a `.keras` file, read from its config without TensorFlow (None
    when the file is not one)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))["config"]["name"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _check_warm_start_model(config, name):
    """A ConfigError when the warm start's model (named `name`) is another model than the config's."""
    if name is not None and re.sub(r"[^a-z]", "", name.lower()) != config.model.name.lower():
        raise ConfigError(f"{config.path}: train.warm_start: {config.train.warm_start} holds a model named '{name}', "
                          f"and this config trains {config.model.name}")


def warm_start_model(config, out=None):
    """The model of the run in `train.warm_start`, uncompiled, or a ConfigError when it is
    another model than the config's."""
    from tfrec.saving import load_model

    folder = config.train.warm_start
    with step(f"loading the model to start from, {os.path.join(folder, MODEL_FILE)}", out):
        model = load_model(os.path.join(folder, MODEL_FILE), compile=False)
    _check_warm_start_model(config, model.name)
    if config.model.args:
        print(f"model.args are not used with train.warm_start: the model is the one in {folder}, as it was built",
              file=out or sys.stdout)
    return model


def grown(model, columns, train_df, min_count, out=None, item_counts=None, new_rows="initializer", sampler=None):
    """(model, columns) of a warm start with rows for the values of `train_df` new to its
    vocabularies (seen `min_count` times; 0: no growth), started as `new_rows` says
    (`tfrec.saving.with_grown_tables`).

    `item_counts(columns)`: a two-tower model's sampler counts (of `train_df`'s targets) for the
    grown columns; the model is rebuilt with them even when no table grows, drawing its negatives
    as `sampler` says ((kind, num_sampled), or None: as before).
    """
    from tfrec.data import grow_vocabularies, unknown_shares
    from tfrec.saving import with_grown_tables

    if min_count:
        grown_columns, grown_tables = grow_vocabularies(columns, train_df, int(min_count))
    else:
        grown_columns, grown_tables = columns, {}
        shares = unknown_shares(columns, train_df)
        if shares:
            print("grow_vocabularies is false: the values new to the vocabularies are looked up as the "
                  "out-of-vocabulary row (" + ", ".join(f"{name} {share:.1%}" for name, share in shares.items())
                  + " of the ids)", file=out or sys.stdout)
    counts = item_counts(grown_columns) if item_counts else None
    if grown_tables:
        before, after = ({c.embedding_name: c.vocabulary_size for c in cs
                          if isinstance(c, (SparseFeat, VarLenSparseFeat))} for cs in (columns, grown_columns))
        what = ("growing the vocabularies by the new values (" + ", ".join(
            f"{table} +{after[table] - before[table]}" for table in grown_tables)
            + f"; seen at least {'once' if min_count == 1 else f'{min_count} times'})")
    elif counts is not None:
        what = ("no values new to the vocabularies; " if min_count else "") + "counting the sampler's items anew"
    else:
        if min_count:
            print("no values new to the vocabularies", file=out or sys.stdout)
        return model, columns
    with step(what, out):
        return (with_grown_tables(model, grown_tables, item_count=counts, new_rows=new_rows, sampler=sampler),
                grown_columns)


def check_losses(losses):
    """A ValueError when an epoch's loss is not finite, so a diverged model is never saved.

    Checked per epoch, after fit: a per-batch callback (TerminateOnNaN) would make fit run one
    step per call instead of steps_per_execution.
    """
    import numpy as np

    diverged = np.flatnonzero(~np.isfinite(losses))
    if len(diverged):
        raise ValueError(f"training diverged: the loss became {losses[diverged[0]]} in epoch {diverged[0] + 1}, so "
                         "nothing was saved; lower train.learning_rate, or check the data for extreme values")


RUN_RECORD_FILE = "tfrec_run.json"


def claim_backup_folder(folder, config, columns):
    """Records which run a `strategy.checkpoint_dir` backs up, or a ConfigError when it holds the
    backup of another run: other data files (by name and size), columns or training settings.
    BackupAndRestore resumes whatever backup it finds, so the next day's run on new data would
    carry on from yesterday's weights with its ids meaning other rows."""
    record = json.dumps({
        "model": [config.model.name, config.model.args], "labels": config.labels,
        "train": dataclasses.asdict(config.train), "strategy": config.strategy.kind,
        "data": [[os.path.basename(path), os.path.getsize(path)] for path in _expand(config.data.train, "data.train",
                                                                                     config.path)],
        "columns": columns_to_json(columns)}, sort_keys=True, default=str)
    path = os.path.join(folder, RUN_RECORD_FILE)
    # Another worker's record being written (or one a kill cut short) is staged beside it: no backup.
    backup = os.path.isdir(folder) and any(not entry.startswith(RUN_RECORD_FILE) for entry in os.listdir(folder))
    if backup:
        try:
            with open(path, encoding="utf-8") as handle:
                written = json.load(handle)
        except (OSError, ValueError):
            written = None
        if written is None or written.get("run") != record:
            by = f" (written by {written.get('config')} at {written.get('time')})" if written else ""
            raise ConfigError(
                f"{config.path}: strategy.checkpoint_dir: {folder} holds the backup of another run{by}: its data "
                "files, columns or training settings differ from this run's, and a backup resumes only the run "
                "that wrote it; remove the folder to start afresh, or give this run its own checkpoint_dir")
        return
    os.makedirs(folder, exist_ok=True)
    with replaced_atomically(path) as handle:
        json.dump({"run": record, "config": config.path, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, handle)


def repeated_rows(train_df, test_df):
    """(training rows that repeat an earlier training row exactly, test rows that repeat a
    training row exactly): a log's repeats (a retried or doubly logged impression), compared over
    the columns both hold, history cells included."""
    import numpy as np
    import pandas as pd

    shared = [name for name in train_df.columns if name in test_df.columns]

    def row_hashes(df):
        cells = {name: df[name].map(lambda cell: tuple(cell) if isinstance(cell, (list, np.ndarray)) else cell)
                 if df[name].dtype == object else df[name] for name in shared}
        return pd.util.hash_pandas_object(pd.DataFrame(cells, index=df.index), index=False)

    train_hashes = row_hashes(train_df)
    return int(train_hashes.duplicated().sum()), int(row_hashes(test_df).isin(train_hashes).sum())


def _say_repeated_rows(train_df, test_df, out):
    """Prints how many rows repeat another exactly. They are kept (an impression may truly repeat),
    but a test row that repeats a training row is scored on what the model trained on, which
    flatters the test AUC."""
    repeats, leaked = repeated_rows(train_df, test_df)
    if not repeats and not leaked:
        return
    print(f"note: {repeats} of {len(train_df)} training rows repeat another training row exactly, and {leaked} of "
          f"{len(test_df)} test rows repeat a training row (their test score is on rows the model trained on); "
          "they are kept: if they are a log's repeats, drop them (pandas' drop_duplicates) before training",
          file=out or sys.stdout)


def _check_test_rows(test_df, columns, config):
    """A ConfigError when the test rows lack a feature's column or the `evaluate.group` column."""
    where = "data.test" if config.data.test else "data.train"
    missing = [column.name for column in columns if column.name not in test_df.columns]
    if missing:
        rows = "the test rows" if config.data.test else "the data"
        raise ConfigError(f"{config.path}: {where}: {rows} lack the feature column(s) {missing} the model takes; "
                          f"their columns are {list(test_df.columns)}")
    group = config.evaluate.group
    if group is not None and group not in test_df.columns:
        raise ConfigError(f"{config.path}: evaluate.group: '{group}' is not a column; the columns are "
                          f"{list(test_df.columns)}")
    # A row of no group (GAUC could not sort the keys); a categorical feature's gaps are padding (prepare)
    padded = {column.name for column in columns if isinstance(column, SparseFeat)}
    if group is not None and group not in padded and test_df[group].isna().any():
        empty = test_df.index[test_df[group].isna().to_numpy()]
        raise ConfigError(f"{config.path}: evaluate.group: column '{group}' has {len(empty)} empty cell(s) in the "
                          f"test rows, the first in data row {empty[0]}; give their value with data: "
                          f"{{fill: {{{group}: ...}}}}, or drop those rows")


def _check_dense(df, columns, config):
    """A ConfigError for the first dense column of the training rows with an empty cell."""
    import numpy as np

    for column in columns:
        if isinstance(column, DenseFeat) and column.name in df.columns and df[column.name].dtype.kind == "f":
            gaps = np.flatnonzero(df[column.name].isna().to_numpy())
            if len(gaps):
                inferred = ""
                if config.columns.infer and config.columns.dense is None:
                    inferred = (" It is dense because it holds floats: if it holds ids, which pandas reads as floats "
                                "when the column has gaps, list the numeric columns under columns.dense, and the "
                                "others are categorical")
                raise ConfigError(f"{config.path}: columns: dense column '{column.name}' has {len(gaps)} empty "
                                  f"cell(s) in the training rows, the first in row {gaps[0]}; give their value with "
                                  f"data: {{fill: {{{column.name}: 0}}}}, fill them in the data, or drop those "
                                  f"rows.{inferred}")


def save(model, columns, config, out, min_count=None, record=None):
    """Writes the model and its columns to `config.output`: from the chief of a cluster; other
    workers of a synchronous run save too (Keras' saving takes part in collectives) but to a
    scratch folder that is removed. `min_count`: how often a value had to be seen to get a row
    of the vocabularies, recorded for a warm start to grow them alike; `record`: `run.json`'s
    content (`run_record`)."""
    import shutil
    import tempfile

    chief = distribute.is_chief(config.strategy.tf_config)
    if config.strategy.kind == "parameter_server":
        if not chief:
            return
        model = distribute.unsharded_copy(model)  # ordinary variables: loads anywhere
    folder = config.output if chief else tempfile.mkdtemp(prefix="tfrec-worker-save-")
    os.makedirs(folder, exist_ok=True)
    with step(f"saving the model to {os.path.join(folder, MODEL_FILE)}", out):
        # Each file is written beside its place and renamed into it, the columns last; what
        # `evaluate` wrote of the model before goes, so the folder never pairs two runs.
        for stale in (METRICS_FILE, CALIBRATION_FILE, GATES_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, stale))
        staged = f".{os.getpid()}.tmp"
        model.save(os.path.join(folder, MODEL_FILE + staged + ".keras"))
        with open(os.path.join(folder, COLUMNS_FILE + staged), "w", encoding="utf-8") as handle:
            json.dump(columns_to_json(columns, min_count), handle, indent=1)
        if record is not None:
            with open(os.path.join(folder, RUN_FILE + staged), "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=1)
        os.replace(os.path.join(folder, MODEL_FILE + staged + ".keras"), os.path.join(folder, MODEL_FILE))
        if record is not None:
            os.replace(os.path.join(folder, RUN_FILE + staged), os.path.join(folder, RUN_FILE))
        else:  # an earlier run's record would describe another model
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, RUN_FILE))
        os.replace(os.path.join(folder, COLUMNS_FILE + staged), os.path.join(folder, COLUMNS_FILE))
    if not chief:
        shutil.rmtree(folder, ignore_errors=True)


def prepare(df, columns):
    """`df` with the gaps of its categorical columns filled as padding ("" or 0), as train,
    evaluate and export read it. Gaps in a dense column stay: fit/predict refuse them naming it."""
    df = df.copy()
    for column in columns:
        if isinstance(column, SparseFeat) and column.name in df.columns and df[column.name].isna().any():
            df[column.name] = df[column.name].astype(object).where(df[column.name].notna(), column.padding_value)
    return df


def trained(config):
    """(model, columns) that `train` wrote for this config."""
    from tfrec.saving import load_model

    columns = trained_columns(config)
    return load_model(config.output_file(MODEL_FILE)), columns


def trained_columns(config):
    """The feature columns of the model that `train` wrote for this config."""
    model_file = config.output_file(MODEL_FILE)
    if not os.path.exists(model_file):
        raise FileNotFoundError(f"no trained model at {model_file}: run `tfrec train --config {config.path}` first")
    with open(config.output_file(COLUMNS_FILE), encoding="utf-8") as handle:
        return columns_from_json(json.load(handle))


def evaluate(config, out=None):
    """AUC, GAUC and logloss (per task) of the trained model on the test split, plus plots.

    Writes `metrics.json`, `calibration.png` (mean prediction vs. observed rate per score bin)
    and, for a model with expert gates (MMOE, PLE), `gates.png` (mean gate weight per task and
    expert) in `config.output`.

    A regression task (`task_types`) gets "mse" and "mae" instead of AUC, GAUC and logloss, and
    no calibration curve; a binary task whose test labels are all one class gets "auc" None and a
    "note" saying why, and the other tasks are still reported.

    Returns:
      {"rows": n, "tasks": {task: {"auc", "gauc", "logloss", "mean_prediction", "label_rate"}},
       "unknown": {feature: share of its test ids out of vocabulary}, "files": {...}}; a
      retrieval model's report is `tfrec.retrieval_run.evaluate`'s.
    """
    import numpy as np
    import tensorflow as tf

    from tfrec import metrics
    from tfrec.data import shares_of, unknown_counts
    from tfrec.evaluation import binary_report, predict_outputs

    if config.retrieval:
        from tfrec import retrieval_run

        return retrieval_run.evaluate(config, out)
    with step("loading the trained model", out):
        model, columns = trained(config)
    check_held_out_rows_unchanged(config, out)
    group = config.evaluate.group
    gates = _gate_model(model)
    if gates is not None:  # one pass gives the scores and the gate weights
        scoring = tf.keras.Model(model.input, {**dict(zip(model.output_names, model.outputs)), **gates.output},
                                 name=model.name)
    else:
        scoring = model
    labels, scores, groups, unknown, gate_sums = {task: [] for task in config.tasks}, {}, [], {}, {}
    weights = []  # one array per test chunk with the weight column, None per chunk without
    rows, started = 0, time.perf_counter()
    what = "the test files" if config.data.test else "the test split"
    print(f"scoring the rows of {what}, {CHUNK_ROWS} at a time ...", file=out or sys.stdout, flush=True)
    for chunk in test_chunks(config, columns):
        _check_test_rows(chunk, columns, config)
        if chunk.empty:  # a file of no rows (its header alone): Keras refuses to predict none
            continue
        outputs = predict_outputs(scoring, chunk, columns)
        for task, label in config.tasks.items():
            labels[task].append(chunk[label].to_numpy(dtype=np.float64))
            scores.setdefault(task, []).append(outputs[task] if config.multitask else next(iter(outputs.values())))
        if group is not None:
            groups.append(chunk[group].to_numpy())
        weights.append(chunk[config.weight].to_numpy(dtype=np.float64) if config.weight in chunk.columns else None)
        for name, (missing, total) in unknown_counts(columns, chunk).items():
            before = unknown.get(name, (0, 0))
            unknown[name] = (before[0] + missing, before[1] + total)
        for name in gates.output if gates is not None else ():
            gate_sums[name] = gate_sums.get(name, 0) + outputs[name].sum(axis=0)
        rows += len(chunk)
        _say_scored(rows, started, out)
    if not rows:
        raise ConfigError(f"{config.path}: {'data.test' if config.data.test else 'data.train'}: no test rows")
    labels = {task: np.concatenate(values) for task, values in labels.items()}
    scores = {task: np.concatenate(values) for task, values in scores.items()}
    groups = np.concatenate(groups) if group is not None else None
    weights = _test_weights(weights, config)
    report = {"rows": rows, "tasks": {}, "unknown": shares_of(unknown), "model": config.output_file(MODEL_FILE),
              "data": _expand(config.data.test, "data.test", config.path) if config.data.test else
              f"the test split of {config.data.train}", "weight": None if weights is None else config.weight}
    types = dict(zip(config.tasks, config.model.args.get("task_types", ()))) if config.multitask else {}
    binary = {}
    for task in config.tasks:
        predicted, truth = scores[task], labels[task]
        if types.get(task, "binary") == "regression":
            result = {"rows": rows, "mse": float(np.average((predicted - truth) ** 2, weights=weights)),
                      "mae": float(np.average(np.abs(predicted - truth), weights=weights))}
        else:
            binary[task] = (truth, predicted)
            try:
                result = {"rows": rows, **binary_report(truth, predicted, groups, weights)}
            except ValueError as error:  # one class only: no AUC, but the other tasks count
                result = {"rows": rows, "auc": None, "gauc": None,
                          "logloss": metrics.logloss(truth, predicted, sample_weight=weights),
                          "note": f"task '{task}': {error}"}
        result["mean_prediction"] = float(np.average(predicted, weights=weights))
        result["label_rate"] = float(np.average(truth, weights=weights))
        report["tasks"][task] = result
    files = {"metrics": config.output_file(METRICS_FILE), "calibration": config.output_file(CALIBRATION_FILE)}
    _calibration_plot(files["calibration"], binary, weights)
    if gates is not None:
        files["gates"] = config.output_file(GATES_FILE)
        _gate_heatmap(files["gates"], {name: total / rows for name, total in gate_sums.items()})
    report["files"] = files
    os.makedirs(config.output, exist_ok=True)
    with replaced_atomically(files["metrics"]) as handle:  # never a cut-short file runs.py fails to read
        json.dump(report, handle, indent=1, default=float)
    return report


def predict(config, files, scores_path, keep=(), out=None):
    """Scores the rows of `files` with the trained run and writes them to `scores_path` (CSV).

    The files are read as data.train's are (CSV or Parquet, a glob or a list; sequences split
    the same way; `data.fill` applied), `CHUNK_ROWS` rows at a time, so a file of any size is
    scored in the memory of one chunk. The scores file has one line per row, in the files'
    order: the `keep` columns as read, then the score: "score" for a one-task model, one column
    per task for a multi-task one. It is written beside its place and renamed into it at the end.
    Labels are not needed.

    Returns:
      {"rows": n, "file": scores_path, "columns": [...]}
    """
    import pandas as pd

    from tfrec.evaluation import predict_outputs

    if config.retrieval:
        raise ConfigError(f"{config.path}: tfrec predict scores rows with a ranking model; a retrieval model's "
                          "answers (each user's top k items) come from its export: tfrec export, then tfrec query")
    _check_scores_path(scores_path, _expand(files, "--data", config.path))
    keep = list(dict.fromkeys(keep))  # a column kept twice is written once
    with step("loading the trained model", out):
        model, columns = trained(config)
    score_names = {task: task for task in config.tasks} if config.multitask else \
        {name: "score" for name in model.output_names}
    clashing = sorted(set(keep) & set(score_names.values()))
    if clashing:
        raise ConfigError(f"--keep: {clashing} would be written twice, as kept and as the score column",
                          hint="keep other columns, or rename them")
    # The kept columns that are no features are copied as the files write them: read as numbers, a
    # gap made 7 a "7.0" and a long request id a float that other ids round to.
    kept_text = [name for name in keep if name not in {column.name for column in columns}]
    rows, started = 0, time.perf_counter()
    with replaced_atomically(scores_path) as handle:
        for chunk in data_chunks(config, columns, files, "--data", labels=False, text_columns=kept_text):
            missing = [name for name in [c.name for c in columns] + list(keep) if name not in chunk.columns]
            if missing:
                raise ConfigError(f"--data: the rows lack the column(s) {missing} (features of the model, or "
                                  f"named by --keep); their columns are {list(chunk.columns)}",
                                  hint="score files holding the columns the model was trained on")
            if chunk.empty:  # a file of no rows (its header alone): Keras refuses to predict none
                continue
            outputs = predict_outputs(model, chunk, columns)
            scores = chunk[list(keep)].copy()
            for output, name in score_names.items():
                scores[name] = outputs[output]
            scores.to_csv(handle, header=not rows, index=False)
            rows += len(chunk)
            _say_scored(rows, started, out)
        if not rows:  # the header alone, so the file still reads as a table
            pd.DataFrame(columns=list(keep) + list(score_names.values())).to_csv(handle, index=False)
    return {"rows": rows, "file": scores_path, "columns": list(keep) + list(score_names.values())}


def _check_scores_path(scores_path, inputs):
    """A ConfigError, before the model is loaded and every row scored, for a scores path the
    scores cannot be renamed into at the end (a folder, or in no folder), or that is one of the
    `inputs` scored: the scores would replace its rows."""
    folder = os.path.dirname(os.path.abspath(scores_path))
    if os.path.isdir(scores_path):
        raise ConfigError(f"--scores {scores_path} is a folder", hint="give the CSV file to write, e.g. --scores scores.csv")
    if not os.path.isdir(folder):
        raise ConfigError(f"--scores: no folder {folder} to write {os.path.basename(scores_path)} in",
                          hint="create the folder first")
    if os.path.exists(scores_path) and any(os.path.samefile(scores_path, path) for path in inputs):
        raise ConfigError(f"--scores {scores_path} is one of the files to score: the scores would replace its rows",
                          hint="write the scores to another file")


def _test_weights(per_chunk, config):
    """The test rows' sample weights (None when they have no `weight` column); a ConfigError when
    some test files have it and others do not, which no one weighting would describe."""
    import numpy as np

    if all(chunk is None for chunk in per_chunk):
        return None
    if any(chunk is None for chunk in per_chunk):
        raise ConfigError(f"{config.path}: data.test: some test files have the weight column '{config.weight}' "
                          "and some do not; give it to all of them (or to none, for unweighted metrics)")
    weights = np.concatenate(per_chunk)
    if not weights.sum() > 0:
        raise ConfigError(f"{config.path}: weight: every test row has weight 0")
    return weights


def _calibration_plot(path, tasks, weights=None, bins=10):
    """Mean prediction against the observed rate per score decile (weighted by `weights`), on axes
    zoomed to the points: at an ads click rate of 2% they all lie in a corner of [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4), squeeze=False)
    for ax, (task, (labels, scores)) in zip(axes[0], tasks.items()):
        edges = np.quantile(scores, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
        row_weights = np.ones(len(scores)) if weights is None else weights
        filled = [b for b in range(bins) if row_weights[which == b].sum() > 0]
        mean_score = [np.average(scores[which == b], weights=row_weights[which == b]) for b in filled]
        rate = [np.average(labels[which == b], weights=row_weights[which == b]) for b in filled]
        top = min(1.0, 1.1 * max(mean_score + rate + [1e-3]))
        ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="perfect")
        ax.plot(mean_score, rate, marker="o", label="model")
        ax.set(title=f"calibration: {task}", xlabel="mean prediction (score decile)",
               ylabel="observed rate" + (" (weighted)" if weights is not None else ""), xlim=(0, top), ylim=(0, top))
        ax.legend(loc="upper left")
    fig.tight_layout()
    with replaced_atomically(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)


def _say_scored(rows, started, out=None):
    """The progress line of a chunked evaluate or predict: rows scored so far, and how fast."""
    print(f"  {rows} rows scored ({rows / (time.perf_counter() - started):.0f} rows/s)", file=out or sys.stdout,
          flush=True)


def _gate_model(model):
    """`tfrec.models.gate_model` of a model with ExpertGate layers (MMOE, PLE), else None."""
    from tfrec.models import gate_model

    try:
        return gate_model(model)
    except ValueError:
        return None


def _gate_heatmap(path, gates):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(gates)
    width = max(len(w) for w in gates.values())
    matrix = np.full((len(names), width), np.nan)
    for i, name in enumerate(names):
        matrix[i, :len(gates[name])] = gates[name]
    fig, ax = plt.subplots(figsize=(1.2 * width + 3, 0.6 * len(names) + 1.5))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(width), [f"expert {j}" for j in range(width)])
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(width):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="white")
    ax.set_title("mean gate weight per expert (test rows)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    with replaced_atomically(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)
