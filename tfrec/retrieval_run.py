"""`tfrec train / evaluate --config` for the retrieval models (YoutubeDNN, MIND, SDM).

An interaction log (`data.train`, one row per event) -> DeepMatch's leave-last-out samples
(`tfrec.data.retrieval_samples`) -> columns with vocabularies from the training samples
(`sample_feature_columns`) -> the model, trained with a sampled softmax -> recall, hit rate and
NDCG at `retrieval.k` of each user's held-out last event over the catalogue, next to ranking by
popularity. `tfrec export --config` then writes the top-k export (`exporters.export_retrieval`).
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import json
import sys

import numpy as np
import pandas as pd

from tfrec import config as run
from tfrec.config import ConfigError


def read_log(config):
    """The interaction log of `data.train`, checked: every `retrieval:` column present, no empty
    user, item or time cell. Item and category ids of a CSV are read as text (an id "007" stays
    "007"), as the ranking path reads the target of a history."""
    settings = config.retrieval
    ids = [settings.item] + ([settings.category] if settings.category else [])
    log = run.read_data(config.data.train, "data.train", config.path, text_columns=ids)
    log = run.fill(log, config, ())
    for key in ("user", "item", "category", "time"):
        name = getattr(settings, key)
        if name is not None and name not in log.columns:
            raise ConfigError(f"{config.path}: retrieval.{key}: '{name}' is not a column of the log; its columns "
                              f"are {list(log.columns)}")
    missing = [name for name in settings.profile if name not in log.columns]
    if missing:
        raise ConfigError(f"{config.path}: retrieval.profile: {missing} are not columns of the log; its columns "
                          f"are {list(log.columns)}")
    for key in ("user", "item", "time"):
        name = getattr(settings, key)
        gaps = np.flatnonzero(log[name].isna().to_numpy())
        if len(gaps):
            raise ConfigError(f"{config.path}: retrieval.{key}: column '{name}' has {len(gaps)} empty cell(s), the "
                              f"first in data row {gaps[0]}; an event needs a user, an item and a time: drop those "
                              "rows")
    return log


def samples(config):
    """(train, test) leave-last-out samples of the config's log: each user's last event is a test row."""
    from tfrec.data import retrieval_samples

    settings = config.retrieval
    train, test = retrieval_samples(read_log(config), settings.seq_maxlen, short_sess_length=settings.short_sess_length,
                                    user_cols=settings.profile, min_history=settings.min_history,
                                    user_col=settings.user, item_col=settings.item, category_col=settings.category,
                                    time_col=settings.time)
    if len(train) == 0:
        raise ConfigError(f"{config.path}: data.train: no user has more than {settings.min_history + 1} events, so "
                          "there is no training sample (each user's last event is held out, and a sample needs "
                          f"retrieval.min_history = {settings.min_history} earlier ones)")
    return train, test


def catalogue(config, train):
    """The candidates: the `data.items` frame (one row per item), or one row per training target."""
    item = config.retrieval.item
    if not config.data.items:
        return pd.DataFrame({item: pd.unique(train[item])})
    items = run.read_data(config.data.items, "data.items", config.path, text_columns=[item])
    if item not in items.columns:
        raise ConfigError(f"{config.path}: data.items: the catalogue has no column '{item}' (retrieval.item); its "
                          f"columns are {list(items.columns)}")
    repeated = items[item][items[item].duplicated()]
    if len(repeated) or items[item].isna().any():
        raise ConfigError(f"{config.path}: data.items: column '{item}' must list each item once, with no empty "
                          f"cell; it repeats {list(repeated.unique()[:5])} and has {int(items[item].isna().sum())} "
                          "empty cell(s)")
    return items


def columns(config, train):
    """(user columns, item columns) with vocabularies from the training samples."""
    from tfrec.data import ColumnInferenceError, sample_feature_columns

    settings = config.retrieval
    try:
        return sample_feature_columns(train, settings.seq_maxlen, settings.short_sess_length, settings.profile,
                                      embedding_dim=config.columns.embedding_dim, min_count=config.columns.min_count,
                                      user_col=settings.user, item_col=settings.item,
                                      category_col=settings.category)
    except ColumnInferenceError as error:
        raise ConfigError(f"{config.path}: columns.{error.key}: {error.problem}") from None


def history_features(columns, item):
    """The names of the sequences of item ids among `columns` (hist_<item>, or SDM's short_ and
    prefer_ sessions): what `retrieval.exclude_seen` leaves out of a user's results."""
    from feature_columns import VarLenSparseFeat

    table = next(column.embedding_name for column in columns if column.name == item)
    return [column.name for column in columns if isinstance(column, VarLenSparseFeat) and column.embedding_name == table]


def _seen_positions(test, histories, ids):
    """Per test row, the catalogue positions of the items in its `histories` cells."""
    position = {value: i for i, value in enumerate(ids.tolist())}
    return [np.array(sorted({position[v] for name in histories for v in np.asarray(row[name]).tolist() if v in position}),
                     dtype=np.int64) for _, row in test[histories].iterrows()]


