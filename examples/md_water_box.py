"""Molecular dynamics of liquid water: Langevin NVT, then NVE, with the ASE calculator.

A periodic box of ``--molecules`` randomly oriented waters at 1 g/cm^3
(:func:`pyg_tensorpot.structures.water_box`) is thermalised at ``--temperature`` with a
Langevin thermostat and then run at constant energy with velocity Verlet. Every step is
logged; the trajectory (every ``--interval`` steps, ``ase.io.Trajectory``), a CSV of the
energies and a plot of total, potential and kinetic energy against time are written to
``--output``, and the NVE energy drift (slope of a linear fit) and fluctuation are printed.

The default model is ``hipnn-ts-ani1x``, about 5x faster than ``tensornet-ani1x`` on a CPU,
so that the default run takes about a minute on two cores.

    python examples/md_water_box.py
    python examples/md_water_box.py --model tensornet-ani1x --nve-steps 2000 --dtype float32
"""
import argparse
import csv
import os
import time

import numpy as np
import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--molecules', type=int, default=64, help='number of waters')
    parser.add_argument('--model', default='hipnn-ts-ani1x',
                        help='pretrained name, Hub id or folder (default: hipnn-ts-ani1x)')
    parser.add_argument('--dtype', choices=['float64', 'float32'], default='float64')
    parser.add_argument('--temperature', type=float, default=300.0, help='K')
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--nvt-steps', type=int, default=200, help='Langevin steps')
    parser.add_argument('--nve-steps', '--steps', type=int, default=200, dest='nve_steps',
                        help='velocity Verlet steps')
    parser.add_argument('--friction', type=float, default=0.02, help='Langevin friction, 1/fs')
    parser.add_argument('--interval', type=int, default=10, help='trajectory frame interval')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='md_water_box_output', help='output folder')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from ase import Atoms, units
    from ase.io import Trajectory
    from ase.md import velocitydistribution
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.structures import water_box

    os.makedirs(args.output, exist_ok=True)
    z, pos, cell = water_box(args.molecules, seed=args.seed)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    start = time.perf_counter()
    atoms.calc = TensorPotCalculator(args.model, dtype=getattr(torch, args.dtype))
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(args.seed)
    thermalize = getattr(velocitydistribution, 'thermalize_momenta', None) or \
        velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=args.temperature, rng=rng)
    velocitydistribution.Stationary(atoms)
    print(f'{args.molecules} waters ({len(atoms)} atoms, box {atoms.cell.lengths()[0]:.2f} A), '
          f'{args.model}, {args.dtype}, {args.timestep} fs steps')

    rows = []
    trajectory_path = os.path.join(args.output, 'md.traj')
    trajectory = Trajectory(trajectory_path + '.tmp', 'w', atoms)

    def record(dynamics, phase, offset):
        potential = atoms.get_potential_energy()
        kinetic = atoms.get_kinetic_energy()
        rows.append({'phase': phase, 'time_fs': (offset + dynamics.nsteps) * args.timestep,
                     'potential_eV': potential, 'kinetic_eV': kinetic,
                     'total_eV': potential + kinetic, 'temperature_K': atoms.get_temperature()})

    timings = {}
    nvt = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                   friction=args.friction / units.fs, rng=rng, fixcm=False,
                   logfile=None)
    nvt.attach(record, interval=1, dynamics=nvt, phase='NVT', offset=0)
    nvt.attach(trajectory.write, interval=args.interval)
    start, cpu = time.perf_counter(), time.process_time()
    nvt.run(args.nvt_steps)
    timings['nvt_s'] = time.perf_counter() - start

    nve = VelocityVerlet(atoms, args.timestep * units.fs, logfile=None)
    first_nve = len(rows)
    nve.attach(record, interval=1, dynamics=nve, phase='NVE', offset=args.nvt_steps)
    nve.attach(trajectory.write, interval=args.interval)
    start = time.perf_counter()
    nve.run(args.nve_steps)
    timings['nve_s'] = time.perf_counter() - start
    timings['cpu_s'] = time.process_time() - cpu
    trajectory.close()
    os.replace(trajectory_path + '.tmp', trajectory_path)

    csv_path = os.path.join(args.output, 'energies.csv')
    with open(csv_path + '.tmp', 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(csv_path + '.tmp', csv_path)

    time_ps = np.array([r['time_fs'] for r in rows]) / 1000
    total = np.array([r['total_eV'] for r in rows]) / len(atoms)
    nve_t, nve_e = time_ps[first_nve:], total[first_nve:]
    drift = float(np.polyfit(nve_t, nve_e, 1)[0]) * 1000 if len(nve_t) > 1 else float('nan')
    fluctuation = float(nve_e.std()) * 1000 if len(nve_e) else float('nan')
    temperature = float(np.mean([r['temperature_K'] for r in rows[first_nve:]] or [np.nan]))
    print(f'NVE: mean temperature {temperature:.0f} K, total-energy drift {drift:+.3f} '
          f'meV/atom/ps, fluctuation (std) {fluctuation:.3f} meV/atom over '
          f'{args.nve_steps * args.timestep:.0f} fs')

    plot_path = os.path.join(args.output, 'energies.png')
    _plot(rows, len(atoms), plot_path)
    steps = args.nvt_steps + args.nve_steps
    print(f'timings: model load {load_s:.2f} s, NVT {timings["nvt_s"]:.1f} s, NVE '
          f'{timings["nve_s"]:.1f} s wall, {timings["cpu_s"]:.1f} s CPU '
          f'({(timings["nvt_s"] + timings["nve_s"]) / max(steps, 1) * 1000:.0f} ms per step)')
    print(f'wrote {trajectory_path}, {csv_path} and {plot_path}')
    return {'drift_mev_per_atom_per_ps': drift, 'fluctuation_mev_per_atom': fluctuation,
            'temperature_K': temperature, **timings}


def _plot(rows, num_atoms: int, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    time_fs = np.array([r['time_fs'] for r in rows])
    figure, axes = plt.subplots(figsize=(7, 4))
    for key, label in (('total_eV', 'total'), ('potential_eV', 'potential'),
                       ('kinetic_eV', 'kinetic')):
        values = np.array([r[key] for r in rows]) / num_atoms
        axes.plot(time_fs, values - values[0], label=label)
    nve = [r['time_fs'] for r in rows if r['phase'] == 'NVE']
    if nve:
        axes.axvline(nve[0], color='grey', linestyle=':', label='NVT | NVE')
    axes.set_xlabel('time (fs)')
    axes.set_ylabel('energy - initial value (eV/atom)')
    axes.legend()
    figure.tight_layout()
    figure.savefig(path + '.tmp.png', dpi=120)
    plt.close(figure)
    os.replace(path + '.tmp.png', path)


if __name__ == '__main__':
    main()
