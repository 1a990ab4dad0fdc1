"""Planted-truth data for long-sequence ranking (SIM, CLSR): where the signal lies in the history.

Each user has a few stable liked categories and a current session category. The far past of the
behaviour history (everything but the last `recent_window` events) reveals the liked categories,
the recent window reveals only the session, and a click depends on the target's category being
liked and / or the session's, through a formula the generator knows. So a model that sees only
the last `recent_window` events (DIN with maxlen 50) cannot know what the user likes, and one that
searches the whole history (SIM) or keeps long- and short-term interests apart (CLSR) can reach
the oracle AUC (`planted.oracle_auc`, the AUC of the true probabilities).
"""
import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import DenseFeat, VarLenDenseFeat, VarLenSparseFeat, history_name

from .planted import (_catalogue, _check_catalogue_sizes, _check_id_type, _format_ids, _id_column, _infer_id_type,
                      _sigmoid)

__all__ = [
    "LONG_HISTORY_SETTINGS",
    "long_history_feature_columns",
    "make_long_history_data",
    "make_long_history_setting",
]

# Id columns with a behaviour sequence (history_name(...) of each: "hist_item_id", "hist_cate_id").
LONG_HISTORY_FEATURES = ["item_id", "cate_id"]
TIME_COLUMN = "timestamp"
_TIME_START = 1_600_000_000  # epoch seconds of the earliest first event
_MEAN_GAP = 3600.0  # mean seconds between two events of a user


def _category_item_sampler(item_cate, popularity):
    """draw(categories, uniforms) -> one item per entry, popularity-weighted within its category.

    The items sorted by category carry keys c + (cumulative popularity share within c), in
    (c, c + 1]; a uniform u picks the first item whose key exceeds c + u.
    """
    order = np.argsort(item_cate, kind="stable")
    cate_sorted = item_cate[order]
    weight = popularity[order]
    num_cats = int(item_cate.max()) + 1
    totals = np.bincount(cate_sorted, weights=weight, minlength=num_cats)
    first = np.searchsorted(cate_sorted, np.arange(num_cats))
    last = np.r_[first[1:], len(order)] - 1
    cumulative = np.cumsum(weight)
    before = (cumulative[first] - weight[first])[cate_sorted]
    keys = cate_sorted + (cumulative - before) / totals[cate_sorted]
    keys[last] = np.arange(num_cats) + 1.0  # exactly c + 1, whatever the rounding

    def draw(categories, uniforms):
        index = np.searchsorted(keys, categories + uniforms, side="right")
        return order[np.minimum(index, last[categories])]

    return draw


