"""Reading optadam states: EMA averages, the loss scale, grouped state per parameter path.

These functions find their part of a state wherever it sits (inside `optadam.adam`'s
`AdamState`, an ``optax.chain``, ``inject_hyperparams``, ``MultiSteps``, ...), so they sit
above the transforms whose states they read.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from optadam import ema
from optadam import grouping
from optadam import loss_scaling


def ungroup_state(state: Any) -> Any:
  """`state` with every `LeafGroups` replaced by its params-shaped tree (one leaf per path).

  The result has the layout an ungrouped optimizer's state has (``mu``, ``nu``,
  ... keyed by parameter path), e.g. to read or export a checkpoint. Works on
  arrays and on ``jax.ShapeDtypeStruct`` leaves (abstract states).
  """

  def unpack(x):
    if not grouping.is_groups(x):
      return x
    if any(isinstance(g, jax.ShapeDtypeStruct) for g in x.groups):
      leaves = x.layout.treedef.flatten_up_to(x.leaves)
      for group, flat in zip(x.layout.groups, x.groups):
        for m in group.members:
          leaves[m.index] = jax.ShapeDtypeStruct(m.shape, flat.dtype)
      return x.layout.treedef.unflatten(leaves)
    return x.layout.treedef.unflatten(grouping.unpack(x))

  return jax.tree.map(unpack, state, is_leaf=grouping.is_groups)


def regroup_state(per_path_state: Any, like: Any) -> Any:
  """The converse of `ungroup_state`: `per_path_state` packed as `like` (a grouped state).

  Args:
    per_path_state: a state with params-shaped trees where `like` has `LeafGroups`.
    like: a grouped state of the same optimizer (e.g. ``tx.init(params)``), giving
      the layout and the dtypes.

  Returns:
    A state with the structure of `like`.
  """

  def pack(template, value):
    if not grouping.is_groups(template):
      return value
    packed = grouping.pack(template.layout, template.layout.treedef.flatten_up_to(value), fill=None)
    groups = tuple(g.astype(t.dtype) for g, t in zip(packed.groups, template.groups))
    return grouping.LeafGroups(groups, packed.leaves, template.layout)

  return jax.tree.map(pack, like, per_path_state, is_leaf=grouping.is_groups)


def _find_ema_states(opt_state: Any) -> list[ema.ParameterEmaState]:
  is_ema = lambda x: isinstance(x, ema.ParameterEmaState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_ema) if is_ema(x)]


def _the_ema_state(opt_state: Any) -> Optional[ema.ParameterEmaState]:
  found = _find_ema_states(opt_state)
  if len(found) > 1:
    raise ValueError(
      f"The optimizer state holds {len(found)} parameter EMAs; pass the part of "
      "the state that holds the one you mean."
    )
  if not found:
    return None
  return found[0]._replace(ema=ungroup_state(found[0].ema))  # per path when grouped


def ema_params(opt_state: Any) -> optax.Params:
  """The moving averages of the parameters, wherever the EMA sits in `opt_state`.

  Finds the `parameter_ema` state inside `optadam.adam`'s state and inside a
  user's ``optax.chain`` / ``inject_hyperparams`` / ``MultiSteps`` nesting. Use
  it to evaluate with the EMA weights without touching the training parameters
  (what Keras's ``SwapEMAWeights`` callback is used for).

  Raises:
    ValueError: if the state holds no parameter EMA (``use_ema=False``).
  """
  state = _the_ema_state(opt_state)
  if state is None:
    raise ValueError(
      "This optimizer state has no parameter EMA: build the optimizer with "
      "`optadam.adam(..., use_ema=True)` (or chain `optadam.parameter_ema()` last)."
    )
  return state.ema


def finalize_variable_values(params: optax.Params, opt_state: Any) -> optax.Params:
  """`params` replaced by their moving averages, as Keras's ``fit`` does after training.

  A no-op (returns `params`) when the optimizer has no parameter EMA, as in Keras.
  Averages are cast to the parameters' dtypes.
  """
  state = _the_ema_state(opt_state)
  if state is None:
    return params

  def pick(p, avg):
    if p is None or isinstance(avg, optax.MaskedNode):
      return p
    return jnp.asarray(avg).astype(jnp.asarray(p).dtype)

  return jax.tree.map(pick, params, state.ema, is_leaf=lambda x: x is None)


def _find_loss_scale_states(opt_state: Any) -> list[loss_scaling.LossScaleState]:
  is_state = lambda x: isinstance(x, loss_scaling.LossScaleState)
  return [x for x in jax.tree.leaves(opt_state, is_leaf=is_state) if is_state(x)]


def _the_loss_scale_state(opt_state: Any) -> loss_scaling.LossScaleState:
  """The one `LossScaleState` inside `opt_state`."""
  found = _find_loss_scale_states(opt_state)
  if not found:
    raise ValueError(
      "This optimizer state holds no loss scale: build the optimizer with "
      "`optadam.loss_scale_optimizer(...)`."
    )
  if len(found) > 1:
    raise ValueError(
      f"The optimizer state holds {len(found)} loss scales; pass the part of the state that "
      "holds the one you mean."
    )
  return found[0]


def loss_scale(opt_state: Any) -> jax.Array:
  """The current loss scale (float32 scalar), wherever the wrapper sits in `opt_state`.

  Finds the `LossScaleState` inside ``optax.chain``, ``inject_hyperparams``,
  ``MultiSteps`` and similar nestings. Works on traced states (inside ``jit``).

  Raises:
    ValueError: if the state holds no loss scale, or more than one.

  Example:
    >>> import jax.numpy as jnp, optadam, optax
    >>> tx = optax.MultiSteps(optadam.loss_scale_optimizer(optadam.adam(), 256.0), 2)
    >>> float(optadam.loss_scale(tx.init({"w": jnp.zeros(2)})))
    256.0
  """
  return _the_loss_scale_state(opt_state).scale


def scale_loss(loss: Any, opt_state: Any) -> jax.Array:
  """``loss`` multiplied by the current loss scale, in the loss's dtype.

  Use it inside the function you differentiate, so that the gradients are those of
  the scaled loss that `loss_scale_optimizer`'s ``update`` expects. The product is
  formed in float32 (or the loss's dtype if wider) and then cast to the loss's dtype;
  for a float32 loss that is what both Keras versions compute (Keras 2 casts the scale
  to the loss's dtype first, which for a float16 loss turns a scale of 2**16 or more
  into inf; Keras 3 returns the float32 product). Prefer a float32 loss.

  Example:
    >>> import jax.numpy as jnp, optadam
    >>> state = optadam.loss_scale_optimizer(optadam.adam(), 8.0).init({"w": jnp.zeros(2)})
    >>> optadam.scale_loss(jnp.float16(1.5), state)
    Array(12., dtype=float16)
  """
  loss = jnp.asarray(loss)
  scale = loss_scale(opt_state)
  wide = jnp.promote_types(loss.dtype, jnp.float32)
  return (loss.astype(wide) * scale.astype(wide)).astype(loss.dtype)
