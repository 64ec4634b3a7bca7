"""10 ps NVE of a drug-like molecule in vacuum with the ASE calculator (issue 18, report).

For every ``--models`` and ``--dtypes``: the molecule of ``--smiles`` (ibuprofen by default: a
drug with 15 heavy atoms, an aromatic ring, a carboxylic acid and four rotatable bonds, not in
the training data of the shipped models) is embedded by RDKit (ETKDG v3 + MMFF94, lowest of
``--conformers``), relaxed with the model (BFGS to ``--fmax``), given Maxwell-Boltzmann
velocities at ``--temperature``, equilibrated with ``--equilibrate`` Langevin steps, freed of
its centre-of-mass motion and rotation, and run for ``--time-ps`` of velocity Verlet with steps
of ``--timestep`` fs.

Reported per run, from the total energy sampled every ``--stride`` steps:

* drift: slope of a least-squares line through the total energy (meV/ps for the molecule and
  meV/atom/ps), fluctuation about it and max - min;
* blow-up checks: every energy finite, the covalent bonds of the SMILES graph all kept and no
  new bond formed at any sampled frame (bonded: closer than 1.25 x the sum of the covalent
  radii), the largest force and the shortest distance seen;
* the mean temperature and the wall time per step.

``--models`` takes registered names, Hub ids or model folders, and ``ani1x-ensemble``: the
ANI-1x 8-model ensemble (torchani 2.2.4 and the NeuroChem files of ``--ensemble-dir``, see
``examples/pretrain_ani1x_distillation.py``; its networks run in float32 whatever ``--dtypes``
says, so it runs once). The record goes to ``--json``
(``benchmarks/results/molecule_nve.json``), keeping the earlier record's runs of the models not
run again; ``--render FILE`` prints the table of a record::

    python benchmarks/molecule_nve.py --threads 1
    PYTHONPATH=/tmp/ani python benchmarks/molecule_nve.py --models ani1x-ensemble --threads 1
    python benchmarks/molecule_nve.py --models hipnn-ts-ani1x --dtypes float32 --time-ps 1
    python benchmarks/molecule_nve.py --render benchmarks/results/molecule_nve.json
"""
import os

# Spinning OpenMP threads slow everything down several times on a shared machine.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Dict, List  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import (  # noqa: E402
    drift_statistics, finish_record, kept_rows, read_record, record_header)
from pretrained import DEFAULT_ENSEMBLE_DIR  # noqa: E402
from pyg_tensorpot.utils.bonds import bonded_pairs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IBUPROFEN = 'CC(C)Cc1ccc(cc1)C(C)C(=O)O'
def smiles_bonds(mol) -> np.ndarray:
    """The ``[N, N]`` bond matrix of the RDKit molecule's graph (hydrogens explicit)."""
    n = mol.GetNumAtoms()
    bonds = np.zeros((n, n), dtype=bool)
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[i, j] = bonds[j, i] = True
    return bonds


#: The --models name of the ANI-1x ensemble.
ENSEMBLE = 'ani1x-ensemble'