def make_long_history_data(
    num_users=2000,
    num_items=1000,
    num_categories=20,
    history_length=2000,
    min_history_length=None,
    recent_window=50,
    targets_per_user=8,
    test_share=0.2,
    liked_categories=2,
    noise_share=0.1,
    session_focus=0.8,
    longterm_weight=3.0,
    shortterm_weight=3.0,
    quality_weight=0.5,
    click_bias=-3.5,
    seed=0,
    id_type="int",
    popularity_exponent=1.0,
):
    """Requests with long behaviour histories and clicks drawn from known probabilities.

    The world: items as in `make_behaviour_log` (a category each, quality q_i ~ N(0, 1), Zipf
    popularity). Each user u has `liked_categories` liked categories L_u (drawn uniformly, stable)
    and a session category s_u (uniform, independent of L_u). Their history has a length drawn
    uniformly in [min_history_length, history_length] (default min: history_length // 2), oldest
    to newest. Its LONG part (all but the last `recent_window` events) draws each event's category
    from L_u (uniformly) with probability 1 - `noise_share`, else uniformly from all categories;
    its RECENT part (the last `recent_window` events) is s_u with probability `session_focus`,
    else uniform. Items are popularity-weighted within their category. The liked categories
    therefore show only beyond the last `recent_window` events: within them a liked category is
    as frequent as any other non-session category. Event times are int64 epoch seconds with
    exponential gaps (mean one hour); the request `timestamp` comes after the last event.

    Each user gets `targets_per_user` impressions at the request time, with the same history: the
    category is drawn from L_u, is s_u, or is uniform (a third each), the item popularity-weighted
    within it, and

        p_click = sigmoid(longterm_weight * [c in L_u] + shortterm_weight * [c == s_u]
                          + quality_weight * q_i + click_bias),   click ~ Bernoulli(p_click).

    A `test_share` fraction of the users (not of the rows) forms the test frame: its users are
    unseen in training. See LONG_HISTORY_SETTINGS for the presets and their measured figures.

    Args:
      num_users, num_items, num_categories: sizes of the world (items >= categories >= 1).
      history_length, min_history_length: the range of the history lengths (1 <= min <= max).
      recent_window: events at the end of each history that follow the session (>= 0).
      targets_per_user: impressions per user (>= 1).
      test_share: share of the users in the test frame, in [0, 1].
      liked_categories: size of L_u, in [1, num_categories].
      noise_share, session_focus: probabilities, see above.
      longterm_weight, shortterm_weight, quality_weight, click_bias: the click model above.
      seed: numpy seed; the same arguments give the same frames.
      id_type: "int" for 1-based int64 ids (0 is padding), "str" for "u17", "i523", "c4".
      popularity_exponent: Zipf exponent of the item popularity.

    Returns:
      (train_df, test_df), rows ordered by user then impression, each with columns user_id,
      item_id, cate_id, timestamp (int64), click (int64), p_click (float64), hist_item_id,
      hist_cate_id, hist_timestamp (a 1-D numpy array per row, oldest to newest: int64 ids, or
      object arrays of str; int64 epoch seconds; the rows of one user share the same arrays, so
      do not modify them in place), seq_length (int64, the true history length), and the truth
      columns liked (bool, c in L_u) and in_session (bool, c == s_u).
    """
    _check_id_type(id_type)
    min_history_length = history_length // 2 if min_history_length is None else min_history_length
    if min(num_users, num_items, num_categories, targets_per_user) < 1:
        raise ValueError("num_users, num_items, num_categories and targets_per_user must be >= 1")
    _check_catalogue_sizes(num_items, num_categories)
    if not 1 <= min_history_length <= history_length:
        raise ValueError(f"need 1 <= min_history_length <= history_length, got {min_history_length} "
                         f"and {history_length}")
    if recent_window < 0:
        raise ValueError(f"recent_window must be >= 0, got {recent_window}")
    if not 1 <= liked_categories <= num_categories:
        raise ValueError(f"liked_categories must lie in [1, num_categories={num_categories}], "
                         f"got {liked_categories}")
    for name, value in (("test_share", test_share), ("noise_share", noise_share),
                        ("session_focus", session_focus)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    rng = np.random.default_rng(seed)
    num_cats = num_categories

    item_cate, item_quality, popularity = _catalogue(rng, num_items, num_cats, popularity_exponent)
    draw_items = _category_item_sampler(item_cate, popularity)
    liked = np.argsort(rng.random((num_users, num_cats)), axis=1)[:, :liked_categories]  # L_u
    session = rng.integers(0, num_cats, num_users)  # s_u

    # Histories of all users, one flat array in (user, time) order.
    lengths = rng.integers(min_history_length, history_length + 1, num_users)
    starts = np.cumsum(lengths) - lengths
    num_events = int(lengths.sum())
    owner = np.repeat(np.arange(num_users), lengths)
    position = np.arange(num_events) - starts[owner]
    recent = position >= (lengths - recent_window)[owner]
    focused = rng.random(num_events) < np.where(recent, session_focus, 1.0 - noise_share)
    interest = np.where(recent, session[owner],
                        liked[owner, rng.integers(0, liked_categories, num_events)])
    event_cate = np.where(focused, interest, rng.integers(0, num_cats, num_events))
    event_item = draw_items(event_cate, rng.random(num_events))
    gaps = rng.exponential(_MEAN_GAP, num_events).astype(np.int64) + 1
    elapsed = np.cumsum(gaps)
    first_time = rng.integers(_TIME_START, _TIME_START + 30 * 86_400, num_users)
    event_time = first_time[owner] + elapsed - (elapsed[starts] - gaps[starts])[owner]
    request_time = event_time[starts + lengths - 1] + rng.exponential(_MEAN_GAP, num_users).astype(np.int64) + 1

    # Targets: a third from the liked categories, a third the session's, a third uniform.
    row_user = np.repeat(np.arange(num_users), targets_per_user)
    num_rows = len(row_user)
    source = rng.integers(0, 3, num_rows)
    cate = np.where(source == 0, liked[row_user, rng.integers(0, liked_categories, num_rows)],
                    np.where(source == 1, session[row_user], rng.integers(0, num_cats, num_rows)))
    item = draw_items(cate, rng.random(num_rows))
    is_liked = (liked[row_user] == cate[:, None]).any(axis=1)
    in_session = cate == session[row_user]
    p_click = _sigmoid(longterm_weight * is_liked + shortterm_weight * in_session
                       + quality_weight * item_quality[item] + click_bias)
    click = (rng.random(num_rows) < p_click).astype(np.int64)
    test_user = np.zeros(num_users, dtype=bool)
    test_user[rng.permutation(num_users)[:int(round(test_share * num_users))]] = True

    def per_user(flat):
        """One array per user (views of `flat`), as an object array indexable by user."""
        cells = np.empty(num_users, dtype=object)
        for user, cell in enumerate(np.split(flat, starts[1:])):
            cells[user] = cell
        return cells

    def ids(values, column, size):
        """0-based indices -> the frame's ids, via a table of the `size` formatted ids."""
        return _format_ids(np.arange(1, size + 1), column, id_type)[values]

    histories = {
        history_name("item_id"): per_user(ids(event_item, "item_id", num_items)),
        history_name("cate_id"): per_user(ids(event_cate, "cate_id", num_cats)),
        history_name(TIME_COLUMN): per_user(event_time.astype(np.int64)),
    }
    frame = pd.DataFrame({
        "user_id": ids(row_user, "user_id", num_users),
        "item_id": ids(item, "item_id", num_items),
        "cate_id": ids(cate, "cate_id", num_cats),
        TIME_COLUMN: request_time[row_user].astype(np.int64),
        "click": click,
        "p_click": p_click,
        **{name: cells[row_user] for name, cells in histories.items()},
        "seq_length": lengths[row_user].astype(np.int64),
        "liked": is_liked,
        "in_session": in_session,
    })
    in_test = test_user[row_user]
    return frame[~in_test].reset_index(drop=True), frame[in_test].reset_index(drop=True)


# Presets of make_long_history_data (see make_long_history_setting for their measured figures).
LONG_HISTORY_SETTINGS = {
    # SIM vs DIN: only the long-term interest moves the click; it shows beyond the last 50 events.
    "longterm": dict(history_length=2000, recent_window=50, longterm_weight=3.0, shortterm_weight=0.0,
                     quality_weight=0.5, click_bias=-2.5),
    # CLSR: the stable interest and the current session each move the click, on short histories.
    "drift": dict(history_length=100, recent_window=10, longterm_weight=3.0, shortterm_weight=3.0,
                  quality_weight=0.5, click_bias=-3.5),
}


def make_long_history_setting(name, **overrides):
    """`make_long_history_data` with preset `name` of LONG_HISTORY_SETTINGS, then `overrides`.

      "longterm" (SIM vs DIN): histories of 1,000-2,000 events, p_click moves with [c in L_u]
          (weight 3) and the quality (0.5) only, bias -2.5. The last 50 events show the session,
          which does not move the click, and nothing of L_u: DIN with maxlen 50 cannot tell what a
          user likes, a model that finds the target's category far back can.
      "drift" (CLSR): histories of 50-100 events whose last 10 follow the session; p_click moves
          separately with [c in L_u] (weight 3) and [c == s_u] (weight 3), quality 0.5, bias -3.5.

    Both: 2,000 users (400 in test), 1,000 items, 20 categories, 2 liked categories, 8 targets
    per user: 12,800 training and 3,200 test rows. Measured on seeds 0, 1, 2 (generation takes
    0.2-0.5 s for "longterm", 0.02 s for "drift"), on the test frame:

                                             "longterm"              "drift"
      click rate                             0.29 0.31 0.28          0.30 0.33 0.31
      oracle AUC (of p_click)                0.832 0.860 0.855       0.808 0.801 0.808
      ceiling from quality + session only    0.676 0.667 0.668       0.679 0.687 0.700
      ceiling from quality + liked only      = oracle                0.715 0.694 0.688

    A ceiling is the AUC of E[p_click | q_i, the named truth flags] (flag shares taken from the
    frame): "quality + session" is all that the last `recent_window` events and the item tell,
    so it bounds a model that sees only them (DIN at maxlen 50 on "longterm"); on "drift" either
    interest alone stays ~0.1 below the oracle, so a model has to use both.

    Keyword `overrides` (seed, id_type, sizes, weights) replace the preset's values.
    """
    if name not in LONG_HISTORY_SETTINGS:
        raise ValueError(f"setting must be one of {sorted(LONG_HISTORY_SETTINGS)}, got {name!r}")
    return make_long_history_data(**{**LONG_HISTORY_SETTINGS[name], **overrides})


def _unique_cells(cells):
    """The distinct array objects of a sequence column (a user's rows share theirs)."""
    return list({id(cell): cell for cell in cells if cell is not None}.values())


def long_history_feature_columns(df, maxlen, embedding_dim=8, with_time=True, id_type=None):
    """Columns for `make_long_history_data` frames, keeping the most recent `maxlen` events.

    Returns [SparseFeat user_id, item_id, cate_id, VarLenSparseFeat hist_item_id, hist_cate_id]
    (sharing the item_id / cate_id tables, length in "seq_length"), and with `with_time`
    DenseFeat("timestamp", dtype="int64") and VarLenDenseFeat("hist_timestamp", maxlen, "int64").

    `df` is a frame or a sequence of frames (e.g. (train_df, test_df)) whose ids the tables must
    cover, targets and histories alike: int ids index the tables directly (vocabulary_size = the
    largest id + 1), so build the columns from every frame a model will see, since the test
    users are not in the training frame. String ids get a vocabulary (unknown ones go to the
    out-of-vocabulary row). `id_type` ("int" / "str") is inferred from user_id when None.
    """
    frames = [df] if isinstance(df, pd.DataFrame) else list(df)
    id_type = _infer_id_type(frames[0]) if id_type is None else id_type
    _check_id_type(id_type)
    values = {"user_id": [frame["user_id"].to_numpy() for frame in frames]}
    for name in LONG_HISTORY_FEATURES:
        values[name] = [frame[name].to_numpy() for frame in frames]
        values[name] += [cell for frame in frames for cell in _unique_cells(frame[history_name(name)])]
    ids = {name: pd.Series(pd.unique(np.concatenate(parts))) for name, parts in values.items()}
    targets = [_id_column(ids, name, embedding_dim, id_type) for name in ["user_id"] + LONG_HISTORY_FEATURES]
    histories = [
        VarLenSparseFeat(_id_column(ids, name, embedding_dim, id_type, history_name(name)), maxlen,
                         length_name="seq_length")
        for name in LONG_HISTORY_FEATURES
    ]
    time = [DenseFeat(TIME_COLUMN, dtype="int64"), VarLenDenseFeat(history_name(TIME_COLUMN), maxlen, dtype="int64")]
    return targets + histories + (time if with_time else [])
