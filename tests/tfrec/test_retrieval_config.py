"""Retrieval from your own interaction log through the `tfrec` command.

`examples/retrieval_mind.yaml` (the CSV log the repository ships) -> `tfrec train` -> `tfrec
evaluate` (recall@50 against popularity and the planted truth behind the example data) ->
`tfrec export` -> `tfrec serve` -> gRPC Predict, whose top k must be the trained towers' exact top
k; YoutubeDNN and SDM from the same config with model.name changed; a `data.items` catalogue;
the config's mistakes as one-line errors. The commands run in this process (`tfrec.cli.main`,
one TensorFlow process), the server in its own.
"""
import contextlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tfrec.cli import main
from tfrec.data import df_to_inputs

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "retrieval_mind.yaml"


def run_config(tmp_path, name="run.yaml", **changes):
    """The example config with `changes` ({section: {key: value}} merged; None drops a key),
    written beside a copy of its data so relative paths hold."""
    config = yaml.safe_load(EXAMPLE.read_text())
    for section, values in changes.items():
        if values is None:
            config.pop(section, None)
        elif isinstance(values, dict):
            config[section] = {**config.get(section, {}), **values}
            config[section] = {k: v for k, v in config[section].items() if v is not None}
        else:
            config[section] = values
    if not (tmp_path / "data").exists():
        shutil.copytree(REPO / "examples" / "data", tmp_path / "data")
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def trained_copy(run, tmp_path):
    """A copy of `run`'s folder (model, columns, metrics) that a test may evaluate into."""
    return str(shutil.copytree(run.output, tmp_path / "trained"))


@pytest.fixture(scope="module")
def mind_run(tmp_path_factory):
    """The example config trained, evaluated and exported (version 1)."""
    root = tmp_path_factory.mktemp("retrieval_run")
    config = run_config(root, output="run", export={"base": "export/mind"})
    for command in ("train", "evaluate", "export"):
        assert main([command, "--config", str(config)]) == 0, command
    from tfrec.config import load_config

    return load_config(str(config))


