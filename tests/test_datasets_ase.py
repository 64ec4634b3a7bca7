"""Datasets from a user's own extended-XYZ files and ASE databases (written here with ASE)."""
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

ase = pytest.importorskip('ase')
import ase.db  # noqa: E402
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.stress import voigt_6_to_full_3x3_stress  # noqa: E402

from pyg_tensorpot.datasets import (  # noqa: E402
    ASEDatabaseDataset,
    ExtXYZDataset,
    RawFileError,
    fit_reference_energies,
    random_split,
)
from pyg_tensorpot.datasets.ase_files import ENERGY_UNITS, LENGTH_UNITS  # noqa: E402
from pyg_tensorpot.utils.units import (  # noqa: E402
    BOHR_TO_ANGSTROM,
    HARTREE_TO_EV,
    KCAL_PER_MOL_TO_EV,
)


def reference_frames():
    """Three structures in eV / Angstrom: a periodic triclinic 3-atom cell with a Voigt stress,
    a 5-atom molecule (no cell, no stress, charge +1) and a periodic 8-atom cubic cell with a
    full 3x3 stress. Per-atom values have 6 decimals, so that extxyz's 8-decimal columns hold
    them exactly."""
    rng = np.random.default_rng(7)
    specs = [
        ('OH2', [[4.0, 0.0, 0.0], [0.5, 4.5, 0.0], [0.3, 0.2, 5.0]], True, 0),
        ('CH4', None, False, 1),
        ('Si8', [[5.43, 0.0, 0.0], [0.0, 5.43, 0.0], [0.0, 0.0, 5.43]], True, 0),
    ]
    frames = []
    for i, (formula, cell, pbc, charge) in enumerate(specs):
        n = len(Atoms(formula))
        stress = None
        if i == 0:
            stress = np.round(rng.normal(size=6) * 0.01, 6)
        elif i == 2:
            s = rng.normal(size=(3, 3)) * 0.01
            stress = np.round(s + s.T, 6)
        frames.append({
            'symbols': formula,
            'positions': np.round(rng.uniform(0.0, 3.5, size=(n, 3)), 6),
            'cell': np.zeros((3, 3)) if cell is None else np.array(cell),
            'pbc': pbc,
            'energy': float(np.round(rng.uniform(-80.0, -10.0), 9)),
            'forces': np.round(rng.normal(size=(n, 3)), 6),
            'stress': stress,
            'charge': charge,
            'q': np.round(rng.normal(size=n) * 0.3, 6),
            'dipole': np.round(rng.normal(size=3), 9),
        })
    return frames


def to_atoms(frame, energy_scale=1.0, length_scale=1.0, declare=None):
    """ASE atoms holding :obj:`frame` in units where 1 file unit = scale eV (or Angstrom)."""
    atoms = Atoms(frame['symbols'], positions=frame['positions'] / length_scale,
                  cell=frame['cell'] / length_scale, pbc=frame['pbc'])
    results = {'energy': frame['energy'] / energy_scale,
               'forces': frame['forces'] * length_scale / energy_scale}
    if frame['stress'] is not None:
        results['stress'] = frame['stress'] * length_scale ** 3 / energy_scale
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info['charge'] = frame['charge']
    atoms.info['dipole'] = frame['dipole']
    atoms.arrays['q'] = frame['q']
    if declare is not None:
        atoms.info['energy_unit'] = declare
    return atoms


def write_xyz(path, frames, **kwargs):
    ase.io.write(str(path), [to_atoms(f, **kwargs) for f in frames], format='extxyz')
    return str(path)


def full_stress(frame):
    s = frame['stress']
    return voigt_6_to_full_3x3_stress(s) if s.shape == (6,) else s


def check_sample(data, frame, atol):
    """``atol`` is 0 where every value is stored exactly (eV/Angstrom files, ASE databases)
    and covers the 8 decimals of extxyz's per-atom columns after a unit conversion."""
    def same(actual, expected):
        torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64),
                                   rtol=1e-12, atol=atol)
    n = len(frame['positions'])
    assert data.z.dtype == torch.long
    assert data.z.tolist() == Atoms(frame['symbols']).numbers.tolist()
    assert data.pos.dtype == torch.float64 and data.pos.shape == (n, 3)
    same(data.pos, frame['positions'])
    assert data.energy.shape == (1,) and data.energy.dtype == torch.float64
    same(data.energy, [frame['energy']])
    assert data.forces.shape == (n, 3)
    same(data.forces, frame['forces'])
    assert data.cell.shape == (1, 3, 3) and data.pbc.shape == (1, 3)
    same(data.cell[0], frame['cell'])
    assert data.pbc.dtype == torch.bool and data.pbc[0].tolist() == [frame['pbc']] * 3
    assert data.total_charge.tolist() == [float(frame['charge'])]
    assert data.stress.shape == (1, 3, 3)
    if frame['stress'] is None:
        assert not bool(data.has_stress) and not data.stress.any()
    else:
        assert bool(data.has_stress)
        same(data.stress[0], full_stress(frame))


