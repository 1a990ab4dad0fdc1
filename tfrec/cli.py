"""The `tfrec` command: demo, train, evaluate, predict, compare, export, serve, query, bench.

  tfrec demo                                  planted data -> DIN -> export -> serve -> query
  tfrec train --config run.yaml               your data (CSV/Parquet) -> a trained model
  tfrec evaluate --config run.yaml            AUC, GAUC, logloss, calibration plot (retrieval: recall@k ...)
  tfrec predict --config run.yaml --data rows.csv --scores scores.csv   batch scores of a file
  tfrec compare runs/a runs/b                 runs side by side: differing settings, figures
  tfrec export --config run.yaml              a versioned SavedModel for TF Serving (retrieval: top k)
  tfrec serve --model_base_path=... --model_name=...
  tfrec query --model-name din --inputs @request.json

Ordinary mistakes (a missing file, a bad config, an unreachable server) print one line saying
what is wrong and what to do, and exit 1; `--debug` shows the traceback instead. The
application on top of every layer: it is the one module of `tfrec` that imports `exporters` and
`serving`, inside the commands that need them.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

DEMO_MODEL_NAME = "din"
DOCS = "docs/troubleshooting.md"


class CliError(Exception):
    """An ordinary mistake: `message` says what is wrong, `hint` what to do."""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.hint = hint


@contextlib.contextmanager
def step(what):
    """Prints `what ...` before a long step and `what: done in 1.2 s` after it."""
    print(f"{what} ...", flush=True)
    started = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - started:.1f} s", flush=True)


def keras_verbosity(progress):
    """Keras' fit verbosity for --progress: a bar on a terminal, one line per epoch elsewhere."""
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "epoch"
    return {"bar": 1, "epoch": 2, "none": 0}[progress]


def _planted_din(args):
    from tfrec.recipes import planted_din_data

    return planted_din_data(args.users, args.items, args.events_per_user, args.maxlen, args.embedding_dim, args.seed)


def _train_din(args, train_df, columns):
    from tfrec.recipes import train_din

    return train_din(train_df, columns, args.seed, args.epochs, args.batch_size, args.learning_rate,
                     verbose=keras_verbosity(args.progress))


def _print_report(title, report):
    print(f"{title}: AUC {report['auc']:.4f}  GAUC {report.get('gauc', float('nan')):.4f}  "
          f"logloss {report['logloss']:.4f}  | oracle AUC {report['oracle_auc']:.4f}  "
          f"oracle GAUC {report.get('oracle_gauc', float('nan')):.4f}  "
          f"model/oracle {report['ratio_to_oracle']:.3f}")


def cmd_demo(args):
    """Planted data -> DIN fit/evaluate -> versioned export -> local server -> gRPC ranking."""
    started = time.time()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tfrec-demo-")
    remove = not (args.workdir or args.keep)
    try:
        _demo(args, workdir)
    except KeyboardInterrupt:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"\ndemo interrupted; {'removed ' + workdir if remove else 'artefacts kept in ' + workdir}",
              file=sys.stderr)
        raise
    except BaseException:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    if remove:
        shutil.rmtree(workdir, ignore_errors=True)
        where = "temporary artefacts removed (--keep or --workdir keeps them)"
    else:
        where = f"artefacts kept in {workdir}"
    print(f"server stopped. demo finished in {time.time() - started:.0f}s; {where}")
    return 0