def planted_example_recalls(config, k):
    """The planted-truth recall@k (oracle, popularity, ...) on the example's test users: the
    example data regenerated as `examples/make_example_data.py` writes it."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from make_example_data import events_data
    finally:
        sys.path.pop(0)
    from tfrec import retrieval_run
    from tfrec.data import planted_recalls

    train, test = retrieval_run.samples(config)
    return planted_recalls(events_data(), train, test, k=k)


def test_mind_from_a_config_retrieves_clearly_better_than_popularity(mind_run):
    report = json.loads(Path(mind_run.output_file("metrics.json")).read_text())
    planted = planted_example_recalls(mind_run, 50)
    print(f"MIND from examples/retrieval_mind.yaml: recall@50 {report['model']['recall']:.3f}, popularity "
          f"{report['popularity']['recall']:.3f}, planted oracle {planted['oracle']:.3f} ({report['rows']} users)")
    assert report["rows"] == 500 and report["candidates"] == 299 and report["k"] == 50
    assert report["popularity"]["recall"] == pytest.approx(planted["popularity"])  # the same baseline
    assert report["model"]["recall"] > report["popularity"]["recall"] + 0.08
    assert report["model"]["recall"] < planted["oracle"] + 0.05  # nothing leaks the held-out event
    assert report["model"]["ndcg"] > report["popularity"]["ndcg"]
    assert report["model"]["hit_rate"] == report["model"]["recall"]  # one held-out item per user


def test_served_export_answers_the_trained_towers_exact_top_k_over_grpc(mind_run, tfrec_main):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving import Client
    from serving.local import LocalServer
    from tfrec import retrieval_run
    from tfrec.config import trained
    from tfrec.data import df_to_inputs
    from tfrec.evaluation import rank_candidates

    base = Path(mind_run.export.base)
    assert sorted(p.name for p in base.parent.iterdir()) == ["mind", "mind_brute_force", "mind_item_embeddings",
                                                              "mind_user_tower"]
    model, columns = trained(mind_run)
    train, test = retrieval_run.samples(mind_run)
    items = retrieval_run.catalogue(mind_run, train, retrieval_run.item_feature(mind_run, columns))
    user_columns = [c for c in columns if c.name != "item_id"]
    users = df_to_inputs(test.head(8), user_columns)
    item_column = next(c for c in columns if c.name == "item_id")
    expected = items["item_id"].to_numpy()[rank_candidates(model, users, df_to_inputs(items, [item_column]), 50)]
    asked = [test["user_id"].iloc[3], test["user_id"].iloc[0], test["user_id"].iloc[3]]
    requests = retrieval_run.user_requests(mind_run, asked)
    with LocalServer(model_base_path=str(base), model_name="mind", rest=False) as server, \
            Client(server.grpc_target, timeout=60) as client:
        outputs = client.predict("mind", users)
        by_request = client.predict("mind", requests)
        # The built request is what a raw TF Serving client sends: numpy arrays as they are.
        raw = predict_pb2.PredictRequest()
        raw.model_spec.name = "mind"
        for name, values in requests.items():
            raw.inputs[name].CopyFrom(tf.make_tensor_proto(values))
        with grpc.insecure_channel(server.grpc_target) as channel:
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(raw, timeout=60)
        raw_ids = tf.make_ndarray(answer.outputs["item_ids"])
        code, out, err = tfrec_main("query", "--target", server.grpc_target, "--model-name", "mind", "--config",
                                    mind_run.path, *[arg for user in asked for arg in ("--user", user)])
    # tfrec query --user: each user asked with every event of theirs in the log, the last included.
    assert code == 0, err
    assert json.loads(out)["item_ids"] == np.vectorize(lambda b: b.decode())(by_request["item_ids"]).tolist()
    np.testing.assert_array_equal(raw_ids, by_request["item_ids"])
    log = retrieval_run.read_log(mind_run)
    for row, user in enumerate(asked):
        events = log[log["user_id"] == user].sort_values("timestamp", kind="stable")
        recent = events["item_id"].tolist()[-mind_run.retrieval.seq_maxlen:]
        assert requests["hist_item_id"][row][:len(recent)].tolist() == recent and requests["hist_len"][row] == len(recent)
        assert requests["gender"][row] == events["gender"].iloc[-1]
    assert tfrec_main("query", "--model-name", "mind", "--config", mind_run.path, "--user", "nobody")[2].count(
        "no event of user(s) ['nobody'] in the log") == 1
    assert "give the request with --inputs, or --config with --user" in tfrec_main("query", "--model-name", "mind")[2]
    assert "--user needs --config" in tfrec_main("query", "--model-name", "mind", "--user", "u1")[2]
    served = np.vectorize(lambda b: b.decode())(outputs["item_ids"])
    assert served.shape == (8, 50)
    assert set(served.ravel()) <= set(items["item_id"])
    np.testing.assert_array_equal(served[:, :10], expected[:, :10])  # exact search on both sides
    assert all(len(set(row)) == 50 for row in served)  # MIND's two interests merged, each item once


def saved_models_validation_recall(config_path):
    """recall@retrieval.k of a run's saved model on its validation samples, ranked here."""
    from tfrec import config as run
    from tfrec import retrieval_run
    from tfrec.evaluation import rank_candidates
    from tfrec.metrics import recall_at_k

    config = run.load_config(config_path)
    train_df, validation_df = run.validation_split(retrieval_run.samples(config)[0], config)
    model, every = run.trained(config)
    held_out = retrieval_run.ranking_inputs(config, every, train_df, validation_df)
    ranked = held_out.candidate_ids[rank_candidates(model, held_out.user_inputs, held_out.candidate_inputs,
                                                    config.retrieval.k, held_out.excluded)]
    return recall_at_k(held_out.truth, ranked, config.retrieval.k)


@pytest.mark.parametrize("model", [
    {"name": "YoutubeDNN", "args": {"user_dnn_hidden_units": [32, 16], "temperature": 0.1}},
    {"name": "SDM", "args": {"rnn_layers": 1, "num_head": 2, "temperature": 0.1}},
], ids=["YoutubeDNN", "SDM"])
def test_youtubednn_and_sdm_train_from_the_same_config(model, tmp_path, tfrec_main):
    """YoutubeDNN also holds a tenth of its samples out to choose its epoch by their recall@k
    (the default monitor), which ranks the whole catalogue as evaluation does: the model saved
    is the best epoch's, whose recall on those samples is the one logged for it."""
    validation = model["name"] == "YoutubeDNN"
    config = run_config(tmp_path, model=model, output="run", train={"validation": {"fraction": 0.1}} if validation
                        else {})
    code, out, _ = tfrec_main("train", "--config", config)
    assert code == 0
    if validation:
        record = json.loads((tmp_path / "run" / "run.json").read_text())
        val_recall = record["history"]["val_recall"]
        assert len(val_recall) == len(record["history"]["val_loss"]) == 8
        best = record["validation"]["best_epoch"]
        assert best == int(np.argmax(val_recall)) + 1
        assert record["validation"]["rows"] == round((record["rows"] + record["validation"]["rows"]) * 0.1)
        assert "of the training samples (at random), not trained on; the epoch with the best val_recall is kept" in out
        assert f"kept epoch {best} (val_recall {val_recall[best - 1]:.4f})" in out
        assert f"val_recall: {val_recall[-1]:.4f}" in out  # on Keras' line of the last epoch
        assert saved_models_validation_recall(config) == pytest.approx(val_recall[best - 1], abs=1e-9)
        assert max(val_recall) > min(val_recall)  # the figure moves with training
    code, out, _ = tfrec_main("evaluate", "--config", config)
    assert code == 0
    print(out)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"recall@50 {report['model']['recall']:.4f}" in out
    assert report["model"]["recall"] > report["popularity"]["recall"] + 0.05
    columns = json.loads((tmp_path / "run" / "columns.json").read_text())
    names = [c["name"] for c in columns]
    if model["name"] == "SDM":  # the short-term session (default 5 events) and the long-term preference
        assert {"short_item_id", "prefer_item_id", "short_cate_id", "prefer_cate_id"} <= set(names)
        assert next(c for c in columns if c["name"] == "short_item_id")["maxlen"] == 5
    else:
        assert {"hist_item_id", "hist_cate_id"} <= set(names)
    assert {"gender", "age", "user_id", "item_id"} <= set(names)


