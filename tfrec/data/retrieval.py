"""Planted-truth data for retrieval (candidate generation): users with several distinct interests.

Each user has a few interests, each a direction in a latent item space near one category's
centre (categories are far-apart clusters of items), with weights. Every event first picks an
interest (the previous event's with probability `stickiness`, else one by weight), then an item
from that interest's distribution over the whole catalogue. So the generator knows p(next item |
user, history) exactly (an HMM over the interests; `true_next_item_probabilities`), and the
oracle's recall@k (rank the catalogue by that probability) is the ceiling a retrieval model's
recall@k is compared to, as `planted.oracle_auc` is for ranking models.

A single user vector has to cover interests that lie in different clusters; an average of them
points between the clusters. `planted_top_k(..., ranking="centroid")` ranks by the true item
space around the weighted mean of the user's interest directions: what "one averaged interest"
retrieves, next to "all interests, no sequence" ("mixture") and the oracle. Samples follow
DeepMatch's data preparation (`gen_data_set` / `gen_data_set_sdm`), one sample per event of a
user after the first, the user's last event in the test frame (leave-last-out).
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from feature_columns import SparseFeat, VarLenSparseFeat, history_name

from ..metrics import recall_at_k, top_k_indices
from .behaviour import check_events
from .columns import integer_ids, table_column
from .planted import _catalogue, _check_catalogue_sizes, _check_id_type, _format_ids, _id_column

__all__ = [
    "PLANTED_RANKINGS",
    "RETRIEVAL_PROFILE_FEATURES",
    "RetrievalData",
    "make_retrieval_data",
    "planted_recalls",
    "planted_top_k",
    "popularity_top_k",
    "retrieval_feature_columns",
    "retrieval_samples",
    "sample_feature_columns",
    "sdm_feature_columns",
    "true_next_item_probabilities",
]

# User profile columns of the log and the samples (int64 codes from 1; 0 is padding).
RETRIEVAL_PROFILE_FEATURES = ["gender", "age"]
# Id columns with behaviour sequences: hist_item_id / hist_cate_id (and short_ / prefer_ for SDM).
_SEQUENCE_FEATURES = ["item_id", "cate_id"]
HIST_LENGTH = "hist_len"
SHORT_PREFIX, PREFER_PREFIX = "short_", "prefer_"
SHORT_LENGTH, PREFER_LENGTH = "short_sess_length", "prefer_sess_length"
# The rankings planted_top_k computes from the generator's truth.
PLANTED_RANKINGS = ("oracle", "mixture", "centroid", "dominant")
_TIME_START = 1_600_000_000  # epoch seconds of the earliest first event
_MEAN_GAP = 3600.0  # mean seconds between two events of a user
_CHUNK_ROWS = 512  # users (or sample rows) per block of dense (rows, interests, items) arrays


@dataclass(frozen=True, eq=False)
class RetrievalData:
    """A `make_retrieval_data` world: the interaction log and the truth behind it.

    log: one row per event, in (user, time) order: user_id, item_id, cate_id, timestamp (int64),
      gender, age (int64 codes from 1), and the truth columns interest (int64, the slot 0..K-1
      of the user's interest that produced the event) and explore (bool, the item was drawn by
      global popularity instead of from the interest).
    users: one row per user: user_id, gender, age, num_interests (int64), interest_cate_ids and
      interest_weights (1-D arrays by slot, weights summing to 1).
    items: the catalogue in index order: item_id, cate_id, popularity (the item's share of
      global popularity, the distribution of exploring events).
    The arrays hold the truth in 0-based indices: item_vectors (items, latent_dim), unit
    vectors; interest_vectors (users, K, latent_dim), unit; interest_weights (users, K), 0 for
    unused slots; interest_log_norm (users, K), log sum_i popularity_i exp(sharpness * x_i.m_uk);
    event_user (events,), the user index of each log row; state_prior (events, K), P(interest of
    the event | the user's earlier events), the HMM's predictive state distribution.
    """

    log: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    id_type: str
    sharpness: float
    stickiness: float
    explore_share: float
    item_vectors: np.ndarray = field(repr=False)
    interest_vectors: np.ndarray = field(repr=False)
    interest_weights: np.ndarray = field(repr=False)
    interest_log_norm: np.ndarray = field(repr=False)
    event_user: np.ndarray = field(repr=False)
    state_prior: np.ndarray = field(repr=False)

    @property
    def num_users(self):
        return len(self.users)

    @property
    def num_items(self):
        return len(self.items)

    @property
    def item_ids(self):
        """The catalogue's item ids in index order (column j of every probability array)."""
        return self.items["item_id"].to_numpy()


def _unit(vectors):
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _interest_logits(truth, users):
    """(len(users), K, items): sharpness * x_i . m_uk + log popularity_i (unnormalised)."""
    sharpness, interest_vectors, item_vectors, log_share = truth
    vectors = interest_vectors[users]
    logits = (vectors.reshape(-1, vectors.shape[-1]) @ item_vectors.T).reshape(*vectors.shape[:2], -1)
    logits *= sharpness
    logits += log_share
    return logits


def _logsumexp(logits, axis=-1):
    top = logits.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(logits - top).sum(axis=axis))


