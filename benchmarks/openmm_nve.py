"""NVE molecular dynamics in OpenMM with the package's model: energy conservation and speed.

The model runs as an :class:`openmm.PythonForce`
(:func:`pyg_tensorpot.deploy.openmm.create_simulation`) on OpenMM's Reference platform (double
precision integration). Two systems: an ethanol molecule (the first frame of the MD17 sample
shipped with the package) and a periodic box of ``--water-molecules`` waters
(:func:`pyg_tensorpot.structures.water_box`). Velocities are drawn at 300 K, ``--equilibrate``
Langevin steps follow (a :class:`openmm.CompoundIntegrator` switches to Verlet in the same
context), then ``--steps`` velocity-Verlet steps of ``--timestep`` fs, the total energy read
every ``--report`` steps.

The drift is the slope of a linear fit of the total energy per atom against time
(meV/atom/ps), the fluctuation its standard deviation about that fit (meV/atom), as in
``benchmarks/md_nve.py`` (ASE). Speed: steps per second of the NVE loop (energy reads
excluded) and, for comparison, the median time of a bare
:func:`~pyg_tensorpot.models.properties.compute_properties` call on the same atoms; their
difference is what OpenMM and the PythonForce bridge add per step.

Prints a table and writes a JSON record (``--json``)::

    python benchmarks/openmm_nve.py --threads 1
    python benchmarks/openmm_nve.py --dtypes float32 --steps 2000 --water-molecules 27
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import drift_statistics, finish_record, read_record, record_header  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def systems(args):
    import ase.io

    import pyg_tensorpot
    from pyg_tensorpot.structures import water_box
    path = os.path.join(os.path.dirname(pyg_tensorpot.__file__), 'data',
                        'md17_ethanol_sample_2000.extxyz')
    atoms = ase.io.read(path, index=0)
    yield 'ethanol', torch.tensor(atoms.numbers), torch.tensor(atoms.positions), None
    if args.water_molecules:
        z, pos, cell = water_box(args.water_molecules, seed=args.seed)
        yield f'water x{args.water_molecules} (periodic)', z, pos, cell


def nve_run(model, name: str, z, pos, cell, args) -> dict:
    import openmm
    from openmm import unit

    from pyg_tensorpot.deploy.openmm import EV_TO_KJ_PER_MOL, create_simulation
    from pyg_tensorpot.models.properties import compute_properties
    dt = args.timestep * unit.femtoseconds
    integrator = openmm.CompoundIntegrator()
    integrator.addIntegrator(openmm.VerletIntegrator(dt))
    integrator.addIntegrator(openmm.LangevinMiddleIntegrator(300 * unit.kelvin,
                                                             1 / unit.picosecond, dt))
    simulation = create_simulation(model, z, pos, integrator, cell=cell,
                                   platform=args.platform)
    context = simulation.context
    context.setVelocitiesToTemperature(300 * unit.kelvin, args.seed)
    if args.equilibrate:
        integrator.setCurrentIntegrator(1)
        simulation.step(args.equilibrate)
    integrator.setCurrentIntegrator(0)
    kj = unit.kilojoule_per_mole
    # kJ/mol -> eV per atom.
    scale = 1.0 / EV_TO_KJ_PER_MOL / z.numel()
    totals, temperatures, wall = [], [], 0.0
    dof = 3 * z.numel() - 3
    gas_constant = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(kj / unit.kelvin)
    for _ in range(args.steps // args.report + 1):
        state = context.getState(getEnergy=True)
        kinetic = state.getKineticEnergy().value_in_unit(kj)
        totals.append((state.getPotentialEnergy().value_in_unit(kj) + kinetic) * scale)
        # T = 2 KE / (dof R), per mole.
        temperatures.append(2 * kinetic / (dof * gas_constant))
        if len(totals) > args.steps // args.report:
            break
        start = time.perf_counter()
        simulation.step(args.report)
        wall += time.perf_counter() - start
    time_ps = np.arange(len(totals)) * args.report * args.timestep / 1000
    pbc = None if cell is None else torch.ones(3, dtype=torch.bool)
    bare = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        compute_properties(model, z, pos, cell=cell, pbc=pbc)
        bare.append(time.perf_counter() - start)
    steps = args.report * (len(totals) - 1)
    return {'system': name, 'dtype': str(next(model.parameters()).dtype).replace('torch.', ''),
            'atoms': int(z.numel()), 'platform': args.platform, 'steps': steps,
            'timestep_fs': args.timestep, 'equilibration_steps': args.equilibrate,
            **drift_statistics(totals, time_ps),
            'mean_temperature_K': float(np.mean(temperatures)), 'steps_per_s': steps / wall,
            'ms_per_step': wall / steps * 1000,
            'bare_compute_properties_ms': statistics.median(bare) * 1000}


def table(record: dict) -> str:
    lines = ['| system | dtype | atoms | steps x fs | drift (meV/atom/ps) | fluctuation '
             '(meV/atom) | max-min (meV/atom) | mean T (K) | steps/s | ms/step | bare model '
             'call (ms) |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in record['runs']:
        lines.append(f"| {r['system']} | {r['dtype']} | {r['atoms']} | {r['steps']} x "
                     f"{r['timestep_fs']} | {r['drift_mev_per_atom_per_ps']:+.3f} | "
                     f"{r['fluctuation_mev_per_atom']:.3f} | "
                     f"{r['max_minus_min_mev_per_atom']:.3f} | {r['mean_temperature_K']:.0f} | "
                     f"{r['steps_per_s']:.1f} | {r['ms_per_step']:.1f} | "
                     f"{r['bare_compute_properties_ms']:.1f} |")
    return '\n'.join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='tensornet-ani1x')
    parser.add_argument('--dtypes', default='float64,float32')
    parser.add_argument('--water-molecules', type=int, default=8,
                        help='waters in the periodic box; 0 for none (default: 8)')
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--equilibrate', type=int, default=50)
    parser.add_argument('--timestep', type=float, default=0.5, help='fs (default: 0.5)')
    parser.add_argument('--report', type=int, default=10,
                        help='read the total energy every this many steps (default: 10)')
    parser.add_argument('--platform', default='Reference')
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'openmm_nve.json'),
                        help="JSON record ('' for none)")
    parser.add_argument('--render', metavar='JSON', help='print the tables of a record and exit')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        print(table(record))
        return record
    if args.steps < args.report or args.report < 1:
        parser.error('--steps must be at least --report, which must be positive')
    if args.threads:
        torch.set_num_threads(args.threads)

    import openmm

    from pyg_tensorpot.hub import from_pretrained
    record = record_header(model=args.model, openmm=openmm.__version__, runs=[])
    started = time.perf_counter()
    for name in (n.strip() for n in args.dtypes.split(',') if n.strip()):
        model = from_pretrained(args.model).to(getattr(torch, name))
        for system, z, pos, cell in systems(args):
            result = nve_run(model, system, z, pos, cell, args)
            print(json.dumps(result), flush=True)
            record['runs'].append(result)
    finish_record(record, args.json, started)
    print(table(record))
    return record


if __name__ == '__main__':
    main()
