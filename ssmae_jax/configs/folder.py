"""SSMAE on your own images: a labeled folder (one sub-folder per class), an unlabeled folder, an optional test folder.

  python main.py --config=configs/folder.py --config.labeled_dir=/data/labeled \\
      --config.unlabeled_dir=/data/unlabeled [--config.test_dir=/data/test] --workdir=/tmp/ssmae_folder
  python main.py --config=configs/folder.py ... --workdir=/tmp/ssmae_folder --mode=predict  # redo the CSV

  /data/labeled/<class name>/**/*.png|jpg   class names are the folder names; val_fraction of each class is held
                                             out (class-balanced, split_seed) for the gate and the best checkpoint
  /data/unlabeled/**/*.png|jpg              any layout; no labels
  /data/test/<class name>/**/*.png|jpg      optional; without it the test metrics are null in results.json

Any size, aspect ratio, JPEG / PNG / BMP / GIF, RGB or grayscale. Every file is decoded once at start-up (a corrupt
one stops the run naming it; --config.skip_bad_images=True skips such files). Training views are random crops of
35-100% of the area, resized to image_size; evaluation sees the central square resized to image_size.
At the end of training (and with --mode=predict) WORKDIR/pseudo_labels.csv gives, per unlabeled file, its
pseudo-label and the model's prediction with its confidence.

Model: ViT-T (192 wide, 12 deep) on 64 px images in 8 px patches, 64 tokens: the compute of configs/cifar10.py.
Cost: ~1.3 s/step on 2 CPU cores; on one GPU tens of ms/step. An epoch is (labeled images - validation) / 16 steps:
2,000 labeled images -> 112 steps/epoch, so the default 400 epochs are ~45k steps (choose --config.num_epochs or
--config.num_steps to fit the budget). Expected accuracy: depends on the data; not measured on real folders yet.
"""

from ssmae_jax.configs import default


def get_config():
  c = default.get_config()
  c.dataset = 'folder'
  c.download = False
  c.image_size = 64
  c.model.patch_size = 8
  c.label_fraction = 1.0  # Every image of labeled_dir is labeled; val_fraction of them are held out.
  # The pool is exactly the unlabeled folder, so pseudo_labels.csv covers those files and nothing else.
  c.unlabeled_includes_labeled = False
  c.test_every_epochs = 10
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000
  return c
