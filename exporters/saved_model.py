"""Exports a tf.keras functional model as a versioned SavedModel that TF Serving serves.

The `serving_default` signature takes raw features by name, exactly the values of the training
DataFrame (lookups and hashing live inside the model), with the batch as the first dimension:

  * an Input of shape (None, 1) (a scalar feature) is taken as a vector [None] and the
    feature axis is re-added inside, so a client sends `{"user_id": ["u1", "u2"]}`;
  * other Inputs keep their shape: [None, None] for sequences of any length (the model
    truncates/pads to its maxlen), [None, d] for dense vectors.

Every integer Input (int32, int64, ...) is declared **int64** in the signature, what numpy,
pandas, JSON, Java/Go clients and tf.Example give, and is cast to the Input's dtype inside the
graph; an id outside a narrower dtype's range fails the request with INVALID_ARGUMENT naming
the input, rather than wrapping around. Float and string Inputs keep their dtype.
`signature_input_specs` and `model_inputs` are that contract, shared by every exporter.

It returns a dict keyed by the model's output names (`model.output_names`, the output layers'
names) plus any `extra_outputs` layer names; an output of shape (None, 1) is returned as [None].

A model with behaviour histories (inputs `hist_<f>`, DIN, SIM, CLSR) also gets `shared_history`:
the same inputs and outputs, but the history's inputs (the `hist_<f>` sequences, [1, -1], and
their length input, [1]) carry one row that applies to every row of the other inputs, so
scoring N candidates for one user sends (and, for DIN and SIM, searches) the history once
instead of N times; it equals `serving_default` fed that history on every row. For such a model
(DIN, SIM) `serving_default` itself takes that path when every row of a request carries the same
history, so a client that repeats it per row is searched once too (only the transport is N times).

Beside `serving_default`, the export has signatures over serialized `tf.Example`s, for TF
Serving's Classify / Regress / MultiInference APIs (and the REST `:classify` / `:regress`):

  * `classify` (method tensorflow/serving/classify): input "inputs" (string [-1], serialized
    tf.Examples); outputs "scores" float [-1, 2] = [1 - p, p] and "classes" string [-1, 2] =
    ["0", "1"], p being the model's first output (a [-1, k] output gives its k scores and
    classes "0".."k-1");
  * `regress` (method tensorflow/serving/regress): "inputs" -> "outputs" = p, float [-1];
  * for a model with several outputs, `regress_<output>` for each output of shape [-1].

The examples carry the `serving_default` inputs as features: a scalar input is a required
feature (FixedLenFeature), a vector of d values a FixedLenFeature([d]), a sequence [-1, -1] a
variable-length feature right-padded with 0 / "" to the longest one of the request (what a
client sends `serving_default`); integers are int64_list, floats float_list, strings
bytes_list. `example_feature_spec` gives that spec. A model whose inputs or outputs do not fit
is exported with `serving_default` only (logged).
"""
import feature_columns._legacy_keras  # noqa: F401

import logging
import os

from google.protobuf import message
import numpy as np
import tensorflow as tf
from feature_columns import history_input_names, on_one_history, serving_dtype
from feature_columns.feature_column import checked_name
from tensorflow.core.protobuf import saved_model_pb2
from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

from exporters import layout, warmup
from tfrec.models.two_tower import INTEREST_MASK

logger = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
SHARED_HISTORY_SIGNATURE = "shared_history"
CLASSIFY_SIGNATURE = "classify"
REGRESS_SIGNATURE = "regress"
CLASSIFY_METHOD_NAME = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD_NAME = tf.saved_model.REGRESS_METHOD_NAME
EXAMPLE_INPUTS = "inputs"


