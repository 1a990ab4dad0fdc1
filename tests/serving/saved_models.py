"""Small SavedModels for the serving tests, and helpers to publish versions.

  toy/1, toy/2   tf.Module with three signatures: serving_default (float [-1,3] "x" and
                 string [-1] "tag"), "double" (unknown-rank float "anything"), "lookup"
                 (int64 "ids" gathered from a 5-row table). Scores are offset by the version
                 number, so a value tells which version answered. toy/1 carries a warm-up
                 file with one good record, one failing record and one unparsable record.
  keras/1        tf.keras functional model with dict inputs "dense" [-1,3] and "hist" [-1,-1].
  tf1/1          TF1 SavedModelBuilder export: "x" [-1,2] -> "y" = x @ [[1],[10]], and
                 signature "strlen": "words" -> "n".
  int_toy/1      like toy's serving_default but "x" is int64; score = x @ [1,2,3] + 100.
  batchy/1       "x" [-1,2] -> "y" = 2x and "batch_rows" = rows of the batch it ran in; a
                 NaN or inf in "x" fails the call.
  estimator/1    TF1 Estimator-style export (Session + SavedModelBuilder): a string
                 placeholder "input_example_tensor" of shape [-1] parsed by ParseExample
                 (features "x" float [2], "n" int64 (default 0), "word" string (default "")),
                 logit = x @ [1,-1] + 0.5 n + 0.25 len(word) - 0.5, p = sigmoid(logit).
                 Signatures as a canned Estimator writes them: "serving_default" and
                 "classification" (classify: "classes" ["neg","pos"], "scores" [1-p, p]),
                 "regression" (regress: "outputs" = p, [-1,1]), "predict" (predict:
                 "examples" -> "probabilities", "logits"), and "classify_bad_scores"
                 (classify, "scores" of rank 1, for the output checks).
  example_tf2/1  tf.Module whose signatures parse tf.Examples ("x" float [2]): "classify"
                 ("inputs" -> "classes", "scores"), "regress" ("inputs" -> "outputs"),
                 "regress_int" (int64 "outputs", wrong dtype) and "serving_default" (predict,
                 "x" [-1,2] -> "p"); saved with TF2, so every method_name is predict.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import os
import shutil

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving.tensors import ndarray_to_proto


class Toy(tf.Module):
    def __init__(self, offset):
        super().__init__()
        self.weights = tf.Variable([1.0, 2.0, 3.0])
        self.offset = tf.Variable(float(offset))
        self.table = tf.Variable(tf.reshape(tf.range(10, dtype=tf.float32), [5, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.string, name="tag")])
    def score(self, x, tag):
        return {"score": tf.reduce_sum(x * self.weights, axis=1) + self.offset,
                "tag_len": tf.strings.length(tag),
                "tag_upper": tf.strings.upper(tag),
                "echo_bytes": tag}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="anything")])
    def double(self, anything):
        return {"doubled": anything * 2.0}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
    def lookup(self, ids):
        return {"emb": tf.gather(self.table, ids)}


class IntToy(tf.Module):
    """Toy's serving_default with an int64 "x": a new version that changes the signature."""

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64, name="x"),
                                  tf.TensorSpec([None], tf.string, name="tag")])
    def score(self, x, tag):
        return {"score": tf.cast(tf.reduce_sum(x * [1, 2, 3], axis=1), tf.float32) + 100.0}


class Batchy(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x):
        rows = tf.shape(x)[0]
        x = tf.debugging.assert_all_finite(x, "x holds NaN or inf")
        return {"y": x * 2.0, "batch_rows": tf.fill([rows], rows)}


def save_toy(path, version):
    module = Toy(version)
    tf.saved_model.save(module, path, signatures={
        "serving_default": module.score, "double": module.double, "lookup": module.lookup})


def toy_request(x, tag, model_name="toy"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["x"].CopyFrom(ndarray_to_proto(np.asarray(x, np.float32)))
    request.inputs["tag"].CopyFrom(ndarray_to_proto(np.asarray(tag, object)))
    return request


def write_warmup(export_dir):
    """One good record, one with an unknown input alias, one that is not a PredictionLog."""
    good = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=toy_request([[1.0, 2.0, 3.0]], [b"warm"])))
    bad_request = toy_request([[1.0, 2.0, 3.0]], [b"warm"])
    bad_request.inputs["nonsense"].CopyFrom(ndarray_to_proto(np.asarray([1.0], np.float32)))
    bad = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=bad_request))
    os.makedirs(os.path.join(export_dir, "assets.extra"))
    with tf.io.TFRecordWriter(
            os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")) as writer:
        writer.write(good.SerializeToString())
        writer.write(bad.SerializeToString())
        writer.write(b"\xff\xfe definitely not a PredictionLog")


def save_keras(path):
    dense = tf.keras.Input((3,), name="dense", dtype=tf.float32)
    hist = tf.keras.Input((None,), name="hist", dtype=tf.int64)
    pooled = tf.keras.layers.GlobalAveragePooling1D()(tf.keras.layers.Embedding(10, 2)(hist))
    hidden = tf.keras.layers.Concatenate()([dense, pooled])
    score = tf.keras.layers.Dense(1, activation="sigmoid", name="score")(hidden)
    model = tf.keras.Model({"dense": dense, "hist": hist}, {"score": score})
    model.save(path, save_format="tf")


def save_tf1(path):
    """A TF1 SavedModel (Session + SavedModelBuilder) with two signature defs."""
    with tf.Graph().as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        weights = tf.compat.v1.get_variable("w", initializer=tf.constant([[1.0], [10.0]]))
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            predict = tf.compat.v1.saved_model.predict_signature_def
            builder = tf.compat.v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": predict({"x": x}, {"y": tf.matmul(x, weights)}),
                "strlen": predict({"words": words}, {"n": tf.strings.length(words)})})
            builder.save()


