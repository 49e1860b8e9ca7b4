"""Writes the notebooks of this folder, without outputs:  python notebooks/make_notebooks.py

The cells of every notebook are defined here, so that all of them share the same
first cell (Colab install guard, backend line), stay valid nbformat v4 and are
committed clean. To change a notebook, edit it here, run this script and commit
both; `tests/test_notebooks.py` checks that the committed notebooks are what this
script writes, that they carry no outputs, and executes each of them.
"""

from __future__ import annotations

import os
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = "optadam/optadam"
PIP_SPEC = f'"optadam[examples] @ git+https://github.com/{REPO}"'


def badge(name: str) -> str:
  url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name}.ipynb"
  return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def md(text: str):
  return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str):
  return new_code_cell(textwrap.dedent(text).strip())


def setup_cell(pre: str = "", extra_pip: str = "") -> object:
  """First cell: Colab install guard, then the backend JAX runs on."""
  pre = textwrap.dedent(pre).strip()
  return code(
    (pre + "\n" if pre else "import sys\n") + "\n"
    "# In Colab: install optadam (and the examples' dependencies) from GitHub.\n"
    '# Elsewhere: run from a checkout with `pip install -e ".[examples]"` done.\n'
    'if "google.colab" in sys.modules:\n'
    f"  %pip install -q {PIP_SPEC}{extra_pip}\n"
    "\n"
    "import jax\n"
    "\n"
    'print(f"JAX {jax.__version__}; backend: {jax.default_backend().upper()}; "\n'
    '      f"{jax.device_count()} device(s): {jax.devices()}")'
  )


def write(name: str, cells: list, out_dir: str = HERE) -> None:
  nb = new_notebook(
    cells=cells,
    metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"},
      "colab": {"provenance": [], "toc_visible": True},
    },
  )
  for i, cell in enumerate(nb.cells):  # stable ids: no diff noise when the script is re-run
    cell.id = f"{name}-{i:02d}"
  nbformat.validate(nb)
  with open(os.path.join(out_dir, f"{name}.ipynb"), "w", encoding="utf-8") as f:
    nbformat.write(nb, f)


# ----------------------------------------------------------------------------------------------
# 1. quickstart
# ----------------------------------------------------------------------------------------------

