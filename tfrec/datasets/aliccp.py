"""Ali-CCP (Alibaba Click and Conversion Prediction) -> ESMM samples.

Reads the dataset ESMM was published with (Ma et al., SIGIR 2018;
https://tianchi.aliyun.com/dataset/408, never downloaded here): `sample_skeleton_train.csv` /
`sample_skeleton_test.csv`, one impression per line,

    sample_id,click,buy,md5,feature_num,feature_list

and `common_features_train.csv` / `common_features_test.csv`, the features an impression shares
with others (the user's), one line per md5,

    md5,feature_num,feature_list

where a feature_list joins features with "\\x01" and writes each as "field\\x02id\\x03value".

Labels: click, and conversion (the `buy` column); ESMM trains its CTR head on click and its
CTCVR head on conversion. CTCVR = CTR x CVR needs a conversion to imply a click: impressions
with buy=1 but click=0 are dropped (as the published preprocessing of the dataset drops them)
and counted in the stats.

Features: the documented subset ALI_CCP_FIELDS, the dataset's single-valued fields (user
profile 101-129, item 205 / 206 / 207 / 216, position 301), each a string SparseFeat on the raw
feature id with a vocabulary of the ids seen in the training file at least `min_count` times
(others go to the out-of-vocabulary row); a field missing from a line is "" (padding). The
multi-valued fields (the user's 14-day behaviour 109_14 / 110_14 / 127_14 / 150_14, 210 and the
cross features 508 / 509 / 702 / 853) are left out. The dataset's own split is kept: the
skeleton's train file trains, its test file tests (ESMM's setting).
"""
import os
from array import array
from collections import Counter

import feature_columns  # noqa: F401  (sets Keras 2 before TensorFlow is imported)

import numpy as np
import pandas as pd

from feature_columns import SparseFeat

from ._common import LoadedDataset, bad_line, open_text, reading, require_file, whole_number

__all__ = ["ALI_CCP_FIELDS", "ALI_CCP_TASKS", "read_ali_ccp", "load_ali_ccp"]

URL = "https://tianchi.aliyun.com/dataset/408 (sample_train.tar.gz, sample_test.tar.gz)"
# Field id -> column name: the single-valued fields (Ali-CCP's field descriptions).
ALI_CCP_FIELDS = {
    "101": "user_id",            # user ID
    "121": "user_profile_cate",  # categorical ID of the user profile
    "122": "user_group",         # categorical group ID of the user profile
    "124": "gender",
    "125": "age",
    "126": "consumption_1",      # consumption level type I
    "127": "consumption_2",      # consumption level type II
    "128": "occupation",         # whether the user works
    "129": "geography",
    "205": "item_id",
    "206": "cate_id",            # the item's category
    "207": "shop_id",
    "216": "brand_id",
    "301": "position",           # a categorical expression of the position
}
# ESMM's outputs (task names) -> label columns.
ALI_CCP_TASKS = {"ctr": "click", "ctcvr": "conversion"}
_FILES = {"train": ("sample_skeleton_train.csv", "common_features_train.csv"),
          "test": ("sample_skeleton_test.csv", "common_features_test.csv")}
_SKELETON_LAYOUT = "lines sample_id,click,buy,md5,feature_num,feature_list (click and buy 0 or 1)"


def _parse(feature_list, wanted):
    """{field: the first id of that field} over `wanted` fields of one feature_list."""
    found = {}
    for feature in feature_list.split("\x01"):
        field, _, rest = feature.partition("\x02")
        if field in wanted and field not in found:
            found[field] = rest.partition("\x03")[0]
    return found


class _Codes:
    """The ids of one field as 4-byte codes into a table of the distinct ids (code 0: "", none).

    The training file has ~42 million impressions: a dict of its ids per impression took
    ~1.2 KB each (~50 GB); codes take 4 bytes per impression and field, and each id is held once."""

    def __init__(self):
        self.table = {"": 0}
        self.codes = array("i")

    def code(self, value):
        return self.table.setdefault(value, len(self.table))

    def values(self, codes):
        """The ids of `codes` (a numpy int array), as an object array of shared str."""
        return np.asarray(list(self.table), dtype=object)[codes]


