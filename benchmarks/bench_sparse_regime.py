"""Sparse-user regime: DIN / oracle AUC, mini-batch aware vs full-table L2, tfrec vs DeepCTR 0.9.4.

    python benchmarks/bench_sparse_regime.py            # full run, rewrites the "sparse_regime" section
    python benchmarks/bench_sparse_regime.py --quick    # 1 epoch, the three main rows only (smoke test)

Data: `tfrec.data.make_sparse_user_log(setting)` for settings "a" and "b" (seed 0), DIN samples
with history 30 and the last 5 events of each user held out. Model: the issue's DIN (DNN 64-32,
attention 32-16, embedding 8), Adam 1e-3, batch 256, 3 epochs. Every contender trains in its
own process on the same data; tfrec reads raw string ids, DeepCTR (which needs integer ids)
the same log generated with id_type="int" (the same draws, so the same rows).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

CONFIG = dict(maxlen=30, embedding_dim=8, batch_size=256, dnn_hidden_units=(64, 32), att_hidden_size=(32, 16),
              learning_rate=1e-3, seed=0)
EPOCHS = {"full": 3, "quick": 1}
SETTINGS = ("a", "b")
# contender -> (row label, tfrec keyword overrides, full-table lambda or None, drop user_id)
CONTENDERS = {
    "tfrec-default": ("tfrec DIN, defaults (mini-batch aware L2 1e-6, LazyAdam)", {}, None, False),
    "tfrec-old-full": ("tfrec DIN, old path: full-table L2 1e-6, dense Adam", dict(l2_reg_embedding=0), 1e-6, False),
    "deepctr": ("DeepCTR 0.9.4 DIN (Keras l2 1e-6 regulariser, Keras Adam), int ids", {}, None, False),
    "tfrec-mba-1e-2": ("tfrec DIN, mini-batch aware L2 1e-2, LazyAdam", dict(l2_reg_embedding=1e-2), None, False),
    "tfrec-full-1e-2": ("tfrec DIN, full-table L2 1e-2, dense Adam", dict(l2_reg_embedding=0), 1e-2, False),
    "tfrec-no-user-id": ("diagnostic: tfrec DIN, defaults, user_id column dropped", {}, None, True),
}
QUICK_CONTENDERS = ("tfrec-default", "tfrec-old-full", "deepctr")


def planted(setting, id_type):
    import feature_columns  # noqa: F401
    from tfrec.data import build_din_samples, din_feature_columns, make_sparse_user_log

    log = make_sparse_user_log(setting, seed=CONFIG["seed"], id_type=id_type)
    train_df, test_df = build_din_samples(log, maxlen=CONFIG["maxlen"], extra_cols=("p_click",), test_events=5)
    columns = din_feature_columns(log, maxlen=CONFIG["maxlen"], embedding_dim=CONFIG["embedding_dim"], id_type=id_type)
    return train_df, test_df, columns


def child_train(setting, impl, epochs):
    import time

    is_deepctr = impl == "deepctr"
    train_df, test_df, columns = planted(setting, "int" if is_deepctr else "str")
    import tensorflow as tf
    from tfrec import metrics
    from tfrec.data import DIN_HISTORY_FEATURES, df_to_inputs

    _, overrides, full_table_l2, drop_user = CONTENDERS[impl]
    if drop_user:
        columns = [c for c in columns if c.name != "user_id"]
    seed = CONFIG["seed"]
    tf.keras.utils.set_random_seed(seed)
    size = dict(dnn_hidden_units=CONFIG["dnn_hidden_units"], att_hidden_size=CONFIG["att_hidden_size"], seed=seed)
    x_train, x_test = df_to_inputs(train_df, columns), df_to_inputs(test_df, columns)
    y_train = train_df["click"].to_numpy("float32")
    if is_deepctr:
        from deepctr.models import DIN as DeepCTR_DIN

        from benchmarks.bench_din import deepctr_columns
        model = DeepCTR_DIN(deepctr_columns(columns), DIN_HISTORY_FEATURES, **size)
        model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), "binary_crossentropy")
    else:
        from tfrec.models import DIN

        model = DIN(columns, DIN_HISTORY_FEATURES, **size, **overrides)
        if full_table_l2 is not None:  # the old path: a dense gradient on every table, so Adam is dense
            common.add_full_table_l2(model, full_table_l2)
        model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), "binary_crossentropy")
    started = time.perf_counter()
    model.fit(x_train, y_train, batch_size=CONFIG["batch_size"], epochs=epochs, verbose=0)
    fit_s = time.perf_counter() - started

    def scored(frame, inputs):
        labels = frame["click"].to_numpy()
        scores = model.predict(inputs, batch_size=4096, verbose=0).reshape(-1)
        return metrics.auc(labels, scores), metrics.auc(labels, frame["p_click"].to_numpy())

    sample = train_df.sample(8000, random_state=seed)
    auc, oracle = scored(test_df, x_test)
    train_auc, train_oracle = scored(sample, df_to_inputs(sample, columns))
    common.emit(dict(setting=setting, impl=impl, train_rows=len(train_df), test_rows=len(test_df), epochs=epochs,
                     fit_s=fit_s, auc=auc, oracle_auc=oracle, train_auc=train_auc, train_oracle_auc=train_oracle))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "IMPL"))
    args = parser.parse_args()
    size_name = "quick" if args.quick else "full"
    epochs = EPOCHS[size_name]
    if args.child:
        return child_train(*args.child, epochs)

    from tfrec.data import SPARSE_USER_SETTINGS

    flag = ["--quick"] if args.quick else []
    contenders = QUICK_CONTENDERS if args.quick else tuple(CONTENDERS)
    runs = {}
    for setting in SETTINGS:
        for impl in contenders:
            print(f"setting {setting}: training {impl} ...", flush=True)
            run = runs[setting, impl] = common.run_child(__file__, *flag, "--child", setting, impl)
            print(f"  AUC {run['auc']:.4f} / oracle {run['oracle_auc']:.4f} = {run['auc'] / run['oracle_auc']:.3f}",
                  flush=True)

    lines = [
        "## DIN in the sparse-user regime: mini-batch aware vs full-table L2, tfrec vs DeepCTR 0.9.4",
        "",
        f"Command: `python benchmarks/bench_sparse_regime.py{' --quick' if args.quick else ''}` "
        f"({common.machine_line()}).",
        "Data: `tfrec.data.make_sparse_user_log(setting, seed=0)`: "
        + "; ".join(f"\"{s}\" = make_behaviour_log({', '.join(f'{k}={v}' for k, v in SPARSE_USER_SETTINGS[s].items())})"
                    for s in SETTINGS)
        + f". DIN samples with history {CONFIG['maxlen']}, the last 5 events of each user held out. "
        f"DIN DNN {'-'.join(map(str, CONFIG['dnn_hidden_units']))}, attention "
        f"{'-'.join(map(str, CONFIG['att_hidden_size']))} (Dice), embedding {CONFIG['embedding_dim']}, Adam "
        f"{CONFIG['learning_rate']:g}, batch {CONFIG['batch_size']}, {epochs} epoch(s), seed {CONFIG['seed']}, each "
        "contender in its own process. tfrec reads raw string ids; DeepCTR the same log with integer ids. "
        "Train AUC is on 8,000 training rows: a train / oracle ratio near or above 1 with a much lower "
        "test ratio is memorisation.",
        "",
        "| setting | contender | test AUC | oracle AUC | test AUC / oracle | train AUC / oracle | fit (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (setting, impl), run in runs.items():
        lines.append(f"| {setting} | {CONTENDERS[impl][0]} | {run['auc']:.4f} | {run['oracle_auc']:.4f} "
                     f"| {run['auc'] / run['oracle_auc']:.3f} | {run['train_auc'] / run['train_oracle_auc']:.3f} "
                     f"| {run['fit_s']:.0f} |")
    common.write_section("sparse_regime", "\n".join(lines))


if __name__ == "__main__":
    main()
