"""optadam: Keras's Adam optimizer, step for step, as small pure Optax transformations."""

from optadam.alias import AdamState, KerasAdam, adam
from optadam.clipping import clip_by_keras_global_norm, clip_by_tensor_norm, clip_by_value
from optadam import schedules
from optadam.grouping import LeafGroups, regroup_state, ungroup_state
from optadam.ema import ParameterEmaState, ema_params, finalize_variable_values, parameter_ema
from optadam.keras3 import GradientAccumulationState, accumulate_gradients, divide_by_loss_scale
from optadam.keras_compat import from_keras_config, get_config, state_from_keras
from optadam.keras_file import KerasFile, from_keras_file, read_keras_file
from optadam.loss_scaling import (
  LossScaleOptimizer,
  LossScaleState,
  loss_scale,
  loss_scale_optimizer,
  scale_loss,
)
from optadam.learning_rate import ScaleByLearningRateState, scale_by_learning_rate
from optadam.scale import ScaleByKerasAdamState, scale_by_keras_adam
from optadam.sparse import IndexedSlices
from optadam.sharding import state_shardings
from optadam.updates import apply_updates
from optadam.weight_decay import add_decayed_weights, exclusion_mask

__version__ = "0.1.0"

__all__ = [
  "AdamState",
  "GradientAccumulationState",
  "IndexedSlices",
  "KerasAdam",
  "KerasFile",
  "LeafGroups",
  "LossScaleOptimizer",
  "LossScaleState",
  "ParameterEmaState",
  "ScaleByKerasAdamState",
  "ScaleByLearningRateState",
  "accumulate_gradients",
  "adam",
  "add_decayed_weights",
  "apply_updates",
  "clip_by_keras_global_norm",
  "clip_by_tensor_norm",
  "clip_by_value",
  "divide_by_loss_scale",
  "ema_params",
  "exclusion_mask",
  "finalize_variable_values",
  "from_keras_config",
  "from_keras_file",
  "get_config",
  "loss_scale",
  "loss_scale_optimizer",
  "parameter_ema",
  "read_keras_file",
  "regroup_state",
  "scale_by_keras_adam",
  "scale_by_learning_rate",
  "scale_loss",
  "schedules",
  "state_from_keras",
  "state_shardings",
  "ungroup_state",
]
