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

Sweeps (`--runs=1,2,4,8`; the config defaults to configs/cifar10_cpu.py there, the recipe a CPU sweep runs):

  PYTHONPATH=. .venv/bin/python -m benchmarks.train_step --runs=1,2,4,8 [--steps 4] [--warmup 2] [--json]

times, gate closed and gate open (all accepted, as above), the lone step (methods' make_step: what a run alone
compiles) and, for each R, sweep_train.vmapped_step of a sweep over R seeds: R runs as one program, the state with a
leading run axis, each run's batch [R, B, ...]. The programs take turns, one step each per round, so that other jobs'
load falls on all of them alike. Per R: ms per step (median), steps/s, run-steps/s (R x steps/s) and `ratio`, the
median over rounds of (time of the R-run step) / (R x time of the lone step in the same round): below 1 the sweep
beats R runs one after another (issue 27's goal: <= 0.8 at R = 4). The lone step is always timed (every ratio needs
it); R = 1 in the list also times the vmapped 1-run step, whose ratio is vmap's own overhead. `gflops_achieved_*` =
R x the method's FLOPs of a step (XLA's count of its work, as `flops_gate_open`; gate closed: L_rec of L + U images,
L_cls of L) per second, against `matmul_gflops`, what a large matmul reaches on this machine; `cpu_per_wall_*`, the
cores the process kept busy while the step ran; `ops` counts the compiled program's kernels (fusions, dots,
convolutions, custom calls; every branch counted).