QUICKSTART = [
  md(f"""
    # optadam quickstart: Keras's Adam in a Flax training loop

    {badge("quickstart")}

    `optadam.adam(...)` is `tf.keras.optimizers.Adam` (Keras 2, TF 2.11–2.15) as one
    `optax.GradientTransformation`: Keras's arguments and defaults, Keras's arithmetic. This
    notebook trains a small Flax (linen) MLP on scikit-learn's 8×8 digits (bundled with
    scikit-learn, no download) with `optadam.adam`, runs the same training with `optax.adam`
    beside it, and shows on a tiny example where the two differ: Keras's **epsilon-hat**.

    Runs on CPU in well under a minute; any Colab runtime works.
    """),
  setup_cell(),
  md("""
    ## Data and model

    1797 digit images, 64 pixels each, scaled to [0, 1] and split 80/20. The model is a
    64 → 128 → 64 → 10 MLP.
    """),
  code("""
    %matplotlib inline
    import time

    import flax.linen as nn
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import optadam

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y.astype(np.int32), test_size=0.2, random_state=0, stratify=y)
    print("train", x_train.shape, "validation", x_val.shape)


    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


    model = MLP()
    params0 = model.init(jax.random.key(0), x_train[:1])
    print(jax.tree.map(jnp.shape, params0))
    """),
  md("""
    ## A training loop for any optax optimizer

    `train(tx)` starts from the same initial parameters and sees the same mini-batches (fixed
    shuffling seed) whatever the optimizer, so runs are directly comparable. The train step is
    the usual optax one: `tx.update(grads, opt_state, params)` then `optax.apply_updates`.
    """),
  code("""
    BATCH_SIZE, EPOCHS = 64, 15


    def loss_and_logits(params, x, y):
      logits = model.apply(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


    def train(tx, epochs=EPOCHS, seed=0):
      @jax.jit
      def train_step(params, opt_state, x, y):
        grads = jax.grad(lambda p: loss_and_logits(p, x, y)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

      @jax.jit
      def evaluate(params, x, y):
        loss, logits = loss_and_logits(params, x, y)
        return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)

      params, opt_state = params0, tx.init(params0)
      rng = np.random.default_rng(seed)  # the same batches for every optimizer
      history = {k: [] for k in ("train_loss", "val_loss", "train_acc", "val_acc")}
      for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for i in range(len(x_train) // BATCH_SIZE):
          idx = order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]
          params, opt_state = train_step(params, opt_state, x_train[idx], y_train[idx])
        for split, (xs, ys) in (("train", (x_train, y_train)), ("val", (x_val, y_val))):
          loss, acc = evaluate(params, xs, ys)
          history[f"{split}_loss"].append(float(loss))
          history[f"{split}_acc"].append(float(acc))
      return params, opt_state, history
    """),
  md("""
    ## Train with `optadam.adam`

    Keras's defaults: `learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7`. The state is
    an `optadam.AdamState` with one named field per transform of the chain.
    """),
  code("""
    tx = optadam.adam(learning_rate=1e-3)

    start = time.perf_counter()
    params, opt_state, hist_optadam = train(tx)
    print(f"optadam.adam: {time.perf_counter() - start:.1f} s, "
          f"validation accuracy {hist_optadam['val_acc'][-1]:.3f}")
    print("state fields:", opt_state._fields, "| steps taken:", int(opt_state.adam.count))
    assert hist_optadam["val_acc"][-1] > 0.9
    """),
  md("""
    ## The same run with `optax.adam`

    Same learning rate, betas and the same *nominal* epsilon (`eps=1e-7`). For most parameters
    epsilon is tiny next to `sqrt(v)`, so the curves nearly coincide and most parameters end
    close. Not all: epsilon sits in a different place in the two optimizers, and for parameters
    with tiny gradients (hidden units that rarely activate) it is not small next to `sqrt(v)`;
    those end up far apart. `optax.adam` is a close relative of Keras's Adam, not a reproduction
    of a Keras run.
    """),
  code("""
    params_optax, _, hist_optax = train(optax.adam(learning_rate=1e-3, eps=1e-7))

    epochs = np.arange(1, EPOCHS + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for hist, name, style, width in ((hist_optadam, "optadam.adam", "-", 2.5),
                                     (hist_optax, "optax.adam", "--", 1.2)):
      for split, color in (("train", "tab:blue"), ("val", "tab:orange")):
        label = f"{name}, {'train' if split == 'train' else 'validation'}"
        ax_loss.plot(epochs, hist[f"{split}_loss"], style, color=color, lw=width, label=label)
        ax_acc.plot(epochs, hist[f"{split}_acc"], style, color=color, lw=width, label=label)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy", yscale="log")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
      ax.grid(True, alpha=0.3)
      ax.legend()
    fig.suptitle("Flax MLP on sklearn digits: optadam.adam vs optax.adam (lr=1e-3)")
    fig.tight_layout()
    plt.show()

    diff = np.concatenate([np.abs(np.asarray(a - b)).ravel()
                           for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_optax))])
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(params))
    print(f"final parameters, |optadam - optax|: median {np.median(diff):.1e}, "
          f"max {diff.max():.1e} (largest |parameter|: {scale:.2f})")
    """),
  md("""
    ## Epsilon-hat: where Keras's epsilon goes

    The textbook (and `optax.adam`) update is `lr * m̂ / (sqrt(v̂) + ε)` with the bias-corrected
    moments `m̂ = m / (1 - β₁ᵗ)` and `v̂ = v / (1 - β₂ᵗ)`. Keras folds both corrections into the
    step size instead, `alpha = lr * sqrt(1 - β₂ᵗ) / (1 - β₁ᵗ)`, and updates with
    `alpha * m / (sqrt(v) + ε)`: its epsilon ("epsilon hat" in the Adam paper) is added to the
    *uncorrected* `sqrt(v)`, outside the square root, and is never bias-corrected. Multiplying
    out, Keras's update equals the textbook one with `ε / sqrt(1 - β₂ᵗ)` in place of `ε`, an
    epsilon that starts `1/sqrt(1 - β₂) ≈ 31.6` times larger (for `β₂ = 0.999`) and decays
    to `ε` over a few thousand steps. With the default `1e-7` this hardly matters; with the
    large epsilons used for stability (Keras's documentation suggests `1.0` or `0.1` for an
    Inception network on ImageNet) the two optimizers take visibly different steps. `optadam.adam(epsilon=e)` gives
    Keras's steps, `optax.adam(eps=e)` does not, and no constant `eps` makes them agree.
    """),
  code("""
    lr, b1, b2, eps = 1.0, 0.9, 0.999, 1.0
    grads = np.array([0.5, -0.2, 0.8, 0.1, 0.3, -0.6], np.float32)


    def updates_of(tx):
      p = jnp.zeros(())
      state = tx.init(p)
      out = []
      for g in grads:
        u, state = tx.update(jnp.asarray(g), state, p)
        out.append(float(u))
      return np.array(out)


    u_optadam = updates_of(optadam.adam(learning_rate=lr, epsilon=eps))
    u_optax = updates_of(optax.adam(learning_rate=lr, eps=eps))

    # The textbook formula, in float64, with epsilon / sqrt(1 - beta_2**t) instead of epsilon.
    m = v = 0.0
    u_textbook_hat = []
    for t, g in enumerate(grads.astype(np.float64), start=1):
      m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
      m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
      u_textbook_hat.append(-lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - b2**t)))
    u_textbook_hat = np.array(u_textbook_hat)

    print(" t   grad    optadam.adam   optax.adam   textbook, eps/sqrt(1-b2^t)")
    for t, (g, a, o, h) in enumerate(zip(grads, u_optadam, u_optax, u_textbook_hat), start=1):
      print(f"{t:2d}  {g:5.2f}   {a:12.6f}  {o:11.6f}   {h:12.6f}")
    np.testing.assert_allclose(u_optadam, u_textbook_hat, rtol=1e-4)  # float32 vs float64
    assert np.max(np.abs(u_optadam - u_optax)) > 0.1  # a different optimizer, not rounding
    """),
  md("""
    The effective (textbook) epsilon of Keras's update over the steps, for `ε = 1e-7` and
    `β₂ = 0.999`:
    """),
  code("""
    t = np.arange(1, 20001)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.loglog(t, 1e-7 / np.sqrt(1 - 0.999**t), label="Keras / optadam: ε / sqrt(1 - β₂ᵗ)")
    ax.loglog(t, np.full(t.shape, 1e-7), "--", label="optax.adam: ε")
    ax.set(xlabel="step t", ylabel="effective epsilon", title="epsilon-hat vs epsilon (ε = 1e-7)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()
    """),
  md("""
    **Next:** [keras_to_jax.ipynb](keras_to_jax.ipynb) moves a Keras model and its optimizer to
    JAX, step for step; [ema_and_clipping.ipynb](ema_and_clipping.ipynb) covers EMA, clipping and
    AMSGrad; [sharded_training.ipynb](sharded_training.ipynb) shards the optimizer state with the
    parameters.
    """),
]


# ----------------------------------------------------------------------------------------------
# 2. keras_to_jax
# ----------------------------------------------------------------------------------------------

