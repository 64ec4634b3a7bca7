"""Fine-tuning a pretrained potential on a little data of another level of theory, against
training the same architecture from scratch on the same data with the same budget.

Data: 100 training frames, 50 validation frames and 1,000 test frames (random, split seed
12345) of the bundled MD17 ethanol trajectory (``MD17EthanolSample``: DFT PBE+vdW-TS, eV and
eV/A). Pretrained model: ``tensornet-ani1x`` (52,001 parameters, distilled from the ANI-1x
ensemble: wB97X/6-31G(d), another functional and basis), so its per-element reference
energies are refitted on the 100 training frames (``data.reference_energies=refit``, the
network kept). The from-scratch run builds the same architecture (32 channels, 2 layers,
32 radial functions, 5 A) with fitted reference energies and standardisation. Both runs use
one recipe: MSE of energies + 100 x MSE of forces, AdamW (lr 5e-4, 50 warm-up steps),
ReduceLROnPlateau, weight average 0.99, batch 10, one CPU thread, stopped by the wall-clock
budget (``trainer.max_time``, validation included). Also reported: the pretrained model with
refitted reference energies before any training step (zero-shot).

    python benchmarks/finetune.py --budget 90     # seconds per run

Writes ``benchmarks/results/finetune.json`` and prints a markdown table.
"""
import argparse
import datetime
import json
import os
import os.path as osp
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

import torch  # noqa: E402

from common import cpu_model  # noqa: E402  (benchmarks/ is on sys.path)

from pyg_tensorpot.training import evaluate_model, load_config, train  # noqa: E402
from pyg_tensorpot.training.builders import resolve_init  # noqa: E402
from pyg_tensorpot.training.data import fit_training_statistics, prepare_data  # noqa: E402

PRETRAINED = 'tensornet-ani1x'
RECIPE = ['data.dataset=MD17EthanolSample', 'data.train_size=100', 'data.val_size=50',
          'data.test_size=1000', 'data.split_seed=12345', 'data.batch_size=10',
          'data.inference_batch_size=100', 'loss.energy_weight=1', 'loss.force_weight=100',
          'optim.lr=5e-4', 'optim.warmup_steps=50', 'optim.lr_patience=10',
          'optim.ema_decay=0.99', 'trainer.max_epochs=100000',
          'trainer.early_stopping_patience=0', 'trainer.progress_bar=false',
          'trainer.num_threads=1', 'trainer.accelerator=cpu']


def machine() -> str:
    return f'{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}'


def zero_shot(overrides: List[str]) -> Dict[str, float]:
    """Test errors of the pretrained model with refitted reference energies, untrained."""
    config = load_config(None, overrides)
    _, model = resolve_init(config.model)
    prepared = prepare_data(config.data, config.seed)
    fit_training_statistics(model, prepared.train, config.data, prepared.dataset,
                            pretrained=True)
    metrics, _ = evaluate_model(model.eval(), prepared.test['test'], 100, torch.device('cpu'))
    return metrics


def run(budget: float, work: str) -> Dict[str, Any]:
    torch.set_num_threads(1)
    architecture, _ = resolve_init({'init': PRETRAINED})
    scratch_model = [f'model.{k}={json.dumps(v)}' for k, v in architecture.items()
                     if k not in ('init', 'freeze')]
    results: Dict[str, Any] = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'machine': machine(), 'budget_s': budget, 'load_average_at_start': os.getloadavg(),
        'recipe': RECIPE, 'runs': []}
    start = time.perf_counter()
    metrics = zero_shot(RECIPE + [f'model.init={PRETRAINED}',
                                  f'out_dir={osp.join(work, "zero-shot")}'])
    results['runs'].append({'run': f'{PRETRAINED}, refitted reference energies, no training',
                            'epochs': 0, 'steps': 0, 'seconds': time.perf_counter() - start,
                            'test': metrics})
    print(json.dumps(results['runs'][-1]), flush=True)
    for label, extra in [
        (f'fine-tuned from {PRETRAINED} (reference energies refitted)',
         [f'model.init={PRETRAINED}', 'data.reference_energies=refit']),
        ('same architecture from scratch', scratch_model),
    ]:
        slug = 'fine-tuned' if 'fine' in label else 'scratch'
        config = load_config(None, RECIPE + extra + [
            f'trainer.max_time={budget / 60.0}', 'seed=1', f'out_dir={osp.join(work, slug)}'])
        start = time.perf_counter()
        result = train(config, verbose=False)
        results['runs'].append({'run': label, 'epochs': result.epochs, 'steps': result.steps,
                                'seconds': time.perf_counter() - start,
                                'test': result.test_metrics['test']})
        print(json.dumps(results['runs'][-1]), flush=True)
    results['load_average_at_end'] = os.getloadavg()
    return results


def markdown(results: Dict[str, Any]) -> str:
    load0, load1 = results['load_average_at_start'], results['load_average_at_end']
    lines = [
        '## Fine-tuning against training from scratch (`benchmarks/finetune.py`)',
        '',
        f"{results['date']}; {results['machine']}, 1 thread; load average (1, 5, 15 min) "
        f"{load0[0]:.1f}, {load0[1]:.1f}, {load0[2]:.1f} at the start, {load1[0]:.1f}, "
        f"{load1[1]:.1f}, {load1[2]:.1f} at the end (other developers' jobs running). "
        f"MD17 ethanol (PBE+vdW-TS), 100 training / 50 validation / 1,000 test frames "
        f"(split seed 12345); {results['budget_s']:.0f} s of training per run (validation "
        f"included); TensorNet 32 channels, 2 layers, 5 A (52,001 parameters) in every row.",
        '',
        '| run | epochs | steps | energy MAE (meV) | energy RMSE (meV) | force MAE (meV/A) '
        '| force RMSE (meV/A) |',
        '|---|---|---|---|---|---|---|',
    ]
    for r in results['runs']:
        t = r['test']
        lines.append(f"| {r['run']} | {r['epochs']} | {r['steps']} | "
                     f"{1000 * t['energy_mae']:.1f} | {1000 * t['energy_rmse']:.1f} | "
                     f"{1000 * t['forces_mae']:.1f} | {1000 * t['forces_rmse']:.1f} |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--budget', type=float, default=90.0,
                        help='seconds of training per run (default: 90)')
    parser.add_argument('--out', default=None, help='working folder (default: a temporary '
                        'one)')
    parser.add_argument('--record', default=osp.join(HERE, 'results', 'finetune.json'),
                        help='JSON record (default: benchmarks/results/finetune.json)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.budget, args.out or tmp)
    os.makedirs(osp.dirname(osp.abspath(args.record)), exist_ok=True)
    partial = f'{args.record}.tmp'
    with open(partial, 'w') as f:
        json.dump(results, f, indent=1)
    os.replace(partial, args.record)
    print(markdown(results))


if __name__ == '__main__':
    main()
