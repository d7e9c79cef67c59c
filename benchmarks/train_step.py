"""Speed of one SSMAE train step, gate closed (empty memory) and gate open (every unlabeled example accepted).

  PYTHONPATH=. .venv/bin/python -m benchmarks.train_step [--json] [--config configs/bench_vit_t4.py] [--steps N]
      [--no-hugepage-malloc]

Steps are timed one by one (each waits for its result) after warm-up calls of the compiled executable with the
same kind of inputs, and the median is reported. "Gate open, all accepted" uses tau = 0 without the agreement
test, so every unlabeled example of every batch is newly accepted (fresh pool indices each step); the work of
a step does not depend on how many are accepted (fixed shapes), this only makes the claim literal.
`flops_gate_open` is XLA's count for the work the method needs in such a step, compiled on its own without
any branch: gradient of reconstruction (L + U) and classification (L + U weak), a forward pass on the U strong
views, and the AdamW update.

On Linux the benchmark re-executes itself with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (as main.py should run):
XLA allocates each step's temporaries (about 750 MB with the gate open) afresh, and with 4 KiB pages the
kernel spends 10-15% of the step's CPU time faulting them in; transparent huge pages remove almost all of it.
`--no-hugepage-malloc` measures the environment as it is.

"Gate open, gathered" (`--unlabeled_cls_rows K`, 8 by default, 0 skips it) times the same step built with
config.unlabeled_cls_rows=K when no unlabeled example is a candidate (tau = 1): L_cls's pass then covers the labeled
batch and K gathered unlabeled rows, the cost of every gate-open step with at most K candidates (fixed shapes).
"""

import os

import benchmarks

if __name__ == '__main__':
  benchmarks.reexec_with_hugepage_malloc('benchmarks.train_step')

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ssmae_jax import flops, losses, masking, methods, models, sharding, train_state  # noqa: E402
from ssmae_jax.methods import ssmae  # noqa: E402

POOL_SIZE = 50_000
NUM_CLASSES = 10


def load_config(path: str):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optimizer
  return optax.adamw(o.learning_rate, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def init_params(model, config) -> dict:
  size = config.image_size
  ids_keep, _, ids_restore = masking.draw(config, jax.random.key(0), 1, model.num_patches)
  return jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros((1, size, size, 3)), ids_keep,
                             ids_restore)['params']


def make_batches(config, count: int, mesh, rng: np.random.Generator) -> list[dict]:
  size, num_l, num_u = config.image_size, config.labeled_batch_size, config.unlabeled_batch_size
  data = sharding.data_sharded(mesh)

  def images(n):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

  batches = []
  for i in range(count):
    batch = dict(labeled_image=images(num_l), labeled_label=rng.integers(0, NUM_CLASSES, (num_l,), dtype=np.int32),
                 unlabeled_weak=images(num_u), unlabeled_strong=images(num_u), unlabeled_mae=images(num_u),
                 unlabeled_index=((i * num_u + np.arange(num_u)) % POOL_SIZE).astype(np.int32))
    batches.append(jax.device_put(batch, data))
  return batches


def method_flops(model, params, tx, opt_state, config) -> float:
  """XLA's FLOP count of the work a gate-open step must do, with no branch in the program."""
  num_l, num_u, size = config.labeled_batch_size, config.unlabeled_batch_size, config.image_size
  x_rec = jnp.zeros((num_l + num_u, size, size, 3), jnp.float32)
  x_cls = jnp.zeros((num_l + num_u, size, size, 3), jnp.float32)
  x_s = jnp.zeros((num_u, size, size, 3), jnp.float32)
  ids_keep, mask, ids_restore = masking.draw(config, jax.random.key(0), num_l + num_u, model.num_patches)
  labels = jnp.zeros((num_l + num_u,), jnp.int32)

  def work(params, opt_state):
    def loss_fn(params):
      pred = model.apply({'params': params}, x_rec, ids_keep, ids_restore, method=model.reconstruct)
      rec = losses.reconstruction_loss(pred, masking.patchify(x_rec, model.patch_size), mask)
      logits = model.apply({'params': params}, x_cls, method=model.classify)
      return rec + jnp.mean(losses.cross_entropy(logits, labels))

    logits_s = model.apply({'params': params}, x_s, method=model.classify)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, logits_s

  cost = jax.jit(work).lower(params, opt_state).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def time_steps(compiled, state, batches, warmup: int):
  """Runs every batch in order; returns (state, per-step seconds and page faults after `warmup`, last metrics)."""
  times, faults = [], []
  metrics = None
  for i, batch in enumerate(batches):
    start, faults_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    if i >= warmup:
      times.append(time.perf_counter() - start)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
  return state, times, faults, jax.device_get(metrics)


