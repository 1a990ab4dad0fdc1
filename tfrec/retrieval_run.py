"""`tfrec train / evaluate --config` for the retrieval models (YoutubeDNN, MIND, SDM).

An interaction log (`data.train`, one row per event) -> DeepMatch's leave-last-out samples
(`tfrec.data.retrieval_samples`) -> columns with vocabularies from the training samples
(`sample_feature_columns`) -> the model, trained with a sampled softmax -> recall, hit rate and
NDCG at `retrieval.k` of each user's held-out last event over the catalogue, next to ranking by
popularity. `tfrec export --config` then writes the top-k export (`exporters.export_retrieval`).
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)
from feature_columns import serving_dtype

import json
import logging
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tfrec import config as run
from tfrec import distribute
from tfrec.files import replaced_atomically
from tfrec.config import ConfigError

logger = logging.getLogger(__name__)


def read_log(config, out=None):
    """The interaction log of `data.train`, checked, with repeated events counted once.

    Every `retrieval:` column must be there, and no user, item, time, category or profile cell
    empty (after `data.fill`). User, item and category ids of a CSV are read as text, so "007"
    stays "007" and is not user 7; a log of CSV and Parquet files has them as text throughout.
    Times are numbers, year-first dates (ISO 8601), or dates in `retrieval.time_format`; other
    text is refused rather than sorted as text or read with a guessed day and month order, either
    of which would hold out another event than each user's last. An event repeated exactly (same
    user, item and time) counts once.
    """
    from tfrec.data.pipeline import id_text

    settings = config.retrieval
    ids = [settings.user, settings.item] + ([settings.category] if settings.category else [])
    log = run.fill(run.read_data(config.data.train, "data.train", config.path, text_columns=ids,
                                 bad_lines=config.data.bad_lines, skipped_to=run.skipped_lines_file(config)),
                  config, ())
    for key in ("user", "item", "category", "time"):
        name = getattr(settings, key)
        if name is not None and name not in log.columns:
            raise ConfigError(f"{config.path}: retrieval.{key}: '{name}' is not a column of the log; its columns "
                              f"are {list(log.columns)}")
    missing = [name for name in settings.profile if name not in log.columns]
    if missing:
        raise ConfigError(f"{config.path}: retrieval.profile: {missing} are not columns of the log; its columns "
                          f"are {list(log.columns)}")
    described = [("retrieval.user", settings.user), ("retrieval.item", settings.item), ("retrieval.time", settings.time)]
    fillable = ([("retrieval.category", settings.category)] if settings.category else []) + \
        [("retrieval.profile", name) for name in settings.profile]
    for key, name in described + fillable:
        gaps = np.flatnonzero(log[name].isna().to_numpy())
        if len(gaps):
            fix = "an event needs a user, an item and a time: drop those rows" if (key, name) in described else \
                f"give their value with data: {{fill: {{{name}: ...}}}}, or fill them in the data"
            raise ConfigError(f"{config.path}: {key}: column '{name}' has {len(gaps)} empty cell(s), the first in "
                              f"data row {gaps[0]}; {fix}")
    for name in ids:  # a CSV's ids are text, a Parquet file's keep their type: user "12" of one is 12 of another
        if log[name].dtype.kind == "O" and pd.api.types.infer_dtype(log[name]).startswith("mixed"):
            log[name] = [str(id_text(value)) for value in log[name]]
    log[settings.time] = _event_times(log[settings.time], config)
    repeated = log.duplicated([settings.user, settings.item, settings.time])
    if repeated.any():
        print(f"{int(repeated.sum())} repeated event(s) (the same user, item and time) counted once",
              file=out or sys.stdout)
        log = log[~repeated].reset_index(drop=True)
    return log


def _event_times(times, config):
    """The time column as something that sorts by time (`tfrec.config.sortable_times`)."""
    return run.sortable_times(times, f"{config.path}: retrieval.time", config.retrieval.time_format,
                              "retrieval.time_format")


def samples(config, out=None):
    """(train, test) leave-last-out samples of the config's log: each user's last event is a test row."""
    from tfrec.data import retrieval_samples
    from tfrec.data.retrieval import PREFER_LENGTH

    settings = config.retrieval
    log = read_log(config, out)
    # Ties keep the log's order: with dates alone, a newest-first log holds out a day's first event.
    users = log[settings.user]
    last = log[settings.time] == log.groupby(users)[settings.time].transform("max")
    tied = int((last.groupby(users).sum() > 1).sum())
    if tied:
        logger.warning("%d of %d users' last event shares its time with another event of theirs (dates without a "
                       "time of day?): the held-out event is the one the log lists last", tied, users.nunique())
    train, test = retrieval_samples(log, settings.seq_maxlen, short_sess_length=settings.short_sess_length,
                                    user_cols=settings.profile, min_history=settings.min_history,
                                    user_col=settings.user, item_col=settings.item, category_col=settings.category,
                                    time_col=settings.time)
    if len(train) == 0:
        raise ConfigError(f"{config.path}: data.train: no user has more than {settings.min_history + 1} events, so "
                          "there is no training sample (each user's last event is held out, and a sample needs "
                          f"retrieval.min_history = {settings.min_history} earlier ones)")
    if settings.short_sess_length is not None and not (train[PREFER_LENGTH] > 0).any():
        logger.warning("retrieval.short_sess_length: the short-term session (%d events) holds every training "
                       "sample's whole history, so SDM's long-term preference (prefer_*) is always empty; lower it",
                       settings.short_sess_length)
    return train, test


def user_requests(config, users, out=None):
    """The request inputs ({feature: array}, one row per user) of the config's retrieval export
    for `users` (their ids), from the log: each user's next event as training saw every event,
    the history being their most recent events and the profile that of their last event.

    Built by the samples' own code (`tfrec.data.retrieval_samples`, on the log with one event
    appended after each user's last), so a request holds what a training sample of that moment
    held.

    Raises:
      ConfigError: a user has no event in the log.
    """
    from tfrec.data import df_to_inputs, retrieval_samples
    from tfrec.data.pipeline import id_text

    settings = config.retrieval
    columns = run.trained_columns(config)
    log = read_log(config, out)
    # Users are asked for by their text; a Parquet log's ids keep their type (12, not "12").
    by_text = {str(id_text(user)): user for user in pd.unique(log[settings.user])}
    asked = [str(id_text(user)) for user in users]
    missing = [user for user in asked if user not in by_text]
    if missing:
        raise ConfigError(f"{config.path}: data.train: no event of user(s) {missing[:5]} in the log, so there is no "
                          f"history to ask with (users are asked for by their text, e.g. {next(iter(by_text))!r})")
    wanted = [by_text[user] for user in asked]
    theirs = log[log[settings.user].isin(wanted)]
    last = theirs.sort_values(settings.time, kind="stable").groupby(settings.user, sort=False).tail(1).set_index(
        settings.user)
    step = pd.Timedelta(seconds=1) if log[settings.time].dtype.kind == "M" else 1
    following = last.loc[list(dict.fromkeys(wanted))].reset_index()
    following[settings.time] += step
    _, test = retrieval_samples(pd.concat([theirs, following], ignore_index=True),
                                settings.seq_maxlen, short_sess_length=settings.short_sess_length,
                                user_cols=settings.profile, min_history=1, user_col=settings.user,
                                item_col=settings.item, category_col=settings.category, time_col=settings.time)
    test = test.set_index(settings.user).loc[wanted].reset_index()
    check_trained_columns(config, columns, test)
    inputs = df_to_inputs(test, [column for column in columns if column.name != settings.item])
    # Dtypes as the export's signature declares them, so a raw TF Serving request built with
    # tf.make_tensor_proto from these arrays is accepted.
    return {name: values.astype(serving_dtype(values.dtype).as_numpy_dtype, copy=False)
            for name, values in inputs.items()}


def check_trained_columns(config, columns, samples, folder=None):
    """A ConfigError naming the `columns` of the model trained in `folder` (default: the config's
    output) that the config's `samples` lack: its retrieval: settings (item, category, profile)
    changed since that training."""
    missing = [column.name for column in columns if column.name not in samples.columns]
    if missing:
        raise ConfigError(f"{config.path}: retrieval: the model trained in {folder or config.output} takes {missing}, "
                          "which this config's retrieval: settings do not make (its item, category or profile "
                          "changed since that training)", hint="set them back, or train afresh")


def item_feature(config, columns):
    """The trained model's item id column (`retrieval.item`) among its `columns`."""
    return next(column for column in columns if column.name == config.retrieval.item)


