"""Accuracy on our DFT test split and on COMP6 S66x8, models and the ANI-1x ensemble side by
side (issue 18, report).

Test sets (wB97X/6-31G(d), the ANI-1x level of theory):

* ``organic-dft``: the fixed test split of :class:`pyg_tensorpot.datasets.OrganicDFT` (our
  PySCF labels; molecules whose canonical SMILES hash to the test bucket, never in training);
  ``--part val`` or ``train`` evaluates another part;
* ``s66x8``: COMP6 v1 S66x8 (528 conformations of 66 dimers; its molecules are excluded from
  the organic-dft sampling).

Metrics per model and set, in kcal/mol and kcal/mol/A:

* conformational energy MAE: within each molecule (organic-dft, ``molecule``) or dimer (S66x8)
  with at least two conformations in the set, predictions and references each minus their mean;
* absolute energy MAE (total energies; per-element offsets included);
* force MAE over all components, and per element (H, C, N, O).

Models: registered names (``tensornet-ani1x``), Hub ids or model folders (the ``model/`` folder
of a training run, e.g. a fine-tuning run of ``examples/finetune-organic-dft.yaml``). The
ensemble column needs torchani 2.2.4 and the NeuroChem files (``--ensemble-dir``), see
``examples/pretrain_ani1x_distillation.py``; without them it is skipped.

    python benchmarks/organic_dft_eval.py
    python benchmarks/organic_dft_eval.py --models tensornet-ani1x,runs/ft-tensornet/model
    python benchmarks/organic_dft_eval.py --render benchmarks/results/organic_dft_eval.json
"""
import argparse
import datetime
import json
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional

import numpy as np
import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

from common import cpu_model  # noqa: E402
from pretrained import load_s66x8, predict_ensemble, predict_model  # noqa: E402

from pyg_tensorpot.utils.files import atomic_write_text  # noqa: E402
from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL  # noqa: E402

REPO = osp.dirname(HERE)
ENSEMBLE = 'ANI-1x ensemble (8 models)'
ELEMENTS = {1: 'H', 6: 'C', 7: 'N', 8: 'O'}
DEFAULT_ENSEMBLE_DIR = osp.join(osp.dirname(REPO), 'shared', 'data', 'ani1x_model', 'ani-1x_8x')


def organic_dft(part: str) -> List:
    from pyg_tensorpot.datasets import OrganicDFT
    dataset = OrganicDFT(log=False)
    idx = dataset.fixed_split()[f'idx_{part}']
    return [dataset[int(i)] for i in idx]


def errors(pred_e: np.ndarray, pred_f: np.ndarray, data) -> Dict[str, float]:
    """The metrics of the module docstring, in kcal/mol(/A), of predictions in eV(/A)."""
    group = np.array([int(d.molecule) for d in data])
    ref_e = np.array([float(d.energy) for d in data])
    ref_f = np.concatenate([d.forces.numpy() for d in data]).astype(np.float64)
    z = np.concatenate([d.z.numpy() for d in data])
    conf = []
    for g in np.unique(group):
        sel = group == g
        if sel.sum() > 1:
            conf.append((pred_e[sel] - pred_e[sel].mean()) - (ref_e[sel] - ref_e[sel].mean()))
    conf = np.concatenate(conf) if conf else np.zeros(0)
    force_error = np.abs(pred_f - ref_f)
    out = {'conformations': len(data), 'groups': int(np.unique(group).size),
           'conformational_groups': int(sum(1 for g in np.unique(group)
                                            if (group == g).sum() > 1)),
           'conformational_energy_mae_kcal_mol':
               float(np.abs(conf).mean()) * EV_TO_KCAL_PER_MOL if conf.size else float('nan'),
           'absolute_energy_mae_kcal_mol': float(np.abs(pred_e - ref_e).mean()) *
           EV_TO_KCAL_PER_MOL,
           'force_mae_kcal_mol_per_angstrom': float(force_error.mean()) * EV_TO_KCAL_PER_MOL}
    for number, symbol in ELEMENTS.items():
        sel = z == number
        out[f'force_mae_{symbol}_kcal_mol_per_angstrom'] = (
            float(force_error[sel].mean()) * EV_TO_KCAL_PER_MOL if sel.any() else float('nan'))
    return out


