import numpy as np
import pandas as pd
import pytest

from tfrec.data import build_din_samples, check_esmm_labels


@pytest.fixture
def log():
    # Rows deliberately out of time order; category = item // 10.
    rows = [
        ("a", 30, 3, 0), ("a", 10, 1, 1), ("a", 20, 2, 1), ("a", 50, 5, 1), ("a", 40, 4, 1),
        ("b", 20, 2, 1), ("b", 60, 1, 0),
    ]
    times = [3, 1, 2, 5, 4, 2, 1]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "cate_id", "click"])
    frame["cate_id"] = frame["item_id"] // 10
    frame["timestamp"] = times
    frame["p_click"] = [0.3, 0.1, 0.2, 0.5, 0.4, 0.6, 0.7]
    frame["conversion"] = [0, 0, 1, 0, 1, 0, 0]
    frame["age"] = [30, 30, 30, 30, 30, 41, 41]
    return frame


def test_every_prefix_predicts_the_next_event(log):
    train, test = build_din_samples(log, maxlen=2, extra_cols=("p_click",))
    assert list(train.columns) == ["user_id", "item_id", "cate_id", "timestamp", "click",
                                   "hist_item_id", "hist_cate_id", "p_click"]
    assert train["user_id"].tolist() == ["a", "a", "a", "a", "b"]
    assert train["item_id"].tolist() == [10, 20, 30, 40, 60]
    assert train["click"].tolist() == [1, 1, 0, 1, 0]
    # Only clicked events enter the history; the most recent maxlen=2 are kept, oldest first.
    assert train["hist_item_id"].tolist() == [[], [10], [10, 20], [10, 20], []]
    assert train["hist_cate_id"].tolist() == [[], [1], [1, 2], [1, 2], []]
    assert train["p_click"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.7]
    # Leave-last-out: each user's last event is the test sample.
    assert test["item_id"].tolist() == [50, 20]
    assert test["hist_item_id"].tolist() == [[20, 40], []]
    assert test["timestamp"].tolist() == [5, 2]


def test_longer_maxlen_keeps_the_whole_clicked_history(log):
    _, test = build_din_samples(log, maxlen=3)
    assert test["hist_item_id"].tolist() == [[10, 20, 40], []]


def test_negatives_follow_their_positive(log):
    train, test = build_din_samples(log, maxlen=2, negatives=2, seed=7, extra_cols=("p_click", "conversion", "age"))
    assert len(train) == 5 + 3 * 2 and len(test) == 2 + 2 * 2
    assert train["click"].tolist() == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert test["click"].tolist() == [1, 0, 0, 1, 0, 0]
    for frame in (train, test):
        positives = frame.index[frame["click"] == 1]
        for row in positives:
            positive = frame.loc[row]
            for negative in (frame.loc[row + 1], frame.loc[row + 2]):
                assert negative["item_id"] != positive["item_id"]
                assert negative["item_id"] in {10, 20, 30, 40, 50, 60}
                assert negative["cate_id"] == negative["item_id"] // 10
                assert negative["hist_item_id"] == positive["hist_item_id"]
                assert (negative["user_id"], negative["timestamp"], negative["age"]) == \
                    (positive["user_id"], positive["timestamp"], positive["age"])
                assert np.isnan(negative["p_click"]) and negative["conversion"] == 0
    # Same seed, same negatives.
    again, _ = build_din_samples(log, maxlen=2, negatives=2, seed=7)
    assert again["item_id"].tolist() == train["item_id"].tolist()


def test_without_category_column(log):
    train, _ = build_din_samples(log, maxlen=2, category_col=None)
    assert "hist_cate_id" not in train.columns and train["hist_item_id"].tolist()[2] == [10, 20]


def test_bad_arguments(log):
    with pytest.raises(KeyError, match=r"\['dwell'\]"):
        build_din_samples(log, maxlen=2, extra_cols=("dwell",))
    with pytest.raises(ValueError, match="maxlen"):
        build_din_samples(log, maxlen=0)
    with pytest.raises(ValueError, match="only 0 and 1"):
        build_din_samples(log.assign(click=2), maxlen=2)
    with pytest.raises(ValueError, match="2 distinct items"):
        build_din_samples(log.assign(item_id=1), maxlen=2, negatives=1)


def test_check_esmm_labels():
    good = pd.DataFrame({"click": [1, 0, 1], "conversion": [1, 0, 0]})
    assert check_esmm_labels(good) is None
    bad = pd.DataFrame({"click": [1, 0, 0, 0], "conversion": [1, 1, 0, 1]}, index=[10, 11, 12, 13])
    with pytest.raises(ValueError, match=r"2 row\(s\) have conversion=1 but click=0.*\[11, 13\]"):
        check_esmm_labels(bad)


def test_a_log_it_would_split_wrongly_is_refused():
    """Times given as text sort as text ("10" before "9"): the held-out event would be the user's
    first and its history their later events; an empty user would pool events of several users.
    Both are refused, as retrieval_samples refuses them."""
    log = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 6, 7], "cate_id": [1, 1, 1],
                        "timestamp": ["9", "10", "11"], "click": [1, 1, 1]})
    with pytest.raises(ValueError, match=r"build_din_samples: column 'timestamp' holds text \('9' in row 0\)"):
        build_din_samples(log, maxlen=5)
    with pytest.raises(ValueError, match="build_din_samples: column 'user_id' has 1 empty cell"):
        build_din_samples(log.assign(timestamp=[9, 10, 11], user_id=[1, None, 1]), maxlen=5)
    train, test = build_din_samples(log.assign(timestamp=pd.to_datetime(["2024-01-09", "2024-01-10", "2024-01-11"])),
                                    maxlen=5)
    assert test["item_id"].tolist() == [7] and list(test["hist_item_id"][0]) == [5, 6]