def ensemble_calculator(model_dir: str):
    """An ASE calculator of the ANI-1x ensemble (energy in eV, forces in eV/A)."""
    from ase.calculators.calculator import Calculator, all_changes
    from pretrained import load_teacher  # torchani, only for the ensemble
    teacher = load_teacher(model_dir)

    class EnsembleCalculator(Calculator):
        implemented_properties = ['energy', 'forces']

        def calculate(self, atoms=None, properties=('energy', ), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            species = teacher.species(self.atoms.numbers)[None]
            energy, forces = teacher(species, torch.from_numpy(self.atoms.positions)[None])
            self.results = {'energy': float(energy[0]), 'forces': forces[0].numpy()}

    return EnsembleCalculator()


def nve_run(model: str, dtype: torch.dtype, args) -> Dict:
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    from pyg_tensorpot.calculator import TensorPotCalculator
    from pyg_tensorpot.sampling.conformers import embed_conformers

    mol, z, conformers, _ = embed_conformers(args.smiles, args.conformers, seed=args.seed)
    bonds = smiles_bonds(mol)
    atoms = Atoms(numbers=z, positions=conformers[0])
    atoms.calc = (ensemble_calculator(args.ensemble_dir) if model == ENSEMBLE
                  else TensorPotCalculator(model, dtype=dtype))
    if not np.array_equal(bonded_pairs(z, atoms.positions), bonds):
        raise RuntimeError('the MMFF conformer does not match the SMILES bonds')
    relax = BFGS(atoms, logfile=None)
    relax.run(fmax=args.fmax, steps=500)
    relaxed_fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    rng = np.random.default_rng(args.seed)
    draw = getattr(vd, 'thermalize_momenta', None) or vd.MaxwellBoltzmannDistribution
    draw(atoms, temperature_K=args.temperature, rng=rng)
    if args.equilibrate:
        Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                 friction=0.01 / units.fs, rng=rng, fixcm=False,
                 logfile=None).run(args.equilibrate)
    # NVE of the molecule at rest: no drift of the centre of mass, no overall rotation
    vd.Stationary(atoms)
    vd.ZeroRotation(atoms)

    totals: List[float] = []
    temperatures: List[float] = []
    checks = {'bonds_kept': True, 'first_broken_step': None, 'max_force': 0.0,
              'min_distance': np.inf}
    steps_done = [0]

    def record():
        totals.append(atoms.get_total_energy())
        temperatures.append(atoms.get_temperature())
        pos = atoms.positions
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        np.fill_diagonal(dist, np.inf)
        checks['min_distance'] = min(checks['min_distance'], float(dist.min()))
        checks['max_force'] = max(checks['max_force'],
                                  float(np.linalg.norm(atoms.get_forces(), axis=1).max()))
        if checks['bonds_kept'] and not np.array_equal(bonded_pairs(z, pos), bonds):
            checks['bonds_kept'] = False
            checks['first_broken_step'] = steps_done[0]
        steps_done[0] += args.stride

    steps = int(round(args.time_ps * 1000 / args.timestep))
    dyn = VelocityVerlet(atoms, args.timestep * units.fs, logfile=None)
    dyn.attach(record, interval=args.stride)
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    time_ps = np.arange(len(totals)) * args.stride * args.timestep / 1000
    per_atom = drift_statistics(np.asarray(totals) / len(atoms), time_ps)
    slope = np.polyfit(time_ps, np.asarray(totals), 1)[0]
    return {'model': model, 'dtype': str(dtype).replace('torch.', ''), 'smiles': args.smiles,
            'name': args.name, 'atoms': len(atoms), 'steps': steps, 'timestep_fs': args.timestep,
            'time_ps': steps * args.timestep / 1000, 'stride': args.stride,
            'equilibration_steps': args.equilibrate, 'temperature_K': args.temperature,
            'relaxed_fmax_eV_per_A': relaxed_fmax,
            'drift_mev_per_ps': float(slope) * 1000, **per_atom,
            'fluctuation_mev': per_atom['fluctuation_mev_per_atom'] * len(atoms),
            'max_minus_min_mev': per_atom['max_minus_min_mev_per_atom'] * len(atoms),
            'mean_temperature_K': float(np.mean(temperatures)),
            'bonds_kept': checks['bonds_kept'], 'first_broken_step': checks['first_broken_step'],
            'max_force_eV_per_A': checks['max_force'], 'min_distance_A': checks['min_distance'],
            'ms_per_step': wall / steps * 1000}


def table(record: Dict) -> str:
    lines = ['| model | dtype | atoms | steps x fs | drift (meV/ps) | drift (meV/atom/ps) | '
             'fluctuation (meV) | max-min (meV) | mean T (K) | bonds kept | max force (eV/A) '
             '| shortest distance (A) | ms/step |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in record['runs']:
        kept = 'yes' if r['bonds_kept'] and r['finite'] else (
            f"no (step {r['first_broken_step']})" if not r['bonds_kept'] else 'not finite')
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['atoms']} | {r['steps']} x {r['timestep_fs']} "
            f"| {r['drift_mev_per_ps']:+.2f} | {r['drift_mev_per_atom_per_ps']:+.3f} | "
            f"{r['fluctuation_mev']:.2f} | {r['max_minus_min_mev']:.2f} | "
            f"{r['mean_temperature_K']:.0f} | {kept} | {r['max_force_eV_per_A']:.2f} | "
            f"{r['min_distance_A']:.3f} | {r['ms_per_step']:.1f} |")
    return '\n'.join(lines)


