"""Smoke test: a tiny ViT, 60 steps on the real CIFAR-10, gate opening included. About 40 s on 2 CPU cores.

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/smoke.py --workdir=/tmp/ssmae_smoke

Expected: finishes with results.json; accuracies near chance (~15-25%), the gate opens at epoch 0 (threshold 0)
and a few pseudo-labels are assigned (tau is low). It checks the plumbing, not the method.
"""

from ssmae_jax.configs import default


def get_config():
  c = default.get_config()
  c.label_fraction = 0.02  # 1000 labels, 100 of them for validation.
  c.model.update(patch_size=8, width=32, depth=2, num_heads=2, decoder_width=32, decoder_depth=1,
                 decoder_num_heads=2)
  c.num_steps = 60
  c.num_epochs = 0  # num_steps wins.
  c.warmup_epochs = 0
  c.gate_threshold = 0.0
  c.tau = 0.15
  c.optimizer.learning_rate = 1e-3
  c.eval_batch_size = 512  # Divides by 8 devices (v5e-8); evaluation pads and masks: no number changes.
  c.test_every_epochs = 1
  c.log_every_steps = 10
  c.checkpoint_every_steps = 30
  return c
