"""NVE energy conservation of a model in every MD engine available: the same water box, the
same start, velocity Verlet in each engine.

The start: ``--molecules`` waters from :func:`pyg_tensorpot.structures.water_box`, Maxwell-
Boltzmann velocities at 300 K (``--seed``), ``--equilibrate`` Langevin steps with the ASE
calculator; every engine then runs ``--steps`` velocity-Verlet steps of ``--timestep`` fs from
that state with its own integrator. The drift is the slope of a linear fit of the total energy
per atom against time (meV/atom/ps), the fluctuation its standard deviation about the fit.

Engines (one function each, registered in :data:`ENGINES`; an engine whose package is
missing is reported as skipped):

* ``ase``: :class:`pyg_tensorpot.calculator.TensorPotCalculator` with ASE's VelocityVerlet
  (the reference);
* ``metatomic-ase``: the model exported with
  :func:`pyg_tensorpot.deploy.metatomic.export_metatomic`, run by metatomic's own ASE
  calculator;
* ``lammps``: LAMMPS (``fix nve``) with the model through ``fix external``
  (:class:`pyg_tensorpot.deploy.lammps.LammpsSimulation`).

Prints a table and writes a JSON record (``--json``)::

    python benchmarks/engine_nve.py --threads 1
    python benchmarks/engine_nve.py --engines lammps,metatomic-ase --molecules 8 --steps 100

To add an engine: write ``run_<engine>(atoms, args, workdir) -> (totals_eV, wall_s)``, which
integrates from :obj:`atoms` (positions, velocities, masses in ASE units) and returns the
total energy after every step (the start included), and register it in :data:`ENGINES`.
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, Tuple  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import drift_statistics, finish_record, read_record, record_header  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def start_state(args):
    """The water box, thermalised at 300 K and equilibrated with the ASE calculator."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.structures import water_box

    z, pos, cell = water_box(args.molecules, seed=args.seed)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    rng = np.random.default_rng(args.seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=rng)
    Stationary(atoms)
    if args.equilibrate:
        atoms.calc = TensorPotCalculator(args.model, dtype=torch.float64)
        Langevin(atoms, args.timestep * units.fs, temperature_K=300.0,
                 friction=0.02 / units.fs, rng=rng, fixcm=False,
                 logfile=None).run(args.equilibrate)
        atoms.calc = None
    return atoms


def _ase_verlet(atoms, calc, args) -> Tuple[np.ndarray, float]:
    from ase import units
    from ase.md.verlet import VelocityVerlet
    atoms = atoms.copy()
    atoms.calc = calc
    totals = []
    dyn = VelocityVerlet(atoms, args.timestep * units.fs, logfile=None)
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    start = time.perf_counter()
    dyn.run(args.steps)
    return np.array(totals), time.perf_counter() - start


def run_ase(atoms, args, workdir) -> Tuple[np.ndarray, float]:
    """ASE's VelocityVerlet with the package's own calculator (float64)."""
    from pyg_tensorpot.calculator import TensorPotCalculator
    return _ase_verlet(atoms, TensorPotCalculator(args.model, dtype=torch.float64), args)


def run_metatomic_ase(atoms, args, workdir) -> Tuple[np.ndarray, float]:
    """ASE's VelocityVerlet with metatomic's calculator on the exported model (float64)."""
    # Imported first: it makes metatensor importable after torch_geometric (see
    # pyg_tensorpot.deploy.metatomic.torchscript_index_select).
    from pyg_tensorpot.deploy.metatomic import export_metatomic, load_metatomic
    from metatomic_ase import MetatomicCalculator  # isort: skip
    path = export_metatomic(args.model, os.path.join(workdir, 'model.pt'))
    # The stress is not needed for NVE; metatomic computes it with the forces by default.
    return _ase_verlet(atoms, MetatomicCalculator(load_metatomic(path)), args)


def run_lammps(atoms, args, workdir) -> Tuple[np.ndarray, float]:
    """LAMMPS' fix nve, the model through fix external (float64)."""
    from pyg_tensorpot.deploy.lammps import LammpsSimulation
    record = os.path.join(workdir, 'etotal.txt')
    with LammpsSimulation.from_atoms(atoms, args.model, timestep=args.timestep) as sim:
        sim.nve()
        sim.commands(['variable pyg_etotal equal etotal',
                      f'fix pyg_record all ave/time 1 1 1 v_pyg_etotal file {record} '
                      "format ' %.12f'"])
        start = time.perf_counter()
        sim.run(args.steps)
        wall = time.perf_counter() - start
    totals = np.loadtxt(record, comments='#', ndmin=2)[:, 1]
    return totals, wall


#: Engine name -> function running NVE from a start state (see the module docstring).
ENGINES: Dict[str, Callable] = {
    'ase': run_ase,
    'metatomic-ase': run_metatomic_ase,
    'lammps': run_lammps,
}


def analyse(totals: np.ndarray, num_atoms: int, args) -> dict:
    per_atom = np.asarray(totals, dtype=np.float64) / num_atoms
    time_ps = np.arange(len(per_atom)) * args.timestep / 1000
    return dict(drift_statistics(per_atom, time_ps), initial_total_energy_ev=float(totals[0]))


def table(record: dict) -> str:
    lines = ['| engine | atoms | steps x fs | drift (meV/atom/ps) | fluctuation (meV/atom) | '
             'max - min (meV/atom) | ms/step |', '|---|---|---|---|---|---|---|']
    for row in record['engines']:
        if 'skipped' in row:
            lines.append(f"| {row['engine']} | skipped: {row['skipped']} | | | | | |")
            continue
        lines.append(
            f"| {row['engine']} | {row['atoms']} | {row['steps']} x {row['timestep_fs']} | "
            f"{row['drift_mev_per_atom_per_ps']:+.4f} | {row['fluctuation_mev_per_atom']:.4f} "
            f"| {row['max_minus_min_mev_per_atom']:.4f} | {row['ms_per_step']:.0f} |")
    return '\n'.join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='tensornet-ani1x')
    parser.add_argument('--engines', default=','.join(ENGINES))
    parser.add_argument('--molecules', type=int, default=32)
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--equilibrate', type=int, default=100)
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'engine_nve.json'))
    parser.add_argument('--render', metavar='JSON', help='print the tables of a record and exit')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        print(table(record))
        return record
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [name.strip() for name in args.engines.split(',') if name.strip()]
    unknown = sorted(set(names) - set(ENGINES))
    if unknown:
        parser.error(f'unknown engines {unknown}; known: {sorted(ENGINES)}')
    started = time.perf_counter()
    record = record_header(model=args.model, molecules=args.molecules,
                           equilibration_steps=args.equilibrate, seed=args.seed, engines=[])
    atoms = start_state(args)
    for name in names:
        row = {'engine': name}
        with tempfile.TemporaryDirectory() as workdir:
            try:
                totals, wall = ENGINES[name](atoms, args, workdir)
            except ImportError as error:
                row['skipped'] = f'not installed ({error})'.replace('\n', ' ')[:120]
                print(json.dumps(row), flush=True)
                record['engines'].append(row)
                continue
        row.update({'atoms': len(atoms), 'steps': args.steps, 'timestep_fs': args.timestep,
                    'dtype': 'float64', 'ms_per_step': wall / args.steps * 1000})
        row.update(analyse(totals, len(atoms), args))
        print(json.dumps(row), flush=True)
        record['engines'].append(row)
    finish_record(record, args.json, started)
    print(table(record))
    return record


if __name__ == '__main__':
    main()
