import pandas as pd
import pytest

from tfrec.data import build_din_samples


def test_build_din_samples_holds_out_the_last_test_events_per_user():
    log = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [10, 11, 12, 20, 21], "cate_id": [1, 1, 2, 3, 3],
                        "timestamp": [3, 1, 2, 1, 2], "click": [1, 1, 0, 1, 1]})
    train, test = build_din_samples(log, maxlen=5, test_events=2)
    assert test["item_id"].tolist() == [12, 10, 20, 21]
    assert train["item_id"].tolist() == [11]
    assert test["hist_item_id"].tolist() == [[11], [11], [], [20]]
    with pytest.raises(ValueError, match="test_events must be an int >= 1"):
        build_din_samples(log, maxlen=5, test_events=0)
