"""Reading and loading one SavedModel version (what TF Serving's SavedModelBundle does).

`read_serving_meta_graph` reads the MetaGraphDef tagged {"serve"} without loading anything,
so a corrupt export is reported precisely; `load_bundle` loads it, after registering ScaNN's
ops so that retrieval exports with a ScaNN index load too. Before it reads anything itself,
`load_bundle` refuses FIFOs and devices and has a child process read every file once
(`serving.read_ahead`): a read that never returns then stalls that child, not the server.

Two loaders, one interface (signature key -> callable(**inputs) -> {output alias: tensor}):

* TF2 SavedModels (a MetaGraphDef with an object graph, what `tf.saved_model.save` writes)
  load with `tf.saved_model.load` and run as their concrete functions.
* TF1 SavedModels (Estimator exports, `tf.compat.v1.saved_model.Builder`) load as TF
  Serving loads them: the graph is imported into a private `tf.Graph` and run by a
  `tf.compat.v1.Session`, feeding the signature's input tensors and fetching its outputs by
  name. Placeholders keep their own shapes (a `ParseExample` fed by a string placeholder of
  shape [-1] loads), and a fed tensor is checked only by the ops that consume it, as a C++
  session does (a [-1,1] placeholder fed a [1] tensor runs if the graph accepts it).

A TF2 load's resources other than variables (the lookup tables of a vocabulary, a ScaNN
searcher) outlive the loaded object in TensorFlow's resource manager: each load of a model with a
20,000-id vocabulary kept about 3 MB for good, of a ScaNN index of 200,000 32-d items 28 MB, so a
server rolling versions grew without bound.
`load_bundle` destroys them when the loaded object is garbage collected (the version is
unloaded and its last request has finished).
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import functools
import logging
import os
import stat
import threading
import weakref

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2, saved_model_pb2

from serving.errors import ServingError
from serving.read_ahead import read_ahead_in_child, version_entries

log = logging.getLogger("serving.bundle")

SERVING_TAGS = ("serve",)


@functools.lru_cache(maxsize=None)
def import_scann_ops():
    """Registers ScaNN's custom ops (`Scann>...`) so retrieval exports with a ScaNN index
    load; stock TensorFlow fails on them with "Op type not registered". Optional: without
    scann, every other SavedModel (brute-force retrieval exports included) still loads."""
    try:
        import scann  # noqa: F401
    except ImportError:
        log.info("scann is not installed: SavedModels using ScaNN ops will fail to load")


def check_regular_files(export_dir):
    """FAILED_PRECONDITION naming the first entry of a version folder that is neither a folder
    nor a regular file (a FIFO, socket or device, or a link to one): reading a FIFO blocks until
    something writes to it, which would stall every load after it. A link leading nowhere is
    left to the load (which fails only if it needs the file)."""
    for path in version_entries(export_dir):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"{path} is not a regular file (a FIFO, socket or device); the version is not "
                               "loaded, as reading it could block")


def read_serving_meta_graph(export_dir):
    """The MetaGraphDef tagged exactly {"serve"} in a SavedModel directory (.pb or .pbtxt)."""
    saved_model = saved_model_pb2.SavedModel()
    pb_path = os.path.join(export_dir, "saved_model.pb")
    pbtxt_path = os.path.join(export_dir, "saved_model.pbtxt")
    try:
        if os.path.exists(pb_path):
            with open(pb_path, "rb") as f:
                saved_model.ParseFromString(f.read())
        elif os.path.exists(pbtxt_path):
            with open(pbtxt_path) as f:
                text_format.Parse(f.read(), saved_model)
        else:
            raise ServingError(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
                f"{export_dir}")
    except (protobuf_message.DecodeError, text_format.ParseError, UnicodeDecodeError) as error:
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"Cannot parse the SavedModel in {export_dir}: {error}") from None
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(SERVING_TAGS):
            return meta_graph
    raise ServingError(
        grpc.StatusCode.NOT_FOUND,
        "Could not find meta graph def matching supplied tags: { serve }. To inspect "
        "available tag-sets in the SavedModel, please use the SavedModel CLI: "
        "`saved_model_cli`")


def is_tf1_meta_graph(meta_graph):
    """Whether a MetaGraphDef comes from a TF1 exporter (no TF2 object graph to restore)."""
    return not (meta_graph.HasField("object_graph_def") and meta_graph.object_graph_def.nodes)


def variables_damage(export_dir, error):
    """What is visibly wrong with a version's variables, naming the files, or None: the folder
    missing or empty, the index missing beside data files, a data shard missing, or a tensor the
    index lists that cannot be read (a shard cut short). Asked after a failed load, whose TensorFlow error names no file
    ("Read less bytes than requested", or a hint about devices); `error` is that failure."""
    folder = os.path.join(export_dir, "variables")
    reading_variables = "variables" in str(error)  # else a model without variables failed otherwise
    try:
        entries = set(os.listdir(folder))
    except OSError:
        return f"{folder} is missing" if reading_variables else None
    if not entries and reading_variables:
        return f"{folder} is empty"
    shards = sorted(entry for entry in entries if entry.startswith("variables.data-"))
    if "variables.index" not in entries:
        return f"{folder}: variables.index is missing beside {', '.join(shards)}" if shards else None
    totals = {entry.rsplit("-of-", 1)[-1] for entry in shards}
    if len(totals) == 1 and next(iter(totals)).isdigit():
        total = int(next(iter(totals)))
        missing = [name for name in (f"variables.data-{i:05d}-of-{total:05d}" for i in range(total))
                   if name not in entries]
        if missing:
            return f"{folder}: {', '.join(missing)} missing"
    try:
        reader = tf.train.load_checkpoint(os.path.join(folder, "variables"))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # noqa: BLE001 - any failure to read is the diagnosis
        sizes = ", ".join(f"{shard} has {os.path.getsize(os.path.join(folder, shard))} bytes" for shard in shards)
        return f"{folder}: a tensor of variables.index cannot be read ({sizes}): {str(error).splitlines()[0]}"
    return None


def load_bundle(export_dir):
    """Loads a SavedModel version: returns (its SignatureDefs by key, the callable signature
    functions by key, the object that owns the loaded state). The functions take the inputs
    as keyword tensors (or numpy arrays) and return a dict of output tensors."""
    check_regular_files(export_dir)
    read_ahead_in_child(export_dir)  # TensorFlow's reads hold the interpreter lock: a stall stops the child only
    meta_graph = read_serving_meta_graph(export_dir)
    signature_defs = dict(meta_graph.signature_def)
    import_scann_ops()  # before the load: a ScaNN export's graph needs its ops registered
    try:
        if is_tf1_meta_graph(meta_graph):
            session_bundle = SessionBundle(export_dir)
            return signature_defs, session_bundle.signature_functions(), session_bundle
        loaded = tf.saved_model.load(export_dir, tags=list(SERVING_TAGS))
    except Exception as error:
        damage = variables_damage(export_dir, error)
        if damage is None:
            raise
        raise ServingError(grpc.StatusCode.DATA_LOSS,
                           f"{damage}: the version is incomplete (a copy still running, or cut short); "
                           f"loading it failed with {type(error).__name__}: {str(error).splitlines()[0]}") from None
    weakref.finalize(loaded, _destroy_resources, _resource_handles(loaded))
    return signature_defs, dict(loaded.signatures), loaded


def _resource_handles(loaded):
    """The handles of the resources other than variables that loading `loaded` created: its
    lookup tables, and the searcher of each ScaNN index. A searcher is a named resource that
    `recreate_handle()` creates on the first search and finds again afterwards, so it is
    created here, at load, rather than by the first request."""
    handles = []
    for trackable in tf.train.TrackableView(loaded).descendants():
        if isinstance(trackable, tf.saved_model.experimental.TrackableResource) and \
                not isinstance(trackable, tf.Variable):
            handles.append(trackable.resource_handle)
        elif hasattr(trackable, "recreate_handle") and hasattr(trackable, "scann_config"):  # scann's ScannState
            handles.append(trackable.recreate_handle())
    return handles


def _destroy_resources(handles):
    """Frees resources TensorFlow would keep after their SavedModel is gone (module doc): each
    load names its own (a load counter is part of the name), so no other version loses any."""
    for handle in handles:
        tf.raw_ops.DestroyResourceOp(resource=handle, ignore_lookup_error=True)


class SessionBundle:
    """A TF1 SavedModel loaded in its own graph and session, as TF Serving loads it.

    `signature_functions()` gives, per SignatureDef, a callable with the TF2 path's interface.
    The session is closed by `close()` or when the bundle is garbage collected.
    """

    def __init__(self, export_dir, tags=SERVING_TAGS):
        self.export_dir = export_dir
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                self.meta_graph = tf.compat.v1.saved_model.loader.load(
                    self.session, list(tags), export_dir)
        except BaseException:
            self.session.close()
            raise
        self.graph.finalize()

    def signature_functions(self):
        return {key: _SessionSignatureFunction(self, key, signature)
                for key, signature in self.meta_graph.signature_def.items()}

    def close(self):
        self.session.close()

    def __del__(self):
        try:
            self.session.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class _SessionSignatureFunction:
    """One SignatureDef of a SessionBundle: `fn(**inputs) -> {alias: tf.Tensor}`.

    Feeds each given input alias to its tensor name and fetches every output, like TF
    Serving's Session::Run (an input the graph needs but the call lacks fails in the session
    with its own message). Inputs the signature does not name are a TypeError, as for a
    concrete function.
    """

    def __init__(self, bundle, key, signature):
        self._bundle = bundle
        self.key = key
        self._signature = signature
        self._callables = {}
        self._lock = threading.Lock()
        for kind, infos in (("input", signature.inputs), ("output", signature.outputs)):
            for alias, info in infos.items():
                if info.WhichOneof("encoding") != "name":
                    log.warning("Signature %r of %s: %s %r is a %s tensor; this server feeds "
                                "and fetches dense tensors only", key, bundle.export_dir,
                                kind, alias, info.WhichOneof("encoding"))

    def _callable(self, aliases):
        """A session callable feeding `aliases` (sorted) and fetching every dense output."""
        with self._lock:
            found = self._callables.get(aliases)
            if found is not None:
                return found
            feeds = [self._signature.inputs[alias].name for alias in aliases]
            fed = set(feeds)
            outputs = sorted(alias for alias, info in self._signature.outputs.items()
                             if info.WhichOneof("encoding") == "name")
            fetched = [alias for alias in outputs
                       if self._signature.outputs[alias].name not in fed]
            options = config_pb2.CallableOptions(
                feed=feeds, fetch=[self._signature.outputs[alias].name for alias in fetched])
            run = self._bundle.session._make_callable_from_options(options)  # noqa: SLF001
            found = (run, fetched, outputs)
            self._callables[aliases] = found
            return found

    def __call__(self, **inputs):
        unknown = sorted(set(inputs) - set(self._signature.inputs))
        if unknown:
            raise TypeError(f"Signature {self.key!r} has no input named {', '.join(unknown)}")
        for alias in inputs:
            if self._signature.inputs[alias].WhichOneof("encoding") != "name":
                raise TypeError(f"Input {alias!r} of signature {self.key!r} is a "
                                f"{self._signature.inputs[alias].WhichOneof('encoding')} "
                                f"tensor, which this server cannot feed")
        aliases = tuple(sorted(inputs))
        arrays = {alias: _as_numpy(value) for alias, value in inputs.items()}
        run, fetched, outputs = self._callable(aliases)
        values = dict(zip(fetched, run(*[arrays[alias] for alias in aliases])))
        by_name = {self._signature.inputs[alias].name: arrays[alias] for alias in aliases}
        result = {}
        for alias in outputs:
            value = values[alias] if alias in values else by_name[
                self._signature.outputs[alias].name]
            result[alias] = tf.constant(value)
        return result


def _as_numpy(value):
    if hasattr(value, "numpy"):
        return value.numpy()
    return np.asarray(value)
