import feature_columns._legacy_keras  # noqa: F401

import os

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

import exporters


def parse(text):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def test_round_trips_every_option_through_text_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = exporters.write_model_config("serving/models.config", [
        {"name": "din", "base_path": "exports/din", "version_policy": ("latest", 2),
         "version_labels": {"stable": 1, "canary": 2}},
        ("mmoe", tmp_path / "exports" / "mmoe", {"version_policy": "all"}),
        ("mind", "exports/mind", {"version_policy": ("specific", [3, 5])}),
        {"name": "esmm", "base_path": "gs://bucket/esmm", "model_platform": "tensorflow",
         "version_policy": "latest"},
        ("sdm", "exports/sdm"),
    ])

    assert path == str(tmp_path / "serving" / "models.config")
    expected = parse(f"""
        model_config_list {{
          config {{
            name: "din" base_path: "{tmp_path}/exports/din" model_platform: "tensorflow"
            model_version_policy {{ latest {{ num_versions: 2 }} }}
            version_labels {{ key: "stable" value: 1 }}
            version_labels {{ key: "canary" value: 2 }}
          }}
          config {{
            name: "mmoe" base_path: "{tmp_path}/exports/mmoe" model_platform: "tensorflow"
            model_version_policy {{ all {{}} }}
          }}
          config {{
            name: "mind" base_path: "{tmp_path}/exports/mind" model_platform: "tensorflow"
            model_version_policy {{ specific {{ versions: 3 versions: 5 }} }}
          }}
          config {{
            name: "esmm" base_path: "gs://bucket/esmm" model_platform: "tensorflow"
            model_version_policy {{ latest {{ num_versions: 1 }} }}
          }}
          config {{
            name: "sdm" base_path: "{tmp_path}/exports/sdm" model_platform: "tensorflow"
          }}
        }}""")
    assert exporters.read_model_config(path) == expected
    with open(path) as config_file:
        assert parse(config_file.read()) == expected
    assert not expected.model_config_list.config[4].HasField("model_version_policy")


def test_a_dict_of_base_paths_is_enough(tmp_path):
    path = exporters.write_model_config(
        tmp_path / "models.config",
        {"din": tmp_path / "din", "mmoe": {"base_path": tmp_path / "mmoe",
                                           "version_policy": ("latest", 3)}})
    config = exporters.read_model_config(path).model_config_list.config

    assert [(model.name, model.base_path, model.model_platform) for model in config] == [
        ("din", str(tmp_path / "din"), "tensorflow"),
        ("mmoe", str(tmp_path / "mmoe"), "tensorflow")]
    assert config[1].model_version_policy.latest.num_versions == 3


def test_rewriting_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "models.config"
    exporters.write_model_config(path, {"din": "exports/din"})
    exporters.write_model_config(path, {"mmoe": "exports/mmoe"})

    assert [model.name for model in exporters.read_model_config(path).model_config_list.config
            ] == ["mmoe"]
    assert os.listdir(tmp_path) == ["models.config"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not tempfile's 0600


@pytest.mark.parametrize("models, error, message", [
    ({"din": "a", "mmoe": "b", "x": {"base_path": "c", "policy": "all"}}, ValueError,
     r"model 'x' has unknown option\(s\) \['policy'\]"),
    ([("din", "a"), ("din", "b")], ValueError, "model 'din' appears more than once"),
    ([{"name": "din"}], ValueError, "model 'din' needs a base_path"),
    ([{"base_path": "a"}], ValueError, "each model needs a non-empty string name"),
    (["din"], ValueError, r"a \(name, base_path\[, options\]\) tuple; got 'din'"),
    ({"din": {"base_path": "a", "version_policy": "newest"}}, ValueError,
     r"model 'din': version_policy must be 'latest', \('latest', n\), 'all'"),
    ({"din": {"base_path": "a", "version_policy": ("specific", [])}}, ValueError,
     "model 'din': version_policy must be"),
    ({"din": {"base_path": "a", "version_policy": ("latest", 0)}}, ValueError,
     r"model 'din': \('latest', n\) needs n >= 1"),
    ({"din": {"base_path": "a", "version_labels": {"stable": -1}}}, ValueError,
     "model 'din': version label 'stable' must be a non-negative integer"),
    ({"din": {"base_path": "a", "version_labels": {"stable": "1"}}}, TypeError,
     "model 'din': version label 'stable' must be a non-negative integer"),
    ({"din": {"base_path": "a", "version_labels": {1: 1}}}, ValueError,
     "model 'din': a version label must be a non-empty string, got 1"),
    ({"din": {"base_path": "a", "version_labels": {"": 1}}}, ValueError,
     "model 'din': a version label must be a non-empty string, got ''"),
    ({"din": {"base_path": "a", "version_labels": ["stable"]}}, ValueError,
     r"model 'din': version_labels must be a mapping \{label: version\}, e.g. \{'stable': 1\}; got \['stable'\]"),
    # beyond the protos' int64 / uint32: protobuf's "Value out of range: 9223372036854775808", naming no model
    ({"din": {"base_path": "a", "version_labels": {"stable": 2**63}}}, ValueError,
     r"model 'din': version label 'stable' must be a non-negative integer of at most 2\*\*63 - 1"),
    ({"din": {"base_path": "a", "version_policy": ("specific", [1, 2**63])}}, ValueError,
     r"model 'din': \('specific', versions\) must be a non-negative integer of at most 2\*\*63 - 1"),
    ({"din": {"base_path": "a", "version_policy": ("latest", 2**32)}}, ValueError,
     r"model 'din': \('latest', n\) needs n >= 1 and below 2\*\*32, got 4294967296"),
])
def test_bad_models_are_refused_and_the_old_file_is_kept(tmp_path, models, error, message):
    path = exporters.write_model_config(tmp_path / "models.config", {"old": "exports/old"})
    with pytest.raises(error, match=message):
        exporters.write_model_config(path, models)
    assert [model.name for model in exporters.read_model_config(path).model_config_list.config
            ] == ["old"]
    assert os.listdir(tmp_path) == ["models.config"]


def test_reading_something_else_names_the_file(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("model_config_list { config { nmae: 'din' } }")
    with pytest.raises(ValueError, match=f"{path} is not a text-format ModelServerConfig"):
        exporters.read_model_config(path)
