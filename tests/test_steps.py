"""Tests for ssmae_jax.methods.ssmae: the fast train step against a plain reference of docs/method.md, on a tiny ViT.

The reference below computes every pass (labeled, weak, strong, reconstruction), applies the selection rule with
masks and writes the sticky memory in a numpy loop: no lax.switch, no skipped work. With SGD at learning rate 1
the parameter change of one step is the gradient itself, so comparing parameters compares gradients.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from ssmae_jax.configs.default import get_config
from ssmae_jax import masking, models, sharding, train_state
from ssmae_jax.methods import common, ssmae

L, U, POOL, SIZE, CLASSES = 4, 8, 32, 16, 10
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
METRIC_KEYS = {'loss', 'rec_loss', 'cls_loss', 'labeled_accuracy', 'unlabeled_used', 'pseudo_labels_new',
               'full_cls_pass', 'grad_norm', 'nonfinite', 'step_kind'}
# cls_pass.kinds's order; a config without unlabeled_cls_rows has the first three.
KINDS = ('labeled_only', 'with_memory', 'gate_open', 'with_memory_rows', 'gate_open_rows')


def expected_kind(case: str, full_cls_pass: float) -> str:
  base = {'closed_empty_memory': 'labeled_only', 'closed_with_memory': 'with_memory'}.get(case, 'gate_open')
  return base if base == 'labeled_only' or full_cls_pass else base + '_rows'
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def tiny_config(**overrides):
  c = get_config()
  c.image_size = SIZE
  c.labeled_batch_size = L
  c.unlabeled_batch_size = U
  c.model.update(dict(patch_size=4, width=32, depth=1, num_heads=2, decoder_width=32, decoder_depth=1,
                      decoder_num_heads=2))
  c.update(overrides)
  return c


def make_batch(seed: int, indices=None) -> dict:
  """Weak and strong views are the same image for the first half of U, so some examples can pass agreement."""
  rng = np.random.default_rng(seed)

  def images(n):
    return rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)

  weak = images(U)
  strong = np.concatenate([weak[:U // 2], images(U - U // 2)])
  return dict(labeled_image=images(L), labeled_label=rng.integers(0, CLASSES, L).astype(np.int32),
              unlabeled_weak=weak, unlabeled_strong=strong, unlabeled_mae=images(U),
              unlabeled_index=np.asarray(indices if indices is not None else rng.permutation(POOL)[:U], np.int32))


def init_params(model, seed: int = 0):
  ids_keep, _, ids_restore = masking.random_masking(jax.random.key(0), 1, model.num_patches, 0.75)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, SIZE, SIZE, 3)), ids_keep, ids_restore)['params'])
  return init(jax.random.key(seed, impl='rbg'))


def make_state(params, tx, mesh, memory=None, gate_open=False, teacher=None):
  state = train_state.create(jax.tree.map(jnp.array, params), tx, POOL)
  if teacher is not None:
    state = state.replace(teacher=jax.tree.map(jnp.array, teacher))
  if memory is not None:
    state = state.replace(pseudo_labels=jnp.asarray(memory, jnp.int32))
  state = state.replace(gate_open=jnp.asarray(gate_open))
  return jax.device_put(state, sharding.replicated(mesh))


def one_device_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()[:1]), ('data',))


# --- the reference ---------------------------------------------------------------------------------------------------


class Reference:
  """docs/method.md, one step, written out plainly."""

  def __init__(self, model, config):
    self.model, self.config = model, config
    self.classify = jax.jit(lambda p, x: model.apply({'params': p}, x, method=model.classify))

    def loss_fn(params, x_l, y_l, x_u, targets, used, rec_images, ids_keep, mask, ids_restore):
      pred = model.apply({'params': params}, rec_images, ids_keep, ids_restore, method=model.reconstruct)
      target = masking.patchify(rec_images, model.patch_size)
      per_patch = jnp.mean((pred - target) ** 2, axis=-1)
      rec = jnp.sum(per_patch * mask) / jnp.sum(mask)
      ce_l = -jnp.take_along_axis(jax.nn.log_softmax(model.apply({'params': params}, x_l, method=model.classify)),
                                  y_l[:, None], axis=1)[:, 0]
      logits_u = model.apply({'params': params}, x_u, method=model.classify)
      ce_u = -jnp.take_along_axis(jax.nn.log_softmax(logits_u), jnp.maximum(targets, 0)[:, None], axis=1)[:, 0]
      cls = (jnp.sum(ce_l) + jnp.sum(ce_u * used)) / (L + jnp.sum(used))
      return config.rec_weight * rec + config.cls_weight * cls, (rec, cls)

    self.grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))

  @staticmethod
  def normalize(images):
    return jnp.asarray((np.asarray(images, np.float32) / 255.0 - MEAN) / STD)

  def probs(self, params, batch):
    """Softmax of the weak and strong views at `params`."""
    return (np.asarray(jax.nn.softmax(self.classify(params, self.normalize(batch['unlabeled_weak'])))),
            np.asarray(jax.nn.softmax(self.classify(params, self.normalize(batch['unlabeled_strong'])))))

  def step(self, params, opt_state, memory, gate_open, step, batch, tx, teacher=None):
    """-> params, opt_state, memory, grads, metrics (and the moved teacher, with a teacher)."""
    c = self.config
    p_w, p_s = self.probs(params if teacher is None else teacher, batch)
    idx = np.asarray(batch['unlabeled_index'])
    remembered = memory[idx] >= 0
    pred = p_w.argmax(-1)
    tau = c.tau
    if c.class_tau_drop:  # Per class, from the whole memory's counts; the example's by its weak prediction.
      counts = np.bincount(memory[memory >= 0], minlength=CLASSES)
      share = counts / counts.max() if counts.max() else np.ones(CLASSES)
      tau = (c.tau - c.class_tau_drop * (1 - share))[pred]
    confident = (p_w.max(-1) > tau) & (p_s.max(-1) > tau)
    if c.require_agreement:
      confident &= pred == p_s.argmax(-1)
    new = bool(gate_open) & confident & ~remembered
    used = remembered | new
    targets = np.where(remembered, memory[idx], pred).astype(np.int32)

    rec_images = jnp.concatenate([self.normalize(batch['labeled_image']), self.normalize(batch['unlabeled_mae'])])
    rng = jax.random.fold_in(jax.random.key(c.seed), step)
    ids_keep, mask, ids_restore = masking.random_masking(rng, L + U, self.model.num_patches, c.mask_ratio)
    (loss, (rec, cls)), grads = self.grad(
        params, self.normalize(batch['labeled_image']), jnp.asarray(batch['labeled_label']),
        self.normalize(batch[f'unlabeled_{c.pseudo_label_view}']), jnp.asarray(targets),
        jnp.asarray(used, jnp.float32), rec_images, ids_keep, mask, ids_restore)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    memory = memory.copy()
    for i in range(U):
      if new[i]:
        memory[idx[i]] = targets[i]
    metrics = dict(loss=float(loss), rec_loss=float(rec), cls_loss=float(cls), unlabeled_used=float(used.sum()),
                   pseudo_labels_new=float(new.sum()))
    if teacher is None:
      return params, opt_state, memory, grads, metrics
    d = c.teacher_ema
    return params, opt_state, memory, grads, metrics, jax.tree.map(lambda t, p: d * t + (1 - d) * p, teacher, params)


# --- fixtures --------------------------------------------------------------------------------------------------------


def choose_tau(reference, params, batch, remembered_slots):
  """A threshold in the widest gap of the candidates' confidences, so that some pass and some do not."""
  p_w, p_s = reference.probs(params, batch)
  agree = p_w.argmax(-1) == p_s.argmax(-1)
  conf = np.minimum(p_w.max(-1), p_s.max(-1))
  candidates = np.sort(conf[agree & ~np.isin(np.arange(U), remembered_slots)])
  assert len(candidates) >= 2, 'the batch needs at least two agreeing examples'
  gaps = np.diff(candidates)
  i = int(np.argmax(gaps))
  assert gaps[i] > 1e-4, gaps
  return float(candidates[i] + candidates[i + 1]) / 2


