"""The implementations of `benchmarks.step`, built inside a worker: one step each, in place.

Each class builds its optimizer (or roofline kernel) on the worker's data, runs it once
(trace, compile, state creation; that first call's time is ``compile_s``), and then
``step()`` advances it by one step; ``sync()`` waits for the work queued so far. jax,
Keras and torch are imported by the classes that need them, never at import time.
"""

from __future__ import annotations

from typing import Any

from benchmarks import harness
from benchmarks.step_peers import IMPLS, LR, make_tx
from benchmarks.trees import nest


class Impl:
  """One implementation: ``step()`` queues a step, ``sync()`` waits for it."""

  compile_s: float | None = None

  def step(self) -> None:
    raise NotImplementedError

  def sync(self) -> None:
    pass


def mismatched_step(tx: Any, apply_updates: Any) -> Any:
  """``step(opt_state, params, grads) -> (params, opt_state)``: the issue's anti-pattern."""

  def step(s, p, g):
    u, s = tx.update(g, s, p)
    return apply_updates(p, u), s

  return step


class JaxStep(Impl):
  """``jax.jit(step, donate_argnums=(0, 1))`` of an optax transformation."""

  def __init__(self, name: str, np_params: dict[str, Any], grads: Any):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    import optadam  # pylint: disable=import-outside-toplevel

    self._jax = jax
    self.mismatched = name.endswith("mismatched")
    tx = make_tx(name)
    apply = optadam.apply_updates if name.startswith("optadam") else optax.apply_updates
    params = nest({k: jnp.array(v) for k, v in np_params.items()})
    state = tx.init(params)
    self.grads = grads
    if self.mismatched:
      step = mismatched_step(tx, apply)
      self.args = [state, params]
    else:
      step = harness.train_step(tx, apply)
      self.args = [params, state]
    self.fn = jax.jit(step, donate_argnums=(0, 1))
    # trace + compile + one step
    out, self.compile_s = harness.timed(lambda: jax.block_until_ready(self.fn(*self.args, grads)))
    self._set(out)

  def _set(self, out) -> None:
    p, s = out
    self.args = [s, p] if self.mismatched else [p, s]

  def step(self) -> None:
    self._set(self.fn(*self.args, self.grads))

  def sync(self) -> None:
    self._jax.block_until_ready(self.args)


class KerasStep(Impl):
  """Keras 3 Adam (JAX backend): ``stateless_apply`` under jit, donated."""

  def __init__(self, np_params: dict[str, Any], grads: Any):
    import jax  # pylint: disable=import-outside-toplevel
    import keras  # pylint: disable=import-outside-toplevel

    self._jax = jax
    # in the order of jax.tree.leaves(grads) (sorted paths)
    leaves = jax.tree.leaves(nest(dict(np_params)))
    variables = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(leaves)]
    self.opt = keras.optimizers.Adam(learning_rate=LR)
    self.opt.build(variables)
    self.params = [v.value for v in variables]
    self.state = [v.value for v in self.opt.variables]
    self.grads = list(jax.tree.leaves(grads))
    opt = self.opt

    def step(p, s, g):
      return opt.stateless_apply(s, g, p)

    self.fn = jax.jit(step, donate_argnums=(0, 1))
    del variables
    _, self.compile_s = harness.timed(self._first_step)

  def _first_step(self) -> None:
    self.params, self.state = self.fn(self.params, self.state, self.grads)
    self._jax.block_until_ready(self.params)

  def step(self) -> None:
    self.params, self.state = self.fn(self.params, self.state, self.grads)

  def sync(self) -> None:
    self._jax.block_until_ready((self.params, self.state))


class TorchStep(Impl):
  """``torch.optim.Adam`` with ``foreach=True`` or ``fused=True``."""

  def __init__(self, name: str, np_params: dict[str, Any], torch_grads: list[Any]):
    import torch  # pylint: disable=import-outside-toplevel

    self.params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in np_params.values()]
    for p, g in zip(self.params, torch_grads):
      p.grad = g
    kw = {"fused": True} if name == "torch fused" else {"foreach": True}
    self.opt = torch.optim.Adam(self.params, lr=LR, **kw)
    _, self.compile_s = harness.timed(self.opt.step)  # creates the state

  def step(self) -> None:
    self.opt.step()


