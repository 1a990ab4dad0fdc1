"""What the multi-task models (MMOE, PLE, ESMM, SharedBottom) share: task checks, the task tower,
per-task compile, and the label check the data path runs before `fit`.

Every multi-task model has one output per task, named by the task (so `model.output_names ==
list(task_names)`), a (batch, 1) probability for "binary" tasks or value for "regression" ones.
"""
import re
from collections.abc import Mapping

import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf

from ..layers import DNN, PredictionLayer
from ..layers.core import TASKS
from ..metrics import AUC

# Task names become layer names and serving output keys, so they must be valid TF op names.
_TASK_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-]*$")

LOSS_OF_TASK = {"binary": "binary_crossentropy", "regression": "mse"}


def _as_list(values, what, model_name):
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ValueError(f"{model_name}: {what} must be a list or tuple of strings, got {values!r}")
    return list(values)


def check_tasks(task_types, task_names, model_name, features=(), reserved=()):
    """Validates a model's tasks at build time and returns (task_types, task_names) as lists.

    Args:
      task_types: one of "binary" / "regression" per task.
      task_names: one unique name per task; the output layers are named after them.
      model_name: named in error messages.
      features: the model's input names, which a task name must not repeat (layer names clash).
      reserved: names of the model's own layers that a task must not take (e.g. ESMM's "cvr").

    Raises:
      ValueError: naming the problem: lengths differ, no task, an unknown task type, a duplicate,
        malformed or clashing task name.
    """
    task_types = _as_list(task_types, "task_types", model_name)
    task_names = _as_list(task_names, "task_names", model_name)
    if not task_names:
        raise ValueError(f"{model_name}: task_names is empty; give at least one task")
    if len(task_types) != len(task_names):
        raise ValueError(f"{model_name}: task_types has {len(task_types)} entries {task_types} but "
                         f"task_names has {len(task_names)} {task_names}; give one type per task")
    for name, task_type in zip(task_names, task_types):
        if task_type not in TASKS:
            raise ValueError(f"{model_name}: task '{name}' has unknown type {task_type!r}; "
                             f"expected one of {TASKS}")
    for name in task_names:
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ValueError(f"{model_name}: task name {name!r} is not usable as an output name; use "
                             "letters, digits, '_', '.', '-' (not starting with '_' or '-')")
    duplicates = sorted({name for name in task_names if task_names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{model_name}: duplicate task names {duplicates} in {task_names}; "
                         "every task needs its own output name")
    for name in task_names:
        if name in features:
            raise ValueError(f"{model_name}: task name '{name}' is also a feature name; outputs and "
                             "inputs share the model's layer namespace, so rename the task")
        if name in reserved:
            raise ValueError(f"{model_name}: task name '{name}' is reserved for the model's own "
                             f"layer '{name}'; choose another")
    return task_types, task_names


def task_seed(seed, task_index):
    """The seed of the gate and tower of task `task_index` (0, 1, ...): seed + task_index.

    With the model's one seed for every task, the tasks' heads would start as copies of each
    other and part only as their labels pull them apart. On the planted multi-task data (5
    seeds) a seed per task lifted SharedBottom's ctcvr AUC from 0.8052 to 0.8062 and MMOE's from
    0.8046 to 0.8066, to DeepCTR's 0.8064 and 0.8063 (whose logit and gate layers draw unseeded
    weights, so they start apart).
    """
    return seed + task_index


def task_tower(inputs, task_type, task_name, hidden_units, activation, l2_reg, dropout_rate, use_bn,
               seed):
    """One task's head: (batch, D) -> DNN tower -> logit -> PredictionLayer named `task_name`.

    Returns the (batch, 1) output (sigmoid probability for "binary", identity for "regression").
    The layers are named "tower_<task>", "logit_<task>" and "<task>".
    """
    x = inputs
    if hidden_units:
        x = DNN(hidden_units, activation, l2_reg, dropout_rate, use_bn, seed=seed,
                name="tower_" + task_name)(x)
    logit = tf.keras.layers.Dense(1, use_bias=False, name="logit_" + task_name,
                                  kernel_initializer=tf.keras.initializers.GlorotNormal(seed))(x)
    return PredictionLayer(task_type, name=task_name)(logit)


def output_task_types(model):
    """{output name: "binary" | "regression"}, in output order, read from the output layers.

    A PredictionLayer output has its own task; any other output (ESMM's pCTCVR = pCTR x pCVR)
    is a probability, hence "binary".
    """
    types = {}
    for name in model.output_names:
        layer = model.get_layer(name)
        types[name] = layer.task if isinstance(layer, PredictionLayer) else "binary"
    return types


def compile_multitask(model, optimizer="adam", loss_weights=None, metrics=True, weighted_metrics=False,
                      **compile_args):
    """Compiles a multi-task model with each task's loss and an optional weight per task.

    Binary tasks get binary cross-entropy (and an AUC metric), regression tasks mean squared
    error (and MAE). The total loss is sum_task loss_weights[task] * loss_task. This is plain
    `model.compile(optimizer, loss={...}, loss_weights={...}, metrics={...})`, which works too.

    Args:
      model: a model whose outputs are named by task (MMOE, PLE, ESMM, SharedBottom).
      optimizer: anything `model.compile` accepts.
      loss_weights: None (all 1), {task name: weight} (unnamed tasks get 1), or one weight per
        output in output order.
      metrics: whether to add the per-task metrics.
      weighted_metrics: whether they are weighted by the sample weights (Keras'
        `weighted_metrics`), for data that has them.
      **compile_args: other arguments of the model's `compile` (e.g. `jit_compile`, `lazy_adam`).

    Returns:
      The compiled model.

    Raises:
      ValueError: loss_weights names an unknown task or has the wrong length.
    """
    types = output_task_types(model)
    weights = {name: 1.0 for name in types}
    if isinstance(loss_weights, Mapping):
        unknown = sorted(set(loss_weights) - set(types))
        if unknown:
            raise ValueError(f"loss_weights names unknown task(s) {unknown}; the model's tasks are "
                             f"{list(types)}")
        weights.update({name: float(w) for name, w in loss_weights.items()})
    elif loss_weights is not None:
        loss_weights = list(loss_weights)
        if len(loss_weights) != len(types):
            raise ValueError(f"loss_weights has {len(loss_weights)} entries but the model has "
                             f"{len(types)} tasks {list(types)}")
        weights = {name: float(w) for name, w in zip(types, loss_weights)}
    task_metrics = {name: [AUC() if t == "binary" else "mae"] for name, t in types.items()} if metrics else None
    model.compile(
        optimizer=optimizer,
        loss={name: LOSS_OF_TASK[t] for name, t in types.items()},
        loss_weights=weights,
        **{"weighted_metrics" if weighted_metrics else "metrics": task_metrics}, **compile_args)
    return model


def _label_names(labels):
    if isinstance(labels, tf.data.Dataset):
        spec = labels.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise ValueError("the dataset must yield (features, labels) pairs, got elements of "
                             f"structure {spec}")
        labels = spec[1]
    if not isinstance(labels, Mapping):
        raise ValueError("a multi-task model needs its labels as a dict keyed by task name, got "
                         f"{type(labels).__name__}")
    return list(labels)


def check_multitask_labels(model, labels):
    """Checks, before `fit`/`evaluate`, that the labels name exactly the model's tasks.

    Keras' own error for a missing or unexpected label key does not say which task is wrong.

    Args:
      model: a multi-task model whose outputs are named by task.
      labels: {task name: labels}, or a tf.data.Dataset of (features, {task name: labels}).

    Raises:
      ValueError: labels are not keyed by task name, or a task has no labels, or a label names
        no task; the message lists the missing and unknown names and the model's tasks.
    """
    tasks = list(model.output_names)
    names = _label_names(labels)
    missing = [task for task in tasks if task not in names]
    unknown = [name for name in names if name not in tasks]
    if missing or unknown:
        problems = []
        if missing:
            problems.append(f"no labels for task(s) {missing}")
        if unknown:
            problems.append(f"labels for unknown task(s) {unknown}")
        raise ValueError(f"model '{model.name}': {' and '.join(problems)}; the model's tasks are {tasks}")
