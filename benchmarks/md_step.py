"""MD step time with the ASE calculator and with TorchSim, with and without a Verlet skin
(issue 12).

A periodic box of ``--molecules`` waters (500 = 1,500 atoms by default,
:func:`pyg_tensorpot.structures.water_box`), velocities at 300 K, ASE velocity-Verlet steps of
0.5 fs with :class:`~pyg_tensorpot.calculator.TensorPotCalculator`, and TorchSim's NVE steps
with :class:`~pyg_tensorpot.deploy.torchsim.TensorPotModel` (``--drivers``), for every model of
``--models`` and every skin of ``--skins`` (Angstrom; 0 searches the neighbours every step).
The skins take turns, ``--steps`` steps each, over ``--rounds`` rounds, so that load from
other jobs hits them alike; every skin runs its own copy of the same trajectory. The time
spent in the neighbour search (the fresh search of the model's graph, or the Verlet list's
build and filter) is measured inside the step, and its share of the step reported, with
the number of builds. Then the neighbour step alone, on the same box and dtype, ``--repeats``
times in turns: a fresh search at the cutoff (what skin 0 does every step), a reuse of the
Verlet list (the filter to the cutoff, what a skin does on most steps) and a build at cutoff
plus skin (what it does on the others).

Prints a table and writes a JSON record (``--json``)::

    python benchmarks/md_step.py
    python benchmarks/md_step.py --molecules 64 --steps 5 --rounds 2
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import finish_record, read_record, record_header  # noqa: E402
import pyg_tensorpot.nn.graph as graph_module  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Timer:
    """Wraps a function and adds up the wall time spent in it."""

    def __init__(self, function):
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def timed_turns(runs, search: Timer, args, advance) -> None:
    # The skins take turns, args.steps steps each, over args.rounds rounds; the search time
    # of each turn is read from the Verlet list's timer, or the fresh search's for skin 0.
    for _ in range(args.rounds):
        for entry in runs:
            timer = entry['timer'] or search
            before_search = timer.seconds
            started = time.perf_counter()
            advance(entry)
            entry['step_s'].append((time.perf_counter() - started) / args.steps)
            entry['search_s'] += timer.seconds - before_search
            entry['steps'] += args.steps


def run(model_name: str, skins, args) -> list:
    from ase import Atoms, units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator
    z, pos, cell = water_box(args.molecules, seed=args.seed)
    start = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    MaxwellBoltzmannDistribution(start, temperature_K=300, rng=np.random.default_rng(args.seed))
    Stationary(start)
    runs = []
    search = Timer(graph_module.neighbor_pairs)
    graph_module.neighbor_pairs = search  # the fresh search inside the model's graph
    try:
        for skin in skins:
            atoms = start.copy()
            atoms.calc = TensorPotCalculator(model_name, dtype=getattr(torch, args.dtype),
                                             skin=skin)
            timer = None
            if atoms.calc.verlet is not None:
                timer = Timer(atoms.calc.verlet.pairs)
                atoms.calc.verlet.pairs = timer
            dynamics = VelocityVerlet(atoms, args.timestep * units.fs)
            dynamics.run(args.warmup)
            runs.append({'skin': skin, 'atoms': atoms, 'dynamics': dynamics, 'timer': timer,
                         'step_s': [], 'search_s': 0.0, 'steps': 0})
        timed_turns(runs, search, args, lambda entry: entry['dynamics'].run(args.steps))
    finally:
        graph_module.neighbor_pairs = search.function
    results = []
    for entry in runs:
        verlet = entry['atoms'].calc.verlet
        step = float(np.median(entry['step_s']))
        results.append({
            'driver': 'ase', 'model': model_name, 'skin_A': entry['skin'],
            'atoms': len(entry['atoms']),
            'median_step_s': step, 'steps_per_s': 1.0 / step,
            'search_share': entry['search_s'] / (sum(entry['step_s']) * args.steps),
            'builds': None if verlet is None else verlet.num_builds,
            'calls': None if verlet is None else verlet.num_calls,
            'timed_steps': entry['steps'], 'warmup_steps': args.warmup})
    base = results[0]['median_step_s']
    for result in results:
        result['speedup_vs_skin0'] = base / result['median_step_s']
    return results


def run_torchsim(model_name: str, skins, args) -> list:
    # The same box as one TorchSim state: TorchSim's NVE integrator wraps the atoms back into
    # the cell every step, which the Verlet list takes as no motion (its rebases).
    import torch_sim as ts

    from pyg_tensorpot.deploy.torchsim import TensorPotModel
    dtype = getattr(torch, args.dtype)
    z, pos, cell = water_box(args.molecules, seed=args.seed)
    units = ts.units.MetalUnits
    search = Timer(graph_module.neighbor_pairs)
    graph_module.neighbor_pairs = search
    runs = []
    try:
        for skin in skins:
            model = TensorPotModel(model_name, dtype=dtype, skin=skin)
            state = ts.SimState(positions=pos.to(dtype), masses=_masses(z).to(dtype),
                                cell=cell.to(dtype).T.unsqueeze(0), pbc=True, atomic_numbers=z)
            timer = None
            if model.verlet is not None:
                timer = Timer(model.verlet.pairs)
                model.verlet.pairs = timer
            init, step = ts.integrators.nve(
                model, dt=torch.tensor(args.timestep * 1e-3 * units.time, dtype=dtype),
                kT=torch.tensor(300.0 * units.temperature, dtype=dtype), seed=args.seed)
            md = init(state)
            for _ in range(args.warmup):
                md = step(md)
            runs.append({'skin': skin, 'model': model, 'md': md, 'step': step, 'timer': timer,
                         'step_s': [], 'search_s': 0.0, 'steps': 0})
        def advance(entry):
            for _ in range(args.steps):
                entry['md'] = entry['step'](entry['md'])
        timed_turns(runs, search, args, advance)
    finally:
        graph_module.neighbor_pairs = search.function
    results = []
    for entry in runs:
        verlet = entry['model'].verlet
        step = float(np.median(entry['step_s']))
        results.append({
            'driver': 'torchsim', 'model': model_name, 'skin_A': entry['skin'],
            'atoms': int(z.numel()), 'median_step_s': step, 'steps_per_s': 1.0 / step,
            'search_share': entry['search_s'] / (sum(entry['step_s']) * args.steps),
            'builds': None if verlet is None else verlet.num_builds,
            'calls': None if verlet is None else verlet.num_calls,
            'rebases': None if verlet is None else verlet.num_rebases,
            'finite': bool(torch.isfinite(entry['md'].energy).all()),
            'timed_steps': entry['steps'], 'warmup_steps': args.warmup})
    base = results[0]['median_step_s']
    for result in results:
        result['speedup_vs_skin0'] = base / result['median_step_s']
    return results


def _masses(z: torch.Tensor) -> torch.Tensor:
    from ase.data import atomic_masses
    return torch.as_tensor(atomic_masses[z.numpy()], dtype=torch.float64)


def search_alone(cutoff: float, skins, args) -> list:
    from pyg_tensorpot.nn.neighbors import neighbor_pairs
    from pyg_tensorpot.nn.verlet import VerletList
    z, pos, cell = water_box(args.molecules, seed=args.seed)
    pos, cell = pos.to(getattr(torch, args.dtype)), cell.to(getattr(torch, args.dtype))
    lists = {skin: VerletList(cutoff, skin) for skin in skins if skin > 0}
    for verlet in lists.values():
        verlet.pairs(pos, cell=cell, z=z)
    cases = [('fresh search', 0.0, lambda: neighbor_pairs(pos, cutoff, cell=cell))]
    for skin, verlet in lists.items():
        cases.append(('Verlet reuse', skin, lambda verlet=verlet: verlet.pairs(pos, cell=cell,
                                                                              z=z)))
        cases.append(('build at cutoff + skin', skin,
                      lambda skin=skin: neighbor_pairs(pos, cutoff + skin, cell=cell)))
    times = [[] for _ in cases]
    for _ in range(args.repeats):
        for k, (_, _, function) in enumerate(cases):
            started = time.perf_counter()
            function()
            times[k].append(time.perf_counter() - started)
    assert all(verlet.num_builds == 1 for verlet in lists.values())
    base = float(np.median(times[0]))
    return [{'case': name, 'skin_A': skin, 'cutoff_A': cutoff, 'atoms': int(z.numel()),
             'median_ms': 1000 * float(np.median(t)), 'ratio_vs_fresh': float(np.median(t)) / base,
             'repeats': args.repeats} for (name, skin, _), t in zip(cases, times)]


def search_table(rows) -> str:
    lines = ['| neighbour step | skin (A) | ms | vs fresh search |', '|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['case']} | {r['skin_A']:g} | {r['median_ms']:.1f} | "
                     f"{r['ratio_vs_fresh']:.2f}x |")
    return '\n'.join(lines)


def table(rows) -> str:
    lines = ['| driver | model | skin (A) | steps/s | ms/step | neighbour search share | '
             'builds / calls | speed-up vs skin 0 |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        builds = '-' if r['builds'] is None else f"{r['builds']} / {r['calls']}"
        if r.get('rebases'):
            builds += f" ({r['rebases']} rebases)"
        lines.append(f"| {r.get('driver', 'ase')} | {r['model']} | {r['skin_A']:g} | "
                     f"{r['steps_per_s']:.2f} | "
                     f"{1000 * r['median_step_s']:.0f} | {100 * r['search_share']:.0f}% | "
                     f"{builds} | {r['speedup_vs_skin0']:.2f}x |")
    return '\n'.join(lines)


def render(record: dict) -> str:
    return table(record['runs']) + '\n' + search_table(record['search'])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--models', default='tensornet-ani1x,hipnn-ts-ani1x')
    parser.add_argument('--drivers', default='ase,torchsim',
                        help='ase (VelocityVerlet with the calculator) and/or torchsim (NVE '
                        'with TensorPotModel)')
    parser.add_argument('--skins', default='0,0.5,1.0', help='Angstrom; the first is the base')
    parser.add_argument('--molecules', type=int, default=500)
    parser.add_argument('--dtype', default='float32')
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--steps', type=int, default=5, help='steps per turn')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=15, help='of the search alone')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'md_step.json'))
    parser.add_argument('--render', metavar='JSON', help='print the tables of a record and exit')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        print(render(record))
        return record
    if args.threads:
        torch.set_num_threads(args.threads)
    skins = [float(s) for s in args.skins.split(',')]
    record = record_header(dtype=args.dtype, timestep_fs=args.timestep,
                           molecules=args.molecules, runs=[])
    started = time.perf_counter()
    drivers = {'ase': run, 'torchsim': run_torchsim}
    chosen = [d.strip() for d in args.drivers.split(',') if d.strip()]
    unknown = sorted(set(chosen) - set(drivers))
    if unknown:
        parser.error(f'unknown drivers {unknown}; choose from {sorted(drivers)}')
    for name in [m.strip() for m in args.models.split(',') if m.strip()]:
        for driver in chosen:
            rows = drivers[driver](name, skins, args)
            for row in rows:
                print(json.dumps(row), flush=True)
            record['runs'].extend(rows)
    from pyg_tensorpot.hub import from_pretrained
    cutoff = from_pretrained(args.models.split(',')[0].strip()).cutoff
    record['search'] = search_alone(cutoff, skins, args)
    finish_record(record, args.json, started)
    print(render(record))
    return record


if __name__ == '__main__':
    main()
