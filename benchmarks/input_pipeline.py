"""Speed of the training input (the trainer's train_iterator) against the rate the train step consumes it.

  TFDS_DATA_DIR=../shared/tfds PYTHONPATH=. .venv/bin/python -m benchmarks.input_pipeline [--json]
      [--config configs/bench_vit_t4.py] [--steps N] [--image_size S] [--step_ms MS] [--no-hugepage-malloc]

The stream is exactly the trainer's: `input_pipeline.train_iterator` on the config's dataset, with the streams its
method needs (SSMAE: L labeled images + U unlabeled examples with weak, strong and MAE views). Decoding the dataset
into memory is timed on its own (`load_s`), then `--warmup` batches are drawn untimed (the first one builds the
tf.data graph), then `--steps` batches are drawn back to back as numpy: `steps_per_s`, `examples_per_s` (labeled +
unlabeled examples) and `images_per_s` (every view counted). `host_cpu_s_per_step`: CPU seconds the whole process
(tf.data's threads included) spends per batch over those steps, the cost that does not shrink with more cores;
`steps_per_s_per_core` = its inverse, the rate one host core sustains.

The consumer: `--step_ms` if given (e.g. a GPU step time measured elsewhere), else the compiled train step of the
same config (the method's `make_step` as the trainer builds it, with benchmarks/train_step.py's constant-rate AdamW)
timed on a few of those very batches, from a fresh state: gate closed, memory empty, the fastest step of a run and
so the most demanding one for the input.
`headroom` = input steps/s / consumed steps/s: below 1 the step waits for data. Both rates are measured alone; in
a training run on a CPU machine the two share its cores (see benchmarks/epoch.py for the combined figure), on an
accelerator host the input has the CPU to itself.
"""

import os

import benchmarks

if __name__ == '__main__':
  benchmarks.reexec_with_hugepage_malloc('benchmarks.input_pipeline')

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import train_step as step_bench  # noqa: E402
from ssmae_jax import configuration, input_pipeline, methods, models, sharding, train_state  # noqa: E402


def batch_counts(batch: dict) -> tuple[int, int]:
  """(examples, images) in a batch: labeled + unlabeled examples; every image array's rows."""
  examples = sum(len(batch[k]) for k in ('labeled_label', 'unlabeled_index') if k in batch)
  images = sum(len(v) for v in batch.values() if v.ndim == 4)
  return examples, images


def time_input(splits, config, num_steps: int, warmup: int) -> tuple[dict, list[dict]]:
  """Draws warmup + num_steps batches of the trainer's stream; returns (rates, the first few batches)."""
  start = time.perf_counter()
  method = methods.get(config.method)
  iterator = input_pipeline.train_iterator(splits, config, 0, need_labeled=method.uses_labeled,
                                           need_unlabeled=method.uses_unlabeled)
  kept = [next(iterator)]
  first_batch_s = time.perf_counter() - start
  for _ in range(warmup - 1):
    kept.append(next(iterator))
  examples, images = batch_counts(kept[0])
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(num_steps):
    next(iterator)
  elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
  # Stop tf.data's background threads before anything else is timed on the same cores.
  del iterator
  gc.collect()
  steps_per_s = num_steps / elapsed
  return dict(steps_per_s=steps_per_s, examples_per_s=examples * steps_per_s, images_per_s=images * steps_per_s,
              examples_per_step=examples, images_per_step=images, first_batch_s=first_batch_s,
              host_cpu_s_per_step=cpu_s / num_steps), kept


def time_train_step(config, batches: list[dict], num_classes: int, pool_size: int, warmup: int = 2) -> dict:
  """Median ms of the config's compiled train step on `batches` (after `warmup` of them), from a fresh state."""
  mesh = sharding.make_mesh()
  for name in ('labeled_batch_size', 'unlabeled_batch_size'):
    sharding.check_divisible(f'config.{name}', config[name], mesh)
  model = models.from_config(config, num_classes)
  tx = step_bench.make_optimizer(config)
  state = train_state.create(step_bench.init_params(model, config), tx, pool_size,
                             teacher=methods.get(config.method).has_teacher(config))
  state = jax.device_put(state, sharding.replicated(mesh))
  device_batches = [sharding.to_global(b, mesh) for b in batches]
  start = time.perf_counter()
  compiled = methods.get(config.method).make_step(model, tx, config, mesh).lower(state, device_batches[0]).compile()
  compile_s = time.perf_counter() - start
  _, times, _, _ = step_bench.time_steps(compiled, state, device_batches, warmup)
  return dict(step_ms=1e3 * statistics.median(times), step_compile_s=compile_s, step_timed_steps=len(times))


