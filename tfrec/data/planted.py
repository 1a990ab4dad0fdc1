"""Planted-truth synthetic data: every label is drawn from a probability the generator knows.

A benchmark trains on the labels and reports `auc(label, model score)` next to the oracle
`auc(label, true probability)` on the same rows; their ratio (which cannot exceed 1 in
expectation) is tfrec's quality figure. Everything is seeded numpy, so a seed fixes the data.
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat, history_name

from ..metrics import auc

__all__ = [
    "DIN_HISTORY_FEATURES",
    "SPARSE_USER_SETTINGS",
    "din_feature_columns",
    "make_behaviour_log",
    "make_multitask_data",
    "make_sparse_user_log",
    "multitask_feature_columns",
    "oracle_auc",
]

# DIN attends over the histories of these target features ("hist_item_id", "hist_cate_id").
DIN_HISTORY_FEATURES = ["item_id", "cate_id"]

_ID_PREFIX = {"user_id": "u", "item_id": "i", "cate_id": "c"}


def oracle_auc(y_true, p_true):
    """AUC of the true probabilities: the ceiling a model's AUC is compared to (= metrics.auc)."""
    return auc(y_true, p_true)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _check_id_type(id_type):
    if id_type not in ("int", "str"):
        raise ValueError(f"id_type must be 'int' or 'str', got {id_type!r}")


def _format_ids(ids, column, id_type):
    """1-based int ids as int64, or as strings like 'u17' / 'i523' / 'c4'."""
    if id_type == "int":
        return ids.astype(np.int64)
    return np.char.add(_ID_PREFIX[column], ids.astype(str)).astype(object)


def _check_catalogue_sizes(num_items, num_categories):
    """Every category of a world needs an item of its own."""
    if num_items < num_categories:
        raise ValueError(f"num_items ({num_items}) must be >= num_categories ({num_categories})")


def _catalogue(rng, num_items, num_categories, popularity_exponent=1.0):
    """The items of a world: (category, quality q_i ~ N(0, 1), Zipf popularity), one entry per item.

    Every category gets at least one item; the popularity ranks 1..num_items (weight
    rank**-popularity_exponent) are shuffled over the items.
    """
    item_cate = np.concatenate([np.arange(num_categories),
                                rng.integers(0, num_categories, num_items - num_categories)])
    rng.shuffle(item_cate)
    item_quality = rng.normal(0.0, 1.0, num_items)
    popularity = 1.0 / np.arange(1, num_items + 1) ** popularity_exponent
    popularity = popularity[rng.permutation(num_items)]
    return item_cate, item_quality, popularity


