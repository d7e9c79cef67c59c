"""FLOPs by XLA's count (ssmae_jax.flops) and the report's equal-compute view built on them."""

import pytest

from ssmae_jax.configs import smoke
from ssmae_jax import flops, models, report


def config_for(method, **overrides):
  c = smoke.get_config()
  c.method = method
  c.update(overrides)
  return c


def test_work_flops_grow_with_each_part_of_the_work():
  config = config_for('ssmae', image_size=16)
  config.model.depth = 1  # Small programs: each count compiles one.
  model = models.from_config(config, flops.NUM_CLASSES)
  count = lambda **kw: flops.work_flops(model, config, **dict(dict(rec=0, cls=0, forward=0), **kw))
  update_only, classify, forward, reconstruct = count(), count(cls=8), count(forward=8), count(rec=8)
  assert 0 < update_only < forward < classify  # A backward pass costs more than the forward pass alone.
  assert update_only < reconstruct
  # The parts add up: one program doing all three costs what they cost apart (the update counted once).
  assert count(rec=8, cls=8, forward=8) == pytest.approx(classify + forward + reconstruct - 2 * update_only, rel=0.05)


def test_legacy_step_kinds_follow_the_method():
  l, u = 16, 32
  assert flops.legacy_step_kinds(config_for('supervised')) == {'step': dict(rec=0, cls=l, forward=0)}
  assert flops.legacy_step_kinds(config_for('mae_pretrain')) == {'step': dict(rec=u, cls=0, forward=0)}
  kinds = flops.legacy_step_kinds(config_for('ssmae'))
  assert kinds == {'labeled_only': dict(rec=l + u, cls=l, forward=0),
                   'with_memory': dict(rec=l + u, cls=l + u, forward=0),
                   'gate_open': dict(rec=l + u, cls=l + u, forward=u)}
  assert flops.legacy_step_kinds(config_for('ssmae', rec_weight=0.0))['gate_open']['rec'] == 0
  narrow = flops.legacy_step_kinds(config_for('ssmae', unlabeled_cls_rows=4))
  assert narrow == dict(kinds, with_memory_rows=dict(rec=l + u, cls=l + 4, forward=0),
                        gate_open_rows=dict(rec=l + u, cls=l + 4, forward=u))
  # config.teacher_ema: with the gate open the teacher's forward passes of both views replace the one of the view
  # not trained. A method without pseudo-labels keeps no teacher.
  taught = flops.legacy_step_kinds(config_for('ssmae', teacher_ema=0.99, unlabeled_cls_rows=4))
  assert taught == dict(narrow, gate_open=dict(rec=l + u, cls=l + u, forward=2 * u),
                        gate_open_rows=dict(rec=l + u, cls=l + 4, forward=2 * u))
  assert flops.legacy_step_kinds(config_for('supervised', teacher_ema=0.99)) == flops.legacy_step_kinds(config_for('supervised'))


def test_runs_of_one_model_share_each_compiled_count(monkeypatch):
  """The report counts dozens of runs of a few models: each step kind's program compiles once per model, not per run."""
  compiled = []
  monkeypatch.setattr(flops, 'work_flops', lambda model, config, **work: compiled.append(work) or 1.0)
  flops._work_flops.cache_clear()
  try:
    run = lambda **overrides: config_for('ssmae', **overrides).to_json()
    flops._kind_flops(run(seed=0, split_seed=0, num_steps=100), 'gate_open')
    flops._kind_flops(run(seed=1, split_seed=1, num_steps=200, tau=0.7, pretrain_steps=10), 'gate_open')
    assert len(compiled) == 1
    flops._kind_flops(run(seed=0), 'labeled_only')  # Another kind: other work.
    wider = config_for('ssmae')
    wider.model.width *= 2
    flops._kind_flops(wider.to_json(), 'gate_open')  # Another model.
    flops._kind_flops(run(mask_ratio=0.5), 'gate_open')  # Another reconstruction pass.
    assert len(compiled) == 4
  finally:
    flops._work_flops.cache_clear()


def _record(step, gate_open=False, pseudo_labels=0, test=None, wall=0.0):
  return dict(step=step, gate_open=gate_open, pseudo_labels_total=pseudo_labels, test_accuracy=test, wall_seconds=wall)


