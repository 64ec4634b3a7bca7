"""Accuracy at equal wall-clock budget: TensorNet, HIP-NN and HIP-NN-TS trained by the same
engine on the same real data, then tested on the best checkpoint (weight average).

Data:

* the 2,000 bundled MD17 ethanol frames (PBE+vdW-TS; ``MD17EthanolSample``): 950 training /
  50 validation / 1,000 test frames, the rMD17 protocol (split seed 12345);
* COMP6 v1 S66x8 (wB97X/6-31G(d), 66 dimers x 8 separations = 528 conformations, the
  repository's copy in ``tests/data/comp6``): 80 / 10 / 10 % random over conformations
  (seed 1).

Models at their papers' sizes: TensorNet as in its rMD17/ANI-1x configurations (128 channels, 2
layers, 32 radial functions, 4.5 A), HIP-NN and HIP-NN-TS (l <= 2) as in hippynn's ANI-1x
example (width 128, 20 sensitivities, 0.75 / 5.5 / 6.5 A, 2 blocks of 3 on-site layers). One
training recipe for all, hippynn's ANI-1x objective: RMSE + MAE of the energies plus RMSE + MAE
of the forces, in kcal/mol and kcal/mol/A (weight 1 each), plus the hierarchicality (HIP-NN
and HIP-NN-TS only, weight 1); AdamW with lr 1e-3 after a 100-step warm-up,
ReduceLROnPlateau (0.8, patience 10), gradient clipping at 100, weight average with decay
0.99, batch 32, per-element reference energies fitted on the training split (HIP-NN: its
hierarchical initialisation, frozen) and the standard deviation of the remaining energies as
output scale, one CPU thread. Training stops at the wall-clock budget
(``trainer.max_time``, validation included).

    python benchmarks/accuracy.py --budget 120            # seconds per model and dataset
    python benchmarks/accuracy.py --budget 600 --accelerator gpu
"""
import argparse
import datetime
import json
import os
import os.path as osp
import shutil
import sys
import time
from typing import Any, Dict, List

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

import torch  # noqa: E402

from common import cpu_model  # noqa: E402  (benchmarks/ is on sys.path)

from pyg_tensorpot.training import TrainingConfig, train  # noqa: E402
from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL  # noqa: E402

MODELS = {
    'TensorNet': {'name': 'TensorNet', 'hidden_channels': 128, 'num_layers': 2, 'num_rbf': 32,
                  'cutoff': 4.5},
    'HIP-NN': {'name': 'HIPNN', 'hidden_channels': 128, 'num_interactions': 2,
               'num_atom_layers': 3, 'num_sensitivities': 20, 'soft_min': 0.75,
               'soft_max': 5.5, 'cutoff': 6.5, 'max_order': 0},
    'HIP-NN-TS': {'name': 'HIPNN', 'hidden_channels': 128, 'num_interactions': 2,
                  'num_atom_layers': 3, 'num_sensitivities': 20, 'soft_min': 0.75,
                  'soft_max': 5.5, 'cutoff': 6.5, 'max_order': 2},
}


def dataset_sections(work: str) -> Dict[str, Dict[str, Any]]:
    comp6_root = osp.join(work, 'data', 'comp6')
    raw = osp.join(comp6_root, 'raw', 's66x8_wb97x6-31gd.h5')
    if not osp.exists(raw):
        os.makedirs(osp.dirname(raw), exist_ok=True)
        shutil.copy(osp.join(osp.dirname(HERE), 'tests', 'data', 'comp6',
                             's66x8_wb97x6-31gd.h5'), raw)
    return {
        'MD17 ethanol (950/50/1000)': {'dataset': 'MD17EthanolSample'},
        'S66x8 (422/53/53)': {'dataset': 'COMP6', 'root': comp6_root,
                              'args': {'subset': 's66x8'}, 'train_size': 0.8,
                              'val_size': 0.1, 'test_size': None, 'split_seed': 1},
    }


def make_config(model: Dict[str, Any], data: Dict[str, Any], budget: float, out_dir: str,
                accelerator: str, threads: int) -> TrainingConfig:
    return TrainingConfig.from_dict({
        'seed': 1,
        'precision': 32,
        'out_dir': out_dir,
        'model': dict(model),
        'data': dict(data, batch_size=32, inference_batch_size=64,
                     reference_energies='fit', standardize=True),
        # hippynn's objective, for every model: RMSE + MAE of energies and of forces in
        # kcal/mol (the weights convert from eV) plus, for HIP-NN, the hierarchicality
        'loss': {'energy_weight': EV_TO_KCAL_PER_MOL, 'force_weight': EV_TO_KCAL_PER_MOL,
                 'type': 'rmse+mae',
                 'regularization': {'hierarchicality': 1.0} if model['name'] == 'HIPNN' else {}},
        'optim': {'lr': 1e-3, 'warmup_steps': 100, 'lr_factor': 0.8, 'lr_patience': 10,
                  'lr_min': 1e-6, 'gradient_clip': 100.0, 'ema_decay': 0.99},
        'trainer': {'max_epochs': 100000, 'max_time': budget / 60.0,
                    'early_stopping_patience': 0, 'accelerator': accelerator,
                    'progress_bar': False, 'log_every_n_steps': 10,
                    'num_threads': threads},
    })