def make_behaviour_log(
    num_users=2000,
    num_items=1000,
    num_categories=20,
    events_per_user=30,
    seed=0,
    id_type="int",
    preference_concentration=0.02,
    popularity_exponent=1.0,
    personalised_share=0.7,
    session_drift=0.2,
    recency_decay=0.9,
    longterm_weight=1.0,
    shortterm_weight=1.5,
    quality_weight=0.2,
    click_bias=-3.6,
    conversion_weight=0.5,
    conversion_bias=-2.0,
):
    """An impression log whose click/conversion probabilities are known exactly.

    The world: each item has a category and a quality q_i ~ N(0, 1), and a popularity that
    follows a power law (Zipf, `popularity_exponent`). Each user has long-term category
    preferences theta_u ~ Dirichlet(`preference_concentration`), so most users care about a few
    categories, and a session interest that starts from theta_u and is redrawn from it with
    probability `session_drift` at each event. An impression shows, with probability
    `personalised_share`, a popularity-weighted item of the session category, else a
    popularity-weighted item of the whole catalogue.

    The user answers an impression of item i in category c with

        p_click = sigmoid(longterm_weight * log(1 + C * theta_u[c])
                          + shortterm_weight * s_u(c)
                          + quality_weight * q_i + click_bias)

    where s_u(c) = sum_k w**(k - 1) * [c_k == c] / sum_k w**(k - 1), w = `recency_decay`, over
    the categories c_1, c_2, ... of the user's clicks so far, most recent first: the short-term
    interest, a recency-weighted share of the user's clicks that fell in c (0 before the first
    click). Clicks feed back into s_u, so both terms show in the click history DIN attends
    over. A click converts with

        p_conversion = sigmoid(conversion_weight * log(1 + C * theta_u[c]) + quality_weight * q_i
                               + conversion_bias)

    and conversion is 0 without a click. The defaults give a click rate near 0.38 (0.36 of clicks convert) and an oracle
    AUC near 0.84 on each user's last event. They are chosen so that DIN can learn the signal
    from its inputs: both terms are shares of the click history (which a softmax-normalised
    attention pools naturally, and a sum-pooling one approximates), recency_decay = 0.9 keeps
    s_u close to the unordered share (DIN's attention sees no positions), and concentrated
    preferences let a few clicks reveal theta_u. Measured on the leave-last-out test of the
    default log (seeds 0 and 1), as a ratio to the oracle AUC: tfrec's DIN with DeepCTR's
    defaults, maxlen 50, Adam 1e-3, batch 128 or 256: 0.955-0.968 after 3 epochs; a small DIN
    (DNN 64-32, attention 32-16, att_weight_normalization=True), maxlen 20, Adam 3e-3, batch
    256: 0.965-0.974 after 2 epochs.

    Args:
      num_users, num_items, num_categories: sizes of the world (each >= 1; items >= categories).
      events_per_user: impressions per user, simulated in time order.
      seed: numpy seed; the same arguments give the same log.
      id_type: "int" for 1-based int64 ids (0 is padding), "str" for "u17", "i523", "c4".
      The remaining keyword arguments are the world's knobs described above.

    Returns:
      DataFrame with one row per impression, sorted by (user, timestamp): user_id, item_id,
      cate_id, timestamp (int64 seconds), click, conversion (int64 0/1), p_click and
      p_conversion (float64; p_conversion is P(conversion | click) on every row).
    """
    _check_id_type(id_type)
    if min(num_users, num_items, num_categories, events_per_user) < 1:
        raise ValueError("num_users, num_items, num_categories and events_per_user must be >= 1")
    _check_catalogue_sizes(num_items, num_categories)
    rng = np.random.default_rng(seed)
    num_cats = num_categories

    item_cate, item_quality, popularity = _catalogue(rng, num_items, num_cats, popularity_exponent)
    global_item_cdf = np.cumsum(popularity) / popularity.sum()
    items_by_cate = [np.flatnonzero(item_cate == c) for c in range(num_cats)]
    cate_item_cdfs = [np.cumsum(popularity[items]) / popularity[items].sum() for items in items_by_cate]

    theta = rng.dirichlet(np.full(num_cats, preference_concentration), size=num_users)
    longterm = np.log1p(num_cats * theta)  # (users, categories)
    theta_cdf = np.cumsum(theta, axis=1)

    def draw_categories(users):
        return np.minimum((theta_cdf[users] < rng.random((len(users), 1))).sum(axis=1), num_cats - 1)

    users = np.arange(num_users)
    session_cate = draw_categories(users)
    # s_u(c) = shortterm[u, c] / click_weight[u]: decayed clicks per category over their total.
    shortterm = np.zeros((num_users, num_cats))
    click_weight = np.zeros(num_users)
    # (event, user) tables, filled one event at a time for all users at once.
    items = np.empty((events_per_user, num_users), dtype=np.int64)
    clicks = np.empty((events_per_user, num_users), dtype=np.int64)
    p_clicks = np.empty((events_per_user, num_users))
    p_conversions = np.empty((events_per_user, num_users))
    for t in range(events_per_user):
        drifting = rng.random(num_users) < session_drift
        session_cate[drifting] = draw_categories(users[drifting])

        item = np.searchsorted(global_item_cdf, rng.random(num_users), side="right")
        personalised = rng.random(num_users) < personalised_share
        for c in np.unique(session_cate[personalised]):
            chosen = personalised & (session_cate == c)
            picks = np.searchsorted(cate_item_cdfs[c], rng.random(chosen.sum()), side="right")
            item[chosen] = items_by_cate[c][np.minimum(picks, len(items_by_cate[c]) - 1)]
        item = np.minimum(item, num_items - 1)
        cate = item_cate[item]

        share = shortterm[users, cate] / np.maximum(click_weight, np.finfo(float).tiny)
        p_click = _sigmoid(longterm_weight * longterm[users, cate] + shortterm_weight * share
                           + quality_weight * item_quality[item] + click_bias)
        p_conv = _sigmoid(conversion_weight * longterm[users, cate] + quality_weight * item_quality[item]
                          + conversion_bias)
        click = (rng.random(num_users) < p_click).astype(np.int64)

        clicked = click == 1
        shortterm[clicked] *= recency_decay
        shortterm[users[clicked], cate[clicked]] += 1.0
        click_weight[clicked] = recency_decay * click_weight[clicked] + 1.0
        items[t], clicks[t], p_clicks[t], p_conversions[t] = item, click, p_click, p_conv

    # Rows by user, then time.
    item, click, p_click, p_conv = (table.T.reshape(-1) for table in (items, clicks, p_clicks, p_conversions))
    conversion = click * (rng.random(len(click)) < p_conv).astype(np.int64)
    start = rng.integers(1_600_000_000, 1_600_000_000 + 30 * 86_400, num_users)
    gaps = rng.exponential(600.0, (num_users, events_per_user)).astype(np.int64) + 1
    timestamp = (start[:, None] + np.cumsum(gaps, axis=1)).reshape(-1)

    user_id = np.repeat(users, events_per_user) + 1
    return pd.DataFrame({
        "user_id": _format_ids(user_id, "user_id", id_type),
        "item_id": _format_ids(item + 1, "item_id", id_type),
        "cate_id": _format_ids(item_cate[item] + 1, "cate_id", id_type),
        "timestamp": timestamp.astype(np.int64),
        "click": click,
        "conversion": conversion,
        "p_click": p_click,
        "p_conversion": p_conv,
    })