class CountingModel:
  """The model, counting `apply` calls: they happen only while the step is traced."""

  def __init__(self, model):
    self._model = model
    self.applies = 0

  def __getattr__(self, name):
    return getattr(self._model, name)

  def apply(self, *args, **kwargs):
    self.applies += 1
    return self._model.apply(*args, **kwargs)


class Setup:
  """A tiny model, its params, the batch, and the fast step built once for the whole module (SGD, lr 1)."""

  def __init__(self, mesh=None):
    base = tiny_config()
    self.model = models.from_config(base, CLASSES)
    self.params = init_params(self.model)
    self.batch = make_batch(0)
    self.idx = self.batch['unlabeled_index']
    # Three examples of the batch already have a pseudo-label, one of them in the half where weak == strong.
    self.remembered_slots = np.array([0, 5, 6])
    self.memory = np.full(POOL, -1, np.int32)
    self.memory[self.idx[self.remembered_slots]] = [3, 7, 1]
    self.config = tiny_config(tau=choose_tau(Reference(self.model, base), self.params, self.batch,
                                             self.remembered_slots))
    self.reference = Reference(self.model, self.config)
    self.tx = optax.sgd(1.0)
    self.mesh = mesh or one_device_mesh()
    self.counting_model = CountingModel(self.model)
    self.train_step = ssmae.make_step(self.counting_model, self.tx, self.config, self.mesh)
    # config.pseudo_label_view='strong' (not in the paper): the same selection, L_cls on the strong view.
    self.strong_config = tiny_config(tau=self.config.tau, pseudo_label_view='strong')
    self.strong_reference = Reference(self.model, self.strong_config)
    self.strong_train_step = ssmae.make_step(self.model, self.tx, self.strong_config, self.mesh)
    # config.unlabeled_cls_rows (speed): L_cls's pass over at most U - 1 gathered unlabeled rows.
    self.narrow_train_step = ssmae.make_step(
        self.model, self.tx, tiny_config(tau=self.config.tau, unlabeled_cls_rows=U - 1), self.mesh)
    # config.teacher_ema (not in the paper): another network (here: another initialisation) picks the pseudo-labels,
    # with a threshold in the gaps of its own confidences; the gathered pass with U - 1 rows.
    self.teacher = init_params(self.model, seed=1)
    self.teacher_config = tiny_config(tau=choose_tau(Reference(self.model, base), self.teacher, self.batch,
                                                     self.remembered_slots), teacher_ema=0.9)
    self.teacher_reference = Reference(self.model, self.teacher_config)
    self.teacher_train_steps = {k: ssmae.make_step(self.model, self.tx, tiny_config(
        tau=self.teacher_config.tau, teacher_ema=0.9, unlabeled_cls_rows=k), self.mesh) for k in (0, U - 1)}

  def device_batch(self, batch=None):
    return jax.device_put(batch if batch is not None else self.batch, sharding.data_sharded(self.mesh))