def test_a_catalogue_file_is_what_evaluation_ranks_and_the_export_serves(mind_run, tmp_path, tfrec_main, caplog):
    log = pd.read_csv(REPO / "examples" / "data" / "events.csv")
    trained_items = sorted(set(log["item_id"]))
    retired = trained_items[:2]
    catalogue = pd.DataFrame({"item_id": trained_items[2:] + ["i-new"], "title": "x"})
    (tmp_path / "items.csv").write_text(catalogue.to_csv(index=False))
    # export.index: ScaNN from 100 items up (the default builds it from 20,000, exact below).
    config = run_config(tmp_path, data={"items": "items.csv"}, output=trained_copy(mind_run, tmp_path),
                        export={"base": str(tmp_path / "export" / "mind"), "index": {"min_candidates": 100}})
    code, out, _ = tfrec_main("evaluate", "--config", config)
    # "i-new" would get the shared out-of-vocabulary vector: ranked nowhere, served nowhere.
    assert code == 0 and f"ranked among {len(catalogue) - 1} items" in out
    assert f"1 of {len(catalogue)} catalogue items are not in the item vocabulary (e.g. ['i-new'])" in caplog.text
    code, out, _ = tfrec_main("export", "--config", config, "--k", 20)
    assert code == 0
    # Trained items the catalogue no longer lists are named, not dropped silently.
    assert f"not served: 2 of the model's items (not in data.items), e.g. {retired}" in out
    manifest = (Path(out.strip().splitlines()[-1]).parent.parent / "mind_item_embeddings" / "1" / "item_ids.txt")
    assert "i-new" not in manifest.read_text().split() and len(manifest.read_text().split()) == len(catalogue) - 1
    assert b"Scann>" in (tmp_path / "export" / "mind" / "1" / "saved_model.pb").read_bytes()


def test_rank_candidates_warns_of_candidates_sharing_the_out_of_vocabulary_vector(mind_run):
    from tfrec import retrieval_run
    from tfrec.config import trained
    from tfrec.data import df_to_inputs
    from tfrec.evaluation import rank_candidates

    model, columns = trained(mind_run)
    train, test = retrieval_run.samples(mind_run)
    item_column = next(c for c in columns if c.name == "item_id")
    items = pd.DataFrame({"item_id": list(retrieval_run.catalogue(mind_run, train, item_column)["item_id"])
                          + ["i-new", "i-newer"]})
    users = df_to_inputs(test.head(4), [c for c in columns if c is not item_column])
    with pytest.warns(UserWarning, match="2 of 301 candidates have the same vector as another one"):
        rank_candidates(model, users, df_to_inputs(items, [item_column]), 10)
    # A repeated id is refused, as the export refuses it: it held two places of 703 of 1,500 users' top 50.
    repeated = pd.concat([items, items.head(3)], ignore_index=True)
    with pytest.raises(ValueError, match=r"candidate_inputs\['item_id'\] repeats 3 id\(s\), e.g. \["):
        rank_candidates(model, users, df_to_inputs(repeated, [item_column]), 10)