def test_extxyz_round_trip_in_ev(tmp_path):
    frames = reference_frames()
    path = write_xyz(tmp_path / 'mine.xyz', frames)
    text = open(path).read()
    assert 'Lattice="4.0 0.0 0.0 0.5 4.5 0.0 0.3 0.2 5.0"' in text and 'pbc="T T T"' in text
    ds = ExtXYZDataset(str(tmp_path / 'root'), path, extra_keys=['q', 'dipole'], log=False)
    assert len(ds) == 3 and ds.num_atoms.tolist() == [3, 5, 8]
    for i, frame in enumerate(frames):
        data = ds[i]
        check_sample(data, frame, atol=0.0)
        assert data.idx.tolist() == [i]
        assert torch.equal(data.q, torch.tensor(frame['q']))
        assert data.dipole.shape == (1, 3)
        assert torch.equal(data.dipole[0], torch.tensor(frame['dipole']))
    assert ds.atomref() is None
    assert ds.resolved_units == {'energy': 'eV', 'length': 'Angstrom'}


@pytest.mark.parametrize('energy_unit,length_unit', [
    ('kcal/mol', 'Angstrom'), ('Hartree', 'Bohr'), ('kJ/mol', 'nm')])
def test_extxyz_units_are_converted(tmp_path, energy_unit, length_unit):
    frames = reference_frames()
    e, length = ENERGY_UNITS[energy_unit], LENGTH_UNITS[length_unit]
    path = write_xyz(tmp_path / 'units.xyz', frames, energy_scale=e, length_scale=length)
    ds = ExtXYZDataset(str(tmp_path), path, energy_unit=energy_unit, length_unit=length_unit,
                       log=False)
    # extxyz keeps 8 decimals of per-atom values in the file's units: after the conversion
    # that is at most 5e-9 times the largest factor (forces: energy / length).
    atol = 1e-8 * max(1.0, length, e / length)
    for i, frame in enumerate(frames):
        check_sample(ds[i], frame, atol=atol)
    assert KCAL_PER_MOL_TO_EV == pytest.approx(0.0433641, rel=1e-6)
    assert ENERGY_UNITS['Hartree'] == HARTREE_TO_EV and LENGTH_UNITS['Bohr'] == BOHR_TO_ANGSTROM
    assert ENERGY_UNITS['kJ/mol'] == pytest.approx(KCAL_PER_MOL_TO_EV / 4.184, rel=1e-15)


def test_units_declared_in_the_frames_are_used(tmp_path):
    frames = reference_frames()
    path = write_xyz(tmp_path / 'declared.xyz', frames, energy_scale=KCAL_PER_MOL_TO_EV,
                     declare='kcal/mol')
    ds = ExtXYZDataset(str(tmp_path), path, log=False)
    assert ds.resolved_units['energy'] == 'kcal/mol'
    for i, frame in enumerate(frames):
        check_sample(ds[i], frame, atol=1e-7)
    # Reloaded from the processed file, the units are still known.
    again = ExtXYZDataset(str(tmp_path), path, log=False)
    assert again.resolved_units['energy'] == 'kcal/mol'


def test_ase_database_round_trip(tmp_path):
    frames = reference_frames()
    path = str(tmp_path / 'mine.db')
    with ase.db.connect(path) as database:
        for frame in frames:
            atoms = to_atoms(frame)
            database.write(atoms, total_charge=frame['charge'], label='x',
                           data={'q': frame['q'], 'dipole': frame['dipole']})
    ds = ASEDatabaseDataset(str(tmp_path / 'root'), path, charge_key='total_charge',
                            extra_keys={'q': 'atom', 'dipole': 'structure'}, log=False)
    assert len(ds) == 3
    for i, frame in enumerate(frames):
        check_sample(ds[i], frame, atol=0.0)
        assert torch.equal(ds[i].q, torch.tensor(frame['q']))
        assert torch.equal(ds[i].dipole[0], torch.tensor(frame['dipole']))
    # A query selects rows; `q` has one row per atom, which is found without the mapping.
    small = ASEDatabaseDataset(str(tmp_path / 'root'), path, selection='natoms<6',
                               charge_key='total_charge', extra_keys=['q'], log=False)
    assert small.num_atoms.tolist() == [3, 5] and small[1].q.shape == (5,)


