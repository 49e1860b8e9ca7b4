"""Benchmarks of optadam (not part of the installed package).

``python -m benchmarks.step``: one optimizer step of `optadam.adam` against optax,
Keras 3 and PyTorch, with a memory-bandwidth roofline; see benchmarks/README.md.
"""