KERAS_TO_JAX = [
  md(f"""
    # From Keras to JAX: the same model, the same optimizer, the same trajectory

    {badge("keras_to_jax")}

    A Keras 3 model (JAX backend) and its Flax twin start from the **same initial weights**
    (copied from Keras into the Flax parameters) and see the **same batches**. We

    1. build `optadam.adam` from the Keras optimizer's `get_config()` with
       `optadam.from_keras_config`, and round-trip the configuration with `optadam.get_config`;
    2. train both models, each framework with its own gradients, and overlay the curves;
    3. feed *identical* gradients to `keras.optimizers.Adam.apply_gradients` and to
       `optadam.adam`, and plot the per-step parameter difference.
    """),
  setup_cell(
    pre="""
    import os
    import sys

    os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported
    """,
    extra_pip=' "keras>=3.5"',
  ),
  code("""
    %matplotlib inline
    import json

    import flax.linen as nn
    import jax.numpy as jnp
    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import optadam

    # Full float32 matmuls on GPU/TPU too (their default may use TF32 / bfloat16 passes), so
    # that the comparisons below are at float32 rounding on every backend.
    jax.config.update("jax_default_matmul_precision", "highest")
    print("Keras", keras.__version__, "backend:", keras.backend.backend())
    assert keras.backend.backend() == "jax"

    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn
    x = (x / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y.astype(np.int32), test_size=0.2, random_state=0, stratify=y)
    BATCH_SIZE, EPOCHS = 64, 8
    steps_per_epoch = len(x_train) // BATCH_SIZE
    order_rng = np.random.default_rng(0)
    batches = [order[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]  # index batches, shared by both runs
               for order in (order_rng.permutation(len(x_train)) for _ in range(EPOCHS))
               for i in range(steps_per_epoch)]
    print(f"{len(batches)} steps of {BATCH_SIZE} examples")
    """),
  md("""
    ## The Keras model and its Flax twin

    Keras's `Dense` kernel is `(inputs, outputs)`, as Flax's, so the weights copy over as they are.
    The two models then compute the same logits (up to float32 rounding).
    """),
  code("""
    def make_keras_model():
      keras.utils.set_random_seed(0)
      return keras.Sequential([
          keras.Input((64,)),
          keras.layers.Dense(64, activation="relu"),
          keras.layers.Dense(10),
      ])


    class FlaxMLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


    keras_model = make_keras_model()
    flax_model = FlaxMLP()


    def keras_weights_to_flax(model):
      dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
      return {"params": {f"Dense_{i}": {"kernel": jnp.array(layer.kernel.numpy()),
                                        "bias": jnp.array(layer.bias.numpy())}
                         for i, layer in enumerate(dense)}}


    def flax_to_keras_order(tree):
      # keras_model.trainable_variables: Dense_0 kernel, Dense_0 bias, Dense_1 kernel, Dense_1 bias
      p = tree["params"]
      return [p[f"Dense_{i}"][name] for i in range(2) for name in ("kernel", "bias")]


    params0 = keras_weights_to_flax(keras_model)
    reference = flax_model.init(jax.random.key(0), x_train[:1])
    assert jax.tree.map(jnp.shape, reference) == jax.tree.map(jnp.shape, params0)
    initial_keras_weights = keras_model.get_weights()

    logits_diff = np.max(np.abs(np.asarray(keras_model(x_val)) -
                                np.asarray(flax_model.apply(params0, x_val))))
    print(f"max |Keras logits - Flax logits| at initialisation: {logits_diff:.2e}")
    assert logits_diff < 1e-5
    """),
  md("""
    ## The optimizer: from Keras's config to optadam and back

    A tf.keras model carries its optimizer's configuration (`model.optimizer.get_config()`, also
    saved in `.keras` / SavedModel files). `optadam.from_keras_config` turns it into the same
    optimizer for JAX; `optadam.get_config(tx, keras_version=3)` writes the Keras 3 dict back
    (`keras_version=2`, the default, writes Keras 2's keys), JSON-serialisable.
    """),
  code("""
    def make_keras_optimizer():
      return keras.optimizers.Adam(learning_rate=3e-3, epsilon=1e-6, amsgrad=True,
                                   weight_decay=1e-4)


    keras_config = make_keras_optimizer().get_config()
    tx = optadam.from_keras_config(keras_config)
    optadam_config = optadam.get_config(tx, keras_version=3)

    print(f"{'key':26s} {'Keras get_config()':>24s}   {'optadam.get_config()':>22s}")
    for key in keras_config:
      print(f"{key:26s} {keras_config[key]!r:>24}   {optadam_config.get(key, '(absent)')!r:>22}")
    assert optadam_config == keras_config

    # A JSON round trip, and Keras 2's keys (what tf.keras 2.11-2.15 writes):
    again = optadam.from_keras_config(json.loads(json.dumps(optadam.get_config(tx))))
    assert optadam.get_config(again) == optadam.get_config(tx)
    print("\\nKeras 2 form:", json.dumps(optadam.get_config(tx)))
    """),
  md("""
    Learning-rate schedules come across too: a Keras schedule in the config becomes the matching
    `optadam.schedules` class (same arguments, same formula).
    """),
  code("""
    schedule = keras.optimizers.schedules.ExponentialDecay(3e-3, decay_steps=100, decay_rate=0.5)
    with_schedule = optadam.from_keras_config(keras.optimizers.Adam(learning_rate=schedule).get_config())
    optadam_schedule = with_schedule.keras_args["learning_rate"]
    print(optadam_schedule)
    steps = np.array([0, 50, 100, 250])
    print("Keras  :", [float(schedule(s)) for s in steps])
    print("optadam:", [float(optadam_schedule(s)) for s in steps])
    np.testing.assert_allclose([float(optadam_schedule(s)) for s in steps],
                               [float(schedule(s)) for s in steps], rtol=1e-6)
    """),
  md("""
    ## Run 1: each framework trains its own model

    Keras trains with `train_on_batch` (what `fit` does per batch) and computes its own
    gradients; Flax computes its gradients with `jax.grad` and steps with the optadam optimizer
    built from the Keras config. Same initial weights, same batches, same loss.
    """),
  code("""
    keras_model = make_keras_model()
    keras_model.set_weights(initial_keras_weights)
    keras_model.compile(optimizer=make_keras_optimizer(),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


    def loss_fn(params, x, y):
      return optax.softmax_cross_entropy_with_integer_labels(flax_model.apply(params, x), y).mean()


    @jax.jit
    def flax_step(params, opt_state, x, y):
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss, grads


    def max_param_diff(params, keras_model):
      ours = flax_to_keras_order(params)
      absolute = max(float(np.max(np.abs(np.asarray(a) - w)))
                     for a, w in zip(ours, keras_model.get_weights()))
      scale = max(float(np.max(np.abs(w))) for w in keras_model.get_weights())
      return absolute, absolute / scale


    params, opt_state = params0, tx.init(params0)
    run1 = {"keras_loss": [], "optadam_loss": [], "abs": [], "rel": []}
    for idx in batches:
      xb, yb = x_train[idx], y_train[idx]
      run1["keras_loss"].append(float(keras_model.train_on_batch(xb, yb)))
      params, opt_state, loss, _ = flax_step(params, opt_state, xb, yb)
      run1["optadam_loss"].append(float(loss))
      a, r = max_param_diff(params, keras_model)
      run1["abs"].append(a)
      run1["rel"].append(r)
    print(f"final loss: Keras {run1['keras_loss'][-1]:.4f}, optadam {run1['optadam_loss'][-1]:.4f}; "
          f"max relative parameter difference over the run {max(run1['rel']):.1e}")
    """),
  md("""
    ## Run 2: identical gradients

    In run 1 the two *models* differ by float32 rounding too: Keras's and Flax's forward and
    backward passes, and their cross-entropies, are different XLA programs, so the gradients
    differ in the last bits, and a ReLU network amplifies such differences over the steps. To
    compare the **optimizers** alone, we compute each step's gradients once, with JAX on the Flax
    parameters, and hand the very same arrays to `keras_optimizer.apply_gradients` (on the Keras
    model's variables) and to optadam. Any parameter difference is then the optimizers' own
    arithmetic.
    """),
  code("""
    keras_model = make_keras_model()
    keras_model.set_weights(initial_keras_weights)
    keras_optimizer = make_keras_optimizer()

    params, opt_state = params0, tx.init(params0)
    run2 = {"abs": [], "rel": [], "bit_equal_steps": 0}
    for idx in batches:
      params, opt_state, _, grads = flax_step(params, opt_state, x_train[idx], y_train[idx])
      keras_optimizer.apply_gradients(zip(flax_to_keras_order(grads),
                                          keras_model.trainable_variables))
      a, r = max_param_diff(params, keras_model)
      run2["abs"].append(a)
      run2["rel"].append(r)
      run2["bit_equal_steps"] += a == 0.0

    print(f"max relative parameter difference: {max(run2['rel']):.1e} "
          f"(float32 epsilon is {np.finfo(np.float32).eps:.1e}); "
          f"bit-identical after {run2['bit_equal_steps']} of {len(batches)} steps")
    assert max(run2["rel"]) < 1e-6
    """),
  code("""
    steps = np.arange(1, len(batches) + 1)
    fig, (ax_loss, ax_diff) = plt.subplots(1, 2, figsize=(12, 4))
    ax_loss.plot(steps, run1["keras_loss"], lw=2.5, alpha=0.6, label="keras.optimizers.Adam (Keras model)")
    ax_loss.plot(steps, run1["optadam_loss"], "--", lw=1, color="k", label="optadam.adam (Flax model)")
    ax_loss.set(title="Training loss per step (run 1)", xlabel="step", ylabel="cross-entropy",
                yscale="log")
    floor = 1e-9  # bit-identical steps (difference 0) would be drawn at this floor
    ax_diff.semilogy(steps, np.maximum(run1["rel"], floor), label="run 1: own gradients")
    ax_diff.semilogy(steps, np.maximum(run2["rel"], floor), label="run 2: identical gradients")
    ax_diff.axhline(np.finfo(np.float32).eps, color="gray", ls=":", label="float32 epsilon")
    ax_diff.set(title="max |Keras - optadam| / max |param|, per step", xlabel="step",
                ylabel=f"relative difference (0 drawn at {floor:g})", ylim=(floor / 3, 1e-4))
    for ax in (ax_loss, ax_diff):
      ax.grid(True, which="both", alpha=0.3)
      ax.legend()
    fig.tight_layout()
    plt.show()
    """),
  md("""
    Run 2 stays at float32 noise — a relative difference of about one float32 epsilon, a few
    units in the last place, over the whole run: `optadam.adam` performs Keras's update —
    epsilon-hat, AMSGrad over the raw second moment, Keras's decoupled weight decay — step for
    step, and the two differ only in how XLA rounds the same formulas. For this small model run 1
    stays almost as close: the two models' gradients differ only in their last bits too. In
    deeper models those differences grow over the steps; run 2 is the comparison that isolates
    the optimizer. To continue a run that Keras started, `optadam.state_from_keras` also imports
    the Keras optimizer's variables (step count, moments, v-hat, EMA).
    """),
]