def export_saved_model(model, export_base, version=None, warmup_inputs=None, extra_outputs=(),
                       model_name=None, num_warmup_records=warmup.DEFAULT_NUM_WARMUP_RECORDS):
    """Writes `export_base/<version>/` for TF Serving: SavedModel, assets and warm-up requests.

    Args:
      model: a functional tf.keras Model built from named `tf.keras.Input`s (Input name ==
        feature name), usually with dict inputs.
      export_base: the model's base path, as TF Serving's --model_base_path (`exports/din`).
      version: the version number; None for 1 + the highest existing version (1 if none).
      warmup_inputs: rows to warm the server up with: a dict {feature: array or list} or a
        pandas DataFrame (list-valued cells are right-padded); the first
        `num_warmup_records` rows are used. None synthesises one row of zeros / b"".
      extra_outputs: names of layers inside `model` whose outputs the signature also returns,
        under the layer name (e.g. ESMM's "cvr" tower, which is not a Keras output).
      model_name: the model name in the warm-up requests' model_spec; defaults to the last
        component of `export_base`, the name TF Serving serves that base path under.
      num_warmup_records: how many warm-up requests (one row each) to write; at most 1000,
        TF Serving's limit.

    Returns:
      The absolute path of the new version directory, `export_base/<version>`.

    Raises:
      FileExistsError: the version directory already exists.
      ValueError: an extra output names no usable layer, or the warm-up inputs do not fit
        the signature.
    """
    if hasattr(model, "refresh_derived_weights"):
        model.refresh_derived_weights()  # e.g. SimHash signatures of the whole item table
    serving_model = _serving_model(model, extra_outputs)
    shared_history, histories = _broadcast_history_signature(serving_model, warmup.warmup_feeds(
        signature_input_specs(serving_model), warmup_inputs, num_warmup_records))
    # A model that broadcasts a shared history serves a request repeating one history on every
    # row as shared_history does; any other gets shared_history as the history repeated per row.
    signature = _serving_function(serving_model, shared_history=shared_history, histories=histories)
    if histories and shared_history is None:
        shared_history = _repeated_history_signature(serving_model, signature, histories)
    signatures = {SERVING_SIGNATURE: signature}
    if shared_history is not None:
        signatures[SHARED_HISTORY_SIGNATURE] = shared_history
    example_signatures, method_names = _example_signatures(
        signature, signature_input_specs(serving_model), list(model.output_names),
        first_is_probability=not _is_regression_head(model, model.output_names[0]))
    signatures.update(example_signatures)
    root = tf.Module()
    root.model = serving_model  # tracks the variables and lookup tables the signature captures
    return write_saved_model_version(
        export_base, root, signatures, version=version,
        warmup_inputs=warmup_inputs, model_name=model_name,
        num_warmup_records=num_warmup_records, method_names=method_names)


def write_saved_model_version(export_base, root, signatures, version=None, warmup_inputs=None,
                              model_name=None,
                              num_warmup_records=warmup.DEFAULT_NUM_WARMUP_RECORDS,
                              options=None, method_names=None):
    """Saves `root` with `signatures` as a new version under `export_base`, atomically.

    The shared back end of every exporter: validates the warm-up feeds against
    `signatures["serving_default"]` (running them), saves the SavedModel and the warm-up
    file into a staging directory, then renames it to `export_base/<version>`. On any error
    the staging directory is removed and nothing is published.

    Args:
      root: the trackable to save (it must track every variable and table the signatures
        capture).
      signatures: {signature name: concrete function with keyword inputs}; must include
        "serving_default", from whose inputs the warm-up requests are built.
      options: `tf.saved_model.SaveOptions` for `tf.saved_model.save`, e.g.
        `namespace_whitelist=["Scann"]` for a graph with ScaNN's custom ops; None for defaults.
      method_names: {signature name: SignatureDef method_name} to record instead of the
        predict method `tf.saved_model.save` gives every signature (e.g.
        "tensorflow/serving/classify"), so servers checking method names accept them.
      Other arguments: as in `export_saved_model`.

    Returns:
      The absolute path of the new version directory. Loaded with `tf.saved_model.load`, the
      version is also callable: `loaded(features)` runs `serving_default` on one dict
      {input name: values} and returns its dict of outputs (unless `root` has a `__call__` of
      its own, which is saved instead).
    """
    export_base = os.path.abspath(os.fspath(export_base))
    if SERVING_SIGNATURE not in signatures:
        raise ValueError(
            f"signatures must include {SERVING_SIGNATURE!r}; got {sorted(signatures)}")
    model_name = model_name or os.path.basename(export_base)
    serving = signatures[SERVING_SIGNATURE]
    feeds = warmup.warmup_feeds(
        warmup.signature_input_specs(serving), warmup_inputs, num_warmup_records)
    warmup.check_feeds_run(serving, feeds)
    _warn_of_signature_changes(export_base, serving)

    if not callable(root):  # a root with a __call__ of its own keeps it
        root.__call__ = _called_as_serving_default(serving)
    with layout.staged_version_dir(export_base, version) as staged:
        # Keras would add a traced call function per layer of every model under `root` (what
        # `model.save(save_traces=True)` keeps for `load_model`): about 40% of an export's time
        # and never used, since servers and `tf.saved_model.load` run the signatures.
        with keras_option_scope(save_traces=False):
            tf.saved_model.save(root, staged.staging_dir, signatures=signatures, options=options)
        if method_names:
            set_signature_method_names(staged.staging_dir, method_names)
        warmup.write_warmup_file(
            staged.staging_dir,
            [warmup.prediction_log(feed, model_name, SERVING_SIGNATURE) for feed in feeds])
    logger.info(
        "Exported %r version %d to %s: signatures %s (serving_default inputs %s, outputs %s), "
        "%d warm-up request(s)", model_name, staged.version, staged.final_dir,
        sorted(signatures), sorted(warmup.signature_input_specs(serving)),
        sorted(serving.structured_outputs), len(feeds))
    return staged.final_dir