@pytest.fixture(scope='module')
def four_devices():
  """The 4-device run, started first so that it compiles while this process does its own work."""
  root = os.path.dirname(TESTS_DIR)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=os.pathsep.join([root, TESTS_DIR]),
             XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip())
  code = ('import json, jax, numpy as np, test_steps; from jax.sharding import Mesh; '
          'assert jax.device_count() == 4, jax.devices(); '
          "s = test_steps.Setup(Mesh(np.asarray(jax.devices()), ('data',))); "
          'print(json.dumps(test_steps.device_cases(s)))')
  proc = subprocess.Popen([sys.executable, '-c', code], env=env, cwd=root, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  yield proc
  if proc.poll() is None:
    proc.kill()
  proc.communicate()


@pytest.fixture(scope='module')
def setup(four_devices):
  del four_devices
  return Setup()


def _assert_trees_close(got, want, rtol, atol):
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


# --- the fast step equals the reference ------------------------------------------------------------------------------


CASES = ['closed_empty_memory', 'closed_with_memory', 'open_some_accepted']


def _check_step_against_reference(s: Setup, train_step, reference, case: str, teacher=None) -> dict:
  """One step of `train_step` from s.params (and `teacher`) in `case` against `reference`; returns the step's
  metrics."""
  memory = np.full(POOL, -1, np.int32) if case == 'closed_empty_memory' else s.memory
  gate_open = case == 'open_some_accepted'
  state = make_state(s.params, s.tx, s.mesh, memory, gate_open, teacher)
  new_state, metrics = train_step(state, s.device_batch())
  metrics = jax.device_get(metrics)

  _, _, want_memory, grads, want, *want_teacher = reference.step(
      s.params, s.tx.init(s.params), memory, gate_open, 0, s.batch, s.tx, teacher)
  if teacher is None:
    assert new_state.teacher is None
  else:  # The teacher moved towards the updated parameters.
    _assert_trees_close(new_state.teacher, want_teacher[0], rtol=1e-5, atol=1e-6)
  assert set(metrics) == METRIC_KEYS
  # The kind of work the step did, as the FLOP count reads it.
  kind = expected_kind(case, metrics['full_cls_pass'])
  np.testing.assert_array_equal(metrics['step_kind'], np.eye(len(metrics['step_kind']))[KINDS.index(kind)])
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=2e-5, atol=1e-6, err_msg=key)
  remembered = len(s.remembered_slots)
  if case == 'closed_empty_memory':
    assert want['unlabeled_used'] == 0
  elif case == 'closed_with_memory':
    assert want['unlabeled_used'] == remembered and want['pseudo_labels_new'] == 0
  else:
    # The case is not vacuous: some examples are newly accepted, some are not, remembered ones are used.
    assert 0 < want['pseudo_labels_new'] < U - remembered
    assert want['unlabeled_used'] == remembered + want['pseudo_labels_new']
  np.testing.assert_array_equal(np.asarray(new_state.pseudo_labels), want_memory)
  # SGD at lr 1: the parameter change is the gradient.
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), s.params, new_state.params)
  scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads))
  _assert_trees_close(delta, grads, rtol=1e-3, atol=1e-5 * scale)
  assert int(new_state.step) == 1
  np.testing.assert_allclose(metrics['grad_norm'], float(optax.tree.norm(grads)), rtol=1e-4)
  return metrics