# ----------------------------------------------------------------------------------------------
# 3. ema_and_clipping
# ----------------------------------------------------------------------------------------------


EMA_AND_CLIPPING = [
  md(f"""
    # EMA, gradient clipping and AMSGrad

    {badge("ema_and_clipping")}

    Three features of Keras's `Adam` that `optax.adam` lacks or does differently:

    1. **EMA of the weights** (`use_ema=True`, `ema_momentum`, `ema_overwrite_frequency`): a moving
       average of the *parameters*, read with `optadam.ema_params(opt_state)`, optionally written
       into the parameters every N steps, and put into them at the end with
       `optadam.finalize_variable_values` (what Keras's `fit` does);
    2. **three clipping modes**: `clipnorm` (each tensor on its own), `global_clipnorm` (all
       tensors together) and `clipvalue` (element by element);
    3. **AMSGrad** over the raw (not bias-corrected) second moment.

    All data is generated or bundled with scikit-learn; runs on CPU in under a minute.
    """),
  setup_cell(),
  code("""
    %matplotlib inline
    import flax.linen as nn
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import optadam
    """),
  md("""
    ## 1. EMA of the weights

    A Flax MLP on scikit-learn's digits with a deliberately high learning rate (`1e-2`) and small
    batches, so that the raw weights are noisy. With `use_ema=True` the optimizer state also keeps
    `average = 0.99 * average + 0.01 * weights` after every step. Every 10 steps we compute the
    validation loss of the raw weights and of the averaged weights, `optadam.ema_params(opt_state)`,
    without touching the training parameters (what Keras's `SwapEMAWeights` callback is for).

    A second run adds `ema_overwrite_frequency=100`: after every 100th step the weights jump to
    their average (Keras's overwrite), and from there training continues from the averaged weights.
    """),
  code("""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y.astype(np.int32), test_size=0.2, random_state=0, stratify=y)


    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


    model = MLP()
    params0 = model.init(jax.random.key(0), x_train[:1])
    STEPS, BATCH_SIZE, EVAL_EVERY, OVERWRITE = 600, 32, 10, 100


    def loss_fn(params, x, y):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()


    @jax.jit
    def accuracy(params, x, y):
      return jnp.mean(jnp.argmax(model.apply(params, x), axis=-1) == y)


    evaluate = jax.jit(loss_fn)


    def train_with_ema(tx, overwrites=False):
      @jax.jit
      def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optadam.apply_updates(params, updates), opt_state, loss

      params, opt_state = params0, tx.init(params0)
      rng = np.random.default_rng(0)  # the same batches for both runs
      hist = {"train": [], "eval_step": [], "val_raw": [], "val_ema": []}
      for i in range(1, STEPS + 1):
        idx = rng.integers(0, len(x_train), BATCH_SIZE)
        params, opt_state, loss = step(params, opt_state, x_train[idx], y_train[idx])
        hist["train"].append(float(loss))
        if i % EVAL_EVERY == 0:
          hist["eval_step"].append(i)
          hist["val_raw"].append(float(evaluate(params, x_val, y_val)))
          hist["val_ema"].append(float(evaluate(optadam.ema_params(opt_state), x_val, y_val)))
        if overwrites and i % OVERWRITE == 0:  # right after an overwrite: weights == average
          assert all(bool(jnp.array_equal(p, a)) for p, a in zip(
              jax.tree.leaves(params), jax.tree.leaves(optadam.ema_params(opt_state))))
      return params, opt_state, hist


    params_ema, state_ema, hist_ema = train_with_ema(
        optadam.adam(learning_rate=1e-2, use_ema=True, ema_momentum=0.99))
    params_ow, state_ow, hist_ow = train_with_ema(
        optadam.adam(learning_rate=1e-2, use_ema=True, ema_momentum=0.99,
                     ema_overwrite_frequency=OVERWRITE), overwrites=True)
    print("final validation loss, raw weights / EMA weights:")
    print(f"  use_ema=True:                 {hist_ema['val_raw'][-1]:.4f} / {hist_ema['val_ema'][-1]:.4f}")
    print(f"  + ema_overwrite_frequency=100: {hist_ow['val_raw'][-1]:.4f} / {hist_ow['val_ema'][-1]:.4f}")
    """),
  code("""
    def smooth(values, n=20):
      return np.convolve(values, np.ones(n) / n, mode="valid")


    steps = np.arange(1, STEPS + 1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for ax, hist, title in ((axes[0], hist_ema, "use_ema=True, ema_momentum=0.99"),
                            (axes[1], hist_ow, f"... and ema_overwrite_frequency={OVERWRITE}")):
      ax.plot(steps, hist["train"], color="tab:gray", alpha=0.25, lw=0.8, label="training loss (batch)")
      ax.plot(steps[19:], smooth(hist["train"]), color="tab:gray", label="training loss (20-step mean)")
      ax.plot(hist["eval_step"], hist["val_raw"], "o-", ms=3, color="tab:blue",
              label="validation loss, raw weights")
      ax.plot(hist["eval_step"], hist["val_ema"], "s-", ms=3, color="tab:orange",
              label="validation loss, EMA weights (optadam.ema_params)")
      ax.set(title=title, xlabel="step", yscale="log", ylim=(0.02, 3))
      ax.grid(True, which="both", alpha=0.3)
    for s in range(OVERWRITE, STEPS + 1, OVERWRITE):
      axes[1].axvline(s, color="tab:red", ls=":", lw=1)
    axes[0].set_ylabel("cross-entropy")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].text(OVERWRITE + 5, 2.2, "dotted: overwrite steps", color="tab:red", fontsize=8)
    fig.tight_layout()
    plt.show()
    """),
  md("""
    The averaged weights are smoother and, once the average has warmed up (~1/(1 - 0.99) = 100
    steps), better on validation data than the raw weights they average; early on the average
    still remembers the initial weights. With overwrite, the raw weights' validation loss lands on
    the EMA curve at every dotted line — the weights now *are* the average, bit for bit (the loop
    asserts it); at step 100, while the average is still warming up, that is a step back — and
    training continues from there.

    At the end of training Keras's `fit` replaces the weights by their averages; with optadam that
    is `optadam.finalize_variable_values(params, opt_state)` (a no-op without `use_ema`):
    """),
  code("""
    final = optadam.finalize_variable_values(params_ema, state_ema)
    for name, p in (("raw weights", params_ema), ("finalize_variable_values", final)):
      print(f"{name:26s} validation loss {float(evaluate(p, x_val, y_val)):.4f}, "
            f"accuracy {float(accuracy(p, x_val, y_val)):.4f}")
    assert jax.tree.all(jax.tree.map(jnp.array_equal, final, optadam.ema_params(state_ema)))
    """),
  md("""
    ## 2. Clipping: `clipnorm` vs `global_clipnorm` vs `clipvalue`

    On a gradient with two tensors — `kernel = [3, 4]` (norm 5) and `bias = [0.5]` — and a
    threshold of 1, the three Keras modes (also available as optax transforms:
    `optadam.clip_by_tensor_norm`, `optadam.clip_by_keras_global_norm`, `optadam.clip_by_value`)
    give:
    """),
  code("""
    g = {"kernel": jnp.array([3.0, 4.0]), "bias": jnp.array([0.5])}
    for name, clip in (("clipnorm=1", optadam.clip_by_tensor_norm(1.0)),
                       ("global_clipnorm=1", optadam.clip_by_keras_global_norm(1.0)),
                       ("clipvalue=1", optadam.clip_by_value(1.0))):
      out, _ = clip.update(g, clip.init(g))
      print(f"{name:18s} kernel {np.round(np.asarray(out['kernel']), 4)}  bias {np.round(np.asarray(out['bias']), 4)}"
            f"   global norm {float(optax.global_norm(out)):.4f}")
    """),
  md("""
    `clipnorm` rescales each tensor to norm ≤ 1 on its own (the bias keeps its 0.5, so the
    direction of the whole gradient changes); `global_clipnorm` rescales everything by one factor
    (direction kept, global norm 1); `clipvalue` cuts each element to [-1, 1].

    **Occasional gradient spikes.** A linear regression (20 features + bias) trained with batches
    of 32; at steps 100, 250, 400 and 550 a quarter of the batch has labels off by +1000 (a
    corrupted batch), which makes the gradient ~1000× larger than usual. Without clipping, Adam
    takes a big step in the spike's direction and — worse — the spike inflates the second moment
    `v`, which then needs thousands of steps (`1/(1 - β₂)`) to decay, so all later steps are tiny
    and the model stays broken. Each clipping mode bounds what one batch can do.
    """),
  code("""
    rng = np.random.default_rng(0)
    D, N, STEPS_REG, B = 20, 4096, 600, 32
    SPIKES = list(range(100, STEPS_REG, 150))
    w_true, b_true = rng.normal(size=D).astype(np.float32), np.float32(0.5)
    X = rng.normal(size=(N, D)).astype(np.float32)
    Y = X @ w_true + b_true + 0.1 * rng.normal(size=N).astype(np.float32)
    X_val = rng.normal(size=(1024, D)).astype(np.float32)
    Y_val = X_val @ w_true + b_true
    reg_batches = []
    for s in range(STEPS_REG):
      idx = rng.integers(0, N, B)
      yb = Y[idx].copy()
      if s in SPIKES:
        yb[: B // 4] += 1000.0  # a corrupted batch: a gradient spike
      reg_batches.append((X[idx], yb))


    def mse(p, x, y):
      return jnp.mean((x @ p["kernel"] + p["bias"] - y) ** 2)


    def run_regression(tx):
      @jax.jit
      def step(p, s, x, y):
        grads = jax.grad(mse)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, mse(p, X_val, Y_val), optax.global_norm(grads)

      p = {"kernel": jnp.zeros(D), "bias": jnp.zeros(())}
      s = tx.init(p)
      val, gnorm = [], []
      for xb, yb in reg_batches:
        p, s, v, n = step(p, s, xb, yb)
        val.append(float(v))
        gnorm.append(float(n))
      return np.array(val), np.array(gnorm)


    runs = {}
    for label, kwargs in (("no clipping", {}), ("clipnorm=5", {"clipnorm": 5.0}),
                          ("global_clipnorm=5", {"global_clipnorm": 5.0}),
                          ("clipvalue=1", {"clipvalue": 1.0})):
      runs[label], grad_norm = run_regression(optadam.adam(learning_rate=0.05, **kwargs))
    for label, val in runs.items():
      print(f"{label:18s} validation MSE: before the first spike {val[SPIKES[0] - 1]:.4f}, "
            f"at the end {val[-1]:.4f}")
    assert runs["no clipping"][-1] > 100 * max(runs["clipnorm=5"][-1], runs["global_clipnorm=5"][-1])
    """),
  code("""
    fig, (ax_val, ax_norm) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    for label, val in runs.items():
      ax_val.plot(np.arange(1, STEPS_REG + 1), val, label=label, lw=1.2)
    ax_norm.plot(np.arange(1, STEPS_REG + 1), grad_norm, color="tab:gray")
    for s in SPIKES:
      for ax in (ax_val, ax_norm):
        ax.axvline(s + 1, color="tab:red", ls=":", lw=1)
    ax_val.set(title="Validation MSE with occasional gradient spikes (red: spike steps)",
               xlabel="step", ylabel="MSE", yscale="log", ylim=(3e-4, 5e2))
    ax_norm.set(title="Global gradient norm (raw)", xlabel="step", yscale="log")
    ax_val.legend(loc="upper center", ncol=4, fontsize=8)
    for ax in (ax_val, ax_norm):
      ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    plt.show()
    """),
  md("""
    All three modes contain the spikes here: each corrupted batch costs a short bump, after which
    training goes on at the normal step size. The choice matters for models with tensors of very
    different scales: `clipnorm` treats every tensor alone (a spike in one layer does not shrink
    the others' steps, but the overall direction changes), `global_clipnorm` keeps the direction
    (the usual choice, as `optax.clip_by_global_norm`), `clipvalue` clips elements (the direction
    changes most). Keras allows only one of them at a time; so does `optadam.adam`.

    ## 3. AMSGrad: the running max of the raw second moment

    With `amsgrad=True` the denominator uses `v̂ = max(v̂, v)`, the running maximum of the
    *raw* second moment `v` (Keras). Below, a single parameter sees a gradient of 1 for 1000
    steps and of 0.1 afterwards — gradients shrink as training converges. Adam's `v` follows the
    gradients down (over ~`1/(1 - β₂)` = 1000 steps) and its step size recovers; AMSGrad's `v̂`
    never decreases, so its steps stay several times smaller for good: the effective learning rate of
    AMSGrad is non-increasing, which its convergence proof needs. Both read straight from the
    state: `opt_state.adam.nu` and `opt_state.adam.nu_max`.

    `optax.amsgrad` is a different optimizer: it takes the maximum of the *bias-corrected* `v`
    (and uses the textbook epsilon), so it settles at another step size.
    """),
  code("""
    grads = np.ones(6000, np.float32)
    grads[1000:] = 0.1


    def trajectory(tx):
      p = jnp.zeros(())

      def body(state, g):
        update, state = tx.update(g, state, p)
        adam_state = getattr(state, "adam", None)  # optadam's AdamState; optax's states differ
        nu = nu_max = jnp.zeros(())
        if adam_state is not None:
          nu = adam_state.nu
          nu_max = nu if adam_state.nu_max is None else adam_state.nu_max
        return state, (-update, nu, nu_max)

      _, (step_size, nu, nu_max) = jax.lax.scan(body, tx.init(p), jnp.asarray(grads))
      return np.asarray(step_size), np.asarray(nu), np.asarray(nu_max)


    step_adam, nu_adam, _ = trajectory(optadam.adam(learning_rate=1.0))
    step_ams, nu_ams, nu_max_ams = trajectory(optadam.adam(learning_rate=1.0, amsgrad=True))
    step_optax_ams, _, _ = trajectory(optax.amsgrad(learning_rate=1.0, eps=1e-7))
    np.testing.assert_array_equal(nu_adam, nu_ams)  # the same raw v; AMSGrad also keeps its max
    assert np.all(np.diff(nu_max_ams) >= 0) and nu_max_ams[-1] > 10 * nu_adam[-1]
    print(f"step size at the end: Adam {step_adam[-1]:.3f}, optadam AMSGrad {step_ams[-1]:.3f}, "
          f"optax.amsgrad {step_optax_ams[-1]:.3f}")
    assert step_adam[-1] > 3 * step_ams[-1]

    t = np.arange(1, len(grads) + 1)
    fig, (ax_v, ax_step) = plt.subplots(1, 2, figsize=(12, 4))
    ax_v.plot(t, nu_adam, label="v (opt_state.adam.nu)")
    ax_v.plot(t, nu_max_ams, "--", label="v̂ = running max of v (opt_state.adam.nu_max)")
    ax_v.set(title="Second moment (gradient 1, then 0.1 from step 1000)", xlabel="step",
             yscale="log")
    ax_step.plot(t, step_adam, label="optadam.adam")
    ax_step.plot(t, step_ams, "--", label="optadam.adam(amsgrad=True)")
    ax_step.plot(t, step_optax_ams, ":", color="k", label="optax.amsgrad")
    ax_step.set(title="Step size |update| / learning_rate", xlabel="step", yscale="log")
    for ax in (ax_v, ax_step):
      ax.axvline(1000, color="tab:red", ls=":", lw=1)
      ax.grid(True, which="both", alpha=0.3)
      ax.legend()
    fig.tight_layout()
    plt.show()
    """),
  md("""
    The price of AMSGrad's guarantee: a phase of large gradients — or a single spike — lowers the
    step size for the rest of the run; another reason to combine it with clipping
    (`optadam.adam(amsgrad=True, global_clipnorm=...)`).
    """),
]