def catalogue(config, train, item_column):
    """The candidates: the `data.items` frame (one row per item), or one row per training target;
    their ids as `item_column` takes them, and only those it has a row of its own for.

    An item outside the vocabulary would get the one shared out-of-vocabulary vector, which
    every user's ranking would put in the same place; the export leaves such items out of its
    index, so evaluation ranks without them too (with a warning naming some)."""
    item = config.retrieval.item
    if not config.data.items:
        items = pd.DataFrame({item: pd.unique(train[item])})
    else:
        items = run.read_data(config.data.items, "data.items", config.path, text_columns=[item])
        if item not in items.columns:
            raise ConfigError(f"{config.path}: data.items: the catalogue has no column '{item}' (retrieval.item); "
                              f"its columns are {list(items.columns)}")
        if items[item].isna().any():
            raise ConfigError(f"{config.path}: data.items: column '{item}' has {int(items[item].isna().sum())} "
                              "empty cell(s)")
    items = items.assign(**{item: item_ids(items[item], item_column, config, "data.items")})
    repeated = items[item][items[item].duplicated()]
    if len(repeated):
        raise ConfigError(f"{config.path}: data.items: column '{item}' must list each item once; it repeats "
                          f"{list(repeated.unique()[:5])}")
    if item_column.vocabulary is not None:
        known = items[item].isin(set(item_column.vocabulary))
        if not known.any():
            raise ConfigError(f"{config.path}: data.items: none of the {len(items)} catalogue items is an item the "
                              f"model was trained with (e.g. {items[item].head().tolist()})")
        if not known.all():
            source = "data.items: %d of %d catalogue items" if config.data.items else \
                "%d of %d training targets (the catalogue: no data.items)"
            logger.warning(source + " are not in the item vocabulary (e.g. %s): they would share one untrained "
                           "vector, so evaluation and the export leave them out", int((~known).sum()), len(items),
                           items[item][~known].head().tolist())
            items = items[known].reset_index(drop=True)
    return items


