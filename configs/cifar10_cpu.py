"""SSMAE on CIFAR-10 with 10% labels, sized for a ~30-45 minute run on 2 CPU cores.

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/cifar10_cpu.py --workdir=/tmp/ssmae_c10_cpu

A small ViT at native resolution (patch 4, 128 wide, 6 deep, 4 heads; decoder 64 wide, 1 deep), the paper's
method and batch sizes (L=16, U=32, tau 0.95, gate 0.70), but a schedule for a short budget: AdamW 5e-4 with a
200-step warm-up and cosine decay, 4 warm-up epochs before the gate may open, 3,600 steps (12.8 epochs of 281).
Measured (first version, 2 CPU cores shared with other jobs): see README "Results"; the recipe is not tuned yet.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model.update(patch_size=4, width=128, depth=6, num_heads=4, decoder_width=64, decoder_depth=1,
                 decoder_num_heads=2)
  c.num_steps = 6000
  c.tau = 0.85
  c.warmup_epochs = 4
  c.optimizer.update(learning_rate=5e-4, schedule='cosine', warmup_steps=200)
  c.eval_batch_size = 500
  c.test_every_epochs = 4
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  return c
