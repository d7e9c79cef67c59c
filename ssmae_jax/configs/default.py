"""Defaults shared by every config: the SSMAE method exactly as in docs/method.md.

Dataset configs import `get_config()` from here and change only what differs. Each field is declared here once, with
its default and the values it accepts (ssmae_jax/configuration.py checks every run's config against them): a new field
needs a declaration too, or every run stops naming it.
"""

import ml_collections

from ssmae_jax import registry
from ssmae_jax.fields import Bool, Float, Int, OneOf, Sweep, Text, Tuple, Weights, declared


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = OneOf('ssmae', registry.methods)  # A registered method (@registry.method).
  # Workdir of a finished run whose encoder and decoder initialise this one (finetune; optional elsewhere).
  c.init_from = Text(None)
  # JAX's PRNG keys hold 32 bits: a larger seed would alias a smaller one.
  c.seed = Int(0, min=0, max=2**32 - 1, sweep=True)

  _data(c)
  _model(c)
  _ssmae(c)
  _optimisation(c)
  _run(c)
  return declared(c)


def _data(c: ml_collections.ConfigDict) -> None:
  """The data: dataset, splits, batch sizes, augmentations."""
  c.dataset = Text('cifar10', nonempty=True)  # A TFDS name, or 'folder': the image folders below (configs/folder.py).
  c.data_dir = Text(None)  # None: $TFDS_DATA_DIR or TFDS's default.
  c.labeled_dir = Text(None)  # 'folder': one sub-folder of images per class.
  c.unlabeled_dir = Text(None)  # 'folder': images anywhere below it.
  c.test_dir = Text(None)  # 'folder', optional: class sub-folders.
  c.skip_bad_images = Bool(False)  # 'folder': skip (and count) unreadable images instead of stopping with an error.
  c.download = Bool(True)  # If the dataset is not prepared in the data dir, let TFDS download it (connected machines).
  # The model's input size; images of another size are resized to it (see resize_on_device).
  c.image_size = Int(32, min=1)
  # True: tf.data augments at the dataset's own resolution and ships uint8 at that size; the jitted step upsamples to
  # image_size on the accelerator (the host does ~(image_size / stored size)^2 less work). False: tf.data resizes
  # first and augments at image_size (the reference's order: its transforms resize, then augment).
  c.resize_on_device = Bool(True)
  c.label_fraction = Float(0.1, above=0, max=1)  # Fraction of the train split that is labeled (class-balanced).
  c.num_labels = Int(None, min=1)  # If set, overrides label_fraction.
  # Fraction of the labeled examples held out for validation (gate + best checkpoint).
  c.val_fraction = Float(0.1, min=0, below=1)
  # Same split_seed -> same labeled / validation examples for every method and seed.
  c.split_seed = Int(0, min=0, max=2**32 - 1, sweep=True)
  # Reference: the unlabeled pool is the whole train split (minus validation).
  c.unlabeled_includes_labeled = Bool(True)
  # Strict replication: build the unlabeled weak / strong / MAE views, as the reference does, from the example already
  # put through the labeled view and normalisation and then turned back into 8 bits (values wrap). False: clean views.
  c.reference_unlabeled_views = Bool(False)
  c.labeled_batch_size = Int(16, min=1)  # L, global.
  c.unlabeled_batch_size = Int(32, min=1)  # U, global.
  c.eval_batch_size = Int(256, min=1)
  c.augment = ml_collections.ConfigDict(dict(
      labeled_rotation=Float(15.0, min=0, max=180, sweep=True),  # Degrees, both ways.
      labeled_jitter=Tuple((0.2, 0.2, 0.2, 0.1), brightness=Float(min=0), contrast=Float(min=0),
                           saturation=Float(min=0), hue=Float(min=0, max=0.5)),
      strong_rotation=Float(30.0, min=0, max=180, sweep=True),
      strong_jitter=Tuple((0.4, 0.4, 0.4, 0.2), brightness=Float(min=0), contrast=Float(min=0),
                          saturation=Float(min=0), hue=Float(min=0, max=0.5)),
      strong_grayscale_p=Float(0.2, min=0, max=1, sweep=True),
      strong_blur_sigma=Tuple((0.1, 2.0), low=Float(above=0), high=Float(above=0), ordered=True),
      strong_translate=Float(0.1, min=0, max=1, sweep=True),  # Fraction of the image size, both ways.
      # 'folder': training views start from a random crop of this area fraction and aspect ratio of the file.
      crop_scale=Tuple((0.35, 1.0), low=Float(above=0, max=1), high=Float(above=0, max=1), ordered=True),
      crop_ratio=Tuple((3 / 4, 4 / 3), low=Float(above=0), high=Float(above=0), ordered=True),
  ))



