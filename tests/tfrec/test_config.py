"""tfrec.config: run configs, column inference from a DataFrame, the multi-task example, SIM and CLSR from a config."""
import contextlib
import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_columns import DenseFeat, SparseFeat, VarLenSparseFeat
from tfrec import config as run
from tfrec.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def frame():
    return pd.DataFrame({
        "user_id": [1, 2, 3, 1, 2, 3, 1, 9],                   # ints >= 1: stay int64
        "item_id": ["a", "b", "a", "c", "a", "b", "a", "z"],  # "c" and "z" are seen once
        "hist_item_id": [[], ["a"], ["a", "b"], ["b"], ["a", "c"], [], ["b", "a", "b"], ["a"]],
        "price": [0.5, 1.0, 1.5, 2.0, 0.5, 1.0, 1.5, 2.0],
        "row_id": list(range(8)),
        "click": [1, 0, 1, 0, 1, 0, 1, 0],
    })


def write_csv_frame(path):
    """`frame()` as a CSV file, its histories as "|"-joined cells."""
    df = frame()
    df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]]).to_csv(path, index=False)


def test_infer_builds_vocabularies_with_a_minimum_count_and_shares_history_tables(tmp_path):
    path = write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                           "columns: {min_count: 2, embedding_dim: 4, exclude: [row_id]}\n")
    columns = {c.name: c for c in run.infer_columns(frame(), load_config(str(path)))}
    assert set(columns) == {"user_id", "item_id", "hist_item_id", "price"}
    item, history = columns["item_id"], columns["hist_item_id"]
    # Counted over the item column and its history together; "c" (2) kept, "z" (1) -> OOV row.
    assert item.dtype == "string" and item.vocabulary == ("a", "b", "c") and item.vocabulary_size == 5
    assert isinstance(history, VarLenSparseFeat) and history.embedding_name == "item_id" and history.maxlen == 3
    assert history.table_spec() == item.table_spec()
    assert columns["user_id"].dtype == "int64" and columns["user_id"].vocabulary == (1, 2, 3)
    assert isinstance(columns["price"], DenseFeat)


def test_columns_survive_json(tmp_path):
    path = write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ncolumns: {exclude: [row_id]}\n")
    columns = run.infer_columns(frame(), load_config(str(path)))
    assert run.columns_from_json(json.loads(json.dumps(run.columns_to_json(columns)))) == columns


def test_parquet_list_cells_are_sequences_and_csv_cells_are_split(tmp_path):
    df = frame()
    df.to_parquet(tmp_path / "part-0.parquet")
    write_csv_frame(tmp_path / "d.csv")
    from_parquet = run.read_data([str(tmp_path / "part-*.parquet")])
    from_csv = run.read_data([str(tmp_path / "d.csv")], sequences=["hist_item_id"])
    assert [list(c) for c in from_parquet["hist_item_id"]] == from_csv["hist_item_id"].tolist() == \
        df["hist_item_id"].tolist()
    path = write(tmp_path, "data: {train: part-*.parquet}\nlabels: click\nmodel: {name: DIN}\n"
                           "columns: {exclude: [row_id]}\n")
    names = {c.name: type(c) for c in run.infer_columns(from_parquet, load_config(str(path)))}
    assert names["hist_item_id"] is VarLenSparseFeat  # found without being listed



def test_a_parquet_files_named_index_is_read_as_its_columns(tmp_path):
    """`df.set_index("item_id").to_parquet(...)`: pandas gave item_id back as the index, so it was
    no column, in the whole read and in the chunks; an unnamed index (row labels) stays out."""
    df = frame()
    df.set_index(["user_id", "item_id"]).to_parquet(tmp_path / "named.parquet")
    df.iloc[::2].to_parquet(tmp_path / "labels.parquet")  # row labels 0, 2, 4...: a pandas index of no name
    whole = run.read_data([str(tmp_path / "named.parquet")])
    [chunk] = run.read_data_chunks([str(tmp_path / "named.parquet")])
    for read in (whole, chunk):
        assert sorted(read.columns) == sorted(df.columns)
        assert read["item_id"].tolist() == df["item_id"].tolist() and read.index.tolist() == list(range(len(df)))
    assert sorted(run.read_data([str(tmp_path / "labels.parquet")]).columns) == sorted(df.columns)


def test_an_integer_tables_csv_history_reads_as_numbers_for_a_model_with_int64_columns(tmp_path):
    """Parquet lists of int ids give the item column and its history one int64 table; a CSV of
    the same rows, scored by that model, reads "1|2" as the numbers 1, 2 and its item column as
    ints, and an item that is no number is named. Inferred from the CSV itself, the table is
    int64 too, unless an id is written with a leading zero."""
    from tfrec.data import df_to_inputs

    df = pd.DataFrame({"item_id": [1, 2, 3, 1], "hist_item_id": [[], [1], [1, 2], [3]], "click": [1, 0, 1, 0]})
    df.to_parquet(tmp_path / "d.parquet")
    config = load_config(str(write(tmp_path, "data: {train: d.parquet}\nlabels: click\nmodel: {name: DIN}\n")))
    columns = run.infer_columns(run.read_data([str(tmp_path / "d.parquet")]), config)
    assert [(c.name, c.dtype) for c in columns] == [("item_id", "int64"), ("hist_item_id", "int64")]
    rows = df.assign(hist_item_id=["|".join(map(str, cell)) for cell in df["hist_item_id"]])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    [chunk] = run.data_chunks(config, columns, [str(tmp_path / "rows.csv")], "data.test")
    inputs = df_to_inputs(chunk, columns)
    assert inputs["item_id"].tolist() == [1, 2, 3, 1]
    assert inputs["hist_item_id"].tolist() == [[0, 0], [1, 0], [1, 2], [3, 0]]
    rows.assign(hist_item_id=["", "1", "1|i2", "3"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match=r"'hist_item_id' is a sequence of numbers .*, but holds 'i2'"):
        next(run.data_chunks(config, columns, [str(tmp_path / "bad.csv")], "data.test"))
    # Columns inferred from that CSV: whole numbers written plainly (0 in a history is padding)
    # make the same int64 table, in the training and the test files; one id written "01", or one
    # beyond int64, keeps the table text ("01" stays "01").
    rows.assign(hist_item_id=["0|0", "1|0", "1|2", "3|0"]).to_csv(tmp_path / "padded.csv", index=False)
    rows.assign(item_id=["18446744073709551615", "2", "3", "1"]).to_csv(tmp_path / "huge.csv", index=False)
    for train, dtype in (("rows.csv", "int64"), ("padded.csv", "int64"), ("zero.csv", "string"),
                         ("huge.csv", "string")):
        if train == "zero.csv":
            rows.assign(item_id=["01", "2", "3", "1"]).to_csv(tmp_path / train, index=False)
        csv = load_config(str(write(tmp_path, f"data: {{train: {train}, test: rows.csv}}\nlabels: click\n"
                                              "model: {name: DIN}\ncolumns: {sequences: {hist_item_id: {}}}\n")))
        train_df, test_df = run.load_frames(csv)
        assert [(c.name, c.dtype) for c in run.infer_columns(train_df, csv)] == [("item_id", dtype), ("hist_item_id", dtype)]
        if dtype == "int64":
            assert [cell.tolist() for cell in test_df["hist_item_id"]] == df["hist_item_id"].tolist()


def test_uint64_ids_beyond_int64_make_a_text_table_and_reach_the_model_exactly(tmp_path):
    """Parquet uint64 ids (hashed ids often are) fit an int64 table while below 2^63; one id from
    2^63 on, in the item column or in its history, makes the table text, and every id reaches the
    model as its exact digits (they wrapped to negative int64s before, all unknown to the table)."""
    from tfrec.data import df_to_inputs

    big = 2 ** 64 - 1
    for item_id, history, dtype in (([5, 2, 3], [[], [5], [5, 2]], "int64"),
                                    ([big, 2, 3], [[], [big], [big, 2]], "string"),
                                    ([5, 2, 3], [[], [big], [5, big]], "string")):
        df = pd.DataFrame({"item_id": np.array(item_id, np.uint64), "click": [1, 0, 1],
                           "hist_item_id": [np.array(cell, np.uint64) for cell in history]})
        df.to_parquet(tmp_path / "d.parquet")
        config = load_config(str(write(tmp_path, "data: {train: d.parquet}\nlabels: click\nmodel: {name: DIN}\n")))
        columns = run.infer_columns(run.read_data([str(tmp_path / "d.parquet")]), config)
        assert [(c.name, c.dtype) for c in columns] == [("item_id", dtype), ("hist_item_id", dtype)]
        inputs = df_to_inputs(pd.read_parquet(tmp_path / "d.parquet"), columns)
        as_text = (lambda v: v) if dtype == "int64" else str
        assert inputs["item_id"].tolist() == [as_text(v) for v in item_id]
        padding = 0 if dtype == "int64" else ""
        assert inputs["hist_item_id"].tolist() == [[as_text(v) for v in cell] + [padding] * (2 - len(cell))
                                                   for cell in history]


@pytest.mark.parametrize("text, message", [
    ("labels: click\nmodel: {name: DIN}\n", "data: is required"),
    ("data: {train: d.csv}\nmodel: {name: DIN}\n", "labels: is required"),
    ("data: {train: d.csv}\nlabels: click\n", "model: is required"),
    ("data: {train: d.csv, tset: e.csv}\nlabels: click\nmodel: {name: DIN}\n", "data.tset: unknown key in 'data'"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {epochs: two}\n",
     "train.epochs: must be an integer >= 1, got 'two'"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nsplit: {test_fraction: 1.5}\n",
     r"split.test_fraction: must be a number in \(0.0, 1.0\)"),
    ("data: {train: d.csv}\nlabels: [click, buy]\nmodel: {name: DIN}\n", "DIN has one output"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: MMOE}\n", "MMOE is multi-task"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN, args: [1]}\n", "model.args: must be a mapping"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ncolumns: [{name: x, type: cat}]\n",
     "columns\\[0\\].type: must be one of sparse, sequence, dense, dense_sequence, got 'cat' \\(column 'x'\\)"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ncolumns: {sequences: {h: {maxlen: 0}}}\n",
     "columns.sequences.h.maxlen: must be an integer >= 1"),
    ("- a list\n", "a run config is a mapping"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {kind: horovod}\n",
     "strategy.kind: must be one of default, mirrored, multi_worker, parameter_server, got 'horovod'"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {save_freq: 0}\n",
     "strategy.save_freq: must be an integer >= 1"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {kind: multi_worker, tf_config: tf.json}\n",
     "strategy.tf_config: no file .*tf.json: give a TF_CONFIG JSON file"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
     "strategy: {kind: multi_worker, tf_config: {cluster: {worker: [w]}}}\n",
     "strategy.tf_config: cluster job 'worker': 'w' is not host:port"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nexport: {index: {min_candidates: 1}}\n",
     "export.index: takes a retrieval model's index options as a mapping, .* for DIN, a ranking model"),
    ("data: {train: d.csv}\nmodel: {name: MIND}\nretrieval: {user: user_id, item: item_id, time: ts}\n"
     "export: {index: {k: 20}}\n", "export.index.k: is not an index option: set retrieval.k \\(or --k\\)"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {kind: multi_worker, join_timeout: 0}\n",
     "strategy.join_timeout: must be a number in \\(0, inf\\), got 0"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {tf_config: {cluster: {worker: [a:1]}}}\n",
     "strategy.tf_config: is for a cluster \\(kind multi_worker or parameter_server\\), but strategy.kind is not "
     "set, which trains in this one process"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {kind: mirrored, join_timeout: 60}\n",
     "strategy.join_timeout: is for a cluster .*, but strategy.kind is mirrored, which trains in this one process"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {kind: multi_worker, min_shard_bytes: 9}\n",
     "strategy.min_shard_bytes: splits tables across parameter servers \\(kind parameter_server\\), but "
     "strategy.kind is multi_worker"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nstrategy: {kind: mirrored, save_freq: 50}\n",
     "strategy.save_freq: is how often to back up to strategy.checkpoint_dir, which is not set"),
    ("data: {train: d.csv, sequence_separator: ''}\nlabels: click\nmodel: {name: DIN}\n",
     "data.sequence_separator: must be the text between a CSV sequence's items, such as '\\|', got ''"),
    ("data: {train: d.csv, sequence_separator: 0}\nlabels: click\nmodel: {name: DIN}\n",
     "data.sequence_separator: must be the text between a CSV sequence's items, such as '\\|', got 0"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {lazy_adam: 0}\n",
     "train.lazy_adam: must be true or false, got 0"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {validation: 0.1}\n",
     "train.validation: must be a mapping such as {fraction: 0.1, patience: 2}, got 0.1"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {validation: {fraction: 1}}\n",
     "train.validation.fraction: must be a number in \\(0.0, 1.0\\), got 1"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {validation: {patience: 0}}\n",
     "train.validation.patience: must be an integer >= 1, got 0"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {validation: {metric: auc}}\n",
     "train.validation.metric: unknown key in 'train.validation'; known keys: fraction, monitor, patience$"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {validation: {fraction:0.1}}\n",
     "train.validation.fraction:0.1: unknown key .* \\(YAML needs a space after the colon: {fraction: 0.1}\\)"),
    ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ntrain: {validation: {monitor: val_ndcg}}\n",
     "train.validation.monitor: 'val_ndcg' is not a figure of DIN's validation; it logs loss, auc, logloss"),
    ("data: {train: d.csv}\nlabels: {ctr: click, ctcvr: buy}\nmodel: {name: ESMM}\ntrain: {validation: {monitor: auc}}\n",
     "'auc' is not a figure of ESMM's validation; it logs loss, ctr_auc, ctr_loss, ctcvr_auc, ctcvr_loss"),
    ("data: {train: d.csv}\nmodel: {name: MIND}\nretrieval: {user: user_id, item: item_id, time: ts}\n"
     "train: {validation: {monitor: ndcg}}\n", "'ndcg' is not a figure of MIND's validation; it logs loss, recall$"),
])
def test_config_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(str(write(tmp_path, text)))