def _demo(args, workdir):
    import numpy as np

    from exporters import export_saved_model
    from serving import Client, LocalServer
    from tfrec.data import df_to_inputs
    from tfrec.evaluation import evaluate_binary
    from tfrec.recipes import HELD_OUT_EVENTS

    print(f"working in {workdir}")
    print(f"[1/5] planted-truth behaviour log: {args.users} users x {args.events_per_user} events, "
          f"{args.items} items (string ids)", flush=True)
    log, train_df, test_df, columns = _planted_din(args)
    print(f"      {len(log)} impressions -> {len(train_df)} train / {len(test_df)} test samples "
          f"(last {HELD_OUT_EVENTS} events of each user held out)")

    with step("[2/5] training DIN with Keras fit"):
        model = _train_din(args, train_df, columns)
    report = evaluate_binary(model, test_df, columns, "click", truth_col="p_click", group_col="user_id")
    _print_report("[3/5] test", report)

    export_base = os.path.join(workdir, "models", DEMO_MODEL_NAME)
    with step("[4/5] exporting a SavedModel"):
        path = export_saved_model(model, export_base, warmup_inputs=df_to_inputs(test_df.head(5), columns),
                                  model_name=DEMO_MODEL_NAME)
    print(f"      version {os.path.basename(path)} at {path}")

    rng = np.random.default_rng(args.seed)
    items = log.drop_duplicates("item_id").set_index("item_id")["cate_id"]
    count = min(args.candidates, len(items))  # a small catalogue is ranked whole
    print(f"[5/5] serving on 127.0.0.1 (TF Serving gRPC API) and ranking {count} candidates per user")
    with step("      starting the server"):
        server = LocalServer(model_base_path=export_base, model_name=DEMO_MODEL_NAME)
        server.start()
    try:
        with Client(server.grpc_target) as client:
            print(f"      server pid {server.pid} at {server.grpc_target}")
            worst = 0.0
            for _, row in test_df.drop_duplicates("user_id").head(args.show_users).iterrows():
                candidates = rng.choice(items.index.to_numpy(), count, replace=False)
                request = test_df.loc[[row.name] * count].reset_index(drop=True)
                request["item_id"] = candidates
                request["cate_id"] = items.loc[candidates].to_numpy()
                inputs = df_to_inputs(request, columns)
                served = client.predict(DEMO_MODEL_NAME, inputs)["prediction"]
                local = model.predict(inputs, verbose=0).reshape(-1)
                worst = max(worst, float(np.max(np.abs(served - local))))
                order = np.argsort(-served)[:args.top_k]
                recent = ", ".join(row[feature_columns.history_name("cate_id")][-5:]) or "-"
                print(f"      user {row['user_id']} (recent categories: {recent})")
                for rank, i in enumerate(order, 1):
                    print(f"        {rank}. {candidates[i]:>6} ({request['cate_id'][i]:>4})  score {served[i]:.4f}")
            print(f"      served scores equal in-process predict: max |diff| = {worst:.2e}")
    finally:
        server.stop()


def _config(args):
    from tfrec.config import load_config

    return load_config(args.config, output=getattr(args, "output", None),
                       export_base=getattr(args, "export_base", None), overrides=getattr(args, "set", None) or ())


def cmd_train(args):
    if args.config:
        from tfrec import config as run

        _refuse_planted_args(args)
        config = _config(args)
        if args.epochs is not None:
            config.train.epochs = args.epochs
        run.train(config, verbose=keras_verbosity(args.progress), tensorboard=args.tensorboard)
        from tfrec.distribute import is_chief

        if is_chief(config.strategy.tf_config):  # other workers of a cluster write nothing
            print(f"saved the trained model and its columns in {config.output}")
        return 0
    if not args.output:
        raise CliError("train needs --config run.yaml (your data) or --output MODEL_PATH (the planted demo data)",
                       "see `tfrec train --help` and docs/own_data.md")
    from tfrec.evaluation import evaluate_binary

    args.epochs = 2 if args.epochs is None else args.epochs
    for name, value in _PLANTED_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    with step("generating planted-truth data"):
        _, train_df, test_df, columns = _planted_din(args)
    with step(f"training DIN for {args.epochs} epoch(s)"):
        model = _train_din_with_tensorboard(args, train_df, columns) if args.tensorboard else \
            _train_din(args, train_df, columns)
    _print_report("test", evaluate_binary(model, test_df, columns, "click", truth_col="p_click", group_col="user_id"))
    with step(f"saving the model to {args.output}"):
        model.save(args.output)
    print(f"saved Keras model to {args.output}")
    return 0


def _train_din_with_tensorboard(args, train_df, columns):
    import tensorflow as tf

    from tfrec import metrics
    from tfrec.data import df_to_dataset
    from tfrec.recipes import build_din

    tf.keras.utils.set_random_seed(args.seed)
    model = build_din(columns, args.seed)
    model.compile(tf.keras.optimizers.Adam(args.learning_rate), "binary_crossentropy",
                  metrics=[metrics.AUC(), metrics.LogLoss()])
    model.fit(df_to_dataset(train_df, columns, "click", batch_size=args.batch_size, seed=args.seed),
              epochs=args.epochs, verbose=keras_verbosity(args.progress),
              callbacks=[tf.keras.callbacks.TensorBoard(log_dir=args.tensorboard)])
    return model


