"""DIN on real data: MovieLens 100K split as the DIN paper splits MovieLens, tfrec against DeepCTR 0.9.4.

    python -m benchmarks.bench_movielens                       # reads data/ml-100k, rewrites "movielens"
    python -m benchmarks.bench_movielens --data PATH --quick   # one seed, 2 epochs (smoke test)

Data: an ml-100k (or ml-1m) folder in GroupLens' format: unpack ml-100k.zip from
https://grouplens.org/datasets/movielens/, or, on a machine that reaches only PyPI, write it with
`python -m benchmarks.movielens_100k data/ml-100k`.

Recipe: `tfrec.datasets.load_movielens_ranking(path, test_users=0.278)`, the DIN paper's MovieLens
setting (Zhou et al., KDD 2018, section 6.1): click = rating >= 4; each rating is predicted from
the user's earlier ratings (history of item and genre, the most recent 50); 27.8% of the users
(the paper's 38,493 of 138,493) are test users, all of their ratings are the test set; the metric
is GAUC over users (per-user AUC weighted by the user's impressions), with AUC beside it.

Contenders, each in its own process on the same frames, for each model seed of SIZES: tfrec's DIN with a
default `compile("adam", "binary_crossentropy")` (XLA after the lookups, LazyAdam, mini-batch aware
L2) and DeepCTR 0.9.4's DIN with Keras' Adam(1e-3), both with DIN's defaults (DNN 256-128-64,
attention 80-40 Dice, l2_reg_embedding 1e-6). Every contender is scored on the test set after every
epoch, so the table shows the whole course of training, not one chosen epoch. Two baselines
without training: the item's click rate among the training ratings, and the same smoothed toward
the user's (test users' earlier ratings are in their histories, which the models read too).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

CONFIG = dict(maxlen=50, embedding_dim=16, batch_size=256, learning_rate=1e-3, test_users=0.278, split_seed=0)
SIZES = {"full": dict(seeds=(0, 1, 2), epochs=5), "quick": dict(seeds=(0,), epochs=2)}
CONTENDERS = {"tfrec": "tfrec DIN, default compile (XLA after lookups, LazyAdam, mini-batch aware L2)",
              "deepctr": "DeepCTR 0.9.4 DIN, Keras Adam"}
DEFAULT_DATA = os.path.join(common.ROOT, "data", "ml-100k")
ITEM_RATE = "item click rate (training ratings)"


def load(path):
    from tfrec.datasets import load_movielens_ranking

    return load_movielens_ranking(path, maxlen=CONFIG["maxlen"], embedding_dim=CONFIG["embedding_dim"],
                                  test_users=CONFIG["test_users"], seed=CONFIG["split_seed"])


def child_train(path, impl, seed, epochs):
    ds = load(path)
    import tensorflow as tf
    from benchmarks.bench_din import EpochTimer, deepctr_columns
    from tfrec.data import df_to_inputs
    from tfrec.evaluation import binary_report

    tf.keras.utils.set_random_seed(seed)
    x_train, x_test = df_to_inputs(ds.train, ds.feature_columns), df_to_inputs(ds.test, ds.feature_columns)
    y_train = ds.train["click"].to_numpy("float32")
    labels, users = ds.test["click"].to_numpy(), ds.test["user_id"].to_numpy()
    if impl == "deepctr":
        from deepctr.models import DIN as DeepCTR_DIN

        model = DeepCTR_DIN(deepctr_columns(ds.feature_columns), ds.history_features, seed=seed)
        model.compile(tf.keras.optimizers.Adam(CONFIG["learning_rate"]), "binary_crossentropy")
    else:
        from tfrec.models import DIN

        model = DIN(ds.feature_columns, ds.history_features, seed=seed)
        model.compile("adam", "binary_crossentropy")
    per_epoch = []

    class _Score(tf.keras.callbacks.Callback):  # after the timer: evaluation is not training time
        def on_epoch_end(self, epoch, logs=None):
            scores = model.predict(x_test, batch_size=4096, verbose=0).reshape(-1)
            per_epoch.append(binary_report(labels, scores, users))

    timer = EpochTimer()
    model.fit(x_train, y_train, batch_size=CONFIG["batch_size"], epochs=epochs, verbose=0,
              callbacks=[timer.callback, _Score()])
    common.emit(dict(impl=impl, seed=seed, train_rows=len(ds.train), test_rows=len(ds.test),
                     label_sum=float(y_train.sum()), per_epoch=per_epoch, epoch_s=timer.seconds,
                     # the fastest compiled epoch: a burst of load from another process only adds time
                     examples_per_s=len(ds.train) / min(timer.seconds[1:] or timer.seconds),
                     peak_rss_mib=common.peak_rss_mib()))


def baselines(ds):
    """Scores without training: the item's training click rate, and that smoothed toward the user's."""
    import numpy as np
    from tfrec.evaluation import binary_report

    train, test = ds.train, ds.test
    prior, strength = train["click"].mean(), 10.0
    by_item = train.groupby("item_id")["click"].agg(["sum", "count"])
    item_rate = ((by_item["sum"] + strength * prior) / (by_item["count"] + strength)).reindex(test["item_id"])
    item_rate = item_rate.fillna(prior).to_numpy()
    # A test user's earlier ratings are its history: its liked share so far, from the test rows in time order.
    liked_before = test.groupby("user_id")["click"].cumsum() - test["click"]
    seen_before = test.groupby("user_id").cumcount()
    user_rate = ((liked_before + strength * prior) / (seen_before + strength)).to_numpy()
    odds = np.log(item_rate / (1 - item_rate)) + np.log(user_rate / (1 - user_rate)) - np.log(prior / (1 - prior))
    labels, users = test["click"].to_numpy(), test["user_id"].to_numpy()
    return {ITEM_RATE: binary_report(labels, item_rate, users),
            "item click rate x the user's click rate so far": binary_report(labels, 1 / (1 + np.exp(-odds)), users)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "SEED"))
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]
    if args.child:
        return child_train(args.data, args.child[0], int(args.child[1]), size["epochs"])

    import numpy as np

    ds = load(args.data)  # here too: a missing folder fails before any child starts, with the loader's message
    flag = ["--quick"] if args.quick else []
    runs = {}
    for seed in size["seeds"]:
        for impl in CONTENDERS:
            print(f"seed {seed}: training {impl} ...", flush=True)
            run = runs[impl, seed] = common.run_child(__file__, "--data", args.data, *flag, "--child", impl, seed)
            print("  GAUC by epoch " + " ".join(f"{e['gauc']:.4f}" for e in run["per_epoch"])
                  + f", {run['examples_per_s']:.0f} ex/s", flush=True)
    if len({(run["train_rows"], run["test_rows"], run["label_sum"]) for run in runs.values()}) != 1:
        raise RuntimeError("the contenders did not train on the same rows")

    def mean(impl, key, epoch):
        values = [runs[impl, seed]["per_epoch"][epoch][key] for seed in size["seeds"]]
        return np.mean(values), np.std(values)

    def speed(impl):
        return np.median([runs[impl, seed]["examples_per_s"] for seed in size["seeds"]])

    epochs, seeds = size["epochs"], size["seeds"]
    command = f"python -m benchmarks.bench_movielens{' --quick' if args.quick else ''}"
    lines = [
        "## Real data: DIN on MovieLens 100K, tfrec vs DeepCTR 0.9.4",
        "",
        f"Command: `{command}` ({common.machine_line()}, {common.commit_line()}); data folder "
        f"`{os.path.relpath(args.data, common.ROOT)}`.",
        "",
        f"Recipe (`load_movielens_ranking(path, test_users={CONFIG['test_users']})`): {ds.recipe}. "
        f"{ds.stats['ratings']:,} ratings of {ds.stats['users']} users on {ds.stats['items']:,} movies; "
        f"{len(ds.train):,} training samples, {len(ds.test):,} test samples of {ds.stats['test_users']} test users "
        f"(click rate {ds.train['click'].mean():.3f} / {ds.test['click'].mean():.3f}). The DIN paper's MovieLens "
        "setting (section 6.1) on MovieLens 100K rather than its 20M: columns user_id, item_id, cate_id "
        "(the movie's first genre) and the history of both. Config on both sides: DIN's defaults (DNN 256-128-64, "
        "attention 80-40 Dice, l2_reg_embedding 1e-6), embedding "
        f"{CONFIG['embedding_dim']}, batch {CONFIG['batch_size']}, Adam {CONFIG['learning_rate']:g} (tfrec's "
        "default compile makes it LazyAdam with XLA after the lookups), model seeds "
        f"{', '.join(map(str, seeds))}, each contender and seed in its own process. Scored on the whole test set "
        "after every epoch: mean (std) over the seeds. Train ex/s: training samples / the wall time of the "
        "fastest epoch after the first (which compiles; evaluation excluded), the median over the seeds.",
        "",
        "| contender | " + " | ".join(f"GAUC epoch {e + 1}" for e in range(epochs))
        + f" | AUC epoch {epochs} | logloss epoch {epochs} | train ex/s | tfrec / DeepCTR ex/s |",
        "|---|" + "---:|" * (epochs + 4),
    ]
    for impl, name in CONTENDERS.items():
        gaucs = " | ".join("{:.4f} ({:.4f})".format(*mean(impl, "gauc", e)) for e in range(epochs))
        ratio = f"{speed('tfrec') / speed('deepctr'):.2f}x" if impl == "tfrec" else ""
        lines.append(f"| {name} | {gaucs} | {mean(impl, 'auc', epochs - 1)[0]:.4f} | "
                     f"{mean(impl, 'logloss', epochs - 1)[0]:.4f} | {speed(impl):,.0f} | {ratio} |")
    reference = baselines(ds)
    for name, report in reference.items():
        lines.append(f"| baseline: {name} | " + " | ".join([f"{report['gauc']:.4f}"] + [""] * (epochs - 1))
                     + f" | {report['auc']:.4f} | {report['logloss']:.4f} | | |")
    best = {impl: max(range(epochs), key=lambda e: mean(impl, "gauc", e)[0]) for impl in CONTENDERS}
    lines += [
        "",
        "Best epoch by mean GAUC (read off the test set, so it is no tuned result): " + "; ".join(
            f"{impl} epoch {best[impl] + 1}, GAUC {mean(impl, 'gauc', best[impl])[0]:.4f}, AUC "
            f"{mean(impl, 'auc', best[impl])[0]:.4f}" for impl in CONTENDERS) + "; against the item click-rate "
        "baseline's GAUC: " + ", ".join(
            f"{impl} {mean(impl, 'gauc', best[impl])[0] - reference[ITEM_RATE]['gauc']:+.4f}" for impl in CONTENDERS)
        + ". For scale, the DIN paper (Table 3) reports GAUC on MovieLens 20M (138,493 users, the same split "
        "and labels) of 0.7263 for logistic regression, 0.7300 for its Embedding&MLP base model and 0.7348 for "
        "DIN with Dice: DIN's lead over the base model there is 0.005 GAUC.",
    ]
    common.write_section("movielens", "\n".join(lines))


if __name__ == "__main__":
    main()