def test_data_mistakes_name_the_key(tmp_path):
    frame().to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: clicked\nmodel: {name: DIN}\n")))
    with pytest.raises(ConfigError, match="labels: 'clicked' is not a column of the data"):
        run.load_frames(config)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {min_count: 100}\n")))
    with pytest.raises(ConfigError, match="columns.min_count: no value of column"):
        run.infer_columns(run.load_frames(config)[0], config)


def test_a_malformed_line_names_its_file_and_chunks_number_rows_on_across_files(tmp_path):
    (tmp_path / "bad.csv").write_text("user_id,click\nu1,0\nu2,1,7\n")
    with pytest.raises(ConfigError, match=r"bad.csv: Error tokenizing data. C error: Expected 2 fields in line 3, "
                                          r"saw 3") as raised:  # pandas' message named no file
        run.read_data([str(tmp_path / "bad.csv")])
    assert "malformed line" in raised.value.hint
    frame().to_csv(tmp_path / "a.csv", index=False)
    frame().to_parquet(tmp_path / "b.parquet")
    files = [str(tmp_path / "a.csv"), str(tmp_path / "b.parquet")]
    chunks = list(run.read_data_chunks(files, sequences=["hist_item_id"], chunk_rows=3))
    whole = run.read_data(files, sequences=["hist_item_id"])
    assert [len(c) for c in chunks] == [3, 3, 2, 3, 3, 2] and sum(map(len, chunks)) == len(whole) == 16
    assert [c.index[0] for c in chunks] == [0, 3, 6, 8, 11, 14]  # rows numbered as read_data numbers them
    pd.testing.assert_frame_equal(pd.concat(chunks), whole)


def test_bad_lines_skip_leaves_malformed_lines_out_and_says_which(tmp_path, capsys):
    """A nightly job's file with a few cut or merged lines: one stops the whole job (naming the file
    and line), unless data.bad_lines: skip, which leaves them out and prints how many and which."""
    write_csv_frame(tmp_path / "d.csv")
    text = (tmp_path / "d.csv").read_text().splitlines()
    text.insert(3, text[3] + ",extra")  # the 3rd data row, written twice, once with an extra cell
    (tmp_path / "d.csv").write_text("\n".join(text) + "\n")
    strict = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n")))
    with pytest.raises(ConfigError, match=r"d.csv: Error tokenizing data. C error: Expected 6 fields in line 4, "
                                          r"saw 7") as raised:
        run.load_frames(strict)
    assert "data.bad_lines: skip" in raised.value.hint
    config = load_config(str(write(tmp_path, "data: {train: d.csv, bad_lines: skip}\nlabels: click\n"
                                             "model: {name: DIN}\n")))
    capsys.readouterr()
    train_df, test_df = run.load_frames(config)
    assert len(train_df) + len(test_df) == 8 and sorted(train_df["row_id"].tolist() + test_df["row_id"].tolist()) == \
        list(range(8))
    record = config.output_file(run.SKIPPED_LINES_FILE)
    assert "d.csv: left out 1 malformed line(s) (data.bad_lines: skip): Skipping line 4: expected 6 fields, saw 7; " \
           f"all of them, with their text, in {record}" in capsys.readouterr().out
    kept = pd.read_csv(record, dtype=str, keep_default_na=False)
    assert kept.to_dict("records") == [{"file": str(tmp_path / "d.csv"), "line": "4", "text": text[3]}]
    # Read a chunk at a time (evaluate, predict), lines further down are numbered as in the file,
    # and the record keeps the lines of every file and read.
    text[9:9] = [text[8] + ",x", "junk,,,,,,"]
    (tmp_path / "e.csv").write_text("\n".join(text) + "\n")
    chunks = list(run.read_data_chunks([str(tmp_path / "e.csv")], chunk_rows=3, bad_lines="skip", skipped_to=record))
    assert sum(map(len, chunks)) == 8
    kept = pd.read_csv(record, dtype=str, keep_default_na=False)
    assert kept.to_dict("records") == [{"file": str(tmp_path / "d.csv"), "line": "4", "text": text[3]}] + [
        {"file": str(tmp_path / "e.csv"), "line": str(number), "text": text[number - 1]} for number in (4, 10, 11)]
    with pytest.raises(ConfigError, match="data.bad_lines: must be one of error, skip, got 'ignore'"):
        load_config(str(write(tmp_path, "data: {train: d.csv, bad_lines: ignore}\nlabels: click\n"
                                        "model: {name: DIN}\n")))


def test_a_line_with_fewer_cells_than_the_header_has_empty_cells_and_ids_stay_in_their_rows(tmp_path):
    """pandas reads a line without its last cells (an empty trailing field left out) with those
    cells empty; the leading-zero pass over the integer columns refused it (pyarrow's "Expected 3
    columns, got 2", no file named), and with bad_lines: skip left it out, so every later id moved
    up a row and the last one was empty."""
    (tmp_path / "short.csv").write_text("user_id,item_id,note\n5,a,x\n7,b\n12,c,y\n")
    read = run.read_data([str(tmp_path / "short.csv")])
    assert read["user_id"].tolist() == [5, 7, 12] and read["note"].tolist()[::2] == ["x", "y"]
    assert read["note"].isna().tolist() == [False, True, False]
    (tmp_path / "zeros.csv").write_text("user_id,item_id,note\n5,a,x\n7,b\n8,q,r,extra\n012,c,y\n")
    read = run.read_data([str(tmp_path / "zeros.csv")], bad_lines="skip")
    assert read["user_id"].tolist() == ["5", "7", "012"] and read["item_id"].tolist() == ["a", "b", "c"]


def test_an_empty_file_is_named(tmp_path):
    """A file of no bytes (an export that wrote nothing) failed with pandas' "No columns to parse
    from file", which names no file among those of a glob."""
    (tmp_path / "empty.csv").write_text("")
    for read in (lambda: run.read_data([str(tmp_path / "empty.csv")]),
                 lambda: list(run.read_data_chunks([str(tmp_path / "empty.csv")]))):
        with pytest.raises(ConfigError, match=r"empty.csv: the file is empty, without even a header line"):
            read()
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty.parquet: cannot be read as Parquet: Parquet file size is 0 bytes"):
        list(run.read_data_chunks([str(tmp_path / "empty.parquet")]))  # evaluate's and predict's read


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    """pandas reads a second 'click' as 'click.1', which inference made a feature: the label, leaked."""
    (tmp_path / "d.csv").write_text("user_id,click,item_id,click\nu1,1,a,1\nu2,0,b,0\n")
    for read in (lambda: run.read_data([str(tmp_path / "d.csv")]),
                 lambda: list(run.read_data_chunks([str(tmp_path / "d.csv")]))):
        with pytest.raises(ConfigError, match=r"d.csv: the header names \['click'\] more than once"):
            read()


def test_spaces_after_the_separator_are_no_part_of_a_cell_in_every_read(tmp_path):
    """"user_id, item_id" / "u1, i5" was read with a column " item_id" and an item " i5", another
    than the "i5" of a line without the space; the leading-zero pass (pyarrow's read, which keeps
    the spaces) refused a header with a space, and must keep "02134" whether quoted or not."""
    (tmp_path / "d.csv").write_text('user_id, item_id, zip, click\nu1, i5, 02134, 1\nu2, "i6", "00123", 0\n'
                                    "u3,i5,7,1\n")
    expected = {"user_id": ["u1", "u2", "u3"], "item_id": ["i5", "i6", "i5"], "zip": ["02134", "00123", "7"],
                "click": [1, 0, 1]}
    assert run.read_data([str(tmp_path / "d.csv")]).to_dict("list") == expected
    chunks = run.read_data_chunks([str(tmp_path / "d.csv")], text_columns=["zip"], chunk_rows=2)  # evaluate, predict
    assert pd.concat(chunks).to_dict("list") == expected


def test_spaces_before_the_separator_are_no_part_of_a_cell_either(tmp_path):
    """"u1 ,i5" kept the trailing space: "u1 " and "u1" were two users (and "user_id " a column
    other than user_id), while leading spaces were already dropped."""
    (tmp_path / "d.csv").write_text("user_id ,item_id,zip,click\nu1 ,i5  ,02134 ,1\nu1,i5,007,0\n")
    expected = {"user_id": ["u1", "u1"], "item_id": ["i5", "i5"], "zip": ["02134", "007"], "click": [1, 0]}
    assert run.read_data([str(tmp_path / "d.csv")]).to_dict("list") == expected
    assert run.read_data([str(tmp_path / "d.csv")], text_columns=["user_id"]).to_dict("list") == expected
    chunks = run.read_data_chunks([str(tmp_path / "d.csv")], text_columns=["user_id"], chunk_rows=1)
    assert pd.concat(chunks).to_dict("list") == expected


def test_a_header_with_an_unnamed_column_is_refused(tmp_path):
    """pandas' to_csv writes its index as a first column with an empty name, which pandas reads as
    "Unnamed: 0": columns: infer made the row number a feature, without a word."""
    pd.DataFrame({"user_id": ["u1", "u2"], "click": [1, 0]}).to_csv(tmp_path / "d.csv")
    for read in (lambda: run.read_data([str(tmp_path / "d.csv")]),
                 lambda: list(run.read_data_chunks([str(tmp_path / "d.csv")]))):
        with pytest.raises(ConfigError, match=r"d.csv: column 1 of the header \(counted from 1\) has no name") as error:
            read()
        assert "index=False" in error.value.hint
    (tmp_path / "e.csv").write_text("user_id, ,click\nu1,5,1\n")  # a name of spaces alone is none either
    with pytest.raises(ConfigError, match=r"e.csv: column 2 of the header"):
        run.read_data([str(tmp_path / "e.csv")])