def cmd_evaluate(args):
    from tfrec import config as run

    config = _config(args)
    report = run.evaluate(config)
    if config.retrieval:
        _print_retrieval_report(report)
    for task, result in report.get("tasks", {}).items():
        name = "" if task == "prediction" else f"{task}: "
        if "mse" in result:
            scores = f"MSE {result['mse']:.4f}  MAE {result['mae']:.4f}"
        elif result["auc"] is None:
            scores = f"AUC -  ({result['note']})  logloss {result['logloss']:.4f}"
        else:
            gauc = f"GAUC {result['gauc']:.4f}  " if "gauc" in result else ""
            scores = f"AUC {result['auc']:.4f}  {gauc}logloss {result['logloss']:.4f}"
        print(f"{name}{scores}  (mean prediction {result['mean_prediction']:.4f}, "
              f"label {'mean' if 'mse' in result else 'rate'} {result['label_rate']:.4f}, {result['rows']} rows)")
    if report.get("weight"):
        print(f"(each test row weighted by its '{report['weight']}' column)")
    if report.get("unknown"):  # cold start: these ids score as the out-of-vocabulary row
        print("out of vocabulary in the test rows: " + ", ".join(
            f"{name} {share:.1%}" for name, share in report["unknown"].items()))
    for kind, path in report["files"].items():
        print(f"wrote {kind}: {path}")
    return 0


def cmd_predict(args):
    from tfrec import config as run

    config = _config(args)
    files = [os.path.abspath(path) for path in args.data] if args.data else config.data.test
    if not files:
        raise CliError("predict needs --data FILE (the rows to score); the config has no data.test to default to",
                       "see `tfrec predict --help`")
    keep = [name for names in args.keep for name in names.split(",") if name]
    result = run.predict(config, files, os.path.abspath(args.scores), keep=keep)
    print(f"wrote {result['rows']} rows of {', '.join(result['columns'])}: {result['file']}")
    return 0


def _print_retrieval_report(report):
    k = report["k"]
    for name, scores in (("model", report["model"]), ("popularity", report["popularity"])):
        print(f"{name:>10}: recall@{k} {scores['recall']:.4f}  hit rate@{k} {scores['hit_rate']:.4f}  "
              f"NDCG@{k} {scores['ndcg']:.4f}")
    print(f"({report['rows']} test users, each user's last event ranked among {report['candidates']} items)")


def cmd_compare(args):
    from tfrec.runs import compare, format_csv, format_json, format_table, sort_rows

    header, rows, notes = compare(args.runs)
    if args.sort:
        rows = sort_rows(header, rows, args.sort)
    if args.format == "json":
        print(format_json(header, rows, notes))
        return 0
    print(format_csv(header, rows) if args.format == "csv" else format_table(header, rows))
    for note in notes:  # after a CSV table too, on stderr, so the file holds the table alone
        print(f"note: {note}", file=sys.stderr if args.format == "csv" else sys.stdout)
    return 0


def cmd_export(args):
    from exporters import export_saved_model

    if args.config:
        from tfrec import config as run
        from tfrec.data import df_to_inputs

        config = _config(args)
        if config.export.base is None:
            raise CliError(f"{config.path}: export.base is not set", "add export: {base: models/NAME} to the "
                           "config or pass --export-base")
        with step("loading the trained model"):
            model, columns = run.trained(config)
        if config.retrieval:
            return _export_retrieval_run(model, columns, config, args)
        if args.candidates or args.exclude or args.k is not None:
            raise CliError(f"--candidates, --exclude and --k are for a retrieval model; {config.path} trains "
                           f"{config.model.name}", "leave them out to export a ranking model")
        test_df = run.prepare(run.load_frames(config, columns)[1], columns)
        # the first test rows; none (a test file of its header alone): export_saved_model's synthesised row
        warmup_inputs = df_to_inputs(test_df.head(5), columns) if len(test_df) else None
        model, base, warmup_inputs = _steered(args, model, config.export.base, warmup_inputs)
        with step(f"exporting to {base}"):
            path = export_saved_model(model, base, version=_export_version(args, config),
                                      warmup_inputs=warmup_inputs,
                                      extra_outputs=list(config.export.extra_outputs) + list(args.extra_output))
        print(path)
        return 0
    if not args.model or not args.export_base:
        raise CliError("export needs --config run.yaml, or --model MODEL_PATH and --export-base DIR",
                       "see `tfrec export --help`")
    from tfrec.saving import load_model

    with step(f"loading {args.model}"):
        model = load_model(args.model)
    if hasattr(model, "user_tower"):
        return _export_retrieval(model, args)
    if args.candidates or args.exclude or args.k is not None:
        raise CliError(f"--candidates, --exclude and --k are for a retrieval model; {args.model} holds "
                       f"{type(model).__name__}", "leave them out to export a ranking model")
    model, base, _ = _steered(args, model, args.export_base)
    with step(f"exporting to {base}"):
        path = export_saved_model(model, base, version=args.version, extra_outputs=args.extra_output)
    print(path)
    return 0


