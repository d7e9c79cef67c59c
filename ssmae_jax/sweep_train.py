"""Training a sweep (config.sweep, sweep.py) as one program: the train state gets a leading run axis and the step is
vmapped over it; each run keeps its own data stream, gate, pseudo-label memory, RNG, optimizer state, logs and best
checkpoint, and writes WORKDIR/runs/<name>/ as a lone run writes its workdir.

The loop is train.py's, step for step: the same evaluations at epoch starts (one per run, each run's gate from its
own validation pass), the same logging windows, checkpoints (the stacked state, in WORKDIR/checkpoints, with every
run's log) and preemption. Devices: a ('runs', 'data') mesh, the runs split over as many devices as divide their
number (a run's gradient then stays on its devices), each run's batch over the rest.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ssmae_jax import checkpointing, configuration, experiment as experiment_lib, fileio, input_pipeline
from ssmae_jax import predict, run_output, runtime, sharding, sweep, train, train_state
from ssmae_jax.errors import UserError
from ssmae_jax.run_log import RunLog

RESULTS = 'sweep.json'  # In the sweep's workdir, once finished: each run's results at a glance.


@dataclasses.dataclass
class Sweep:
  config: ml_collections.ConfigDict  # The sweep's, with config.sweep.
  workdir: object
  names: list[str]
  runs: list[experiment_lib.Experiment]  # One per run, without a state: its config, data, evaluator, checkpoints.
  mesh: Mesh  # ('runs', 'data').
  values: dict  # Swept field -> global array [runs]: what each run's step reads in place of the config's value.
  state: train_state.TrainState  # Stacked: every leaf has the leading run axis.
  checkpoints: checkpointing.Checkpoints  # The stacked state's, in the sweep's workdir.

  @property
  def first(self) -> experiment_lib.Experiment:
    return self.runs[0]

  @property
  def total_steps(self) -> int:
    return self.first.total_steps

  @property
  def steps_per_epoch(self) -> int:
    return self.first.steps_per_epoch

  @property
  def num_epochs(self) -> int:
    return self.first.num_epochs


def runs_mesh(num_runs: int, devices) -> Mesh:
  """A sweep's ('runs', 'data') mesh of `devices` (this machine's, or a TPU slice's for --mode=compile): the runs
  over gcd(runs, devices) of them, each run's batch over the others."""
  devices = np.asarray(devices).reshape(-1)
  runs_axis = math.gcd(num_runs, devices.size)
  return Mesh(devices.reshape(runs_axis, devices.size // runs_axis), ('runs', 'data'))


def make_mesh(num_runs: int, config) -> Mesh:
  """`runs_mesh` of this machine's devices; the batch sizes must split over each run's share."""
  # Evaluation is run by run over every device (sharding.make_mesh), as a lone run's.
  sharding.check_divisible('config.eval_batch_size', config.eval_batch_size, sharding.make_mesh())
  mesh = runs_mesh(num_runs, jax.devices())
  for name in ('labeled_batch_size', 'unlabeled_batch_size'):
    if config[name] % mesh.shape['data']:
      raise UserError(f'config.{name}={config[name]} does not split over the {mesh.shape["data"]} devices each run '
                      f'of this sweep of {num_runs} gets: make it a multiple of {mesh.shape["data"]}.')
  return mesh


def run_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('runs'))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('runs', 'data'))


def run_dirs(workdir, names: list[str], stage: str = '') -> list:
  """Each run's workdir: WORKDIR/runs/<name>, or its pre-training stage's folder in it (`stage`)."""
  root = fileio.path(workdir) / sweep.RUNS_DIR
  return [root / name / stage if stage else root / name for name in names]