@pytest.mark.parametrize('view', ['weak', 'strong'])
@pytest.mark.parametrize('case', CASES)
def test_step_matches_reference(setup, case, view):
  s = setup
  train_step, reference = (s.train_step, s.reference) if view == 'weak' else (s.strong_train_step, s.strong_reference)
  metrics = _check_step_against_reference(s, train_step, reference, case)
  assert metrics['full_cls_pass'] == (case != 'closed_empty_memory')


@pytest.fixture(scope='module')
def narrow_steps(setup):
  """The step with config.unlabeled_cls_rows 2 (below the 3 remembered examples) and U - 1."""
  s = setup
  return {2: ssmae.make_step(s.model, s.tx, tiny_config(tau=s.config.tau, unlabeled_cls_rows=2), s.mesh),
          U - 1: s.narrow_train_step}


@pytest.mark.parametrize('rows', [2, U - 1])
@pytest.mark.parametrize('case', CASES)
def test_a_narrower_cls_pass_gives_the_reference_step(setup, narrow_steps, case, rows):
  """config.unlabeled_cls_rows: the gathered pass and its fallback to the full one are both the reference step."""
  s = setup
  metrics = _check_step_against_reference(s, narrow_steps[rows], s.reference, case)
  # The candidates: the remembered examples and, with the gate open, those confident on the strong view.
  _, p_s = s.reference.probs(s.params, s.batch)
  candidates = np.isin(np.arange(U), s.remembered_slots)
  if case == 'open_some_accepted':
    candidates |= p_s.max(-1) > s.config.tau
  if case != 'closed_empty_memory':
    assert 3 <= candidates.sum() <= U - 1  # Each rows value meets one path.
  assert metrics['full_cls_pass'] == (case != 'closed_empty_memory' and candidates.sum() > rows)


