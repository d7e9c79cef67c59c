"""MAE pre-training on all train images (reconstruction only; labels are never read), the first half of the paper's
MAE baseline. Same model and step budget as configs/cifar10.py; its workdir is what finetune.py's init_from reads.

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/baselines/mae_pretrain.py --workdir=/tmp/c10_mae

Writes no accuracy (the head is never trained); results.json records the reconstruction loss history.
"""

from ssmae_jax.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.method = 'mae_pretrain'
  c.test_every_epochs = 0
  return c