class JaxRoof(Impl):
  """Triad ``a = b + s*c`` or in-place ``x = x + s*y`` over the tree, jit, donated."""

  def __init__(self, name: str, np_params: dict[str, Any], grads: Any):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    self._jax = jax
    self.b = grads
    s = 1e-3
    if name == "triad jax":
      self.a = jax.tree.map(jnp.zeros_like, grads)
      self.c = nest({k: jnp.array(v) for k, v in np_params.items()})
      # keep_unused: `a` is only the donated output buffer (jit would prune it, and then
      # allocate -- and page-fault -- a fresh output at every call)
      self.fn = jax.jit(
        lambda a, b, c: jax.tree.map(lambda b_, c_: b_ + s * c_, b, c),
        donate_argnums=(0,),
        keep_unused=True,
      )
      self._call = lambda: self.fn(self.a, self.b, self.c)
    else:
      self.a = nest({k: jnp.array(v) for k, v in np_params.items()})
      self.fn = jax.jit(
        lambda x, y: jax.tree.map(lambda x_, y_: x_ + s * y_, x, y), donate_argnums=(0,)
      )
      self._call = lambda: self.fn(self.a, self.b)
    self.a = self._call()
    jax.block_until_ready(self.a)

  def step(self) -> None:
    self.a = self._call()

  def sync(self) -> None:
    self._jax.block_until_ready(self.a)


class TorchRoof(Impl):
  """Triad / in-place update with torch (intra-op parallel over the cores)."""

  def __init__(self, name: str, np_params: dict[str, Any], torch_grads: list[Any]):
    import torch  # pylint: disable=import-outside-toplevel

    self.b = torch_grads
    self.x = [torch.from_numpy(v.copy()) for v in np_params.values()]
    if name == "triad torch":
      self.a = [torch.empty_like(t) for t in self.x]

      def call():
        for a, b, c in zip(self.a, self.b, self.x):
          torch.add(b, c, alpha=1e-3, out=a)
    else:

      def call():
        torch._foreach_add_(self.x, self.b, alpha=1e-3)  # pylint: disable=protected-access

    self.step = call  # type: ignore[method-assign]
    call()


class CompiledStep(Impl):
  """An already compiled donated step on one pytree of parameters and its state."""

  def __init__(self, compiled: Any, params: Any, state: Any, grads: Any):
    import jax  # pylint: disable=import-outside-toplevel

    self._jax = jax
    self.compiled, self.grads = compiled, grads
    self.p, self.s = params, state

  def step(self) -> None:
    self.p, self.s = self.compiled(self.p, self.s, self.grads)

  def sync(self) -> None:
    self._jax.block_until_ready((self.p, self.s))


def make_data(spec: dict[str, tuple[int, ...]], seed: int = 0):
  """Seeded float32 parameters (scale 0.05) and gradients (scale 1e-3), as NumPy arrays."""
  import numpy as np  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(seed)
  params = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(0.05) for k, s in spec.items()}
  grads = {k: rng.standard_normal(s, dtype=np.float32) * np.float32(1e-3) for k, s in spec.items()}
  return params, grads


def build(name: str, np_params, jax_grads, torch_grads) -> Impl:
  """The implementation `name` on the given parameters and gradients."""
  kind = IMPLS[name][0]
  if kind == "jax":
    return JaxStep(name, np_params, jax_grads)
  if kind == "keras":
    return KerasStep(np_params, jax_grads)
  if kind == "torch":
    return TorchStep(name, np_params, torch_grads)
  if name.endswith("jax"):
    return JaxRoof(name, np_params, jax_grads)
  return TorchRoof(name, np_params, torch_grads)
