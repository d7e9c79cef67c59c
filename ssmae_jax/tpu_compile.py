"""Compiling a run's programs for a Cloud TPU slice on a machine without one (`main.py --mode=compile`).

libtpu (the `tpu-compile` extra) describes a named slice's devices without the hardware; jit programs lowered over a
mesh of them compile for that TPU ahead of time, and XLA reports their memory and its cost model's FLOPs and bytes.
No data is read: the batches are shapes, the dataset's size comes from its TFDS metadata. What a step would cost on
the slice is a roofline from the chip's peak figures, an estimate, not a measurement.

A sweep (config.sweep) compiles what sweep_train.py runs: each stage's step vmapped over its R runs (the stacked
state, each run's batch [R, B, ...], the swept values [R]) on a ('runs', 'data') mesh of the slice's devices, the
runs over gcd(R, devices) of them as sweep_train.make_mesh splits them; and the lone eval step (a sweep evaluates run
by run) beside the stacked state.
"""

import collections
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time

import jax
import numpy as np
from jax.sharding import Mesh

from ssmae_jax import runtime
from ssmae_jax.errors import UserError

INSTALL = "pip install 'jax[tpu]==0.10.2'"
GIB = 2 ** 30
_MEGACORE = {'chip_config_name': 'megacore'}  # One device per chip (both TensorCores), as a real v4 / v5p shows.


@dataclasses.dataclass(frozen=True)
class Slice:
  topology: str  # libtpu's name.
  options: dict  # get_topology_desc's keyword arguments.


# Cloud TPU names: "-N" counts TensorCores on v4 and v5p (2 per chip) and chips on v5e and v6e. Chips per host:
# 4 on v4 / v5p / v5e pods, 8 on the single-host v5e-8 and v6e-8.
SLICES = {
    'v4-8': Slice('v4:2x2x1', _MEGACORE),
    'v4-16': Slice('v4:2x2x2', _MEGACORE),
    'v4-32': Slice('v4:2x2x4', _MEGACORE),
    'v4-64': Slice('v4:2x4x4', _MEGACORE),
    'v5p-8': Slice('v5p:2x2x1', _MEGACORE),
    'v5p-16': Slice('v5p:2x2x2', _MEGACORE),
    'v5e-1': Slice('v5e:1x1', {'chips_per_host_bounds': (1, 1, 1)}),
    'v5e-4': Slice('v5e:2x2', {}),
    'v5e-8': Slice('v5e:2x4', {'chips_per_host_bounds': (2, 4, 1)}),
    'v5e-16': Slice('v5e:4x4', {}),
    'v6e-1': Slice('v6e:1x1', {'chips_per_host_bounds': (1, 1, 1)}),
    'v6e-4': Slice('v6e:2x2', {}),
    'v6e-8': Slice('v6e:2x4', {'chips_per_host_bounds': (2, 4, 1)}),
}


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  bf16_flops: float  # Peak bf16 FLOP/s.
  hbm_bandwidth: float  # Bytes/s.


# Per chip, from the Cloud TPU documentation's system architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
# /v6e), keyed by libtpu's device_kind.
CHIPS = {
    'TPU v4': Chip('v4', 32 * GIB, 275e12, 1.2e12),
    'TPU v5 lite': Chip('v5e', 16 * GIB, 197e12, 819e9),
    'TPU v5': Chip('v5p', 95 * GIB, 459e12, 2.76e12),
    'TPU v6 lite': Chip('v6e', 32 * GIB, 918e12, 1.64e12),
}