What limits the speedup on a CPU (measured on this repository's 2-core machine, beside another job:
docs/sweeps_speed.md): nothing a sweep batches. Every program kept one core busy (`cpu_per_wall_*` ~1.0, like
`matmul_cpu_per_wall`: with the kernel's autogroup scheduling another session's job holds the other core whatever
its nice), and the lone cifar10_cpu.py step already computes at ~70% of that core's large-matmul rate
(`gflops_achieved_*` against `matmul_gflops`). The R-run program has the same kernels (`ops`), each R times larger,
and the same FLOPs per run; it reaches the lone step's GF/s at R = 2 and 4 (ratio ~1.0) and less at R = 8 (ratio
1.1-1.4): on one core, batching the runs does not make the arithmetic faster, and there is little else to save. The
vmapped 1-run step is slower than the lone step (ratio 1.1-1.2; its program has about twice the transposes, of the
batched matmuls' weights, and more copies: more `ops` for the same FLOPs). On an accelerator, where one run of a
small config leaves the chip mostly idle, the trade differs (the TPU compile table in the same document).
"""

import os

import benchmarks

if __name__ == '__main__':
  benchmarks.reexec_with_hugepage_malloc('benchmarks.train_step')

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ssmae_jax import configuration, experiment, flops, losses, masking, methods, models, sharding  # noqa: E402
from ssmae_jax import sweep, sweep_train, train_state  # noqa: E402
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


def cpu_seconds() -> float:
  """CPU time of this process so far, every thread's, user and system."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def matmul_gflops(n: int = 2048, reps: int = 10, cores: dict | None = None) -> float:
  """GFLOP/s of an n x n float32 matmul; `cores`, if given, gets 'matmul_cpu_per_wall' (cores busy on average)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  start, cpu = time.perf_counter(), cpu_seconds()
  for _ in range(reps):
    out = matmul(a, b)
  out.block_until_ready()
  seconds = time.perf_counter() - start
  if cores is not None:
    cores['matmul_cpu_per_wall'] = round((cpu_seconds() - cpu) / seconds, 2)
  return 2 * n ** 3 * reps / seconds / 1e9


def init_params(model, config) -> dict:
  size = config.image_size
  ids_keep, _, ids_restore = masking.draw(config, jax.random.key(0), 1, model.num_patches)
  return jax.jit(model.init)(jax.random.key(config.seed), jnp.zeros((1, size, size, 3)), ids_keep,
                             ids_restore)['params']


def host_batches(config, count: int, rng: np.random.Generator) -> list[dict]:
  """`count` random SSMAE batches as numpy arrays, each with fresh pool indices."""
  size, num_l, num_u = config.image_size, config.labeled_batch_size, config.unlabeled_batch_size

  def images(n):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

  return [dict(labeled_image=images(num_l), labeled_label=rng.integers(0, NUM_CLASSES, (num_l,), dtype=np.int32),
               unlabeled_weak=images(num_u), unlabeled_strong=images(num_u), unlabeled_mae=images(num_u),
               unlabeled_index=((i * num_u + np.arange(num_u)) % POOL_SIZE).astype(np.int32)) for i in range(count)]


def make_batches(config, count: int, mesh, rng: np.random.Generator) -> list[dict]:
  data = sharding.data_sharded(mesh)
  return [jax.device_put(batch, data) for batch in host_batches(config, count, rng)]


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


SWEEP_CONFIG = 'configs/cifar10_cpu.py'


def parse_runs(text: str) -> list[int]:
  """'1,2,4,8' -> [1, 2, 4, 8]: run counts, each at least 1, in the order given, each once."""
  try:
    runs = [int(x) for x in text.split(',') if x.strip()]
  except ValueError:
    runs = []
  if not runs or min(runs) < 1:
    raise argparse.ArgumentTypeError(f'--runs={text!r}: give run counts of at least 1, e.g. --runs=1,2,4,8')
  return list(dict.fromkeys(runs))


def count_ops(compiled) -> int:
  """Kernels of a compiled CPU program: fusions, dots, convolutions and custom calls, every branch counted."""
  return len(re.findall(r' (?:fusion|dot|convolution|custom-call)\(', compiled.as_text()))


def sweep_config(config, num_runs: int):
  """`config` (a lone run's) as a sweep over `num_runs` seeds (0, 1, ...)."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.sweep.seed = tuple(range(num_runs))
  return out


@dataclasses.dataclass
class _Program:
  """One compiled program of `run_sweeps`, with what it runs on and its step times."""
  name: str  # 'lone' or 'vmapped'.
  runs: int
  compiled: object
  fresh_state: object  # gate_open -> a new state.
  batches: list
  extra: tuple  # After (state, batch): the vmapped step's swept values.
  compile_s: float
  times: dict = dataclasses.field(default_factory=lambda: dict(gate_closed=[], gate_open=[]))
  cpu: dict = dataclasses.field(default_factory=lambda: dict(gate_closed=[], gate_open=[]))  # Process CPU seconds.

  def row(self, work: dict, lone: '_Program') -> dict:
    out = dict(program=self.name, runs=self.runs, compile_s=round(self.compile_s, 2), ops=count_ops(self.compiled))
    for gate, times in self.times.items():
      ms = 1e3 * statistics.median(times)
      # Each step against the lone step timed just before it, in the same round: load that comes and goes
      # (other jobs on the machine) slows both alike.
      ratio = statistics.median(t / (self.runs * t_lone) for t, t_lone in zip(times, lone.times[gate]))
      out.update({f'step_ms_{gate}': round(ms, 1), f'step_ms_{gate}_min': round(1e3 * min(times), 1),
                  f'steps_per_s_{gate}': round(1e3 / ms, 3), f'run_steps_per_s_{gate}': round(self.runs * 1e3 / ms, 3),
                  f'ratio_{gate}': round(ratio, 3),
                  f'gflops_achieved_{gate}': round(self.runs * work[gate] / ms / 1e6, 1),
                  # Cores busy on average while it ran: 1.0 is one thread's worth.
                  f'cpu_per_wall_{gate}': round(sum(self.cpu[gate]) / sum(times), 2)})
    return out


def run_sweeps(config, runs: list[int], num_steps: int, warmup: int = 2) -> dict:
  """The lone step and the vmapped step of a sweep over R seeds for each R of `runs` (module docstring), timed gate
  closed, then gate open (all accepted). The programs take turns, one step each per round, so that the load of other
  jobs falls on all of them alike."""
  config = config.copy_and_resolve_references()
  config.tau = 0.0  # Every unlabeled example is accepted when the gate is open (see the module docstring).
  config.require_agreement = False
  lone = sweep.runs(config)[0][1]  # Its config.sweep emptied (the config's own first run, if it is a sweep).
  method = methods.get(lone.method)
  model = models.from_config(lone, NUM_CLASSES)
  total_steps = lone.num_steps or 1000  # Only the learning rate schedule reads it.
  tx = experiment.make_optimizer(lone, total_steps)
  num_l, num_u = lone.labeled_batch_size, lone.unlabeled_batch_size
  work = dict(gate_closed=flops.work_flops(model, lone, rec=num_l + num_u, cls=num_l, forward=0),
              gate_open=flops.work_flops(model, lone, rec=num_l + num_u, cls=num_l + num_u, forward=num_u))
  host = host_batches(lone, warmup + num_steps, np.random.default_rng(0))
  init = lambda seed: experiment.initial_state(model, tx, lone, POOL_SIZE, seed)

  def compiled(name, num_runs, step, fresh_state, batches, extra=()) -> _Program:
    start = time.perf_counter()
    out = step.lower(fresh_state(False), batches[0], *extra).compile()
    return _Program(name, num_runs, out, fresh_state, batches, extra, time.perf_counter() - start)

  mesh = sharding.make_mesh()
  repl = sharding.replicated(mesh)
  lone_init = jax.jit(lambda: init(lone.seed), out_shardings=repl)
  programs = [compiled('lone', 1, method.make_step(model, tx, lone, mesh),
                       lambda gate_open: lone_init().replace(gate_open=jax.device_put(np.asarray(gate_open), repl)),
                       [jax.device_put(b, sharding.data_sharded(mesh)) for b in host])]
  meshes = {}
  for num_runs in runs:
    swept = sweep_config(lone, num_runs)
    run_mesh = meshes[num_runs] = sweep_train.make_mesh(num_runs, swept)
    by_run, by_batch = sweep_train.run_sharding(run_mesh), sweep_train.batch_sharding(run_mesh)
    values = {k: jax.device_put(v, by_run)
              for k, v in sweep.traced_values(swept, configuration.declarations()).items()}
    stacked_init = functools.partial(jax.jit(jax.vmap(init), out_shardings=by_run),
                                     np.arange(num_runs, dtype=np.uint32))
    programs.append(compiled(
        'vmapped', num_runs, sweep_train.vmapped_step(method, model, lone, total_steps, run_mesh),
        lambda gate_open, stacked_init=stacked_init, by_run=by_run, n=num_runs: stacked_init().replace(
            gate_open=jax.device_put(np.full(n, gate_open), by_run)),
        [jax.device_put({k: np.stack([v] * num_runs) for k, v in b.items()}, by_batch) for b in host], (values,)))

  for gate, gate_open, used in (('gate_closed', False, 0), ('gate_open', True, num_u)):
    states = [p.fresh_state(gate_open) for p in programs]
    for i in range(warmup + num_steps):
      for j, p in enumerate(programs):
        start, cpu = time.perf_counter(), cpu_seconds()
        states[j], metrics = p.compiled(states[j], p.batches[i], *p.extra)
        jax.block_until_ready(metrics)
        if i >= warmup:
          p.times[gate].append(time.perf_counter() - start)
          p.cpu[gate].append(cpu_seconds() - cpu)
        if i == warmup + num_steps - 1:  # What the step accepted: one number per run (a lone step's: a scalar).
          got = np.asarray(metrics['unlabeled_used'])
          assert got.shape == ((p.runs,) if p.extra else ()) and np.all(got == used), (p.name, p.runs, got, used)
    del states
  rows = [p.row(work, programs[0]) for p in programs]
  for row in rows[1:]:
    row['mesh'] = dict(meshes[row['runs']].shape)
  cores = {}
  return dict(
      rows=rows,
      flops_gate_closed=work['gate_closed'], flops_gate_open=work['gate_open'],
      matmul_gflops=round(matmul_gflops(cores=cores), 1), **cores,
      num_params=int(sum(x.size for x in jax.tree.leaves(jax.eval_shape(init, 0).params))),
      steps=num_steps, warmup=warmup, dtype=str(model.dtype),
      xla_flags=os.environ.get('XLA_FLAGS', ''), glibc_tunables=os.environ.get('GLIBC_TUNABLES', ''),
      **benchmarks.machine())


def sweep_table(result: dict) -> str:
  """`run_sweeps`' rows as a Markdown table."""
  gates = ('gate_closed', 'gate_open')
  lines = ['| program | R | mesh (runs x data) |' + ''.join(
      f' {g.replace("_", " ")} ms/step (min) | steps/s | runs·steps/s | ratio |' for g in gates)
      + ' GF/s closed / open | cores busy closed / open | ops | compile s |', '|---' * 15 + '|']
  for r in result['rows']:
    mesh = f"{r['mesh']['runs']} x {r['mesh']['data']}" if 'mesh' in r else '-'
    cells = [r['program'], r['runs'], mesh]
    for g in gates:
      cells += [f"{r[f'step_ms_{g}']:.0f} ({r[f'step_ms_{g}_min']:.0f})", f"{r[f'steps_per_s_{g}']:.2f}",
                f"{r[f'run_steps_per_s_{g}']:.2f}", f"{r[f'ratio_{g}']:.2f}"]
    cells += [f"{r['gflops_achieved_gate_closed']:.0f} / {r['gflops_achieved_gate_open']:.0f}",
              f"{r['cpu_per_wall_gate_closed']:.2f} / {r['cpu_per_wall_gate_open']:.2f}", r['ops'],
              f"{r['compile_s']:.0f}"]
    lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default=None,
                      help=f'default configs/bench_vit_t4.py; with --runs {SWEEP_CONFIG}')
  parser.add_argument('--steps', type=int, default=None, help='timed steps (default 10; with --runs 4)')
  parser.add_argument('--runs', type=parse_runs, default=None,
                      help='time the vmapped step of sweeps of these many runs, e.g. 1,2,4,8 (module docstring)')
  parser.add_argument('--warmup', type=int, default=None, help='untimed steps first (default 3; with --runs 2)')
  parser.add_argument('--json', action='store_true', help='print one JSON object instead of a human line')
  parser.add_argument('--no-hugepage-malloc', action='store_true',
                      help='do not restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see the module docstring)')
  parser.add_argument('--unlabeled_cls_rows', type=int, default=8,
                      help='also time the gate-open step with L_cls over this many gathered unlabeled rows (0: not)')
  args = parser.parse_args()
  if args.runs:
    config = load_config(args.config or SWEEP_CONFIG)
    result = run_sweeps(config, args.runs, args.steps or 4, 2 if args.warmup is None else args.warmup)
    print(json.dumps(result) if args.json else
          f"{sweep_table(result)}\nratio: one R-run step / (R x the lone step), median of the rounds. Matmul "
          f"{result['matmul_gflops']:.0f} GF/s ({result['matmul_cpu_per_wall']:.2f} cores busy); a run-step is "
          f"{result['flops_gate_closed'] / 1e9:.2f} GFLOP gate closed, {result['flops_gate_open'] / 1e9:.2f} gate "
          f"open; medians of {result['steps']} steps; load average {result['load_average']}.")
    return
  config = load_config(args.config or 'configs/bench_vit_t4.py')
  if args.unlabeled_cls_rows >= config.unlabeled_batch_size:
    parser.error(f'--unlabeled_cls_rows={args.unlabeled_cls_rows} must be below the config\'s unlabeled batch '
                 f'({config.unlabeled_batch_size}), or 0')
  result = run(config, args.steps or 10, 3 if args.warmup is None else args.warmup, rows=args.unlabeled_cls_rows)
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
