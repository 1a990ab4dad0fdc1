"""What MIND, SDM and YoutubeDNN share: the item tower, the sampled softmax, the towers as models.

A two-tower model is built like DeepMatch's: one functional model from the user and item
features to its per-example training loss (DeepMatch's output, so `compile(optimizer,
loss=sampledsoftmaxloss)` works, as does plain `compile(optimizer)`). The user tower ends in a
layer named "user_embedding" ((batch, d), or (batch, k, d) interests for MIND with a layer
"interest_mask" (batch, k)), the item tower in one named "item_embedding" ((batch, d)). The
`user_tower` / `item_tower` models are cut from the trained graph by those names, so they
survive save and load with the model.
"""
import feature_columns  # noqa: F401  (Keras 2 before TensorFlow)

import tensorflow as tf
from feature_columns import FeatureEncoder, SparseFeat

from ..layers.retrieval import L2Normalize, NegativeSampling, SampledSoftmax
from ..utils import NegativeSampler, sampledsoftmaxloss
from .base import RecModel, SavedWithoutLayerTraces, refuse_positional_inputs

__all__ = ["TwoTowerModel", "TwoTowerBuilder", "Tower"]

USER_EMBEDDING, INTEREST_MASK, ITEM_EMBEDDING = "user_embedding", "interest_mask", "item_embedding"


@tf.keras.utils.register_keras_serializable(package="tfrec")
class Tower(SavedWithoutLayerTraces, tf.keras.Model):
    """A two-tower model's user or item tower: a functional model cut from the trained graph.

    Its SavedModel folder holds no per-layer traces, as a tfrec model's does, so saving and
    loading a tower cost what the model's own save and load cost.
    """

    def predict(self, x, *args, **kwargs):
        refuse_positional_inputs(self, x)
        return super().predict(x, *args, **kwargs)