@pytest.mark.parametrize('case', CASES)
def test_the_paper_objective_is_what_the_fast_step_computes(setup, case):
  """ssmae.objective (the paper's loss, written plainly in the library) and the train step: same loss, gradient
  and selection."""
  s = setup
  memory = np.full(POOL, -1, np.int32) if case == 'closed_empty_memory' else s.memory
  gate_open = case == 'open_some_accepted'
  batch = jax.tree.map(jnp.asarray, s.batch)
  views = ssmae.views(batch, s.model.image_size)
  rec_images = jnp.concatenate([views['labeled_image'], common.prepare_images(batch['unlabeled_mae'], SIZE)])
  rng = jax.random.fold_in(jax.random.key(s.config.seed), 0)
  (loss, (targets, used, new)), grads = jax.value_and_grad(ssmae.objective, argnums=2, has_aux=True)(
      s.model, s.config, s.params, views, rec_images, jnp.asarray(memory)[batch['unlabeled_index']],
      jnp.asarray(gate_open), rng)
  state = make_state(s.params, s.tx, s.mesh, memory, gate_open)
  new_state, metrics = s.train_step(state, s.device_batch())
  np.testing.assert_allclose(float(loss), float(metrics['loss']), rtol=2e-5)
  assert int(jnp.sum(used)) == metrics['unlabeled_used'] and int(jnp.sum(new)) == metrics['pseudo_labels_new']
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), s.params, new_state.params)  # SGD at lr 1.
  scale = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(grads))
  _assert_trees_close(delta, grads, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize('rows', [2, U - 1])  # The full pass and the gathered one.
@pytest.mark.parametrize('case', CASES)
def test_a_kind_forced_for_its_flop_count_is_the_step_of_that_kind(setup, narrow_steps, case, rows):
  """A run counts each step's FLOPs as the program of the kind it took (make_step(kind=...)): that program is the
  same step, so its count is the count of what ran."""
  s = setup
  memory = np.full(POOL, -1, np.int32) if case == 'closed_empty_memory' else s.memory
  gate_open = case == 'open_some_accepted'
  config = tiny_config(tau=s.config.tau, unlabeled_cls_rows=rows)
  _, metrics = narrow_steps[rows](make_state(s.params, s.tx, s.mesh, memory, gate_open), s.device_batch())
  kind = expected_kind(case, metrics['full_cls_pass'])
  forced = ssmae.make_step(s.model, s.tx, config, s.mesh, kind=kind)
  _, forced_metrics = forced(make_state(s.params, s.tx, s.mesh, memory, gate_open), s.device_batch())
  for key in ('loss', 'cls_loss', 'unlabeled_used', 'pseudo_labels_new', 'grad_norm', 'step_kind'):
    np.testing.assert_allclose(forced_metrics[key], metrics[key], rtol=1e-6, err_msg=key)


@pytest.mark.parametrize('rows', [0, U - 1])
@pytest.mark.parametrize('case', CASES)
def test_a_teacher_picks_the_pseudo_labels(setup, case, rows):
  """config.teacher_ema: the selection rule on the teacher's softmax; the parameters train on its targets."""
  s = setup
  metrics = _check_step_against_reference(s, s.teacher_train_steps[rows], s.teacher_reference, case, s.teacher)
  if case == 'open_some_accepted':
    # Not vacuous: the teacher accepts other examples than the parameters themselves would.
    c = s.teacher_config
    picks = lambda p_w, p_s: (p_w.max(-1) > c.tau) & (p_s.max(-1) > c.tau) & (p_w.argmax(-1) == p_s.argmax(-1))
    assert (picks(*s.reference.probs(s.teacher, s.batch)) != picks(*s.reference.probs(s.params, s.batch))).any()
    assert metrics['full_cls_pass'] == (rows == 0 or metrics['unlabeled_used'] > rows)
  else:
    assert metrics['full_cls_pass'] == (case != 'closed_empty_memory' and (rows == 0 or len(s.remembered_slots) > rows))


def class_tau_drop_for(s: Setup) -> float:
  """A drop that lowers the threshold of the classes the memory lacks just enough for the most confident agreeing
  example below tau whose class it lacks to pass (the memory holds classes 1, 3 and 7 once each)."""
  p_w, p_s = s.reference.probs(s.params, s.batch)
  pred = p_w.argmax(-1)
  conf = np.minimum(p_w.max(-1), p_s.max(-1))
  below = ((pred == p_s.argmax(-1)) & ~np.isin(np.arange(U), s.remembered_slots) & (conf <= s.config.tau)
           & ~np.isin(pred, s.memory[s.memory >= 0]))
  assert below.any(), 'the batch needs an agreeing example below tau of a class the memory lacks'
  ranked = np.sort(conf[below])[::-1]
  lower = ranked[1] if len(ranked) > 1 else 0.0
  return float(s.config.tau - (ranked[0] + lower) / 2)


@pytest.mark.parametrize('rows', [0, U - 1])
def test_class_tau_drop_lowers_the_threshold_of_the_classes_the_memory_lacks(setup, rows):
  """config.class_tau_drop: the step selects at each class's threshold (the reference's numpy count of the whole
  memory), with the full pass and the gathered one; one more example is accepted than at the one tau."""
  s = setup
  config = tiny_config(tau=s.config.tau, class_tau_drop=class_tau_drop_for(s), unlabeled_cls_rows=rows)
  step = ssmae.make_step(s.model, s.tx, config, s.mesh)
  metrics = _check_step_against_reference(s, step, Reference(s.model, config), 'open_some_accepted')
  _, one_tau = s.train_step(make_state(s.params, s.tx, s.mesh, s.memory, True), s.device_batch())
  assert metrics['pseudo_labels_new'] == float(one_tau['pseudo_labels_new']) + 1
  # The paper's objective with the same thresholds is the same loss.
  batch = jax.tree.map(jnp.asarray, s.batch)
  views = ssmae.views(batch, s.model.image_size)
  rec_images = jnp.concatenate([views['labeled_image'], common.prepare_images(batch['unlabeled_mae'], SIZE)])
  tau = ssmae.thresholds(config, jnp.asarray(s.memory), CLASSES)
  loss, (_, used, _) = ssmae.objective(s.model, config, s.params, views, rec_images,
                                       jnp.asarray(s.memory)[batch['unlabeled_index']], jnp.asarray(True),
                                       jax.random.fold_in(jax.random.key(config.seed), 0), tau=tau)
  np.testing.assert_allclose(float(loss), float(metrics['loss']), rtol=2e-5)
  assert int(jnp.sum(used)) == metrics['unlabeled_used']


def test_the_strong_view_lever_changes_only_what_the_used_examples_train_on(setup):
  """pseudo_label_view='strong': the same examples selected and stored, another gradient once any is used."""
  s = setup
  runs = {}
  for view, step in (('weak', s.train_step), ('strong', s.strong_train_step)):
    new_state, metrics = step(make_state(s.params, s.tx, s.mesh, s.memory, True), s.device_batch())
    runs[view] = jax.device_get((new_state.params, new_state.pseudo_labels, metrics))
  (weak_params, weak_memory, weak), (strong_params, strong_memory, strong) = runs['weak'], runs['strong']
  np.testing.assert_array_equal(strong_memory, weak_memory)
  assert strong['unlabeled_used'] == weak['unlabeled_used'] > 0 and strong['rec_loss'] == weak['rec_loss']
  head = lambda p: np.asarray(p['head']['kernel'])
  assert not np.allclose(head(strong_params), head(weak_params), rtol=1e-4, atol=1e-6)


def test_remembered_labels_are_kept_when_the_rule_disagrees(setup):
  """Sticky: a stored pseudo-label is the target and stays stored, even when the gate is open."""
  s = setup
  memory = s.memory.copy()
  slot = s.remembered_slots[0]
  p_w, _ = s.reference.probs(s.params, s.batch)
  memory[s.idx[slot]] = (int(p_w[slot].argmax()) + 1) % CLASSES
  new_state, _ = s.train_step(make_state(s.params, s.tx, s.mesh, memory, True), s.device_batch())
  assert int(new_state.pseudo_labels[s.idx[slot]]) == memory[s.idx[slot]]
  _, _, want_memory, _, _ = s.reference.step(s.params, s.tx.init(s.params), memory, True, 0, s.batch, s.tx)
  np.testing.assert_array_equal(np.asarray(new_state.pseudo_labels), want_memory)


# --- what the step may read ------------------------------------------------------------------------------------------


def _used_batch_keys(train_step, state, batch) -> set[str]:
  """The batch keys whose arrays the traced step uses at all."""
  closed = jax.make_jaxpr(train_step)(state, batch)
  (eqn,) = closed.jaxpr.eqns  # the jitted step
  inner = eqn.params['jaxpr'].jaxpr
  used = {id(v) for e in inner.eqns for v in e.invars} | {id(v) for v in inner.outvars}
  num_state = len(jax.tree.leaves(state))
  keys = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(batch)[0]]
  return {key.strip("[]'") for key, var in zip(keys, inner.invars[num_state:]) if id(var) in used}


