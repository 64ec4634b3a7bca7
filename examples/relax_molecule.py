"""Geometry optimisation of a molecule with the ASE calculator and BFGS.

A distorted ethanol (ASE's reference geometry with every atom displaced by up to 0.15 A) is
relaxed with the pretrained ``tensornet-ani1x`` potential until the largest force is below
``--fmax`` (eV/A). Energies, largest forces, the number of steps and the timings are printed;
the trajectory and the final geometry are written to ``--output``.

    python examples/relax_molecule.py
    python examples/relax_molecule.py --molecule CH3COOH --fmax 0.005 --dtype float32
"""
import os

# The optimiser's small matrices (the 3x3 cell, a 3N x 3N Hessian guess) gain nothing from
# BLAS threads, whose spinning slowed this script 6x on a busy machine.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--molecule', default='CH3CH2OH',
                        help='a name known to ase.build.molecule (default: CH3CH2OH, ethanol)')
    parser.add_argument('--model', default='tensornet-ani1x',
                        help='pretrained name, Hub id or folder (default: tensornet-ani1x)')
    parser.add_argument('--dtype', choices=['float64', 'float32'], default='float64')
    parser.add_argument('--fmax', type=float, default=0.01, help='force criterion, eV/A')
    parser.add_argument('--steps', type=int, default=200, help='at most this many BFGS steps')
    parser.add_argument('--distortion', type=float, default=0.15,
                        help='largest random displacement of each coordinate, A')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='relax_molecule_output', help='output folder')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ase.build import molecule
    from ase.io import write
    from ase.optimize import BFGS

    from pyg_tensorpot.calculator import TensorPotCalculator

    os.makedirs(args.output, exist_ok=True)
    atoms = molecule(args.molecule)
    rng = np.random.default_rng(args.seed)
    atoms.positions += rng.uniform(-args.distortion, args.distortion, atoms.positions.shape)

    start = time.perf_counter()
    atoms.calc = TensorPotCalculator(args.model, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - start
    energy0 = atoms.get_potential_energy()
    fmax0 = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    print(f'{args.molecule} ({len(atoms)} atoms), {args.model}, {args.dtype}')
    print(f'before: energy {energy0:.4f} eV, max force {fmax0:.4f} eV/A')

    start, cpu = time.perf_counter(), time.process_time()
    trajectory = os.path.join(args.output, 'relax.traj')
    optimizer = BFGS(atoms, trajectory=trajectory + '.tmp', logfile=None)
    converged = optimizer.run(fmax=args.fmax, steps=args.steps)
    optimizer.close()
    os.replace(trajectory + '.tmp', trajectory)
    relax_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    energy1 = atoms.get_potential_energy()
    fmax1 = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    steps = optimizer.get_number_of_steps()
    print(f'after:  energy {energy1:.4f} eV, max force {fmax1:.4f} eV/A '
          f'({steps} BFGS steps, {"converged" if converged else "NOT converged"})')
    print(f'relaxation energy {energy1 - energy0:.4f} eV')
    final = os.path.join(args.output, 'relaxed.xyz')
    write(final + '.tmp', atoms, format='extxyz')
    os.replace(final + '.tmp', final)
    print(f'timings: model load {load_s:.2f} s, relaxation {relax_s:.2f} s wall, {cpu_s:.2f} s CPU '
          f'({relax_s / max(steps, 1) * 1000:.1f} ms per step)')
    print(f'wrote {trajectory} and {final}')
    return {'energy_before': energy0, 'energy_after': energy1, 'fmax_before': fmax0,
            'fmax_after': fmax1, 'steps': steps, 'converged': bool(converged)}


if __name__ == '__main__':
    main()
