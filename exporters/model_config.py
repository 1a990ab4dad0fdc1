"""TF Serving's model config file (`--model_config_file`): which models to serve, from where.

The file is a text-format `tensorflow.serving.ModelServerConfig` with a `model_config_list`:

    model_config_list {
      config {
        name: "din"
        base_path: "/abs/exports/din"
        model_platform: "tensorflow"
        model_version_policy { latest { num_versions: 2 } }
        version_labels { key: "stable" value: 1 }
      }
    }

TF Serving re-reads it while running (`--model_config_file_poll_wait_seconds`), so it is
replaced atomically: a reader sees the old file or the new one, never a partial one.
"""
import feature_columns._legacy_keras  # noqa: F401

import collections.abc
import os

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from exporters.layout import checked_version
from tfrec.files import replaced_atomically

MODEL_OPTIONS = ("model_platform", "version_policy", "version_labels")
DEFAULT_MODEL_PLATFORM = "tensorflow"


def write_model_config(path, models):
    """Writes a TF Serving models.config for `models`, atomically; returns the absolute path.

    Args:
      path: the file to write (its directory is created if missing).
      models: one of
        * {model_name: base_path},
        * {model_name: {"base_path": ..., option: value, ...}},
        * a list of {"name": ..., "base_path": ..., option: value, ...},
        * a list of (name, base_path) or (name, base_path, {option: value}) tuples;
        where the options are
        * model_platform: default "tensorflow";
        * version_policy: "latest" (the newest version), ("latest", n), "all", or
          ("specific", [1, 2]); left out, TF Serving serves the newest version;
        * version_labels: {label: version}, e.g. {"stable": 1, "canary": 2}; labels are
          non-empty strings.
        Base paths are written absolute, relative ones taken from the current directory
        (tensorflow_model_server and `tfrec serve` refuse a relative base_path); URIs such as
        gs://... are kept as they are.

    Raises:
      ValueError: a model lacks a name or base path, a name repeats, or an option is unknown
        or malformed; the message names the model.
      TypeError: a version in an option is not an integer.
    """
    path = os.path.abspath(os.fspath(path))
    text = text_format.MessageToString(model_server_config(models))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with replaced_atomically(path) as config_file:
        config_file.write(text)
    return path


def read_model_config(path):
    """Parses a text-format models.config into a `ModelServerConfig` proto.

    Raises:
      ValueError: the file is not a text-format ModelServerConfig.
    """
    with open(path, encoding="utf-8") as config_file:
        text = config_file.read()
    try:
        return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as error:
        raise ValueError(f"{path} is not a text-format ModelServerConfig: {error}") from None


def model_server_config(models):
    """Returns the `ModelServerConfig` proto for `models` (see `write_model_config`)."""
    config = model_server_config_pb2.ModelServerConfig()
    model_list = config.model_config_list.config
    seen = set()
    for spec in _model_specs(models):
        model = _model_config(spec)
        if model.name in seen:
            raise ValueError(f"model {model.name!r} appears more than once")
        seen.add(model.name)
        model_list.append(model)
    return config


def _model_specs(models):
    """Each model as a dict with "name", "base_path" and any options."""
    if isinstance(models, collections.abc.Mapping):
        return [{"name": name, **(value if isinstance(value, collections.abc.Mapping)
                                  else {"base_path": value})}
                for name, value in models.items()]
    return [dict(model) if isinstance(model, collections.abc.Mapping) else _tuple_spec(model)
            for model in models]


def _tuple_spec(model):
    if not isinstance(model, (tuple, list)) or len(model) not in (2, 3):
        raise ValueError(
            "each model must be a dict or a (name, base_path[, options]) tuple; "
            f"got {model!r}")
    return {"name": model[0], "base_path": model[1], **(model[2] if len(model) == 3 else {})}


def _model_config(spec):
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"each model needs a non-empty string name; got {spec!r}")
    unknown = set(spec) - {"name", "base_path", *MODEL_OPTIONS}
    if unknown:
        raise ValueError(
            f"model {name!r} has unknown option(s) {sorted(unknown)}; the options are "
            f"{list(MODEL_OPTIONS)}")
    if not spec.get("base_path"):
        raise ValueError(f"model {name!r} needs a base_path")
    config = model_server_config_pb2.ModelConfig(
        name=name, base_path=_absolute(spec["base_path"]),
        model_platform=spec.get("model_platform", DEFAULT_MODEL_PLATFORM))
    if spec.get("version_policy") is not None:
        _set_version_policy(config, spec["version_policy"])
    labels = spec.get("version_labels") or {}
    if not isinstance(labels, collections.abc.Mapping):
        raise ValueError(f"model {name!r}: version_labels must be a mapping {{label: version}}, e.g. "
                         f"{{'stable': 1}}; got {labels!r}")
    for label, version in labels.items():
        # an int fails in protobuf ('bad argument type for built-in operation'); no REST path names ""
        if not isinstance(label, str) or not label:
            raise ValueError(f"model {name!r}: a version label must be a non-empty string, got {label!r}")
        config.version_labels[label] = checked_version(
            version, what=f"model {name!r}: version label {label!r}")
    return config


def _absolute(base_path):
    base_path = os.fspath(base_path)
    return base_path if "://" in base_path else os.path.abspath(base_path)


def _set_version_policy(config, policy):
    policy_proto = config.model_version_policy
    if policy == "latest":
        policy_proto.latest.num_versions = 1
    elif policy == "all":
        policy_proto.all.SetInParent()
    elif _is_pair(policy, "latest"):
        num_versions = checked_version(policy[1], what=f"model {config.name!r}: ('latest', n)")
        if not 1 <= num_versions < 2**32:  # TF Serving's num_versions is a uint32
            raise ValueError(
                f"model {config.name!r}: ('latest', n) needs n >= 1 and below 2**32, got {num_versions}")
        policy_proto.latest.num_versions = num_versions
    elif _is_pair(policy, "specific") and not isinstance(policy[1], (str, bytes)) and policy[1]:
        policy_proto.specific.versions.extend(
            checked_version(version, what=f"model {config.name!r}: ('specific', versions)")
            for version in policy[1])
    else:
        raise ValueError(
            f"model {config.name!r}: version_policy must be 'latest', ('latest', n), 'all' or "
            f"('specific', [versions...]); got {policy!r}")


def _is_pair(policy, kind):
    return isinstance(policy, (tuple, list)) and len(policy) == 2 and policy[0] == kind


