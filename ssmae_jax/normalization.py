"""The images' normalisation: ImageNet's per-channel mean and standard deviation, as the reference applies them.

numpy, not jnp: a jnp array made at import would start JAX's backend before jax.distributed.initialize() can run.
"""

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