# ----------------------------------------------------------------------------------------------
# 4. sharded_training
# ----------------------------------------------------------------------------------------------

SHARDED_TRAINING = [
  md(f"""
    # Sharded training: the optimizer state follows the parameters

    {badge("sharded_training")}

    A small Flax model with its parameters split over a device mesh (`jax.make_mesh` +
    `NamedSharding`), trained with a jitted step. `optadam.adam`'s state — the moments `mu` and
    `nu`, AMSGrad's `nu_max` and the EMA average — is created by `jax.jit(tx.init)` with **the
    parameters' shardings**, and keeps them through training; `optadam.state_shardings(tx,
    param_shardings)` gives the same shardings explicitly (for `out_shardings`, or an Orbax
    restore target).

    On a CPU runtime the first cell asks XLA for 8 virtual CPU devices, so the mesh is real
    even without accelerators. On a TPU runtime with 8 cores (or any multi-device runtime) the
    real devices are used; on a single GPU/TPU chip the notebook shows the mechanics on the 8
    virtual CPU devices.
    """),
  setup_cell(
    pre="""
    import os
    import sys

    # 8 virtual CPU devices. Must be set before JAX starts; it only affects the CPU (host)
    # platform, so on a GPU or TPU runtime JAX still uses the real accelerators.
    if "jax" in sys.modules:
      print("JAX is already imported: restart the runtime for XLA_FLAGS to take effect.")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8").strip()
    """
  ),
  code("""
    %matplotlib inline
    import flax.linen as nn
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    import optadam

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 matmuls on GPU/TPU too
    devices = jax.devices()
    if len(devices) < 2:  # a single accelerator chip: use the 8 virtual CPU devices instead
      devices = jax.devices("cpu")
    n = len(devices)
    mesh_shape = (2, n // 2) if n % 2 == 0 and n >= 4 else (1, n)
    mesh = jax.make_mesh(mesh_shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)
    print(f"mesh {dict(mesh.shape)} on {n} {devices[0].platform.upper()} devices")
    """),
  md("""
    ## A model with sharded parameters

    A 64 → 128 → 10 MLP, split Megatron-style over the `model` axis: the first kernel by
    columns, its bias with it, the second kernel by rows; the last bias is replicated. Batches
    are split over the `data` axis. The parameters are created directly in their shardings by
    `jax.jit(model.init, out_shardings=...)`.
    """),
  code("""
    class MLP(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(10)(x)


    model = MLP()
    SPECS = {"Dense_0": {"kernel": P(None, "model"), "bias": P("model")},
             "Dense_1": {"kernel": P("model", None), "bias": P()}}
    param_shardings = {"params": jax.tree.map(lambda spec: NamedSharding(mesh, spec), SPECS)}
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    sample = jnp.zeros((1, 64), jnp.float32)
    params = jax.jit(model.init, out_shardings=param_shardings)(jax.random.key(0), sample)
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
      print(f"{jax.tree_util.keystr(path):38s} {str(p.shape):10s} {p.sharding.spec}")
    """),
  md("""
    ## The optimizer state: `jax.jit(tx.init)` keeps the parameters' shardings

    Keras options that add parameter-shaped state are on: AMSGrad's `nu_max` and the EMA average.
    """),
  code("""
    tx = optadam.adam(learning_rate=1e-2, amsgrad=True, weight_decay=1e-4,
                      exclude_from_weight_decay=["bias"], use_ema=True)
    opt_state = jax.jit(tx.init)(params)

    parts = {"mu": opt_state.adam.mu, "nu": opt_state.adam.nu, "nu_max": opt_state.adam.nu_max,
             "ema": optadam.ema_params(opt_state)}


    def check_state_shardings(params, parts):
      for name, tree in parts.items():
        for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(tree)):
          assert s.sharding.is_equivalent_to(p.sharding, p.ndim), (name, s.sharding, p.sharding)


    check_state_shardings(params, parts)
    print("every moment, v-hat and EMA leaf has its parameter's sharding; e.g.")
    print("  mu   Dense_0/kernel:", opt_state.adam.mu["params"]["Dense_0"]["kernel"].sharding)
    print("  nu   Dense_1/kernel:", opt_state.adam.nu["params"]["Dense_1"]["kernel"].sharding)
    print("  step count:        ", opt_state.adam.count.sharding)

    # The same shardings, computed without running init (for out_shardings / checkpoint restore):
    state_sh = optadam.state_shardings(tx, param_shardings)
    opt_state = jax.jit(tx.init, out_shardings=state_sh)(params)
    print("\\nstate_shardings(tx, param_shardings).adam.mu:")
    print(jax.tree.map(lambda s: s.spec, state_sh.adam.mu))
    """),
  md("""
    `jax.debug.visualize_array_sharding` draws which device holds which block: the first kernel
    (128 columns split over `model`, replicated over `data`) and its first moment, which lives
    exactly where the kernel does.
    """),
  code("""
    kernel = params["params"]["Dense_0"]["kernel"]
    print("params/Dense_0/kernel", kernel.shape)
    jax.debug.visualize_array_sharding(kernel)
    print("opt_state.adam.mu/params/Dense_0/kernel")
    jax.debug.visualize_array_sharding(opt_state.adam.mu["params"]["Dense_0"]["kernel"])
    print("opt_state.adam.nu/params/Dense_1/kernel", params["params"]["Dense_1"]["kernel"].shape)
    jax.debug.visualize_array_sharding(opt_state.adam.nu["params"]["Dense_1"]["kernel"])
    """),
  md("""
    **ZeRO-1.** With `zero1_axis="data"`, `optadam.state_shardings` also splits every
    parameter-shaped part of the state over the data-parallel axis: the parameters stay
    replicated over `data`, while each data-parallel replica keeps only its slice of `mu`, `nu`,
    `nu_max` and the EMA (XLA reduce-scatters the update into them and all-gathers the step).
    """),
  code("""
    zero1_sh = optadam.state_shardings(tx, params, zero1_axis="data")  # arrays: shapes known
    zero1_state = jax.jit(tx.init, out_shardings=zero1_sh)(params)
    mu_kernel = zero1_state.adam.mu["params"]["Dense_0"]["kernel"]
    print("ZeRO-1 mu/params/Dense_0/kernel:", mu_kernel.sharding.spec)
    jax.debug.visualize_array_sharding(mu_kernel)
    """),
  md("""
    ## A few jitted training steps

    Synthetic data: 10 classes from a fixed random teacher. The step pins its outputs to the
    parameters' and the state's shardings; the batch comes in split over `data`.
    """),
  code("""
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(64, 10)).astype(np.float32)
    STEPS, BATCH_SIZE = 40, 64
    data = []
    for _ in range(STEPS):
      xb = rng.normal(size=(BATCH_SIZE, 64)).astype(np.float32)
      data.append((xb, np.argmax(xb @ teacher, axis=-1).astype(np.int32)))


    def loss_fn(params, x, y):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()


    def step_fn(params, opt_state, x, y):
      loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optadam.apply_updates(params, updates), opt_state, loss


    train_step = jax.jit(step_fn, out_shardings=(param_shardings, state_sh, replicated))


    params_sharded, state_sharded = params, opt_state
    losses = []
    for xb, yb in data:
      params_sharded, state_sharded, loss = train_step(
          params_sharded, state_sharded, jax.device_put(xb, batch_sharding),
          jax.device_put(yb, batch_sharding))
      losses.append(float(loss))
    print(f"loss: step 1 {losses[0]:.3f} -> step {STEPS} {losses[-1]:.3f}")
    check_state_shardings(params_sharded, {
        "mu": state_sharded.adam.mu, "nu": state_sharded.adam.nu,
        "nu_max": state_sharded.adam.nu_max, "ema": optadam.ema_params(state_sharded)})
    print("after training, the moments' shardings:")
    for path, m in jax.tree_util.tree_flatten_with_path(state_sharded.adam.mu)[0]:
      print(f"  mu{jax.tree_util.keystr(path):36s} {m.sharding}")
    """),
  md("""
    Sharding changes where the numbers live, not what they are: the same steps on a single
    device give the same parameters, up to float32 rounding (the sharded matmuls sum in a
    different order).
    """),
  code("""
    one_device = jax.sharding.SingleDeviceSharding(devices[0])
    params_single = jax.device_put(params, one_device)
    state_single = jax.device_put(jax.jit(tx.init)(params), one_device)
    step_single = jax.jit(step_fn)
    losses_single = []
    for xb, yb in data:
      params_single, state_single, loss = step_single(
          params_single, state_single, jax.device_put(xb, one_device), jax.device_put(yb, one_device))
      losses_single.append(float(loss))
    worst = max(float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b))) / (1.0 + jnp.max(jnp.abs(np.asarray(b)))))
                for a, b in zip(jax.tree.leaves(params_sharded), jax.tree.leaves(params_single)))
    print(f"max relative difference, sharded vs single device after {STEPS} steps: {worst:.1e}")
    assert worst < 1e-5

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, STEPS + 1), losses, lw=2.5, alpha=0.6, label=f"sharded, mesh {dict(mesh.shape)}")
    ax.plot(np.arange(1, STEPS + 1), losses_single, "--", color="k", lw=1, label="single device")
    ax.set(title="Training loss", xlabel="step", ylabel="cross-entropy")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    plt.show()
    """),
]


NOTEBOOKS = {
  "quickstart": QUICKSTART,
  "keras_to_jax": KERAS_TO_JAX,
  "ema_and_clipping": EMA_AND_CLIPPING,
  "sharded_training": SHARDED_TRAINING,
}

if __name__ == "__main__":
  for notebook_name, notebook_cells in NOTEBOOKS.items():
    write(notebook_name, notebook_cells)
    print("wrote", os.path.join(HERE, f"{notebook_name}.ipynb"))