def test_a_separator_ending_every_line_is_no_column_and_never_shifts_the_columns(tmp_path):
    """pandas reads data lines with one cell more than the header with their first cell as a row
    label: a separator at the end of each line made user_id the items, item_id the clicks and
    click empty, with no error (and predict scored such rows silently)."""
    (tmp_path / "d.csv").write_text("user_id,item_id,click\nu5,a,1,\nu7,b,0,\nu12,c,1,\n")
    expected = {"user_id": ["u5", "u7", "u12"], "item_id": ["a", "b", "c"], "click": [1, 0, 1]}
    assert run.read_data([str(tmp_path / "d.csv")]).to_dict("list") == expected
    chunks = list(run.read_data_chunks([str(tmp_path / "d.csv")], chunk_rows=2))
    assert pd.concat(chunks).to_dict("list") == expected
    # An extra cell that holds a value is no separator's: the line stops the read, named.
    (tmp_path / "e.csv").write_text("user_id,item_id,click\nu5,a,1,\nu7,b,0,x\nu12,c,1,\n")
    for read in (lambda: run.read_data([str(tmp_path / "e.csv")]),
                 lambda: list(run.read_data_chunks([str(tmp_path / "e.csv")], chunk_rows=2, bad_lines="skip"))):
        with pytest.raises(ConfigError, match=r"e.csv: line 3 has 4 cells, but the header names 3 columns"):
            read()


def test_explicit_columns_and_an_ordered_split(tmp_path):
    frame().to_csv(tmp_path / "d.csv", index=False)
    path = write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nsplit: {test_fraction: 0.25, "
                           "order_by: row_id}\ncolumns:\n"
                           "  - {type: sparse, name: user_id, vocabulary_size: 10, embedding_dim: 4, dtype: int64}\n"
                           "  - {type: sparse, name: item_id, embedding_dim: 4, dtype: string, vocabulary: [a, b, c]}\n"
                           "  - {type: sequence, name: hist_item_id, embedding_dim: 4, dtype: string, "
                           "vocabulary: [a, b, c], embedding_name: item_id, maxlen: 2}\n"
                           "  - {type: dense, name: price}\n")
    config = load_config(str(path))
    train_df, test_df = run.load_frames(config)
    assert test_df["row_id"].tolist() == [6, 7] and len(train_df) == 6
    columns = run.explicit_columns(config)
    assert [type(c) for c in columns] == [SparseFeat, SparseFeat, VarLenSparseFeat, DenseFeat]
    model = run.build_model(config, columns)  # history_feature_list inferred: ["item_id"]
    assert "hist_item_id" in model.input_names


def test_multitask_example_trains_evaluates_and_draws_its_gates(tmp_path):
    """... choosing its epoch by the first task's validation AUC, with Keras' own Adam
    (`train.lazy_adam: false`)."""
    config = load_config(str(REPO / "examples" / "multitask_mmoe.yaml"), output=str(tmp_path / "run"),
                         overrides=["train.validation={fraction: 0.1}", "train.lazy_adam=false"])
    assert config.train.validation.monitor == "ctr_auc"
    config.train.epochs = 2
    run.train(config)
    assert type(run.trained(config)[0].optimizer).__name__ == "Adam"  # not LazyAdam
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["validation"]["best_epoch"] == int(np.argmax(record["history"]["val_ctr_auc"])) + 1
    assert len(record["history"]["val_ctcvr_auc"]) == 2
    report = run.evaluate(config)
    assert set(report["tasks"]) == {"ctr", "ctcvr"}
    for task in report["tasks"].values():
        assert 0 < task["auc"] < 1 and task["logloss"] > 0 and np.isfinite(task["gauc"])
    for name in ("metrics.json", "calibration.png", "gates.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_a_strategy_section_trains_under_the_strategy_with_backups(tmp_path):
    """`strategy:` builds and compiles the model in the strategy's scope, feeds it a distributed
    dataset and backs the run up; the saved model loads and predicts like any other."""
    write_csv_frame(tmp_path / "d.csv")
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                             "train: {batch_size: 2, epochs: 3}\n"
                                             "strategy: {kind: mirrored, checkpoint_dir: backup, save_freq: 1}\n")))
    assert config.strategy.checkpoint_dir == str(tmp_path / "backup")
    model = run.train(config)
    assert isinstance(model.distribute_strategy, __import__("tensorflow").distribute.MirroredStrategy)
    assert model.optimizer.iterations.numpy() == 3 * 3  # every epoch: 6 training rows / batch 2
    loaded, columns = run.trained(config)
    from tfrec.data import df_to_inputs
    rows = df_to_inputs(run.prepare(frame(), columns), columns)
    np.testing.assert_allclose(loaded.predict(rows, verbose=0), model.predict(rows, verbose=0), atol=1e-6)

    # A warm start under the strategy: the earlier run, loaded in one process, is copied into
    # variables the strategy places, every weight carried over.
    import tensorflow as tf
    from tfrec.distribute import placed_copy

    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        copy = placed_copy(loaded)
    assert copy is not loaded and all(isinstance(v, tf.distribute.DistributedValues) for v in copy.weights)
    np.testing.assert_allclose(copy.predict(rows, verbose=0), loaded.predict(rows, verbose=0), atol=1e-6)
    assert placed_copy(loaded) is loaded  # outside any strategy
    # ... here with validation rows, which the strategy distributes too.
    warm = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\noutput: warm\n"
                                           f"train: {{batch_size: 2, epochs: 2, warm_start: {config.output}, "
                                           "validation: {fraction: 0.5, monitor: loss}}\n"
                                           "strategy: {kind: mirrored}\n", name="warm.yaml")))
    model = run.train(warm)
    assert isinstance(model.distribute_strategy, tf.distribute.MirroredStrategy)
    assert model.optimizer.iterations.numpy() == 2 * 1  # every epoch: 6 - 3 validation rows / batch 2
    record = json.loads(Path(warm.output_file("run.json")).read_text())
    assert record["validation"]["rows"] == 3 and len(record["history"]["val_loss"]) == 2
    # Every validation row counts, in whole batches of 2 (the last filled up with the first row),
    # the same rows every epoch.
    validation_rows = run.validation_split(run.load_frames(warm, columns)[0], warm)[1].iloc[[0, 1, 2, 0]]
    kept = run.trained(warm)[0].evaluate(df_to_inputs(run.prepare(validation_rows, columns), columns),
                                         validation_rows["click"].to_numpy(), batch_size=8, verbose=0)[0]
    assert kept == pytest.approx(record["history"]["val_loss"][record["validation"]["best_epoch"] - 1], abs=1e-5)


def test_a_backup_folder_resumes_only_the_run_that_wrote_it(tmp_path):
    """BackupAndRestore resumes any backup it finds: the next day's run on other data (or other
    settings) would carry on from yesterday's weights. The run records itself in the folder;
    the same run may resume, another is refused with what to do."""
    write_csv_frame(tmp_path / "d.csv")

    def config(epochs=3):
        return load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                               "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                               f"train: {{batch_size: 2, epochs: {epochs}}}\n"
                                               "strategy: {checkpoint_dir: backup}\n")))

    first = config()
    columns = run.build_columns(run.load_frames(first)[0], first)
    # The workers of a cluster claim the folder together: one's record, staged beside its place
    # while written, is no backup to the others.
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "tfrec_run.json.4242-0a1b2c3d.tmp").write_text("{")
    run.claim_backup_folder(first.strategy.checkpoint_dir, first, columns)
    (tmp_path / "backup" / "chief").mkdir()  # a backup, as BackupAndRestore leaves it when killed
    run.claim_backup_folder(first.strategy.checkpoint_dir, first, columns)  # the same run resumes
    with pytest.raises(ConfigError, match=r"strategy.checkpoint_dir: .*backup holds the backup of another run "
                                          r"\(written by .*run.yaml at .*\): its data files, columns or training "
                                          r"settings differ .* remove the folder to start afresh"):
        run.claim_backup_folder(first.strategy.checkpoint_dir, config(epochs=4), columns)
    with open(tmp_path / "d.csv", "a") as data:  # the next day's file: more rows
        data.write((tmp_path / "d.csv").read_text().splitlines()[1] + "\n")
    with pytest.raises(ConfigError, match="holds the backup of another run"):
        run.claim_backup_folder(first.strategy.checkpoint_dir, first, columns)  # the data file changed


def test_training_again_into_a_run_folder_replaces_the_model_and_drops_its_old_evaluation(tmp_path):
    write_csv_frame(tmp_path / "d.csv")
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")))
    columns = run.build_columns(run.load_frames(config)[0], config)
    os.makedirs(config.output)
    for old in (run.METRICS_FILE, run.CALIBRATION_FILE, run.MODEL_FILE):
        (tmp_path / config.output / old).write_text("yesterday's")
    run.save(run.build_model(config, columns), columns, config, None)
    assert sorted(os.listdir(config.output)) == sorted([run.MODEL_FILE, run.COLUMNS_FILE])
    assert run.trained(config)[1] == columns


def test_gaps_in_categorical_columns_are_padding(tmp_path):
    df = frame().astype({"item_id": object})
    df.loc[2, "item_id"] = None
    df.to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id]}\n")))
    read = run.read_data(config.data.train, sequences=["hist_item_id"])
    columns = run.infer_columns(read, config)
    from tfrec.data import df_to_inputs

    inputs = df_to_inputs(run.prepare(read, columns), columns)
    assert inputs["item_id"][2] == "" and inputs["item_id"][0] == "a"


def multitask_frame(rows=240, seed=0):
    rng = np.random.default_rng(seed)
    click = rng.integers(0, 2, rows)
    return pd.DataFrame({"user_id": rng.integers(1, 20, rows), "item_id": rng.choice(list("abcdef"), rows),
                         "price": rng.random(rows), "click": click,
                         "conversion": click * rng.integers(0, 2, rows), "dwell": rng.normal(30, 5, rows)})


@pytest.mark.parametrize("labels, extra, message", [
    ("{ctcvr: conversion, ctr: click}", "", r"ESMM reads its first label \('ctcvr': conversion\) as the click .* "
                                            r"list the click first"),
    ("{ctr: click, ctcvr: conversion}", "columns: {dense: [price, conversion]}\n",
     r"columns: \['conversion'\] are labels, so they cannot be features too"),
])
def test_multitask_label_mistakes_that_trained_a_wrong_model_are_refused(tmp_path, labels, extra, message):
    multitask_frame().to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, f"data: {{train: d.csv}}\nlabels: {labels}\nmodel: {{name: ESMM}}\n"
                                             + extra)))
    with pytest.raises(ConfigError, match=message):
        train_df, _ = run.load_frames(config)
        run.build_columns(train_df, config)


def test_task_names_in_another_order_than_the_labels_are_named_not_misread(tmp_path):
    multitask_frame().to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: {ctr: click, watch: dwell}\n"
                                             "model: {name: MMOE, args: {task_names: [watch, ctr], "
                                             "task_types: [regression, binary]}}\n")))
    with pytest.raises(ConfigError, match=r"model.args.task_names: the tasks are named by labels, in their order "
                                          r"\['ctr', 'watch'\]"):
        run.load_frames(config)


