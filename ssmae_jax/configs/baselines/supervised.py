"""The paper's supervised baseline: the same ViT trained on the labeled split only (no reconstruction, no
unlabeled data), same augmentation and step budget as configs/cifar10.py.

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/baselines/supervised.py --workdir=/tmp/c10_sup

Any SSMAE config becomes its supervised twin with `--config.method=supervised`. Paper (ViT-B/16, CIFAR-10 10%):
47.56%. Cost: about a third of an SSMAE step (one labeled forward/backward).
"""

from ssmae_jax.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.method = 'supervised'
  return c