#: The metrics entry of the model cards.
CARD_KEY = 'NVE molecular dynamics of a drug-like molecule (no blow-up, drift)'


def write_cards(record: Dict) -> None:
    """Puts each registered model's runs of :obj:`record` into its shipped ``config.json``
    metrics and model card."""
    from pretrained import update_model_card
    from pyg_tensorpot.hub import PRETRAINED_MODELS
    ensemble = [r for r in record['runs'] if r['model'] == ENSEMBLE]
    for name in sorted({r['model'] for r in record['runs']} & set(PRETRAINED_MODELS)):
        runs = [r for r in record['runs'] if r['model'] == name] + ensemble
        first = runs[0]
        dates = ', '.join(sorted({r.get('date', record['date']) for r in runs}))
        note = (f"Measured {dates} by benchmarks/molecule_nve.py: {first['name']} "
                f"({first['smiles']}), relaxed with the model, {first['equilibration_steps']} "
                f"Langevin steps at {first['temperature_K']:g} K, then {first['time_ps']:g} ps "
                f"of velocity Verlet ({first['timestep_fs']:g} fs) with TensorPotCalculator; "
                "bonds kept: every bond of the SMILES graph kept and no new one "
                '(pyg_tensorpot.utils.bonds).')
        entry = {'table': table({'runs': runs}), 'note': note, 'results': runs}
        print(f'updated {update_model_card(name, {CARD_KEY: entry})}')


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--smiles', default=IBUPROFEN)
    parser.add_argument('--name', default='ibuprofen')
    parser.add_argument('--models', default='tensornet-ani1x,hipnn-ts-ani1x')
    parser.add_argument('--dtypes', default='float64,float32')
    parser.add_argument('--conformers', type=int, default=8)
    parser.add_argument('--fmax', type=float, default=0.01, help='relaxation criterion, eV/A')
    parser.add_argument('--temperature', type=float, default=300.0, help='K')
    parser.add_argument('--equilibrate', type=int, default=1000, help='Langevin steps')
    parser.add_argument('--time-ps', type=float, default=10.0)
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--stride', type=int, default=10)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--ensemble-dir', default=DEFAULT_ENSEMBLE_DIR,
                        help=f'NeuroChem files of the ANI-1x ensemble (for {ENSEMBLE})')
    parser.add_argument('--json', default=os.path.join(HERE, 'results', 'molecule_nve.json'))
    parser.add_argument('--render', metavar='JSON', help='print the table of a record and exit')
    parser.add_argument('--write-cards', action='store_true',
                        help="put the registered models' runs into their shipped model cards "
                        '(with --render: those of that record)')
    args = parser.parse_args(argv)
    if args.render:
        record = read_record(args.render)
        print(table(record))
        if args.write_cards:
            write_cards(record)
        return record
    for name in ('time_ps', 'timestep'):
        if getattr(args, name) <= 0:
            parser.error(f'--{name.replace("_", "-")} must be positive')
    if args.stride < 1 or args.equilibrate < 0:
        parser.error('--stride must be at least 1 and --equilibrate at least 0')
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(',') if name.strip()]
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    record = record_header(runs=kept_rows(args.json, models))
    started = time.perf_counter()
    for model in models:
        # the ensemble's networks are float32 whatever the dtype: one run
        for dtype in ([torch.float32] if model == ENSEMBLE else dtypes):
            result = nve_run(model, dtype, args)
            result['date'] = record['date']
            print(json.dumps(result), flush=True)
            record['runs'].append(result)
    finish_record(record, args.json, started)
    print(table(record))
    if args.write_cards:
        write_cards(record)
    return record


if __name__ == '__main__':
    main()