def _export_version(args, config):
    """--version, else the config's export.version (--version 0 is version 0, not "not given")."""
    return config.export.version if args.version is None else args.version


def _steered(args, model, base, warmup_inputs=None):
    """(model, export base, warm-up inputs), as `--steerable` asks: CLSR's `steerable_model`
    exported to `<base>_steerable`, its warm-up rows at long-term weight 0.5; else unchanged."""
    if not args.steerable:
        return model, base, warmup_inputs
    import numpy as np

    from tfrec.models.clsr import LONG_TERM_WEIGHT, steerable_model

    try:
        model = steerable_model(model)
    except ValueError as error:
        raise CliError(f"--steerable: {error}", "it is for a CLSR model: leave it out for this one") from None
    if warmup_inputs is not None:
        rows = len(next(iter(warmup_inputs.values())))
        warmup_inputs = {**warmup_inputs, LONG_TERM_WEIGHT: np.full(rows, 0.5, np.float32)}
    return model, f"{base.rstrip('/')}_steerable", warmup_inputs


def _refuse_ranking_options(args):
    """--extra-output and --steerable change a ranking model's signature; a retrieval export's is fixed."""
    for flag, given in (("--extra-output", args.extra_output), ("--steerable", args.steerable)):
        if given:
            raise CliError(f"{flag} is for ranking models", "a retrieval export answers item_ids and scores")


def _export_retrieval_run(model, columns, config, args):
    """A config's retrieval model: the top `retrieval.k` (or --k) of its catalogue (`data.items`,
    or every training target), with warm-up requests from the test users."""
    from exporters import export_retrieval
    from tfrec import retrieval_run
    from tfrec.data import df_to_inputs

    _refuse_ranking_options(args)
    if args.candidates:
        raise CliError("--candidates is for --model; with --config the catalogue is data.items",
                       "set data: {items: ITEMS.csv} in the config, or leave it out to serve every training target")
    train_df, test_df = retrieval_run.samples(config)
    retrieval_run.check_trained_columns(config, columns, test_df)
    item_column = retrieval_run.item_feature(config, columns)
    items = retrieval_run.catalogue(config, train_df, item_column)
    k = config.retrieval.k if args.k is None else args.k
    left_out = retrieval_run.items_left_out(config, items, item_column)
    if left_out:
        where = "not in data.items" if config.data.items else \
            "no training target in this data; list every item to serve in data.items to keep them"
        print(f"not served: {len(left_out)} of the model's items ({where}), e.g. {left_out[:5]}")
    with step(f"exporting the top {k} of {len(items)} items to {config.export.base}"):
        user_columns = [column for column in columns if column.name != config.retrieval.item]
        # --exclude adds to exclude_seen's histories, so a feature it names is checked, never dropped.
        histories = retrieval_run.history_features(columns, config.retrieval.item) if config.retrieval.exclude_seen \
            else []
        exclude = list(dict.fromkeys(histories + args.exclude))
        result = export_retrieval(model, config.export.base, items, k=k, version=_export_version(args, config),
                                  warmup_inputs=df_to_inputs(test_df.head(5), user_columns), exclude=exclude,
                                  **(config.export.index or {}))
    print(result.path)
    return 0