def test_evaluate_reports_a_regression_task_and_a_one_class_task_without_failing_the_others(tmp_path):
    """MSE/MAE for a regression head (not AUC of its values); a task whose test labels are one class
    gets no AUC and a note, and the other tasks are still reported."""
    df = multitask_frame()
    df.loc[len(df) - 48:, "conversion"] = 0  # the test rows (the last 20%) never convert
    df["row_no"] = range(len(df))
    df.to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: {ctr: click, ctcvr: conversion, "
                                             "watch: dwell}\nmodel: {name: MMOE, args: {task_types: [binary, binary, "
                                             "regression], num_experts: 2, expert_dnn_hidden_units: [8], "
                                             "tower_dnn_hidden_units: [4]}}\nsplit: {test_fraction: 0.2, order_by: "
                                             "row_no}\ntrain: {batch_size: 64}\ncolumns: {exclude: [row_no]}\n")))
    run.train(config, verbose=0)
    tasks = run.evaluate(config)["tasks"]
    assert set(tasks["watch"]) >= {"mse", "mae"} and "auc" not in tasks["watch"]
    assert tasks["watch"]["mse"] > 0 and tasks["watch"]["label_rate"] == pytest.approx(
        run.load_frames(config)[1]["dwell"].mean())
    assert tasks["ctcvr"]["auc"] is None and "AUC needs both classes" in tasks["ctcvr"]["note"]
    assert 0 <= tasks["ctr"]["auc"] <= 1


def test_an_empty_item_in_a_csv_history_stays_a_placeholder_keeping_the_events_aligned(tmp_path):
    """"a||c" is three events whose second item is missing (padding, which the models skip), not two:
    dropping it would pair "c" with the second event's category and time."""
    (tmp_path / "d.csv").write_text("hist_item_id,hist_cate_id,hist_times\na||c,x|y|z,1|2|3\n,,\nb,w,7\n"
                                    "\"[\"\"a\"\", null]\",\"[\"\"x\"\", \"\"y\"\"]\",[1.5]\n")
    df = run.read_data([str(tmp_path / "d.csv")], sequences=["hist_item_id", "hist_cate_id", "hist_times"],
                       numeric=["hist_times"])
    assert df["hist_item_id"].tolist() == [["a", "", "c"], [], ["b"], ["a", ""]]
    assert df["hist_cate_id"].tolist()[0] == ["x", "y", "z"]
    assert [cell.tolist() for cell in df["hist_times"]] == [[1, 2, 3], [], [7], [1.5]]
    assert df["hist_times"][0].dtype == np.float64  # one item is not an integer
    parquet = pd.DataFrame({"hist_times": [[1.5, 2.0], [3.0]], "hist_ids": [[5, 6], [7]]})
    parquet.to_parquet(tmp_path / "d.parquet")
    df = run.read_data([str(tmp_path / "d.parquet")], sequences=["hist_times", "hist_ids"],
                       numeric=["hist_times", "hist_ids"])
    assert [cell.tolist() for cell in df["hist_times"]] == [[1.5, 2.0], [3.0]]  # not cut to ints
    assert df["hist_ids"][0].dtype == np.int64
    (tmp_path / "bad.csv").write_text("hist_times\n1|x\n")
    with pytest.raises(ConfigError, match=r"'hist_times' is a sequence of numbers \(event times .*\), but holds 'x'"):
        run.read_data([str(tmp_path / "bad.csv")], sequences=["hist_times"], numeric=["hist_times"])


@pytest.mark.parametrize("name, args", [
    ("SIM", "{search: hard, topk: 4, short_maxlen: 4, dnn_hidden_units: [16], att_hidden_size: [8], "
            "time_feature: timestamp}"),
    ("CLSR", "{proxy_recent: 2, proxy_min_length: 3, dnn_hidden_units: [16], att_hidden_size: [8]}"),
])
def test_sim_and_clsr_train_evaluate_and_export_from_a_config(tmp_path, tfrec_main, name, args):
    """The ranking example's CSV with model.name SIM or CLSR: histories found as for DIN, the model
    trained, saved, evaluated from its saved file, exported by `tfrec export --config`, and the
    export scores the test rows as the trained model does. SIM also reads its events' times:
    `hist_timestamp` (with an empty placeholder between two separators) listed under dense with
    `timestamp`, both int64."""
    import pandas as pd
    import tensorflow as tf

    from tfrec.data import df_to_inputs
    from tfrec.models import interest_model

    example = (REPO / "examples" / "ranking_din.yaml").read_text()
    data = str(REPO / "examples" / "data" / "ranking.csv")
    if name == "SIM":
        df = pd.read_csv(data, dtype={"hist_item_id": str, "hist_cate_id": str})
        df["hist_timestamp"] = ["|".join(str(t - 60 * (len(h.split("|")) - i)) if (row, i) != (24, 1) else ""
                                         for i in range(len(h.split("|")))) if isinstance(h, str) else ""
                                for row, (t, h) in enumerate(zip(df["timestamp"], df["hist_item_id"]))]
        assert "||" in df["hist_timestamp"][24]
        data = str(tmp_path / "ranking_times.csv")
        df.to_csv(data, index=False)
        example = example.replace("exclude: [timestamp]", "dense: [timestamp, hist_timestamp]").replace(
            "hist_cate_id: {maxlen: 10}", "hist_cate_id: {maxlen: 10}\n    hist_timestamp: {maxlen: 10}")
    # Batches of 80 divide the 1,680 training rows: every step is the compiled one (a partial last
    # batch would take an eager step an epoch).
    text = example.split("model:")[0].replace("data/ranking.csv", data) + \
        f"model: {{name: {name}, args: {args}}}\nsplit: {{test_fraction: 0.2, order_by: timestamp}}\n" \
        "train: {epochs: 1, batch_size: 80}\nevaluate: {group: user_id}\nexport: {base: export}\n"
    path = write(tmp_path, text)
    config = load_config(str(path))
    run.train(config, verbose=0)
    report = run.evaluate(config)["tasks"]["prediction"]
    assert 0.5 < report["auc"] < 1 and np.isfinite(report["gauc"])
    code, out, _ = tfrec_main("export", "--config", path)
    assert code == 0
    export_path = out.strip().splitlines()[-1]
    loaded, columns = run.trained(config)
    if name == "SIM":
        assert [(c.name, type(c).__name__, c.dtype) for c in columns if "timestamp" in c.name] == [
            ("timestamp", "DenseFeat", "int64"), ("hist_timestamp", "VarLenDenseFeat", "int64")]
    test_df = run.prepare(run.load_frames(config)[1], columns).head(40)
    inputs = df_to_inputs(test_df, columns)
    signature = tf.saved_model.load(export_path).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    served_inputs = {key: tf.constant(np.asarray(inputs[key]).reshape([-1] + list(np.shape(inputs[key]))[1:])
                                      if spec.shape.rank > 1 else np.asarray(inputs[key]).reshape(-1),
                                      dtype=spec.dtype) for key, spec in specs.items()}
    served = signature(**served_inputs)
    np.testing.assert_allclose(served["prediction"].numpy().reshape(-1),
                               loaded.predict(inputs, verbose=0).reshape(-1), atol=1e-5)

    # --steerable: CLSR's steerable_model beside the model, scoring at the weight each row sends.
    code, out, err = tfrec_main("export", "--config", path, "--steerable")
    if name != "CLSR":
        assert code == 1 and "--steerable: steerable_model needs a CLSR" in err
        return
    assert code == 0, err
    steered_path = out.strip().splitlines()[-1]
    assert steered_path.startswith(str(tmp_path / "export_steerable"))
    steered = tf.saved_model.load(steered_path).signatures["serving_default"]
    alpha = interest_model(loaded, ["alpha"]).predict(inputs, verbose=0)["alpha"].reshape(-1)
    at_alpha = steered(**served_inputs, long_term_weight=tf.constant(alpha))
    np.testing.assert_allclose(at_alpha["prediction"].numpy(), served["prediction"].numpy().reshape(-1), atol=1e-5)
    np.testing.assert_allclose(at_alpha["alpha"].numpy(), alpha, atol=1e-5)


def test_a_config_refuses_a_ranking_model_with_two_outputs(tmp_path):
    write_csv_frame(tmp_path / "d.csv")
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                             "model: {name: SIM, args: {search: soft, topk: 2, short_maxlen: 2, "
                                             "search_feature: item_id, soft_search_embedding: auxiliary}}\n")))
    train_df, _ = run.load_frames(config)
    with pytest.raises(ConfigError, match=r"outputs \['prediction', 'gsu_prediction'\], and a config trains one"):
        run.build_model(config, run.build_columns(train_df, config))


def test_mistakes_in_a_users_own_data_are_named_before_training(tmp_path):
    """Labels that are not 0/1, empty labels, and empty cells of a dense column: each names the
    column and the first row, instead of training a model that is wrong or all NaN."""
    def data(**changes):
        df = frame().assign(**changes)
        df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]]).to_csv(tmp_path / "d.csv", index=False)
        return load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                               "split: {test_fraction: 0.25, order_by: row_id}\n"
                                               "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")))

    with pytest.raises(ConfigError, match=r"labels: column 'click' must hold 0/1 \(a binary task\), but data row 2 "
                                          r"holds 2 \(values seen: \[0.0, 1.0, 2.0\]\)"):
        run.load_frames(data(click=[1, 0, 2, 0, 1, 0, 1, 0]))
    with pytest.raises(ConfigError, match="labels: column 'click' has 1 empty cell"):
        run.load_frames(data(click=[1, 0, 1, None, 1, 0, 1, 0]))
    with pytest.raises(ConfigError, match=r"labels: column 'click' must hold numbers 0/1, but data row 3 holds 'yes'"):
        run.load_frames(data(click=[1, 0, 1, "yes", 1, 0, 1, 0]))
    with pytest.raises(ConfigError, match=r"columns: dense column 'price' has 2 empty cell\(s\) in the training rows, "
                                          r"the first in row 1; give their value with data: \{fill: \{price: 0\}\}, "
                                          r".* list the numeric columns under columns.dense"):
        run.train(data(price=[0.5, None, 1.5, 2.0, None, 1.0, 1.5, 2.0]), verbose=0)
    with pytest.raises(ConfigError, match="exclude the column if it is unique to each row"):
        run.infer_columns(run.load_frames(data())[0], load_config(str(write(
            tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ncolumns: {min_count: 100}\n"))))


def test_rows_repeated_exactly_are_counted_and_named_before_training(tmp_path, capsys):
    df = frame()
    train, test = pd.concat([df, df.iloc[[1, 1, 2]]], ignore_index=True), df.iloc[[2, 7]].assign(row_id=[2, 99])
    assert run.repeated_rows(train, test) == (3, 1)  # history lists compared as values; row_id 99 differs
    assert run.repeated_rows(df, df.iloc[:0]) == (0, 0)
    with_repeats = pd.concat([df, df.iloc[[0, 1]]], ignore_index=True)
    with_repeats.assign(hist_item_id=["|".join(cell) for cell in with_repeats["hist_item_id"]]).to_csv(
        tmp_path / "d.csv", index=False)
    run.train(load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                              "split: {test_fraction: 0.2, seed: 3}\ntrain: {epochs: 1}\n"
                                              "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"))),
              verbose=0)
    assert re.search(r"note: \d+ of 8 training rows repeat another training row exactly, and \d+ of 2 test rows "
                     r"repeat a training row", capsys.readouterr().out)


def test_data_fill_gives_the_empty_cells_of_a_column_their_value(tmp_path):
    df = frame().assign(price=[0.5, None, 1.5, 2.0, None, 1.0, 1.5, 2.0])
    df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]]).to_csv(tmp_path / "d.csv", index=False)

    def config(fill):
        return load_config(str(write(tmp_path, f"data: {{train: d.csv, fill: {fill}}}\nlabels: click\n"
                                               "model: {name: DIN}\nsplit: {test_fraction: 0.25, order_by: row_id}\n"
                                               "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")))

    train_df, test_df = run.load_frames(config("{price: -1}"))
    assert sorted(pd.concat([train_df, test_df])["price"].tolist()) == [-1, -1, 0.5, 1.0, 1.5, 1.5, 2.0, 2.0]
    with pytest.raises(ConfigError, match=r"data.fill.cost: is not a column of the data; its columns are \["):
        run.load_frames(config("{cost: 0}"))
    with pytest.raises(ConfigError, match=r"data.fill.hist_item_id: is a sequence: its empty cells are not filled"):
        run.load_frames(config("{hist_item_id: 0}"))
    # A label left blank where its value is known (a conversion not logged without a click) is
    # filled when the config says so, and named with that remedy when it does not.
    df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]], click=[1, None, 0, 1, None, 0, 1, 0]
              ).to_csv(tmp_path / "d.csv", index=False)
    train_df, test_df = run.load_frames(config("{price: -1, click: 0}"))
    assert sorted(pd.concat([train_df, test_df])["click"].tolist()) == [0] * 5 + [1] * 3
    with pytest.raises(ConfigError, match=r"labels: column 'click' has 2 empty cell\(s\), the first in data row 1; "
                                          r"if an empty cell means a known value .*data: \{fill: \{click: 0\}\}"):
        run.load_frames(config("{price: -1}"))
    with pytest.raises(ConfigError, match=r"data.fill: must map a column to the number or text"):
        config("[price]")
    with pytest.raises(ConfigError, match=r"data.fills: unknown key in 'data'; known keys: train, test"):
        load_config(str(write(tmp_path, "data: {train: d.csv, fills: {price: 0}}\nlabels: click\n"
                                        "model: {name: DIN}\n")))


