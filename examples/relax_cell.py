"""Cell relaxation of a periodic water box: positions and lattice vectors together.

The box of ``--molecules`` waters from :func:`pyg_tensorpot.structures.water_box` (at
``--density`` g/cm^3) is relaxed with ``ase.filters.FrechetCellFilter`` and FIRE (or BFGS),
which use the calculator's stress (eV/A^3, computed by automatic differentiation with respect
to a strain) to change the cell, until the forces and the stress times the volume are below
``--fmax``. Volume, density and pressure (GPa, :math:`-\\mathrm{tr}\\,\\sigma / 3`) before and
after are printed; the trajectory and the final cell are written to ``--output``.

The default model is ``hipnn-ts-ani1x``, about 5x faster than ``tensornet-ani1x`` on a CPU.
The water box starts as a lattice of rigid molecules, not an equilibrated liquid, so the
relaxation heads for a nearby local minimum (an amorphous solid) of this floppy system. With
the defaults (300 steps, about 40 s on one core) the pressure goes from +1.8 GPa to about
-1.3 GPa and the density from 0.90 to about 0.95 g/cm^3; the box keeps densifying slowly
(600 steps: 0.98 g/cm^3, largest force 0.046 eV/A, cell not yet converged), so the script
reports "NOT converged" unless ``--steps`` is raised or ``--fmax`` loosened.

    python examples/relax_cell.py
    python examples/relax_cell.py --molecules 27 --steps 500 --fmax 0.02
"""
import os

# The optimiser's small matrices (the 3x3 cell, a 3N x 3N Hessian guess) gain nothing from
# BLAS threads, whose spinning slowed this script 6x on a busy machine.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: g/cm^3 of one water molecule per A^3.
WATER_DENSITY_PER_MOLECULE_A3 = 18.015 / 6.02214076e23 * 1e24


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--molecules', type=int, default=27, help='number of waters')
    parser.add_argument('--density', type=float, default=0.9, help='initial density, g/cm^3')
    parser.add_argument('--model', default='hipnn-ts-ani1x',
                        help='pretrained name, Hub id or folder (default: hipnn-ts-ani1x)')
    parser.add_argument('--dtype', choices=['float64', 'float32'], default='float64')
    parser.add_argument('--fmax', type=float, default=0.05,
                        help='criterion on forces (eV/A) and on stress x volume (eV)')
    parser.add_argument('--optimizer', choices=['BFGS', 'FIRE'], default='FIRE')
    parser.add_argument('--steps', type=int, default=300, help='at most this many steps')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='relax_cell_output', help='output folder')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ase import Atoms, units
    from ase.filters import FrechetCellFilter
    from ase.io import write
    from ase.optimize import BFGS, FIRE

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.structures import water_box

    os.makedirs(args.output, exist_ok=True)
    z, pos, cell = water_box(args.molecules, density=args.density, seed=args.seed)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    start = time.perf_counter()
    atoms.calc = TensorPotCalculator(args.model, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - start
    print(f'{args.molecules} waters ({len(atoms)} atoms), {args.model}, {args.dtype}')

    def report(label):
        stress = atoms.get_stress(voigt=False)
        pressure = -float(np.trace(stress)) / 3 / units.GPa
        volume = atoms.get_volume()
        density = args.molecules * WATER_DENSITY_PER_MOLECULE_A3 / volume
        fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
        print(f'{label}: volume {volume:.2f} A^3 ({density:.3f} g/cm^3), pressure '
              f'{pressure:+.3f} GPa, energy {atoms.get_potential_energy():.4f} eV, '
              f'max force {fmax:.4f} eV/A, cell lengths {np.round(atoms.cell.lengths(), 3)}')
        return {'volume': volume, 'density': density, 'pressure_GPa': pressure,
                'fmax': fmax, 'energy': atoms.get_potential_energy()}

    before = report('before')
    trajectory = os.path.join(args.output, 'relax_cell.traj')
    start, cpu = time.perf_counter(), time.process_time()
    optimizer = {'BFGS': BFGS, 'FIRE': FIRE}[args.optimizer](
        FrechetCellFilter(atoms), trajectory=trajectory + '.tmp', logfile=None)
    converged = optimizer.run(fmax=args.fmax, steps=args.steps)
    optimizer.close()
    os.replace(trajectory + '.tmp', trajectory)
    relax_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    after = report('after ')
    steps = optimizer.get_number_of_steps()
    status = 'converged' if converged else 'NOT converged (raise --steps)'
    print(f'{steps} {args.optimizer} steps, {status}')
    final = os.path.join(args.output, 'relaxed_cell.extxyz')
    write(final + '.tmp', atoms, format='extxyz')
    os.replace(final + '.tmp', final)
    print(f'timings: model load {load_s:.2f} s, relaxation {relax_s:.1f} s wall, {cpu_s:.1f} s '
          f'CPU ({relax_s / max(steps, 1) * 1000:.0f} ms per step, energy + forces + stress)')
    print(f'wrote {trajectory} and {final}')
    return {'before': before, 'after': after, 'steps': steps, 'converged': bool(converged)}


if __name__ == '__main__':
    main()
