"""Learning curves at equal budget: test error against the number of training structures for
TensorNet, HIP-NN and HIP-NN-TS, trained by the same engine with the same recipe and the same
wall-clock budget per run (the models, recipe and budget of ``benchmarks/accuracy.py``).

Data and fixed test sets (the test set does not change with the training size):

* the 2,000 bundled MD17 ethanol frames (``MD17EthanolSample``, PBE+vdW-TS): training sets
  are the first N of the rMD17 protocol's 950 training frames (split seed 12345), validated on
  its 50 and tested on its 1,000 test frames;
* COMP6 v1 S66x8 (wB97X/6-31G(d), the ANI-1x level; 528 conformations): a random permutation
  (seed 1) gives 53 test and 53 validation conformations, and training sets of the first N of
  the remaining 422.

The repository's QM9, ANI-1x and SPICE samples hold 10, 8 and 55 structures: too few for a
training set and a test set, so they are not used here (their loaders are tested on them).

    python benchmarks/learning_curve.py --budget 40
    python benchmarks/learning_curve.py --datasets md17 --sizes 50 200 800 --budget 120
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(HERE))

import torch  # noqa: E402

from pyg_tensorpot.training import load_trained_model, train  # noqa: E402


def _accuracy_module():
    spec = importlib.util.spec_from_file_location('bench_accuracy',
                                                  osp.join(HERE, 'accuracy.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ACCURACY = _accuracy_module()
DEFAULT_SIZES = {'md17': [50, 200, 800], 's66x8': [50, 150, 422]}


def _save_split(path: str, train_idx, val_idx, test_idx) -> str:
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.npz', dir=folder)
    os.close(fd)
    np.savez(tmp, idx_train=np.asarray(train_idx), idx_val=np.asarray(val_idx),
             idx_test=np.asarray(test_idx))
    os.replace(tmp, path)
    return path


def base_splits(work: str) -> Dict[str, Dict[str, Any]]:
    """The fixed validation/test indices and the ordered training pool of each dataset."""
    from pyg_tensorpot.datasets import MD17EthanolSample, standard_split
    sections = ACCURACY.dataset_sections(work)
    md17 = sections['MD17 ethanol (950/50/1000)']
    md17_data = MD17EthanolSample(osp.join(work, 'data', 'md17'), log=False)
    split = standard_split(md17_data)
    s66 = sections['S66x8 (422/53/53)']
    order = np.random.default_rng(1).permutation(528)
    return {
        'md17': {'name': 'MD17 ethanol', 'data': {'dataset': md17['dataset'],
                                                  'root': osp.join(work, 'data', 'md17')},
                 'pool': np.asarray(split['idx_train']), 'val': np.asarray(split['idx_val']),
                 'test': np.asarray(split['idx_test'])},
        's66x8': {'name': 'COMP6 S66x8', 'data': {k: v for k, v in s66.items()
                                                   if k in ('dataset', 'root', 'args')},
                  'pool': order[106:], 'val': order[53:106], 'test': order[:53]},
    }


def run(budget: float, work: str, models: List[str], datasets: List[str],
        sizes: Dict[str, List[int]], threads: int) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    results: Dict[str, Any] = {'budget_s': budget, 'machine': ACCURACY.machine(),
                               'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                               'load_average_at_start': list(os.getloadavg()), 'runs': []}
    splits = base_splits(work)
    for key in datasets:
        spec = splits[key]
        for size in sizes[key]:
            if size > len(spec['pool']):
                raise ValueError(f'{spec["name"]} has {len(spec["pool"])} training structures, '
                                 f'fewer than {size}')
            split_path = _save_split(osp.join(work, 'splits', f'{key}_{size}.npz'),
                                     spec['pool'][:size], spec['val'], spec['test'])
            for model_name in models:
                out = osp.join(work, 'runs', f'{key}_{size}_{model_name}')
                shutil.rmtree(out, ignore_errors=True)
                data = dict(spec['data'], splits_file=split_path)
                config = ACCURACY.make_config(ACCURACY.MODELS[model_name], data, budget, out,
                                              'cpu', threads)
                print(f'--- {model_name} on {spec["name"]}, {size} training structures',
                      flush=True)
                start = time.perf_counter()
                result = train(config, verbose=False, report=False)
                metrics = result.test_metrics['test']
                model, _ = load_trained_model(result.model_path)
                row = {'dataset': spec['name'], 'train_size': size, 'model': model_name,
                       'parameters': sum(p.numel() for p in model.parameters()
                                         if p.requires_grad),
                       'steps': result.steps, 'wall_s': time.perf_counter() - start,
                       'test_structures': int(metrics['num_structures']),
                       'energy_mae_meV': 1e3 * metrics['energy_mae'],
                       'forces_mae_meV_per_A': 1e3 * metrics['forces_mae']}
                results['runs'].append(row)
                print(json.dumps(row), flush=True)
    results['load_average_at_end'] = list(os.getloadavg())
    return results


def markdown(results: Dict[str, Any]) -> str:
    lines = [f"Budget {results['budget_s']:.0f} s of training per run (validation included). "
             f"Machine: {results['machine']}; load average "
             f"{results['load_average_at_start'][0]:.1f} at the start, "
             f"{results['load_average_at_end'][0]:.1f} at the end. Date: {results['date']}.",
             '', '| data | training structures | model | steps | test structures | '
             'energy MAE (meV) | force MAE (meV/A) |', '|---|---|---|---|---|---|---|']
    for r in results['runs']:
        lines.append(f"| {r['dataset']} | {r['train_size']:,} | {r['model']} | {r['steps']} | "
                     f"{r['test_structures']:,} | {r['energy_mae_meV']:.1f} | "
                     f"{r['forces_mae_meV_per_A']:.1f} |")
    return '\n'.join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--budget', type=float, default=40.0,
                        help='training seconds per run (default: 40)')
    parser.add_argument('--out', default=osp.join(osp.dirname(HERE), 'runs', 'learning_curve'),
                        help='working folder (runs, splits, data cache, results.json)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--models', nargs='+', default=list(ACCURACY.MODELS),
                        choices=list(ACCURACY.MODELS))
    parser.add_argument('--datasets', nargs='+', default=['md17', 's66x8'],
                        choices=('md17', 's66x8'))
    parser.add_argument('--sizes', type=int, nargs='+', default=None,
                        help='training sizes (default: 50 200 800 for md17, 50 150 422 for '
                        's66x8)')
    args = parser.parse_args()
    sizes = {key: (args.sizes or DEFAULT_SIZES[key]) for key in args.datasets}
    results = run(args.budget, args.out, args.models, args.datasets, sizes, args.threads)
    os.makedirs(args.out, exist_ok=True)
    path = osp.join(args.out, 'results.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(results, f, indent=1)
    os.replace(path + '.tmp', path)
    print()
    print(markdown(results))


if __name__ == '__main__':
    main()