def items_left_out(config, items, item_column):
    """The trained items (`item_column`'s vocabulary) that the catalogue `items` lacks: no
    training target in today's data (retired, or only ever in histories) or, with data.items,
    not listed there. Evaluation and the export leave them out, so they can't be retrieved."""
    if item_column.vocabulary is None:
        return []
    served = set(items[config.retrieval.item].tolist())
    return [item for item in item_column.vocabulary if item not in served]


def item_ids(values, item_column, config, where):
    """Ids as `item_column` takes them: the text of each id for a string table (a catalogue of
    ints for a log read as text), ints for an int64 one (a catalogue CSV holds their text)."""
    from tfrec.data.pipeline import id_text

    values = values.to_numpy() if hasattr(values, "to_numpy") else np.asarray(values)
    if item_column.dtype == "string":
        return np.array([str(id_text(v)) for v in values], dtype=object)
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"{config.path}: {where}: the model's item ids are integers, but column "
                          f"'{item_column.name}' holds {values[:3].tolist()}") from None


def columns(config, train):
    """(user columns, item columns) with vocabularies from the training samples."""
    from tfrec.data import ColumnInferenceError, sample_feature_columns

    settings = config.retrieval
    try:
        return sample_feature_columns(train, settings.seq_maxlen, settings.short_sess_length, settings.profile,
                                      embedding_dim=config.columns.embedding_dim, min_count=config.columns.min_count,
                                      user_col=settings.user if settings.embed_user else None,
                                      item_col=settings.item, category_col=settings.category)
    except ColumnInferenceError as error:
        raise ConfigError(f"{config.path}: columns.{error.key}: {error.problem}") from None


def history_features(columns, item):
    """The names of the sequences of item ids among `columns` (hist_<item>, or SDM's short_ and
    prefer_ sessions): what `retrieval.exclude_seen` leaves out of a user's results."""
    from feature_columns import VarLenSparseFeat

    table = next(column.embedding_name for column in columns if column.name == item)
    return [column.name for column in columns if isinstance(column, VarLenSparseFeat) and column.embedding_name == table]


def _seen_positions(test, histories, ids, item_column, config):
    """Per test row, the catalogue positions of the items in its `histories` cells."""
    position = {value: i for i, value in enumerate(ids.tolist())}
    seen = [set() for _ in range(len(test))]
    for name in histories:
        for row, cell in enumerate(test[name]):
            seen[row].update(item_ids(np.asarray(cell), item_column, config, f"retrieval.item ({name})").tolist())
    return [np.array(sorted(position[v] for v in row if v in position), dtype=np.int64) for row in seen]