def test_virial_becomes_stress(tmp_path):
    frame = reference_frames()[2]
    atoms = Atoms(frame['symbols'], positions=frame['positions'], cell=frame['cell'], pbc=True)
    atoms.info['energy'] = frame['energy']
    atoms.arrays['forces'] = frame['forces']
    virial = np.array([[1.0, 0.2, 0.0], [0.2, -0.5, 0.1], [0.0, 0.1, 0.3]])
    atoms.info['virial'] = virial
    path = str(tmp_path / 'virial.xyz')
    ase.io.write(path, atoms, format='extxyz')
    ds = ExtXYZDataset(str(tmp_path), path, log=False)
    volume = 5.43 ** 3
    torch.testing.assert_close(ds[0].stress[0], torch.from_numpy(-virial / volume),
                               rtol=1e-12, atol=0.0)
    assert bool(ds[0].has_stress)


def test_loader_batches_cells_pbc_and_stress(tmp_path):
    frames = reference_frames()
    path = write_xyz(tmp_path / 'batch.xyz', frames)
    ds = ExtXYZDataset(str(tmp_path), path, extra_keys=['q', 'dipole'], log=False)
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False)))
    assert batch.num_graphs == 3 and batch.pos.shape == (16, 3)
    assert batch.cell.shape == (3, 3, 3) and batch.pbc.shape == (3, 3)
    assert batch.stress.shape == (3, 3, 3) and batch.has_stress.tolist() == [True, False, True]
    assert batch.energy.shape == (3,) and batch.total_charge.tolist() == [0.0, 1.0, 0.0]
    assert batch.dipole.shape == (3, 3) and batch.q.shape == (16,)
    assert batch.pbc.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    for i, frame in enumerate(frames):
        assert torch.equal(batch.cell[i], torch.tensor(frame['cell']))
    assert torch.equal(batch.stress[2], torch.from_numpy(full_stress(frames[2])))
    assert batch.batch.tolist() == [0] * 3 + [1] * 5 + [2] * 8


def many_molecules(path, num=40):
    """Molecules of H, C, O whose energies are exactly sum of -13.6 (H), -1030 (C), -2040
    (O) eV plus a small perturbation, for the reference-energy fit."""
    rng = np.random.default_rng(3)
    images = []
    for i in range(num):
        counts = rng.integers(1, 4, size=3)
        symbols = 'H' * counts[0] + 'C' * counts[1] + 'O' * counts[2]
        atoms = Atoms(symbols, positions=rng.uniform(0, 4, size=(len(symbols), 3)))
        energy = -13.6 * counts[0] - 1030.0 * counts[1] - 2040.0 * counts[2] \
            + rng.normal() * 0.01
        atoms.calc = SinglePointCalculator(atoms, energy=energy,
                                           forces=np.zeros((len(symbols), 3)))
        images.append(atoms)
    ase.io.write(str(path), images, format='extxyz')
    return str(path)


def test_split_saved_beside_processed_file_and_reloaded(tmp_path):
    path = many_molecules(tmp_path / 'mols.xyz')
    ds = ExtXYZDataset(str(tmp_path / 'root'), path, split=(0.5, 0.25, None), split_seed=4,
                       log=False)
    assert osp.dirname(ds.split_path) == osp.dirname(ds.processed_paths[0])
    assert osp.exists(ds.split_path)
    expected = random_split(40, 0.5, 0.25, None, seed=4)
    for key in ('idx_train', 'idx_val', 'idx_test'):
        assert torch.equal(ds.split[key], expected[key])
    train, val, test = ds.split_subsets()
    assert (len(train), len(val), len(test)) == (20, 10, 10)
    with np.load(ds.split_path) as f:
        assert f['idx_val'].tolist() == expected['idx_val'].tolist()
    again = ExtXYZDataset(str(tmp_path / 'root'), path, split=(0.5, 0.25, None),
                          split_seed=4, log=False)
    assert torch.equal(again.split['idx_test'], expected['idx_test'])
    other = ExtXYZDataset(str(tmp_path / 'root'), path, split=(20, 10, 10), split_seed=5,
                          log=False)
    assert other.split_path != ds.split_path
    assert not torch.equal(other.split['idx_train'], expected['idx_train'])