def test_run_flops_count_each_epoch_with_the_branch_its_gate_took(monkeypatch):
  cost = {'labeled_only': 1.0, 'with_memory': 10.0, 'gate_open': 100.0}
  monkeypatch.setattr(flops, '_kind_flops', lambda config_json, kind: cost[kind])
  config = config_for('ssmae').to_dict()
  history = [_record(0), _record(5, gate_open=True), _record(8, pseudo_labels=3), _record(10, pseudo_labels=3)]
  results = dict(config=config, steps=10, history=history)
  # 5 closed steps with an empty memory, 3 open ones, 2 closed ones with labels remembered; nothing after step 10.
  assert flops.run_flops(results) == [0, 5, 5 + 300, 5 + 300 + 20, 325]
  config['sticky'] = False  # Without stickiness a closed gate trains on the labeled batch only.
  assert flops.run_flops(dict(results, config=config))[-1] == 5 + 300 + 2


def test_run_flops_count_the_gathered_pass_by_its_recorded_share(monkeypatch):
  """config.unlabeled_cls_rows: each epoch's steps cost the full and the gathered kind in its recorded proportion."""
  cost = {'labeled_only': 1.0, 'with_memory': 10.0, 'gate_open': 100.0, 'with_memory_rows': 4.0,
          'gate_open_rows': 40.0}
  monkeypatch.setattr(flops, '_kind_flops', lambda config_json, kind: cost[kind])
  config = config_for('ssmae', unlabeled_cls_rows=4).to_dict()
  history = [_record(0), _record(5, gate_open=True), _record(9, pseudo_labels=3), _record(11, pseudo_labels=3)]
  history[2]['train_full_cls_pass'] = 0.25  # 1 of the 4 gate-open steps took the full pass.
  history[3]['train_full_cls_pass'] = 0.5
  results = dict(config=config, steps=11, history=history)
  assert flops.run_flops(results) == [0, 5, 5 + 100 + 3 * 40, 5 + 220 + 10 + 4, 239]
  del history[2]['train_full_cls_pass']  # A record without the share: the full pass, an upper bound.
  assert flops.run_flops(results)[2] == 5 + 400


def test_run_flops_read_what_a_run_recorded_and_derive_only_for_older_files(monkeypatch):
  monkeypatch.setattr(flops, '_kind_flops', lambda config_json, kind: 1.0)
  history = [dict(_record(0), flops=0.0), dict(_record(5, gate_open=True), flops=50.0)]
  results = dict(config=config_for('ssmae').to_dict(), steps=10, history=history, flops=120.0,
                 pretraining=dict(steps=3, wall_seconds=1.0, flops=7.0))
  assert flops.run_flops(results) == [7.0, 57.0, 127.0]  # The stage's recorded FLOPs first.
  history[1]['flops'] = None  # Resumed from a checkpoint that did not count its steps: derived, 1 per step.
  assert flops.run_flops(results) == [7.0, 12.0, 17.0]


def _run(method, steps, wall, test, history):
  results = dict(dataset='cifar10', method=method, label_fraction=0.1, seed=0, steps=steps, wall_seconds=wall,
                 test_accuracy=test, history=history, config=config_for(method).to_dict())
  return dict(dataset='cifar10', method=method, label_fraction=0.1, seed=0, test_accuracy=100 * test, config={},
              results=results)


def test_equal_compute_reads_a_longer_run_at_the_ssmae_budget(monkeypatch):
  ssmae = _run('ssmae', 100, 100.0, 0.55, [_record(0, wall=1), _record(100, test=0.55, wall=100)])
  longer = _run('supervised', 400, 300.0, 0.58, [
      _record(0, test=0.1, wall=1), _record(100, test=0.45, wall=60), _record(200, test=None, wall=95),
      _record(300, test=0.52, wall=150), _record(400, test=0.58, wall=300)])
  shorter = _run('supervised', 50, 40.0, 0.40, [_record(0, wall=1), _record(50, test=0.40, wall=40)])
  shorter['config'] = {'num_steps': 50}  # Another variant of the supervised row.
  longer['config'] = {'num_steps': 400}
  text = report.equal_compute([ssmae, longer, shorter], count_flops=False)
  rows = {line.split(' | ')[3]: line for line in text.splitlines()[2:]}
  # The last test evaluation within SSMAE's 100 s (the one at 95 s had none); a run that ended sooner: its final.
  assert rows['num_steps=400'].endswith('| 400 | 5.0 | 58.00 | 45.00 | 1 |')
  assert rows['num_steps=50'].endswith('| 50 | 0.7 | 40.00 | 40.00 | 1 |')
  assert report.at_budget(longer['results'], [1, 60, 95, 150, 300, 300], 0.5) is None  # Nothing tested that soon.

  # FLOPs in proportion to steps: SSMAE's 100 steps are the budget, so the longer run again counts at step 100.
  monkeypatch.setattr(flops, 'run_flops',
                      lambda results: [r['step'] * 1e15 for r in results['history']] + [results['steps'] * 1e15])
  text = report.equal_compute([ssmae, longer], count_flops=True)
  assert "at SSMAE's FLOPs" in text.splitlines()[0]
  supervised_row = next(line for line in text.splitlines() if '| supervised |' in line)
  assert supervised_row.endswith('| 400 | 5.0 | 400.000 | 58.00 | 45.00 | 45.00 | 1 |')


