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
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from exporters import version_directories
from serving.errors import ServingError, error_from_tf, invalid_argument, not_found
from serving.servable import ServableVersion

log = logging.getLogger("serving.version_manager")

_State = get_model_status_pb2.ModelVersionStatus.State


def _version_dirs(base_path):
    """Numeric version directories under a base path: {version: path}; None if missing.

    Other entries (`.tmp-3-abc`, `README`) are ignored, as TF Serving does.
    """
    if not os.path.isdir(base_path):
        return None
    return version_directories(base_path)


def no_version_error(model_config):
    """TF Serving's error (with servable_versions_always_present) when a model's base path is
    missing or holds no version its policy wants, naming the path; else None."""
    path, name = model_config.base_path, model_config.name
    present = _version_dirs(path)
    if present is None:
        return invalid_argument(f"Could not find base path {path} for servable {name}")
    if aspired_versions(model_config.model_version_policy, present):
        return None
    message = f"Unable to find a numerical version path for servable {name} at: {path}"
    policy = model_config.model_version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        message += (f" (its version policy serves versions {sorted(policy.specific.versions)}; the folder "
                    f"holds {sorted(present) or 'none'})")
    return not_found(message)


# TF Serving's defaults (--max_num_load_retries, --load_retry_interval_micros).
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_SECONDS = 60.0


def _fingerprint(path):
    """Changes when a version directory is rewritten (variables.data-* shards included), so
    a version whose load retries ran out is tried again then."""
    relatives = ["", "saved_model.pb", "saved_model.pbtxt",
                 os.path.join("variables", "variables.index")]
    try:
        relatives += sorted(os.path.join("variables", entry)
                            for entry in os.listdir(os.path.join(path, "variables"))
                            if entry.startswith("variables.data"))
    except OSError:
        pass
    parts = []
    for relative in relatives:
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
    __slots__ = ("state", "error", "fingerprint", "retries_done", "retry_at")

    def __init__(self, state, error=None, fingerprint=None, retries_done=0, retry_at=None):
        self.state = state
        self.error = error
        self.fingerprint = fingerprint
        self.retries_done = retries_done  # retries of the current load made so far
        self.retry_at = retry_at          # time.monotonic() of the next retry, or None


