r"""The ``pyg-tensorpot`` command line.

::

    pyg-tensorpot quickstart [--out DIR]
    pyg-tensorpot train CONFIG.yaml [section.key=value ...] [--resume [CHECKPOINT]]
    pyg-tensorpot evaluate CHECKPOINT [--dataset NAME --root DIR --arg key=value ...]
                                      [--split test|val|train|all] [--out DIR]

Exit status: 0 on success, 2 for a bad configuration, override or missing file (the message
names the key or file), 3 when the output folder is in use by another training run, 130
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

    train = sub.add_parser('train', help='train a model from a YAML configuration')
    train.add_argument('config', help='YAML configuration (see examples/)')
    train.add_argument('overrides', nargs='*', metavar='section.key=value',
                       help='override configuration values, e.g. optim.lr=5e-4')
    train.add_argument('--resume', nargs='?', const='auto', default=None,
                       metavar='CHECKPOINT',
                       help='resume an interrupted run (default: out_dir/checkpoints/'
                       'last.ckpt)')
    train.add_argument('--quiet', action='store_true', help='print only errors')

    evaluate = sub.add_parser('evaluate', help='error table, parity plots and learning '
                              'curves of a trained model')
    evaluate.add_argument('checkpoint', help='model.pt or a .ckpt written by train')
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
    return parser.parse_args(argv)


def _dataset_args(items: List[str]) -> dict:
    from pyg_tensorpot.training.config import ConfigError, parse_overrides
    for item in items:
        if '=' not in item or '.' in item.split('=', 1)[0]:
            raise ConfigError(f'--arg {item!r}: expected key=value, e.g. molecule=aspirin')
    return parse_overrides(items)


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
            from pyg_tensorpot.training.config import load_config
            from pyg_tensorpot.training.run import train
            config = load_config(args.config, args.overrides)
            result = train(config, resume=args.resume, verbose=not args.quiet)
            if result.interrupted:
                return 130
        elif args.command == 'evaluate':
            from pyg_tensorpot.training.run import evaluate
            evaluate(args.checkpoint, dataset=args.dataset, root=args.root,
                     args=_dataset_args(args.arg), split=args.split, splits_file=args.splits,
                     batch_size=args.batch_size, device=args.device, out_dir=args.out,
                     plots=not args.no_plots)
    except (ConfigError, FileNotFoundError, ImportError) as error:
        print(f'pyg-tensorpot {args.command}: error: {error}', file=sys.stderr)
        return 2
    except OutputFolderInUseError as error:
        print(f'pyg-tensorpot {args.command}: error: {error}', file=sys.stderr)
        return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
