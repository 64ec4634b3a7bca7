"""Active-learning style selection: which structures of a trajectory should be labelled next?

A committee of the two pretrained models (``tensornet-ani1x`` and ``hipnn-ts-ani1x``) drives a
hot Langevin trajectory of a molecule through the ASE calculator; at every recorded frame the
members' disagreement on the forces (the per-atom norm of their standard deviation, averaged
over atoms) is stored. The ``--select`` frames with the largest disagreement, the ones the
models know least, are written as extended XYZ, ready to be labelled with DFT and added to the
training set (``pyg-tensorpot train --data ... --init tensornet-ani1x``).

    python examples/active_learning_selection.py
    python examples/active_learning_selection.py --molecule CH3COOH --temperature 1200
"""
import argparse
import json
import os
import time

import numpy as np
import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--molecule', default='CH3CH2OH',
                        help='a name known to ase.build.molecule (default: CH3CH2OH, ethanol)')
    parser.add_argument('--models', default='tensornet-ani1x,hipnn-ts-ani1x',
                        help='committee members, comma-separated names or folders')
    parser.add_argument('--temperature', type=float, default=900.0, help='Langevin, K')
    parser.add_argument('--steps', type=int, default=400, help='MD steps of 0.5 fs')
    parser.add_argument('--interval', type=int, default=10, help='record every N steps')
    parser.add_argument('--select', type=int, default=5, help='frames to select')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='active_learning_output', help='output folder')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ase import units
    from ase.build import molecule
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from pyg_tensorpot.calculator import TensorPotCalculator

    start = time.perf_counter()
    atoms = molecule(args.molecule)
    atoms.calc = TensorPotCalculator(args.models.split(','))
    thermalize_momenta(atoms, temperature_K=args.temperature,
                       rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=args.temperature,
                        friction=0.01 / units.fs, fixcm=False,
                        rng=np.random.default_rng(args.seed + 1))
    frames, spreads = [], []

    def record():
        atoms.get_forces()
        spread = float(np.linalg.norm(atoms.calc.results['forces_std'], axis=1).mean())
        snapshot = atoms.copy()
        snapshot.info.update(step=dynamics.nsteps, committee_force_std=spread,
                             committee_energy_std=atoms.calc.results['energy_std'])
        frames.append(snapshot)
        spreads.append(spread)

    dynamics.attach(record, interval=args.interval)
    dynamics.run(args.steps)
    order = np.argsort(spreads)[::-1][:args.select]
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, 'selected.extxyz')
    write(path, [frames[i] for i in order], format='extxyz')
    summary = {
        'frames': len(frames), 'selected_steps': [int(frames[i].info['step']) for i in order],
        'selected_force_std': [spreads[i] for i in order],
        'median_force_std': float(np.median(spreads)), 'seconds': time.perf_counter() - start,
        'output': path}
    print(f'{len(frames)} frames of {args.molecule} at {args.temperature:.0f} K; committee '
          f'force spread (eV/A): median {summary["median_force_std"]:.3f}, selected '
          f'{", ".join(f"{v:.3f}" for v in summary["selected_force_std"])} '
          f'(steps {summary["selected_steps"]})')
    print(f'wrote {path} ({len(order)} frames to label), {summary["seconds"]:.1f} s')
    with open(os.path.join(args.output, 'selection.json'), 'w') as handle:
        json.dump(summary, handle, indent=1)
    return summary


if __name__ == '__main__':
    main()
