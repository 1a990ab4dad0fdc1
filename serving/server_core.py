"""The models of a ModelServerConfig (what TF Serving's ServerCore does): a poll thread
that rescans every base path, config reloads, ModelSpec -> version resolution and
GetModelStatus.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import logging
import os
import threading
import time
import weakref
from concurrent import futures

import grpc
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.bundle import import_scann_ops
from serving.errors import ServingError, invalid_argument, not_found
from serving.tensors import return_large_buffers_to_the_system
from serving.version_manager import (DEFAULT_LOAD_RETRY_INTERVAL_SECONDS,
                                     DEFAULT_MAX_NUM_LOAD_RETRIES, VersionManager, no_version_error)

log = logging.getLogger("serving.server_core")

_AVAILABLE = get_model_status_pb2.ModelVersionStatus.State.AVAILABLE


def validate_config(config):
    """Checks a ModelServerConfig this server can serve; raises INVALID_ARGUMENT otherwise."""
    if config.WhichOneof("config") == "custom_model_config":
        raise invalid_argument("custom_model_config is not supported by this server")
    names = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise invalid_argument("A model in model_config_list has no name")
        if model.name in names:
            raise invalid_argument(f"Illegal to list model {model.name} multiple times in config "
                                   f"list")
        names.add(model.name)
        if not model.base_path:
            raise invalid_argument(f"Model {model.name} has no base_path")
        if "://" not in model.base_path and not os.path.isabs(model.base_path):
            # As TF Serving's ValidateModelConfigList (tensorflow_model_server sets no
            # model_config_list_root_dir): relative to what would depend on where the server runs.
            raise invalid_argument(f"Expected model {model.name} to have an absolute path or URI; got "
                                   f"base_path()={model.base_path}")
        if model.model_platform not in ("", "tensorflow"):
            raise invalid_argument(
                f"Model {model.name} has model_platform {model.model_platform!r}; this server "
                f"serves TensorFlow SavedModels (model_platform: \"tensorflow\") only")


def single_model_config(model_name, base_path):
    """The ModelServerConfig that --model_name / --model_base_path describe."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = os.path.abspath(base_path)
    model.model_platform = "tensorflow"
    return config


def _with_labels(model_config, labels):
    """A copy of a ModelConfig whose version_labels are `labels`."""
    copy = type(model_config)()
    copy.CopyFrom(model_config)
    copy.version_labels.clear()
    copy.version_labels.update(labels)
    return copy


def _labels_of(config):
    """{model: {label: version}} of a ModelServerConfig."""
    return {m.name: dict(m.version_labels) for m in config.model_config_list.config}


def _timed_out():
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                        "Timed out waiting for the new model config to load")


