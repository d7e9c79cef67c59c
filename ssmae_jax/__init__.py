"""SSMAE in JAX/Flax: semi-supervised masked autoencoders for Vision Transformers."""

from ssmae_jax import runtime as _runtime

_runtime.skip_absent_tpu()  # Before any JAX backend starts: on a machine without an accelerator, libtpu stays quiet.