def run(config, num_steps: int, warmup: int = 3, rows: int = 8) -> dict:
  config = config.copy_and_resolve_references()
  # Every unlabeled example is accepted when the gate is open (see the module docstring).
  config.tau = 0.0
  config.require_agreement = False
  mesh = sharding.make_mesh()
  model = models.from_config(config, NUM_CLASSES)
  tx = make_optimizer(config)
  num_l, num_u = config.labeled_batch_size, config.unlabeled_batch_size
  params = init_params(model, config)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  repl = sharding.replicated(mesh)

  def fresh_state(gate_open: bool):
    # A copy: the step donates its state, and `params` is needed again.
    state = train_state.create(jax.tree.map(jnp.copy, params), tx, POOL_SIZE,
                               teacher=methods.get(config.method).has_teacher(config))
    return jax.device_put(state.replace(gate_open=jnp.asarray(gate_open)), repl)

  rng = np.random.default_rng(0)
  train_step = ssmae.make_step(model, tx, config, mesh)
  batches = make_batches(config, warmup + num_steps, mesh, rng)
  state = fresh_state(False)
  start = time.perf_counter()
  compiled = train_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  step_cost = compiled.cost_analysis()
  step_cost = step_cost[0] if isinstance(step_cost, (list, tuple)) else step_cost

  state, closed, faults_closed, m_closed = time_steps(compiled, state, batches, warmup)
  assert m_closed['unlabeled_used'] == 0, m_closed
  state = fresh_state(True)
  state, opened, faults_open, m_open = time_steps(compiled, state, batches, warmup)
  assert m_open['unlabeled_used'] == num_u and m_open['pseudo_labels_new'] == num_u, m_open

  flops_open = method_flops(model, params, tx, tx.init(params), config)
  gathered = {}
  if rows:
    # Nothing is confident at tau = 1 and nothing remembered: every gate-open step takes the gathered pass.
    narrow = config.copy_and_resolve_references()
    narrow.unlabeled_cls_rows, narrow.tau = rows, 1.0
    narrow_step = ssmae.make_step(model, tx, narrow, mesh)
    _, times, _, m_narrow = time_steps(narrow_step, fresh_state(True), batches, warmup)
    assert m_narrow['full_cls_pass'] == 0 and m_narrow['unlabeled_used'] == 0, m_narrow
    gathered = dict(unlabeled_cls_rows=rows, step_ms_gate_open_gathered=round(1e3 * statistics.median(times), 1),
                    step_ms_gate_open_gathered_min=round(1e3 * min(times), 1),
                    flops_gate_open_gathered=flops.work_flops(model, config, rec=num_l + num_u, cls=num_l + rows,
                                                              forward=num_u))
  ms_closed = 1e3 * statistics.median(closed)
  ms_open = 1e3 * statistics.median(opened)
  return dict(
      step_ms_gate_closed=round(ms_closed, 1),
      step_ms_gate_open=round(ms_open, 1),
      step_ms_gate_closed_min=round(1e3 * min(closed), 1),
      step_ms_gate_open_min=round(1e3 * min(opened), 1),
      compile_s=round(compile_s, 2),
      matmul_gflops=round(matmul_gflops(), 1),
      flops_gate_open=flops_open,
      flops_step_cost_analysis=float(step_cost['flops']),
      gflops_achieved_gate_open=round(flops_open / ms_open / 1e6, 1),
      # Images the step consumes (L labeled + U each of weak, strong, MAE views) per second, gate open.
      images_per_s=round((num_l + 3 * num_u) / ms_open * 1e3, 1),
      images_per_s_gate_closed=round((num_l + 3 * num_u) / ms_closed * 1e3, 1),
      page_faults_per_step_gate_open=int(statistics.median(faults_open)),
      page_faults_per_step_gate_closed=int(statistics.median(faults_closed)),
      **gathered,
      num_params=int(num_params),
      steps=num_steps,
      devices=jax.device_count(),
      backend=jax.default_backend(),
      dtype=str(model.dtype),
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''),
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/bench_vit_t4.py')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--json', action='store_true', help='print one JSON object instead of a human line')
  parser.add_argument('--no-hugepage-malloc', action='store_true',
                      help='do not restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see the module docstring)')
  parser.add_argument('--unlabeled_cls_rows', type=int, default=8,
                      help='also time the gate-open step with L_cls over this many gathered unlabeled rows (0: not)')
  args = parser.parse_args()
  config = load_config(args.config)
  if args.unlabeled_cls_rows >= config.unlabeled_batch_size:
    parser.error(f'--unlabeled_cls_rows={args.unlabeled_cls_rows} must be below the config\'s unlabeled batch '
                 f'({config.unlabeled_batch_size}), or 0')
  result = run(config, args.steps, rows=args.unlabeled_cls_rows)
  if args.json:
    print(json.dumps(result))
  else:
    print(f"train step: gate closed {result['step_ms_gate_closed']:.0f} ms, gate open (all accepted) "
          f"{result['step_ms_gate_open']:.0f} ms = {result['gflops_achieved_gate_open']:.0f} GF/s of "
          f"{result['flops_gate_open'] / 1e9:.0f} GFLOP (matmul peak {result['matmul_gflops']:.0f} GF/s), "
          f"{result['images_per_s']:.0f} images/s, compile {result['compile_s']:.1f} s, "
          + (f"gate open with {args.unlabeled_cls_rows} gathered rows {result['step_ms_gate_open_gathered']:.0f} ms "
             f"({result['flops_gate_open_gathered'] / 1e9:.0f} GFLOP), " if args.unlabeled_cls_rows else '') +
          f"{result['num_params']:,} params, {result['devices']} {result['backend']} device(s)")


if __name__ == '__main__':
  main()