def test_ids_read_from_a_csv_keep_their_text_and_int_ids_with_gaps_stay_ids(tmp_path):
    """An item id "007" in a CSV stays "007" as a target, as it does in the histories; a user id
    column with a gap (which pandas reads as floats) is a categorical column of "5", not "5.0"."""
    df = frame().assign(item_id=["007", "010", "007", "3", "007", "010", "007", "99"],
                        hist_item_id=["", "007", "007|010", "010", "007|3", "", "010|007|010", "007"],
                        user_id=[1, 2, None, 1, 2, 3, 1, 9])
    df.to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "split: {test_fraction: 0.25, order_by: row_id}\n"
                                             "columns: {exclude: [row_id], dense: [price], "
                                             "sequences: {hist_item_id: {}}}\n")))
    train_df, _ = run.load_frames(config)
    assert train_df["item_id"].tolist()[:2] == ["007", "010"]
    columns = {c.name: c for c in run.infer_columns(train_df, config)}
    assert list(columns["item_id"].vocabulary[:2]) == ["007", "010"]
    assert columns["user_id"].dtype == "string" and set(columns["user_id"].vocabulary) == {"1", "2", "3"}
    from tfrec.data import df_to_inputs

    inputs = df_to_inputs(run.prepare(train_df, list(columns.values())), list(columns.values()))
    assert inputs["user_id"].tolist() == ["1", "2", "", "1", "2", "3"]  # the gap is padding


def test_split_order_by_dates_sorts_by_time_and_refuses_dates_it_would_sort_as_text(tmp_path):
    """Sorted as text, 12/30/2023 came after 01/02/2024, so the test rows were not the latest; the
    rule is retrieval.time's: numbers or year-first dates, other text refused naming the row."""
    times = ["2024-01-02 09:00", "2023-12-30 10:00", "2024-01-01", "2023-12-31 23:59"]
    df = pd.DataFrame({"item_id": ["a", "b", "a", "b"], "click": [1, 0, 1, 0], "time": times})
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "split: {test_fraction: 0.5, order_by: time}\n")))
    train, test = run.split_data(df, config)
    assert test["time"].tolist() == ["2024-01-02 09:00", "2024-01-01"]  # in the file's order
    month_first = df.assign(time=["01/02/2024 09:00", "12/30/2023 10:00", "01/01/2024 00:00", "12/31/2023 23:59"])
    with pytest.raises(ConfigError, match=re.escape("split.order_by: column 'time' holds '01/02/2024 09:00' in data "
                                                    "row 0 (4 such cell(s)); it must hold numbers (epoch seconds) or "
                                                    "year-first dates")):
        run.split_data(month_first, config)


def test_an_int_id_column_with_gaps_has_the_same_ids_in_train_evaluate_and_predict(tmp_path):
    """pandas writes an int column with a gap as floats ("5.0"): training infers a table of "5" from
    them, and evaluate and predict, which read a trained string column as text, read "5.0" as "5"
    too (they read "5.0", and every id was unknown)."""
    df = frame().assign(user_id=[1, 2, None, 1, 2, 3, 1, 9])
    df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]]).to_csv(tmp_path / "d.csv", index=False)
    assert "2.0" in (tmp_path / "d.csv").read_text()
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "split: {test_fraction: 0.25, order_by: row_id}\n"
                                             "columns: {exclude: [row_id], dense: [price], "
                                             "sequences: {hist_item_id: {}}}\n")))
    train_df, _ = run.load_frames(config)
    columns = run.infer_columns(train_df, config)
    assert set(next(c for c in columns if c.name == "user_id").vocabulary) == {"1", "2", "3"}
    trained_read, _ = run.load_frames(config, columns)  # as evaluate reads the split of a trained run
    (predict_read,) = run.data_chunks(config, columns, [str(tmp_path / "d.csv")], "--data", labels=False)
    expected = ["1", "2", "", "1", "2", "3", "1", "9"]
    assert run.prepare(trained_read, columns)["user_id"].tolist() == expected[:len(trained_read)]
    assert predict_read["user_id"].tolist() == expected


def test_a_gap_in_an_integer_id_column_of_rows_to_score_is_padding():
    """A predict/test file's int id column with an empty cell is read as floats and prepare() makes
    the gap padding 0, as it documents; df_to_inputs refused the mix of floats and int 0, naming row 0."""
    from tfrec.data import df_to_inputs

    columns = [SparseFeat("shop_id", 50), SparseFeat("user_id", 50, dtype="int64")]
    rows = pd.DataFrame({"shop_id": [34.0, np.nan, 25.0], "user_id": [np.nan, 3.0, 4.0]})
    inputs = df_to_inputs(run.prepare(rows, columns), columns)
    assert inputs["shop_id"].tolist() == [34, 0, 25] and inputs["shop_id"].dtype == np.int32
    assert inputs["user_id"].tolist() == [0, 3, 4] and inputs["user_id"].dtype == np.int64
    with pytest.raises(ValueError, match=r"feature 'shop_id' has dtype 'int32' and needs integer ids, but row 2 "
                                         r"holds 2.5; ids are whole numbers"):
        df_to_inputs(run.prepare(rows.assign(shop_id=[34.0, np.nan, 2.5]), columns), columns)


def test_whole_numbers_written_with_leading_zeros_are_ids_kept_as_text(tmp_path):
    """A user id column holding "000012" and "12" has two users, a string table, and requests send
    the text; a column of plain whole numbers (the click label, a count) is still read as numbers."""
    df = frame().assign(user_id=["000012", "12", "000012", "12", "7", "7", "000012", "12"],
                        count=[0, 3, 10, 2, 0, 1, 0, 5])
    df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]]).to_csv(tmp_path / "d.csv", index=False)
    read = run.read_data([str(tmp_path / "d.csv")], sequences=["hist_item_id"])
    assert read["user_id"].tolist()[:2] == ["000012", "12"]
    assert read["count"].dtype.kind == "i" and read["click"].dtype.kind == "i"
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], dense: [price, count], "
                                             "sequences: {hist_item_id: {}}}\n")))
    columns = {c.name: c for c in run.infer_columns(read, config)}
    assert columns["user_id"].dtype == "string"
    assert set(columns["user_id"].vocabulary) == {"000012", "12", "7"}
    # A column declared dtype: string is read as text too, leading zeros or not.
    df.assign(user_id=["12", "7"] * 4, hist_item_id="").to_csv(tmp_path / "d.csv", index=False)
    explicit = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ncolumns:\n"
                                               "  - {type: sparse, name: user_id, embedding_dim: 4, dtype: string, "
                                               "vocabulary: ['12', '7']}\n")))
    assert set(run.load_frames(explicit)[0]["user_id"].tolist()) == {"12", "7"}


def test_a_file_reads_alike_whole_and_in_chunks_csv_or_parquet(tmp_path):
    """evaluate reads data.test in chunks and train reads it whole: a session id column (no
    feature, evaluate.group) with "007" and "7" kept them apart whole but merged them in chunks,
    the leading zero found only in a chunk (not in the first) or not at all. With an empty cell
    too, both reads made the column floats ("007" and "7" both 7.0): it is text, its gap a missing
    value. A Parquet file keeps its types in both reads (a retrieval log's users are asked for by
    its int ids): a trained run's text column of ints was text in chunks only, and, with a null
    in a file without pandas' metadata (Spark's), floats (7.0) whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("session,user_id,click\n7,3,0\n8,4,1\n007,5,1\n9,6,0\n")
    whole = run.read_data([str(tmp_path / "d.csv")])
    chunks = list(run.read_data_chunks([str(tmp_path / "d.csv")], chunk_rows=2))
    assert whole["session"].tolist() == ["7", "8", "007", "9"]
    pd.testing.assert_frame_equal(pd.concat(chunks), whole)
    assert whole["user_id"].dtype.kind == "i"  # plain whole numbers stay numbers
    for gaps in ("7,3,0\n,4,1\n007,5,1\n9,6,0\n", "7,3,0\nNA,4,1\n 007,5,1\n9,6,0\n", "7,3,0\n8,4,1\n,5,1\n007,6,0\n"):
        (tmp_path / "g.csv").write_text("session,user_id,click\n" + gaps)
        whole = run.read_data([str(tmp_path / "g.csv")])
        values = [None if pd.isna(v) else v for v in whole["session"]]
        assert {"007", "7", None} <= set(values) and all(isinstance(v, str) for v in values if v is not None)
        for rows in (1, 2, 3):
            pd.testing.assert_frame_equal(pd.concat(run.read_data_chunks([str(tmp_path / "g.csv")], chunk_rows=rows)),
                                          whole)
    (tmp_path / "f.csv").write_text("price,click\n7,0\n,1\n3,1\n")  # no leading zero: a gap makes floats, as ever
    assert run.read_data([str(tmp_path / "f.csv")])["price"].dtype.kind == "f"
    pd.DataFrame({"user_id": pd.array([7, None, 3], dtype="Int64"), "click": [0, 1, 1]}, index=[3, 9, 11]).to_parquet(
        tmp_path / "d.parquet")
    spark = pa.table({"user_id": pa.array([7, None, 3], pa.int64()), "click": pa.array([0, 1, 1], pa.int64())})
    pq.write_table(spark, tmp_path / "s.parquet")
    for name in ("d.parquet", "s.parquet"):
        whole = run.read_data([str(tmp_path / name)], text_columns=["user_id"])
        assert whole["user_id"].dtype == "Int64" and whole["user_id"].tolist()[::2] == [7, 3]
        assert whole["user_id"].isna().tolist() == [False, True, False]
        for rows in (1, 2):
            chunks = pd.concat(run.read_data_chunks([str(tmp_path / name)], text_columns=["user_id"], chunk_rows=rows))
            pd.testing.assert_frame_equal(chunks, whole)
    # Lines pyarrow cannot parse (a quoted line break; a short line, which pandas keeps) read alike too.
    for text in ('session,note,click\n7,"a\nb",0\n8,x,1\n007,y,1\n9,z,0\n',
                 "session,note,click\n7,a,0\n8,x\n007,y,1\n9,z,0\n",
                 'session,note,click\n7,"a\nb",0\n,x,1\n007,y,1\n9,z,0\n'):
        (tmp_path / "e.csv").write_text(text)
        whole = run.read_data([str(tmp_path / "e.csv")])
        assert whole["session"].tolist()[2:] == ["007", "9"] and whole["session"].tolist()[0] == "7"
        pd.testing.assert_frame_equal(pd.concat(run.read_data_chunks([str(tmp_path / "e.csv")], chunk_rows=2)), whole)


def test_explicit_vocabulary_path_is_relative_to_the_config(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "items.txt").write_text("a\nb\nc\n")
    path = write(tmp_path / "cfg", "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\ncolumns:\n"
                                   "  - {type: sparse, name: item_id, embedding_dim: 4, dtype: string, "
                                   "vocabulary_path: items.txt}\n")
    monkeypatch.chdir(tmp_path)
    [column] = run.explicit_columns(load_config(str(path)))
    assert column.vocabulary_path == str(tmp_path / "cfg" / "items.txt")


def test_predict_writes_the_kept_columns_as_the_file_holds_them(tmp_path):
    """A request id column with an empty cell is read by pandas as floats: --keep wrote 7 as "7.0"
    and 1234567890123456789 as "1.2345678901234568e+18", the same as its neighbour's id."""
    write_csv_frame(tmp_path / "d.csv")
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                             "train: {epochs: 1, batch_size: 4}\n")))
    run.train(config, verbose=0)
    request_ids = ["1234567890123456789", "", "1234567890123456781", "7", "8", "9", "10", "11"]
    rows = pd.read_csv(tmp_path / "d.csv", dtype=str, keep_default_na=False).assign(request_id=request_ids)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    run.predict(config, [str(tmp_path / "rows.csv")], str(tmp_path / "scores.csv"),
                keep=["request_id", "user_id", "request_id"])
    scores = pd.read_csv(tmp_path / "scores.csv", dtype=str, keep_default_na=False)
    assert list(scores.columns) == ["request_id", "user_id", "score"]  # a column kept twice is written once
    assert scores["request_id"].tolist() == request_ids
    assert scores["user_id"].tolist() == rows["user_id"].tolist()