def _model(c: ml_collections.ConfigDict) -> None:
  """The model: ViT encoder, MAE decoder, linear head; the masking."""
  c.model = ml_collections.ConfigDict(dict(
      patch_size=Int(4, min=1),
      width=Int(192, min=1),
      depth=Int(12, min=1),
      num_heads=Int(3, min=1),
      mlp_ratio=Float(4.0, above=0),
      decoder_width=Int(128, min=1),
      decoder_depth=Int(2, min=1),
      decoder_num_heads=Int(4, min=1),
      # Compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU; or 'float32' / 'bfloat16'. Parameters and
      # optimizer state are float32 whatever the compute dtype.
      dtype=OneOf('auto', ('auto', 'float32', 'bfloat16')),
  ))
  c.mask_ratio = Float(0.75, min=0, below=1)
  c.masking = OneOf('random', registry.maskings)  # Which patches are removed (@registry.masking): MAE's uniform draw.
  c.norm_pix_loss = Bool(False)



def _ssmae(c: ml_collections.ConfigDict) -> None:
  """SSMAE: the loss, the selection rule, the gate; the levers beyond the paper."""
  # Every sweepable field here is SSMAE's alone (mae_ignores): a sweep over them pre-trains once per seed.
  # lambda in L = L_rec + lambda * L_cls; rec_weight 0 removes the reconstruction term (ablation).
  c.cls_weight = Float(1.0, min=0, sweep=True, zero_is_off=True, mae_ignores=True)
  c.rec_weight = Float(1.0, min=0, sweep=True, zero_is_off=True, mae_ignores=True)
  # Confidence threshold on both views: max p > tau, so 1 lets nothing pass (an ablation, as gate='never').
  c.tau = Float(0.95, min=0, max=1, sweep=True, mae_ignores=True)
  c.require_agreement = Bool(True)  # argmax p_w == argmax p_s.
  c.sticky = Bool(True)  # Once given, a pseudo-label is kept forever.
  # Whether the gate is open for an epoch, from its validation pass (@registry.gate_rule): 'hca' is the paper's (closed
  # for warmup_epochs, then open iff HCA >= gate_threshold); 'always_open' and 'never' are ablations.
  c.gate_rule = OneOf('hca', registry.gate_rules, sweep=True, mae_ignores=True)
  c.gate_threshold = Float(0.70, min=0, max=1, sweep=True, mae_ignores=True)  # HCA needed to open the gate.
  # Max-probability above which a validation example counts for HCA.
  c.gate_confidence = Float(0.95, min=0, below=1, sweep=True, mae_ignores=True)
  c.warmup_epochs = Int(10, min=0, sweep=True, mae_ignores=True)  # Epochs before the gate may open; 0: from the first.
  # Not in the paper (levers for short budgets, README "Results"): confident validation examples the gate also needs
  # (0: none, the paper: one confident, correct example is an HCA of 100%), and label smoothing of every
  # classification target, labeled and pseudo-labeled (0: none).
  c.gate_min_confident = Int(0, min=0, sweep=True, mae_ignores=True)
  c.label_smoothing = Float(0.0, min=0, below=1, sweep=True, mae_ignores=True)
  # Not in the paper (a lever against a memory filled by a few classes; FlexMatch's idea, bounded): the selection
  # threshold of a class drops below tau the fewer pseudo-labels of it the memory holds, tau - class_tau_drop *
  # (1 - n_c / max n): the most-held class keeps tau, a class with none gets tau - class_tau_drop. 0: one tau, the
  # paper.
  c.class_tau_drop = Float(0.0, min=0, max=1, sweep=True, zero_is_off=True, mae_ignores=True)
  # Not in the paper: the unlabeled view that L_cls trains on. 'weak' (the paper: a confident prediction trains the
  # view it came from), 'strong' (FixMatch-style: the strong view learns the target both views agreed on). The same
  # selection rule and the same FLOPs either way.
  c.pseudo_label_view = OneOf('weak', ('weak', 'strong'))
  # Not in the paper: a teacher picks the pseudo-labels, an exponential moving average of the trained parameters with
  # this decay per step (Mean Teacher; FixMatch evaluates such an average). The same rule on the teacher's softmax of
  # both views, the targets then train the student; the student is what is evaluated, gated and saved as best.
  # 0: none, the paper (the model picks its own pseudo-labels). E.g. 0.99: an average over about 100 steps.
  c.teacher_ema = Float(0.0, min=0, below=1, sweep=True, zero_is_off=True, mae_ignores=True)
  # Speed, not the method: in a step that can use unlabeled examples, L_cls's forward and backward pass covers at most
  # this many of them, gathered (the remembered ones and, with the gate open, those confident on the view that gets
  # the forward pass only: no other can be selected); a step with more candidates takes the full pass over all U.
  # The same loss, gradient and selection either way. 0: always the full pass.
  c.unlabeled_cls_rows = Int(0, min=0)
  # Not in the paper: extra terms added to SSMAE's objective (@registry.loss_term), name -> weight; 0 leaves a term out.
  # In a config file: c.loss_terms = {'consistency': 1.0}; on the command line: --config.loss_terms.consistency=1.0.
  c.loss_terms = Weights(registry.loss_terms)
  # Not in the paper: first this many steps of MAE pre-training (method mae_pretrain, same data and schedule) in
  # WORKDIR/pretrain, then the run starts from its encoder and decoder, as from config.init_from. 0: none.
  c.pretrain_steps = Int(0, min=0)



