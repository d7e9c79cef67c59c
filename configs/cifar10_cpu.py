"""SSMAE on CIFAR-10 with 10% labels, the recipe for 2 CPU cores (~40 minutes when nothing else runs).

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/cifar10_cpu.py --workdir=/tmp/ssmae_c10_cpu
  ... --config.method=supervised --workdir=/tmp/sup_c10_cpu     # the supervised twin (same ViT, splits, steps)

A small ViT at native resolution (patch 4, 128 wide, 6 deep, 4 heads; decoder 64 wide, 1 deep), the paper's
method and batch sizes (L=16, U=32, gate 0.70 on HCA at 0.95), a schedule for a short budget: AdamW 5e-4 with a
200-step warm-up and cosine decay, 4 warm-up epochs before the gate may open, 6,000 steps (21 epochs of 281), and
tau 0.85 instead of 0.95. Chosen on validation only: the first version (3,600 steps, tau 0.95: 50.11% test) was
still improving at its end, and at its best checkpoint only 2% of validation images passed tau 0.95 against 10.6%
passing 0.85 at 85% accuracy.
Measured over split seeds 0-2 (README "Results"; docs/results/): test accuracy 54.99 +- 0.97% (54.15-56.06%),
the gate opening at epochs 5-10 and ~1,900 pseudo-labels at 90-92% precision. Supervised twin at the same 6,000
steps: 52.71 +- 0.48%, so SSMAE leads by 2.3 points on every split. SSMAE's steps cost 3.7x the twin's FLOPs; on
split 0 (before the faithfulness fixes) supervised at the same FLOPs (24,000 steps) tied SSMAE (55.60% vs 55.52%).
The paper's 56.80% (ViT-B/16, 400 epochs, GPU) is not reached.
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