def _export_retrieval(model, args):
    """A two-tower model's top-k export (exporters.export_retrieval) over the items of --candidates."""
    from exporters import export_retrieval, item_id_feature
    from tfrec.config import read_data

    name, dtype = item_id_feature(model)
    if not args.candidates:
        raise CliError(f"{args.model} is a retrieval (two-tower) model: its export serves the top "
                       "k items of a catalogue", f"pass --candidates ITEMS.csv (or .parquet) with the item id "
                       f"column '{name}', one row per item, and --k")
    _refuse_ranking_options(args)
    candidates = read_data([os.path.abspath(args.candidates)], key="--candidates", config_path="tfrec export",
                           text_columns=[name] if dtype.name == "string" else [])
    k = 100 if args.k is None else args.k
    with step(f"exporting the top {k} of {len(candidates)} candidates to {args.export_base}"):
        result = export_retrieval(model, args.export_base, candidates, k=k, version=args.version, exclude=args.exclude)
    print(result.path)
    return 0


def cmd_serve(argv):
    from serving.server import main as serve_main

    return serve_main(argv)


def read_inputs(value, flag="--inputs"):
    """The request of --inputs: JSON text, or @FILE holding it: {feature: values}, or TF Serving's REST
    bodies {"inputs": {feature: values}} and {"instances": [{feature: value}, ...]}."""
    text = value
    if value.startswith("@"):
        path = value[1:]
        if not os.path.isfile(path):
            raise CliError(f"{flag}: no such file {path!r}", "give @path/to/request.json, or the JSON itself")
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    try:
        inputs = json.loads(text)
    except json.JSONDecodeError as error:
        source = f"file {value[1:]!r}" if value.startswith("@") else "the value"
        raise CliError(f"{flag}: {source} is not valid JSON ({error})",
                       'write {"feature": [values, ...]}, e.g. {"user_id": ["u1"], "item_id": ["i2"]}') from None
    if isinstance(inputs, dict) and set(inputs) == {"inputs"} and isinstance(inputs["inputs"], dict):
        inputs = inputs["inputs"]  # TF Serving's REST columnar body
    elif isinstance(inputs, dict) and set(inputs) == {"instances"} and isinstance(inputs["instances"], list) \
            and inputs["instances"] and all(isinstance(row, dict) for row in inputs["instances"]):
        rows = inputs["instances"]  # TF Serving's REST row body: one object per example
        inputs = {name: [row.get(name) for row in rows] for name in dict.fromkeys(k for row in rows for k in row)}
    if not isinstance(inputs, dict):
        raise CliError(f"{flag}: expected a JSON object {{feature: values}}, got {type(inputs).__name__}",
                       'write {"feature": [values, ...]}')
    if not inputs:
        raise CliError(f"{flag}: the JSON object names no feature", 'write {"feature": [values, ...]}')
    return inputs


def cmd_query(args):
    from serving import Client
    from serving.json_tensor import to_json_value

    if args.version is not None and args.version_label:
        raise CliError("give --version or --version-label, not both", "a label names a version")
    if (args.inputs is None) == (not args.user):
        raise CliError("give the request with --inputs, or --config with --user", "--user USER builds a retrieval "
                       "model's request from the config's log (repeatable); --inputs takes it as JSON")
    inputs = read_inputs(args.inputs) if args.inputs is not None else _user_request(args)
    with Client(args.target, timeout=args.timeout) as client:
        outputs = client.predict(args.model_name, inputs, signature_name=args.signature_name,
                                 version=args.version, version_label=args.version_label,
                                 output_filter=args.output_filter)
    # String outputs (a retrieval export's item ids) as text, or {"b64": ...} as REST writes them.
    print(json.dumps({name: to_json_value(value) for name, value in outputs.items()}, indent=2))
    return 0


def _user_request(args):
    """--user: the request of those users from the log of --config (a retrieval run)."""
    from tfrec import retrieval_run
    from tfrec.config import load_config

    if not args.config:
        raise CliError("--user needs --config", "the config's log holds each user's history and profile")
    config = load_config(args.config)
    if not config.retrieval:
        raise CliError(f"--user builds a retrieval request; {args.config} trains a ranking model",
                       "a ranking request holds the items to score: give it with --inputs")
    return retrieval_run.user_requests(config, args.user, out=sys.stderr)


def cmd_bench(args):
    """Sequential gRPC Predict latency against any TF Serving endpoint (ours or the real one)."""
    import numpy as np
    from serving import Client

    inputs = read_inputs(args.inputs)
    with Client(args.target, timeout=args.timeout) as client:
        client.predict(args.model_name, inputs)  # warm-up, and fetches the signature once
        seconds = []
        for _ in range(args.requests):
            started = time.perf_counter()
            client.predict(args.model_name, inputs)
            seconds.append(time.perf_counter() - started)
    p50, p99 = np.percentile(np.array(seconds) * 1000.0, [50, 99])
    print(json.dumps({"requests": args.requests, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                      "requests_per_s": round(args.requests / sum(seconds), 1)}))
    return 0