def _signature_specs(export_dir):
    """({input name: (dtype name, shape)}, {output name: ...}) of a SavedModel's serving_default,
    or None if unreadable."""
    saved_model = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(export_dir, "saved_model.pb"), "rb") as pb:
            saved_model.ParseFromString(pb.read())
        signature = saved_model.meta_graphs[0].signature_def[SERVING_SIGNATURE]
    except (OSError, IndexError, KeyError, message.DecodeError):
        return None
    return tuple({name: (tf.dtypes.as_dtype(info.dtype).name,
                         tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim))
                  for name, info in tensors.items()} for tensors in (signature.inputs, signature.outputs))


def _changes(before, after):
    """What differs between two {name: (dtype name, shape)}, as short phrases."""
    changes = [f"{name} removed" for name in sorted(set(before) - set(after))]
    changes += [f"{name} added ({after[name][0]})" for name in sorted(set(after) - set(before))]
    changes += [f"{name} {before[name][0]} {list(before[name][1])} -> {after[name][0]} {list(after[name][1])}"
                for name in sorted(set(before) & set(after)) if before[name] != after[name]]
    return changes


def _warn_of_signature_changes(export_base, serving):
    """Warns when the new version's serving_default differs from the latest version's in
    `export_base`: clients written for the version being served would get INVALID_ARGUMENT from
    this one for other inputs (an inferred column's type can change with the data,
    docs/own_data.md), and answers of another shape for other outputs (a retrieval export's k)."""
    versions = layout.version_directories(export_base)
    if not versions:
        return
    latest = max(versions)
    before = _signature_specs(versions[latest])
    if before is None:
        return
    inputs = {name: (spec.dtype.name, tuple(spec.shape.as_list()))
              for name, spec in warmup.signature_input_specs(serving).items()}
    outputs = {name: (tensor.dtype.name, tuple(tensor.shape.as_list()))
               for name, tensor in serving.structured_outputs.items()}
    changed = _changes(before[0], inputs)
    if changed:
        logger.warning("export: the new version of %s takes other inputs than version %d, which a server may be "
                       "serving: %s; clients sending version %d's inputs will get INVALID_ARGUMENT",
                       export_base, latest, "; ".join(changed), latest)
    changed = _changes(before[1], outputs)
    if changed:
        logger.warning("export: the new version of %s answers other outputs than version %d, which a server may "
                       "be serving: %s; clients reading version %d's answers must expect them",
                       export_base, latest, "; ".join(changed), latest)


