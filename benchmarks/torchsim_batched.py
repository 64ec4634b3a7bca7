"""Batched MD in TorchSim against one ASE run per molecule: steps per second for 32 molecules.

The 32 closed-shell C/H/N/O molecules of ``examples/torchsim_batched_md.py`` (3 to 14 atoms,
252 in all) advance ``--steps`` velocity-Verlet steps of 0.5 fs (NVE, so that neither side pays
for random numbers), with one model object shared by both sides:

* **TorchSim**: one state holding every molecule, TorchSim's ``nve`` integrator and
  :class:`pyg_tensorpot.deploy.torchsim.TensorPotModel`: one potential call per step for all.
* **ASE**: 32 ``Atoms``, each with its own
  :class:`~pyg_tensorpot.calculator.TensorPotCalculator` and ``VelocityVerlet``, run one after
  the other: 32 potential calls per step.

"Steps/s" is how many steps *all 32 molecules* advance per second. The two sides take turns
(``--repeats`` rounds) so that load from other jobs hits both alike; medians are compared.
Before timing, the energies of both sides are checked to agree. Prints one table and writes
``benchmarks/results/torchsim_batched.json`` (``--json``)::

    python benchmarks/torchsim_batched.py --threads 1
    python benchmarks/torchsim_batched.py --model hipnn-ts-ani1x --dtype float64
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import finish_record, record_header  # noqa: E402  (benchmarks/ is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(os.path.dirname(HERE), 'examples', 'torchsim_batched_md.py')


def g2_molecules(count: int):
    # The example's molecules, so that the benchmark times what the example runs.
    spec = importlib.util.spec_from_file_location('torchsim_batched_md', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.g2_molecules(count)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='tensornet-ani1x')
    parser.add_argument('--dtype', choices=['float32', 'float64'], default='float32')
    parser.add_argument('--molecules', type=int, default=32)
    parser.add_argument('--steps', type=int, default=20, help='MD steps per timed block')
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds per side')
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'torchsim_batched.json'))
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error('--steps and --repeats must be at least 1')
    if args.threads:
        torch.set_num_threads(args.threads)

    import torch_sim as ts
    from ase import units as ase_units
    from ase.md import velocitydistribution
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.deploy.torchsim import TensorPotModel
    from pyg_tensorpot.hub import from_pretrained

    dtype = getattr(torch, args.dtype)
    # One model object for both sides: the comparison is of the drivers, not of two models.
    model = from_pretrained(args.model).to(dtype).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    wrapper = TensorPotModel(model)
    molecules = g2_molecules(args.molecules)
    num_atoms = sum(len(atoms) for atoms in molecules)

    # ASE side: every molecule with its own calculator and integrator.
    rng = np.random.default_rng(args.seed)
    draw = getattr(velocitydistribution, 'thermalize_momenta', None) or \
        velocitydistribution.MaxwellBoltzmannDistribution
    runs = []
    for atoms in molecules:
        atoms = atoms.copy()
        atoms.calc = TensorPotCalculator(model, dtype=dtype)
        draw(atoms, temperature_K=300.0, rng=rng)
        runs.append(VelocityVerlet(atoms, args.timestep * ase_units.fs, logfile=None))
    ase_energies = torch.tensor([run.atoms.get_potential_energy() for run in runs],
                                dtype=torch.float64)

    # TorchSim side: all molecules in one state.
    units = ts.units.MetalUnits
    state = ts.io.atoms_to_state(molecules, wrapper.device, wrapper.dtype)
    init, step = ts.integrators.nve(
        wrapper, dt=torch.tensor(args.timestep * 1e-3 * units.time, dtype=dtype),
        kT=torch.tensor(300.0 * units.temperature, dtype=dtype), seed=args.seed)
    md = init(state)
    # Same geometries, same model: the energies agree to float32/64 rounding of ~1e3 eV.
    energy_gap = float((md.energy.double() - ase_energies.double()).abs().max())

    def torchsim_block() -> float:
        nonlocal md
        start = time.perf_counter()
        for _ in range(args.steps):
            md = step(md)
        return time.perf_counter() - start

    def ase_block() -> float:
        start = time.perf_counter()
        for run in runs:
            run.run(args.steps)
        return time.perf_counter() - start

    header = record_header()  # the load before the timed blocks
    started = time.perf_counter()
    md = step(md)  # warm-up of both sides (first-call allocations)
    for run in runs:
        run.run(1)
    batched, separate = [], []
    for _ in range(args.repeats):
        batched.append(torchsim_block())
        separate.append(ase_block())
    ts_rate = args.steps / statistics.median(batched)
    ase_rate = args.steps / statistics.median(separate)
    finite = bool(torch.isfinite(md.energy).all()) and all(
        np.isfinite(run.atoms.get_potential_energy()) for run in runs)
    record = dict(
        header, torch_sim=importlib.metadata.version('torch-sim-atomistic'), **{
        'model': args.model, 'dtype': args.dtype, 'molecules': len(molecules),
        'atoms': num_atoms, 'steps_per_block': args.steps, 'repeats': args.repeats,
        'timestep_fs': args.timestep, 'initial_energy_max_abs_difference_eV': energy_gap,
        'finite': finite,
        'torchsim_batched': {'steps_per_s': ts_rate, 'ms_per_step': 1000 / ts_rate,
                             'block_s': batched},
        'ase_separate': {'steps_per_s': ase_rate, 'ms_per_step': 1000 / ase_rate,
                         'block_s': separate},
        'speedup': ts_rate / ase_rate})
    finish_record(record, args.json, started)
    print(table(record))
    return record


def table(record: dict) -> str:
    """The Markdown table of a :func:`main` record."""
    rows = [('TorchSim, one batched state', record['torchsim_batched']),
            ('ASE, one run per molecule', record['ase_separate'])]
    lines = [f"{record['molecules']} molecules ({record['atoms']} atoms), {record['model']}, "
             f"{record['dtype']}, {record['torch_threads']} torch thread(s); steps/s of all "
             f"molecules, median of {record['repeats']} blocks of {record['steps_per_block']} "
             f"steps; initial energies agree to "
             f"{record['initial_energy_max_abs_difference_eV']:.1e} eV",
             '', '| driver | steps/s | ms/step | batched faster by |', '|---|---|---|---|']
    for k, (name, side) in enumerate(rows):
        ratio = f"**{record['speedup']:.2f}x**" if k == 0 else ''
        lines.append(f"| {name} | {side['steps_per_s']:.2f} | {side['ms_per_step']:.0f} | "
                     f"{ratio} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