def _popular(order, k, rows, seen=None):
    """(rows, width) the popularity baseline's ranking: the first k ids of `order` (most frequent
    first), or per row the first k of them not in its `seen` ids, as the model's ranking leaves
    them out under retrieval.exclude_seen; a row left with fewer repeats its last id (counted once)."""
    width = min(k, len(order))
    if seen is None:
        return np.broadcast_to(order[:width], (rows, width))
    ranked = np.empty((rows, width), dtype=order.dtype)
    for row, ids in enumerate(seen):
        kept = order[~np.isin(order, ids)][:width] if len(ids) else order[:width]
        kept = kept if len(kept) else order[:1]
        ranked[row] = np.concatenate([kept, np.repeat(kept[-1:], width - len(kept))])
    return ranked


def _say_kept_settings(config, model, columns, out):
    """Prints the `retrieval:` settings of the config that a warm start does not apply (the model
    and its columns are the earlier run's, as built), next to the values it keeps; and today's
    negatives when they differ from the earlier run's (the sampler holds no weights: it follows
    the config)."""
    from feature_columns import VarLenSparseFeat

    settings = config.retrieval
    sampler = model.get_layer("negative_sampling").get_config()
    negatives = (settings.sampler, settings.num_sampled if settings.sampler != "inbatch" else 0)
    if negatives != (sampler["sampler"], sampler["num_sampled"]):
        print(f"negatives: retrieval.sampler {negatives[0]!r}, num_sampled {negatives[1]} (the earlier run: "
              f"{sampler['sampler']!r}, {sampler['num_sampled']})", file=out or sys.stdout)
    histories = [c.maxlen for c in columns if isinstance(c, VarLenSparseFeat)]
    kept = {"seq_maxlen": (settings.seq_maxlen, max(histories) if histories else settings.seq_maxlen),
            "embed_user": (settings.embed_user, any(c.name == settings.user for c in columns))}
    differing = [f"retrieval.{key} {today!r} (kept: {earlier!r})" for key, (today, earlier) in kept.items()
                 if today != earlier]
    if differing:
        print(f"not used with train.warm_start: {', '.join(differing)}; the model is the earlier run's, as it was "
              "built (train afresh to change them)", file=out or sys.stdout)


def _target_counts(config, train, columns):
    """How often each row of the item table is a training sample's target (the logQ correction)."""
    from tfrec.utils import item_counts

    return item_counts(train[config.retrieval.item].to_numpy(), item_feature(config, columns))


def build_model(config, user_columns, item_columns, train):
    """The config's model, its sampled softmax's negatives from `retrieval.sampler` with the
    training targets' counts (the logQ correction), and the user vector sized to the items'."""
    import tfrec.models
    from tfrec.utils import NegativeSampler

    settings, item = config.retrieval, item_columns[0]
    counts = _target_counts(config, train, item_columns)
    sampler = NegativeSampler(settings.sampler, settings.num_sampled, item_name=item.name, item_count=counts)
    args = run.model_args(config)
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

    from tfrec.evaluation import RecallValidation

    warm = run.warm_start_columns(config, out) if config.train.warm_start else None
    with run.step(f"reading {len(config.data.train)} log file(s)", out):
        train_df, test_df = samples(config, out)
    if warm:
        check_trained_columns(config, warm.columns, train_df, config.train.warm_start)
    print(f"{len(train_df)} training samples, {len(test_df)} test users", file=out or sys.stdout)
    train_df, validation_df = run.validation_split(train_df, config, out)
    tf.keras.utils.set_random_seed(config.train.seed)
    strategy = run.strategy_of(config)
    if warm:
        warm_model = run.warm_start_model(config, out)
        _say_kept_settings(config, warm_model, warm.columns, out)
        # New items start at the mean item (`with_grown_tables`): from ~0 a short warm start
        # leaves them too small to be retrieved.
        warm_model, every = run.grown(warm_model, warm.columns, train_df, warm.growth, out,
                                      item_counts=lambda every: _target_counts(config, train_df, every),
                                      new_rows="mean", sampler=(config.retrieval.sampler, config.retrieval.num_sampled))
    else:
        user_columns, item_columns = columns(config, train_df)
        every = user_columns + item_columns

    def make_model():
        model = distribute.placed_copy(warm_model) if warm else build_model(config, user_columns, item_columns,
                                                                            train_df)
        model.compile(tf.keras.optimizers.Adam(config.train.learning_rate), lazy_adam=config.train.lazy_adam)
        return model

    # Each epoch's recall@k on the validation samples, when it is the monitor (it costs a ranking).
    recall = [] if validation_df is None or config.train.validation.monitor != "recall" else [
        RecallValidation(k=config.retrieval.k, **vars(ranking_inputs(config, every, train_df, validation_df)))]
    # The model's output is its sampled-softmax loss: the rows need no labels.
    return run.fit_and_save(config, strategy, make_model, every, train_df, None, warm, verbose, tensorboard, out,
                            validation_df, validation_callbacks=recall)


