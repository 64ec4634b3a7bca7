"""Accuracy against model size at equal CPU budget (issue 18, size): TensorNet H=32, 64, 96,
128 and HIP-NN-TS width 64, 128, each trained from scratch by the training engine on the same
ANI-1x ensemble distillation data for the same wall-clock minutes on one thread, then tested
beside the ensemble on COMP6 S66x8 and on the organic-dft validation and test splits (our
wB97X/6-31G(d) labels).

Recipe: the stage-1 distillation recipes (``examples/distill-ani1x-tensornet.yaml``,
``examples/distill-ani1x-hipnn-ts.yaml``: their loss, optimiser, EMA, reference energies and
batch sizes) trained on the MD/pair conformations plus the dimer scans, with the stage-2 loss on
scan-relative energies (``relative_energy_weight`` 10, scans kept whole). Only the width changes
between the runs of a model (the paper's ANI-1x TensorNet is H=128; hippynn's ANI-1x examples
are width 128). Label the data without S66x8's monomers, so that S66x8 stays a clean test:

    python examples/pretrain_ani1x_distillation.py label --no-s66-monomers \\
        --out distill/ani1x_distill.npz
    python examples/pretrain_ani1x_distillation.py label-dimers --no-s66-monomers \\
        --scans 4000 --out distill/ani1x_dimer_scans.npz
    python benchmarks/size_study.py --data-dir distill --minutes 15 --jobs 2
    python benchmarks/size_study.py --render benchmarks/results/size_study.json --write-cards

``--jobs 2`` runs two trainings at a time (one thread each) on a 2-CPU machine; keep the number
of sizes a multiple of the jobs so that every run shares the machine alike. The winner of each
model is the size with the lowest geometric mean of its four error ratios to the ensemble
(conformational energy and force MAE on S66x8 and on the organic-dft validation split); the
test split is reported, never used to choose. The ensemble column needs torchani 2.2.4 and the
NeuroChem files (see ``benchmarks/organic_dft_eval.py``).
"""
import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path.insert(0, HERE)

from common import finish_record, read_record, record_header  # noqa: E402
from pretrained import (  # noqa: E402
    DEFAULT_ENSEMBLE_DIR, ENSEMBLE, ensemble_errors, errors, load_s66x8, predict_model)

from pyg_tensorpot.utils.files import atomic_write_text  # noqa: E402

RECIPES = {'TensorNet': osp.join(ROOT, 'examples', 'distill-ani1x-tensornet.yaml'),
           'HIP-NN-TS': osp.join(ROOT, 'examples', 'distill-ani1x-hipnn-ts.yaml')}
DEFAULT_SIZES = 'TensorNet:32,TensorNet:64,TensorNet:96,TensorNet:128,HIP-NN-TS:64,HIP-NN-TS:128'
SETS = ('s66x8', 'organic-dft val', 'organic-dft test')
CHOICE_SETS = ('s66x8', 'organic-dft val')
RUN_FILE = 'size_study_run.json'
METRICS = ('conformational_energy_mae_kcal_mol', 'force_mae_kcal_mol_per_angstrom')


def parse_sizes(text: str) -> List[tuple]:
    sizes = []
    for item in text.split(','):
        name, _, width = item.strip().partition(':')
        if name not in RECIPES or not width.isdigit() or int(width) < 1:
            raise SystemExit(f"--sizes: '{item}' is not MODEL:WIDTH with MODEL one of "
                             f"{', '.join(RECIPES)} and WIDTH a positive integer")
        sizes.append((name, int(width)))
    return sizes


def run_name(model: str, width: int) -> str:
    return f"{model.lower().replace('-', '')}-{width}"


def overrides(data_dir: str, out_dir: str, width: int, minutes: float) -> List[str]:
    paths = [osp.join(data_dir, 'ani1x_distill.npz'), osp.join(data_dir, 'ani1x_dimer_scans.npz')]
    return [f'out_dir={out_dir}', f'model.hidden_channels={width}',
            f'data.root={osp.join(data_dir, "processed")}',
            'data.args.paths=[' + ','.join(paths) + ']', 'data.group_key=group',
            'data.test_dataset=null', 'loss.relative_energy_weight=10.0',
            f'trainer.max_time={minutes}', 'trainer.num_threads=1']


def train_one(model: str, width: int, data_dir: str, runs_dir: str, minutes: float) -> Dict:
    """One training run (in its own process: the engine sets the thread count)."""
    from pyg_tensorpot.training import train
    from pyg_tensorpot.training.config import load_config
    out_dir = osp.join(runs_dir, run_name(model, width))
    config = load_config(RECIPES[model], overrides(data_dir, out_dir, width, minutes))
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    with open(osp.join(out_dir, 'train.log'), 'w') as log:
        sys.stdout = sys.stderr = log
        result = train(config, verbose=True)
    run = {'model': model, 'width': width, 'run': out_dir, 'model_dir': result.pretrained_dir,
           'steps': result.steps, 'epochs': result.epochs,
           'wall_min': (time.perf_counter() - start) / 60}
    atomic_write_text(json.dumps(run, indent=1) + '\n', osp.join(out_dir, RUN_FILE))
    return run


