"""optadam: Keras's Adam optimizer, step for step, as small pure Optax transformations."""

from optadam import schedules
from optadam.alias import adam, adamw
from optadam.chain import AdamState, KerasAdam
from optadam.clipping import clip_by_keras_global_norm, clip_by_tensor_norm, clip_by_value
from optadam.config import AdamConfig
from optadam.ema import ParameterEmaState, parameter_ema
from optadam.grouping import LeafGroups
from optadam.keras3 import GradientAccumulationState, accumulate_gradients, divide_by_loss_scale
from optadam.keras_config import from_keras_config, get_config
from optadam.keras_file import KerasFile, from_keras_file, read_keras_file
from optadam.keras_state import state_from_keras
from optadam.learning_rate import LegacyDecay, ScaleByLearningRateState, scale_by_learning_rate
from optadam.loss_scaling import LossScaleOptimizer, LossScaleState, loss_scale_optimizer
from optadam.readers import (
  ema_params,
  finalize_variable_values,
  loss_scale,
  regroup_state,
  scale_loss,
  ungroup_state,
)
from optadam.scale import ScaleByKerasAdamState, scale_by_keras_adam
from optadam.sharding import state_shardings
from optadam.sparse import IndexedSlices
from optadam.updates import apply_updates
from optadam.weight_decay import add_decayed_weights, exclusion_mask

__version__ = "0.1.0"

__all__ = [
  "AdamConfig",
  "AdamState",
  "GradientAccumulationState",
  "IndexedSlices",
  "KerasAdam",
  "KerasFile",
  "LeafGroups",
  "LegacyDecay",
  "LossScaleOptimizer",
  "LossScaleState",
  "ParameterEmaState",
  "ScaleByKerasAdamState",
  "ScaleByLearningRateState",
  "accumulate_gradients",
  "adam",
  "adamw",
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