_PLANTED_DEFAULTS = {"users": 2000, "items": 1000, "events_per_user": 50, "maxlen": 20, "embedding_dim": 8,
                     "batch_size": 256, "learning_rate": 3e-3, "seed": 0}
# The config key a planted-data flag stands for in a run config.
_CONFIG_KEY_OF_PLANTED_ARG = {"embedding_dim": "columns.embedding_dim", "batch_size": "train.batch_size",
                              "learning_rate": "train.learning_rate", "seed": "train.seed"}


def _positive(kind):
    """An argparse type: a number of `kind` (int or float) above 0, refused with the flag's name
    before anything is read or trained (0 epochs, requests or users would fail deep inside, or
    divide by zero)."""
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


def _add_planted_args(parser, given_only=False):
    """The planted data's flags; with `given_only` their defaults are None (filled in by the
    planted path), so that a command can tell which were given."""
    planted = parser.add_argument_group("planted demo data (without --config)")
    helps = {"users": "users in the planted behaviour log", "items": "items in the catalogue",
             "events_per_user": "impressions per user", "maxlen": "history length DIN attends over",
             "embedding_dim": "embedding dimension of every table", "batch_size": "training batch size",
             "learning_rate": "Adam's learning rate", "seed": "seed of the data and of training"}
    for name, default in _PLANTED_DEFAULTS.items():
        kind = type(default) if name == "seed" else _positive(type(default))
        planted.add_argument("--" + name.replace("_", "-"), type=kind, default=None if given_only else default,
                             help=helps[name] + (f" (default: {default})" if given_only else ""))


def _refuse_planted_args(args):
    """A CliError for a planted-data flag given with --config, which it would not change (a sweep
    over --learning-rate trained the same model every time)."""
    given = [name for name in _PLANTED_DEFAULTS if getattr(args, name, None) is not None]
    if given:
        name = given[0]
        key = _CONFIG_KEY_OF_PLANTED_ARG.get(name)
        flag = "--" + name.replace("_", "-")
        raise CliError(f"{flag} describes the planted demo data and does nothing with --config",
                       f"set {key} in the config, or pass --set {key}=VALUE" if key else
                       "your data's size is what its files hold")


def _add_overrides(parser):
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a key of the config, e.g. --set train.learning_rate=0.01 --set "
                             "model.args.dnn_hidden_units=[64,32] (the value is read as YAML; repeatable)")


def _add_progress(parser):
    parser.add_argument("--progress", choices=("auto", "bar", "epoch", "none"), default="auto",
                        help="training output: a progress bar, one line per epoch, or nothing; auto = a bar "
                             "on a terminal, one line per epoch when stdout is a file or pipe")


def _add_config(parser, required=False, what="the run"):
    parser.add_argument("--config", required=required, metavar="RUN.yaml",
                        help=f"a run config (YAML) describing {what}; see docs/own_data.md and examples/")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, unless it has none or its help already says it."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS, []) and "default" not in help_text \
                and action.option_strings:
            help_text += " (default: %(default)s)"
        return help_text