def test_reference_energies_fitted_on_training_split(tmp_path, monkeypatch):
    path = many_molecules(tmp_path / 'mols.xyz')
    root = str(tmp_path / 'root')
    ds = ExtXYZDataset(root, path, atomref='fit', split=(30, 5, 5), log=False)
    fitted = ds.atomref()
    assert fitted == fit_reference_energies(ds[ds.split['idx_train']])
    # Energies are the element sums plus noise of 0.01 eV: the fit recovers the references.
    for number, value in {1: -13.6, 6: -1030.0, 8: -2040.0}.items():
        assert fitted[number] == pytest.approx(value, abs=0.05)
    with open(ds.atomref_path) as f:
        assert json.load(f)['atomref_eV'] == {str(k): v for k, v in sorted(fitted.items())}

    def refuse(*args, **kwargs):
        raise AssertionError('the stored reference energies should have been reloaded')
    monkeypatch.setattr('pyg_tensorpot.datasets.reference_energies.fit_reference_energies',
                        refuse)
    again = ExtXYZDataset(root, path, atomref='fit', split=(30, 5, 5), log=False)
    assert again.atomref() == fitted


def test_reference_energies_given_in_the_file_unit(tmp_path):
    path = write_xyz(tmp_path / 'kcal.xyz', reference_frames(), energy_scale=KCAL_PER_MOL_TO_EV)
    ds = ExtXYZDataset(str(tmp_path), path, energy_unit='kcal/mol',
                       atomref={'H': -313.0, 6: -23_700.0, 'O': -47_000.0, 14: -180_000.0},
                       log=False)
    assert ds.atomref() == pytest.approx({1: -313.0 * KCAL_PER_MOL_TO_EV,
                                          6: -23_700.0 * KCAL_PER_MOL_TO_EV,
                                          8: -47_000.0 * KCAL_PER_MOL_TO_EV,
                                          14: -180_000.0 * KCAL_PER_MOL_TO_EV}, rel=1e-15)


def test_changed_file_is_processed_again(tmp_path):
    frames = reference_frames()
    path = write_xyz(tmp_path / 'mine.xyz', frames)
    first = ExtXYZDataset(str(tmp_path), path, log=False)
    frames[1]['energy'] = -1.5
    write_xyz(tmp_path / 'mine.xyz', frames)
    second = ExtXYZDataset(str(tmp_path), path, log=False)
    assert first[1].energy.item() != -1.5 and second[1].energy.item() == -1.5
    assert len(glob.glob(str(tmp_path / 'processed' / 'extxyz_mine_*.pt'))) == 2


# ---------------------------------------------------------------------- bad inputs
def broken_file(tmp_path, problem):
    """An extxyz file of three frames with :obj:`problem` in frame 1."""
    frames = reference_frames()
    images = [to_atoms(f) for f in frames]
    atoms = images[1]
    results = atoms.calc.results
    if problem == 'no forces':
        del results['forces']
    elif problem == 'nan energy':
        results['energy'] = float('nan')
    elif problem == 'nan forces':
        results['forces'][2, 1] = float('nan')
    elif problem == 'pbc without cell':
        atoms.pbc = True
    elif problem == 'mixed units':
        for i, other in enumerate(images):
            other.info['energy_unit'] = 'kcal/mol' if i == 1 else 'eV'
    elif problem == 'some frames declare':
        images[0].info['energy_unit'] = 'eV'
    elif problem == 'unknown declared unit':
        atoms.info['energy_unit'] = 'Rydberg'
    elif problem == 'virial without cell':
        atoms.info['virial'] = np.eye(3)
    elif problem == 'bad stress shape':
        atoms.info['REF_stress'] = np.ones(4)
    path = str(tmp_path / 'broken.xyz')
    ase.io.write(path, images, format='extxyz')
    return path