# Sparse-user presets of make_behaviour_log: a few dozen rows per user, items seen a few dozen
# times on average (a Zipf head and a long tail seen once or twice). See make_sparse_user_log.
SPARSE_USER_SETTINGS = {
    # The sizes (1,500 users x 40 rows, 2,500 items), with diffuse long-term tastes:
    # a user's clicks spread over several categories, so the click history reveals theta_u
    # slowly and the user-id embedding is tempted to fit each user's 35 training labels instead.
    "a": dict(num_users=1500, num_items=2500, events_per_user=40, preference_concentration=0.3),
    # Fewer rows per user (20: 15 training rows after holding out 5), twice the users, the default
    # concentrated tastes: the history is informative, the user id is pure memorisation.
    "b": dict(num_users=3000, num_items=2500, events_per_user=20),
}


def make_sparse_user_log(setting="a", seed=0, id_type="str"):
    """A behaviour log in the sparse-user regime, where DIN's user-id embedding memorises.

    `make_behaviour_log` with one of the presets in `SPARSE_USER_SETTINGS` (labels are drawn
    from the p_click column, so the oracle AUC is defined as for any behaviour log):

      "a": 1,500 users x 40 events, 2,500 items, 20 categories, preference_concentration 0.3
           (diffuse tastes; oracle AUC ~0.78 on the last 5 events of each user).
      "b": 3,000 users x 20 events, 2,500 items, the default concentration 0.02 (oracle ~0.84).

    "a" has 52,500 training rows and "b" 45,000 (5 events per user held out); an item is seen ~24
    times on average, the median item 7 times. What makes DIN memorise is the user id: with tens of rows per user its
    embedding fits the training labels of each user (train AUC above the oracle's, test AUC
    well below), and dropping the user-id column improves test AUC.

    Measured with DIN (DNN 64-32, attention 32-16, embedding 8), build_din_samples(log, maxlen=30,
    test_events=5), Adam 1e-3, batch 256, 3 epochs, df_to_dataset(seed=seed), raw string ids,
    model and data seed 0, 1, 2; test AUC / oracle AUC (as tests/tfrec/test_sparse_regime.py and
    benchmarks/bench_sparse_regime.py train it; commit 34c337a, 2026-11-29):

                                                      setting "a"           setting "b"
      default DIN (mini-batch aware L2 1e-6, LazyAdam)   0.836 0.861 0.836     0.929 0.933 0.946
      old path: full-table L2 1e-6, dense Adam            0.843 0.854 0.847     0.925 0.952 0.941
      default DIN without the user_id column              0.872 0.887 0.921     0.967 0.967 0.960
      mini-batch aware L2 1e-2, LazyAdam                  0.865 0.901 0.923     0.937 0.930   -
      full-table L2 1e-2, dense Adam                      0.892 0.912 0.926     0.936 0.940   -
      mini-batch aware L2 1e-2, Keras' dense Adam         0.899 0.907   -         -     -     -
      train AUC / oracle, default DIN                     1.005 1.020 0.993     1.013 1.002 1.004

    So both presets show the issue's failure (train AUC at the oracle's, test AUC 0.84-0.95 of
    it, and dropping the user id helps by 0.03-0.09 on "a", 0.02-0.04 on "b"). At DIN's default
    strength the two penalties are equally negligible: new minus old lies in -0.019..+0.007, and
    the training shuffle alone moves a run by ~0.03: on seed-0 data with model/shuffle seeds 0-4,
    default DIN 0.829-0.850 on "a" (old path 0.830-0.854) and 0.896-0.949 on "b" (old path
    0.924-0.939). A stronger penalty
    (1e-2) closes part of the gap on "a", and there the full-table path is as good or better than
    the mini-batch aware one; with Keras' dense Adam the mini-batch aware penalty matches it, so
    the difference comes from LazyAdam, not from the penalty. No single L2 strength on all tables
    reaches the no-user-id figure on "b" (1e-1: 0.932 mini-batch aware, 0.919 full-table, seed 0).

    Args:
      setting: "a" or "b" (keys of SPARSE_USER_SETTINGS).
      seed: numpy seed of the world and its draws.
      id_type: "str" (raw string ids, as the issue's runs) or "int".

    Returns:
      The `make_behaviour_log` DataFrame.
    """
    if setting not in SPARSE_USER_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(SPARSE_USER_SETTINGS)}, got {setting!r}")
    return make_behaviour_log(**SPARSE_USER_SETTINGS[setting], seed=seed, id_type=id_type)