def evaluate(models: List[str], ensemble_dir: Optional[str], part: str) -> Dict:
    from pyg_tensorpot.hub import from_pretrained
    sets = {'organic-dft': organic_dft(part), 's66x8': load_s66x8()}
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in models:
        model = from_pretrained(name).eval()
        results[name] = {key: errors(*predict_model(model, data), data)
                         for key, data in sets.items()}
    if ensemble_dir:
        try:
            results[ENSEMBLE] = {key: errors(*predict_ensemble(data, ensemble_dir), data)
                                 for key, data in sets.items()}
        except (ImportError, FileNotFoundError, OSError) as error:
            print(f'ANI-1x ensemble skipped: {error} (needs torchani==2.2.4)', file=sys.stderr)
    return results


def table(record: Dict) -> str:
    results = record['results']
    ens = results.get(ENSEMBLE)
    lines = []
    for key in ('organic-dft', 's66x8'):
        first = next(iter(results.values()))[key]
        title = (f"{key} ({record.get('part', 'test')} split)" if key == 'organic-dft' else key)
        lines += [f"{title}: {first['conformations']} conformations of {first['groups']} "
                  f"molecules ({first['conformational_groups']} with several conformations); "
                  'kcal/mol and kcal/mol/A', '',
                  '| model | conformational E MAE | absolute E MAE | force MAE | F MAE H | '
                  'F MAE C | F MAE N | F MAE O | vs ensemble (conf E / F) |',
                  '|---|---|---|---|---|---|---|---|---|']
        for name, sets in results.items():
            r = sets[key]
            ratio = ''
            if ens is not None and name != ENSEMBLE:
                e = ens[key]
                ratio = (f"{r['conformational_energy_mae_kcal_mol'] / e['conformational_energy_mae_kcal_mol']:.2f}x / "  # noqa: E501
                         f"{r['force_mae_kcal_mol_per_angstrom'] / e['force_mae_kcal_mol_per_angstrom']:.2f}x")  # noqa: E501
            lines.append(
                f"| {name} | {r['conformational_energy_mae_kcal_mol']:.3f} | "
                f"{r['absolute_energy_mae_kcal_mol']:.3f} | "
                f"{r['force_mae_kcal_mol_per_angstrom']:.3f} | "
                + ' | '.join(f"{r[f'force_mae_{s}_kcal_mol_per_angstrom']:.3f}"
                             for s in ELEMENTS.values()) + f' | {ratio} |')
        lines.append('')
    return '\n'.join(lines).rstrip('\n')


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', default='tensornet-ani1x,hipnn-ts-ani1x',
                        help='comma-separated names, Hub ids or model folders')
    parser.add_argument('--labels', default=None,
                        help='label names for --models (comma-separated; default: as given)')
    parser.add_argument('--part', choices=['test', 'val', 'train'], default='test')
    parser.add_argument('--ensemble-dir', default=DEFAULT_ENSEMBLE_DIR,
                        help="NeuroChem files of the ANI-1x ensemble ('' to skip it)")
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=osp.join(HERE, 'results', 'organic_dft_eval.json'))
    parser.add_argument('--render', metavar='JSON', help='print the tables of a record and exit')
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as handle:
            record = json.load(handle)
        print(table(record))
        return record
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    if not models:
        parser.error('--models names no model')
    start = time.perf_counter()
    results = evaluate(models, args.ensemble_dir or None, args.part)
    if args.labels:
        labels = [s.strip() for s in args.labels.split(',')]
        if len(labels) != len(models):
            parser.error(f'--labels gives {len(labels)} names for {len(models)} models')
        results = {labels[models.index(k)] if k in models else k: v
                   for k, v in results.items()}
    record = {'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
              'machine': f'{cpu_model()}, {os.cpu_count()} logical CPUs, torch '
                         f'{torch.__version__}', 'part': args.part,
              'wall_s': time.perf_counter() - start, 'models': models, 'results': results}
    print(table(record))
    atomic_write_text(json.dumps(record, indent=2) + '\n', args.json)
    return record


if __name__ == '__main__':
    main()