def test_predict_from_python_refuses_to_write_its_scores_over_a_file_it_scores(tmp_path):
    """run.predict given its own input as the scores path replaced the rows with their scores once
    done; it is refused before the model is loaded (this config has no trained run)."""
    write_csv_frame(tmp_path / "d.csv")
    before = (tmp_path / "d.csv").read_text()
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n")))
    with pytest.raises(ConfigError, match="is one of the files to score: the scores would replace its rows"):
        run.predict(config, [str(tmp_path / "*.csv")], str(tmp_path / "d.csv"))
    assert (tmp_path / "d.csv").read_text() == before


def test_predict_writes_the_kept_integers_of_a_parquet_file_as_it_holds_them(tmp_path):
    """A Parquet int column with a null (written without pandas' metadata, as Spark writes it) came
    out of to_pandas as floats: --keep wrote request id 7 as "7.0"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_csv_frame(tmp_path / "d.csv")
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                             "train: {epochs: 1, batch_size: 4}\n")))
    run.train(config, verbose=0)
    request_ids = [1234567890123456789, None, 1234567890123456781, 7, 8, 9, 10, 11]
    rows = pa.Table.from_pandas(frame(), preserve_index=False).append_column("request_id",
                                                                             pa.array(request_ids, pa.int64()))
    pq.write_table(rows.replace_schema_metadata(None), tmp_path / "rows.parquet")
    run.predict(config, [str(tmp_path / "rows.parquet")], str(tmp_path / "scores.csv"), keep=["request_id", "user_id"])
    scores = pd.read_csv(tmp_path / "scores.csv", dtype=str, keep_default_na=False)
    assert scores["request_id"].tolist() == ["" if i is None else str(i) for i in request_ids]
    assert scores["user_id"].tolist() == [str(i) for i in frame()["user_id"]]


def test_a_crash_while_evaluate_writes_leaves_the_files_it_wrote_before(tmp_path, monkeypatch):
    """metrics.json and calibration.png were written in place: a crash mid-write left them cut short."""
    import matplotlib.figure

    write_csv_frame(tmp_path / "d.csv")
    config = load_config(str(write(tmp_path, "data: {train: d.csv, test: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                             "train: {epochs: 1, batch_size: 4}\n")))
    run.train(config, verbose=0)
    run.evaluate(config)
    folder = Path(config.output)
    written = {name: (folder / name).read_bytes() for name in os.listdir(folder) if name.endswith((".json", ".png"))}
    assert {run.METRICS_FILE, run.CALIBRATION_FILE} <= set(written)

    def cut_short(write_some):
        def crash(*args, **kwargs):
            write_some(*args, **kwargs)
            raise OSError("No space left on device")
        return crash

    def some_png(figure, target, **kwargs):
        with (open(target, "wb") if isinstance(target, str) else contextlib.nullcontext(target)) as handle:
            handle.write(b"\x89PNG")

    for patched, name, write_some in ((matplotlib.figure.Figure, "savefig", some_png),
                                      (json, "dump", lambda value, handle, **kwargs: handle.write('{"rows": '))):
        with monkeypatch.context() as patch:
            patch.setattr(patched, name, cut_short(write_some))
            with pytest.raises(OSError, match="No space left"):
                run.evaluate(config)
        assert {name: (folder / name).read_bytes() for name in written} == written
        assert not [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_a_file_of_no_rows_scores_none_in_predict_and_evaluate(tmp_path):
    """A header-only file (a day without rows) among the files to score or the test files stopped
    predict and evaluate with Keras' "Expected input data to be non-empty.", naming no file."""
    write_csv_frame(tmp_path / "d.csv")
    (tmp_path / "empty.csv").write_text((tmp_path / "d.csv").read_text().splitlines()[0] + "\n")
    config = load_config(str(write(tmp_path, "data: {train: d.csv, test: [empty.csv, d.csv]}\nlabels: click\n"
                                             "model: {name: DIN}\ntrain: {epochs: 1, batch_size: 4}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")))
    run.train(config, verbose=0)
    files = [str(tmp_path / "empty.csv"), str(tmp_path / "d.csv")]
    assert run.predict(config, files, str(tmp_path / "scores.csv"), keep=["row_id"])["rows"] == 8
    assert pd.read_csv(tmp_path / "scores.csv")["row_id"].tolist() == list(range(8))  # one header
    assert run.predict(config, files[:1], str(tmp_path / "none.csv"), keep=["row_id"])["rows"] == 0
    assert (tmp_path / "none.csv").read_text() == "row_id,score\n"
    assert run.evaluate(config)["rows"] == 8
    config.data.test = files[:1]
    with pytest.raises(ConfigError, match="data.test: no test rows"):
        run.evaluate(config)


def test_export_of_a_run_whose_test_file_has_no_rows_warms_up_with_a_synthesised_row(tmp_path, tfrec_main):
    """The warm-up requests are the first test rows: of a header-only data.test, the export failed
    with "warm-up input 'hist_item_id' has shape [0], but the serving signature takes shape [None, None]"."""
    write_csv_frame(tmp_path / "d.csv")
    (tmp_path / "empty.csv").write_text((tmp_path / "d.csv").read_text().splitlines()[0] + "\n")
    path = write(tmp_path, "data: {train: d.csv, test: empty.csv}\nlabels: click\nmodel: {name: DIN}\n"
                           "train: {epochs: 1, batch_size: 4}\nexport: {base: models/din}\n"
                           "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")
    run.train(load_config(str(path)), verbose=0)
    code, out, err = tfrec_main("export", "--config", path)
    assert code == 0, err
    assert (tmp_path / "models" / "din" / "1" / "saved_model.pb").exists()  # warmed up by a synthesised row


def test_an_empty_cell_of_the_gauc_group_column_is_named(tmp_path):
    """evaluate.group read as text with an empty cell failed in GAUC with "TypeError: '<' not
    supported between instances of 'float' and 'str'", an unexpected error naming nothing."""
    df = frame().assign(session=["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"])
    df = df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]])
    df.to_csv(tmp_path / "d.csv", index=False)
    df.assign(session=["s1", "s1", "s2", None, "s3", "s3", "s4", "s4"]).to_csv(tmp_path / "t.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv, test: t.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id, session], sequences: {hist_item_id: {}}}\n"
                                             "train: {epochs: 1, batch_size: 4}\nevaluate: {group: session}\n")))
    message = (r"evaluate.group: column 'session' has 1 empty cell\(s\) in the test rows, the first in data row 3; "
               r".*data: \{fill: \{session: ")
    with pytest.raises(ConfigError, match=message):  # before training
        run.train(config, verbose=0)
    config.data.test = [str(tmp_path / "d.csv")]
    run.train(config, verbose=0)
    config.data.test = [str(tmp_path / "t.csv")]
    with pytest.raises(ConfigError, match=message):
        run.evaluate(config)


def test_a_gauc_group_column_of_numbers_in_one_test_file_and_text_in_another_is_grouped_by_its_text(tmp_path):
    """evaluate.group read as ints from one test file and as text from another (5 and "u7", one
    object column) failed in GAUC with "TypeError: '<' not supported between instances of 'str'
    and 'int'"; 5 and "5" are one group, as the files write them."""
    df = frame().assign(session=["5", "5", "6", "6", "u7", "u7", "u8", "u8"])
    df = df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]])
    df.to_csv(tmp_path / "d.csv", index=False)
    df[:4].to_csv(tmp_path / "numbers.csv", index=False)
    df[4:].assign(session=["u7", "u7", "5", "5"]).to_csv(tmp_path / "text.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv, test: [numbers.csv, text.csv]}\nlabels: click\n"
                                             "model: {name: DIN}\nevaluate: {group: session}\n"
                                             "columns: {exclude: [row_id, session], sequences: {hist_item_id: {}}}\n"
                                             "train: {epochs: 1, batch_size: 4}\n")))
    run.train(config, verbose=0)
    (as_text,) = [task["gauc"] for task in run.evaluate(config)["tasks"].values()]
    df.assign(session=["5", "5", "6", "6", "u7", "u7", "5", "5"]).to_csv(tmp_path / "one.csv", index=False)
    config.data.test = [str(tmp_path / "one.csv")]  # the same rows, one file: read as text throughout
    (one_file,) = [task["gauc"] for task in run.evaluate(config)["tasks"].values()]
    assert as_text == pytest.approx(one_file)


def test_a_diverged_run_fails_and_saves_nothing(tmp_path):
    df = frame().assign(price=[3e38] * 8)  # finite, but the network's sums overflow to inf
    df.assign(hist_item_id=["|".join(cell) for cell in df["hist_item_id"]]).to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n"
                                             "train: {epochs: 2, batch_size: 2}\n")))
    with pytest.raises(ValueError, match=r"training diverged: the loss became nan in epoch 1, so nothing was saved"):
        run.train(config, verbose=0)
    assert not Path(config.output_file(run.MODEL_FILE)).exists()