def slice_devices(name: str) -> tuple[Slice, list]:
  """The devices of the slice a user names (a Cloud TPU name of SLICES, or libtpu's own, e.g. 'v4:2x2x1')."""
  if name in SLICES:
    tpu = SLICES[name]
  elif re.fullmatch(r'[a-zA-Z0-9_ ]+[=_:][0-9x]+(_twisted|_untwisted)?', name):
    tpu = Slice(name, {})
  else:
    raise UserError(f'--topology={name} is not a slice this knows: use one of {", ".join(SLICES)}, or libtpu\'s own '
                    'name such as v4:2x2x1.')
  if importlib.util.find_spec('libtpu') is None:
    raise UserError(f'--mode=compile needs libtpu (Linux x86_64): {INSTALL}, or pip install -e .[tpu-compile].')
  from jax.experimental import topologies
  # libtpu locks /tmp/libtpu_lockfile so that two processes never share a TPU's chips; any JAX process that tried a
  # TPU backend holds it. Compiling uses no chip.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    with _quiet_stderr():  # libtpu's lines about the TPU VM metadata a CPU machine lacks.
      devices = topologies.get_topology_desc(topology_name=tpu.topology, platform='tpu', **tpu.options).devices
  except Exception as e:  # libtpu's errors are XlaRuntimeErrors with its message: a name it refuses.
    raise UserError(f'libtpu refuses --topology={name} ({" ".join(str(e).split())[:200]}): use one of '
                    f'{", ".join(SLICES)}.') from None
  return tpu, devices


@contextlib.contextmanager
def _quiet_stderr():
  """File descriptor 2 to /dev/null: libtpu's C++ logging bypasses Python's sys.stderr."""
  sys.stderr.flush()
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


@dataclasses.dataclass(frozen=True)
class DataShape:
  """What a run's programs need to know of its dataset: no images, only sizes (class-balanced, as CIFAR is)."""
  num_classes: int
  shipped_size: int  # The images' size in a batch (data_sources.shipped_size).
  labeled_train: int
  pool_size: int


def data_shape(config) -> DataShape:
  """The sizes of config.dataset from its TFDS metadata, the splits carved as input_pipeline does for balanced
  classes."""
  if config.dataset == 'folder':
    raise UserError('--mode=compile reads a TFDS dataset\'s metadata; for folder data compile a TFDS config of the '
                    'same model, image_size and batch sizes (the folders only change the pseudo-label memory).')
  import tensorflow_datasets as tfds
  data_dir = config.data_dir or os.environ.get('TFDS_DATA_DIR')
  info = tfds.builder(config.dataset, data_dir=data_dir).info
  if 'train' not in info.splits:
    where = data_dir or "TFDS's default data dir"
    raise UserError(f'The size of {config.dataset!r} is unknown here (not prepared in {where}): the run\'s steps and '
                    'pseudo-label memory follow from it; set TFDS_DATA_DIR (or config.data_dir) to where it is '
                    'prepared.')
  classes, total = info.features['label'].num_classes, info.splits['train'].num_examples
  labeled = (config.num_labels // classes if config.num_labels is not None
             else round(config.label_fraction * total / classes))
  val = max(1, round(config.val_fraction * labeled)) if config.val_fraction > 0 else 0
  excluded = val if config.unlabeled_includes_labeled else labeled
  stored = info.features['image'].shape[0]
  return DataShape(classes, min(stored, config.image_size) if config.resize_on_device else config.image_size,
                   classes * (labeled - val), total - classes * excluded)


def _batch(config, shape: DataShape, method) -> dict:
  """The train batch of `method` as shapes (input_pipeline.train_iterator's keys)."""
  image = lambda n: jax.ShapeDtypeStruct((n, shape.shipped_size, shape.shipped_size, 3), np.uint8)
  batch = {}
  if method.uses_labeled:
    n = config.labeled_batch_size
    batch.update(labeled_image=image(n), labeled_label=jax.ShapeDtypeStruct((n,), np.int32))
  if method.uses_unlabeled:
    n = config.unlabeled_batch_size
    batch.update({f'unlabeled_{view}': image(n) for view in ('weak', 'strong', 'mae')},
                 unlabeled_index=jax.ShapeDtypeStruct((n,), np.int32))
  return batch


def _eval_batch(config, shape: DataShape) -> dict:
  n = config.eval_batch_size
  return {'image': jax.ShapeDtypeStruct((n, shape.shipped_size, shape.shipped_size, 3), np.uint8),
          'label': jax.ShapeDtypeStruct((n,), np.int32), 'mask': jax.ShapeDtypeStruct((n,), np.bool_)}