def build(config: ml_collections.ConfigDict, workdir: str, dirs: list | None = None) -> Sweep:
  """The sweep of `config` in `workdir` (its stacked checkpoints and config.json), its runs in `dirs` (default
  WORKDIR/runs/<name>), each recorded and checked as a lone run's workdir is."""
  configuration.validate(config)
  workdir = fileio.path(workdir)
  named = sweep.runs(config)
  names = [name for name, _ in named]
  dirs = dirs or run_dirs(workdir, names)
  mesh = make_mesh(len(named), config)
  experiment_lib.prepare_workdir(workdir, config, record=jax.process_index() == 0)
  runtime.ensure_compilation_cache(config, workdir)  # The sweep's cache, not its first run's.
  data_mesh = sharding.make_mesh()
  runs, eval_steps = [], {}
  for (name, run_config), run_dir in zip(named, dirs):
    first = runs[0] if runs else None
    runs.append(experiment_lib.build(
        run_config, str(run_dir), init=False, mesh=data_mesh,
        eval_step=eval_steps.get(run_config.gate_confidence), step_flops=first.step_flops if first else None))
    eval_steps.setdefault(run_config.gate_confidence, runs[-1].evaluator.eval_step)
  _check_same_shapes(runs, names)
  specs = configuration.declarations()
  values = {k: jax.device_put(v, run_sharding(mesh)) for k, v in sweep.traced_values(config, specs).items()}
  return Sweep(config=config, workdir=workdir, names=names, runs=runs, mesh=mesh, values=values,
               state=initial_state(runs, mesh), checkpoints=checkpointing.Checkpoints(workdir, config.keep_checkpoints))


def _check_same_shapes(runs: list[experiment_lib.Experiment], names: list[str]) -> None:
  first = runs[0]
  for name, exp in zip(names, runs):
    if (exp.pool_size, exp.steps_per_epoch, exp.total_steps) != (first.pool_size, first.steps_per_epoch,
                                                                 first.total_steps):
      raise UserError(f'Run {name} of the sweep has {exp.pool_size} unlabeled examples and {exp.steps_per_epoch} '
                      f'steps per epoch, run {names[0]} {first.pool_size} and {first.steps_per_epoch}: one program '
                      'needs the same sizes; sweep fields that keep them.')


def initial_state(runs: list[experiment_lib.Experiment], mesh: Mesh) -> train_state.TrainState:
  """The stacked initial state: each run's drawn from its own seed (vmapped), then its init_from's or pre-training
  stage's encoder where it has one."""
  first = runs[0]
  seeds = np.asarray([exp.config.seed for exp in runs], np.uint32)
  init = jax.vmap(lambda seed: experiment_lib.initial_state(first.model, first.tx, first.config, first.pool_size,
                                                            seed))
  state = jax.jit(init, out_shardings=run_sharding(mesh))(seeds)
  sources = [exp.config.init_from or (str(exp.workdir / experiment_lib.PRETRAIN_DIR) if exp.config.pretrain_steps
                                      else None) for exp in runs]
  if not any(sources):
    return state
  loaded = [checkpointing.load_pretrained(src, jax.tree.map(lambda x, i=i: x[i], state.params))
            for i, src in enumerate(sources)]
  params = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *loaded), run_sharding(mesh))
  return train_state.with_params(state, params)


def make_step(sw: Sweep, kind: str | None = None):
  """The sweep's `train_step(state, batch, values) -> (state, metrics)` (`vmapped_step` of its first run's parts)."""
  first = sw.first
  return vmapped_step(first.method, first.model, first.config, first.total_steps, sw.mesh, kind)


def vmapped_step(method, model, template: ml_collections.ConfigDict, total_steps: int, mesh: Mesh,
                 kind: str | None = None):
  """`method`'s step vmapped over the runs, jitted over a ('runs', 'data') `mesh`: `train_step(state, batch, values)
  -> (state, metrics)`, the state (donated) and metrics with a leading run axis, the batch [runs, B, ...]. Each run
  reads its swept `values` (sweep.RunConfig over `template`, a run's config) and builds its optimizer from them.
  `kind` as in methods.Method.make_step."""

  def one_run(state, batch, values):
    config = sweep.RunConfig(template, values)
    tx = experiment_lib.make_optimizer(config, total_steps)
    return method.make_step(model, tx, config, None, kind)(state, batch)

  runs, batches = run_sharding(mesh), batch_sharding(mesh)
  return jax.jit(jax.vmap(one_run, axis_name=sweep.RUN_AXIS), in_shardings=(runs, batches, runs),
                 out_shardings=(runs, runs), donate_argnums=0)