def _serving_model(model, extra_outputs):
    """`model` rewired to return a dict {output name: tensor}, extra layer outputs included."""
    if not isinstance(model, tf.keras.Model) or not getattr(model, "inputs", None):
        raise TypeError(
            "export_saved_model needs a functional tf.keras Model built from named "
            f"tf.keras.Input layers; got {type(model).__name__}")
    if isinstance(extra_outputs, (str, bytes)):  # iterated, it would name its letters as layers
        raise ValueError(f"extra_outputs must be a list of layer names, e.g. [{extra_outputs!r}], "
                         f"got the string {extra_outputs!r}")
    outputs = dict(zip(model.output_names, model.outputs))
    for name in extra_outputs or ():
        if name in outputs:
            raise ValueError(
                f"extra output {name!r} is already an output of the model {model.name!r}")
        outputs[name] = _layer_output(model, name)
    return tf.keras.Model(model.input, outputs, name=f"{model.name}_serving")


def _layer_output(model, layer_name):
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(
            f"extra output {layer_name!r} is not a layer of the model {model.name!r}; its layers "
            f"are {[layer.name for layer in model.layers]}") from None
    try:
        output = layer.output
    except AttributeError as error:  # a layer called more than once has no single output
        raise ValueError(f"extra output {layer_name!r}: {error}") from None
    if isinstance(output, (list, tuple, dict)):
        raise ValueError(
            f"extra output {layer_name!r} returns {type(output).__name__}, not one tensor")
    return output


def _is_single_column(tensor):
    """Whether a Keras tensor has shape (None, 1): a scalar per example."""
    return tensor.shape.rank == 2 and tensor.shape[1] == 1


def _called_as_serving_default(serving):
    """A tf.function taking `serving`'s keyword inputs as one dict: saved as the root's
    `__call__`, it makes a loaded export callable like the Keras model it came from."""
    return tf.function(lambda features: serving(**features),
                       input_signature=[warmup.signature_input_specs(serving)])


def signature_input_specs(model):
    """{Input name: tf.TensorSpec} of a serving signature over a functional model's Inputs.

    A (None, 1) Input is taken as a vector [None]; other Inputs keep their shape. Integer
    Inputs are declared int64 (`serving_dtype`); `model_inputs` casts them back in the graph.
    An Input name that is no signature input name (`user-id`, which TensorFlow renames, so the
    signature could not find its feature) is a ValueError naming it.
    """
    return {checked_name("Input", name): tf.TensorSpec([None] if _is_single_column(tensor) else tensor.shape,
                                                        serving_dtype(tensor.dtype), name=name)
            for name, tensor in zip(model.input_names, model.inputs)}


def model_inputs(model, features):
    """The signature's `features` ({Input name: tensor}, as `signature_input_specs` declares
    them) as `model` takes them: (None, 1) Inputs re-expanded, integers cast to the Input's
    dtype after an in-graph range check, packed like `model.input`."""
    flat = []
    for name, tensor in zip(model.input_names, model.inputs):
        values = _cast_to_input(name, features[name], tensor.dtype)
        flat.append(tf.expand_dims(values, -1) if _is_single_column(tensor) else values)
    return tf.nest.pack_sequence_as(model.input, flat)


def _cast_to_input(name, values, dtype):
    """`values` cast to `dtype`; integers outside its range, and NaN or inf in a float input
    (a model trained without them scores garbage, or an ANN index fails), fail with
    InvalidArgumentError (INVALID_ARGUMENT on a server) naming the input."""
    if values.dtype.is_floating:
        values = tf.debugging.check_numerics(values, f"Input {name} holds NaN or inf")
    if values.dtype == dtype:
        return values
    if values.dtype.is_integer and dtype.is_integer and (
            dtype.min > values.dtype.min or dtype.max < values.dtype.max):
        low = tf.constant(dtype.min, values.dtype)
        high = tf.constant(dtype.max, values.dtype)
        outside = (values < low) | (values > high)
        check = tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(outside)),
            # No quotes in the text: the Assert op escapes them in its message.
            [f"Input {name} holds values outside the {dtype.name} range [{dtype.min}, "
             f"{dtype.max}] of the model input, e.g.", tf.boolean_mask(values, outside)],
            summarize=3, name="check_input_range")
        with tf.control_dependencies([check]):
            return tf.cast(values, dtype)
    return tf.cast(values, dtype)


def _run(serving_model, features):
    """The serving model's outputs for signature `features`, (None, 1) scores as vectors."""
    outputs = serving_model(model_inputs(serving_model, features), training=False)
    return {name: tf.squeeze(tensor, -1) if _is_score_column(name, serving_model.output[name]) else tensor
            for name, tensor in outputs.items()}