def ranking_inputs(config, every, train, held_out):
    """What ranking the catalogue for the samples `held_out` takes, as the keyword arguments of
    `tfrec.evaluation.RecallValidation` but k: user_inputs, candidate_inputs, candidate_ids,
    truth and excluded (None unless retrieval.exclude_seen). `every`: the run's columns, the
    item's last; `train`: the training samples, whose targets are the catalogue without data.items."""
    from tfrec.data import df_to_inputs

    settings = config.retrieval
    item_column = item_feature(config, every)
    items = catalogue(config, train, item_column)
    if settings.k > len(items):
        raise ConfigError(f"{config.path}: retrieval.k: {settings.k} is more than the {len(items)} items of the "
                          "catalogue")
    ids = items[settings.item].to_numpy()
    excluded = _seen_positions(held_out, history_features(every, settings.item), ids, item_column, config) \
        if settings.exclude_seen else None
    if excluded is not None:  # checked here, not when ranking: train would fail only after its first epoch
        left = len(ids) - np.array([len(seen) for seen in excluded], dtype=np.int64)
        short = np.flatnonzero(left < settings.k)
        if len(short):
            raise ConfigError(f"{config.path}: retrieval.k: {settings.k} is more than the items left to rank for "
                              f"{len(short)} user(s) once retrieval.exclude_seen leaves their history out (user "
                              f"{held_out[settings.user].iloc[short[0]]!r}: {left[short[0]]} of the {len(ids)} items)")
    user_columns = [column for column in every if column is not item_column]
    return SimpleNamespace(user_inputs=df_to_inputs(held_out, user_columns),
                           candidate_inputs=df_to_inputs(items, [item_column]), candidate_ids=ids,
                           truth=item_ids(held_out[settings.item], item_column, config, "data.train"), excluded=excluded)


def evaluate(config, out=None):
    """recall@k, hit rate@k and NDCG@k of the trained model on each user's held-out last event,
    ranking the whole catalogue exactly (the brute-force export's answer), and the same of
    ranking by popularity (the training targets' counts). Writes `metrics.json`.

    Returns:
      {"rows", "candidates", "k", "model": {"recall", "hit_rate", "ndcg"}, "popularity": {...},
       "files": {"metrics": path}}.
    """
    from tfrec import metrics
    from tfrec.data import popularity_top_k
    from tfrec.evaluation import rank_candidates

    with run.step("loading the trained model", out):
        model, every = run.trained(config)
    run.check_held_out_rows_unchanged(config, out)
    settings, k = config.retrieval, config.retrieval.k
    train_df, test_df = samples(config, out)
    check_trained_columns(config, every, test_df)
    item_column = item_feature(config, every)
    ranking = ranking_inputs(config, every, train_df, test_df)
    ids, truth, excluded = ranking.candidate_ids, ranking.truth, ranking.excluded
    with run.step(f"ranking {len(ids)} items for {len(test_df)} test users", out):
        ranked = ids[rank_candidates(model, ranking.user_inputs, ranking.candidate_inputs, k, excluded)]
    targets = pd.DataFrame({settings.item: item_ids(train_df[settings.item], item_column, config, "data.train")})
    known = targets[targets[settings.item].isin(set(ids.tolist()))]
    popular = _popular(popularity_top_k(known, known[settings.item].nunique(), settings.item), k, len(test_df),
                       None if excluded is None else [ids[row] for row in excluded])

    def scores(top):
        width = top.shape[1]
        return {"recall": metrics.recall_at_k(truth, top, width), "hit_rate": metrics.hit_rate_at_k(truth, top, width),
                "ndcg": metrics.ndcg_at_k(truth, top, width)}

    report = {"rows": len(test_df), "candidates": len(ids), "k": k, "model": scores(ranked),
              "popularity": scores(popular)}
    path = config.output_file(run.METRICS_FILE)
    with replaced_atomically(path) as handle:
        json.dump(report, handle, indent=1)
    report["files"] = {"metrics": path}
    return report