def test_history_cells_in_other_formats_and_undeclared_histories(tmp_path):
    """A JSON-list cell is a sequence, as is "a | b"; comma-joined cells name the separator to set; a CSV history
    not listed under columns.sequences, and test rows without a feature, are named before training."""
    df = frame()
    as_json = df.assign(hist_item_id=[json.dumps(cell) for cell in df["hist_item_id"]])
    as_json.to_csv(tmp_path / "d.csv", index=False)
    base = "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
    config = load_config(str(write(tmp_path, base + "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")))
    read = run.read_data([str(tmp_path / "d.csv")], sequences=["hist_item_id"])
    assert read["hist_item_id"].tolist() == df["hist_item_id"].tolist()
    df.to_csv(tmp_path / "lists.csv", index=False)  # pandas writes a list cell as "['a', 'b']"
    read = run.read_data([str(tmp_path / "lists.csv")], sequences=["hist_item_id"])
    assert read["hist_item_id"].tolist() == df["hist_item_id"].tolist()
    spaced = df.assign(hist_item_id=[" | ".join(cell) for cell in df["hist_item_id"]])
    spaced.to_csv(tmp_path / "spaced.csv", index=False)
    read = run.read_data([str(tmp_path / "spaced.csv")], sequences=["hist_item_id"])
    assert read["hist_item_id"].tolist() == df["hist_item_id"].tolist()  # the spaces are no part of an id

    df.assign(hist_item_id=[",".join(cell) for cell in df["hist_item_id"]]).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ConfigError, match=r"data.sequence_separator: no cell of 'hist_item_id' holds '\|', but most "
                                          r"hold ','"):
        run.load_frames(config)

    write_csv_frame(tmp_path / "d.csv")
    undeclared = load_config(str(write(tmp_path, base + "columns: {exclude: [row_id]}\n")))
    with pytest.raises(ConfigError, match=r"columns.sequences: 'hist_item_id' pairs with 'item_id' but is read as one "
                                          r"value per row; list it under columns.sequences"):
        run.infer_columns(run.load_frames(undeclared)[0], undeclared)

    frame().drop(columns=["price"]).to_csv(tmp_path / "test.csv", index=False)
    no_price = load_config(str(write(tmp_path, "data: {train: d.csv, test: test.csv}\nlabels: click\n"
                                     "model: {name: DIN}\ncolumns: {exclude: [row_id], sequences: {hist_item_id: {}}}\n")))
    with pytest.raises(ConfigError, match=r"data.test: the test rows lack the feature column\(s\) \['price'\]"):
        run.train(no_price, verbose=0)


def test_a_warm_start_from_a_folder_without_a_recorded_count_says_how_its_vocabularies_grow(tmp_path):
    """A run folder written before tfrec recorded columns.min_count in columns.json (an upgrade):
    its vocabularies grow by values seen once, and a line says so and how to keep rare values
    out; with the count recorded, they grow by it without a word."""
    import io

    frame().to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_bytes(b"")  # only the columns are read here
    columns = [SparseFeat("item_id", vocabulary=["a", "b"], embedding_dim=4, dtype="string")]
    config = load_config(str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                                             "train: {warm_start: run}\n")))
    for recorded, growth, said in [(None, 1, True), (2, 2, False)]:
        (tmp_path / "run" / "columns.json").write_text(json.dumps(run.columns_to_json(columns, recorded)))
        out = io.StringIO()
        warm = run.warm_start_columns(config, out)
        assert (warm.growth, warm.recorded) == (growth, growth)
        assert ("does not record how often a value had to be seen to get a row (an older tfrec wrote it): new "
                "values get one when seen once today; to keep rare values out as the earlier run did, set "
                "train.grow_vocabularies to its columns.min_count" in out.getvalue()) == said


def test_a_run_records_how_it_was_made_and_evaluate_refuses_another_split(tmp_path, capsys):
    """From a reproducibility audit: evaluate split the training files anew with today's settings,
    so a changed test_fraction or file scored rows the model trained on (AUC 0.62 -> 0.74)."""
    write_csv_frame(tmp_path / "d.csv")
    text = ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nsplit: {test_fraction: 0.25, seed: 1}\n"
            "columns: {exclude: [row_id], sequences: {hist_item_id: {}}}\ntrain: {batch_size: 2, epochs: 2}\n")
    path = str(write(tmp_path, text))
    config = load_config(path, overrides=["train.learning_rate=0.01"])
    config.train.epochs = 1  # as `tfrec train --epochs 1` sets it
    run.train(config, verbose=0)
    record = json.loads((tmp_path / "runs" / "run" / "run.json").read_text())
    assert record["config"] == path and record["overrides"] == ["train.learning_rate=0.01"]
    assert record["train"]["epochs"] == 1 and record["train"]["learning_rate"] == 0.01
    assert record["model"] == {"name": "DIN", "args": {"seed": 1024}} and record["rows"] == 6
    assert set(record["versions"]) == {"tfrec", "tensorflow", "python"} and len(record["history"]["loss"]) == 1
    assert record["held_out"]["split"] == {"test_fraction": 0.25, "order_by": None, "seed": 1}
    assert [stamp["path"] for stamp in record["data"]["train"]] == [str(tmp_path / "d.csv")]
    assert [stamp["name"] for stamp in record["held_out"]["data.train"]] == ["d.csv"]
    run.evaluate(load_config(path))

    for overrides, changed in ((["split.seed=2"], "split"), (["split.test_fraction=0.5"], "split")):
        with pytest.raises(ConfigError, match=rf"the test rows would be another split of data.train than the one "
                                              rf"`tfrec train` held out \({changed} changed since"):
            run.evaluate(load_config(path, overrides=overrides))
    frame().iloc[:7].assign(hist_item_id="").to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ConfigError, match=r"\(data.train \(its files' names, sizes or contents\) changed"):
        run.evaluate(load_config(path))
    write_csv_frame(tmp_path / "test.csv")  # separate test files: no split to compare, but the trained file again
    capsys.readouterr()
    assert run.evaluate(load_config(path, overrides=["data.test=test.csv"]))["rows"] == 8
    assert f"note: data.test {tmp_path / 'test.csv'} is a file the model trained on" in capsys.readouterr().out