def machine() -> str:
    cpu = cpu_model()
    threads = torch.get_num_threads()
    text = (f'{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with '
            f'{threads} thread{"" if threads == 1 else "s"}')
    if torch.cuda.is_available():
        text += f', GPU {torch.cuda.get_device_name(0)}'
    return text


def run(budget: float, work: str, accelerator: str, models: List[str],
        datasets: List[str], threads: int) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    results: Dict[str, Any] = {'budget_s': budget, 'machine': machine(),
                               'date': datetime.date.today().isoformat(), 'runs': []}
    try:
        results['load_average_at_start'] = os.getloadavg()
    except OSError:
        pass
    sections = dataset_sections(work)
    for data_name in datasets:
        for model_name in models:
            slug = ''.join(c if c.isalnum() else '_' for c in f'{data_name}_{model_name}')
            out = osp.join(work, 'runs', slug)
            shutil.rmtree(out, ignore_errors=True)
            config = make_config(MODELS[model_name], sections[data_name], budget, out,
                                 accelerator, threads)
            print(f'--- {model_name} on {data_name}: {budget:.0f} s', flush=True)
            start = time.perf_counter()
            result = train(config, verbose=True, report=False)
            elapsed = time.perf_counter() - start
            best = torch.load(result.best_checkpoint, map_location='cpu', weights_only=True)
            metrics = result.test_metrics['test']
            from pyg_tensorpot.training import load_trained_model
            model, _ = load_trained_model(result.model_path)
            results['runs'].append({
                'dataset': data_name, 'model': model_name,
                'parameters': sum(p.numel() for p in model.parameters() if p.requires_grad),
                'epochs': result.epochs, 'steps': result.steps,
                'best_epoch': int(best['epoch']) + 1, 'wall_s': elapsed,
                'test_structures': int(metrics['num_structures']),
                'energy_mae_meV': 1e3 * metrics['energy_mae'],
                'energy_per_atom_mae_meV': 1e3 * metrics['energy_per_atom_mae'],
                'forces_mae_meV_per_A': 1e3 * metrics['forces_mae'],
                'energy_rmse_meV': 1e3 * metrics['energy_rmse'],
                'forces_rmse_meV_per_A': 1e3 * metrics['forces_rmse'],
            })
            print(json.dumps(results['runs'][-1]), flush=True)
    return results


def markdown(results: Dict[str, Any]) -> str:
    kcal = EV_TO_KCAL_PER_MOL / 1e3
    lines = [
        f"Budget: {results['budget_s']:.0f} s of training (validation included) per model and "
        f"dataset. Machine: {results['machine']}"
        + (f"; load average {results['load_average_at_start'][0]:.1f} at the start "
           f"(other developers' jobs)" if 'load_average_at_start' in results else '')
        + f". Date: {results['date']}.",
        '',
        '| data | model | parameters | epochs (steps) | test structures | energy MAE '
        '(meV) | energy MAE (kcal/mol) | force MAE (meV/Å) | force MAE (kcal/mol/Å) |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in results['runs']:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['parameters']:,} | {r['epochs']} "
            f"({r['steps']}) | {r['test_structures']:,} | {r['energy_mae_meV']:.1f} | "
            f"{r['energy_mae_meV'] * kcal:.3f} | {r['forces_mae_meV_per_A']:.1f} | "
            f"{r['forces_mae_meV_per_A'] * kcal:.3f} |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--budget', type=float, default=120.0,
                        help='training seconds per model and dataset (default: 120)')
    parser.add_argument('--out', default=osp.join(osp.dirname(HERE), 'runs', 'accuracy'),
                        help='working folder (runs, data cache, results.json)')
    parser.add_argument('--accelerator', default='cpu', choices=('cpu', 'gpu'))
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads (default: 1, robust on a shared machine)')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--datasets', nargs='+', default=['md17', 's66x8'],
                        choices=('md17', 's66x8'))
    args = parser.parse_args()
    names = {'md17': 'MD17 ethanol (950/50/1000)', 's66x8': 'S66x8 (422/53/53)'}
    results = run(args.budget, args.out, args.accelerator, args.models,
                  [names[d] for d in args.datasets], args.threads)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    print()
    print(markdown(results))


if __name__ == '__main__':
    main()