def _read_split(folder, split, fields, max_samples):
    skeleton_path, common_path = (os.path.join(folder, name) for name in _FILES[split])
    require_file(skeleton_path, "Ali-CCP", f"the {split} impressions {_FILES[split][0]}", URL)
    require_file(common_path, "Ali-CCP", f"the {split} common features {_FILES[split][1]}", URL)
    wanted = set(fields)
    ids = {field: _Codes() for field in fields}
    clicks, buys, md5_codes, md5_index = array("b"), array("b"), array("i"), {}
    conversions_without_click = 0
    with reading(skeleton_path, "Ali-CCP", _SKELETON_LAYOUT, URL), open_text(skeleton_path) as lines:
        for number, line in enumerate(lines, start=1):
            if max_samples is not None and len(clicks) >= max_samples:
                break
            parts = line.rstrip("\r\n").split(",", 5)
            if len(parts) != 6:
                if not line.strip():
                    continue
                raise bad_line(number, f"expected 6 fields, got {len(parts)}")
            click, buy = whole_number(parts[1], number, "click"), whole_number(parts[2], number, "buy")
            if click not in (0, 1) or buy not in (0, 1):  # ESMM's labels; int8 codes would overflow on 300
                raise bad_line(number, f"click and buy must be 0 or 1, got {parts[1]!r} and {parts[2]!r}")
            if buy == 1 and click == 0:  # breaks ESMM's CTCVR = CTR x CVR
                conversions_without_click += 1
                continue
            clicks.append(click)
            buys.append(buy)
            md5_codes.append(md5_index.setdefault(parts[3], len(md5_index)))
            found = _parse(parts[5], wanted)
            for field, field_ids in ids.items():
                field_ids.codes.append(field_ids.code(found.get(field, "")))
    # The common features of each md5 the impressions name, for the fields their own lines lack.
    common = {field: np.zeros(len(md5_index), dtype=np.int32) for field in fields}
    matched = np.zeros(len(md5_index), dtype=bool)
    with open_text(common_path) as lines:
        for line in lines:
            md5, _, rest = line.partition(",")
            row = md5_index.get(md5)
            if row is not None:
                matched[row] = True
                found = _parse(rest.rstrip("\r\n").partition(",")[2], wanted)
                for field, value in found.items():
                    common[field][row] = ids[field].code(value)
    md5_codes = np.frombuffer(md5_codes, dtype=np.int32)
    frame = pd.DataFrame(index=pd.RangeIndex(len(clicks)))
    for field, name in fields.items():  # one column at a time: pandas stores each id's text anew
        codes = np.frombuffer(ids[field].codes, dtype=np.int32).copy()
        missing = codes == 0
        codes[missing] = common[field][md5_codes[missing]]
        frame[name] = ids.pop(field).values(codes)
    frame["click"] = np.frombuffer(clicks, dtype=np.int8).astype(np.int64)
    frame["conversion"] = np.frombuffer(buys, dtype=np.int8).astype(np.int64)
    return frame, int((~matched).sum()), conversions_without_click


def read_ali_ccp(path, fields=None, max_samples=None):
    """(train, test) frames of Ali-CCP's raw feature ids: one str column per field, click, conversion.

    Impressions with a conversion but no click are dropped (see the module docstring).

    Args:
      path: the folder holding the four files (unpacked from sample_train.tar.gz / sample_test.tar.gz).
      fields: {field id: column name}, by default ALI_CCP_FIELDS.
      max_samples: stop after this many impressions of each skeleton file (for a quick look;
        the lines of a buy without a click, left out, do not count).
    """
    fields = dict(ALI_CCP_FIELDS if fields is None else fields)
    train = _read_split(path, "train", fields, max_samples)[0]
    test = _read_split(path, "test", fields, max_samples)[0]
    return train, test


def load_ali_ccp(path, fields=None, min_count=1, max_samples=None, embedding_dim=8):
    """ESMM samples from Ali-CCP (see the module docstring).

    Args:
      path: the folder with sample_skeleton_{train,test}.csv and common_features_{train,test}.csv.
      fields: {field id: column name}, by default ALI_CCP_FIELDS.
      min_count: ids seen fewer times in the training file go to the out-of-vocabulary row.
      max_samples: stop after this many impressions of each skeleton file (the lines of a buy
        without a click, left out, do not count).

    Returns:
      LoadedDataset: train / test with one str column per field (the raw feature id, "" when
      missing), click and conversion (int64); feature_columns: a string SparseFeat per field
      (vocabulary from the training file); label_columns ALI_CCP_TASKS ({"ctr": "click",
      "ctcvr": "conversion"}); stats count the impressions read and those dropped for a
      conversion without a click (dropped_conversions_without_click). `ESMM(ds.feature_columns)`, then `df_to_dataset(ds.train,
      ds.feature_columns, label_columns=ds.label_columns)`.

    Raises:
      FileNotFoundError: a file is missing; ValueError: a field with no id seen min_count times
      in training, or a skeleton line out of its layout (another number of fields, a click or
      buy other than 0 or 1): the message names the file and the line.
    """
    fields = dict(ALI_CCP_FIELDS if fields is None else fields)
    train, missing_train, dropped_train = _read_split(path, "train", fields, max_samples)
    test, missing_test, dropped_test = _read_split(path, "test", fields, max_samples)
    columns = []
    for name in fields.values():
        counts = Counter(train[name].tolist())
        counts.pop("", None)
        vocabulary = sorted(value for value, count in counts.items() if count >= min_count)
        if not vocabulary:
            raise ValueError(f"Ali-CCP field '{name}' has no id seen >= {min_count} time(s) in the training file")
        columns.append(SparseFeat(name, embedding_dim=embedding_dim, dtype="string", vocabulary=vocabulary))
    recipe = ("ESMM (Ma et al., SIGIR 2018) on Ali-CCP: the dataset's train / test files, labels click and "
              "conversion (buy), the single-valued sparse fields " + ", ".join(fields) + " as string ids with "
              f"training-file vocabularies (min count {min_count})")
    stats = {"train_samples": len(train), "test_samples": len(test),
             "train_clicks": int(train["click"].sum()), "train_conversions": int(train["conversion"].sum()),
             "unmatched_common_features": missing_train + missing_test,
             "dropped_conversions_without_click": dropped_train + dropped_test}
    return LoadedDataset("ali-ccp/esmm", train, test, columns, dict(ALI_CCP_TASKS), recipe=recipe, stats=stats)