def build_parser():
    from tfrec import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error instead of one line")
    parser = argparse.ArgumentParser(prog="tfrec", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"tfrec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common],
                                   formatter_class=_Formatter)

    demo = command("demo", "train, evaluate, export, serve and query DIN on built-in planted data")
    _add_planted_args(demo)
    demo.add_argument("--epochs", type=_positive(int), default=2, help="training epochs")
    _add_progress(demo)
    demo.add_argument("--workdir", help="keep artefacts here (default: a temporary directory, removed at the end "
                                        "and on Ctrl-C)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.add_argument("--candidates", type=_positive(int), default=100, help="candidates ranked per user")
    demo.add_argument("--show-users", type=_positive(int), default=3, help="users whose ranking is printed")
    demo.add_argument("--top-k", type=_positive(int), default=5, help="items printed per user")

    train = command("train", "train a model on your data (--config) or DIN on planted data (--output)")
    _add_config(train, what="the data, columns, model and training")
    train.add_argument("--output", help="with --config: the run folder (default: the config's `output`); without: "
                                        "the file the planted-data DIN is saved to (.keras, .h5 or a folder)")
    train.add_argument("--export-base", help=argparse.SUPPRESS)
    train.add_argument("--epochs", type=_positive(int), help="training epochs (default: the config's train.epochs; 2 for "
                                                  "planted data)")
    train.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard logs (losses, metrics) to DIR")
    _add_overrides(train)
    _add_progress(train)
    _add_planted_args(train, given_only=True)

    evaluate = command("evaluate", "AUC, GAUC and logloss (per task) of a trained model on the config's test rows, "
                                   "with a calibration plot (and a gate heatmap for MMOE/PLE); for YoutubeDNN, MIND "
                                   "and SDM, recall, hit rate and NDCG at k against popularity")
    _add_config(evaluate, required=True, what="the run `tfrec train --config` trained")
    evaluate.add_argument("--output", help="the run folder (default: the config's `output`)")
    _add_overrides(evaluate)

    predict = command("predict", "score the rows of CSV/Parquet files with a trained ranking model, a chunk at a "
                                 "time, and write the scores to a CSV file (one line per row, in order)")
    _add_config(predict, required=True, what="the run `tfrec train --config` trained")
    predict.add_argument("--output", help="the run folder (default: the config's `output`)")
    _add_overrides(predict)
    predict.add_argument("--data", action="append", metavar="FILE",
                         help="rows to score: a CSV/Parquet file or a glob, as data.train holds them, labels not "
                              "needed (repeatable; default: the config's data.test)")
    predict.add_argument("--scores", required=True, metavar="FILE", help="the CSV file the scores are written to")
    predict.add_argument("--keep", action="append", default=[], metavar="COLUMN[,COLUMN]",
                         help="columns of the rows copied before the scores, e.g. a request id (repeatable)")

    export = command("export", "export a trained model as a versioned SavedModel for TF Serving")
    _add_config(export, what="the run `tfrec train --config` trained")
    export.add_argument("--output", help="with --config: the run folder (default: the config's `output`)")
    _add_overrides(export)
    export.add_argument("--model", help="without --config: a model saved with model.save() (any file name)")
    export.add_argument("--export-base", help="the model's --model_base_path (default: the config's export.base)")
    export.add_argument("--version", type=int, help="the version number (default: one more than the highest)")
    export.add_argument("--extra-output", action="append", default=[], metavar="LAYER",
                        help="a layer name whose output the signature returns too (repeatable)")
    export.add_argument("--steerable", action="store_true",
                        help="CLSR: export the model whose requests choose the long-term weight (input "
                             "long_term_weight in [0, 1], outputs prediction and the gate's alpha), to "
                             "<export base>_steerable")
    export.add_argument("--candidates", metavar="ITEMS",
                        help="a retrieval model's catalogue: CSV/Parquet with its item id column, one row per item")
    export.add_argument("--k", type=int, help="a retrieval model's top k per user (default: the config's "
                                              "retrieval.k; 100 with --model)")
    export.add_argument("--exclude", action="append", default=[], metavar="FEATURE",
                        help="a retrieval model's user feature holding item ids (e.g. hist_item_id): the items a "
                             "request sends there are left out of its top k (repeatable; a config's "
                             "retrieval.exclude_seen does this for its histories, and --exclude adds to them)")

    compare = command("compare", "runs side by side: the settings in which they differ, the epoch kept and their "
                                 "test figures, from the run folders of `tfrec train --config` and `tfrec evaluate`")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="a run folder (the config's output or --output)")
    compare.add_argument("--sort", metavar="COLUMN", help="order the runs by a column, best first: a figure better "
                                                          "higher (auc, recall@50, val_auc) descending, any other "
                                                          "(logloss, a setting) ascending")
    compare.add_argument("--format", choices=("table", "json", "csv"), default="table",
                         help="table: aligned text; json: columns, runs and notes; csv: the table unrounded (notes "
                              "on stderr)")

    commands.add_parser("serve", add_help=False,
                        help="the TF-Serving-compatible server (tensorflow_model_server's flags; `tfrec serve --help`)")

    query = command("query", "one gRPC Predict request; prints the outputs as JSON")
    query.add_argument("--target", default="127.0.0.1:8500", help="the server's gRPC host:port")
    query.add_argument("--model-name", required=True, help="the served model's name")
    query.add_argument("--inputs", metavar="JSON|@FILE",
                       help='the request as JSON {feature: values}, or @FILE to read it from a file')
    query.add_argument("--config", help="a retrieval run's config: with --user, the request is built from its log")
    query.add_argument("--user", action="append", metavar="USER",
                       help="a user id of the config's log, asked with their history and profile (repeatable)")
    query.add_argument("--signature-name", help="the signature (default: serving_default)")
    query.add_argument("--version", type=int, help="a model version (default: the latest)")
    query.add_argument("--version-label", help="a version label of the server's model config (e.g. stable)")
    query.add_argument("--output-filter", action="append", metavar="OUTPUT",
                       help="return only this output (repeatable; default: all)")
    query.add_argument("--timeout", type=_positive(float), default=10.0, help="seconds to wait for the server")

    bench = command("bench", "gRPC Predict latency p50/p99 of one request, repeated")
    bench.add_argument("--target", default="127.0.0.1:8500", help="the server's gRPC host:port")
    bench.add_argument("--model-name", required=True, help="the served model's name")
    bench.add_argument("--inputs", required=True, metavar="JSON|@FILE", help="the request: JSON or @FILE")
    bench.add_argument("--requests", type=_positive(int), default=200, help="requests sent one after another")
    bench.add_argument("--timeout", type=_positive(float), default=10.0, help="seconds to wait for each answer")
    return parser