def test_report_command_prints_the_equal_compute_view(tmp_path, capsys):
  import json
  path = tmp_path / 'results.json'
  run = _run('ssmae', 10, 60.0, 0.5, [_record(0, wall=1), _record(10, test=0.5, wall=60)])
  path.write_text(json.dumps(run['results']))
  assert report.main([str(path), '--equal_compute', '--no_flops']) == 0
  out = capsys.readouterr().out
  assert '| cifar10 | ssmae | 10% | 10 | 1.0 | 50.00 | 50.00 | 1 |' in out
  assert report.main([str(path), '--bogus']) == 2


def test_equal_compute_reads_each_run_at_the_budget_of_its_own_split():
  ssmae = [_run('ssmae', 100, wall, 0.5, [_record(0, wall=1), _record(100, test=0.5, wall=wall)]) for wall in (50, 200)]
  ssmae[1]['seed'] = ssmae[1]['results']['seed'] = 1
  supervised = _run('supervised', 400, 300.0, 0.58, [
      _record(0, test=0.1, wall=1), _record(100, test=0.45, wall=60), _record(400, test=0.58, wall=300)])
  supervised['seed'] = supervised['results']['seed'] = 1
  row = next(line for line in report.equal_compute(ssmae + [supervised], count_flops=False).splitlines()
             if '| supervised |' in line)
  # Split 1's SSMAE run took 200 s: the evaluation at 60 s counts, not the mean budget's (125 s: the same here) —
  # nor split 0's 50 s, before which nothing but the start was tested.
  assert row.endswith('| 58.00 | 45.00 | 1 |')
  ssmae[1]['results']['wall_seconds'] = 40.0  # Now split 1's budget ends before the evaluation at 60 s.
  row = next(line for line in report.equal_compute(ssmae + [supervised], count_flops=False).splitlines()
             if '| supervised |' in line)
  assert row.endswith('| 58.00 | 10.00 | 1 |')


def test_a_pretraining_stage_counts_before_the_run(monkeypatch):
  cost = {'step': 2.0, 'labeled_only': 1.0}
  seen = []
  monkeypatch.setattr(flops, '_kind_flops', lambda config_json, kind: seen.append(config_json) or cost[kind])
  results = dict(config=config_for('ssmae', pretrain_steps=30).to_dict(), steps=10,
                 history=[_record(0), _record(10)], pretraining=dict(steps=30, wall_seconds=50.0))
  assert flops.run_flops(results) == [60, 70, 70]  # 30 MAE steps at 2, then 10 labeled-only steps at 1.
  assert '"method": "mae_pretrain"' in seen[0]

  # The equal-compute view: its wall time and FLOPs begin after the stage's 50 s and 60 FLOPs.
  ssmae = _run('ssmae', 100, 200.0, 0.55, [_record(0, wall=1), _record(100, test=0.55, wall=200)])
  staged = _run('supervised', 10, 100.0, 0.6, [_record(0, test=0.1, wall=1), _record(5, test=0.5, wall=60),
                                               _record(10, test=0.6, wall=100)])
  staged['results']['pretraining'] = dict(steps=30, wall_seconds=120.0)
  row = next(line for line in report.equal_compute([ssmae, staged], count_flops=False).splitlines()
             if '| supervised |' in line)
  # 220 s in all (3.7 min); within SSMAE's 200 s, the last test is the one at 120 + 60 s.
  assert row.endswith('| 10 | 3.7 | 60.00 | 50.00 | 1 |')