def test_hidden_labels_cannot_reach_the_step(setup):
  """Even when the batch carries the hidden labels of the unlabeled examples, the step never reads them."""
  s = setup
  batch = dict(s.batch, unlabeled_label=np.arange(U, dtype=np.int32) % CLASSES)
  train_step = ssmae.make_step(s.model, s.tx, s.config, s.mesh)
  state = make_state(s.params, s.tx, s.mesh, s.memory, True)
  assert _used_batch_keys(train_step, state, s.device_batch(batch)) == {
      'labeled_image', 'labeled_label', 'unlabeled_weak', 'unlabeled_strong', 'unlabeled_mae', 'unlabeled_index'}


# --- compiled once ---------------------------------------------------------------------------------------------------


def test_train_step_is_traced_once(setup):
  """Steps with new data, a new memory and the gate toggled reuse one trace and one executable."""
  s = setup
  state = make_state(s.params, s.tx, s.mesh)
  state, metrics = s.train_step(state, s.device_batch())
  applies = s.counting_model.applies
  assert applies > 0
  for i, gate_open in enumerate([False, True, True, False]):
    state = state.replace(gate_open=jax.device_put(np.bool_(gate_open), sharding.replicated(s.mesh)))
    state, metrics = s.train_step(state, s.device_batch(make_batch(i + 1)))
  jax.block_until_ready(metrics)
  assert s.counting_model.applies == applies
  assert s.train_step._cache_size() == 1


