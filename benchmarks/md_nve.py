"""NVE molecular dynamics with the ASE calculator: energy conservation and calculator overhead.

Two measurements, on periodic boxes of water from :func:`pyg_tensorpot.structures.water_box`:

* **Drift**: ``--drift-molecules`` waters, ``--equilibrate`` Langevin steps at 300 K, then
  ``--steps`` velocity-Verlet steps of ``--timestep`` fs, for every ``--dtypes``. The drift is
  the slope of a linear fit of the total energy per atom against time (meV/atom/ps), the
  fluctuation its standard deviation about that fit (meV/atom).
* **Overhead**: ``--timing-molecules`` waters (343 = 7^3 waters, 1,029 atoms by default): the
  wall time of one MD step with the calculator (``VelocityVerlet.run(1)``: ASE's state check,
  tensor conversion, the model, numpy results, the integrator) against a bare
  :func:`~pyg_tensorpot.models.properties.compute_properties` call on the same tensors,
  interleaved (one of each in turn, ``--repeats`` times) so that load from other jobs hits
  both alike; medians are compared.
* **Fixed cost**: the same comparison with a trivial model (a harmonic well, microseconds), on
  the same atoms, ``--fixed-repeats`` times: what the calculator and ASE add per step in
  milliseconds, independent of the model and of the machine's load.

Prints a table, writes a JSON record (``--json``) and appends the table with the date, the
machine, its load and the torch threads to ``benchmarks/README.md`` (``--readme``)::

    python benchmarks/md_nve.py --threads 1
    python benchmarks/md_nve.py --model tensornet-ani1x --dtypes float64 --steps 200
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import drift_statistics, finish_record, record_header  # noqa: E402
from pyg_tensorpot.utils.files import atomic_write_text  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def water_atoms(num_molecules: int, seed: int = 0):
    from ase import Atoms

    from pyg_tensorpot.structures import water_box
    z, pos, cell = water_box(num_molecules, seed=seed)
    return Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)


def thermalize(atoms, temperature_K: float, rng) -> None:
    from ase.md import velocitydistribution as vd
    draw = getattr(vd, 'thermalize_momenta', None) or vd.MaxwellBoltzmannDistribution
    draw(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)


def drift_run(model: str, dtype: torch.dtype, args) -> dict:
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator

    atoms = water_atoms(args.drift_molecules, seed=args.seed)
    atoms.calc = TensorPotCalculator(model, dtype=dtype)
    rng = np.random.default_rng(args.seed)
    thermalize(atoms, 300.0, rng)
    if args.equilibrate:
        Langevin(atoms, args.timestep * units.fs, temperature_K=300.0, friction=0.02 / units.fs,
                 rng=rng, fixcm=False, logfile=None).run(args.equilibrate)
    totals, temperatures = [], []

    def record():
        totals.append(atoms.get_total_energy() / len(atoms))
        temperatures.append(atoms.get_temperature())

    dyn = VelocityVerlet(atoms, args.timestep * units.fs, logfile=None)
    dyn.attach(record, interval=1)
    start = time.perf_counter()
    dyn.run(args.steps)
    wall = time.perf_counter() - start
    time_ps = np.arange(len(totals)) * args.timestep / 1000
    return {'model': model, 'dtype': str(dtype).replace('torch.', ''),
            'atoms': len(atoms), 'steps': args.steps, 'timestep_fs': args.timestep,
            'equilibration_steps': args.equilibrate,
            **drift_statistics(totals, time_ps),
            'mean_temperature_K': float(np.mean(temperatures)),
            'ms_per_step': wall / args.steps * 1000}


def overhead_run(model: str, dtype: torch.dtype, args) -> dict:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.models.properties import compute_properties

    atoms = water_atoms(args.timing_molecules, seed=args.seed)
    calc = TensorPotCalculator(model, dtype=dtype)
    atoms.calc = calc
    thermalize(atoms, 300.0, np.random.default_rng(args.seed))
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(atoms.positions, dtype=dtype)
    cell = torch.as_tensor(atoms.cell.array, dtype=dtype)
    pbc = torch.as_tensor(atoms.pbc)

    def bare():
        compute_properties(calc.model, z, pos, cell=cell, pbc=pbc,
                           properties=('energy', 'forces'), create_graph=False, num_graphs=1)

    dyn = VelocityVerlet(atoms, args.timestep * units.fs, logfile=None)
    dyn.run(1)
    bare()
    md_times, bare_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        dyn.run(1)
        md_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - start)
    md, raw = statistics.median(md_times), statistics.median(bare_times)
    return {'model': model, 'dtype': str(dtype).replace('torch.', ''), 'atoms': len(atoms),
            'repeats': args.repeats, 'md_step_ms': md * 1000, 'bare_call_ms': raw * 1000,
            'overhead_percent': (md / raw - 1) * 100,
            'md_step_min_ms': min(md_times) * 1000, 'bare_call_min_ms': min(bare_times) * 1000}


class _Harmonic(torch.nn.Module):
    # E = sum |r|^2 / 2: a model that costs next to nothing, to time everything around it.
    def forward(self, z, pos, batch=None, edge_index=None, cell=None, pbc=None,
                total_charge=None, num_graphs=None):
        return 0.5 * (pos**2).sum().reshape(1)


def fixed_cost_run(args) -> dict:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.models.properties import compute_properties

    atoms = water_atoms(args.timing_molecules, seed=args.seed)
    calc = TensorPotCalculator(_Harmonic().double().eval())
    atoms.calc = calc
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(atoms.positions)
    cell = torch.as_tensor(atoms.cell.array)
    pbc = torch.as_tensor(atoms.pbc)
    dyn = VelocityVerlet(atoms, 0.01 * units.fs, logfile=None)
    dyn.run(1)
    md_times, bare_times = [], []
    for _ in range(args.fixed_repeats):
        start = time.perf_counter()
        dyn.run(1)
        md_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        compute_properties(calc.model, z, pos, cell=cell, pbc=pbc,
                           properties=('energy', 'forces'), create_graph=False, num_graphs=1)
        bare_times.append(time.perf_counter() - start)
    md, raw = statistics.median(md_times), statistics.median(bare_times)
    return {'atoms': len(atoms), 'repeats': args.fixed_repeats, 'md_step_ms': md * 1000,
            'bare_call_ms': raw * 1000, 'fixed_cost_ms': (md - raw) * 1000}


def table(record: dict) -> str:
    lines = ['| model | dtype | atoms | steps x fs | drift (meV/atom/ps) | fluctuation '
             '(meV/atom) | max-min (meV/atom) | mean T (K) | ms/step |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in record['drift']:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['atoms']} | {r['steps']} x "
                     f"{r['timestep_fs']} | {r['drift_mev_per_atom_per_ps']:+.3f} | "
                     f"{r['fluctuation_mev_per_atom']:.3f} | "
                     f"{r['max_minus_min_mev_per_atom']:.3f} | {r['mean_temperature_K']:.0f} | "
                     f"{r['ms_per_step']:.0f} |")
    lines += ['', '| model | dtype | atoms | MD step, calculator (ms) | bare compute_properties '
              '(ms) | overhead |', '|---|---|---|---|---|---|']
    for r in record['overhead']:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['atoms']} | {r['md_step_ms']:.1f} | "
                     f"{r['bare_call_ms']:.1f} | {r['overhead_percent']:+.1f} % |")
    fixed = record.get('fixed_cost')
    if fixed:
        model_ms = min(r['bare_call_ms'] for r in record['overhead']) if record['overhead'] \
            else float('nan')
        lines += ['', textwrap.fill(
            f"Fixed cost of the calculator and ASE per MD step at {fixed['atoms']} atoms "
            f"(trivial model, median of {fixed['repeats']}): {fixed['fixed_cost_ms']:.2f} ms "
            f"({fixed['fixed_cost_ms'] / model_ms * 100:.2f} % of the fastest model call "
            'above).', width=96)]
    return '\n'.join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='hipnn-ts-ani1x',
                        help='the fastest shipped model by default: it is the hardest test of '
                        'the calculator overhead (default: hipnn-ts-ani1x)')
    parser.add_argument('--dtypes', default='float64,float32')
    parser.add_argument('--drift-molecules', type=int, default=64)
    parser.add_argument('--timing-molecules', type=int, default=343)
    parser.add_argument('--steps', type=int, default=1000)
    parser.add_argument('--equilibrate', type=int, default=200)
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--fixed-repeats', type=int, default=200)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=os.path.join(HERE, 'md_nve.json'))
    parser.add_argument('--readme', default=os.path.join(HERE, 'README.md'),
                        help="README to append the table to ('' for none)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(',') if name.strip()]
    started = time.perf_counter()
    record = record_header(drift=[], overhead=[])
    record['fixed_cost'] = fixed_cost_run(args)
    print(json.dumps(record['fixed_cost']), flush=True)
    for dtype in dtypes:
        result = overhead_run(args.model, dtype, args)
        print(json.dumps(result), flush=True)
        record['overhead'].append(result)
    for dtype in dtypes:
        result = drift_run(args.model, dtype, args)
        print(json.dumps(result), flush=True)
        record['drift'].append(result)
    finish_record(record, args.json, started)
    text = table(record)
    print(text)
    if args.readme:
        with open(args.readme) as handle:
            readme = handle.read()
        load = ', '.join(f'{v:.1f}' for v in record['load_average_before'])
        after = ', '.join(f'{v:.1f}' for v in record['load_average_after'])
        threads = record['torch_threads']
        intro = (
            f"{record['date']}; {record['machine']}, {record['logical_cpus']} logical CPUs, "
            f"torch {record['torch']} with {threads} thread{'s' if threads != 1 else ''}; load "
            f"average (1, 5, 15 min) {load} at the start, {after} at the end (other jobs "
            f"running); {record['wall_s'] / 60:.1f} min in all. Drift: "
            f"{args.drift_molecules} waters, {args.equilibrate} Langevin steps at 300 K, then "
            f"{args.steps} velocity-Verlet steps of {args.timestep} fs; slope of a linear fit "
            "of the total energy, and the standard deviation about it. Overhead: median of "
            f"{args.repeats} interleaved MD steps with the calculator and bare "
            "`compute_properties` calls on the same tensors.")
        section = ('\n\n## NVE molecular dynamics with the ASE calculator '
                   '(`benchmarks/md_nve.py`)\n\n' + textwrap.fill(intro, width=96) + '\n\n'
                   + text + '\n')
        atomic_write_text(readme.rstrip('\n') + section, args.readme)
    return record


if __name__ == '__main__':
    main()