def stacked_batches(sw: Sweep, start_step: int):
  """Each run's own batches (its split, order and augmentation: what it would see alone), stacked on the host."""
  iterators = [input_pipeline.train_iterator(exp.splits, exp.config, start_step, need_labeled=exp.method.uses_labeled,
                                             need_unlabeled=exp.method.uses_unlabeled) for exp in sw.runs]
  for batches in zip(*iterators):
    yield {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def place(batch: dict, mesh: Mesh) -> dict:
  return {k: jax.device_put(v, batch_sharding(mesh)) for k, v in batch.items()}


def run_slice(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, dirs: list | None = None,
                       preemption: 'train.Preemption | None' = None) -> tuple[object, list[dict] | None]:
  """Trains (or resumes) the sweep of `config` in `workdir` to its end -> (the stacked state, each run's
  results.json content), or (state, None) when `preemption` stopped it first (the same call resumes it)."""
  sw = build(config, workdir, dirs)
  reports = [run_output.Reporter(exp, console=False) for exp in sw.runs]
  with train.saves_finished_on_error(sw.checkpoints):
    state, logs = restore(sw)
    clock = run_output.Clock(logs[0].wall_seconds)
    start = int(state.step[0])
    for report in reports:
      report.start(start)
    _print(start_line(sw, start))
    preemption = preemption or train.SigtermWatch(sw.checkpoints)
    state, stopped = train_steps(sw, state, logs, reports, clock, preemption)
    return (state, None) if stopped else finish(sw, state, logs, reports, clock, preemption)


def pretrain(pre: ml_collections.ConfigDict, pretrain_dir, stages: list) -> list[dict] | None:
  """The pre-training stage of each run of a sweep (`pre`: experiment.pretraining_config), into `stages` (each run's
  WORKDIR/runs/<run>/pretrain) -> the stages' results, or None if a preemption stopped them. Runs that differ only
  in fields MAE pre-training never reads (sweep.shared_stages: tau, the gate, loss weights) share one stage: it trains
  in the first one's folder, then is copied to the others. A stage sweep begun before stages were shared resumes as
  it began."""
  stage, groups = sweep.shared_stages(pre, configuration.declarations())
  began = pretrain_dir / 'config.json'
  if began.exists() and fileio.read_json(began).get('sweep') == configuration.to_dict(pre)['sweep']:
    stage, groups = pre, [[i] for i in range(len(stages))]
  firsts = [stages[group[0]] for group in groups]
  if not all((first / 'results.json').exists() for first in firsts):
    if sweep.is_sweep(stage):
      done = train_and_evaluate(stage, str(pretrain_dir), dirs=firsts)[1]
    else:  # Nothing it reads is swept: one run.
      done = train.train_and_evaluate(stage, str(firsts[0]))[1]
    if done is None:
      return None
  for group in groups:
    for i in group[1:]:
      if not (stages[i] / 'results.json').exists():
        fileio.copy_run(stages[group[0]], stages[i])
  return [fileio.read_json(stage_dir / 'results.json') for stage_dir in stages]


def restore(sw: Sweep):
  """(the stacked state to start from, each run's log): the sweep's latest checkpoint's, else the initial."""
  state, logs = sw.state, [RunLog() for _ in sw.runs]
  restored = sw.checkpoints.restore_latest(state, delete_unreadable=True)
  if restored is not None:
    state, meta = restored
    logs = [RunLog.from_json(meta['runs'][name]) for name in sw.names]
  for exp, log in zip(sw.runs, logs):
    log.begin_command()
    exp.checkpoints.discard_best_after(log.best_step())
  return state, logs


def _save(sw: Sweep, state, logs: list[RunLog], clock: run_output.Clock) -> None:
  for log in logs:
    log.set_clock(clock.seconds())
  sw.checkpoints.save(state, dict(runs={name: log.to_json() for name, log in zip(sw.names, logs)}),
                      step=int(state.step[0]))


def train_steps(sw: Sweep, state, logs: list[RunLog], reports: list, clock: run_output.Clock, preemption):
  """train.train_steps for the stacked runs -> (the state after the last step taken, whether a preemption
  stopped the sweep)."""
  config, start_step = sw.config, int(state.step[0])
  train_step = make_step(sw)
  batches = train.prefetch_to_device(stacked_batches(sw, start_step), sw.mesh, place)
  window = train.MetricWindow()
  for step in range(start_step, sw.total_steps):
    epoch = step // sw.steps_per_epoch
    if train.is_due(step, sw.steps_per_epoch) and logs[0].last_epoch_evaluated < epoch:
      log_window(sw, window, step, logs, reports)
      state = evaluate_epoch(sw, state, epoch, logs, reports, clock)
    state, metrics = train_step(state, next(batches), sw.values)
    window.add(metrics)
    done = step + 1
    if train.is_due(done, config.log_every_steps, last=sw.total_steps):
      log_window(sw, window, done, logs, reports)
    stop = preemption.reached(done)
    if train.is_due(done, config.checkpoint_every_steps) or stop:
      log_window(sw, window, done, logs, reports)
      _save(sw, state, logs, clock)
    if stop:
      sw.checkpoints.wait()
      sw.checkpoints.close()
      preemption.close()
      _print(f'{preemption.reason} at step {done}: checkpoint saved in {sw.workdir}/checkpoints; run the same '
             'command to resume.')
      return state, True
  return state, False


def log_window(sw: Sweep, window: train.MetricWindow, done: int, logs: list[RunLog], reports: list) -> None:
  """train.log_window for each run (its TensorBoard and log); one console line for the sweep."""
  if not window.steps:
    return
  steps_in_window = window.steps
  sums, steps_per_sec = window.fetch()
  all_means = []
  for i, (exp, log, report) in enumerate(zip(sw.runs, logs, reports)):
    means = train.window_means(exp, {k: v[i] for k, v in sums.items()}, steps_in_window, done, log, sw.names[i])
    means['steps_per_sec'] = steps_per_sec
    report.window(done, means, float(experiment_lib.learning_rate_schedule(exp.config, exp.total_steps)(done)))
    all_means.append(means)
  _print(window_line(sw, done, all_means, steps_per_sec))


def _spread(values: list[float], fmt: str) -> str:
  """'mean (min-max)' of the runs' values."""
  return f'{fmt.format(np.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})'


def window_line(sw: Sweep, done: int, all_means: list[dict], steps_per_sec: float) -> str:
  """The sweep's console line of a logging window: mean (range) over the runs."""
  method = sw.first.method
  get = lambda key: [m[key] for m in all_means]
  line = f'step {done}/{sw.total_steps} | epoch {done / sw.steps_per_epoch:.2f} | loss {_spread(get("loss"), "{:.4f}")}'
  if method.classifies:
    line += f' | train acc {_spread([100 * a for a in get("labeled_accuracy")], "{:.1f}")}%'
  if method.gated:
    line += f' | unlabeled used/step {_spread(get("unlabeled_used"), "{:.1f}")}'
  runs = len(all_means)
  eta = run_output.fmt_time((sw.total_steps - done) / max(steps_per_sec, 1e-9))
  skipped = sum(get('skipped_steps'))
  return (line + f' | {steps_per_sec:.2f} steps/s ({runs * steps_per_sec:.2f} run-steps/s, {runs} runs) | ETA {eta}'
          + (f' | {skipped} non-finite steps skipped' if skipped else ''))


def evaluate_epoch(sw: Sweep, state, epoch: int, logs: list[RunLog], reports: list, clock: run_output.Clock,
                   final: bool = False):
  """Each run's evaluation (train.evaluate_run: its own validation, gate, best checkpoint, history), one console
  line per run -> the state with each run's gate for the epoch."""
  step = int(state.step[0])
  opens = []
  for i, (exp, log, report) in enumerate(zip(sw.runs, logs, reports)):
    opens.append(train.evaluate_run(exp, run_slice(state.params, i), state.pseudo_labels[i], step, epoch, log,
                                    report, clock, final))
    _print(f'  {sw.names[i]}: ' + run_output.epoch_line(exp.method, log.history[-1], final))
  if sw.first.method.gated and not final:
    state = state.replace(gate_open=jax.device_put(np.asarray(opens), run_sharding(sw.mesh)))
  return state


def finish(sw: Sweep, state, logs: list[RunLog], reports: list, clock: run_output.Clock, preemption):
  """train.finish for every run: the final evaluations, the stacked checkpoint, then each run's own latest
  checkpoint (what --mode=eval / predict and init_from read in its folder), results.json and figures; the sweep's
  table of results and WORKDIR/sweep.json."""
  if logs[0].last_epoch_evaluated < sw.num_epochs:
    state = evaluate_epoch(sw, state, sw.num_epochs, logs, reports, clock, final=True)
  for log in logs:
    log.set_clock(clock.seconds())
  if sw.checkpoints.latest.latest_step() != sw.total_steps:
    _save(sw, state, logs, clock)
  sw.checkpoints.wait()
  preemption.close()
  all_results = []
  for i, (exp, log, report) in enumerate(zip(sw.runs, logs, reports)):
    run_state = run_slice(state, i)
    if exp.checkpoints.latest.latest_step() != sw.total_steps:
      exp.checkpoints.save(run_state, log.to_json())
    exp.checkpoints.wait()
    results = run_output.results(exp, log, train.test_at_best_validation(exp, run_state, log))
    results['sweep'] = dict(workdir=str(sw.workdir), runs=len(sw.runs), run=sw.names[i])
    report.finish(results, log)
    if exp.splits.has_files and exp.method.classifies:
      predict.write_pseudo_labels(exp.workdir, exp.model, run_state.params, run_state.pseudo_labels, exp.splits,
                                  exp.config, exp.mesh)
    exp.checkpoints.close()
    all_results.append(results)
  sw.checkpoints.close()
  _print(results_table(sw, all_results))
  if jax.process_index() == 0:
    fileio.write_json(sw.workdir / RESULTS, dict(
        runs={name: {k: r[k] for k in _TABLE_KEYS} for name, r in zip(sw.names, all_results)},
        wall_seconds=clock.seconds(), command_wall_seconds=runtime.command_wall_seconds()), indent=2)
  _print(f'Done: {len(sw.runs)} runs in {run_output.fmt_time(clock.seconds())}; each in {run_folders(sw)}.')
  return state, all_results


_TABLE_KEYS = ('test_accuracy', 'test_accuracy_at_best_val', 'best_val_accuracy', 'pseudo_labels_total',
               'pseudo_label_precision', 'gate_opened_at_epoch', 'flops')


def results_table(sw: Sweep, all_results: list[dict]) -> str:
  method = sw.first.method
  if not method.classifies:
    rows = ['| run | train rec loss |', '|---|---|']
    return '\n'.join(rows + [f'| {n} | {r["history"][-1]["train_rec_loss"]:.4f} |'
                             for n, r in zip(sw.names, all_results)])
  pct = run_output.pct
  head = '| run | test acc | at best val | best val |' + (' pseudo-labels (precision) | gate opened |'
                                                          if method.gated else '')
  rows = [head, '|' + '---|' * (head.count('|') - 1)]
  for name, r in zip(sw.names, all_results):
    row = (f'| {name} | {pct(r["test_accuracy"])} | {pct(r["test_accuracy_at_best_val"])} | '
           f'{pct(r["best_val_accuracy"])} |')
    if method.gated:
      row += f' {r["pseudo_labels_total"]} ({pct(r["pseudo_label_precision"])}) | {r["gate_opened_at_epoch"]} |'
    rows.append(row)
  return '\n'.join(rows)


def run_folders(sw: Sweep) -> str:
  """Where the runs' folders are, e.g. '/tmp/sw/runs/<run>/'."""
  return str(sw.first.workdir).replace(sw.names[0], '<run>') + '/'


def start_line(sw: Sweep, start_step: int) -> str:
  first = sw.first
  ax = ' x '.join(f'{k} {tuple(v)}' for k, v in sweep.axes(sw.config).items())
  resumed = f'Resuming from step {start_step}. ' if start_step else ''
  return (f'{resumed}Sweep of {len(sw.runs)} runs ({ax}) as one program on a {sw.mesh.shape["runs"]} x '
          f'{sw.mesh.shape["data"]} (runs x data) mesh; each run in {run_folders(sw)}. Each run: '
          + run_output.start_line(first.method, first.total_steps, first.num_epochs, first.steps_per_epoch,
                                  (len(first.splits.labeled_idx), len(first.splits.val_idx), first.pool_size),
                                  jax.device_count()))


def _print(line: str) -> None:
  if jax.process_index() == 0:
    print(line, flush=True)
