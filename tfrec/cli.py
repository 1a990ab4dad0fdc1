"""The `tfrec` command: demo, train, export, serve, query, bench.

The application on top of every layer: it is the one module of `tfrec` that imports `exporters`
and `serving`, inside the commands that need them.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

DEMO_MODEL_NAME = "din"


def _planted_din(args):
    from tfrec.recipes import planted_din_data

    return planted_din_data(args.users, args.items, args.events_per_user, args.maxlen, args.embedding_dim, args.seed)


def _train_din(args, train_df, columns):
    from tfrec.recipes import train_din

    return train_din(train_df, columns, args.seed, args.epochs, args.batch_size, args.learning_rate,
                     verbose=1 if args.verbose else 2)


def _print_report(title, report):
    print(f"{title}: AUC {report['auc']:.4f}  GAUC {report.get('gauc', float('nan')):.4f}  "
          f"logloss {report['logloss']:.4f}  | oracle AUC {report['oracle_auc']:.4f}  "
          f"oracle GAUC {report.get('oracle_gauc', float('nan')):.4f}  "
          f"model/oracle {report['ratio_to_oracle']:.3f}")


def cmd_demo(args):
    """Planted data -> DIN fit/evaluate -> versioned export -> local server -> gRPC ranking."""
    import numpy as np
    from exporters import export_saved_model
    from serving import Client, LocalServer
    from tfrec.data import df_to_inputs
    from tfrec.evaluation import evaluate_binary

    started = time.time()
    workdir = args.workdir or tempfile.mkdtemp(prefix="tfrec-demo-")
    print(f"[1/5] planted-truth behaviour log: {args.users} users x {args.events_per_user} events, "
          f"{args.items} items (string ids)")
    log, train_df, test_df, columns = _planted_din(args)
    print(f"      {len(log)} impressions -> {len(train_df)} train / {len(test_df)} test samples (last 5 events of each user held out)")

    print("[2/5] training DIN with Keras fit")
    model = _train_din(args, train_df, columns)
    report = evaluate_binary(model, test_df, columns, "click", truth_col="p_click", group_col="user_id")
    _print_report("[3/5] test", report)

    export_base = os.path.join(workdir, "models", DEMO_MODEL_NAME)
    path = export_saved_model(model, export_base, warmup_inputs=df_to_inputs(test_df.head(5), columns),
                              model_name=DEMO_MODEL_NAME)
    print(f"[4/5] exported SavedModel version {os.path.basename(path)} to {path}")

    rng = np.random.default_rng(args.seed)
    items = log.drop_duplicates("item_id").set_index("item_id")["cate_id"]
    print(f"[5/5] serving on 127.0.0.1 (TF Serving gRPC API) and ranking {args.candidates} candidates per user")
    with LocalServer(model_base_path=export_base, model_name=DEMO_MODEL_NAME) as server, \
            Client(server.grpc_target) as client:
        print(f"      server pid {server.pid} at {server.grpc_target}")
        worst = 0.0
        for _, row in test_df.drop_duplicates("user_id").head(args.show_users).iterrows():
            candidates = rng.choice(items.index.to_numpy(), args.candidates, replace=False)
            request = test_df.loc[[row.name] * args.candidates].reset_index(drop=True)
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
    if args.workdir or args.keep:
        where = f"artefacts kept in {workdir}"
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        where = "temporary artefacts removed (--keep or --workdir keeps them)"
    print(f"server stopped. demo finished in {time.time() - started:.0f}s; {where}")
    return 0


def cmd_train(args):
    from tfrec.evaluation import evaluate_binary

    _, train_df, test_df, columns = _planted_din(args)
    model = _train_din(args, train_df, columns)
    _print_report("test", evaluate_binary(model, test_df, columns, "click", truth_col="p_click", group_col="user_id"))
    model.save(args.output)
    print(f"saved Keras model to {args.output}")
    return 0


def cmd_export(args):
    import tensorflow as tf
    import tfrec.layers  # noqa: F401  (registers the custom layers for load_model)
    from exporters import export_saved_model

    model = tf.keras.models.load_model(args.model)
    path = export_saved_model(model, args.export_base, version=args.version, extra_outputs=args.extra_output)
    print(path)
    return 0


def cmd_serve(argv):
    from serving.server import main as serve_main

    return serve_main(argv)


def cmd_query(args):
    from serving import Client

    inputs = json.loads(args.inputs)
    with Client(args.target) as client:
        outputs = client.predict(args.model_name, inputs, signature_name=args.signature_name,
                                 version=args.version, output_filter=args.output_filter)
    print(json.dumps({name: value.tolist() for name, value in outputs.items()}, indent=2))
    return 0


def cmd_bench(args):
    """Sequential gRPC Predict latency against any TF Serving endpoint (ours or the real one)."""
    import numpy as np
    from serving import Client

    inputs = json.loads(args.inputs)
    with Client(args.target) as client:
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


def _add_planted_args(parser):
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--events-per-user", type=int, default=50)
    parser.add_argument("--maxlen", type=int, default=20)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, help="1: Keras progress bar, 0: one line per epoch")


def build_parser():
    parser = argparse.ArgumentParser(prog="tfrec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train, evaluate, export, serve and query DIN on built-in data")
    _add_planted_args(demo)
    demo.add_argument("--workdir", help="keep artefacts here (default: a temporary directory, removed)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.add_argument("--candidates", type=int, default=100)
    demo.add_argument("--show-users", type=int, default=3)
    demo.add_argument("--top-k", type=int, default=5)

    train = commands.add_parser("train", help="train DIN on planted data and save the Keras model")
    _add_planted_args(train)
    train.add_argument("--output", required=True)

    export = commands.add_parser("export", help="export a saved Keras model as a versioned SavedModel")
    export.add_argument("--model", required=True, help="a model saved with model.save()")
    export.add_argument("--export-base", required=True, help="the model's --model_base_path")
    export.add_argument("--version", type=int)
    export.add_argument("--extra-output", action="append", default=[], help="a layer name to export too")

    commands.add_parser("serve", add_help=False, help="the TF-Serving-compatible server (tensorflow_model_server flags)")

    query = commands.add_parser("query", help="one gRPC Predict; inputs as JSON {feature: values}")
    query.add_argument("--target", default="127.0.0.1:8500")
    query.add_argument("--model-name", required=True)
    query.add_argument("--inputs", required=True)
    query.add_argument("--signature-name")
    query.add_argument("--version", type=int)
    query.add_argument("--output-filter", action="append")

    bench = commands.add_parser("bench", help="gRPC Predict latency p50/p99 of one request, repeated")
    bench.add_argument("--target", default="127.0.0.1:8500")
    bench.add_argument("--model-name", required=True)
    bench.add_argument("--inputs", required=True, help="JSON {feature: values}")
    bench.add_argument("--requests", type=int, default=200)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        return cmd_serve(argv[1:])
    args = build_parser().parse_args(argv)
    return {"demo": cmd_demo, "train": cmd_train, "export": cmd_export, "query": cmd_query,
            "bench": cmd_bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
