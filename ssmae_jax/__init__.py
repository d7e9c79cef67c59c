"""SSMAE in JAX/Flax: semi-supervised masked autoencoders for Vision Transformers."""
