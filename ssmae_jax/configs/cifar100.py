"""SSMAE on CIFAR-100 with 10% labels (50 per class, 5 of them for validation), ViT-T/4 as in cifar10.py.

  python main.py --config=configs/cifar100.py --workdir=/tmp/ssmae_c100

CIFAR-100 is not prepared on the project's offline machines: on a connected machine TFDS downloads it on first use
(`tfds build cifar100` prepares it ahead of time). Cost as cifar10.py. Expected: not yet measured; the paper reports
22.65% for its ViT-B/16.
"""

from ssmae_jax.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.dataset = 'cifar100'
  return c
