"""DeepCTR's DIN example (examples/run_din.py of 0.9.x) runs after changing only its imports."""
import numpy as np
import pytest

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat, get_feature_names
from tfrec.models import DIN


def get_xy_fd():
    feature_columns = [SparseFeat('user', 3, embedding_dim=10), SparseFeat('gender', 2, embedding_dim=4),
                       SparseFeat('item_id', 3 + 1, embedding_dim=8), SparseFeat('cate_id', 2 + 1, embedding_dim=4),
                       DenseFeat('pay_score', 1)]
    feature_columns += [
        VarLenSparseFeat(SparseFeat('hist_item_id', vocabulary_size=3 + 1, embedding_dim=8, embedding_name='item_id'),
                         maxlen=4, length_name="seq_length"),
        VarLenSparseFeat(SparseFeat('hist_cate_id', 2 + 1, embedding_dim=4, embedding_name='cate_id'), maxlen=4,
                         length_name="seq_length")]
    behavior_feature_list = ["item_id", "cate_id"]
    feature_dict = {'user': np.array([0, 1, 2]), 'gender': np.array([0, 1, 0]), 'item_id': np.array([1, 2, 3]),
                    'cate_id': np.array([1, 2, 2]), 'pay_score': np.array([0.1, 0.2, 0.3]),
                    'hist_item_id': np.array([[1, 2, 3, 0], [3, 2, 1, 0], [1, 2, 0, 0]]),
                    'hist_cate_id': np.array([[1, 2, 2, 0], [2, 2, 1, 0], [1, 2, 0, 0]]),
                    'seq_length': np.array([3, 3, 2])}
    x = {name: feature_dict[name] for name in get_feature_names(feature_columns)}
    y = np.array([1, 0, 1])
    return x, y, feature_columns, behavior_feature_list


def test_deepctr_din_example_runs_unchanged():
    x, y, feature_columns, behavior_feature_list = get_xy_fd()
    model = DIN(feature_columns, behavior_feature_list)
    model.compile('adam', 'binary_crossentropy', metrics=['binary_crossentropy'])
    history = model.fit(x, y, verbose=0, epochs=10, validation_split=0.5)
    assert len(history.history["loss"]) == 10 and np.all(np.isfinite(history.history["val_loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(x, verbose=0).shape == (3, 1)


def test_deepctr_zero_padding_of_a_hashed_string_history_is_padding():
    columns = [SparseFeat("genre", 50, 4, use_hash=True, dtype="string"),
               VarLenSparseFeat(SparseFeat("hist_genre", 50, 4, use_hash=True, dtype="string", embedding_name="genre"),
                                maxlen=4)]
    model = DIN(columns, ["genre"])
    target = np.array(["g1", "g3"], dtype=object)
    padded = {pad: model.predict({"genre": target, "hist_genre": np.array([["g1", "g2", pad, pad], ["g2", pad, pad, pad]],
                                                                          dtype=object)}, verbose=0)
              for pad in ("0", "")}
    np.testing.assert_allclose(padded["0"], padded[""], atol=1e-7)
    # One name given as a string, as DeepCTR users sometimes write it, is that one feature.
    assert DIN(columns, "genre").input_names == model.input_names


def test_argument_mistakes_name_the_argument():
    from tfrec.models import CLSR, SIM, MMOE

    columns = [SparseFeat("user", 5, 4), SparseFeat("item_id", 5, 4),
               VarLenSparseFeat(SparseFeat("hist_item_id", 5, 4, embedding_name="item_id"), maxlen=3)]
    with pytest.raises(ValueError, match=r"CLSR: user_feature \(the user id column\)='user_id': no feature column"):
        CLSR(columns, ["item_id"])
    with pytest.raises(ValueError, match=r"SIM: time_feature \(the request's time\)='ts': no feature column named"):
        SIM(columns, ["item_id"], search_feature="item_id", time_feature="ts")
    with pytest.raises(ValueError, match=r"SIM: time_feature='score' needs the events' times as a VarLenDenseFeat "
                                         r"'hist_score' \(a sequence of numbers\), got no such column"):
        SIM(columns + [DenseFeat("score", 1)], ["item_id"], search_feature="item_id", time_feature="score")
    with pytest.raises(ValueError, match=r"VarLenDenseFeat 'hist_score' \(a sequence of numbers\), got a VarLenSparseFeat"):
        SIM(columns + [DenseFeat("score", 1), VarLenSparseFeat(SparseFeat("hist_score", 5, 4), maxlen=3)], ["item_id"],
            search_feature="item_id", time_feature="score")
    model = MMOE([SparseFeat("user", 5, 4), DenseFeat("vec", 3)], num_experts=2, expert_dnn_hidden_units=(4,),
                 tower_dnn_hidden_units=(4,), task_names=("ctr", "ctcvr"))
    model.compile("adam", "binary_crossentropy")
    with pytest.raises(ValueError, match=r"feature 'vec' needs \(rows, 3\) numbers, got an array of shape \(2,\)"):
        model.predict({"user": np.array([1, 2]), "vec": np.array([0.5, 1.0], dtype="float32")}, verbose=0)