def _is_score_column(name, tensor):
    """Whether an output is a (None, 1) score, served as (None,): not a user tower's
    (batch, k_max) interest mask, which keeps its axis at k_max 1."""
    return name != INTEREST_MASK and _is_single_column(tensor)


def _serving_function(serving_model, input_specs=None, shared_history=None, histories=()):
    """The `serving_default` concrete function over raw features by Input name (or over
    `input_specs`, a variant of `signature_input_specs`).

    `shared_history` is the `shared_history` function of a model that broadcasts a shared history
    over `histories` (see `_broadcast_history_signature`). A request whose rows all carry the same
    history (what a DeepCTR-style client sends to score N candidates for one user) then runs that
    function on the history's first row: the search and attention over it run once, not once per
    row (`feature_columns.on_one_history`), and the model is traced once for both signatures. Any
    other request, and one whose histories hold fewer than
    `feature_columns.ONE_HISTORY_MIN_ELEMENTS` events in all (not worth the check), runs row by
    row. Both give the same scores (the export checks it on the warm-up rows), so the client sees
    no difference but the time.
    """
    def run(features):
        return _run(serving_model, features)

    def run_on_one_row(features):
        specs = shared_history.structured_input_signature[1]
        return shared_history(**{name: tf.ensure_shape(value, specs[name].shape) for name, value in features.items()})

    @tf.function
    def serve(**features):
        return on_one_history(run, features, histories, run_on_one_row) if shared_history else run(features)

    return serve.get_concrete_function(**(input_specs or signature_input_specs(serving_model)))


# ---------------------------------------------------------------- one history, many candidates


def _shared_history_specs(serving_model, histories):
    """The `serving_default` input specs with each of `histories` declared with one row."""
    return {name: tf.TensorSpec([1] + spec.shape[1:], spec.dtype, name=name) if name in histories else spec
            for name, spec in signature_input_specs(serving_model).items()}


def _broadcast_history_signature(serving_model, feeds):
    """(the `shared_history` concrete function or None, the model's history inputs).

    `shared_history` takes the `serving_default` inputs, except that every input of the user's
    history (`feature_columns.history_input_names`: the `hist_<f>` sequences and their length)
    is declared with one row: one user's history, sent once, applies to every row (candidate) of
    the request. Its outputs equal `serving_default` fed that history on every row. A model whose
    layers broadcast a shared history (DIN, SIM: their searches and attention read the one row
    without copying it) runs on it directly, so a request of 100 candidates carries, and the
    model searches, one history instead of 100 copies: that function is returned. Which models
    do is decided here by running the model both ways on the warm-up rows (at least two
    candidates) and comparing. None for a model that does not (it gets
    `_repeated_history_signature`) or has no history; the history inputs are [] for a model
    without histories (or without any other input).
    """
    specs = signature_input_specs(serving_model)
    histories = history_input_names(serving_model)
    if not histories or all(name in histories for name in specs):
        return None, []
    rows = feeds if len(feeds) > 1 else feeds * 2
    check = {name: feeds[0][name] if name in histories else tf.concat([feed[name] for feed in rows], axis=0)
             for name in specs}
    expected = _run(serving_model, {name: tf.repeat(value, len(rows), axis=0) if name in histories else value
                                    for name, value in check.items()})
    native = _serving_function(serving_model, _shared_history_specs(serving_model, histories))
    try:
        # Traced on these exact shapes first: a model that cannot broadcast (a concat of the one
        # history row with the others) fails here, in shape inference, rather than at run time,
        # where TensorFlow logs the failed op as an error that was never the user's.
        tf.function(lambda **features: _run(serving_model, features)).get_concrete_function(
            **{name: tf.TensorSpec(value.shape, value.dtype) for name, value in check.items()})
        outputs = native(**check)
        if all(np.allclose(outputs[name], expected[name], atol=1e-5) for name in expected):
            return native, histories
    except (tf.errors.InvalidArgumentError, ValueError):
        pass
    logger.info("%r does not broadcast a shared history; its shared_history signature repeats "
                "the history per row", serving_model.name)
    return None, histories