def test_exclude_seen_leaves_each_users_history_out_in_evaluation_and_served_answers(mind_run, tmp_path, tfrec_main):
    from tfrec import retrieval_run
    from tfrec.config import load_config, trained
    from tfrec.data import df_to_inputs
    from tfrec.evaluation import rank_candidates

    path = run_config(tmp_path, retrieval={"exclude_seen": True}, output=trained_copy(mind_run, tmp_path),
                      export={"base": str(tmp_path / "export" / "mind")})
    code, out, _ = tfrec_main("evaluate", "--config", path)
    assert code == 0
    config = load_config(str(path))
    unseen = json.loads(Path(config.output_file("metrics.json")).read_text())
    assert tfrec_main("export", "--config", path)[0] == 0

    import tensorflow as tf

    model, columns = trained(config)
    train, test = retrieval_run.samples(config)
    items = retrieval_run.catalogue(config, train, retrieval_run.item_feature(config, columns))
    users = df_to_inputs(test.head(20), [c for c in columns if c.name != "item_id"])
    served = tf.saved_model.load(str(tmp_path / "export" / "mind_brute_force" / "1")).signatures["serving_default"](
        **{name: tf.constant(values.astype(np.int64) if values.dtype.kind in "iu" else values)  # as served: int64
           for name, values in users.items()})
    served = np.vectorize(lambda b: b.decode())(served["item_ids"].numpy())
    histories = [set(history) for history in test.head(20)["hist_item_id"]]
    assert not any(set(row) & seen for row, seen in zip(served, histories))
    assert sum(len(seen & set(items["item_id"])) for seen in histories) > 20  # there was something to leave out
    positions = {item: i for i, item in enumerate(items["item_id"])}
    excluded = [np.array(sorted(positions[i] for i in seen if i in positions)) for seen in histories]
    expected = items["item_id"].to_numpy()[rank_candidates(model, users, df_to_inputs(
        items, [c for c in columns if c.name == "item_id"]), 50, excluded)]
    np.testing.assert_array_equal(served[:, :10], expected[:, :10])  # evaluation ranks as the export serves
    plain = json.loads(Path(mind_run.output_file("metrics.json")).read_text())
    print(f"recall@50 with exclude_seen {unseen['model']['recall']:.3f}, without {plain['model']['recall']:.3f}; "
          f"popularity {unseen['popularity']['recall']:.3f}, without {plain['popularity']['recall']:.3f}")
    # Planted users come back to items, so leaving out what they have seen costs recall here.
    assert unseen["model"]["recall"] < plain["model"]["recall"]


def test_the_popularity_baseline_leaves_out_what_the_model_may_not_recommend():
    from tfrec.retrieval_run import _popular

    order = np.array(["i1", "i2", "i3", "i4"])
    np.testing.assert_array_equal(_popular(order, 3, 2), [["i1", "i2", "i3"]] * 2)
    ranked = _popular(order, 3, 3, seen=[np.array(["i2"]), np.array([], dtype=str), np.array(["i1", "i3", "i4"])])
    np.testing.assert_array_equal(ranked, [["i1", "i3", "i4"], ["i1", "i2", "i3"], ["i2", "i2", "i2"]])


def test_warm_start_continues_a_retrieval_run_from_its_weights_and_columns(mind_run, tmp_path, tfrec_main):
    """Today's run starts from yesterday's weights and columns; its negatives follow today's
    config (the sampler holds no weights), here frequency-sampled where yesterday's were the batch's."""
    from tfrec.saving import load_model

    config = run_config(tmp_path, output="today", columns=None, retrieval={"sampler": "frequency", "num_sampled": 16},
                        train={"warm_start": mind_run.output, "epochs": 1, "learning_rate": 1e-12})
    code, out, err = tfrec_main("train", "--config", config)
    assert code == 0, err
    assert "negatives: retrieval.sampler 'frequency', num_sampled 16 (the earlier run: 'inbatch', 0)" in out, out
    sampler = load_model(str(tmp_path / "today" / "model.keras"), compile=False).get_layer("negative_sampling")
    assert (sampler.sampler, sampler.num_sampled) == ("frequency", 16)
    assert tfrec_main("evaluate", "--config", config)[0] == 0
    assert json.loads((tmp_path / "today" / "columns.json").read_text()) == \
        json.loads(Path(mind_run.output_file("columns.json")).read_text())
    today = json.loads((tmp_path / "today" / "metrics.json").read_text())
    yesterday = json.loads(Path(mind_run.output_file("metrics.json")).read_text())
    assert today["model"] == pytest.approx(yesterday["model"], abs=0.005)  # the same model, ranked alike


