"""Reading and loading one SavedModel version (what TF Serving's SavedModelBundle does).

`read_serving_meta_graph` reads the MetaGraphDef tagged {"serve"} without loading anything,
so a corrupt export is reported precisely; `load_bundle` loads it, after registering ScaNN's
ops so that retrieval exports with a ScaNN index load too.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import functools
import logging
import os

import grpc
import tensorflow as tf
from google.protobuf import message as protobuf_message
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from serving.errors import ServingError

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


def load_bundle(export_dir):
    """Loads a SavedModel version: returns (its SignatureDefs by key, the callable signature
    functions by key). The functions take the inputs as keyword tensors and return a dict of
    output tensors."""
    signature_defs = dict(read_serving_meta_graph(export_dir).signature_def)
    import_scann_ops()  # before the load: a ScaNN export's graph needs its ops registered
    loaded = tf.saved_model.load(export_dir, tags=list(SERVING_TAGS))
    functions = dict(loaded.signatures)
    return signature_defs, functions, loaded
