"""Defaults shared by every config: the SSMAE method exactly as in DESIGN.md §1.

Dataset configs import `get_config()` from here and change only what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = 'ssmae'  # 'ssmae' | 'supervised' | 'mae_pretrain' | 'finetune'
  # Workdir of a finished run whose encoder and decoder initialise this one (finetune; optional elsewhere).
  c.init_from = ml_collections.FieldReference(None, field_type=str)
  c.seed = 0

  # Data.
  c.dataset = 'cifar10'  # A TFDS name, or 'folder': the image folders below (configs/folder.py).
  c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $TFDS_DATA_DIR or TFDS's default.
  c.labeled_dir = ml_collections.FieldReference(None, field_type=str)  # 'folder': one sub-folder of images per class.
  c.unlabeled_dir = ml_collections.FieldReference(None, field_type=str)  # 'folder': images anywhere below it.
  c.test_dir = ml_collections.FieldReference(None, field_type=str)  # 'folder', optional: class sub-folders.
  c.skip_bad_images = False  # 'folder': skip (and count) unreadable images instead of stopping with an error.
  c.download = True  # If the dataset is not prepared in the data dir, let TFDS download it (connected machines).
  c.image_size = 32  # Images are resized to this inside tf.data when the dataset differs.
  c.label_fraction = 0.1  # Fraction of the train split that is labeled (class-balanced).
  c.num_labels = ml_collections.FieldReference(None, field_type=int)  # If set, overrides label_fraction.
  c.val_fraction = 0.1  # Fraction of the labeled examples held out for validation (gate + best checkpoint).
  c.split_seed = 0  # Same split_seed -> same labeled / validation examples for every method and seed.
  c.unlabeled_includes_labeled = True  # Reference: the unlabeled pool is the whole train split (minus validation).
  c.labeled_batch_size = 16  # L, global.
  c.unlabeled_batch_size = 32  # U, global.
  c.eval_batch_size = 256
  c.augment = ml_collections.ConfigDict(dict(
      labeled_rotation=15.0,
      labeled_jitter=(0.2, 0.2, 0.2, 0.1),  # brightness, contrast, saturation, hue
      strong_rotation=30.0,
      strong_jitter=(0.4, 0.4, 0.4, 0.2),
      strong_grayscale_p=0.2,
      strong_blur_sigma=(0.1, 2.0),
      strong_translate=0.1,
      # 'folder': training views start from a random crop of this area fraction and aspect ratio of the file.
      crop_scale=(0.35, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
  ))

  # Model: ViT encoder, MAE decoder, linear head.
  c.model = ml_collections.ConfigDict(dict(
      patch_size=4,
      width=192,
      depth=12,
      num_heads=3,
      mlp_ratio=4.0,
      decoder_width=128,
      decoder_depth=2,
      decoder_num_heads=4,
      dtype='float32',  # Compute dtype; 'bfloat16' for mixed precision on GPU/TPU (params stay float32).
  ))
  c.mask_ratio = 0.75
  c.norm_pix_loss = False

  # SSMAE.
  c.cls_weight = 1.0  # lambda in L = L_rec + lambda * L_cls.
  c.rec_weight = 1.0  # 0 removes the reconstruction term (ablation).
  c.tau = 0.95  # Confidence threshold on both views.
  c.require_agreement = True  # argmax p_w == argmax p_s.
  c.sticky = True  # Once given, a pseudo-label is kept forever.
  c.gate = 'dynamic'  # 'dynamic' | 'always_open' | 'never'.
  c.gate_threshold = 0.70  # HCA needed to open the gate.
  c.gate_confidence = 0.95  # Max-probability above which a validation example counts for HCA.
  c.warmup_epochs = 10

  # Optimisation.
  c.num_epochs = 400  # An epoch is num_labeled_train // labeled_batch_size steps.
  c.num_steps = ml_collections.FieldReference(None, field_type=int)  # If set, overrides num_epochs.
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      weight_decay=0.05,
      b1=0.9,
      b2=0.999,
      schedule='constant',  # 'constant' | 'cosine'
      warmup_steps=0,
      grad_clip_norm=0.0,  # 0 disables clipping.
  ))
  # A non-finite loss or gradient: 'stop' (error naming the step; the last good checkpoint is kept) | 'skip' (that
  # step leaves params, optimizer and memory unchanged; skips are counted and logged).
  c.nan_policy = 'stop'

  # Evaluation, logging, checkpoints.
  c.test_every_epochs = 1  # Test accuracy is for the logs only; 0 = only at the end.
  c.log_every_steps = 50
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 2
  c.allow_config_change = False
  return c