def build_model(config, user_columns, item_columns, train):
    """The config's model, its sampled softmax's negatives from `retrieval.sampler` with the
    training targets' counts (the logQ correction), and the user vector sized to the items'."""
    import tfrec.models
    from tfrec.utils import NegativeSampler, item_counts

    settings, item = config.retrieval, item_columns[0]
    counts = item_counts(train[settings.item].to_numpy(), item)
    sampler = NegativeSampler(settings.sampler, settings.num_sampled, item_name=item.name, item_count=counts)
    args = dict(config.model.args)
    if config.model.name == "SDM":
        args.setdefault("units", item.embedding_dim)
        args.setdefault("history_feature_list", [settings.item] + ([settings.category] if settings.category else []))
    else:
        args.setdefault("user_dnn_hidden_units", (64, item.embedding_dim))
    try:
        return getattr(tfrec.models, config.model.name)(user_columns, item_columns, sampler_config=sampler, **args)
    except TypeError as error:
        raise ConfigError(f"{config.path}: model.args: {error}") from None
    except ValueError as error:
        raise ConfigError(f"{config.path}: model: {error}") from None


def train(config, verbose=2, tensorboard=None, out=None):
    """Trains the config's retrieval model on the log's training samples; writes `model.keras` and
    `columns.json` (user columns, then the item column) to `config.output`."""
    import tensorflow as tf

    from tfrec.data import df_to_dataset

    with run.step(f"reading {len(config.data.train)} log file(s)", out):
        train_df, test_df = samples(config)
    print(f"{len(train_df)} training samples, {len(test_df)} test users", file=out or sys.stdout)
    tf.keras.utils.set_random_seed(config.train.seed)
    if config.train.warm_start:  # its sampler keeps the earlier run's item counts (logQ)
        model, every = run.warm_start(config, out)
    else:
        user_columns, item_columns = columns(config, train_df)
        model = build_model(config, user_columns, item_columns, train_df)
        every = user_columns + item_columns
    model.compile(tf.keras.optimizers.Adam(config.train.learning_rate))
    callbacks = [tf.keras.callbacks.TensorBoard(log_dir=tensorboard)] if tensorboard else []
    if config.strategy.checkpoint_dir:
        from tfrec import distribute

        run.claim_backup_folder(config.strategy.checkpoint_dir, config, every)
        callbacks += distribute.checkpoint_callbacks(config.strategy.checkpoint_dir, config.strategy.save_freq)
    # The model's output is its sampled-softmax loss: the rows need no labels.
    dataset = df_to_dataset(train_df, every, batch_size=config.train.batch_size, seed=config.train.seed)
    with run.step(f"training {config.model.name} for {config.train.epochs} epoch(s)", out):
        history = model.fit(dataset, epochs=config.train.epochs, verbose=verbose, callbacks=callbacks)
    run.check_losses(history.history.get("loss", []))
    run.save(model, every, config, out)
    return model


def evaluate(config, out=None):
    """recall@k, hit rate@k and NDCG@k of the trained model on each user's held-out last event,
    ranking the whole catalogue exactly (the brute-force export's answer), and the same of
    ranking by popularity (the training targets' counts). Writes `metrics.json`.

    Returns:
      {"rows", "candidates", "k", "model": {"recall", "hit_rate", "ndcg"}, "popularity": {...},
       "files": {"metrics": path}}.
    """
    from tfrec import metrics
    from tfrec.data import df_to_inputs, popularity_top_k
    from tfrec.evaluation import rank_candidates

    with run.step("loading the trained model", out):
        model, every = run.trained(config)
    settings, k = config.retrieval, config.retrieval.k
    train_df, test_df = samples(config)
    items = catalogue(config, train_df)
    item_column = next(column for column in every if column.name == settings.item)
    if k > len(items):
        raise ConfigError(f"{config.path}: retrieval.k: {k} is more than the {len(items)} items of the catalogue")
    truth = test_df[settings.item].to_numpy()
    ids = items[settings.item].to_numpy()
    excluded = _seen_positions(test_df, history_features(every, settings.item), ids) if settings.exclude_seen else None
    with run.step(f"ranking {len(items)} items for {len(test_df)} test users", out):
        users = df_to_inputs(test_df, [column for column in every if column is not item_column])
        ranked = ids[rank_candidates(model, users, df_to_inputs(items, [item_column]), k, excluded)]
    known = train_df[train_df[settings.item].isin(set(ids.tolist()))]
    popular = np.broadcast_to(popularity_top_k(known, min(k, known[settings.item].nunique()), settings.item),
                              (len(test_df), min(k, known[settings.item].nunique())))

    def scores(top):
        width = top.shape[1]
        return {"recall": metrics.recall_at_k(truth, top, width), "hit_rate": metrics.hit_rate_at_k(truth, top, width),
                "ndcg": metrics.ndcg_at_k(truth, top, width)}

    report = {"rows": len(test_df), "candidates": len(items), "k": k, "model": scores(ranked),
              "popularity": scores(popular)}
    path = config.output_file(run.METRICS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
    report["files"] = {"metrics": path}
    return report
