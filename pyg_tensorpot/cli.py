r"""The ``pyg-tensorpot`` command line.

::

    pyg-tensorpot quickstart [--out DIR]
    pyg-tensorpot train CONFIG.yaml [section.key=value ...] [--resume [CHECKPOINT]]
    pyg-tensorpot train --data FILE.extxyz|FILE.db [CONFIG.yaml] [section.key=value ...]
                        [--init NAME_OR_FOLDER] [--ensemble N]
    pyg-tensorpot evaluate CHECKPOINT [--dataset NAME --root DIR --arg key=value ...]
                                      [--split test|val|train|all] [--out DIR]
                                      [--data FILE.extxyz] [--group-by KEY]
    pyg-tensorpot export MODEL_OR_NAME --format torchscript|exported|metatomic|openmm -o FILE
                         [--dtype float32|float64] [--atoms STRUCTURE_FILE]
    pyg-tensorpot datasets [list [--json] | info NAME [--json] | cards DIR [--write]
                            | push NAME_OR_PATH REPO_ID ...]

Exit status: 0 on success, 2 for a bad configuration, override or missing file (the message
names the key or file; ``export`` exits 1 for a model it cannot write), 3 when the output folder is in use by another training run, 130
for an interrupted training run (resume it with ``--resume``).
"""
import argparse
import sys
from typing import List, Optional, Sequence


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='pyg-tensorpot',
        description='Train and evaluate TensorNet and HIP-NN(-TS) interatomic potentials.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True

    quick = sub.add_parser(
        'quickstart', help='train a small TensorNet on the bundled MD17 ethanol frames and '
        'print its test errors (a few minutes on a CPU)')
    quick.add_argument('--out', default='quickstart', help='output folder (default: '
                       'quickstart)')
    quick.add_argument('--epochs', type=int, default=None,
                       help='number of epochs (default: 25)')

    train = sub.add_parser('train', help='train a model from a YAML configuration and/or '
                           'on your own extxyz or ASE database file (--data)')
    train.add_argument('config', nargs='?', default=None,
                       help='YAML configuration (see examples/); optional: without it a small '
                       'TensorNet is trained with the defaults')
    train.add_argument('overrides', nargs='*', metavar='section.key=value',
                       help='override configuration values, e.g. optim.lr=5e-4')
    train.add_argument('--resume', nargs='?', const='auto', default=None,
                       metavar='CHECKPOINT',
                       help='resume an interrupted run (default: out_dir/checkpoints/'
                       'last.ckpt)')
    train.add_argument('--quiet', action='store_true', help='print only errors')
    train.add_argument('--data', default=None, metavar='FILE',
                       help='your structures: an extended-XYZ file (.xyz, .extxyz) or an ASE '
                       'database (.db, .json, .aselmdb); same as data.path=FILE (options of '
                       'the reader as data.args.KEY=VALUE, e.g. data.args.energy_unit=kcal/mol)')
    train.add_argument('--init', default=None, metavar='NAME_OR_FOLDER',
                       help='fine-tune a pretrained model: tensornet-ani1x, hipnn-ts-ani1x, a '
                       'folder written by save_pretrained, a run folder (or its model/), or a .ckpt; same as '
                       'model.init=...')
    train.add_argument('--ensemble', type=int, default=None, metavar='N',
                       help='train N members with seeds seed, seed+1, ... into '
                       'out_dir/member_k and write out_dir/ensemble.json')

    evaluate = sub.add_parser('evaluate', help='error tables (overall, per element, per '
                              'subset), markdown report, parity plots, error histograms and '
                              'learning curves of a trained model')
    evaluate.add_argument('checkpoint', help='a run folder, its model/ folder or a .ckpt written by train (a model.pt of earlier versions also loads)')
    evaluate.add_argument('--dataset', default=None,
                          help='dataset name (default: the test set of the training run)')
    evaluate.add_argument('--root', default=None, help='folder of --dataset')
    evaluate.add_argument('--arg', action='append', default=[], metavar='key=value',
                          help='keyword argument of --dataset (repeatable), e.g. '
                          'molecule=aspirin')
    evaluate.add_argument('--split', default=None, choices=('test', 'val', 'train', 'all'),
                          help='part to evaluate (default: test for the training data, all '
                          'for another dataset)')
    evaluate.add_argument('--splits', default=None, metavar='SPLITS.npz',
                          help='take the part from this split file')
    evaluate.add_argument('--batch-size', type=int, default=64)
    evaluate.add_argument('--device', default=None, help='cpu, cuda, cuda:1, ... (default: '
                          'cuda if available)')
    evaluate.add_argument('--out', default=None,
                          help='folder for the plots (default: the run folder)')
    evaluate.add_argument('--no-plots', action='store_true', help='do not write PNG plots')
    evaluate.add_argument('--data', default=None, metavar='FILE.extxyz',
                          help='evaluate every structure of your own extended-XYZ file '
                          '(--arg passes ExtXYZDataset options, e.g. energy_key=REF_energy)')
    evaluate.add_argument('--group-by', default=None, metavar='KEY',
                          help='per-structure attribute (or extended-XYZ info key) to group '
                          'the errors by (default: subset, name or config_type when present)')
    from pyg_tensorpot.deploy import export as export_command
    export_command.add_arguments(sub.add_parser(
        'export', help='write a model for an MD engine: TorchScript, torch.export, metatomic '
        '(LAMMPS, i-PI, ASE) or OpenMM'))

    from pyg_tensorpot.datasets import catalogue
    catalogue.add_arguments(sub.add_parser(
        'datasets', help='the dataset catalogue: list, info NAME, cards DIR, push NAME_OR_PATH '
        'REPO_ID'))

    args, extra = parser.parse_known_args(argv)
    if args.command == 'train':
        # argparse stops filling the positionals at the first option: `train --data F
        # key=value` and `train --data F CONFIG.yaml` leave them over
        for item in extra:
            if item.startswith('-'):
                break
            if '=' not in item and args.config is None and not args.overrides:
                args.config = item
            else:
                args.overrides.append(item)
        else:
            extra = []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _dataset_args(items: List[str]) -> dict:
    from pyg_tensorpot.training.config import ConfigError, parse_overrides
    for item in items:
        if '=' not in item or '.' in item.split('=', 1)[0]:
            raise ConfigError(f'--arg {item!r}: expected key=value, e.g. molecule=aspirin')
    return parse_overrides(items)


