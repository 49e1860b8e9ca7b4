"""Train a small Flax MLP on scikit-learn's digits with `optadam.adam` (what `make demo` runs).

The demo shows Keras 2's ``Adam`` arguments driving a real JAX training run:

* ``learning_rate`` as a schedule ``fn(step)`` (cosine decay over the whole run),
* decoupled ``weight_decay=1e-4`` with ``exclude_from_weight_decay=["bias"]``
  (a regex on the parameter's pytree path, e.g. ``params/Dense_0/bias``),
* ``global_clipnorm=1.0`` and ``use_ema=True`` (a moving average of the weights),
* a jitted train step that donates ``(params, opt_state)`` and returns them in that order,
* evaluation with the raw weights, with the EMA weights (`optadam.ema_params`) and,
  at the end, with `optadam.finalize_variable_values` (what Keras's ``fit`` does).

The 8x8 digit images (1797 of them, bundled with scikit-learn: no download) are
split 80/20 into train/validation with a fixed seed. A PNG of the training loss
and the validation accuracy (raw vs EMA weights) per epoch is written to
``demo_out/loss_curve.png``. Run ``python examples/demo.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optadam

try:
  import flax.linen as nn
  import matplotlib

  matplotlib.use("Agg")  # files only, no display needed
  import matplotlib.pyplot as plt
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  from tqdm.auto import tqdm
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError(
    f"optadam.demo needs the example dependencies ({e.name or e} is missing): "
    "pip install 'optadam[examples]'"
  ) from e

BATCH_SIZE = 64


class MLP(nn.Module):
  """64 pixels -> 128 -> 64 -> 10 logits."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(128)(x))
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


def load_data(seed: int):
  """Digits scaled to [0, 1], split 80/20 (stratified) with a fixed seed."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  return train_test_split(x, y.astype(np.int32), test_size=0.2, random_state=seed, stratify=y)


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(
    prog="python -m optadam.demo", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
  parser.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
  parser.add_argument("--seed", type=int, default=0, help="seed for split, init and shuffling")
  parser.add_argument("--quiet", action="store_true", help="no progress bar and no printing")
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error("--epochs must be >= 1")

  x_train, x_val, y_train, y_val = load_data(args.seed)
  steps_per_epoch = len(x_train) // BATCH_SIZE  # the last partial batch is dropped
  total_steps = args.epochs * steps_per_epoch

  model = MLP()
  tx = optadam.adam(
    learning_rate=optax.cosine_decay_schedule(3e-3, decay_steps=total_steps, alpha=0.05),
    weight_decay=1e-4,
    exclude_from_weight_decay=["bias"],
    global_clipnorm=1.0,
    use_ema=True,
    ema_momentum=0.99,
  )

  @jax.jit
  def init_state(rng):
    # One jit for both: the EMA starts equal to the parameters, and donating them in
    # train_step needs separate buffers for params and opt_state.
    params = model.init(rng, jnp.zeros((1, 64), jnp.float32))
    return params, tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optadam.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def accuracy(params, x, y):
    logits = model.apply(params, x)  # flax types apply() as `output | (output, variables)`
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)  # type: ignore[arg-type]

  params, opt_state = init_state(jax.random.key(args.seed))
  rng = np.random.default_rng(args.seed)
  history: dict[str, list[float]] = {"train_loss": [], "val_acc": [], "val_acc_ema": []}

  with tqdm(total=total_steps, disable=args.quiet, unit="step", dynamic_ncols=True) as bar:
    for epoch in range(1, args.epochs + 1):
      bar.set_description(f"epoch {epoch}/{args.epochs}")
      order = rng.permutation(len(x_train))
      losses = []
      for i in range(steps_per_epoch):
        idx = order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
        params, opt_state, loss = train_step(params, opt_state, x_train[idx], y_train[idx])
        losses.append(loss)
        bar.update(1)
      history["train_loss"].append(float(jnp.mean(jnp.stack(losses))))
      history["val_acc"].append(float(accuracy(params, x_val, y_val)))
      history["val_acc_ema"].append(float(accuracy(optadam.ema_params(opt_state), x_val, y_val)))
      bar.set_postfix(
        loss=f"{history['train_loss'][-1]:.4f}",
        val_acc=f"{history['val_acc'][-1]:.3f}",
        ema_acc=f"{history['val_acc_ema'][-1]:.3f}",
      )

  # As Keras's fit() does at the end with use_ema=True: the weights become their averages.
  final_params = optadam.finalize_variable_values(params, opt_state)
  metrics = {
    "epochs": args.epochs,
    "steps": total_steps,
    "train_loss": history["train_loss"][-1],
    "val_accuracy": history["val_acc"][-1],
    "val_accuracy_ema": history["val_acc_ema"][-1],
    "val_accuracy_final": float(accuracy(final_params, x_val, y_val)),
    "history": history,
  }
  metrics["plot"] = save_plot(history, os.path.join(args.out, "loss_curve.png"))
  if not args.quiet:
    print(f"final train loss: {metrics['train_loss']:.4f}")
    print(
      f"validation accuracy: {metrics['val_accuracy']:.4f} (raw weights), "
      f"{metrics['val_accuracy_ema']:.4f} (EMA weights), "
      f"{metrics['val_accuracy_final']:.4f} (after finalize_variable_values)"
    )
    print(f"plot saved to {metrics['plot']}")
  return metrics


def save_plot(history: dict, path: str) -> str:
  """Training loss and validation accuracy (raw vs EMA weights) per epoch, as a PNG."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  epochs = np.arange(1, len(history["train_loss"]) + 1)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  ax_loss.plot(epochs, history["train_loss"], marker="o", markersize=3, color="tab:blue")
  ax_loss.set(
    title="Training loss", xlabel="epoch", ylabel="cross-entropy (mean over epoch)", yscale="log"
  )
  ax_acc.plot(epochs, history["val_acc"], marker="o", markersize=3, label="raw weights")
  ax_acc.plot(
    epochs,
    history["val_acc_ema"],
    marker="s",
    markersize=3,
    label="EMA weights (optadam.ema_params)",
  )
  ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy")
  ax_acc.legend(loc="lower right")
  for ax in (ax_loss, ax_acc):
    ax.grid(True, alpha=0.3)
  fig.suptitle("optadam.adam on sklearn digits (Flax MLP, cosine lr, weight_decay=1e-4, use_ema)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


if __name__ == "__main__":
  main()
