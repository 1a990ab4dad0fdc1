"""Held-out evaluation: a ranking model next to the planted-truth oracle, a retrieval model's top k."""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import warnings

import numpy as np
import tensorflow as tf

from . import metrics
from .data import df_to_inputs
from .data.pipeline import check_unique_ids


# Rows turned into model inputs and scored per `predict` call: Keras copies a call's whole input
# into tensors first, and one call over 5M rows had not returned after 4.5 minutes (13 GiB).
PREDICT_ROWS = 100_000


def predict_outputs(model, df, feature_columns, batch_size=4096):
    """{output name: (rows,) float64 scores} of a ranking model for the rows of `df`, scored
    `PREDICT_ROWS` rows per `predict` call; an output of several values per row (e.g. an expert
    gate's weights) is (rows, values)."""
    names = list(model.output_names)
    if not len(df):  # Keras refuses to predict no rows: one empty call gives each output's width
        return _no_rows_outputs(model, df, feature_columns, names)
    parts = {name: [] for name in names}
    for start in range(0, len(df), PREDICT_ROWS):
        predictions = model.predict(df_to_inputs(df.iloc[start:start + PREDICT_ROWS], feature_columns),
                                    batch_size=batch_size, verbose=0)
        if isinstance(predictions, dict):
            predictions = [predictions[name] for name in names]
        elif not isinstance(predictions, list):
            predictions = [predictions]
        for name, values in zip(names, predictions):
            values = np.asarray(values, dtype=np.float64)
            values = values.reshape(len(values), -1)
            parts[name].append(values[:, 0] if values.shape[1] == 1 else values)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _no_rows_outputs(model, df, feature_columns, names):
    """`predict_outputs` of no rows: (0,) or (0, values) arrays, from one call of the model."""
    predictions = model(df_to_inputs(df, feature_columns), training=False)
    if isinstance(predictions, dict):
        predictions = [predictions[name] for name in names]
    predictions = tf.nest.flatten(predictions)
    outputs = {}
    for name, values in zip(names, predictions):
        values = np.asarray(values, dtype=np.float64)
        width = int(np.prod(values.shape[1:]))
        outputs[name] = np.zeros((0,) if width == 1 else (0, width))
    return outputs


def predict_frame(model, df, feature_columns, batch_size=4096, output=None):
    """Model scores for the rows of `df`, as a flat float64 array (one output, or `output`)."""
    if output is not None and output not in model.output_names:
        raise ValueError(f"output {output!r} is not an output of {model.name}; its outputs are {list(model.output_names)}")
    outputs = predict_outputs(model, df, feature_columns, batch_size)
    return outputs[output] if output is not None else next(iter(outputs.values()))


def binary_report(labels, scores, groups=None, sample_weight=None):
    """AUC and logloss of `scores` against binary `labels`, and with `groups` GAUC (NaN if no group
    has both labels); each weighted by `sample_weight` if given (see `tfrec.metrics.auc`)."""
    report = {"auc": metrics.auc(labels, scores, sample_weight),
              "logloss": metrics.logloss(labels, scores, sample_weight=sample_weight)}
    if groups is not None:
        try:
            report["gauc"] = metrics.gauc(labels, scores, groups, sample_weight)
        except metrics.OneClassError:  # no group holds both labels; any other refusal is a mistake
            report["gauc"] = float("nan")
    return report


def _check_frame(df, names):
    """A KeyError naming the first of `names` (argument name -> column) that `df` lacks, and a
    ValueError for a frame of no rows, before anything is scored."""
    for argument, column in names.items():
        if column is not None and column not in df.columns:
            raise KeyError(f"{argument} '{column}' is not a column of the DataFrame; its columns are "
                           f"{list(df.columns)}")
    if not len(df):
        raise ValueError("the DataFrame has no rows to evaluate")