def overfitting_frame(rows=600, seed=0):
    """Clicks that depend on the item alone, with ids and histories a model can memorise."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, 30, rows)
    return pd.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, 300, rows)], "item_id": [f"i{i}" for i in items],
        "hist_item_id": ["|".join(f"i{i}" for i in rng.integers(0, 30, 3)) for _ in range(rows)],
        "click": (rng.random(rows) < np.where(items < 10, 0.7, 0.3)).astype(int), "ts": np.arange(rows)})


def test_validation_rows_pick_the_epoch_that_is_saved_and_stop_training_early(tmp_path, capsys):
    """`train.validation`: the rows are held out of training and its vocabularies, the best
    epoch's weights are the saved ones (their validation loss is the best logged), and training
    stops `patience` epochs after it."""
    from tfrec import load_model
    from tfrec.data import df_to_dataset

    overfitting_frame().to_csv(tmp_path / "d.csv", index=False)
    text = ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN, args: {dnn_hidden_units: [16]}}\n"
            "split: {test_fraction: 0.2, order_by: ts}\ncolumns: {exclude: [ts], sequences: {hist_item_id: {}}}\n"
            "train: {epochs: 12, batch_size: 32, learning_rate: 0.03, "
            "validation: {fraction: 0.25, monitor: loss, patience: 2}}\n")
    config = load_config(str(write(tmp_path, text)))
    run.train(config, verbose=0)
    out = capsys.readouterr().out
    assert "validation: 120 of the training rows (the last by ts), not trained on; the epoch with the best " \
           "val_loss is kept, and training stops after 2 epoch(s) without a better one" in out
    record = json.loads((tmp_path / "runs" / "run" / "run.json").read_text())
    val_loss = record["history"]["val_loss"]
    best = int(np.argmin(val_loss)) + 1
    assert record["rows"] == 360 and record["validation"] == {"rows": 120, "best_epoch": best, "epochs": best + 2,
                                                              "figure": val_loss[best - 1]}
    assert best < len(val_loss) == best + 2 < 12, val_loss  # memorising the ids overfits: training stopped
    assert f"kept epoch {best} (val_loss {val_loss[best - 1]:.4f}); stopped after epoch {best + 2} of 12" in out

    fit_rows, validation_rows = run.validation_split(run.load_frames(config)[0], config)
    assert validation_rows["ts"].min() > fit_rows["ts"].max()  # the latest training rows, as the test split
    columns = run.trained_columns(config)
    users = set(next(c for c in columns if c.name == "user_id").vocabulary)
    assert users == set(fit_rows["user_id"]) and set(validation_rows["user_id"]) - users  # none seen only in validation
    model = load_model(config.output_file("model.keras"))
    saved = model.evaluate(df_to_dataset(run.prepare(validation_rows, columns), columns, "click", shuffle=False,
                                         batch_size=32), return_dict=True, verbose=0)
    assert saved["loss"] == pytest.approx(val_loss[best - 1], abs=1e-5)  # the best epoch's weights, not the last


def test_a_run_resumed_from_its_backup_keeps_the_best_epoch_from_before_the_restart(tmp_path, capsys, monkeypatch):
    """A run that dies one epoch after its best epoch and is started again stops one epoch later
    (patience 2) and saves the weights of that earlier best epoch, numbering epochs on from the
    first run's (Keras' own EarlyStopping would start afresh after the restart)."""
    import tensorflow as tf

    from tfrec import load_model
    from tfrec.data import df_to_dataset
    from tfrec.runs import figures

    overfitting_frame().to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, (
        "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN, args: {dnn_hidden_units: [16]}}\n"
        "split: {test_fraction: 0.2, order_by: ts}\ncolumns: {exclude: [ts], sequences: {hist_item_id: {}}}\n"
        "strategy: {checkpoint_dir: backup, save_freq: epoch}\n"
        "train: {epochs: 12, batch_size: 32, learning_rate: 0.03, validation: {fraction: 0.25, monitor: loss, "
        "patience: 2}}\n"))))
    val_loss = []
    on_epoch_end = tf.keras.callbacks.EarlyStopping.on_epoch_end

    def dies_one_epoch_after_the_best(stopping, epoch, logs=None):
        on_epoch_end(stopping, epoch, logs)
        val_loss.append(logs["val_loss"])
        if stopping.wait == 1:
            raise KeyboardInterrupt  # as a killed process: no on_train_end, the backup stays

    monkeypatch.setattr(tf.keras.callbacks.EarlyStopping, "on_epoch_end", dies_one_epoch_after_the_best)
    with pytest.raises(KeyboardInterrupt):
        run.train(config, verbose=0)
    monkeypatch.undo()
    best = int(np.argmin(val_loss)) + 1
    assert len(val_loss) == best + 1
    run.train(config, verbose=0)
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "runs" / "run" / "run.json").read_text())
    assert record["validation"] == {"rows": 120, "best_epoch": best, "epochs": best + 2,
                                    "figure": pytest.approx(val_loss[best - 1])}
    # The backup of the epoch it died in was not written: the run did that epoch again, then one more.
    assert len(record["history"]["val_loss"]) == 2
    assert f"kept epoch {best} (val_loss {val_loss[best - 1]:.4f}); stopped after epoch {best + 2} of 12" in out
    # The kept epoch preceded the restart, so the history lacks its figure; an older run.json without
    # "figure" shows none rather than another epoch's.
    assert figures({"record": record, "metrics": None}) == {"kept_epoch": f"{best}/{best + 2}",
                                                            "val_loss": pytest.approx(val_loss[best - 1])}
    del record["validation"]["figure"]
    assert figures({"record": record, "metrics": None}) == {"kept_epoch": f"{best}/{best + 2}", "val_loss": None}
    columns = run.trained_columns(config)
    validation_rows = run.validation_split(run.load_frames(config)[0], config)[1]
    saved = load_model(config.output_file("model.keras")).evaluate(
        df_to_dataset(run.prepare(validation_rows, columns), columns, "click", shuffle=False, batch_size=32),
        return_dict=True, verbose=0)
    assert saved["loss"] == pytest.approx(val_loss[best - 1], abs=1e-5)  # the best epoch's weights, from the backup


def test_validation_with_too_few_rows_of_a_class_for_its_auc_is_refused_before_training(tmp_path, capsys):
    df = overfitting_frame(rows=100)
    df.loc[df["ts"] >= 64, "click"] = 0  # the validation rows (the last of the training split) never click
    df.to_csv(tmp_path / "d.csv", index=False)
    text = ("data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\nsplit: {order_by: ts}\n"
            "columns: {exclude: [ts], sequences: {hist_item_id: {}}}\ntrain: {validation: {fraction: 0.2, "
            "monitor: val_auc}}\n")
    config = load_config(str(write(tmp_path, text)))
    assert config.train.validation.monitor == "auc"  # Keras' name, val_auc, names it too
    with pytest.raises(ConfigError, match=r"train.validation: the 16 validation rows' 'click' is always 0, so their "
                                          r"AUC is undefined; raise train.validation.fraction or monitor loss"):
        run.train(config, verbose=0)
    df.loc[df["ts"] == 70, "click"] = 1  # one click: an AUC, but a noisy one
    df.to_csv(tmp_path / "d.csv", index=False)
    capsys.readouterr()
    run.validation_split(run.load_frames(config)[0], config)
    assert "note: the validation rows hold 1 of 'click' = 1: an AUC of so few moves by chance" in capsys.readouterr().out


def test_a_seed_changes_no_split_ordered_by_a_column():
    split = {"data.train": [{"name": "d.csv", "bytes": 1, "sha256_first_last_mib": "x"}],
             "split": {"test_fraction": 0.2, "order_by": "ts", "seed": 0}}
    reseeded = {**split, "split": {**split["split"], "seed": 1}}
    assert run.same_held_out_rows(split, reseeded)
    unordered = {**split, "split": {**split["split"], "order_by": None}}
    assert not run.same_held_out_rows(unordered, {**unordered, "split": {**unordered["split"], "seed": 1}})


def test_compare_lines_up_runs_by_their_differing_settings_and_flags_figures_that_do_not_compare(tmp_path,
                                                                                                 tfrec_main):
    """`tfrec compare` after a sweep: the settings that differ (not the ones every run shares),
    the epoch kept and the test figures; a run not evaluated, or evaluated on other test rows,
    is named."""
    write_csv_frame(tmp_path / "d.csv")
    path = str(write(tmp_path, "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN}\n"
                               "split: {test_fraction: 0.5}\ncolumns: {exclude: [row_id], sequences: "
                               "{hist_item_id: {}}}\ntrain: {batch_size: 2}\n"))
    sweep = {"a": [], "b": ["train.learning_rate=0.01", "train.validation={fraction: 0.25, monitor: loss}"],
             "c": ["split.seed=1"]}
    for name, overrides in sweep.items():
        args = ["--config", path, "--output", tmp_path / name] + [a for o in overrides for a in ("--set", o)]
        assert tfrec_main("train", "--progress", "none", *args)[0] == 0 and tfrec_main("evaluate", *args)[0] == 0
    shutil.copytree(tmp_path / "a", tmp_path / "a_unevaluated")
    os.remove(tmp_path / "a_unevaluated" / "metrics.json")

    def compare(*names):
        code, out, _ = tfrec_main("compare", *[tmp_path / name for name in names])
        assert code == 0
        lines = out.splitlines()
        table = [line.split() for line in lines if not line.startswith("note: ")]
        return table[0], {row[0]: dict(zip(table[0], row)) for row in table[1:]}, \
            [line for line in lines if line.startswith("note: ")]

    header, rows, notes = compare("a", "b")
    record = json.loads((tmp_path / "b" / "run.json").read_text())
    auc = json.loads((tmp_path / "b" / "metrics.json").read_text())["tasks"]["prediction"]["auc"]
    assert header == ["run", "train.learning_rate", "train.validation.fraction", "train.validation.monitor", "rows",
                      "kept_epoch", "val_loss", "auc", "logloss"] and notes == []
    b = rows[str(tmp_path / "b")]
    assert b["train.learning_rate"] == "0.0100" and b["train.validation.fraction"] == "0.2500"
    kept = record["validation"]["best_epoch"]
    assert b["rows"] == "3" and b["kept_epoch"] == f"{kept}/1" and b["val_loss"] == f"{record['history']['val_loss'][kept - 1]:.4f}"
    assert b["auc"] == f"{auc:.4f}" and rows[str(tmp_path / "a")]["val_loss"] == "-"

    header, rows, notes = compare("a", "c", "a_unevaluated")
    assert header[1:3] == ["split.seed", "rows"] and rows[str(tmp_path / "a_unevaluated")]["auc"] == "-"
    assert notes == [f"note: {tmp_path / 'a_unevaluated'}: not evaluated (`tfrec evaluate --config ... --output "
                     f"{tmp_path / 'a_unevaluated'}`)",
                     f"note: the test figures come from different test rows, so they do not compare: "
                     f"{tmp_path / 'a'}; {tmp_path / 'c'}"]
    shutil.copytree(tmp_path / "b", tmp_path / "b_half")  # as if validated on half the training rows
    record["train"]["validation"]["fraction"] = record["settings"]["train"]["validation"]["fraction"] = 0.5
    (tmp_path / "b_half" / "run.json").write_text(json.dumps(record))
    assert compare("b", "b_half", "b")[2] == [
        f"note: the validation figures come from different validation rows, so they do not compare: "
        f"{tmp_path / 'b'}, {tmp_path / 'b'}; {tmp_path / 'b_half'}", f"note: given more than once: {tmp_path / 'b'}"]
    header, _, _ = compare("b")  # one run: its overrides
    assert header[:5] == ["run", "train.learning_rate", "train.validation.fraction", "train.validation.monitor",
                          "train.validation.patience"]

    # Sorted best first, and for a script: JSON (notes included) and CSV (unrounded; notes on stderr).
    folders = [str(tmp_path / name) for name in ("a", "b", "c", "a_unevaluated")]
    aucs = {folder: json.loads(open(os.path.join(folder, "metrics.json")).read())["tasks"]["prediction"]["auc"]
            for folder in folders[:3]}
    code, out, _ = tfrec_main("compare", "--sort", "auc", "--format", "json", *folders)
    assert code == 0
    report = json.loads(out)
    assert [run["run"] for run in report["runs"]] == sorted(aucs, key=aucs.get, reverse=True) + folders[3:]
    assert [run["auc"] for run in report["runs"]][:3] == sorted(aucs.values(), reverse=True)
    assert report["columns"][0] == "run" and len(report["notes"]) == 2
    code, out, err = tfrec_main("compare", "--sort", "logloss", "--format", "csv", *folders)
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    loglosses = [float(row["logloss"]) for row in table[:3]]
    assert loglosses == sorted(loglosses) and table[3]["logloss"] == "" and table[3]["run"] == folders[3]
    assert err.count("note: ") == 2
    code, _, err = tfrec_main("compare", "--sort", "ndcg", *folders)
    assert code == 1
    assert "tfrec compare: error: --sort ndcg: no such column; the columns are split.seed, train.learning_rate" in err
    code, _, err = tfrec_main("compare", tmp_path / "a", tmp_path / "nothing")
    assert code == 1
    assert f"tfrec compare: error: {tmp_path / 'nothing'}: not a run folder: no such folder" in err
    (tmp_path / "training").mkdir()  # a run of the sweep still training: no run.json yet
    code, out, _ = tfrec_main("compare", *folders, tmp_path / "training")
    assert code == 0 and len(out.splitlines()) > len(folders)
    assert f"note: {tmp_path / 'training'}: left out: no run.json yet (a run still training, or not a run " \
           "folder)" in out
    code, _, err = tfrec_main("compare", tmp_path / "training")
    assert code == 1 and "not a run folder: no run.json, which `tfrec train --config` writes" in err


def test_compare_ranks_a_nan_figure_last_and_writes_it_as_json_null():
    """A NaN figure (a diverged validation) has no rank: sorted with the others it would leave
    their order to chance. JSON has no NaN, so `--format json` writes null."""
    from tfrec.runs import format_json, sort_rows

    header = ["run", "val_auc", "val_loss"]
    rows = [["mid", 0.5, 0.6], ["nan", float("nan"), float("nan")], ["high", 0.9, float("inf")], ["low", 0.1, 0.3],
            ["none", None, None]]
    assert [row[0] for row in sort_rows(header, rows, "val_auc")] == ["high", "mid", "low", "nan", "none"]
    assert [row[0] for row in sort_rows(header, rows, "val_loss")] == ["low", "mid", "high", "nan", "none"]
    report = json.loads(format_json(header, rows, []), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert [run["val_loss"] for run in report["runs"]] == [0.6, None, None, 0.3, None]


def test_compare_sorts_the_numbers_within_text_by_value():
    """kept_epoch "10/12" sorted as text came before "3/5"; so did hidden units [128,64] before [64,32]."""
    from tfrec.runs import sort_rows

    header = ["run", "kept_epoch", "model.args.dnn_hidden_units"]
    rows = [["a", "10/12", [128, 64]], ["b", "3/5", [64, 32]], ["c", "3/12", [256]], ["d", None, None]]
    assert [row[0] for row in sort_rows(header, rows, "kept_epoch")] == ["b", "c", "a", "d"]
    assert [row[0] for row in sort_rows(header, rows, "model.args.dnn_hidden_units")] == ["b", "a", "c", "d"]


def test_compare_names_a_run_file_that_is_not_json(tmp_path, tfrec_main):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "run.json").write_text('{"config": ')  # cut short (a full disk, an editor)
    code, _, err = tfrec_main("compare", tmp_path / "a")
    assert code == 1
    assert f"tfrec compare: error: {tmp_path / 'a' / 'run.json'} is not valid JSON (Expecting value: line 1 column " \
           "12 (char 11)): cut short or edited by hand; `tfrec train --config` writes it again" in err


def test_a_run_killed_during_its_last_validation_after_its_last_backup_finishes_when_started_again(tmp_path,
                                                                                                  monkeypatch):
    """12 steps an epoch and a backup every 4: the last step of the last epoch is backed up before
    that epoch's validation. A run killed during it, resumed from that backup, would run no epoch
    (no validation figure to pick the kept epoch by), and so fail at every restart."""
    import tensorflow as tf

    overfitting_frame().to_csv(tmp_path / "d.csv", index=False)
    config = load_config(str(write(tmp_path, (
        "data: {train: d.csv}\nlabels: click\nmodel: {name: DIN, args: {dnn_hidden_units: [8]}}\n"
        "split: {test_fraction: 0.2, order_by: ts}\ncolumns: {exclude: [ts], sequences: {hist_item_id: {}}}\n"
        "strategy: {checkpoint_dir: backup, save_freq: 4}\n"
        "train: {epochs: 2, batch_size: 32, validation: {fraction: 0.25, monitor: loss}}\n"))))
    on_epoch_end = tf.keras.callbacks.EarlyStopping.on_epoch_end

    def dies_in_the_last_validation(stopping, epoch, logs=None):
        on_epoch_end(stopping, epoch, logs)
        if epoch == 1:
            raise KeyboardInterrupt  # as a killed process: no on_train_end, the backup stays

    monkeypatch.setattr(tf.keras.callbacks.EarlyStopping, "on_epoch_end", dies_in_the_last_validation)
    with pytest.raises(KeyboardInterrupt):
        run.train(config, verbose=0)
    monkeypatch.undo()
    run.train(config, verbose=0)
    record = json.loads((tmp_path / "runs" / "run" / "run.json").read_text())
    assert record["rows"] == 360 and record["validation"]["epochs"] == 2
    assert len(record["history"]["val_loss"]) == 1  # the last epoch again, from its backup before its last steps