# --- devices ---------------------------------------------------------------------------------------------------------


def device_cases(s: Setup) -> list[dict]:
  """One step from the same start for each case, on `s.mesh`: losses, selection counts, memory, a params sum."""
  out = []
  for train_step, memory, gate_open, teacher in [
      (s.train_step, None, False, None), (s.train_step, s.memory, False, None), (s.train_step, s.memory, True, None),
      (s.narrow_train_step, s.memory, False, None), (s.narrow_train_step, s.memory, True, None),
      (s.teacher_train_steps[U - 1], s.memory, True, s.teacher)]:
    state, metrics = train_step(make_state(s.params, s.tx, s.mesh, memory, gate_open, teacher), s.device_batch())
    metrics = jax.device_get(metrics)
    out.append(dict(devices=int(s.mesh.devices.size), memory=np.asarray(state.pseudo_labels).tolist(),
                    losses=[float(metrics[k]) for k in ('loss', 'rec_loss', 'cls_loss', 'grad_norm')],
                    counts=[float(metrics[k]) for k in ('unlabeled_used', 'pseudo_labels_new', 'full_cls_pass')],
                    param_sum=float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves([state.params,
                                                                                      state.teacher])))))
  return out


def test_four_devices_give_the_same_loss_and_memory_as_one(setup, four_devices):
  stdout, stderr = four_devices.communicate(timeout=600)
  assert four_devices.returncode == 0, stderr[-3000:]
  four = json.loads(stdout.strip().splitlines()[-1])
  one = device_cases(setup)
  assert [c['devices'] for c in four] == [4] * 6 and [c['devices'] for c in one] == [1] * 6
  for a, b in zip(four, one):
    np.testing.assert_allclose(a['losses'], b['losses'], rtol=1e-5)
    np.testing.assert_allclose(a['param_sum'], b['param_sum'], rtol=1e-5)
    assert a['counts'] == b['counts']
    assert a['memory'] == b['memory']
  assert one[2]['counts'][1] > 0 and one[5]['counts'][1] > 0  # the gate-open cases assign new pseudo-labels
  assert [c['counts'][2] for c in one][:5] == [0, 1, 1, 0, 0]  # the narrow ones took the gathered pass