def test_warm_start_gives_todays_new_items_rows_counts_and_a_place_in_the_results(mind_run, tmp_path, tfrec_main):
    """Day 2's log brings six new items (of a new category), each user group clicking its three:
    the warm start grows the item and category tables, counts today's targets for the sampler's
    logQ correction, and ranks a group's third new item in the top k of users who clicked the
    other two; yesterday's items keep their rows."""
    from tfrec import retrieval_run
    from tfrec.config import load_config, trained_columns
    from tfrec.evaluation import rank_candidates
    from tfrec.saving import load_model
    from tfrec.utils import item_counts

    config = run_config(tmp_path, output="today", retrieval={"exclude_seen": True, "seq_maxlen": 30}, columns=None,
                        train={"warm_start": mind_run.output, "epochs": 2})
    log = pd.read_csv(tmp_path / "data" / "events.csv", dtype={"user_id": str})
    rng = np.random.default_rng(0)
    last = log.sort_values("timestamp").groupby("user_id").tail(1).head(120)
    new_events = [row._replace(item_id=item, cate_id="c_new", timestamp=row.timestamp + 60 * (i + 1))
                  for n, row in enumerate(last.itertuples(index=False))
                  for i, item in enumerate(rng.permutation([f"new{n % 2 * 3 + j}" for j in range(1, 4)]))]
    pd.concat([log, pd.DataFrame(new_events)]).to_csv(tmp_path / "data" / "events.csv", index=False)

    code, out, err = tfrec_main("train", "--config", config)
    assert code == 0, err
    assert "growing the vocabularies by the new values (item_id +6, hist_cate_id +1; seen at least once)" in out, out
    assert "not used with train.warm_start: retrieval.seq_maxlen 30 (kept: 20); the model is the earlier run's" in out
    run = load_config(str(config))
    model = load_model(run.output_file("model.keras"), compile=False)
    columns = json.loads((tmp_path / "today" / "columns.json").read_text())
    yesterday = json.loads(Path(mind_run.output_file("columns.json")).read_text())
    item, old_item = columns[-1], yesterday[-1]
    assert item["vocabulary"][:len(old_item["vocabulary"])] == old_item["vocabulary"]
    assert sorted(item["vocabulary"][len(old_item["vocabulary"]):]) == [f"new{j}" for j in range(1, 7)]
    train, test = retrieval_run.samples(run)
    every = trained_columns(run)
    item_column = retrieval_run.item_feature(run, every)
    assert model.get_layer("negative_sampling").get_config()["item_count"] == \
        item_counts(train["item_id"].to_numpy(), item_column).tolist()  # today's targets

    assert tfrec_main("evaluate", "--config", config)[0] == 0
    assert json.loads((tmp_path / "today" / "metrics.json").read_text())["candidates"] == 299 + 6
    clicked = test[test["item_id"].str.startswith("new")].reset_index(drop=True)
    assert len(clicked) == 120
    items = pd.DataFrame({"item_id": item["vocabulary"]}).query("item_id in @train.item_id").reset_index(drop=True)
    ids = items["item_id"].to_numpy()
    seen = [np.flatnonzero(np.isin(ids, history)) for history in clicked["hist_item_id"]]
    top = ids[rank_candidates(model, df_to_inputs(clicked, [c for c in every if c is not item_column]),
                              df_to_inputs(items, [item_column]), 50, seen)]
    hits = np.mean([target in row for target, row in zip(clicked["item_id"], top)])
    print(f"day 2: the third new item in the top 50 of {hits:.0%} of the {len(clicked)} users who clicked two "
          f"(by chance {50 / len(items):.0%}; 89% seen, 75% with new rows started at the initializer)")
    assert hits > 0.8  # new items start at the mean item (with_grown_tables' new_rows="mean")


@pytest.mark.parametrize("changes, message", [
    ({"labels": "click"}, "labels: does not apply to MIND: a retrieval model learns from the events"),
    ({"data": {"test": "data/events.csv"}}, "data.test: does not apply to MIND"),
    ({"retrieval": {"short_sess_length": 3}}, "retrieval.short_sess_length: is SDM's short-term session"),
    ({"retrieval": {"sampler": "popular"}}, "retrieval.sampler: must be one of inbatch, uniform, frequency"),
    ({"retrieval": {"sampler": "uniform"}}, "retrieval.num_sampled: must be an integer >= 1, got 0"),
    ({"retrieval": {"time": "user_id"}}, "retrieval: user, item, category, time and profile name one column each"),
    ({"columns": {"sequences": {"hist_item_id": 5}}}, "columns: MIND's columns come from retrieval:"),
    ({"model": {"name": "DIN", "args": None}, "labels": "click"}, "retrieval: is for the retrieval models"),
    ({"retrieval": {"item": "movie_id"}}, "retrieval.item: 'movie_id' is not a column of the log"),
    ({"retrieval": {"profile": ["gender", "income"]}}, "retrieval.profile: ['income'] are not columns of the log"),
    ({"retrieval": {"min_history": 20}}, "no user has more than 21 events"),
    ({"model": {"args": {"user_dnn_hidden_units": [32, 8]}}}, "model:"),
    ({"model": {"args": {"k_max": 2, "heads": 3}}}, "model.args:"),
])
def test_config_mistakes_are_one_line_errors_naming_the_key(changes, message, tmp_path, tfrec_main):
    config = run_config(tmp_path, output="run", **changes)
    code, _, err = tfrec_main("train", "--config", config)
    assert code == 1
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_evaluate_and_export_refuse_what_a_retrieval_run_cannot_do(mind_run, tmp_path, tfrec_main):
    config = run_config(tmp_path, retrieval={"k": 400}, output=trained_copy(mind_run, tmp_path))
    code, _, err = tfrec_main("evaluate", "--config", config)
    assert code == 1 and "retrieval.k: 400 is more than the 299 items of the catalogue" in err
    code, _, err = tfrec_main("export", "--config", config, "--candidates", "items.csv")
    assert code == 1 and "--candidates is for --model; with --config the catalogue is data.items" in err
    code, _, err = tfrec_main("export", "--config", config, "--k", 0)
    assert code == 1 and "k must be an integer in [1, number of candidates = 299], got 0" in err


