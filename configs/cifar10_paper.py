"""The paper's configuration (DESIGN.md §1), for a faithful reproduction of its CIFAR-10 10% number (56.80%).

  python main.py --config=configs/cifar10_paper.py --workdir=/tmp/ssmae_c10_paper

ViT-B/16 on CIFAR resized to 224 px (inside tf.data), MAE decoder 512 wide x 8 deep x 16 heads; L=16, U=32;
400 epochs of 281 steps; AdamW 1e-4, wd 0.05, constant; lambda 1; tau 0.95; gate 0.70 after 10 epochs.
111,875,594 parameters. Cost: ~5 TFLOP per gate-open step (estimated by hand) -> 112,400 steps at ~30-50 ms on one
H100-class GPU in bfloat16, i.e. ~1-1.5 GPU hours (estimated from FLOPs, not measured). Set --config.model.dtype=bfloat16 on GPU/TPU.
"""

from configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.image_size = 224
  c.model.update(patch_size=16, width=768, depth=12, num_heads=12, decoder_width=512, decoder_depth=8,
                 decoder_num_heads=16)
  c.eval_batch_size = 128
  return c
