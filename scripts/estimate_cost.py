"""What a config costs on an accelerator, estimated from XLA's FLOP count (nothing is run, nothing is measured).

  PYTHONPATH=. python scripts/estimate_cost.py configs/cifar10.py configs/cifar10_paper.py [--tflops 400] [--json]

For each config: parameters, the FLOPs of one gate-open train step (gradient of reconstruction on L + U images and
of classification on L + U weak views, a forward pass on the U strong views, the AdamW update; XLA's own count,
compiled for abstract shapes on the CPU), the steps of the run, and the hours that many FLOPs take at a sustained
`--tflops` (default 400: about 40% of an H100's dense bfloat16 peak). The gate-closed step does less, so this is an
upper bound on the FLOPs; but a small model at these batch sizes (48 images a step) is bound by kernel launches
and memory, not FLOPs, so for ViT-T-sized configs the real time is set by per-step latency — measure it with
`python -m benchmarks.train_step --config ...` on the accelerator before trusting the hours printed here.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# XLA warns at length when it constant-folds the fixed masking indices of the 224 px model; nothing is wrong.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import train_step as bench  # noqa: E402
from ssmae_jax import masking, models  # noqa: E402

NUM_CLASSES = 10
STEPS_PER_EPOCH_AT_10_PERCENT = 281  # CIFAR-10, 10% labels, 10% of them held out, L = 16.


def estimate(path: str, tflops: float) -> dict:
  config = bench.load_config(path)
  model = models.from_config(config, NUM_CLASSES)
  size = config.image_size
  ids_keep, _, ids_restore = masking.draw(config, jax.random.key(0), 1, model.num_patches)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)), ids_keep,
                          ids_restore)['params']
  tx = bench.make_optimizer(config)
  flops = bench.method_flops(model, params, tx, jax.eval_shape(tx.init, params), config)
  steps = config.num_steps or config.num_epochs * STEPS_PER_EPOCH_AT_10_PERCENT
  return dict(config=path, params=int(sum(x.size for x in jax.tree.leaves(params))),
              gflops_per_step_gate_open=flops / 1e9, steps=int(steps),
              pflops_total=round(flops * steps / 1e15, 1), assumed_tflops=tflops,
              flop_bound_hours=flops * steps / (tflops * 1e12) / 3600)


def _duration(hours: float) -> str:
  return f'{hours:.2f} h' if hours >= 1 else f'{hours * 60:.1f} min'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('configs', nargs='+')
  parser.add_argument('--tflops', type=float, default=400.0, help='Sustained TFLOP/s assumed for the accelerator.')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  for path in args.configs:
    r = estimate(path, args.tflops)
    if args.json:
      print(json.dumps(r))
    else:
      print(f'{path}: {r["params"]:,} params, {r["gflops_per_step_gate_open"]:,.1f} GFLOP per gate-open step x '
            f'{r["steps"]:,} steps = {r["pflops_total"]:,} PFLOP -> >= {_duration(r["flop_bound_hours"])} at '
            f'{args.tflops:.0f} TFLOP/s (estimate; small models are latency-bound: measure)')


if __name__ == '__main__':
  main()