def evaluate_binary(model, df, feature_columns, label_col, truth_col=None, group_col=None, output=None,
                    batch_size=4096):
    """AUC, GAUC (by `group_col`; NaN if no group has both labels) and logloss of `model` on `df`, plus the oracle's AUC.

    `truth_col` holds the generator's true probability; rows where it is NaN (sampled negatives)
    are left out of the oracle figure and of the model's `model_auc_on_oracle_rows`, so the ratio
    model/oracle compares like with like.

    Raises:
      KeyError: `df` lacks `label_col`, `truth_col` or `group_col` (naming it), or a feature's column.
      ValueError: `df` has no rows, its labels are of one class, or no row of known truth has both.
    """
    _check_frame(df, {"label_col": label_col, "truth_col": truth_col, "group_col": group_col})
    scores = predict_frame(model, df, feature_columns, batch_size, output)
    labels = df[label_col].to_numpy(dtype=np.float64)
    groups = None if group_col is None else df[group_col].to_numpy()
    report = {"rows": len(df), **binary_report(labels, scores, groups)}
    if truth_col is not None:
        truth = df[truth_col].to_numpy(dtype=np.float64)
        known = ~np.isnan(truth)
        try:
            report["oracle_auc"] = metrics.auc(labels[known], truth[known])
        except ValueError as error:
            raise ValueError(f"truth_col '{truth_col}': no oracle AUC on the {int(known.sum())} row(s) whose truth "
                             f"is known: {error}") from None
        report["model_auc_on_oracle_rows"] = metrics.auc(labels[known], scores[known])
        report["ratio_to_oracle"] = report["model_auc_on_oracle_rows"] / report["oracle_auc"]
        if group_col is not None and known.all() and not np.isnan(report["gauc"]):
            report["oracle_gauc"] = metrics.gauc(labels, truth, groups)
    return report


def tower_outputs(tower, inputs, batch_size=4096):
    """A tower's outputs for `inputs` ({feature: array}, more features allowed), as numpy: one
    array, or a list of them for several outputs (MIND's interests and their mask).

    The tower is called batch by batch, not through `predict`, so this also runs in a callback
    during `fit` under any strategy: there, inside the strategy's scope, `predict` cannot read its
    own data under ParameterServerStrategy and is a collective every worker must join under
    MultiWorkerMirroredStrategy."""
    rows = len(next(iter(inputs.values())))
    parts = [tf.nest.flatten(tower({name: inputs[name][start:start + batch_size] for name in tower.input_names},
                                   training=False))
             for start in range(0, max(rows, 1), batch_size)]  # 0 rows: one empty call gives the shapes
    outputs = [np.concatenate([part[i].numpy() for part in parts]) for i in range(len(parts[0]))]
    return outputs if len(outputs) > 1 else outputs[0]


def candidate_vectors(model, candidate_inputs, batch_size=4096):
    """(items, d) a two-tower model's item vectors of the candidates, in their order.

    `candidate_inputs`: {item feature: (items,) ids}, each id once (a ValueError names repeated
    ones, as `export_retrieval` does). Candidates sharing a vector (usually ids outside the item
    vocabulary, which all read its out-of-vocabulary row) get a warning: they rank alike for
    every user.
    """
    item_tower = model.item_tower
    if len(item_tower.input_names) == 1:  # the item id
        name = item_tower.input_names[0]
        check_unique_ids(candidate_inputs[name], f"candidate_inputs[{name!r}]")
    items = tower_outputs(item_tower, candidate_inputs, batch_size)
    counts = np.unique(items, axis=0, return_counts=True)[1]
    shared = int(counts[counts > 1].sum())
    if shared:
        warnings.warn(f"{shared} of {len(items)} candidates have the same vector as another one, "
                      "usually ids outside the item vocabulary sharing its out-of-vocabulary row; they rank "
                      "alike for every user (exporters.export_retrieval leaves such ids out)", stacklevel=3)
    return items


def rank_candidates(model, user_inputs, candidate_inputs, k, excluded=None, batch_size=4096, block_rows=1024):
    """(rows, k) positions of the candidates a two-tower model ranks first for each user, best first.

    Exact search over the towers, as the export's brute-force index answers: an item's score is
    <user vector, item vector>, for MIND the best over the user's active interests; ties go to
    the candidate listed first. Map positions to ids with `candidate_ids[positions]`.

    Args:
      model: a `TwoTowerModel` (YoutubeDNN, MIND, SDM).
      user_inputs: {feature: array} holding the user tower's inputs (`df_to_inputs`).
      candidate_inputs: {item feature: (items,) ids}, as `df_to_inputs(items, [item_column])`;
        each id once (`candidate_vectors`).
      k: items per row (at most the number of candidates).
      excluded: None, or per row an array of candidate positions left out of its ranking (the
        items a user has seen, as `export_retrieval(..., exclude=...)` leaves them out); a row
        left with fewer than k candidates is an error.
      block_rows: rows scored at once, so memory stays at block_rows x items scores.
    """
    items = candidate_vectors(model, candidate_inputs, batch_size)
    return rank_vectors(tower_outputs(model.user_tower, user_inputs, batch_size), items, k, excluded, block_rows)