class VersionManager:
    """All versions of one model name.

    `poll()` rescans the base path, loads the versions the policy wants and unloads the rest,
    keeping the newest serving version while no wanted version is available (so a corrupt
    new export never interrupts service). Only the poll thread calls `poll` and
    `retry_due_loads`; request threads call `servable`, `version_for_label` and `states`.

    A failed load is retried as TF Serving's LoaderHarness does: up to `max_num_load_retries`
    more times, `load_retry_interval` seconds apart (a version whose variables were still
    being copied loads once the copy is complete). Until the retries are spent GetModelStatus
    shows the version as LOADING with the last failure; then it is END with that error, and is
    tried afresh only if its files change.
    """

    def __init__(self, config, batching=None, enable_warmup=True, max_request_elements=None,
                 max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS):
        self.config = config
        self._batching = batching
        self._enable_warmup = enable_warmup
        self._max_request_elements = max_request_elements
        self._max_num_load_retries = max(0, int(max_num_load_retries))
        self._load_retry_interval = max(0.0, float(load_retry_interval))
        self._lock = threading.Lock()
        self._serving = {}   # version -> ServableVersion
        self._states = {}    # version -> _VersionState
        self._paths = {}     # version -> directory, as the last scan found it
        self._wanted = set()  # the versions the last scan's policy wanted
        self._base_path_missing = False
        self._closed = False  # unloaded for good: a load still running then is closed, not served

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

    def loads_settled(self):
        """True when a version is AVAILABLE, or no version the policy wants is loading or
        waiting for a load retry (its loads succeeded or spent their retries)."""
        with self._lock:
            if self._serving:
                return True
            return not any(s.state == _State.LOADING or s.retry_at is not None
                           for v, s in self._states.items() if v in self._wanted)

    def serves_a_version(self):
        with self._lock:
            return bool(self._serving)

    def next_retry_at(self):
        """time.monotonic() of the earliest pending load retry, or None."""
        with self._lock:
            times = [s.retry_at for v, s in self._states.items()
                     if s.retry_at is not None and v in self._wanted]
        return min(times) if times else None

    def retry_due_loads(self):
        """Retries the failed loads whose retry time has come (without rescanning)."""
        now = time.monotonic()
        due = [v for v in sorted(self._wanted, reverse=True)
               if v not in self._serving and v in self._paths
               and (self._states.get(v) is not None and self._states[v].retry_at is not None
                    and self._states[v].retry_at <= now)]
        for version in due:
            self._retry(version)
        if due:
            self._unload_unwanted(self._wanted)

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
        self._paths = dict(present)
        self._wanted = set(wanted)
        with self._lock:
            self._cancel_retries(v for v in self._states if v not in wanted)
        if not present:
            log.warning("No versions of servable %s found under base path %s. Did you forget "
                        "to name your leaf directory as a number (eg. '/1/')?",
                        self.name, self.config.base_path)
        now = time.monotonic()
        for version in sorted(wanted, reverse=True):
            if version in self._serving:
                continue
            previous = self._states.get(version)
            if previous is not None and previous.error is not None:
                if previous.retry_at is not None:
                    if previous.retry_at <= now:
                        self._retry(version)
                    continue  # a retry is pending
                if previous.fingerprint == _fingerprint(present[version]):
                    continue  # retries spent and unchanged since: do not retry every poll
            self._load(version, present[version])
        self._unload_unwanted(wanted)

    def _cancel_retries(self, versions):
        """Ends the pending load retries of `versions` (under the lock): their failure is final,
        END as TF Serving's CancelLoadServableRetry ends it (LOADING would stay for good)."""
        for version in versions:
            state = self._states[version]
            if state.retry_at is not None:
                state.retry_at = None
                state.state = _State.END

    def _retry(self, version):
        previous = self._states[version]
        attempt = previous.retries_done + 1
        log.info("Retrying of Loading servable: {name: %s version: %d} retry: %d",
                 self.name, version, attempt)
        self._load(version, self._paths[version], retries_done=attempt)

    def _load(self, version, path, retries_done=0):
        log.info("Loading servable: {name: %s version: %d} from %s", self.name, version, path)
        fingerprint = _fingerprint(path)  # before: files completed during the try count
        with self._lock:
            previous = self._states.get(version)
            # A retry keeps showing the last failure while it runs.
            error = previous.error if retries_done and previous is not None else None
            self._states[version] = _VersionState(_State.LOADING, error,
                                                  retries_done=retries_done)
        servable = None
        try:
            servable = ServableVersion(self.name, version, path, self._batching,
                                       self._max_request_elements)
            if self._enable_warmup:
                servable.warm_up()
        except Exception as error:  # noqa: BLE001 - a bad export must not stop the server
            if servable is not None:
                servable.close()
            self._load_failed(version, _load_error(error), fingerprint, retries_done)
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._serving[version] = servable
                self._states[version] = _VersionState(_State.AVAILABLE)
        if closed:  # its model was removed or moved while it loaded
            servable.close()
            self._set_state(version, _State.END)
            log.info("Loaded servable version {name: %s version: %d} after its model was unloaded; closed it",
                     self.name, version)
            return
        log.info("Successfully loaded servable version {name: %s version: %d}",
                 self.name, version)

    def _load_failed(self, version, error, fingerprint, retries_done):
        log.error("Loading servable: {name: %s version: %d} failed: %s: %s",
                  self.name, version, error.code.name, error.message)
        with self._lock:
            if retries_done < self._max_num_load_retries:
                # LOADING until the next try, as TF Serving's LoaderHarness is while it sleeps
                # between tries (END would read as final), with the failure as its status
                # where TF Serving shows OK, so that GetModelStatus says why it is retrying.
                self._states[version] = _VersionState(
                    _State.LOADING, error, fingerprint, retries_done,
                    retry_at=time.monotonic() + self._load_retry_interval)
                return
            self._states[version] = _VersionState(_State.END, error, fingerprint,
                                                  retries_done)
        if self._max_num_load_retries:
            log.error("Loading servable: {name: %s version: %d} failed after %d retries; "
                      "it is tried again if its files change", self.name, version,
                      retries_done)

    def _unload_unwanted(self, wanted):
        with self._lock:
            serving = set(self._serving)
        unwanted = [v for v in serving if v not in wanted]
        if not unwanted:
            return
        wanted_serving = any(v in serving for v in wanted)
        if not wanted_serving and wanted:
            # TF Serving's availability-preserving policy: keep the newest serving version
            # until a wanted one is available.
            unwanted.remove(max(unwanted))
        for version in unwanted:
            self.unload(version)

    def unload(self, version):
        with self._lock:
            servable = self._serving.pop(version, None)
        if servable is None:  # unloaded meanwhile by another thread
            return
        log.info("Unloading servable version {name: %s version: %d}", self.name, version)
        self._set_state(version, _State.UNLOADING)
        servable.close()
        del servable
        gc.collect()
        self._set_state(version, _State.END)

    def unload_all(self):
        """Unloads every version for good (a load still running is closed when it ends)."""
        with self._lock:
            self._closed = True
            versions = sorted(self._serving)
            self._cancel_retries(list(self._states))
        for version in versions:
            self.unload(version)