def test_export_exclude_adds_to_exclude_seen(mind_run, tmp_path, tfrec_main):
    """With retrieval.exclude_seen, --exclude was dropped without a word, a misspelt feature too."""
    config = run_config(tmp_path, retrieval={"exclude_seen": True}, output=trained_copy(mind_run, tmp_path),
                        export={"base": str(tmp_path / "export" / "mind")})
    code, _, err = tfrec_main("export", "--config", config, "--exclude", "hist_itme_id")
    assert code == 1 and "exclude: 'hist_itme_id' is not a feature of the user tower" in err
    assert not (tmp_path / "export").exists()


def test_evaluate_and_export_of_a_saved_run_log_no_graph_optimizer_errors(mind_run, tmp_path, capfd):
    """A saved run's histories are of any width, so its truncation is a tf.cond, whose outputs
    Grappler took as of unknown rank: every evaluate logged 3 'Error in PredictCost()' lines and
    every export 9, which look like failures in a daily job's log."""
    config = run_config(tmp_path, output=trained_copy(mind_run, tmp_path), export={"base": str(tmp_path / "mind")})
    capfd.readouterr()
    assert main(["evaluate", "--config", str(config)]) == 0
    assert main(["export", "--config", str(config)]) == 0
    err = capfd.readouterr().err
    assert "PredictCost" not in err, err[:2000]


def own_log_config(tmp_path, log, items=None, **retrieval):
    """A config over `log` (and `items`, a catalogue frame), written as Parquet when the frame
    holds ints to keep, else CSV; returns the loaded RunConfig."""
    from tfrec.config import load_config

    log.to_csv(tmp_path / "log.csv", index=False)
    data = {"train": "log.csv"}
    if items is not None:
        items.to_parquet(tmp_path / "items.parquet")
        data["items"] = "items.parquet"
    config = {"data": data, "model": {"name": retrieval.pop("model", "YoutubeDNN")},
              "retrieval": {"category": "genre", "profile": ["age"], "seq_maxlen": 5, **retrieval}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return load_config(str(tmp_path / "run.yaml"))


def events(users, items, times, genres=None, ages=None):
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": times,
                         "genre": genres or ["g"] * len(users), "age": ages or [30] * len(users)})


def test_own_log_ids_times_and_repeats_are_read_as_meant(tmp_path, capsys):
    from tfrec import retrieval_run

    log = events(["000012"] * 3 + ["12"] * 3 + ["7"] * 3,
                 ["007", "7", "8"] * 3,
                 ["2024-3-1 9:05", "2024-3-10 8:00", "2024-3-9 10:00",   # unpadded: text order is not time order
                  "2024-03-02", "2024-03-03", "2024-03-04",               # the last event repeated below
                  "2024-01-01", "2024-01-02", "2024-01-03"])
    log = pd.concat([log, log.iloc[[5]]], ignore_index=True)
    config = own_log_config(tmp_path, log)
    train, test = retrieval_run.samples(config)
    assert "1 repeated event(s) (the same user, item and time) counted once" in capsys.readouterr().out
    assert sorted(test["user_id"]) == ["000012", "12", "7"]  # "000012" and "12" are two users
    last = dict(zip(test["user_id"], test["item_id"]))
    assert last == {"000012": "7", "12": "8", "7": "8"}  # 2024-3-10 is the latest, though "2024-3-10" < "2024-3-9"
    user_columns, item_columns = retrieval_run.columns(config, train)
    assert item_columns[0].dtype == "string" and {"007", "7"} <= set(item_columns[0].vocabulary)
    assert user_columns[0].name == "user_id" and user_columns[0].dtype == "string"
    config.retrieval.embed_user = False
    assert "user_id" not in [c.name for c in retrieval_run.columns(config, train)[0]]