@tf.keras.utils.register_keras_serializable(package="tfrec")
class TwoTowerModel(RecModel):
    """A RecModel whose output is its sampled-softmax loss, with its user and item towers.

    Attributes (DeepMatch's, so `Model(inputs=model.user_input, outputs=model.user_embedding)`
    works): `user_input` / `item_input` (the Inputs each tower reads), `user_embedding` /
    `item_embedding` (their output tensors). `user_tower` and `item_tower` are those models;
    MIND's user tower returns [interests (batch, k, d), mask (batch, k)].
    """

    def compile(self, optimizer="rmsprop", loss=None, *args, **kwargs):
        super().compile(optimizer, sampledsoftmaxloss if loss is None else loss, *args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        # Labels are not used (the positive is the row's own item); DeepMatch users pass zeros.
        return super().compute_loss(x, tf.zeros_like(y_pred) if y is None else y, y_pred, sample_weight)

    @property
    def user_embedding(self):
        return self.get_layer(USER_EMBEDDING).get_output_at(0)

    @property
    def item_embedding(self):
        return self.get_layer(ITEM_EMBEDDING).get_output_at(0)

    @property
    def user_input(self):
        return _inputs_reaching(self, self._user_outputs())

    @property
    def item_input(self):
        return _inputs_reaching(self, [self.item_embedding])

    @property
    def user_tower(self):
        outputs = self._user_outputs()
        return Tower(self.user_input, outputs if len(outputs) > 1 else outputs[0], name=f"{self.name}_user_tower")

    @property
    def item_tower(self):
        return Tower(self.item_input, self.item_embedding, name=f"{self.name}_item_tower")

    def _user_outputs(self):
        names = [layer.name for layer in self.layers]
        return [self.user_embedding] + ([self.get_layer(INTEREST_MASK).get_output_at(0)]
                                        if INTEREST_MASK in names else [])


def _inputs_reaching(model, tensors):
    """The model's Inputs that `tensors` depend on, in the model's input order."""
    reached, seen, stack = set(), set(), list(tensors)
    while stack:
        tensor = stack.pop()
        layer, node_index, _ = tensor._keras_history
        if (id(layer), node_index) in seen:
            continue
        seen.add((id(layer), node_index))
        if isinstance(layer, tf.keras.layers.InputLayer):
            reached.add(id(layer))
            continue
        stack.extend(tf.nest.flatten(layer._inbound_nodes[node_index].keras_inputs))
    return [t for t in model.inputs if id(t._keras_history.layer) in reached]


class TwoTowerBuilder:
    """Builds the shared part of a two-tower model around a model-specific user tower.

    `encoder` embeds user and item features with shared tables (`hist_item_id` in the item
    table). The model function computes its user vector(s) from `encoder`, then calls `build`.
    """

    def __init__(self, user_feature_columns, item_feature_columns, l2_reg_embedding, seed, model):
        item_feature_columns = list(item_feature_columns)
        if len(item_feature_columns) != 1 or not isinstance(item_feature_columns[0], SparseFeat):
            raise ValueError(f"{model}: item_feature_columns must be one SparseFeat (the item id), got "
                             f"{[getattr(c, 'name', c) for c in item_feature_columns]}")
        self.model = model
        self.item_column = item_feature_columns[0]
        self.user_columns = list(user_feature_columns)
        self.encoder = FeatureEncoder(self.user_columns + item_feature_columns, l2_reg_embedding=l2_reg_embedding,
                                      seed=seed)
        self.seed = seed

    @property
    def item_name(self):
        return self.item_column.name

    def item_vectors(self, sampler_config):
        """The item tower: the batch's items and the sampled negatives, embedded and normalised.

        Call it before the user tower embeds anything.

        Returns (item vectors (batch, d) named "item_embedding", negative vectors, candidate rows,
        expected counts).
        """
        config = sampler_config or NegativeSampler("inbatch", 0, self.item_name)
        if config.item_name != self.item_name:
            raise ValueError(f"{self.model}: sampler_config.item_name is '{config.item_name}' but the item "
                             f"feature is '{self.item_name}'")
        rows = self.encoder.indices(self.item_name)                                             # (B, 1)
        negatives, counts, candidate_rows = NegativeSampling(
            config.sampler, config.num_sampled, self.item_column.vocabulary_size, config.item_count,
            config.distortion, seed=self.seed, table=self.item_column.embedding_name, name="negative_sampling")(rows)
        # The item tower's own table call (the user side's history embeds in another), so the
        # item tower's graph reaches only the item input.
        self.encoder.lookup(self.item_name, self.item_name, rows)
        self.encoder.lookup(self.item_name + "@negatives", self.item_name, negatives)
        normalize = L2Normalize(name=ITEM_EMBEDDING)
        items = normalize(tf.keras.layers.Flatten(name="item_row_embedding")(self.encoder.embed(self.item_name)))
        negative_items = normalize(self.encoder.embed(self.item_name + "@negatives"))
        return items, negative_items, candidate_rows, counts

    def build(self, user, items, temperature, training_user=None):
        """The model: `user` (batch, d) or (batch, k, d) vectors named "user_embedding"; the loss.

        `training_user` is the vector the loss scores when it differs from the served one
        (MIND's label-aware attention over its interests).
        """
        item_vectors, negative_vectors, candidate_rows, counts = items
        dim = int(item_vectors.shape[-1])
        if int(user.shape[-1]) != dim:
            raise ValueError(f"{self.model}: the user tower gives {int(user.shape[-1])}-d vectors but the item "
                             f"embedding has {dim} (make the last user_dnn_hidden_units equal the item "
                             "embedding_dim)")
        loss = SampledSoftmax(temperature, name="sampled_softmax")(
            user if training_user is None else training_user, item_vectors, negative_vectors, candidate_rows, counts)
        return TwoTowerModel(inputs=self.encoder.features, outputs=loss, name=self.model.lower())


# `.h5` files name a Model subclass by its bare class name (as for RecModel).
tf.keras.utils.get_custom_objects().update(TwoTowerModel=TwoTowerModel, Tower=Tower)
