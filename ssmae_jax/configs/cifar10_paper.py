"""The paper's configuration (docs/method.md), for a faithful reproduction of its CIFAR-10 10% number (56.80%).

  python main.py --config=configs/cifar10_paper.py --workdir=/tmp/ssmae_c10_paper

ViT-B/16 on CIFAR resized to 224 px (on the accelerator, after augmenting at 32 px: config.resize_on_device),
MAE decoder 512 wide x 8 deep x 16 heads; L=16, U=32; 400 epochs of 281 steps; AdamW 1e-4, wd 0.05, constant;
lambda 1; tau 0.95; gate 0.70 after 10 epochs. 111,875,594 parameters. Cost: 8.6 TFLOP per gate-open step (XLA's
count, `scripts/estimate_cost.py`) x 112,400 steps = 967 PFLOP: ~40 min at a sustained 400 TFLOP/s, i.e. ~1-2 hours
on one H100-class GPU at 20-40% MFU (estimated, not measured), computing in bfloat16 (model.dtype 'auto' on a GPU or
TPU). The input costs ~0.025 host CPU-s per step (benchmarks/input_pipeline.py), so one host core feeds ~40 steps/s.
"""

from ssmae_jax.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.image_size = 224
  c.model.update(patch_size=16, width=768, depth=12, num_heads=12, decoder_width=512, decoder_depth=8,
                 decoder_num_heads=16)
  c.eval_batch_size = 128
  return c
