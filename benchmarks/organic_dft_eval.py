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
import os.path as osp
import sys
import time
from typing import Dict, List, Optional

import torch

HERE = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, HERE)

from common import finish_record, read_record, record_header  # noqa: E402
from pretrained import (  # noqa: E402
    DEFAULT_ENSEMBLE_DIR, ELEMENTS, ENSEMBLE, ensemble_errors, errors, load_s66x8,
    predict_model, update_model_card)




def organic_dft(part: str) -> List:
    from pyg_tensorpot.datasets import OrganicDFT
    dataset = OrganicDFT(log=False)
    idx = dataset.fixed_split()[f'idx_{part}']
    return [dataset[int(i)] for i in idx]


def evaluate(models: List[str], ensemble_dir: Optional[str], part: str) -> Dict:
    from pyg_tensorpot.hub import from_pretrained
    sets = {'organic-dft': organic_dft(part), 's66x8': load_s66x8()}
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    for name in models:
        model = from_pretrained(name).eval()
        results[name] = {key: errors(*predict_model(model, data), data)
                         for key, data in sets.items()}
    ensemble = ensemble_errors(sets, ensemble_dir)
    if ensemble is not None:
        results[ENSEMBLE] = ensemble
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
                             for s in ELEMENTS) + f' | {ratio} |')
        lines.append('')
    return '\n'.join(lines).rstrip('\n')


#: The metrics entry of the model cards (its table states the set sizes).
CARD_KEY = 'Our DFT test split (organic-dft) and COMP6 S66x8, per element (wB97X/6-31G(d))'


def write_cards(record: Dict) -> None:
    """Puts each registered model's rows (and the ensemble's) of :obj:`record` into its
    shipped ``config.json`` metrics and model card."""
    from pyg_tensorpot.hub import PRETRAINED_MODELS
    results = record['results']
    for name in results:
        if name not in PRETRAINED_MODELS:
            continue
        rows = {key: results[key] for key in (name, ENSEMBLE) if key in results}
        entry = {'table': table(dict(record, results=rows)), 'results': rows,
                 'note': (f"Measured {record['date']} by benchmarks/organic_dft_eval.py: the "
                          f"{record.get('part', 'test')} split of OrganicDFT (molecules this "
                          'model never saw) and S66x8 (not in the sampling of OrganicDFT; its '
                          "monomers were in this model's distillation data); conformational "
                          "energies relative to each molecule's mean, over the molecules with "
                          'several conformations; forces in kcal/mol/A per component.')}
        print(f'updated {update_model_card(name, {CARD_KEY: entry})}')


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
    parser.add_argument('--write-cards', action='store_true',
                        help="put the registered models' rows into their shipped model cards "
                        '(with --render: those of that record)')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        print(table(record))
        if args.write_cards:
            write_cards(record)
        return record
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    if not models:
        parser.error('--models names no model')
    started = time.perf_counter()
    record = record_header(part=args.part, models=models)
    results = evaluate(models, args.ensemble_dir or None, args.part)
    if args.labels:
        labels = [s.strip() for s in args.labels.split(',')]
        if len(labels) != len(models):
            parser.error(f'--labels gives {len(labels)} names for {len(models)} models')
        results = {labels[models.index(k)] if k in models else k: v
                   for k, v in results.items()}
    record['results'] = results
    finish_record(record, args.json, started)
    print(table(record))
    if args.write_cards:
        write_cards(record)
    return record


if __name__ == '__main__':
    main()