@pytest.mark.parametrize('problem,kwargs,message', [
    ('no forces', {}, r"frame 1 has no forces 'forces'.*forces_key=None"),
    ('nan energy', {}, r"frame 1: 'energy' contains NaN"),
    ('nan forces', {}, r"frame 1: 'forces' contains NaN"),
    ('pbc without cell', {}, r'frame 1 is periodic .* but has no cell'),
    ('mixed units', {}, r'mixed units: .*frame 0 declares the energy unit eV but .*frame 1 '
                        r'declares kcal/mol'),
    ('some frames declare', {}, r'mixed units: .*frame 0 declares .* frame 1 declares none'),
    ('unknown declared unit', {}, r"frame 1: energy_unit='Rydberg' is not a known energy"),
    (None, {'energy_unit': 'kcal/mol', 'forces_key': None}, None),
    ('virial without cell', {}, r"frame 1 has a virial 'virial' but no cell"),
    ('bad stress shape', {'stress_key': 'REF_stress'}, r"frame 1: 'REF_stress' has shape \[4\]"),
    (None, {'extra_keys': ['spin']}, r"frame 0 has no 'spin' \(asked for in extra_keys\); "
                                     r"it has \[.*'dipole'"),
    (None, {'energy_key': 'REF_energy'}, r"frame 0 has no energy 'REF_energy'"),
])
def test_bad_inputs_name_the_frame_and_key(tmp_path, problem, kwargs, message):
    path = broken_file(tmp_path, problem)
    if message is None:
        # A frame declaring eV while energy_unit says otherwise.
        with open(path) as f:
            text = f.read()
        with open(path, 'w') as f:
            f.write(text.replace('charge=0', 'charge=0 energy_unit=eV', 1))
        message = r"frame 0 declares the energy unit eV but energy_unit='kcal/mol'"
    with pytest.raises(RawFileError, match=message):
        ExtXYZDataset(str(tmp_path), path, log=False, **kwargs)
    assert not glob.glob(str(tmp_path / 'processed' / '*.pt'))


@pytest.mark.parametrize('kwargs,error,message', [
    ({'energy_unit': 'Rydberg'}, ValueError, r"unknown energy unit 'Rydberg'"),
    ({'length_unit': 'pm'}, ValueError, r"unknown length unit 'pm'"),
    ({'atomref': 'fit'}, ValueError, r"atomref='fit' .* pass split="),
    ({'atomref': 'mean'}, ValueError, r"atomref must be"),
    ({'split': (0.8, 0.1)}, ValueError, r'split must be \(train, val, test\)'),
    ({'split': 5}, ValueError, r'split must be \(train, val, test\)'),
    ({'atomref': {'Xx': -1.0}}, ValueError, r"atomref key 'Xx' is neither"),
    ({'atomref': {'H': 'low'}}, ValueError, r"atomref of H is not a number"),
    ({'extra_keys': ['pos']}, ValueError, r"extra key 'pos' clashes"),
    ({'extra_keys': ['atom_index']}, ValueError, r"'atom_index'.*connectivity"),
    ({'extra_keys': {'q': 'bond'}}, ValueError, r"extra_keys\['q'\] must be 'atom'"),
])
def test_bad_arguments(tmp_path, kwargs, error, message):
    path = write_xyz(tmp_path / 'ok.xyz', reference_frames())
    with pytest.raises(error, match=message):
        ExtXYZDataset(str(tmp_path), path, log=False, **kwargs)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing.xyz'):
        ExtXYZDataset(str(tmp_path), str(tmp_path / 'nothing.xyz'), log=False)
    garbage = tmp_path / 'garbage.xyz'
    garbage.write_text('3\nProperties=species:S:1:pos:R:3 energy=1\nH 0 0\n')
    with pytest.raises(RawFileError, match=r"cannot read '.*garbage.xyz' as extended XYZ"):
        ExtXYZDataset(str(tmp_path), str(garbage), log=False)
    not_db = tmp_path / 'not.db'
    not_db.write_bytes(b'this is not SQLite')
    with pytest.raises(RawFileError, match=r"cannot read '.*not.db' as an ASE database"):
        ASEDatabaseDataset(str(tmp_path), str(not_db), log=False)
    empty = tmp_path / 'empty.db'
    ase.db.connect(str(empty)).write(Atoms('H'))  # a row without energy
    with pytest.raises(RawFileError, match=r"row id 1 has no energy 'energy'"):
        ASEDatabaseDataset(str(tmp_path), str(empty), log=False)


def test_ase_is_optional(tmp_path, monkeypatch):
    code = ('import sys, pyg_tensorpot.datasets as d; d.ExtXYZDataset; '
            'assert "ase" not in sys.modules, "ase imported"')
    subprocess.run([sys.executable, '-c', code], check=True)
    path = write_xyz(tmp_path / 'ok.xyz', reference_frames())
    monkeypatch.setitem(sys.modules, 'ase', None)
    with pytest.raises(ImportError, match=r'pip install "pyg-tensorpot\[ase\]"'):
        ExtXYZDataset(str(tmp_path), path, log=False)