def test_the_run_a_run_started_from_counts_before_it(monkeypatch):
  """config.init_from: fine-tuning's compute begins with its MAE pre-training run's (results.json's 'initialization',
  itself perhaps started from a stage or a run)."""
  monkeypatch.setattr(flops, '_kind_flops', lambda config_json, kind: 3.0 if '"mae_pretrain"' in config_json else 1.0)
  mae = dict(config=config_for('mae_pretrain').to_dict(), steps=30, wall_seconds=50.0,
             history=[_record(0), _record(30)])
  finetune = dict(config=config_for('finetune', init_from='/runs/mae').to_dict(), steps=10, wall_seconds=20.0,
                  history=[_record(0), _record(10)], initialization=mae)
  assert flops.run_flops(finetune) == [90, 100, 100]  # 30 MAE steps at 3, then 10 fine-tuning steps at 1.
  assert flops.run_flops(dict(finetune, initialization=dict(mae, initialization=mae)))[-1] == 190

  ssmae = _run('ssmae', 100, 200.0, 0.55, [_record(0, wall=1), _record(100, test=0.55, wall=200)])
  tuned = _run('finetune', 10, 100.0, 0.6, [_record(0, test=0.1, wall=1), _record(5, test=0.5, wall=60),
                                            _record(10, test=0.6, wall=100)])
  tuned['results']['initialization'] = dict(mae, wall_seconds=100.0, pretraining=dict(steps=5, wall_seconds=20.0))
  row = next(line for line in report.equal_compute([ssmae, tuned], count_flops=False).splitlines()
             if '| finetune |' in line)
  # 220 s in all (3.7 min): the run it started from (100 s after its own 20 s stage), then its own 100 s; within
  # SSMAE's 200 s, the last test is the one at 120 + 60 s.
  assert row.endswith('| 10 | 3.7 | 60.00 | 50.00 | 1 |')


def test_of_several_ssmae_rows_the_one_with_the_most_runs_sets_the_budget():
  def ssmae(seed, wall, steps):
    run = _run('ssmae', steps, wall, 0.5, [_record(0, wall=1), _record(steps, test=0.5, wall=wall)])
    run['seed'] = run['results']['seed'] = seed
    run['config'] = {'num_steps': steps}
    return run
  recipe = [ssmae(0, 100.0, 40), ssmae(1, 100.0, 40)]  # Two splits: the recipe.
  single = ssmae(0, 30.0, 10)  # One split, first in row order, far cheaper.
  supervised = _run('supervised', 400, 300.0, 0.58, [
      _record(0, test=0.1, wall=1), _record(100, test=0.45, wall=60), _record(400, test=0.58, wall=300)])
  lines = report.equal_compute([single, *recipe, supervised], count_flops=False).splitlines()
  row = next(line for line in lines if '| supervised |' in line)
  assert row.endswith('| 58.00 | 45.00 | 1 |')  # Read at the recipe's 100 s (the test at 60 s), not at 30 s.
  assert lines[-1] == "cifar10, 10% labels: SSMAE's budget is the row num_steps=40."


def test_the_budget_option_picks_the_ssmae_row_that_sets_the_budget(tmp_path, capsys):
  import json
  def ssmae(seed, wall, steps):
    run = _run('ssmae', steps, wall, 0.5, [_record(0, wall=1), _record(steps, test=0.5, wall=wall)])
    run['seed'] = run['results']['seed'] = seed
    run['config'] = {'num_steps': steps}
    return run
  old, new = [ssmae(0, 30.0, 10), ssmae(1, 30.0, 10)], [ssmae(0, 100.0, 40), ssmae(1, 100.0, 40)]  # A tie: 2 runs.
  supervised = _run('supervised', 400, 300.0, 0.58, [
      _record(0, test=0.1, wall=1), _record(100, test=0.45, wall=60), _record(400, test=0.58, wall=300)])
  lines = report.equal_compute([*old, *new, supervised], count_flops=False).splitlines()
  assert next(line for line in lines if '| supervised |' in line).endswith('| 58.00 | 10.00 | 1 |')  # At 30 s.
  lines = report.equal_compute([*old, *new, supervised], count_flops=False, budget_variant='num_steps=40').splitlines()
  assert next(line for line in lines if '| supervised |' in line).endswith('| 58.00 | 45.00 | 1 |')  # At 100 s.
  assert lines[-1] == "cifar10, 10% labels: SSMAE's budget is the row num_steps=40."

  # The command: a name that matches no SSMAE row, or two, is one error line.
  for i, run in enumerate([*old, new[0]]):
    results = dict(run['results'], config=dict(num_steps=run['results']['steps']))
    (tmp_path / f'{i}.json').write_text(json.dumps(results))
  paths = [str(p) for p in sorted(tmp_path.glob('*.json'))]
  assert report.main([*paths, '--equal_compute', '--no_flops', '--budget=num_steps=40']) == 0
  assert "budget is the row num_steps=40." in capsys.readouterr().out
  assert report.main([*paths, '--equal_compute', '--no_flops', '--budget=num_steps=99']) == 2
  out, err = capsys.readouterr()
  assert out == '' and err.strip().startswith('error: --budget=num_steps=99 names no SSMAE row')  # Before a table.
  assert report.main([*paths, '--equal_compute', '--no_flops', '--budget=num_steps']) == 2
  assert 'names 2 SSMAE rows' in capsys.readouterr().err