def make_retrieval_data(
    num_users=2000,
    num_items=2000,
    num_categories=50,
    interests_per_user=3,
    events_per_user=50,
    min_events_per_user=None,
    seed=0,
    id_type="int",
    latent_dim=16,
    item_spread=0.5,
    interest_spread=0.5,
    sharpness=12.0,
    interest_concentration=4.0,
    stickiness=0.5,
    explore_share=0.1,
    popularity_exponent=0.5,
    num_age_buckets=7,
    profile_strength=0.5,
):
    """An interaction log whose next-item distribution p(item | user, history) is known exactly.

    The world: items as in `make_behaviour_log` (a category each, Zipf popularity pop_i, shuffled
    over the items). Each category c has a random unit centre C_c in R^latent_dim (two centres
    have cosine ~ +-1/sqrt(latent_dim): most categories lie far apart), and each item a unit
    vector x_i = unit(C_c + item_spread * g_i / sqrt(latent_dim)), g_i ~ N(0, I): a cluster of
    items per category. Each user has a gender, an age bucket (uniform), and
    `interests_per_user` interests (an int, or an inclusive range (low, high) drawn per user) in
    distinct categories, drawn without replacement with logits profile_strength * (gender effect
    + age effect) per category, N(0, 1) each (so the profile tells something about the
    interests); interest k has a direction m_uk = unit(C_c + interest_spread * g /
    sqrt(latent_dim)), a user-specific spot in its category's cluster, and a weight w_uk
    (Dirichlet(interest_concentration), so the interests are of similar size).

    Interest k draws item i with

        p(i | u, k) = pop_i exp(sharpness * x_i . m_uk) / sum_j pop_j exp(sharpness * x_j . m_uk),

    which lies mostly in its category (and favours the items near m_uk there). The events of a
    user: the interest z_1 is drawn by weight; z_t = z_{t-1} with probability
    `stickiness`, else drawn by weight again; the item is drawn from p(. | u, z_t), or with
    probability `explore_share` from the global popularity (the state stays). So, with pi_t =
    P(z_t | items before t) (forward filtering, exact),

        p(next item = i | u, history) = (1 - explore_share) * sum_k pi_t[k] p(i | u, k)
                                        + explore_share * pop_i / sum_j pop_j.

    History lengths are uniform in [min_events_per_user, events_per_user] (default min:
    events_per_user // 2); event times are int64 epoch seconds with exponential gaps (mean one
    hour), strictly increasing per user. The defaults (2,000 users, 2,000 items in 50
    categories, ~40 items each; 25-50 events per user) give ~75,000 events, ~71,000 training
    samples and 2,000 test samples; generation takes ~0.4 s. An interest keeps ~88% of its mass
    in its own category (the rest in nearby categories), and its 10 most likely items hold ~50%.

    Measured on the leave-last-out test of the defaults (`retrieval_samples(data, 50)`, 2,000
    test rows; seeds 0, 1, 2), recall@50 (`planted_recalls`, 1 s):

      oracle (true next-item probabilities)              0.670 0.688 0.710
      mixture (all interests by weight, no sequence)     0.633 0.649 0.640
      centroid (one averaged interest direction)          0.412 0.430 0.423
      dominant (the heaviest interest only)               0.412 0.408 0.408
      popularity (training-target counts)                 0.143 0.143 0.137

    So keeping the interests apart is worth ~0.22 of recall@50 over one averaged direction
    (mixture vs centroid; rescaling the averaged direction does not help: 0.39-0.41 for 0.5x-4x
    the sharpness on seed 0), and the order of events (stickiness) ~0.04-0.07 on top (oracle vs
    mixture). The centroid and dominant rankings are references in the true item space, not
    bounds on a learned single-vector model (whose item embeddings are free to differ).

    Args:
      num_users, num_items, num_categories: sizes of the world (each >= 1; items >= categories).
      interests_per_user: interests per user, an int or an inclusive (low, high) range, within
        [1, num_categories].
      events_per_user, min_events_per_user: the range of a user's number of events (>= 2, since
        a leave-last-out sample needs a history).
      seed: numpy seed; the same arguments give the same data.
      id_type: "int" for 1-based int64 ids (0 is padding), "str" for "u17", "i523", "c4".
      latent_dim: dimension of the latent item space (>= 2).
      item_spread, interest_spread: noise (relative to the category centre) of the item and
        interest directions; larger spreads make the interests finer within their category.
      sharpness: concentration of an interest around its direction (0: popularity only); with
        larger values an interest keeps more of its mass in its own category and near m_uk.
      interest_concentration: Dirichlet parameter of the interest weights.
      stickiness, explore_share: probabilities, see above.
      popularity_exponent: Zipf exponent of the item popularity.
      num_age_buckets, profile_strength: the user profile, see above.

    Returns:
      A `RetrievalData` (its `log` is the interaction log; see `retrieval_samples`).
    """
    _check_id_type(id_type)
    min_events_per_user = max(2, events_per_user // 2) if min_events_per_user is None else min_events_per_user
    if min(num_users, num_items, num_categories, num_age_buckets) < 1:
        raise ValueError("num_users, num_items, num_categories and num_age_buckets must be >= 1")
    _check_catalogue_sizes(num_items, num_categories)
    if not 2 <= min_events_per_user <= events_per_user:
        raise ValueError(f"need 2 <= min_events_per_user <= events_per_user, got {min_events_per_user} and "
                         f"{events_per_user}")
    low, high = ((interests_per_user, interests_per_user) if np.isscalar(interests_per_user)
                 else tuple(interests_per_user))
    if not 1 <= low <= high <= num_categories:
        raise ValueError(f"interests_per_user must lie in [1, num_categories={num_categories}] (an int or a "
                         f"(low, high) range), got {interests_per_user!r}")
    if latent_dim < 2:
        raise ValueError(f"latent_dim must be >= 2, got {latent_dim}")
    for name, value in (("stickiness", stickiness), ("explore_share", explore_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    if interest_concentration <= 0:
        raise ValueError(f"interest_concentration must be > 0, got {interest_concentration!r}")
    rng = np.random.default_rng(seed)
    num_cats, dim = num_categories, latent_dim

    # Items: categories, popularity, and a cluster of unit vectors around each category's centre.
    item_cate, _, popularity = _catalogue(rng, num_items, num_cats, popularity_exponent)
    item_share = popularity / popularity.sum()
    log_share = np.log(item_share)
    centres = _unit(rng.normal(size=(num_cats, dim)))
    item_vectors = _unit(centres[item_cate] + item_spread * rng.normal(size=(num_items, dim)) / np.sqrt(dim))

    # Users: profile, interests in distinct categories (Gumbel top-k of the profile's logits).
    gender = rng.integers(0, 2, num_users)
    age = rng.integers(0, num_age_buckets, num_users)
    cate_logits = profile_strength * (rng.normal(size=(2, num_cats))[gender]
                                      + rng.normal(size=(num_age_buckets, num_cats))[age])
    num_interests = rng.integers(low, high + 1, num_users)
    interest_cate = np.argsort(-(cate_logits + rng.gumbel(size=(num_users, num_cats))), axis=1)[:, :high]
    used = np.arange(high)[None, :] < num_interests[:, None]
    raw_weights = rng.gamma(interest_concentration, 1.0, (num_users, high)) * used
    weights = raw_weights / raw_weights.sum(axis=1, keepdims=True)
    interest_vectors = _unit(centres[interest_cate]
                             + interest_spread * rng.normal(size=(num_users, high, dim)) / np.sqrt(dim))
    truth = (sharpness, interest_vectors, item_vectors, log_share)

    # The interest of every event: a sticky Markov chain, independent of the items drawn.
    lengths = rng.integers(min_events_per_user, events_per_user + 1, num_users)
    steps = int(lengths.max())
    weight_cdf = np.cumsum(weights, axis=1)
    fresh = (weight_cdf[:, None, :] < rng.random((num_users, steps, 1))).sum(axis=2)
    fresh = np.minimum(fresh, num_interests[:, None] - 1)
    stay = rng.random((num_users, steps)) < stickiness
    state = np.empty((num_users, steps), dtype=np.int64)
    state[:, 0] = fresh[:, 0]
    for t in range(1, steps):
        state[:, t] = np.where(stay[:, t], state[:, t - 1], fresh[:, t])
    in_log = np.arange(steps)[None, :] < lengths[:, None]
    event_state = state[in_log]  # flat, (user, time) order
    event_user = np.repeat(np.arange(num_users), lengths)
    starts = np.cumsum(lengths) - lengths
    num_events = len(event_user)

    # Items: exploring events by global popularity, the others from their interest, by inverse
    # CDF over blocks of users: (users, K, items) cumulative shares, row r = (user, slot).
    explore = rng.random(num_events) < explore_share
    uniforms = rng.random(num_events)
    event_item = np.searchsorted(np.cumsum(item_share), uniforms, side="right")
    log_norm = np.empty((num_users, high))
    for first in range(0, num_users, _CHUNK_ROWS):
        users = np.arange(first, min(first + _CHUNK_ROWS, num_users))
        logits = _interest_logits(truth, users)
        log_norm[users] = _logsumexp(logits)
        cdf = np.cumsum(np.exp(logits - log_norm[users][..., None]), axis=2).reshape(-1, num_items)
        keys = np.arange(len(cdf))[:, None] + cdf / cdf[:, -1:]
        keys[:, -1] = np.arange(len(cdf)) + 1.0  # exactly row + 1, whatever the rounding
        events = np.arange(starts[users[0]], starts[users[-1]] + lengths[users[-1]])
        events = events[~explore[events]]
        row = (event_user[events] - first) * high + event_state[events]
        index = np.searchsorted(keys.reshape(-1), row + uniforms[events], side="right")
        event_item[events] = np.minimum(index - row * num_items, num_items - 1)
    event_item = np.minimum(event_item, num_items - 1)

    # Forward filtering: pi_t = P(z_t | items before t), the exact predictive state distribution.
    log_interest = (sharpness * np.einsum("nd,nkd->nk", item_vectors[event_item], interest_vectors[event_user])
                    + log_share[event_item][:, None] - log_norm[event_user])
    emission = np.zeros((num_users, steps, high))
    emission[in_log] = ((1.0 - explore_share) * np.exp(log_interest)
                        + explore_share * item_share[event_item][:, None])
    prior = np.empty((num_users, steps, high))
    belief = weights.copy()
    for t in range(steps):
        prior[:, t] = belief
        posterior = belief * emission[:, t]
        total = posterior.sum(axis=1, keepdims=True)
        posterior = np.where(total > 0, posterior / np.where(total > 0, total, 1.0), belief)
        belief = stickiness * posterior + (1.0 - stickiness) * weights
    state_prior = prior[in_log]

    gaps = rng.exponential(_MEAN_GAP, num_events).astype(np.int64) + 1
    elapsed = np.cumsum(gaps)
    first_time = rng.integers(_TIME_START, _TIME_START + 30 * 86_400, num_users)
    event_time = first_time[event_user] + elapsed - (elapsed[starts] - gaps[starts])[event_user]

    def ids(values, column, size):
        """0-based indices -> the frame's ids, via a table of the `size` formatted ids."""
        return _format_ids(np.arange(1, size + 1), column, id_type)[values]

    log = pd.DataFrame({
        "user_id": ids(event_user, "user_id", num_users),
        "item_id": ids(event_item, "item_id", num_items),
        "cate_id": ids(item_cate[event_item], "cate_id", num_cats),
        "timestamp": event_time.astype(np.int64),
        "gender": (gender[event_user] + 1).astype(np.int64),
        "age": (age[event_user] + 1).astype(np.int64),
        "interest": event_state.astype(np.int64),
        "explore": explore,
    })
    cate_ids = ids(interest_cate, "cate_id", num_cats)
    users_frame = pd.DataFrame({
        "user_id": ids(np.arange(num_users), "user_id", num_users),
        "gender": (gender + 1).astype(np.int64),
        "age": (age + 1).astype(np.int64),
        "num_interests": num_interests.astype(np.int64),
        "interest_cate_ids": _cells([cate_ids[u, :num_interests[u]] for u in range(num_users)]),
        "interest_weights": _cells([weights[u, :num_interests[u]] for u in range(num_users)]),
    })
    items_frame = pd.DataFrame({
        "item_id": ids(np.arange(num_items), "item_id", num_items),
        "cate_id": ids(item_cate, "cate_id", num_cats),
        "popularity": item_share,
    })
    return RetrievalData(log=log, users=users_frame, items=items_frame, id_type=id_type, sharpness=float(sharpness),
                         stickiness=float(stickiness), explore_share=float(explore_share), item_vectors=item_vectors,
                         interest_vectors=interest_vectors, interest_weights=weights, interest_log_norm=log_norm,
                         event_user=event_user, state_prior=state_prior)


def _cells(arrays):
    """An object array holding one array per entry (never broadcast into a 2-D array)."""
    cells = np.empty(len(arrays), dtype=object)
    for index, array in enumerate(arrays):
        cells[index] = array
    return cells


def _slices(values, starts, ends):
    """One view values[s:e] per row, as an object array (a cell of a sequence column)."""
    return _cells([values[s:e] for s, e in zip(starts.tolist(), ends.tolist())])


def _require_columns(frame, columns, what):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"{what} needs column(s) {missing}; the frame has {list(frame.columns)}")


def retrieval_samples(log, seq_maxlen, short_sess_length=None, user_cols=RETRIEVAL_PROFILE_FEATURES,
                      min_history=1, user_col="user_id", item_col="item_id", category_col="cate_id",
                      time_col="timestamp"):
    """An interaction log -> DeepMatch-style retrieval samples with a leave-last-out split.

    Each user's events are sorted by timestamp (ties keep log order). The sample of event t
    (t >= `min_history`, counted from 0) predicts the event's item from what came before: columns
    user_id, the `user_cols` profile features, item_id and cate_id (the target), timestamp, and

      hist_item_id, hist_cate_id: the items / categories of the most recent `seq_maxlen` earlier
        events, oldest to newest (1-D numpy arrays);
      hist_len: their number (int64, at most seq_maxlen).

    With `short_sess_length` (SDM), also the split of DeepMatch's `gen_data_set_sdm`:

      short_item_id, short_cate_id: the last `short_sess_length` earlier events (the short-term
        session), oldest to newest; short_sess_length: their number;
      prefer_item_id, prefer_cate_id: the up to `seq_maxlen` events before those (the long-term
        preference), oldest to newest (empty for short histories); prefer_sess_length.

    DeepMatch's examples store histories newest first and lengths uncapped; these frames follow
    tfrec's convention (oldest to newest, as `df_to_inputs` and `VarLenSparseFeat` expect) with
    lengths equal to the stored cells' lengths. Each user's last event is their test sample, the
    others (from event `min_history` on) train. The cells of one column are views of one array:
    do not modify them in place. DeepMatch trains on these samples with sampled softmax, so
    there are no labels or negatives (every row is a positive).

    Args:
      log: a `RetrievalData` or a DataFrame with user_id, item_id, cate_id, timestamp and
        `user_cols`; no user, item, category or time cell empty, and times as numbers or
        datetimes (text would sort as text).
      seq_maxlen: events kept in hist_* (and prefer_*) per sample (int >= 1).
      short_sess_length: events in short_* (int >= 1), or None for no SDM columns.
      user_cols: user profile columns carried from the log.
      min_history: the fewest earlier events a sample has (int >= 1); users with fewer than
        min_history + 1 events get no samples.
      user_col, item_col, category_col, time_col: the log's names of the four columns above (a
        MovieLens log: item_col="movie_id", category_col="genres"); category_col=None for a log
        without categories. The samples keep these names: hist_movie_id, short_movie_id, ...

    Returns:
      (train_df, test_df), rows in (user, time) order (users in order of first appearance in the
      log), with a fresh RangeIndex.
    """
    if isinstance(log, RetrievalData):
        log = log.log
    for name, value in (("seq_maxlen", seq_maxlen), ("min_history", min_history)) + (
            (("short_sess_length", short_sess_length),) if short_sess_length is not None else ()):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    user_cols = list(user_cols)
    sequences = [item_col] + ([category_col] if category_col is not None else [])
    _require_columns(log, [user_col, *sequences, time_col, *user_cols],
                     "retrieval_samples (user_col, item_col, category_col, time_col and user_cols name them)")
    check_events(log, [user_col, *sequences, time_col], time_col, "retrieval_samples")

    user_codes = pd.factorize(log[user_col])[0]  # users in order of first appearance
    order = np.lexsort((np.arange(len(log)), log[time_col].to_numpy(), user_codes))
    events = log.iloc[order].reset_index(drop=True)
    user_codes = user_codes[order]
    n = len(events)
    new_user = np.r_[True, user_codes[1:] != user_codes[:-1]] if n else np.zeros(0, dtype=bool)
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    last_event = np.r_[user_codes[1:] != user_codes[:-1], True] if n else np.zeros(0, dtype=bool)
    position = np.arange(n) - user_start
    rows = np.flatnonzero(position >= min_history)
    end = rows  # a sample's history is the user's events [start, end) in sorted order
    start = np.maximum(user_start[rows], end - seq_maxlen)

    samples = events.loc[rows, [user_col, *user_cols, *sequences, time_col]].reset_index(drop=True)
    values = {name: events[name].to_numpy() for name in sequences}
    for name in sequences:
        samples[history_name(name)] = _slices(values[name], start, end)
    samples[HIST_LENGTH] = (end - start).astype(np.int64)
    if short_sess_length is not None:
        short_start = np.maximum(user_start[rows], end - short_sess_length)
        prefer_start = np.maximum(user_start[rows], short_start - seq_maxlen)
        for name in sequences:
            samples[SHORT_PREFIX + name] = _slices(values[name], short_start, end)
        for name in sequences:
            samples[PREFER_PREFIX + name] = _slices(values[name], prefer_start, short_start)
        samples[SHORT_LENGTH] = (end - short_start).astype(np.int64)
        samples[PREFER_LENGTH] = (short_start - prefer_start).astype(np.int64)
    in_test = last_event[rows]
    return samples[~in_test].reset_index(drop=True), samples[in_test].reset_index(drop=True)


def _feature_ids(data):
    """The id values every table must cover: all users, the whole catalogue, all categories."""
    if not isinstance(data, RetrievalData):
        raise TypeError(f"expected a RetrievalData from make_retrieval_data, got {type(data).__name__}")
    return {"user_id": data.users["user_id"], "item_id": data.items["item_id"],
            "cate_id": pd.Series(pd.unique(data.items["cate_id"]))}


def _profile_columns(data, embedding_dim):
    return [SparseFeat(name, vocabulary_size=int(data.users[name].max()) + 1, embedding_dim=embedding_dim,
                       dtype="int64") for name in RETRIEVAL_PROFILE_FEATURES]


def retrieval_feature_columns(data, seq_maxlen, embedding_dim=32, profile_embedding_dim=None, with_cate=True):
    """DeepMatch-style (user_feature_columns, item_feature_columns) for YoutubeDNN / MIND samples.

    User side: SparseFeat user_id, gender, age, and VarLenSparseFeat hist_item_id (sharing the
    item side's table: embedding_name "item_id") and, with `with_cate`, hist_cate_id (its own
    table "hist_cate_id": the item side has no category column), both of `seq_maxlen` with
    length "hist_len" and combiner "mean". Item side: [SparseFeat item_id] (DeepMatch's models
    take one item feature). Validate the two lists together (hist_item_id's table belongs to the
    item side). The tables cover the whole catalogue and every user of `data`: int ids get
    vocabulary_size = the largest id + 1 (0 is padding), string ids a vocabulary. Profile
    features get `profile_embedding_dim` (default `embedding_dim`).
    """
    ids = _feature_ids(data)
    profile_dim = embedding_dim if profile_embedding_dim is None else profile_embedding_dim
    user = [_id_column(ids, "user_id", profile_dim, data.id_type)] + _profile_columns(data, profile_dim)
    user.append(VarLenSparseFeat(_id_column(ids, "item_id", embedding_dim, data.id_type, history_name("item_id")),
                                 seq_maxlen, "mean", HIST_LENGTH))
    if with_cate:
        # No other column embeds categories, so the category history owns its table.
        cate = _id_column(ids, "cate_id", embedding_dim, data.id_type, history_name("cate_id"))
        user.append(VarLenSparseFeat(cate._replace(embedding_name=cate.name), seq_maxlen, "mean", HIST_LENGTH))
    return user, [_id_column(ids, "item_id", embedding_dim, data.id_type)]


def sdm_feature_columns(data, short_sess_length, prefer_sess_length, embedding_dim=32, profile_embedding_dim=None):
    """DeepMatch-style (user_feature_columns, item_feature_columns) for SDM samples.

    User side: SparseFeat user_id, gender, age; VarLenSparseFeat short_item_id, prefer_item_id,
    short_cate_id, prefer_cate_id (tables "item_id" / "cate_id"; lengths "short_sess_length" /
    "prefer_sess_length"; maxlen `short_sess_length` / `prefer_sess_length`, which should be the
    `retrieval_samples` arguments short_sess_length and seq_maxlen). Item side: [SparseFeat
    item_id]. Tables as in `retrieval_feature_columns`.
    """
    ids = _feature_ids(data)
    profile_dim = embedding_dim if profile_embedding_dim is None else profile_embedding_dim
    user = [_id_column(ids, "user_id", profile_dim, data.id_type)] + _profile_columns(data, profile_dim)
    for name in _SEQUENCE_FEATURES:
        for prefix, maxlen, length in ((SHORT_PREFIX, short_sess_length, SHORT_LENGTH),
                                       (PREFER_PREFIX, prefer_sess_length, PREFER_LENGTH)):
            user.append(VarLenSparseFeat(_id_column(ids, name, embedding_dim, data.id_type, prefix + name),
                                         maxlen, "mean", length))
    return user, [_id_column(ids, "item_id", embedding_dim, data.id_type)]


def sample_feature_columns(train, seq_maxlen, short_sess_length=None, user_cols=(), embedding_dim=32,
                           profile_embedding_dim=None, min_count=1, user_col="user_id", item_col="item_id",
                           category_col="cate_id"):
    """(user_feature_columns, item_feature_columns) for the training samples of your own log.

    The columns `retrieval_feature_columns` (YoutubeDNN / MIND) or, with `short_sess_length`,
    `sdm_feature_columns` (SDM) give planted data, for frames `retrieval_samples(log, ...)` made
    with the same names and lengths: SparseFeat `user_col` and each of `user_cols`; the
    histories of `item_col` (sharing the item table) and of `category_col` (its own table
    `category_col`) with combiner "mean"; item side [SparseFeat `item_col`]. Every table's
    vocabulary holds the ids of `train` seen at least `min_count` times (targets and histories
    counted together, so items seen only in histories have rows too), most frequent first; an id
    outside it (a new user or item at serving) is looked up as the out-of-vocabulary row. A table
    of ints >= 1 stays int64, any other is a string table (`infer_feature_columns`' rule).
    `user_col=None` leaves the user id out: the user is their profile and history, so a user
    unseen in training is served like any other instead of through one shared row.

    Raises:
      KeyError: `train` lacks a column the names and `short_sess_length` call for.
      ColumnInferenceError: a table with no id seen `min_count` times.
    """
    user_cols = list(user_cols)
    features = [item_col] + ([category_col] if category_col is not None else [])
    if short_sess_length is None:
        sequences = [(history_name(f), f, seq_maxlen, HIST_LENGTH) for f in features]
    else:
        sequences = [(prefix + f, f, maxlen, length) for f in features
                     for prefix, maxlen, length in ((SHORT_PREFIX, short_sess_length, SHORT_LENGTH),
                                                    (PREFER_PREFIX, seq_maxlen, PREFER_LENGTH))]
    _require_columns(train, [c for c in (user_col, *user_cols) if c is not None] + features +
                     [name for name, *_ in sequences],
                     "sample_feature_columns (names as retrieval_samples made them)")
    profile_dim = embedding_dim if profile_embedding_dim is None else profile_embedding_dim

    def table(name, dim):
        cells = [train[name].to_numpy()] + [_flat(train[s]) for s, feature, *_ in sequences if feature == name]
        values = np.concatenate(cells) if all(c.dtype != object for c in cells) else \
            np.concatenate([c.astype(object) for c in cells])
        return table_column(name, values.tolist(), integer_ids(values), dim, min_count)

    user = [table(name, profile_dim) for name in ([user_col] if user_col is not None else []) + user_cols]
    tables = {f: table(f, embedding_dim) for f in features}
    for name, feature, maxlen, length in sequences:
        column = tables[feature]._replace(name=name)
        if feature != item_col and short_sess_length is None:  # the one column of its table: named after it
            column = column._replace(embedding_name=name)
        user.append(VarLenSparseFeat(column, maxlen, "mean", length))
    return user, [tables[item_col]]


def _flat(cells):
    """The items of a sequence column's cells, as one array."""
    arrays = [np.asarray(c) for c in cells]
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)


def _sample_events(data, samples):
    """The log rows (indices into data.log) of sample rows, found by (user_id, timestamp)."""
    if samples is None:
        last = np.r_[data.event_user[1:] != data.event_user[:-1], True]
        return np.flatnonzero(last)
    _require_columns(samples, ["user_id", "timestamp"], "the planted truth of samples")
    index = pd.MultiIndex.from_arrays([data.log["user_id"], data.log["timestamp"]])
    rows = index.get_indexer(pd.MultiIndex.from_arrays([samples["user_id"], samples["timestamp"]]))
    if (rows < 0).any():
        raise ValueError(f"{int((rows < 0).sum())} sample row(s) match no event of the data's log (by user_id "
                         f"and timestamp), e.g. row {int(np.argmax(rows < 0))}")
    return rows


def _scores_in_blocks(data, samples, ranking):
    """Yields (block of sample rows, (rows, items) scores of `ranking`, higher = ranked first)."""
    if ranking not in PLANTED_RANKINGS:
        raise ValueError(f"ranking must be one of {PLANTED_RANKINGS}, got {ranking!r}")
    events = _sample_events(data, samples)
    users = data.event_user[events]
    truth = (data.sharpness, data.interest_vectors, data.item_vectors, np.log(data.items["popularity"].to_numpy()))
    share = data.items["popularity"].to_numpy()
    for first in range(0, len(events), _CHUNK_ROWS):
        block = slice(first, first + _CHUNK_ROWS)
        block_users = users[block]
        if ranking in ("oracle", "mixture"):
            probability = np.exp(_interest_logits(truth, block_users) - data.interest_log_norm[block_users][..., None])
            state = data.state_prior[events[block]] if ranking == "oracle" else data.interest_weights[block_users]
            yield block, ((1.0 - data.explore_share) * np.einsum("nk,nki->ni", state, probability)
                          + data.explore_share * share)
        else:
            weights = data.interest_weights[block_users]
            if ranking == "centroid":
                direction = _unit(np.einsum("nk,nkd->nd", weights, data.interest_vectors[block_users]))
            else:  # dominant
                direction = data.interest_vectors[block_users, np.argmax(weights, axis=1)]
            yield block, data.sharpness * direction @ data.item_vectors.T + truth[3]


def true_next_item_probabilities(data, samples=None):
    """p(item | user, the user's earlier events) for each sample row, over the whole catalogue.

    Args:
      data: the `RetrievalData` the samples come from.
      samples: a frame of `retrieval_samples` (rows are matched to log events by user_id and
        timestamp), or None for each user's last event (the leave-last-out test rows, in user
        order).

    Returns:
      (rows, num_items) float64, each row summing to 1; column j is item `data.item_ids[j]`.
      Dense: at the defaults (2,000 test rows x 2,000 items) 32 MB; use `planted_top_k` for
      rankings of many rows.
    """
    events = _sample_events(data, samples)
    out = np.empty((len(events), data.num_items))
    for block, scores in _scores_in_blocks(data, samples, "oracle"):
        out[block] = scores
    return out


def planted_top_k(data, samples, k, ranking="oracle"):
    """(rows, k) item ids ranked first by a planted-truth ranking, best first (ties: catalogue order).

    Rankings (PLANTED_RANKINGS):
      "oracle": the true next-item probability given the user's earlier events (the ceiling).
      "mixture": the true probability ignoring the order of events, (1 - explore_share) * sum_k
        w_uk p(i | u, k) + explore_share * popularity: every interest, no sequence.
      "centroid": log pop_i + sharpness * x_i . unit(sum_k w_uk m_uk), one interest at the
        weighted mean of the user's interest directions: a single averaged user vector.
      "dominant": log pop_i + sharpness * x_i . m_uk for the heaviest interest only.

    `samples` as in `true_next_item_probabilities`. Computed in blocks of rows, so memory stays
    bounded for any number of rows.
    """
    events = _sample_events(data, samples)
    top = np.empty((len(events), k), dtype=np.int64)
    for block, scores in _scores_in_blocks(data, samples, ranking):
        top[block] = top_k_indices(scores, k)
    return data.item_ids[top]


def popularity_top_k(frame, k, item_col="item_id"):
    """(k,) the ids most frequent in `frame[item_col]`, most frequent first (ties: first seen).

    The popularity baseline of retrieval: rank items by how often they are a training target.
    Compare with `np.broadcast_to(ids, (rows, k))` as the ranked list of every test row.
    """
    counts = frame[item_col].value_counts(sort=False)
    order = np.argsort(-counts.to_numpy(), kind="stable")[:k]
    if len(order) < k:
        raise ValueError(f"popularity_top_k needs at least k={k} distinct items in '{item_col}', got {len(counts)}")
    return counts.index.to_numpy()[order]


def planted_recalls(data, train_df, test_df, k=50):
    """recall@k of the planted-truth rankings and the popularity baseline on `test_df`.

    Returns {"oracle", "mixture", "centroid", "dominant", "popularity": float}: the figures a
    retrieval benchmark prints next to a model's recall@k (see `planted_top_k`; popularity ranks
    by `train_df`'s targets).
    """
    truth = test_df["item_id"].to_numpy()
    recalls = {ranking: recall_at_k(truth, planted_top_k(data, test_df, k, ranking), k)
               for ranking in PLANTED_RANKINGS}
    popular = np.broadcast_to(popularity_top_k(train_df, k), (len(test_df), k))
    recalls["popularity"] = recall_at_k(truth, popular, k)
    return recalls