#: The model of ``pyg-tensorpot train`` without a YAML file: a small TensorNet (52k
#: parameters, the size of the pretrained tensornet-ani1x) that trains on a CPU.
SMALL_TENSORNET = {'name': 'TensorNet', 'hidden_channels': 32, 'num_layers': 2, 'num_rbf': 32,
                   'cutoff': 5.0}


def _train_config(args: argparse.Namespace):
    """The configuration of ``pyg-tensorpot train``: the YAML file (if any), then the
    overrides, then ``--data`` and ``--init``; without a file, defaults for a small model."""
    import json
    import os.path as osp

    from pyg_tensorpot.training.config import load_config, parse_overrides
    path, overrides = args.config, list(args.overrides)
    if path is not None and '=' in path and not osp.isfile(path):
        path, overrides = None, [path] + overrides  # an override, not a file
    # JSON strings are YAML scalars: a file name is never read as a number or a date
    if args.data is not None:
        overrides.append(f'data.path={json.dumps(args.data)}')
    if args.init is not None:
        overrides.append(f'model.init={json.dumps(args.init)}')
    base = None
    if path is None:
        given = parse_overrides(overrides)
        model = given.get('model') if isinstance(given.get('model'), dict) else {}
        data = given.get('data') if isinstance(given.get('data'), dict) else {}
        fine_tuning = 'init' in model
        base = {'optim': {'lr': 1e-4 if fine_tuning else 5e-4, 'warmup_steps': 100}}
        if not fine_tuning and model.get('name', 'TensorNet') == 'TensorNet':
            base['model'] = dict(SMALL_TENSORNET)
        if isinstance(data.get('path'), str) and 'out_dir' not in given:
            stem = osp.splitext(osp.basename(data['path']))[0] or 'data'
            base['out_dir'] = osp.join('runs', stem)
    return load_config(path, overrides, base=base)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``pyg-tensorpot`` command."""
    args = _parse_args(argv)
    from pyg_tensorpot.training.config import ConfigError
    from pyg_tensorpot.training.run import OutputFolderInUseError
    try:
        if args.command == 'quickstart':
            from pyg_tensorpot.training.quickstart import quickstart
            quickstart(args.out, args.epochs)
        elif args.command == 'train':
            from pyg_tensorpot.datasets import RawFileError
            from pyg_tensorpot.hub import PretrainedModelError
            from pyg_tensorpot.training.run import train, train_ensemble
            try:
                config = _train_config(args)
                if args.ensemble is not None:
                    result = train_ensemble(config, args.ensemble, resume=args.resume,
                                            verbose=not args.quiet)
                else:
                    result = train(config, resume=args.resume, verbose=not args.quiet)
            except (RawFileError, PretrainedModelError) as error:
                # a malformed structure file or saved model of the user's: named, no traceback
                print(f'pyg-tensorpot train: error: {error}', file=sys.stderr)
                return 2
            if result.interrupted:
                return 130
        elif args.command == 'evaluate':
            from pyg_tensorpot.training.run import evaluate
            evaluate(args.checkpoint, dataset=args.dataset, root=args.root,
                     args=_dataset_args(args.arg), split=args.split, splits_file=args.splits,
                     batch_size=args.batch_size, device=args.device, out_dir=args.out,
                     plots=not args.no_plots, data=args.data, group_by=args.group_by)
        elif args.command == 'export':
            from pyg_tensorpot.deploy import export as export_command
            return export_command.run(args)
        elif args.command == 'datasets':
            from pyg_tensorpot.datasets import catalogue
            return catalogue.run(args)
    except (ConfigError, FileNotFoundError, ImportError) as error:
        print(f'pyg-tensorpot {args.command}: error: {error}', file=sys.stderr)
        return 2
    except OutputFolderInUseError as error:
        print(f'pyg-tensorpot {args.command}: error: {error}', file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