def test_own_log_mistakes_are_named_with_their_fix(tmp_path):
    from tfrec import retrieval_run
    from tfrec.config import ConfigError

    good = events(["u1"] * 4 + ["u2"] * 4, ["i1", "i2", "i3", "i1"] * 2, list(range(8)))
    for log, message in [
        (good.assign(timestamp=["1600000000", "2024-03-01", "x", "y"] * 2),
         "retrieval.time: column 'timestamp' holds '1600000000' in data row 0 (6 such cell(s)); it must hold numbers"),
        (good.assign(timestamp=["13/02/2024", "12/02/2024", "14/02/2024", "15/02/2024"] * 2),  # day or month first?
         "holds '13/02/2024' in data row 0 (8 such cell(s)); it must hold numbers (epoch seconds) or year-first "
         "dates (2024-03-01 09:05); for other dates give retrieval.time_format"),
        (good.assign(age=[30, None] * 4), "retrieval.profile: column 'age' has 4 empty cell(s), the first in data row "
                                          "1; give their value with data: {fill: {age: ...}}"),
        (good.assign(genre=[None, "g"] * 4), "retrieval.category: column 'genre' has 4 empty cell(s)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            retrieval_run.samples(own_log_config(tmp_path, log))
    day_first = good.assign(timestamp=["13/02/2024", "02/03/2024", "11/02/2024", "14/02/2024"] * 2)
    _, test = retrieval_run.samples(own_log_config(tmp_path, day_first, time_format="%d/%m/%Y"))
    assert test["item_id"].tolist() == ["i2", "i2"]  # 2 March is each user's last event ("14/02" as text)
    with _logged("SDM's long-term preference (prefer_*) is always empty"):
        retrieval_run.samples(own_log_config(tmp_path, good, model="SDM", short_sess_length=5))


def test_a_catalogue_of_another_id_type_than_the_log_is_read_as_the_model_takes_ids(tmp_path):
    from tfrec import retrieval_run

    log = events(["u1"] * 4 + ["u2"] * 4, ["1", "2", "3", "1"] * 2, list(range(8)))  # read as text
    config = own_log_config(tmp_path, log, items=pd.DataFrame({"item_id": [1, 2, 3, 99]}))  # Parquet ints
    train, _ = retrieval_run.samples(config)
    item = retrieval_run.columns(config, train)[1][0]
    assert item.dtype == "string"
    assert retrieval_run.catalogue(config, train, item)["item_id"].tolist() == ["1", "2", "3"]  # 99: no row


def test_user_requests_find_the_users_of_a_parquet_log_with_integer_ids(tmp_path, monkeypatch):
    """A Parquet log keeps its int user ids (only a CSV's are read as text): `tfrec query --user
    12` asks for "12", which found no event of user 12 there."""
    from tfrec import config as run
    from tfrec import retrieval_run

    log = events([12] * 3 + [7] * 3, [1, 2, 3, 3, 2, 1], list(range(6)))
    config = own_log_config(tmp_path, log)
    log.to_parquet(tmp_path / "log.parquet")
    config.data.train = [str(tmp_path / "log.parquet")]
    train, _ = retrieval_run.samples(config)
    user_columns, item_columns = retrieval_run.columns(config, train)
    assert user_columns[0].dtype == "int64"
    monkeypatch.setattr(run, "trained_columns", lambda _: user_columns + item_columns)  # no training needed
    requests = retrieval_run.user_requests(config, ["12", 7])
    assert requests["user_id"].tolist() == [12, 7]
    assert requests["hist_item_id"].tolist() == [[1, 2, 3, 0, 0], [3, 2, 1, 0, 0]]
    with pytest.raises(run.ConfigError, match=re.escape("no event of user(s) ['13'] in the log, so there is no "
                                                        "history to ask with (users are asked for by their text, "
                                                        "e.g. '12')")):
        retrieval_run.user_requests(config, ["13"])


def test_a_log_split_over_csv_and_parquet_files_keeps_each_user_one_user(tmp_path):
    """A CSV's ids are read as text and a Parquet file's keep their type: yesterday's events in
    CSV and today's in Parquet made user "12" and user 12 two users, each with half a history
    and a held-out event of its own."""
    from tfrec import retrieval_run

    log = events([12] * 6 + [7] * 6, [1, 2, 3, 4, 5, 6] * 2, list(range(12)))
    yesterday = log["timestamp"] % 6 < 3
    config = own_log_config(tmp_path, log[yesterday])
    log[~yesterday].to_parquet(tmp_path / "today.parquet")
    config.data.train.append(str(tmp_path / "today.parquet"))
    train, test = retrieval_run.samples(config)
    assert test["user_id"].tolist() == ["12", "7"] and test["item_id"].tolist() == ["6", "6"]
    assert test["hist_item_id"].map(list).tolist() == [["1", "2", "3", "4", "5"]] * 2
    assert len(train) == 8


def test_exclude_seen_with_a_k_that_leaves_a_user_too_few_items_is_refused_before_ranking(tmp_path):
    """With retrieval.exclude_seen a user's history is left out of the catalogue they are ranked
    over; a k larger than what is left failed in the ranking with 'a row has fewer than k=2
    candidates left after its exclusions', naming no key (and in train, only after the first
    epoch, when the validation recall ranks)."""
    from tfrec import retrieval_run
    from tfrec.config import ConfigError

    log = events(["u1"] * 4 + ["u2"] * 3, ["i1", "i2", "i3", "i4", "i1", "i4", "i2"], list(range(7)))
    config = own_log_config(tmp_path, log, exclude_seen=True, k=2)  # the catalogue: the targets i2, i3, i4
    train, test = retrieval_run.samples(config)
    every = sum(retrieval_run.columns(config, train), [])
    with pytest.raises(ConfigError, match=re.escape("retrieval.k: 2 is more than the items left to rank for 1 user(s) "
                                                    "once retrieval.exclude_seen leaves their history out "
                                                    "(user 'u1': 1 of the 3 items)")):
        retrieval_run.ranking_inputs(config, every, train, test)
    config.retrieval.k = 1
    assert [len(seen) for seen in retrieval_run.ranking_inputs(config, every, train, test).excluded] == [2, 1]


def test_a_config_whose_retrieval_settings_changed_since_train_is_named_by_evaluate_export_and_query(
        tmp_path, monkeypatch, tfrec_main):
    """The trained model takes the inputs of the samples it was trained on; with retrieval.profile
    or retrieval.item changed since, export (and a warm start from the run) failed with 'feature
    'age' needs column 'age', which the DataFrame lacks' or a bare 'StopIteration', naming no key."""
    from tfrec import config as run
    from tfrec import retrieval_run

    log = events(["u1"] * 4 + ["u2"] * 4, ["i1", "i2", "i3", "i1"] * 2, list(range(8)))
    config = own_log_config(tmp_path, log, k=1)
    train, _ = retrieval_run.samples(config)
    every = sum(retrieval_run.columns(config, train), [])
    monkeypatch.setattr(run, "trained", lambda _: (None, every))  # the model itself is never reached
    monkeypatch.setattr(run, "trained_columns", lambda _: every)
    raw = yaml.safe_load((tmp_path / "run.yaml").read_text())
    for changes, names in [({"profile": []}, "['age']"), ({"item": "genre", "category": None},
                                                           "['hist_item_id', 'item_id']")]:
        (tmp_path / "changed.yaml").write_text(yaml.safe_dump({**raw, "retrieval": {**raw["retrieval"], **changes},
                                                               "output": config.output, "export": {"base": str(tmp_path / "export")}}))
        message = (f"retrieval: the model trained in {config.output} takes {names}, which this config's retrieval: "
                   "settings do not make")
        for command in ("evaluate", "export"):
            code, _, err = tfrec_main(command, "--config", tmp_path / "changed.yaml")
            assert code == 1 and message in err, err
        changed = run.load_config(str(tmp_path / "changed.yaml"))
        with pytest.raises(run.ConfigError, match=re.escape(message)):
            retrieval_run.user_requests(changed, ["u1"])
        # A warm start from that run: refused before its model is loaded.
        changed.train.warm_start = config.output
        monkeypatch.setattr(run, "warm_start_columns", lambda *_: run.WarmStartColumns(every, 1, 1))
        with pytest.raises(run.ConfigError, match=re.escape(message)):
            retrieval_run.train(changed)


def test_a_log_whose_users_last_events_tie_in_time_says_so(tmp_path):
    """Dates without a time of day tie a user's events of one day; the held-out event is then the
    one listed last, which in a newest-first export is the day's first: worth a warning."""
    from tfrec import retrieval_run

    days = ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-03"]
    log = events(["u1"] * 4 + ["u2"] * 4, ["i1", "i2", "i3", "i4"] * 2, days + days[:3] + ["2024-03-04"])
    with _logged("1 of 2 users' last event shares its time with another event of theirs"):
        _, test = retrieval_run.samples(own_log_config(tmp_path, log))
    assert test["item_id"].tolist() == ["i4", "i4"]


@contextlib.contextmanager
def _logged(text):
    """Asserts that the block logs a warning containing `text` (tfrec.retrieval_run's logger)."""
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tfrec.retrieval_run")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert any(text in record.getMessage() for record in records), [r.getMessage() for r in records]
