"""SSMAE on CIFAR-10 with 10% labels, a ViT sized for 32x32 images (ViT-T/4: 192 wide, 12 deep, 3 heads).

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/cifar10.py --workdir=/tmp/ssmae_c10

The paper's recipe (docs/method.md: L=16, U=32, AdamW 1e-4, wd 0.05, tau 0.95, gate 0.70 after 10 epochs, 400 epochs
of 281 steps = 112,400 steps) on a model that sees CIFAR at its native resolution: 64 patches of 4x4 instead of
upsampling to 224 px for ViT-B/16, ~20x fewer FLOPs per image than cifar10_paper.py.
Cost: ~1.3 s/step on 2 CPU cores (not practical there: see cifar10_cpu.py). 157 GFLOP per gate-open step (XLA's
count) x 112,400 steps = 17.6 PFLOP, under a minute of FLOPs on a modern GPU: the step is latency-bound at these
batch sizes, so expect ~5-20 ms/step -> roughly 10-40 minutes plus evaluation (estimated, not measured).
Expected: not yet measured at full length; the paper reports 56.80% for its ViT-B/16.
"""

from ssmae_jax.configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'cifar10'
  c.label_fraction = 0.1
  c.test_every_epochs = 10
  c.checkpoint_every_steps = 2000
  c.log_every_steps = 200
  c.cpu_config = 'configs/cifar10_cpu.py'
  return c