def run(config, num_steps: int, warmup: int = 5, step_ms: float | None = None, step_steps: int = 5) -> dict:
  config = config.copy_and_resolve_references()
  configuration.validate(config)
  start = time.perf_counter()
  splits = input_pipeline.load_splits(config)
  load_s = time.perf_counter() - start
  rates, batches = time_input(splits, config, num_steps, max(warmup, 1))
  if step_ms is None:
    step_warmup = 2
    # The step sees the same batches again if the warm-up kept too few: the step's work does not depend on them.
    batches = (batches * (1 + (step_warmup + step_steps) // len(batches)))[:step_warmup + step_steps]
    step = time_train_step(config, batches, splits.num_classes, len(splits.unlabeled_idx), step_warmup)
    step_ms, step_source = step['step_ms'], 'measured'
  else:
    step, step_source = {}, 'given'
  consumes = 1e3 / step_ms
  return dict(
      steps_per_s=round(rates['steps_per_s'], 3),
      examples_per_s=round(rates['examples_per_s'], 1),
      images_per_s=round(rates['images_per_s'], 1),
      ms_per_batch=round(1e3 / rates['steps_per_s'], 2),
      host_cpu_s_per_step=round(rates['host_cpu_s_per_step'], 5),
      steps_per_s_per_core=round(1 / rates['host_cpu_s_per_step'], 2),
      step_consumes_steps_per_s=round(consumes, 3),
      headroom=round(rates['steps_per_s'] / consumes, 3),
      step_ms=round(step_ms, 2),
      step_ms_source=step_source,
      step_compile_s=round(step['step_compile_s'], 2) if step else None,
      load_s=round(load_s, 2),
      first_batch_s=round(rates['first_batch_s'], 2),
      examples_per_step=rates['examples_per_step'],
      images_per_step=rates['images_per_step'],
      steps=num_steps,
      warmup_steps=warmup,
      image_size=config.image_size,
      resize_on_device=config.resize_on_device,
      method=config.method,
      dataset=config.dataset,
      **benchmarks.machine(),
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/bench_vit_t4.py')
  parser.add_argument('--steps', type=int, default=50, help='batches timed')
  parser.add_argument('--warmup', type=int, default=5, help='batches drawn before timing (at least 1)')
  parser.add_argument('--image_size', type=int, default=None, help='override config.image_size')
  parser.add_argument('--step_ms', type=float, default=None,
                      help='ms per train step to compare with; default: time the config\'s step here')
  parser.add_argument('--step_steps', type=int, default=5, help='train steps timed when --step_ms is not given')
  parser.add_argument('--json', action='store_true', help='print one JSON object instead of a human line')
  parser.add_argument('--no-hugepage-malloc', action='store_true',
                      help='do not restart with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (see benchmarks/__init__.py)')
  args = parser.parse_args()
  # tf.data only runs on the host; the accelerators belong to JAX (as in main.py).
  tf.config.set_visible_devices([], 'GPU')
  config = step_bench.load_config(args.config)
  if args.image_size:
    config.image_size = args.image_size
  result = run(config, args.steps, args.warmup, args.step_ms, args.step_steps)
  if args.json:
    print(json.dumps(result))
  else:
    print(f"input pipeline ({result['method']}, {result['dataset']} at {result['image_size']} px): "
          f"{result['steps_per_s']:.2f} steps/s = {result['examples_per_s']:.0f} examples/s "
          f"({result['images_per_s']:.0f} images/s), {result['host_cpu_s_per_step']:.3f} host CPU-s per step; "
          f"the train step consumes {result['step_consumes_steps_per_s']:.2f}"
          f" steps/s ({result['step_ms']:.0f} ms, {result['step_ms_source']}): headroom {result['headroom']:.2f}x; "
          f"load {result['load_s']:.1f} s, first batch {result['first_batch_s']:.1f} s, {result['cpu_count']} CPUs, "
          f"load average {result['load_average'][0]:.2f}")


if __name__ == '__main__':
  main()