def finished_run(model: str, width: int, runs_dir: str) -> Dict:
    path = osp.join(runs_dir, run_name(model, width), RUN_FILE)
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(f'--evaluate-only: no finished run at {path} ({error})') from None


def prepare(data_dir: str, runs_dir: str, width: int) -> None:
    """Processes the label files once, before the parallel runs read them."""
    from pyg_tensorpot.training.builders import build_dataset
    from pyg_tensorpot.training.config import load_config
    config = load_config(RECIPES['TensorNet'],
                         overrides(data_dir, osp.join(runs_dir, 'prepare'), width, 1.0))
    build_dataset(config.data.dataset, config.data.root, config.data.args)


def test_sets() -> Dict[str, list]:
    from pyg_tensorpot.datasets import OrganicDFT
    dataset = OrganicDFT(log=False)
    split = dataset.fixed_split()
    return {'s66x8': load_s66x8(),
            **{f'organic-dft {part}': [dataset[int(i)] for i in split[f'idx_{part}']]
               for part in ('val', 'test')}}


def evaluate(runs: Sequence[Dict], ensemble_dir: Optional[str]) -> Dict[str, Dict]:
    from pyg_tensorpot.hub import from_pretrained
    sets = test_sets()
    results: Dict[str, Dict] = {}
    ensemble = ensemble_errors(sets, ensemble_dir)
    if ensemble is not None:
        results[ENSEMBLE] = ensemble
    for run in runs:
        model = from_pretrained(run['model_dir']).eval()
        params = sum(p.numel() for p in model.parameters())
        results[run_name(run['model'], run['width'])] = {
            **{key: errors(*predict_model(model, data), data) for key, data in sets.items()},
            'parameters': params, **{k: run[k] for k in ('model', 'width', 'steps', 'epochs',
                                                         'wall_min')}}
    return results


def choice_score(entry: Dict, ensemble: Dict) -> float:
    """Geometric mean of the error ratios to the ensemble on the sets that choose."""
    logs = [math.log(entry[s][m] / ensemble[s][m]) for s in CHOICE_SETS for m in METRICS]
    return math.exp(sum(logs) / len(logs))


def winners(results: Dict) -> Dict[str, str]:
    ensemble = results.get(ENSEMBLE)
    if ensemble is None:
        return {}
    best: Dict[str, tuple] = {}
    for name, entry in results.items():
        if name == ENSEMBLE:
            continue
        score = choice_score(entry, ensemble)
        if entry['model'] not in best or score < best[entry['model']][0]:
            best[entry['model']] = (score, name)
    return {model: name for model, (_, name) in best.items()}


