"""The versions of one model name (TF Serving's AspiredVersionsManager, for one servable
stream): scanning the base path, the version policy, loading and warming new versions before
they take traffic, unloading the rest without a gap in service, and the per-version states
GetModelStatus reports.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import gc
import logging
import os
import threading

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from exporters import existing_versions
from serving.errors import ServingError, error_from_tf, not_found
from serving.servable import ServableVersion

log = logging.getLogger("serving.version_manager")

_State = get_model_status_pb2.ModelVersionStatus.State


def _version_dirs(base_path):
    """Numeric version directories under a base path: {version: path}; None if missing.

    Other entries (`.tmp-3-abc`, `README`) are ignored, as TF Serving does.
    """
    if not os.path.isdir(base_path):
        return None
    return {version: os.path.join(base_path, str(version))
            for version in existing_versions(base_path) if version < 2**63}


def _fingerprint(path):
    """Changes when a version directory is rewritten, so a failed load is retried then."""
    parts = []
    for relative in ("", "saved_model.pb", "saved_model.pbtxt",
                     os.path.join("variables", "variables.index")):
        try:
            stat = os.stat(os.path.join(path, relative))
        except OSError:
            continue
        parts.append((relative, stat.st_mtime_ns, stat.st_size))
    return tuple(parts)


def aspired_versions(policy, present):
    """Versions a ModelVersionPolicy wants among the present ones (default: latest 1)."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(policy.specific.versions) & set(present)
    num_versions = policy.latest.num_versions if choice == "latest" else 1
    return set(sorted(present, reverse=True)[:max(num_versions, 1)])


def _load_error(error):
    """The ServingError a failed load reports through GetModelStatus."""
    if isinstance(error, ServingError):
        return error
    if isinstance(error, tf.errors.OpError):
        return error_from_tf(error)
    return ServingError(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


class _VersionState:
    __slots__ = ("state", "error", "fingerprint")

    def __init__(self, state, error=None, fingerprint=None):
        self.state = state
        self.error = error
        self.fingerprint = fingerprint


class VersionManager:
    """All versions of one model name.

    `poll()` rescans the base path, loads the versions the policy wants and unloads the rest,
    keeping the newest serving version while no wanted version is available (so a corrupt
    new export never interrupts service). Only the poll thread calls `poll`; request threads
    call `servable`, `version_for_label` and `states`.
    """

    def __init__(self, config, batching=None, enable_warmup=True):
        self.config = config
        self._batching = batching
        self._enable_warmup = enable_warmup
        self._lock = threading.Lock()
        self._serving = {}   # version -> ServableVersion
        self._states = {}    # version -> _VersionState
        self._base_path_missing = False

    @property
    def name(self):
        return self.config.name

    def servable(self, version=None):
        """The version to serve: the given one, or the highest available (NOT_FOUND if none)."""
        with self._lock:
            if version is None:
                if not self._serving:
                    raise not_found(f"Servable not found for request: Latest({self.name})")
                return self._serving[max(self._serving)]
            servable = self._serving.get(version)
        if servable is None:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return servable

    def version_for_label(self, label):
        """The version a label of the model's config points at, or None."""
        labels = self.config.version_labels
        return labels[label] if label in labels else None

    def states(self):
        """{version: (ModelVersionStatus.State, ServingError or None)} of every version seen."""
        with self._lock:
            return {v: (s.state, s.error) for v, s in self._states.items()}

    def _set_state(self, version, state, error=None, fingerprint=None):
        with self._lock:
            self._states[version] = _VersionState(state, error, fingerprint)

    def poll(self):
        present = _version_dirs(self.config.base_path)
        if present is None:
            if not self._base_path_missing:
                log.warning("File system storage path source: base path %s for servable %s "
                            "does not exist; keeping what is loaded",
                            self.config.base_path, self.name)
            self._base_path_missing = True
            return
        self._base_path_missing = False
        wanted = aspired_versions(self.config.model_version_policy, present)
        if not present:
            log.warning("No versions of servable %s found under base path %s. Did you forget "
                        "to name your leaf directory as a number (eg. '/1/')?",
                        self.name, self.config.base_path)
        for version in sorted(wanted, reverse=True):
            if version in self._serving:
                continue
            fingerprint = _fingerprint(present[version])
            previous = self._states.get(version)
            if (previous is not None and previous.error is not None
                    and previous.fingerprint == fingerprint):
                continue  # failed before and unchanged since: do not retry every poll
            self._load(version, present[version], fingerprint)
        self._unload_unwanted(wanted)

    def _load(self, version, path, fingerprint):
        log.info("Loading servable: {name: %s version: %d} from %s", self.name, version, path)
        self._set_state(version, _State.LOADING)
        servable = None
        try:
            servable = ServableVersion(self.name, version, path, self._batching)
            if self._enable_warmup:
                servable.warm_up()
        except Exception as error:  # noqa: BLE001 - a bad export must not stop the server
            if servable is not None:
                servable.close()
            self._load_failed(version, _load_error(error), fingerprint)
            return
        with self._lock:
            self._serving[version] = servable
            self._states[version] = _VersionState(_State.AVAILABLE)
        log.info("Successfully loaded servable version {name: %s version: %d}",
                 self.name, version)

    def _load_failed(self, version, error, fingerprint):
        log.error("Loading servable: {name: %s version: %d} failed: %s: %s",
                  self.name, version, error.code.name, error.message)
        self._set_state(version, _State.END, error, fingerprint)

    def _unload_unwanted(self, wanted):
        unwanted = [v for v in self._serving if v not in wanted]
        if not unwanted:
            return
        wanted_serving = any(v in self._serving for v in wanted)
        if not wanted_serving and wanted:
            # TF Serving's availability-preserving policy: keep the newest serving version
            # until a wanted one is available.
            unwanted.remove(max(unwanted))
        for version in unwanted:
            self.unload(version)

    def unload(self, version):
        log.info("Unloading servable version {name: %s version: %d}", self.name, version)
        self._set_state(version, _State.UNLOADING)
        with self._lock:
            servable = self._serving.pop(version)
        servable.close()
        del servable
        gc.collect()
        self._set_state(version, _State.END)

    def unload_all(self):
        for version in sorted(self._serving):
            self.unload(version)
