"""Shared test setup: offline data and quiet TensorFlow, set before anything imports TF or JAX."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TFDS_DATA_DIR', os.path.join(os.path.dirname(ROOT), 'shared', 'tfds'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