def total_steps(config, shape: DataShape) -> int:
  return config.num_steps or config.num_epochs * (shape.labeled_train // config.labeled_batch_size)


@dataclasses.dataclass
class Program:
  name: str  # 'pretrain' (config.pretrain_steps's stage), 'train' or 'eval'.
  config: object  # The config of its stage.
  jitted: object
  args: tuple  # Shapes.
  # Bytes of the train state that stay on every device while it runs and are not its arguments: eval's (all but the
  # parameters; in a sweep the device's share of the stacked state); 0 for a train step, whose arguments are the state.
  resident_bytes: int
  batch_axis: int = 0  # The axis of the batch's examples: 1 in a sweep's train step ([runs, B, ...]).
  batch_devices: int = 0  # The devices they split over; 0: all of the slice's.


def programs(config, shape: DataShape, mesh: Mesh) -> list[Program]:
  """The programs a run of `config` compiles: each stage's train step, then the eval step. The one place that
  builds them from the library's parts, imported here: the rest of this module also serves main.py's and the tests'
  start-up, before TensorFlow and the library load."""
  from ssmae_jax import evaluation, models, sweep
  if sweep.is_sweep(config):
    return sweep_programs(config, shape, mesh)
  model = models.from_config(config, shape.num_classes, backend='tpu')
  out = [_lone_program(name, stage, model, shape, mesh) for name, stage in _stages(config)]
  state = out[-1].args[0]
  out.append(Program('eval', config, evaluation.make_eval_step(model, config, mesh),
                     (state.params, _eval_batch(config, shape)), _nbytes(state) - _nbytes(state.params)))
  return out


def _lone_program(name: str, stage, model, shape: DataShape, mesh: Mesh) -> 'Program':
  """A stage's train step as one run over all of `mesh`'s devices."""
  from ssmae_jax import experiment, methods
  tx = experiment.make_optimizer(stage, total_steps(stage, shape))
  state = jax.eval_shape(lambda: experiment.init_state(model, tx, stage, shape.pool_size, mesh))
  method = methods.get(stage.method)
  return Program(name, stage, method.make_step(model, tx, stage, mesh), (state, _batch(stage, shape, method)), 0)


def _stages(config) -> list[tuple[str, object]]:
  from ssmae_jax import experiment
  return ([('pretrain', experiment.pretraining_config(config))] if config.pretrain_steps else []) + [
      ('train', config)]


def sweep_programs(config, shape: DataShape, mesh: Mesh) -> list[Program]:
  """`programs` of a sweep over `mesh`'s devices (module docstring): each stage's vmapped train step of its R runs,
  then the lone eval step of one run's parameters, the stacked state resident beside it."""
  from ssmae_jax import configuration, evaluation, experiment, methods, models, sweep, sweep_train
  out = []
  for name, stage in _stages(config):
    if name == 'pretrain':  # As sweep_train.pretrain trains it: once per distinct stage.
      stage = sweep.shared_stages(stage, configuration.declarations())[0]
    if not sweep.is_sweep(stage):  # Nothing the stage reads is swept: it trains as one run.
      out.append(_lone_program(name, stage, models.from_config(stage, shape.num_classes, backend='tpu'), shape, mesh))
      continue
    runs = sweep.runs(stage)
    run, num_runs = runs[0][1], len(runs)  # The template, the first run's config: the others differ in `values`.
    runs_mesh = sweep_train.runs_mesh(num_runs, mesh.devices)
    model = models.from_config(run, shape.num_classes, backend='tpu')
    steps = total_steps(run, shape)
    tx = experiment.make_optimizer(run, steps)
    method = methods.get(run.method)
    state = jax.eval_shape(jax.vmap(lambda seed: experiment.initial_state(model, tx, run, shape.pool_size, seed)),
                           jax.ShapeDtypeStruct((num_runs,), np.uint32))
    batch = {k: jax.ShapeDtypeStruct((num_runs, *x.shape), x.dtype) for k, x in _batch(run, shape, method).items()}
    values = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
              for k, v in sweep.traced_values(stage, configuration.declarations()).items()}
    step = sweep_train.vmapped_step(method, model, run, steps, runs_mesh)
    out.append(Program(name, stage, step, (state, batch, values), 0, batch_axis=1,
                       batch_devices=runs_mesh.shape['data']))
  # One run's parameters, sliced off the stacked state (a copy): all of the stacked state stays, split over 'runs'.
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.params)
  out.append(Program('eval', config, evaluation.make_eval_step(model, run, mesh), (params, _eval_batch(config, shape)),
                     _nbytes(state) // runs_mesh.shape['runs']))
  return out


def _nbytes(tree) -> int:
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


_COLLECTIVE = re.compile(r'\b(all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(')
_MATMUL = re.compile(r'= ([a-z0-9]+)\[[^ ]* (?:convolution|dot)\(')


def compile_program(program: Program) -> dict:
  """One program compiled for the mesh's TPU: XLA's memory (per device), cost (per device) and what its HLO holds."""
  start = time.monotonic()
  compiled = program.jitted.lower(*program.args).compile()
  seconds = time.monotonic() - start
  memory, hlo = compiled.memory_analysis(), compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  matmuls = collections.Counter(_MATMUL.findall(hlo))
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
           + memory.temp_size_in_bytes)
  return dict(
      compile_seconds=seconds,
      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes,
      # XLA's peak, or arguments + outputs (less the donated state they share) + temporaries if that is more.
      peak_bytes=max(getattr(memory, 'peak_memory_in_bytes', 0), total),
      flops=float(cost.get('flops', 0.0)), bytes_accessed=float(cost.get('bytes accessed', 0.0)),
      collectives=dict(sorted(collections.Counter(_COLLECTIVE.findall(hlo)).items())),
      compute_dtype=matmuls.most_common(1)[0][0] if matmuls else None,  # Of most matmuls.
      # Fusion instructions, every branch of a switch counted: roughly the kernels a step launches, whose fixed
      # overheads bound a tiny model's step rather than its FLOPs.
      fusions=len(re.findall(r' fusion\(', hlo)),
      f64=bool(re.search(r'\b(f64|c128)\[', hlo)),
      host_callbacks=host_transfers(hlo))


def host_transfers(hlo: str) -> int:
  """Host callbacks in a compiled program: on a TPU they are sends and receives to the host (on a CPU or GPU, custom
  calls); outfeeds and infeeds also wait for the host."""
  return len(re.findall(r'is_host_transfer=true|\b(?:outfeed|infeed)\(|custom_call_target="[^"]*callback', hlo))


def slice_size(name: str) -> int:
  """Devices of a Cloud TPU slice name: '-N' counts TensorCores on v4 and v5p (one megacore device per 2), chips on
  v5e and v6e."""
  generation, n = name.split('-')
  return int(n) // 2 if generation in ('v4', 'v5p') else int(n)


BATCHES = ('labeled_batch_size', 'unlabeled_batch_size', 'eval_batch_size')  # experiment.make_mesh checks these.


def batch_lines(config, topology: str, n: int) -> list[str]:
  """Why the config's global batches do not split over `n` devices, and what would: empty when they do."""
  generation = topology.split('-')[0]
  fitting = [s for s in SLICES if s.startswith(generation + '-') and
             not any(config[b] % slice_size(s) for b in BATCHES)]
  smaller = f'{fitting[-1]} ({slice_size(fitting[-1])} device{"s" * (slice_size(fitting[-1]) > 1)})' if fitting else ''
  lines = []
  for name in BATCHES:
    size = config[name]
    if not size % n:
      continue
    if name == 'eval_batch_size':  # Evaluation pads and masks its batches: another size changes no number.
      lines.append(f'config.eval_batch_size={size} does not divide by the {n} devices: set it to '
                   f'{math.ceil(size / n) * n}{" or use " + smaller if smaller else ""}.')
      continue
    labeled, unlabeled = config.labeled_batch_size, config.unlabeled_batch_size
    k = math.lcm(n // math.gcd(labeled, n), n // math.gcd(unlabeled, n))
    lines.append(f'config.{name}={size} does not divide by the {n} devices: L={labeled}, U={unlabeled} split over '
                 f'{math.gcd(labeled, unlabeled)} devices at most: use {smaller or "a smaller slice"}, or to use all {n} '
                 f'set labeled_batch_size={k * labeled} and unlabeled_batch_size={k * unlabeled}: a {k}x larger '
                 "global batch than the paper's L=16, U=32, a deviation from it (an epoch has fewer steps; the "
                 "learning rate was tuned for the paper's batch).")
  return lines


def sweep_batch_lines(config, num_runs: int, n: int) -> list[str]:
  """Why a sweep's per-run batches do not split over the devices each run gets (n / gcd(runs, n)), and what would."""
  data = n // math.gcd(num_runs, n)
  return [f'config.{name}={config[name]} does not divide by the {data} devices each run of this sweep of {num_runs} '
          f'runs gets (the runs split over gcd({num_runs}, {n}) = {n // data} of the {n}): make it a multiple of '
          f'{data}, or sweep a multiple of {n // math.gcd(config[name], n)} runs.'
          for name in BATCHES[:2] if config[name] % data]


def compile_config(config, topology: str) -> dict:
  """Compiles the run of `config` (or its sweep's runs) for the slice `topology` names: the report `format_report`
  prints."""
  from ssmae_jax import sweep, sweep_train
  tpu, devices = slice_devices(topology)
  if devices[0].device_kind not in CHIPS:
    raise UserError(f'--topology={topology} is a {devices[0].device_kind}, whose peak figures this does not know: '
                    f'use one of {", ".join(SLICES)}.')
  chip = CHIPS[devices[0].device_kind]
  n = len(devices)
  per_chip = n // len({tuple(d.coords) for d in devices})  # 2 on v4 / v5p without megacore: one per TensorCore.
  shape = data_shape(config)
  num_runs = len(sweep.runs(config)) if sweep.is_sweep(config) else 1
  runs_mesh = dict(sweep_train.runs_mesh(num_runs, devices).shape) if sweep.is_sweep(config) else None
  report = dict(topology=topology, libtpu_topology=tpu.topology, libtpu_options=tpu.options, chip=chip.name,
                devices=n, hosts=len({d.process_index for d in devices}), devices_per_chip=per_chip,
                hbm_bytes_per_chip=chip.hbm_bytes, peak_flops_per_chip=chip.bf16_flops,
                hbm_bandwidth_per_chip=chip.hbm_bandwidth, model_dtype=config.model.dtype, programs={},
                out_of_memory={}, not_compiled=[], runs=num_runs, sweep=sweep.axes(config) or None,
                runs_mesh=runs_mesh)
  report['batch_errors'] = batch_lines(config, topology, n) if topology in SLICES else [
      f'config.{b}={config[b]} does not divide by the {n} devices.' for b in BATCHES if config[b] % n]
  if runs_mesh:  # The train batches split over each run's devices; evaluation, one run at a time, over all of them.
    report['batch_errors'] = sweep_batch_lines(config, num_runs, n) + [
        line for line in report['batch_errors'] if line.startswith('config.eval_batch_size')]
  for program in programs(config, shape, mesh=Mesh(np.asarray(devices), ('data',))):
    if any(x.shape[program.batch_axis] % (program.batch_devices or n) for x in jax.tree.leaves(program.args[1])):
      report['not_compiled'].append(program.name)  # Refused by the run too (batch_errors says what would split).
      continue
    try:
      out = compile_program(program)
    except jax.errors.JaxRuntimeError as e:  # XLA refuses a program that does not fit, saying how much it needs.
      if 'RESOURCE_EXHAUSTED' not in str(e):
        raise
      report['out_of_memory'][program.name] = ' '.join(str(e).split())
      continue
    out['peak_bytes_per_chip'] = (out['peak_bytes'] + program.resident_bytes) * per_chip
    out['flops_per_step'] = out['flops'] * n
    compute, memory = out['flops'] * per_chip / chip.bf16_flops, out['bytes_accessed'] * per_chip / chip.hbm_bandwidth
    out.update(roofline_step_ms=1e3 * max(compute, memory), bound='compute' if compute >= memory else 'memory')
    if program.name != 'eval':
      out['steps'] = total_steps(program.config, shape)
    report['programs'][program.name] = out
  return summarize(report)


def summarize(report: dict) -> dict:
  """The run's figures (the main train step's, the peak over every program) and the checks, added to `report`."""
  compiled = report['programs']
  train = compiled.get('train', {})
  peak = max((p['peak_bytes_per_chip'] for p in compiled.values()), default=0)
  report.update(
      fits=bool(compiled) and not report['out_of_memory'] and peak <= report['hbm_bytes_per_chip'],
      peak_bytes_per_chip=None if report['out_of_memory'] else peak,
      flops_per_step=train.get('flops_per_step'), bytes_per_step=train.get('bytes_accessed', 0) * report['devices'],
      roofline_step_ms=train.get('roofline_step_ms'), compute_dtype=train.get('compute_dtype'),
      # A sweep's step trains every run: what one run's step costs of it.
      roofline_run_step_ms=train['roofline_step_ms'] / report.get('runs', 1) if train else None,
      compile_seconds=sum(p['compile_seconds'] for p in compiled.values()),
      estimated_hours=sum(p['steps'] * p['roofline_step_ms'] for p in compiled.values() if 'steps' in p) / 3.6e6)
  report['checks'] = checks(report)
  return report


def checks(report: dict) -> list[dict]:
  """What would fail on the slice: each {'check', 'ok', 'line'}."""
  compiled = report['programs']
  out = [dict(check='fits', ok=report['fits'], line=_fits_line(report))]
  mesh = report.get('runs_mesh')
  out += [dict(check='batch', ok=False, line=line) for line in report['batch_errors']] or [
      dict(check='batch', ok=True, line=f'batches: every global batch splits over the {report["devices"]} devices'
           if not mesh else f'batches: each run\'s train batches split over its {mesh["data"]} device'
           f'{"s" * (mesh["data"] > 1)}, evaluation\'s over the {report["devices"]}')]
  f64 = [k for k, p in compiled.items() if p['f64']]
  out.append(dict(check='f64', ok=not f64, line=f'f64 in {", ".join(f64)}: TPUs emulate it, slowly (is '
                  'jax_enable_x64 on?)' if f64 else 'no f64 in the compiled programs'))
  calls = {k: p['host_callbacks'] for k, p in compiled.items() if p['host_callbacks']}
  out.append(dict(check='host_callbacks', ok=not calls, line='host callbacks (each stops the step for the host): '
                  + ', '.join(f'{n} in {k}' for k, n in calls.items()) if calls else 'no host callbacks in the steps'))
  dtypes = {k: p['compute_dtype'] for k, p in compiled.items()}
  wrong = {k: d for k, d in dtypes.items() if d != 'bf16'}
  auto = report['model_dtype'] == 'auto'
  out.append(dict(check='compute_dtype', ok=not (auto and wrong), line=(
      f'compute dtype (matmuls): {", ".join(f"{d} in {k}" for k, d in dtypes.items())} with model.dtype='
      f"'{report['model_dtype']}'" + (": 'auto' must compute in bf16 on a TPU" if auto and wrong else ''))))
  return out


def _fits_line(report: dict) -> str:
  compiled, hbm = report['programs'], report['hbm_bytes_per_chip'] / GIB
  advice = 'smaller batches or model, or a chip with more HBM (v5p: 95 GiB)'
  if report['out_of_memory']:
    return f'does not fit ({advice}): ' + '; '.join(f'{k}: {why}' for k, why in report['out_of_memory'].items())
  if not compiled:
    return 'nothing compiled (see the batch lines)'
  where = max(compiled, key=lambda k: compiled[k]['peak_bytes_per_chip'])
  peak = report['peak_bytes_per_chip'] / GIB
  unknown = f'; {", ".join(report["not_compiled"])} not compiled' if report['not_compiled'] else ''
  if report['fits']:
    return f'fits: peak {peak:.2f} GiB of {hbm:.0f} GiB HBM per chip ({where}){unknown}'
  return f'does not fit: peak {peak:.2f} GiB > {hbm:.0f} GiB HBM per chip ({where}): {advice}'


def format_report(report: dict, config_name: str) -> list[str]:
  """The report as lines of text."""
  r = report
  options = ''.join(f', {k}={v}' for k, v in r['libtpu_options'].items())
  lines = [f'{config_name} compiled for {r["topology"]} (libtpu {r["libtpu_topology"]}{options}): {r["devices"]} '
           f'devices on {r["hosts"]} host(s), {r["devices_per_chip"]} per chip.',
           f'Per chip ({r["chip"]}; Cloud TPU documentation): {r["hbm_bytes_per_chip"] / GIB:.0f} GiB HBM at '
           f'{r["hbm_bandwidth_per_chip"] / 1e9:.0f} GB/s, {r["peak_flops_per_chip"] / 1e12:.0f} TFLOP/s bf16 peak.',
           f'{"program":<9}{"args GiB":>9}{"out GiB":>9}{"temp GiB":>9}{"peak GiB":>9}{"GFLOP":>10}{"GB":>8}'
           f'{"ms (roofline)":>15}  {"bound":<8}{"compile s":>9}  collectives']
  for name, p in r['programs'].items():
    per_chip = r['devices_per_chip'] / GIB
    lines.append(f'{name:<9}{p["argument_bytes"] * per_chip:>9.3f}{p["output_bytes"] * per_chip:>9.3f}'
                 f'{p["temp_bytes"] * per_chip:>9.3f}{p["peak_bytes_per_chip"] / GIB:>9.3f}'
                 f'{p["flops_per_step"] / 1e9:>10.1f}{p["bytes_accessed"] * r["devices"] / 1e9:>8.2f}'
                 f'{p["roofline_step_ms"]:>15.3f}  {p["bound"]:<8}{p["compile_seconds"]:>9.1f}  '
                 + (', '.join(f'{n} {k}' for k, n in p['collectives'].items()) or 'none'))
  stages = [f'{p["steps"]:,} {k} steps x {p["roofline_step_ms"]:.3f} ms' for k, p in r['programs'].items()
            if 'steps' in p]
  lines.append('Peak: per chip, the program\'s buffers (eval: with the train state it leaves resident). GFLOP and GB: '
               'per step, all devices. Roofline: per step, max(FLOPs / peak FLOP/s, bytes / HBM bandwidth).')
  if r.get('runs_mesh'):
    swept = ' x '.join(f'{k} {tuple(v)}' for k, v in r['sweep'].items())
    per_run = (f': {r["roofline_run_step_ms"]:.3f} ms of roofline per run-step' if r['roofline_run_step_ms']
               is not None else '')
    lines.append(f'Sweep of {r["runs"]} runs ({swept}) as one program on a {r["runs_mesh"]["runs"]} x '
                 f'{r["runs_mesh"]["data"]} (runs x data) mesh: each train step trains every run{per_run}; eval runs '
                 'one run at a time over every device.')
  if stages:
    runs = f' for all {r["runs"]} runs' if r.get('runs_mesh') else ''
    lines.append(f'Run: {" + ".join(stages)} = {r["estimated_hours"]:.2f} h of train steps{runs} by roofline (XLA\'s '
                 'cost model: an estimate, not a measurement; a real step is slower).')
  lines += [f'  {"ok  " if c["ok"] else "FAIL"} {c["line"]}' for c in r['checks']]
  return lines


def run(config, config_name: str, topology: str, as_json: bool) -> int:
  """`main.py --mode=compile`: prints the report (text or one JSON object); 1 when a check fails, else 0."""
  report = compile_config(config, topology)
  print(json.dumps(report) if as_json else '\n'.join(format_report(report, config_name)), flush=True)
  return 0 if all(c['ok'] for c in report['checks']) else 1