ESTIMATOR_WEIGHTS = np.array([1.0, -1.0], np.float32)


def estimator_probability(x, n=0, word=b""):
    """What estimator/1 answers for one example (numpy float32 arithmetic)."""
    logit = (np.float32(x[0]) * ESTIMATOR_WEIGHTS[0] + np.float32(x[1]) * ESTIMATOR_WEIGHTS[1]
             + np.float32(0.5) * np.float32(n) + np.float32(0.25) * np.float32(len(word))
             - np.float32(0.5))
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-np.float32(logit)))


def save_tf1_estimator(path):
    """A TF1 graph as every Estimator export has it: serialized tf.Examples fed to a string
    placeholder of shape [-1] and parsed in the graph (see the module docstring)."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        features = v1.io.parse_example(serialized, {
            "x": tf.io.FixedLenFeature([2], tf.float32),
            "n": tf.io.FixedLenFeature([], tf.int64, default_value=0),
            "word": tf.io.FixedLenFeature([], tf.string, default_value=""),
        })
        weights = v1.get_variable("weights", initializer=tf.constant(ESTIMATOR_WEIGHTS[:, None]))
        bias = v1.get_variable("bias", initializer=tf.constant(-0.5))
        logits = (tf.matmul(features["x"], weights)
                  + 0.5 * tf.cast(features["n"], tf.float32)[:, None]
                  + 0.25 * tf.cast(tf.strings.length(features["word"]), tf.float32)[:, None]
                  + bias)
        probability = tf.sigmoid(logits)
        scores = tf.concat([1.0 - probability, probability], axis=1)
        classes = tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(serialized)[0], 1])
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            utils = v1.saved_model.signature_def_utils
            classification = utils.classification_signature_def(serialized, classes, scores)
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": classification,
                "classification": classification,
                "regression": utils.regression_signature_def(serialized, probability),
                "predict": utils.predict_signature_def(
                    {"examples": serialized},
                    {"probabilities": probability, "logits": logits}),
                "classify_bad_scores": utils.classification_signature_def(
                    serialized, None, tf.reshape(probability, [-1])),
            })
            builder.save()


class ExampleTf2(tf.Module):
    """TF2 signatures over serialized tf.Examples (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.weights = tf.Variable([2.0, 1.0])

    def _probability(self, inputs):
        x = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]
        return tf.sigmoid(tf.reduce_sum(x * self.weights, axis=1))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(self, inputs):
        p = self._probability(inputs)
        return {"scores": tf.stack([1.0 - p, p], axis=1),
                "classes": tf.tile(tf.constant([["0", "1"]]), [tf.size(inputs), 1])}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(self, inputs):
        return {"outputs": self._probability(inputs)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_int(self, inputs):
        return {"outputs": tf.cast(self._probability(inputs) * 100.0, tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def predict(self, x):
        return {"p": tf.sigmoid(tf.reduce_sum(x * self.weights, axis=1))}


def example_tf2_probability(x):
    return 1.0 / (1.0 + np.exp(-(2.0 * x[0] + 1.0 * x[1])))


def save_example_tf2(path):
    module = ExampleTf2()
    tf.saved_model.save(module, path, signatures={
        "classify": module.classify, "regress": module.regress,
        "regress_int": module.regress_int, "serving_default": module.predict})


def copy_version(source, base_path, version):
    """Publishes a version directory the way exporters do: copy beside it, then rename."""
    staging = os.path.join(base_path, f".tmp-{version}-staging")
    shutil.copytree(source, staging)
    os.rename(staging, os.path.join(base_path, str(version)))


def build_saved_models(root):
    """Writes toy/{1,2}, keras/1, tf1/1, int_toy/1, batchy/1, estimator/1 and example_tf2/1
    under `root` (a pathlib.Path)."""
    for version in (1, 2):
        save_toy(str(root / "toy" / str(version)), version)
    write_warmup(str(root / "toy" / "1"))
    save_keras(str(root / "keras" / "1"))
    save_tf1(str(root / "tf1" / "1"))
    int_toy = IntToy()
    tf.saved_model.save(int_toy, str(root / "int_toy" / "1"),
                        signatures={"serving_default": int_toy.score})
    batchy = Batchy()
    tf.saved_model.save(batchy, str(root / "batchy" / "1"),
                        signatures={"serving_default": batchy.serve})
    save_tf1_estimator(str(root / "estimator" / "1"))
    save_example_tf2(str(root / "example_tf2" / "1"))