def rank_vectors(users, items, k, excluded=None, block_rows=1024):
    """`rank_candidates` on tower outputs: `users` (rows, d), or MIND's [(rows, k_max, d)
    interests, (rows, k_max) mask], against `items` (items, d)."""
    interests, active = users if isinstance(users, list) else (users[:, None, :], None)
    top = np.empty((len(interests), k), dtype=np.int64)
    for start in range(0, len(interests), block_rows):
        block = slice(start, start + block_rows)
        scores = np.einsum("bkd,nd->bkn", interests[block], items)
        if active is not None:
            scores = np.where(active[block, :, None] > 0, scores, -np.inf)
        scores = scores.max(axis=1)
        if excluded is not None:
            positions = excluded[block]
            scores[np.repeat(np.arange(len(positions)), [len(p) for p in positions]),
                   np.concatenate([np.asarray(p, dtype=np.int64) for p in positions] or [np.zeros(0, np.int64)])] = -np.inf
            if (np.isneginf(scores).sum(axis=1) > scores.shape[1] - k).any():
                raise ValueError(f"a row has fewer than k={k} candidates left after its exclusions")
        top[block] = metrics.top_k_indices(scores, k)
    return top


class RecallValidation(tf.keras.callbacks.Callback):
    """Logs `val_recall`, a two-tower model's recall@k on held-out samples, after every epoch.

    A retrieval model's `val_loss` is its sampled softmax on the held-out samples: the target
    against the batch's other items (a sampler draws its negatives in training only), a figure
    that moves with the batch size. This ranks the whole catalogue for each held-out user exactly, as `rank_candidates`
    (and the brute-force export) does, and counts the samples whose item is in the top k: the
    figure `tfrec evaluate` reports. List it before the callbacks that read `val_recall`
    (`EarlyStopping`, `ModelCheckpoint`): Keras hands each callback the same epoch logs in turn.

    Under a (multi-worker) mirrored strategy each replica ranks its share of the samples against
    the catalogue's item vectors, computed once per process for all its replicas, and an
    all-reduce sums their hits, so every worker logs the same figure and early stopping stops
    them at the same epoch; under ParameterServerStrategy the chief, which runs the callbacks,
    ranks them all.

    Args:
      user_inputs: {feature: (rows, ...) array} the held-out samples' user tower inputs.
      candidate_inputs: {item feature: (items,) ids}, each id once, as `rank_candidates` takes.
      candidate_ids: (items,) the id of each candidate, to compare the ranking with `truth`.
      truth: (rows,) each sample's item id.
      k: the cut-off (at most the number of candidates).
      excluded: None, or per row the candidate positions left out of its ranking, as
        `rank_candidates` takes them.
    """

    def __init__(self, user_inputs, candidate_inputs, candidate_ids, truth, k, excluded=None):
        super().__init__()
        self.user_inputs, self.candidate_inputs, self.excluded = user_inputs, candidate_inputs, excluded
        self.candidate_ids, self.truth, self.k = np.asarray(candidate_ids), np.asarray(truth), metrics._check_k(k)
        # Checked here, not after the first epoch's training (an empty truth divided by zero there).
        if not len(self.truth):
            raise ValueError("RecallValidation: truth holds no samples to rank")
        for what, values in [(f"user_inputs[{name!r}]", values) for name, values in user_inputs.items()] + \
                [("excluded", excluded)] * (excluded is not None):
            if len(values) != len(self.truth):
                raise ValueError(f"RecallValidation: {what} has {len(values)} rows and truth {len(self.truth)}; "
                                 "give one per held-out sample")
        if self.k > len(self.candidate_ids):
            raise ValueError(f"RecallValidation: k={self.k} is more than the {len(self.candidate_ids)} candidates")

    def on_epoch_end(self, epoch, logs=None):
        items = candidate_vectors(self.model, self.candidate_inputs)  # once per process, for all its replicas
        recall = _summed_over_replicas(self.model.distribute_strategy,
                                       lambda share, shares: self._recall_sum(items, share, shares)) / len(self.truth)
        if logs is not None:
            logs["val_recall"] = recall

    def _recall_sum(self, items, share, shares):
        """The sum of the per-sample recalls of every `shares`-th sample from `share` on."""
        rows = np.arange(share, len(self.truth), shares)
        if not len(rows):
            return 0.0
        excluded = None if self.excluded is None else [self.excluded[row] for row in rows]
        users = tower_outputs(self.model.user_tower, {name: values[rows] for name, values in self.user_inputs.items()})
        ranked = self.candidate_ids[rank_vectors(users, items, self.k, excluded)]
        return metrics.recall_at_k(self.truth[rows], ranked, self.k) * len(rows)


def _summed_over_replicas(strategy, part):
    """The sum of `part(i, n)` over the n replicas of a mirrored or multi-worker mirrored
    `strategy`, replica i computing its share, the same total in every process; else `part(0, 1)`
    (one process, or ParameterServerStrategy, whose chief alone runs the callbacks)."""
    if not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        return part(0, 1)
    shares = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(part(context.replica_id_in_sync_group, context.num_replicas_in_sync), tf.float64))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None))