def explain(error, args):
    """(what is wrong, what to do) for an exception a command raised."""
    from tfrec.config import ConfigError

    if isinstance(error, CliError):
        return str(error), error.hint
    if isinstance(error, ConfigError):
        return str(error), error.hint or "fix the config; docs/own_data.md lists every key"
    try:
        from serving import ServingError
    except ImportError:  # pragma: no cover
        ServingError = ()
    if ServingError and isinstance(error, ServingError):
        code = getattr(error.code, "name", str(error.code))
        target = getattr(args, "target", "the server")
        if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return (f"cannot reach a model server at {target} ({code}: {error.message.splitlines()[0] if error.message else ''})",
                    "start one (tfrec serve --port=PORT --model_name=NAME --model_base_path=DIR) or pass --target host:port")
        if code == "NOT_FOUND":
            return f"the server at {target} answered NOT_FOUND: {error.message}", \
                "check --model-name (and --version / --version-label) against what the server serves"
        return f"the server at {target} answered {code}: {error.message}", "check the request's features and types"
    if isinstance(error, FileNotFoundError):
        return str(error), "check the path"
    if isinstance(error, FileExistsError):
        return f"{error.filename or error} already exists", "pass another --version, or leave it out for the next free one"
    if isinstance(error, ImportError):
        return f"a package is missing: {error}", "pip install -e . installs what tfrec needs"
    if isinstance(error, (ValueError, KeyError, OSError)):
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        return f"{message}", f"see {DOCS}"
    return f"{type(error).__name__}: {error}", "an unexpected error: rerun with --debug and report the traceback"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not sys.stdout.isatty() and hasattr(sys.stdout, "reconfigure"):
        # Piped to a file, `tee` or a CI log, each line (Keras' one per epoch too) appears when
        # printed rather than in blocks of 8 KB.
        sys.stdout.reconfigure(line_buffering=True)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    args = build_parser().parse_args(argv)
    commands = {"demo": cmd_demo, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
                "export": cmd_export, "compare": cmd_compare,
                "query": cmd_query, "bench": cmd_bench}
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"tfrec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001  (one line instead of a traceback; --debug shows it)
        if args.debug:
            raise
        message, hint = explain(error, args)
        message = " ".join(str(message).split())  # one line
        print(f"tfrec {args.command}: error: {message}" + (f" -- {hint}" if hint else "")
              + " (--debug shows the traceback)", file=sys.stderr)
        return 1


def run():
    """The `tfrec` command: `main`, then the process ends at once with its exit code
    (`serving.process.exit_process`), without the second that Python's teardown of TensorFlow takes.
    Every command has closed what it wrote by then. A task of a cluster (TF_CONFIG set) exits as
    Python does: its peers may still be running, and TensorFlow's teardown is its goodbye to them."""
    status = main()
    if os.environ.get("TF_CONFIG"):
        sys.exit(status)
    from serving.process import exit_process

    exit_process(status)


if __name__ == "__main__":
    run()