def _optimisation(c: ml_collections.ConfigDict) -> None:
  """Optimisation: length, AdamW, schedule, non-finite steps."""
  # An epoch is num_labeled_train // labeled_batch_size steps. 0: num_steps alone sets the length.
  c.num_epochs = Int(400, min=0)
  c.num_steps = Int(None, min=1)  # If set, overrides num_epochs.
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=Float(1e-4, above=0, sweep=True),  # The peak, after warmup_steps.
      weight_decay=Float(0.05, min=0, sweep=True),
      b1=Float(0.9, min=0, below=1, sweep=True),
      b2=Float(0.999, min=0, below=1, sweep=True),
      schedule=OneOf('constant', ('constant', 'cosine')),
      warmup_steps=Int(0, min=0),  # Linear warmup from 0; 0: none.
      grad_clip_norm=Float(0.0, min=0, sweep=True, zero_is_off=True),  # 0 disables clipping.
  ))
  # A non-finite loss or gradient: 'stop' (error naming the step; the last good checkpoint is kept) | 'skip' (that
  # step leaves params, optimizer and memory unchanged; skips are counted and logged).
  c.nan_policy = OneOf('stop', ('stop', 'skip'))



def _run(c: ml_collections.ConfigDict) -> None:
  """Evaluation, logging, checkpoints, the machine."""
  c.test_every_epochs = Int(1, min=0)  # Test accuracy is for the logs only; 0 = only at the end.
  c.log_every_steps = Int(50, min=1)
  c.checkpoint_every_steps = Int(1000, min=1)
  c.keep_checkpoints = Int(2, min=1)
  c.allow_config_change = Bool(False)
  c.tensorboard = Bool(True)  # TensorBoard event files in the workdir (TensorFlow's writer; gs:// included).
  # XLA's persistent compilation cache, so a resumed run loads its compiled steps instead of compiling them again.
  # None: $JAX_COMPILATION_CACHE_DIR if set, else WORKDIR/compilation_cache (in a bucket workdir it survives a
  # preempted VM); '' turns it off.
  c.compilation_cache_dir = Text(None)
  # (first step, number of steps): a JAX profiler trace of those steps in WORKDIR/profile (TensorBoard's Profile
  # tab). A count of 0 takes none.
  c.profile_steps = Tuple((0, 0), first_step=Int(min=0), count=Int(min=0))
  # A config file suited to a CPU, named at start-up when this config runs on one (None: this one suits a CPU).
  c.cpu_config = Text(None)
  # Several runs as one compiled program (ssmae_jax/sweep.py, README "Sweeps"): field -> tuple of values, the runs
  # their product, each in WORKDIR/runs/<field=value,...>/. Only fields declared with sweep=True (they change numbers,
  # not shapes or the program): e.g. c.sweep.seed = (0, 1, 2, 3), or --config.sweep.tau='(0.9,0.95)'.
  c.sweep = Sweep()
  # True: run i takes the i-th value of every swept field (tuples of one length: seed and split_seed together), not
  # their product.
  c.sweep_zip = Bool(False)