def _id_column(log, name, embedding_dim, id_type, feature_name=None):
    """SparseFeat on the table of id column `name`: ints index it directly, strings get a vocabulary."""
    feature_name = feature_name or name
    if id_type == "str":
        vocabulary = sorted(log[name].unique().tolist())
        return SparseFeat(feature_name, embedding_dim=embedding_dim, dtype="string", vocabulary=vocabulary,
                          embedding_name=name)
    return SparseFeat(feature_name, vocabulary_size=int(log[name].max()) + 1, embedding_dim=embedding_dim,
                      dtype="int64", embedding_name=name)


def _infer_id_type(log):
    return "int" if pd.api.types.is_integer_dtype(log["user_id"]) else "str"


def din_feature_columns(log, maxlen=50, embedding_dim=8, id_type=None):
    """DeepCTR-style DIN columns for a `make_behaviour_log` log (or any log with those columns).

    Returns [SparseFeat user_id, item_id, cate_id, VarLenSparseFeat hist_item_id, hist_cate_id]:
    int ids get vocabulary_size = max id + 1 (0 is padding); string ids get `vocabulary` = the
    sorted unique values (lookup in-graph). The histories share their target's table
    (embedding_name "item_id" / "cate_id") and report their length in "seq_length".
    `id_type` ("int" / "str") is inferred from the user_id column when None.
    """
    id_type = _infer_id_type(log) if id_type is None else id_type
    _check_id_type(id_type)
    targets = [_id_column(log, name, embedding_dim, id_type) for name in ["user_id"] + DIN_HISTORY_FEATURES]
    histories = [
        VarLenSparseFeat(_id_column(log, name, embedding_dim, id_type, history_name(name)), maxlen,
                         length_name="seq_length")
        for name in DIN_HISTORY_FEATURES
    ]
    return targets + histories