def _repeated_history_signature(serving_model, serving, histories):
    """`shared_history` for a model that does not broadcast one: `serving` (`serving_default`)
    with the one-row `histories` repeated for every candidate row inside the graph."""
    candidate = next(name for name in signature_input_specs(serving_model) if name not in histories)

    @tf.function
    def repeated(**features):
        batch = tf.shape(features[candidate])[0]
        return serving(**{name: tf.repeat(value, batch, axis=0) if name in histories else value
                          for name, value in features.items()})

    return repeated.get_concrete_function(**_shared_history_specs(serving_model, histories))


# ---------------------------------------------------------------- tf.Example signatures


def set_signature_method_names(export_dir, method_names):
    """Rewrites the method_name of SignatureDefs in `export_dir`'s saved_model.pb (TF2's
    `tf.saved_model.save` records every signature as predict), then the fingerprint."""
    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        for key, method in method_names.items():
            if key not in meta_graph.signature_def:
                raise ValueError(f"no signature {key!r} to set the method name of; the "
                                 f"SavedModel has {sorted(meta_graph.signature_def)}")
            meta_graph.signature_def[key].method_name = method
    with open(path, "wb") as f:
        f.write(saved_model.SerializeToString(deterministic=True))
    fingerprint = os.path.join(export_dir, "fingerprint.pb")
    if os.path.exists(fingerprint):
        try:
            from tensorflow.python.saved_model import fingerprinting_utils

            fingerprinting_utils.write_fingerprint(export_dir)
        except Exception as error:  # noqa: BLE001 - a stale fingerprint must not stay
            logger.warning("Cannot rewrite %s (%s); removing it", fingerprint, error)
            os.remove(fingerprint)


_PARSE_DTYPES = {tf.int64: tf.int64, tf.float32: tf.float32, tf.string: tf.string,
                 tf.float64: tf.float32, tf.float16: tf.float32, tf.bfloat16: tf.float32,
                 tf.bool: tf.int64, tf.uint64: tf.int64}


def example_feature_spec(input_specs):
    """The tf.io.parse_example spec that carries a serving signature's inputs
    ({name: tf.TensorSpec} as `signature_input_specs` gives them) in tf.Examples.

    [-1] -> FixedLenFeature([]) (required), [-1, d1, ...] with known d -> FixedLenFeature of
    that shape, [-1, -1] -> VarLenFeature (a sequence; densified by `parse_examples`).
    Raises ValueError for an input a tf.Example cannot carry.
    """
    spec = {}
    for name, tensor_spec in input_specs.items():
        parse_dtype = _PARSE_DTYPES.get(tensor_spec.dtype)
        if parse_dtype is None:
            raise ValueError(f"input {name!r} has dtype {tensor_spec.dtype.name}, which a "
                             f"tf.Example cannot carry")
        shape = tensor_spec.shape
        if shape.rank is None or shape.rank < 1:
            raise ValueError(f"input {name!r} has shape {shape}, without a batch dimension")
        if shape.rank == 2 and shape[1] is None:
            spec[name] = tf.io.VarLenFeature(parse_dtype)
        elif all(dim is not None for dim in shape[1:]):
            spec[name] = tf.io.FixedLenFeature(shape[1:].as_list(), parse_dtype)
        else:
            raise ValueError(f"input {name!r} has shape {shape}: only [-1], [-1, d...] and "
                             f"[-1, -1] inputs can be carried by tf.Examples")
    return spec


def parse_examples(serialized, input_specs):
    """Serialized tf.Examples -> {name: tensor} shaped and typed as the serving signature's
    inputs: sequences right-padded with 0 / "" to the longest one (at least 1 wide)."""
    parsed = tf.io.parse_example(serialized, example_feature_spec(input_specs))
    features = {}
    for name, tensor_spec in input_specs.items():
        value = parsed[name]
        if isinstance(value, tf.SparseTensor):
            pad = "" if value.dtype == tf.string else tf.zeros([], value.dtype)
            value = tf.sparse.to_dense(value, default_value=pad)
            missing = tf.maximum(1 - tf.shape(value)[1], 0)
            value = tf.pad(value, [[0, 0], [0, missing]], constant_values=pad)
        if value.dtype != tensor_spec.dtype:
            value = tf.cast(value, tensor_spec.dtype)
        features[name] = value
    return features


