"""Fine-tuning a pre-trained encoder on the labeled split, the second half of the paper's MAE baseline:
as the reference runs it: batch 32, 100 epochs, AdamW 1e-4, weight decay 0.05, cosine schedule (decayed per step here,
per epoch in the reference).

  TFDS_DATA_DIR=../shared/tfds python main.py --config=configs/baselines/finetune.py \\
      --config.init_from=/tmp/c10_mae --workdir=/tmp/c10_ft

`init_from` is the workdir of a finished run (mae_pretrain or any other with the same model shape).
Paper (ViT-B/16, CIFAR-10 10%): 54.84%.
"""

from ssmae_jax.configs import cifar10


def get_config():
  c = cifar10.get_config()
  c.method = 'finetune'
  c.labeled_batch_size = 32
  c.num_epochs = 100
  c.optimizer.schedule = 'cosine'
  return c