def table(record: Dict) -> str:
    results = record['results']
    ensemble = results.get(ENSEMBLE)
    chosen = set(record.get('winners', {}).values())
    head = ['run', 'parameters', 'steps']
    for key in SETS:
        head += [f'{key} conf E', f'{key} F']
    if ensemble:
        head.append('choice score')
    lines = [f"Equal budget: {record['minutes']} min of one thread per run "
             f"({record['jobs']} runs at a time); MAE in kcal/mol and kcal/mol/A, "
             '(ratio to the ensemble); choice score: geometric mean of the conf E and F ratios '
             f"on {' and '.join(CHOICE_SETS)} (lower is better), * the winner of its model.", '',
             '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, entry in results.items():
        if name == ENSEMBLE:
            row = [name, '', '']
        else:
            row = [name + (' *' if name in chosen else ''), f"{entry['parameters']:,}",
                   f"{entry['steps']:,}"]
        for key in SETS:
            for metric in METRICS:
                value = entry[key][metric]
                ratio = ('' if ensemble is None or name == ENSEMBLE else
                         f' ({value / ensemble[key][metric]:.2f}x)')
                row.append(f'{value:.3f}{ratio}')
        if ensemble:
            row.append('' if name == ENSEMBLE else f'{choice_score(entry, ensemble):.2f}')
        lines.append('| ' + ' | '.join(row) + ' |')
    if record.get('note'):
        lines += ['', record['note']]
    return '\n'.join(lines)


SHIPPED = {'TensorNet': 'tensornet-ani1x', 'HIP-NN-TS': 'hipnn-ts-ani1x'}
CARD_KEY = 'Accuracy against size at equal CPU budget (benchmarks/size_study.py)'


def plot(record: Dict, path: str) -> None:
    """Error ratio to the ensemble against parameters, one panel per test set."""
    from pyg_tensorpot.training.plots import _pyplot, save_figure
    plt = _pyplot()
    from matplotlib import ticker
    results, ensemble = record['results'], record['results'].get(ENSEMBLE)
    if ensemble is None:
        raise SystemExit('the plot shows ratios to the ensemble, which this record lacks')
    fig, axes = plt.subplots(1, len(SETS), figsize=(4 * len(SETS), 3.6), sharey=True)
    for model, marker in (('TensorNet', 'o'), ('HIP-NN-TS', 's')):
        runs = sorted((e for n, e in results.items() if n != ENSEMBLE and e['model'] == model),
                      key=lambda e: e['parameters'])
        if not runs:
            continue
        for ax, key in zip(axes, SETS):
            params = [e['parameters'] for e in runs]
            for metric, style, label in ((METRICS[0], '-', 'conf E'), (METRICS[1], '--', 'F')):
                ax.semilogx(params, [e[key][metric] / ensemble[key][metric] for e in runs],
                            style, marker=marker, label=f'{model} {label}')
            ax.set_title(key, fontsize=9)
            ax.set_xlabel('parameters')
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f'{x / 1e3:.0f}k'))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].set_ylabel('MAE / ANI-1x ensemble MAE')
    for ax in axes:
        ax.axhline(1.0, color='k', lw=0.6)
        ax.grid(True, which='both', alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.suptitle(f"{record['minutes']} min of one thread per run, {record['machine']}, "
                 f"{record['date']}", fontsize=9)
    save_figure(fig, path, dpi=110)


def write_cards(record: Dict) -> None:
    """Puts each shipped model's curve (its architecture's runs and the ensemble) into its
    ``config.json`` metrics and model card."""
    from pretrained import update_model_card
    results = record['results']
    for model, name in SHIPPED.items():
        rows = {key: entry for key, entry in results.items()
                if key == ENSEMBLE or entry.get('model') == model}
        if len(rows) < 2:
            continue
        winner = record.get('winners', {}).get(model)
        entry = {'table': table(dict(record, results=rows)),
                 'note': (f"Measured {record['date']}: each width trained from scratch by the "
                          f"same recipe for {record['minutes']} min of one thread on ANI-1x "
                          'ensemble distillation data without S66x8 monomers nor organic-dft '
                          f'validation/test molecules; at this budget the winner is {winner}. '
                          'The shipped model is the one described above (its own, longer '
                          'two-stage training).')}
        print(f'updated {update_model_card(name, {CARD_KEY: entry})}')


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', default='distill',
                        help='folder of ani1x_distill.npz and ani1x_dimer_scans.npz')
    parser.add_argument('--runs-dir', default='runs/size-study')
    parser.add_argument('--sizes', default=DEFAULT_SIZES, help='MODEL:WIDTH,...')
    parser.add_argument('--minutes', type=float, default=15.0,
                        help='wall-clock budget of each run (one thread)')
    parser.add_argument('--jobs', type=int, default=2, help='runs at a time')
    parser.add_argument('--ensemble-dir', default=DEFAULT_ENSEMBLE_DIR)
    parser.add_argument('--evaluate-only', action='store_true',
                        help='evaluate the finished runs of --runs-dir without training')
    parser.add_argument('--out', default=osp.join(HERE, 'results', 'size_study.json'))
    parser.add_argument('--render', metavar='JSON', help='print the table of a record')
    parser.add_argument('--plot', metavar='PNG', default=osp.join(HERE, 'results',
                                                                  'size_study.png'),
                        help="the curve of the record ('' for none)")
    parser.add_argument('--write-cards', action='store_true',
                        help="put each shipped model's curve into its model card")
    parser.add_argument('--note', help='with --render: a remark on the run (what shared the '
                        'machine, say), kept in the record and written into the cards')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        if args.note:
            record['note'] = args.note
            atomic_write_text(json.dumps(record, indent=2) + '\n', args.render)
        print(table(record))
        if args.plot:
            plot(record, args.plot)
        if args.write_cards:
            write_cards(record)
        return
    sizes = parse_sizes(args.sizes)
    if args.minutes <= 0 or args.jobs < 1:
        raise SystemExit('--minutes must be positive and --jobs at least 1')
    for name in ('ani1x_distill.npz', 'ani1x_dimer_scans.npz'):
        if not osp.isfile(osp.join(args.data_dir, name)):
            raise SystemExit(f"{osp.join(args.data_dir, name)} does not exist: label it first "
                             '(see the top of this script)')
    started = time.perf_counter()
    record = record_header(benchmark='size_study', minutes=args.minutes, jobs=args.jobs,
                           data_dir=args.data_dir)
    if args.evaluate_only:
        runs = [finished_run(model, width, args.runs_dir) for model, width in sizes]
    else:
        prepare(args.data_dir, args.runs_dir, sizes[0][1])
        context = multiprocessing.get_context('spawn')
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(train_one, model, width, args.data_dir, args.runs_dir,
                                   args.minutes) for model, width in sizes]
            runs = [future.result() for future in futures]
        for run in runs:
            print(f"{run_name(run['model'], run['width'])}: {run['steps']:,} steps, "
                  f"{run['epochs']} epochs, {run['wall_min']:.1f} min", flush=True)
    record['results'] = evaluate(runs, args.ensemble_dir)
    record['winners'] = winners(record['results'])
    finish_record(record, args.out, started)
    print(table(record))
    if args.plot and ENSEMBLE in record['results']:
        plot(record, args.plot)
    if args.write_cards:
        write_cards(record)


if __name__ == '__main__':
    main()