DEVICES = ("android", "ios", "web")


def make_multitask_data(
    num_samples=50000,
    num_users=1000,
    num_items=500,
    num_categories=20,
    task_relatedness=0.5,
    seed=0,
    num_age_groups=6,
    item_scale=1.0,
    segment_scale=0.4,
    user_scale=0.3,
    click_bias=-1.6,
    conversion_bias=-1.6,
):
    """Impressions with click, conversion and dwell labels drawn from known probabilities.

    Each impression (user, item of category c, device, hour) gets, for task t in {click,
    conversion}, a logit

        z_t = sqrt(r) * s + sqrt(1 - r) * u_t + context_t + bias_t,

    where s and u_t are built alike from independent normal draws: an item bias (std
    `item_scale`) + an (age group x category) affinity (std `segment_scale`) + a user bias (std
    `user_scale`); s is shared by both tasks, u_t belongs to task t; r = `task_relatedness`
    (0: unrelated tasks, 1: the same latent score). context_t adds per-task effects of device,
    hour (an evening peak), price (it lowers conversion more than clicks) and user_activity.
    Most of the signal sits where ~50k rows can teach it (items, age group x category, context);
    the per-user part is small, since each user has only tens of rows. Then

        p_click = sigmoid(z_click),  click ~ Bernoulli(p_click)
        p_conversion_given_click = sigmoid(z_conversion),  conversion = click * Bernoulli(...)
        p_ctcvr = p_click * p_conversion_given_click
        dwell_mean = 30 * exp(0.3 * s + 0.3 * user_activity + 0.3 * item appeal),
        dwell ~ Gamma(shape 2, scale dwell_mean / 2) seconds if click else 0.

    Oracle AUCs: auc(click, p_click) and auc(conversion, p_ctcvr) over all rows (what MMOE /
    ESMM's CTR and CTCVR heads predict), auc(conversion, p_conversion_given_click) over clicked
    rows (CVR). All lie near 0.75-0.85 with the defaults.

    Args:
      num_samples: impressions; users and items are drawn uniformly / by a Zipf-like popularity.
      num_users, num_items, num_categories: sizes (items >= categories >= 1).
      task_relatedness: r in [0, 1], see above.
      seed: numpy seed; the same arguments give the same frame.

    Returns:
      DataFrame: user_id, item_id, cate_id (1-based int64), age_group (int64 from 0, a user
      attribute), device (str), hour (int64 0-23),
      price, user_activity (float32), click, conversion (int64), dwell (float32), p_click,
      p_conversion_given_click, p_ctcvr, dwell_mean (float64).
    """
    if not 0.0 <= task_relatedness <= 1.0:
        raise ValueError(f"task_relatedness must lie in [0, 1], got {task_relatedness!r}")
    if min(num_samples, num_users, num_items, num_categories, num_age_groups) < 1:
        raise ValueError("num_samples, num_users, num_items, num_categories and num_age_groups must be >= 1")
    _check_catalogue_sizes(num_items, num_categories)
    rng = np.random.default_rng(seed)

    item_cate = np.concatenate([np.arange(num_categories), rng.integers(0, num_categories, num_items - num_categories)])
    rng.shuffle(item_cate)
    item_price = np.exp(rng.normal(0.0, 0.5, num_items))
    user_activity = rng.beta(2.0, 2.0, num_users)
    user_age_group = rng.integers(0, num_age_groups, num_users)
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    popularity = popularity[rng.permutation(num_items)]

    user = rng.integers(0, num_users, num_samples)
    item = rng.choice(num_items, num_samples, p=popularity / popularity.sum())
    device = rng.choice(len(DEVICES), num_samples, p=[0.5, 0.35, 0.15])
    hour = rng.choice(24, num_samples, p=_hour_profile())
    price = (item_price[item] * np.exp(rng.normal(0.0, 0.1, num_samples))).astype(np.float32)
    evening = np.cos((hour - 20) / 24.0 * 2 * np.pi)  # 1 at 20:00, -1 at 08:00

    def latent_score():
        """One independent draw of item bias + age group x category affinity + user bias, per row."""
        item_bias = rng.normal(0.0, item_scale, num_items)
        affinity = rng.normal(0.0, segment_scale, (num_age_groups, num_categories))
        user_bias = rng.normal(0.0, user_scale, num_users)
        return item_bias[item] + affinity[user_age_group[user], item_cate[item]] + user_bias[user]

    shared, click_own, conversion_own = latent_score(), latent_score(), latent_score()
    device_effect = {task: rng.normal(0.0, 0.3, len(DEVICES)) for task in ("click", "conversion")}
    item_appeal = rng.normal(0.0, 1.0, num_items)  # drives dwell time only

    relatedness = np.sqrt(task_relatedness)
    specificity = np.sqrt(1.0 - task_relatedness)
    z_click = (relatedness * shared + specificity * click_own + device_effect["click"][device]
               + 0.3 * evening - 0.2 * np.log(price) + 0.5 * (user_activity[user] - 0.5) + click_bias)
    z_conversion = (relatedness * shared + specificity * conversion_own
                    + device_effect["conversion"][device] + 0.1 * evening - 0.8 * np.log(price)
                    + 0.3 * (user_activity[user] - 0.5) + conversion_bias)
    p_click = _sigmoid(z_click)
    p_conversion = _sigmoid(z_conversion)
    click = (rng.random(num_samples) < p_click).astype(np.int64)
    conversion = click * (rng.random(num_samples) < p_conversion).astype(np.int64)
    dwell_mean = 30.0 * np.exp(0.3 * shared + 0.3 * user_activity[user] + 0.3 * item_appeal[item])
    dwell = np.where(click == 1, rng.gamma(2.0, dwell_mean / 2.0), 0.0)

    return pd.DataFrame({
        "user_id": (user + 1).astype(np.int64),
        "item_id": (item + 1).astype(np.int64),
        "cate_id": (item_cate[item] + 1).astype(np.int64),
        "age_group": user_age_group[user].astype(np.int64),
        "device": np.asarray(DEVICES, dtype=object)[device],
        "hour": hour.astype(np.int64),
        "price": price,
        "user_activity": user_activity[user].astype(np.float32),
        "click": click,
        "conversion": conversion,
        "dwell": dwell.astype(np.float32),
        "p_click": p_click,
        "p_conversion_given_click": p_conversion,
        "p_ctcvr": p_click * p_conversion,
        "dwell_mean": dwell_mean,
    })


def _hour_profile():
    """Share of impressions per hour of day: quiet at night, peaks at noon and in the evening."""
    hours = np.arange(24)
    weight = 0.2 + np.exp(-((hours - 12) / 2.5) ** 2) + 1.5 * np.exp(-((hours - 20) / 2.5) ** 2)
    return weight / weight.sum()


def multitask_feature_columns(df, embedding_dim=8):
    """Columns for `make_multitask_data`: ids, age_group, device (string, in-graph vocabulary)
    and hour as SparseFeat; price and user_activity as DenseFeat."""
    int_ids = [SparseFeat(name, vocabulary_size=int(df[name].max()) + 1, embedding_dim=embedding_dim,
                          dtype="int64") for name in ("user_id", "item_id", "cate_id", "age_group")]
    device = SparseFeat("device", embedding_dim=embedding_dim, dtype="string",
                        vocabulary=sorted(df["device"].unique().tolist()))
    hour = SparseFeat("hour", vocabulary_size=24, embedding_dim=embedding_dim, dtype="int64")
    return int_ids + [device, hour, DenseFeat("price"), DenseFeat("user_activity")]