def _is_regression_head(model, output_name):
    """Whether `output_name` comes from a head declared a regression (tfrec's PredictionLayer task)."""
    try:
        return getattr(model.get_layer(output_name), "task", None) == "regression"
    except ValueError:
        return False


def _example_signatures(serving, input_specs, output_names, first_is_probability=True):
    """({name: concrete function}, {name: method_name}) of the classify / regress signatures
    over `serving` (the serving_default concrete function); ({}, {}) when the model's inputs
    or outputs do not fit them. Classify reads the first output as class probabilities, so a
    model whose first output is not one (a regression head) gets regress only."""
    try:
        example_feature_spec(input_specs)
    except ValueError as error:
        logger.warning("No tf.Example signatures (classify / regress) in this export: %s",
                       error)
        return {}, {}
    outputs = serving.structured_outputs
    first = output_names[0] if output_names and output_names[0] in outputs else None
    scalar_outputs = [name for name, spec in outputs.items()
                      if spec.shape.rank == 1 and (spec.dtype.is_floating)]
    functions, methods = {}, {}

    def parsed_outputs(inputs):
        return serving(**parse_examples(inputs, input_specs))

    example_input = tf.TensorSpec([None], tf.string, name=EXAMPLE_INPUTS)
    if first is not None and first_is_probability and outputs[first].dtype.is_floating \
            and outputs[first].shape.rank in (1, 2):
        first_rank = outputs[first].shape.rank
        num_classes = 2 if first_rank == 1 else outputs[first].shape[1]
        if num_classes is not None:
            labels = ["0", "1"] if first_rank == 1 else [str(i) for i in range(num_classes)]

            # Plain graph code: AutoGraph has nothing to convert, and converting this closure
            # again for a second export in one process warned of a "closure mismatch".
            @tf.function(input_signature=[example_input], autograph=False)
            def classify(inputs):
                p = tf.cast(parsed_outputs(inputs)[first], tf.float32)
                scores = tf.stack([1.0 - p, p], axis=1) if first_rank == 1 else p
                classes = tf.tile(tf.constant([labels]), [tf.shape(inputs)[0], 1])
                return {"scores": scores, "classes": classes}

            functions[CLASSIFY_SIGNATURE] = classify.get_concrete_function()
            methods[CLASSIFY_SIGNATURE] = CLASSIFY_METHOD_NAME

    def regress_function(output):
        @tf.function(input_signature=[example_input], autograph=False)
        def regress(inputs):
            return {"outputs": tf.cast(parsed_outputs(inputs)[output], tf.float32)}
        return regress.get_concrete_function()

    if first in scalar_outputs:
        functions[REGRESS_SIGNATURE] = regress_function(first)
        methods[REGRESS_SIGNATURE] = REGRESS_METHOD_NAME
    if len(outputs) > 1:
        for name in scalar_outputs:
            key = f"{REGRESS_SIGNATURE}_{name}"
            if key in functions or key == SERVING_SIGNATURE:
                continue
            functions[key] = regress_function(name)
            methods[key] = REGRESS_METHOD_NAME
    return functions, methods


def export_from_chief(model, export_base, tf_config=None, **export_kwargs):
    """Exports a model trained under any `tf.distribute` strategy with `export_saved_model`.

    Every task that runs the training program calls it; only the chief writes
    (`tfrec.distribute.is_chief`) and other tasks return None. The export is of
    `tfrec.distribute.unsharded_copy(model)`: tables split across parameter servers become
    ordinary SavedModel variables, so the export loads with `tf.saved_model.load` and serves
    exactly as a single-process model's. Every task makes that copy, because reading a
    synchronised variable (batch-norm statistics under MultiWorkerMirroredStrategy) is a
    collective that all workers must join. `export_kwargs` go to `export_saved_model` (version,
    warmup_inputs, model_name, ...). Returns the version directory (chief) or None.
    """
    from tfrec.distribute import is_chief, unsharded_copy

    copy = unsharded_copy(model)
    if not is_chief(tf_config=tf_config):
        return None
    return export_saved_model(copy, export_base, **export_kwargs)
