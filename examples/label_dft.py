"""Label an active-learning queue with wB97X/6-31G(d) energies and forces (PySCF), resumably.

::

    nice -n 19 python examples/label_dft.py \
        --queue pyg_tensorpot/data/organic_dft/queue_r1.npz \
        --out pyg_tensorpot/data/organic_dft/labels

The queue (from ``examples/sample_organic_chemistry.py``) is labelled in its order (highest
committee spread first), one ``<key>.json`` per conformation written atomically by
:class:`pyg_tensorpot.dft.PySCFLabeller`; conformations already labelled are skipped, so the
command can be stopped and started again at any time, and finished files committed as they
come. Before the first label the settings are checked on the smallest S66x8 dimer
(``--validate``, a few seconds): the absolute energy must agree with COMP6's to 0.05 kcal/mol
and the gradient MAE to 0.05 kcal/mol/A, or nothing is labelled.

One process per core, each with one PySCF thread (``--threads 1``); ``--shard K/N`` labels
every N-th conformation starting at K, so that N processes share a queue without overlap.
Clusters whose molecules lie in different parts of the dataset's fixed split are skipped (they
would be in none of its parts).
"""
import argparse
import os
import os.path as osp
import sys
import time

import numpy as np

from pyg_tensorpot.datasets.organic_dft import conformation_split
from pyg_tensorpot.dft import DFTSettings, PySCFLabeller, compute_label
from pyg_tensorpot.utils.units import HARTREE_TO_EV

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(REPO, 'pyg_tensorpot', 'data', 'organic_dft')
S66X8 = osp.join(REPO, 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
KCAL_PER_HARTREE = 627.509474


def log(message: str) -> None:
    print(f'[{time.strftime("%Y-%m-%d %H:%M:%S")}] {message}', flush=True)


def validate(settings: DFTSettings, path: str = S66X8) -> None:
    """Our label of the smallest S66x8 dimer (water dimer at 1.00x) against COMP6's."""
    import h5py
    symbols = {'H': 1, 'C': 6, 'N': 7, 'O': 8}
    with h5py.File(path, 'r') as f:
        group = f['s66x8/mol00']
        z = np.array([symbols[s.decode()] for s in group['species'][()]])
        pos = group['coordinates'][2].astype(np.float64)
        energy, gradient = float(group['energies'][2]), group['forces'][2].astype(np.float64)
    result = compute_label(z, pos, settings)
    d_energy = (result['energy_hartree'] - energy) * KCAL_PER_HARTREE
    # COMP6 stores +dE/dR in Hartree/A; ours are forces in eV/A
    d_grad = (-result['forces'] / HARTREE_TO_EV - gradient) * KCAL_PER_HARTREE
    log(f'S66x8 water dimer 1.00x: energy {d_energy:+.4f} kcal/mol, gradient MAE '
        f'{np.abs(d_grad).mean():.4f} kcal/mol/A (max {np.abs(d_grad).max():.3f}), '
        f'{result["seconds"]:.1f} s')
    if abs(d_energy) > 0.05 or np.abs(d_grad).mean() > 0.05:
        raise SystemExit('the settings do not reproduce COMP6 S66x8: not labelling')


def read_queue(path: str, shard: int, shards: int):
    with np.load(path) as q:
        data = {k: q[k] for k in q.files}
    offsets = np.concatenate([[0], np.cumsum(data['num_atoms'])])
    for k in range(shard, len(data['key']), shards):
        if conformation_split(str(data['smiles'][k])) == 'mixed':
            continue  # a cluster across the fixed split's parts would be in none of them
        lo, hi = offsets[k], offsets[k + 1]
        metadata = {name: (data[name][k].item() if data[name].ndim == 1 else None)
                    for name in ('smiles', 'group', 'source', 'kind', 'temperature', 'rho',
                                 'energy_std', 'forces_std', 'teacher_energy')
                    if name in data}
        metadata['queue'] = osp.basename(path)
        metadata['rank'] = int(k)
        yield dict(key=str(data['key'][k]), z=data['z'][lo:hi], pos=data['pos'][lo:hi],
                   group=str(data['group'][k]), metadata=metadata)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--queue', default=osp.join(DATA, 'queue_r1.npz'))
    parser.add_argument('--out', default=osp.join(DATA, 'labels'))
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--shard', default='0/1', help='K/N: every N-th item from K')
    parser.add_argument('--limit', type=int, default=None, help='stop after this many labels')
    parser.add_argument('--no-validate', dest='validate', action='store_false')
    parser.add_argument('--nice', type=int, default=19, help='raise the niceness by this')
    args = parser.parse_args(argv)
    shard, shards = (int(v) for v in args.shard.split('/'))
    if not 0 <= shard < shards:
        parser.error(f'--shard K/N needs 0 <= K < N, got {args.shard}')
    if args.nice:
        os.nice(args.nice)
    from pyscf import lib
    lib.num_threads(args.threads)
    settings = DFTSettings()
    if args.validate:
        validate(settings)
    labeller = PySCFLabeller(args.out, settings, threads=args.threads)
    log(f'labelling {args.queue} (shard {shard}/{shards}) into {args.out}, pid {os.getpid()}')
    count = labeller.run(read_queue(args.queue, shard, shards), limit=args.limit, log=log)
    log(f'done: {count} new labels')


if __name__ == '__main__':
    sys.exit(main())