class ServerCore:
    """Models of a ModelServerConfig, kept in sync with their base paths by a poll thread.

    Args:
      config: ModelServerConfig (model_config_list).
      poll_wait_seconds: seconds between rescans of the base paths; <= 0 scans only at
        start and on config reloads.
      batching: `BatchingOptions` for --enable_batching, or None.
      enable_warmup: replay each version's warm-up requests before serving it.
      max_request_elements: --max_request_elements (None: sized to the machine's memory).
      max_num_load_retries, load_retry_interval: --max_num_load_retries and
        --load_retry_interval_micros (in seconds here); retries run on the poll thread when
        due, also when polling is off.
      allow_labels_for_unavailable: --allow_version_labels_for_unavailable_models; when
        False, a start-up config (see `wait_until_started`) or a config reload whose labels name
        versions that are not AVAILABLE is refused; when True, only a reload that moves an
        existing label to such a version.
      num_load_threads: --num_load_threads: this many threads poll and load the models, each
        model's on one thread at a time, and the poll thread does not wait for them: a model with
        a slow load (a large export, a slow disk, a long warm-up, a read that never returns) holds
        back neither the other models' new versions nor their polls (it is polled again once its
        load is done); 0 (TF Serving's default) polls and loads them one after another on the
        poll thread.
    """

    def __init__(self, config, poll_wait_seconds=1.0, batching=None, enable_warmup=True,
                 max_request_elements=None, max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS, allow_labels_for_unavailable=False,
                 num_load_threads=0):
        validate_config(config)
        self._allow_labels_for_unavailable = allow_labels_for_unavailable
        import_scann_ops()
        return_large_buffers_to_the_system()
        self._poll_wait_seconds = poll_wait_seconds
        self._batching = batching
        self._enable_warmup = enable_warmup
        self._version_options = dict(max_request_elements=max_request_elements,
                                     max_num_load_retries=max_num_load_retries,
                                     load_retry_interval=load_retry_interval)
        self._models = {}
        self._replacing = {}  # name -> the manager of a new base path, loaded before it takes over
        self._retired = []
        self._removed = {}  # name -> the manager of a model a reload removed: its versions' END states
        self._busy = {}  # VersionManager -> the Future of its poll or retries on the load threads
        self._lock = threading.Lock()
        # One reload at a time, as TF Serving's ServerCore holds config_mu_ through ReloadConfig:
        # an earlier reload still waiting for its loads would otherwise install its labels over
        # those of a later one that had already answered OK.
        self._reload_lock = threading.Lock()
        self._poll_cond = threading.Condition()
        self._config_generation = 0   # bumped by every config change (under _lock)
        self._polled_at = weakref.WeakKeyDictionary()  # VersionManager -> config generation of its last poll
        self._skipped = set()  # busy models a poll passed over: polled again when their job ends
        self._poll_requested = False
        self._job_ended = False
        self._stopping = False
        self._thread = None
        self._loaders = futures.ThreadPoolExecutor(num_load_threads, thread_name_prefix="model-loader") \
            if num_load_threads > 0 else None
        self._apply_config(config)
        self._start_up_labels = _labels_of(config)

    def start(self):
        """Loads the initial versions of every model (with load threads: starts their loads;
        `wait_until_started` waits for them), then starts the poll thread."""
        self._poll_all()
        self._thread = threading.Thread(target=self._poll_loop, name="model-poller",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout=30):
        """Ends the poll thread and the load threads, waiting up to `timeout` seconds for the
        loads they are in; returns False when one is still in a load (a file system read that
        never returns) then, which the process should not wait for at exit."""
        deadline = time.monotonic() + timeout
        with self._poll_cond:
            self._stopping = True
            self._poll_cond.notify_all()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                log.warning("The model poller is still in a load or a file system read after %.0f s; stopping "
                            "without it (GetModelStatus shows the version it was loading)", timeout)
                ended = False
        if self._loaders is not None:
            with self._lock:
                jobs = list(self._busy.values())
            _, running = futures.wait(jobs, timeout=max(0.0, deadline - time.monotonic()))
            if running:
                log.warning("%d load thread(s) still in a load or a file system read after %.0f s; stopping "
                            "without them", len(running), timeout)
                ended = False
            self._loaders.shutdown(wait=False, cancel_futures=True)
        return ended

    def model_names(self):
        with self._lock:
            return sorted(self._models)

    def reload_config(self, config, timeout=300):
        """Switches to a new ModelServerConfig and waits until the models it adds, moves or
        gives another version policy have been polled under it, their loads done.

        New models are loaded, removed models unloaded, changed policies and labels applied. A
        model whose base path changes keeps serving from the old path until the new one has
        loaded. As TF Serving's ReloadConfig, it fails (UNKNOWN) when a model it adds has
        versions and none became available, and (FAILED_PRECONDITION) when a label names a
        version that is not available; the old labels are then kept. As in TF Serving, the new
        labels take effect only after the loads, all at once, so a label never points at a
        version that is still loading. Stricter than TF Serving: a model the reload adds, moves or
        gives another version policy must have a version it wants on disk (else NOT_FOUND, or
        INVALID_ARGUMENT for a missing base path, and nothing changes), and a moved model whose
        new path loads no version keeps serving from the old one (UNKNOWN). Reloads run one at a
        time, in the order they come, as in TF Serving.
        """
        if config.WhichOneof("config") is None:
            raise invalid_argument("ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                                   "ModelConfigList is currently supported")
        validate_config(config)
        deadline = time.monotonic() + timeout
        if not self._reload_lock.acquire(timeout=timeout):  # waits for an earlier reload to end
            raise _timed_out()
        try:
            self._reload(config, deadline)
        finally:
            self._reload_lock.release()

    def _reload(self, config, deadline):
        with self._lock:
            before = {name: model.config for name, model in self._models.items()}
        # A model the reload adds or points elsewhere must have a version there: refused before
        # anything changes (a mistyped path would otherwise unload a serving model).
        moved = []
        for model in config.model_config_list.config:
            old = before.get(model.name)
            if old is None or (old.base_path, old.model_version_policy) != (model.base_path,
                                                                            model.model_version_policy):
                error = no_version_error(model)
                if error is not None:
                    raise error
            if old is not None and old.base_path != model.base_path:
                moved.append(model)
        generation = self._apply_config(config)
        changed = [m.name for m in config.model_config_list.config
                   if m.name not in before or before[m.name].model_version_policy != m.model_version_policy]
        with self._poll_cond:
            self._poll_requested = True
            self._poll_cond.notify_all()
            # The models the reload adds or gives another policy are polled under it, and a moved
            # one's new path takes over or is dropped; the others are not waited for, so that a
            # model in a slow load on a load thread does not hold the reload back.
            if not self._poll_cond.wait_for(
                    lambda: self._stopping or (all(self._polled_since(name, generation) for name in changed)
                                               and not any(m.name in self._replacing for m in moved)),
                    max(0.0, deadline - time.monotonic())):
                raise _timed_out()
        added = [m.name for m in config.model_config_list.config if m.name not in before]
        self.wait_until_models_available(added, max(0.0, deadline - time.monotonic()))
        stayed = [f"{{name: {m.name} base_path: {m.base_path}}}" for m in moved
                  if self._model(m.name) is not None and self._model(m.name).config.base_path != m.base_path]
        if stayed:
            raise ServingError(grpc.StatusCode.UNKNOWN, "Some servables did not become available (their models keep "
                               f"serving from the old base path): {{{', '.join(stayed)}}}")
        self._install_labels(_labels_of(config))

    def wait_until_started(self, stop=None):
        """The end of TF Serving's start-up: waits until every configured model has a version
        AVAILABLE (`wait_until_models_available`), then gives the models the labels of the
        start-up config, checked as a reload's are (FAILED_PRECONDITION when a label names a
        version that is not AVAILABLE, unless --allow_version_labels_for_unavailable_models).
        Until then no request can name a label."""
        self.wait_until_models_available(self.model_names(), stop=stop)
        if not (self._stopping or (stop is not None and stop.is_set())):
            self._install_labels(self._start_up_labels)

    def wait_until_models_available(self, names, timeout=None, stop=None):
        """TF Serving's WaitUntilModelsAvailable: returns once every named model has a version
        AVAILABLE or has spent the retries of its failed loads; then raises UNKNOWN naming the
        versions of the models that have none. A model whose base path is missing or holds no
        version its policy wants fails at once, naming the path (TF Serving would wait for it,
        and a mistyped path would look like a deployment still loading). `stop` (an Event) ends
        the wait early, as does stopping the server; DEADLINE_EXCEEDED after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        models = [model for model in map(self._model, names) if model is not None]
        for model in models:
            error = no_version_error(model.config)
            if error is not None:
                raise error
        with self._poll_cond:  # notified after every poll and load job; retries are polled for
            while not all(model.loads_settled() and not self._is_busy(model) for model in models):
                if self._stopping or (stop is not None and stop.is_set()):
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise _timed_out()
                self._poll_cond.wait(0.1)
        failed = [f"{{name: {model.name} version: {version}}}" for model in models
                  if not any(state == _AVAILABLE for state, _ in model.states().values())
                  for version in sorted(model.states())]
        if failed:
            raise ServingError(grpc.StatusCode.UNKNOWN,
                               f"Some servables did not become available: {{{', '.join(failed)}}}")

    def _install_labels(self, labels):
        """Gives each model the labels {model: {label: version}} at once, or FAILED_PRECONDITION
        and no change when a label names a version that is not AVAILABLE (TF Serving's
        UpdateModelVersionLabelMap). --allow_version_labels_for_unavailable_models lets a new
        label, or one keeping its version, wait for it; moving a label to such a version is
        refused all the same, as in TF Serving, since requests by that label would fail."""
        with self._lock:
            models = {name: self._models[name] for name in labels if name in self._models}
        for name, model in models.items():
            states, current = model.states(), model.config.version_labels
            for label, version in labels[name].items():
                if self._allow_labels_for_unavailable and current.get(label, version) == version:
                    continue
                if states.get(version, (None,))[0] != _AVAILABLE:
                    allowed = f"allows it for a new label, not for moving label {label} from version " \
                              f"{current[label]}" if self._allow_labels_for_unavailable else "allows it"
                    available = sorted(v for v, (state, _) in states.items() if state == _AVAILABLE)
                    raise ServingError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {name}, which is not "
                        f"currently available for inference (label {label}; available versions: "
                        f"{available or 'none'}; --allow_version_labels_for_unavailable_models {allowed})")
        for name, model in models.items():
            model.config = _with_labels(model.config, labels[name])  # one assignment: requests see old or new

    def _apply_config(self, config):
        """Installs a config; returns its generation number. Every model keeps the labels it
        has (a new one has none) until `_install_labels`."""
        with self._lock:
            self._config_generation += 1
            wanted = {m.name: m for m in config.model_config_list.config}
            for name, moving in list(self._replacing.items()):  # moves of an earlier config still loading
                new = wanted.get(name)
                if new is None or new.base_path != moving.config.base_path:
                    self._retired.append(self._replacing.pop(name))
            for name in list(self._models):
                model = self._models[name]
                if name not in wanted:
                    self._removed[name] = self._models.pop(name)
                    self._retired.append(self._removed[name])
                    continue
                new = _with_labels(wanted[name], model.config.version_labels)
                if new.base_path != model.config.base_path:
                    if name in self._replacing:
                        self._replacing[name].config = new
                    else:
                        self._replacing[name] = VersionManager(new, self._batching, self._enable_warmup,
                                                               **self._version_options)
                else:
                    model.config = new
            for name, model_config in wanted.items():
                if name not in self._models:
                    self._removed.pop(name, None)
                    self._models[name] = VersionManager(_with_labels(model_config, {}),
                                                        self._batching, self._enable_warmup,
                                                        **self._version_options)
            return self._config_generation

    def _poll_all(self):
        with self._lock:
            generation = self._config_generation
            models = list(self._models.values())
            retired, self._retired = self._retired, []
            replacing = list(self._replacing.values())
        for model in retired:
            model.unload_all()

        def poll(model):
            try:
                model.poll()
            finally:  # a failed poll counts too: a move that fails is dropped, not waited for
                with self._lock:
                    self._polled_at[model] = generation

        self._for_each_model(replacing + models, "Polling", poll)
        self._settle_moves()
        with self._poll_cond:
            self._poll_cond.notify_all()

    def _polled_since(self, name, generation):
        """True when the model `name` (or nothing of that name) has been polled, its loads done,
        under config `generation` or a later one."""
        with self._lock:
            model = self._models.get(name)
            return model is None or (self._polled_at.get(model, 0) >= generation and model not in self._busy)

    def _settle_moves(self):
        """A new base path whose poll is done takes over if it serves a version, and the old
        path's versions are unloaded; else it is dropped and the old one keeps serving."""
        with self._lock:  # polled, its loads done (one that a reload made during a poll waits for the next)
            done = {name: model for name, model in self._replacing.items()
                    if model in self._polled_at and model not in self._busy}
            for name in done:
                del self._replacing[name]
            ready = {name: model for name, model in done.items() if model.serves_a_version()}
            old = [self._models[name] for name in ready if name in self._models]
            self._models.update(ready)
        for name in set(done) - set(ready):
            log.error("Model %s: no version under the new base path %s loaded; it keeps serving from the old "
                      "one", name, done[name].config.base_path)
            done[name].unload_all()
        for model in old:
            model.unload_all()

    def _next_retry_at(self):
        with self._lock:  # a busy model's retries wait for its job to end
            models = [model for model in self._models.values() if model not in self._busy]
        times = [t for t in (model.next_retry_at() for model in models) if t is not None]
        return min(times) if times else None

    def _retry_due_loads(self):
        with self._lock:
            models = list(self._models.values())
        self._for_each_model(models, "Retrying loads of", lambda model: model.retry_due_loads())

    def _for_each_model(self, models, what, job):
        """Runs `job(model)` for every model; a failure is logged, not raised. Without load
        threads, one model after another, and returns when all are done. With them, each on a
        load thread, returning at once: a model whose earlier job still runs is skipped (its
        next poll comes after it), and a job's end notifies the waiters of `_poll_cond`."""
        def guarded(model):
            try:
                job(model)
            except Exception:  # noqa: BLE001 - the poll thread must survive anything
                log.exception("%s model %s failed", what, model.name)

        if self._loaders is None:
            for model in models:
                guarded(model)
            return
        for model in models:
            with self._lock:
                if model in self._busy:
                    self._skipped.add(model)
                    continue
                job_future = self._busy[model] = self._loaders.submit(guarded, model)
            job_future.add_done_callback(lambda _, model=model: self._job_done(model))

    def _is_busy(self, model):
        with self._lock:
            return model in self._busy

    def _job_done(self, model):
        with self._lock:
            self._busy.pop(model, None)
            skipped = model in self._skipped
            self._skipped.discard(model)
        self._settle_moves()
        with self._poll_cond:
            self._job_ended = True  # the poll thread looks again for load retries the job set
            self._poll_requested |= skipped  # and polls a model it passed over meanwhile
            self._poll_cond.notify_all()

    def _poll_loop(self):
        poll_every = self._poll_wait_seconds if self._poll_wait_seconds > 0 else None
        next_poll = time.monotonic() + poll_every if poll_every else None
        while True:
            retry_at = self._next_retry_at()
            times = [t for t in (next_poll, retry_at) if t is not None]
            wake = min(times) if times else None
            with self._poll_cond:
                self._poll_cond.wait_for(
                    lambda: self._poll_requested or self._stopping or self._job_ended,
                    None if wake is None else max(0.0, wake - time.monotonic()))
                if self._stopping:
                    break
                requested, self._poll_requested = self._poll_requested, False
                self._job_ended = False
            now = time.monotonic()
            if requested or (next_poll is not None and now >= next_poll):
                self._poll_all()
                next_poll = time.monotonic() + poll_every if poll_every else None
            elif retry_at is not None and now >= retry_at:
                self._retry_due_loads()
        with self._lock:
            models = list(self._models.values()) + list(self._replacing.values()) + self._retired
        for model in models:
            model.unload_all()

    def _model(self, name):
        with self._lock:
            return self._models.get(name)

    def servable(self, model_spec):
        """The ServableVersion a ModelSpec asks for (name + version | version_label | latest)."""
        name = model_spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        model = self._model(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = model.version_for_label(model_spec.version_label) if model else None
            if version is None:
                raise invalid_argument(
                    f"Unrecognized servable version label: {model_spec.version_label}")
        elif choice == "version":
            version = model_spec.version.value
        else:
            version = None
        if model is None:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise not_found(f"Servable not found for request: {request}")
        return model.servable(version)

    def model_status(self, model_spec):
        """GetModelStatusResponse for a ModelSpec, as TF Serving's GetModelStatusImpl.

        Like TF Serving, a version_label in the spec is ignored: all versions are listed, and a
        model a reload removed keeps its versions' states (END once unloaded), as TF Serving's
        ServableStateMonitor does.
        """
        name = model_spec.name
        with self._lock:
            model = self._models.get(name) or self._removed.get(name)
        states = model.states() if model is not None else {}
        if model_spec.HasField("version"):
            version = model_spec.version.value
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            versions = [version]
        else:
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            versions = sorted(states, reverse=True)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in versions:
            state, error = states[version]
            status = response.model_version_status.add(version=version, state=state)
            status.status.SetInParent()  # TF Serving always reports a status, OK included
            if error is not None:
                status.status.error_code = error.code.value[0]
                status.status.error_message = error.message
        return response
