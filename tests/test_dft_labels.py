"""Our wB97X/6-31G(d) labels: the PySCF settings reproduce COMP6 S66x8, forces are minus the
gradient in eV/A, the labeller resumes and writes atomically, and the dataset of the labels
serves them with a fixed split by molecule."""
import glob
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from pyg_tensorpot.datasets.organic_dft import (
    KINDS,
    OrganicDFT,
    conformation_split,
    molecule_bucket,
    molecule_id,
)
from pyg_tensorpot.dft import DFTSettings, PySCFLabeller, compute_label, iter_labels, read_label
from pyg_tensorpot.utils.units import BOHR_TO_ANGSTROM, HARTREE_TO_EV

S66X8 = osp.join(osp.dirname(__file__), 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
BUNDLED = osp.join(osp.dirname(osp.dirname(__file__)), 'pyg_tensorpot', 'data', 'organic_dft',
                   'labels')
KCAL_PER_HARTREE = 627.509474
WATER_Z = np.array([8, 1, 1])
WATER_POS = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])


@pytest.fixture(scope='module')
def pyscf():
    module = pytest.importorskip('pyscf')
    module.lib.num_threads(1)
    return module


@pytest.fixture(scope='module')
def water(pyscf):
    return compute_label(WATER_Z, WATER_POS)


def test_settings_are_those_of_dft_md():
    s = DFTSettings()
    assert (s.xc, s.basis, s.cart, s.grid_level, s.conv_tol, s.auxbasis) == (
        'wb97x', '6-31g*', True, 4, 1e-10, 'def2-universal-jkfit')
    with pytest.raises(ValueError, match='closed-shell'):
        DFTSettings(spin=1)


def test_coarse_grid_start_gives_the_label_of_the_settings(pyscf, water, monkeypatch):
    # The SCF without a guess starts on a coarse grid and finishes on the settings' grid: the
    # same label as a start on the settings' grid (to its 1e-10 Hartree convergence), and
    # the grids of the finished mean field are the settings' own.
    from pyg_tensorpot.dft import labeller
    plain = compute_label(WATER_Z, WATER_POS, coarse_start=False)
    assert abs(water['energy_hartree'] - plain['energy_hartree']) < 1e-9
    np.testing.assert_allclose(water['forces'], plain['forces'], atol=1e-5)
    levels = []
    kernel = labeller.build_mean_field

    def spy(*args, **kwargs):
        mf = kernel(*args, **kwargs)
        run = mf.kernel

        def recorded(*a, **k):
            levels.append((mf.grids.level, mf.conv_tol))
            return run(*a, **k)
        mf.kernel = recorded
        return mf
    monkeypatch.setattr(labeller, 'build_mean_field', spy)
    compute_label(WATER_Z, WATER_POS)
    assert levels == [(labeller.GUESS_GRID_LEVEL, labeller.GUESS_CONV_TOL), (4, 1e-10)]
    levels.clear()
    compute_label(WATER_Z, WATER_POS, dm0=water['dm'])
    assert levels == [(4, 1e-10)]


def test_water_forces_are_minus_the_gradient_in_ev_per_angstrom(pyscf, water):
    assert water['converged'] and water['nao'] == 19  # 6-31G(d), cartesian: 15 + 2 x 2
    assert water['energy'] == pytest.approx(water['energy_hartree'] * HARTREE_TO_EV, rel=1e-15)
    np.testing.assert_allclose(
        water['forces'], -water['gradient_hartree_per_bohr'] * HARTREE_TO_EV / BOHR_TO_ANGSTROM,
        rtol=1e-15)
    # the sign and the units by a central difference of the energy along the O-H bond
    h = 1e-3
    bond = WATER_POS[1] - WATER_POS[0]
    bond /= np.linalg.norm(bond)
    energies = []
    for sign in (1, -1):
        pos = WATER_POS.copy()
        pos[1] += sign * h * bond
        energies.append(compute_label(WATER_Z, pos, dm0=water['dm'])['energy'])
    derivative = (energies[0] - energies[1]) / (2 * h)  # eV/A
    # measured 8e-4 relative: PySCF's gradient leaves out the response of the grid weights
    assert -water['forces'][1] @ bond == pytest.approx(derivative, rel=2e-3)
    # and the grid is fine enough that the forces almost sum to zero (measured 1.6e-3 eV/A
    # along the C2 axis, next to O-H forces of 0.3 eV/A)
    assert np.abs(water['forces'].sum(0)).max() < 5e-3


def test_agreement_with_comp6_on_the_smallest_s66x8_dimer(pyscf):
    h5py = pytest.importorskip('h5py')
    symbols = {'H': 1, 'O': 8}
    with h5py.File(S66X8, 'r') as f:
        group = f['s66x8/mol00']  # water dimer, 6 atoms
        z = np.array([symbols[s.decode()] for s in group['species'][()]])
        pos = group['coordinates'][2].astype(np.float64)  # 1.00x
        energy, gradient = float(group['energies'][2]), group['forces'][2].astype(np.float64)
    ours = compute_label(z, pos)
    # DFT.md: 0.021-0.024 kcal/mol in energy, gradient MAE 0.014-0.024, largest 0.10
    assert abs(ours['energy_hartree'] - energy) * KCAL_PER_HARTREE < 0.03
    # COMP6 'forces' hold +dE/dR in Hartree/A
    d_grad = (-ours['forces'] / HARTREE_TO_EV - gradient) * KCAL_PER_HARTREE
    assert np.abs(d_grad).mean() < 0.025 and np.abs(d_grad).max() < 0.1


def test_bad_structures_are_refused():
    with pytest.raises(ValueError, match='H, C, N, O only'):
        compute_label([9, 1], [[0, 0, 0], [0.92, 0, 0]])
    with pytest.raises(ValueError, match='odd number of electrons'):
        compute_label([8, 1], [[0, 0, 0], [0.97, 0, 0]])
    with pytest.raises(ValueError, match='0.000 Angstrom apart'):
        compute_label([8, 1, 1], [[0, 0, 0], [0, 0, 0], [0.9, 0, 0]])
    with pytest.raises(ValueError, match=r'shape \[3, 3\]'):
        compute_label([8, 1, 1], [[0, 0, 0], [0.9, 0, 0]])
    with pytest.raises(ValueError, match='a conformation key'):
        PySCFLabeller('unused').path('../escape')


def test_labeller_writes_one_file_per_conformation_and_resumes(pyscf, tmp_path, monkeypatch):
    labeller = PySCFLabeller(str(tmp_path))
    queue = [dict(key='w-0', z=WATER_Z, pos=WATER_POS, group='O',
                  metadata=dict(smiles='O', kind='conformer', temperature=0.0)),
             dict(key='w-1', z=WATER_Z, pos=WATER_POS * 1.02, group='O',
                  metadata=dict(smiles='O', kind='normal-modes', temperature=600.0))]
    assert labeller.run(queue[:1]) == 1
    record = read_label(str(tmp_path / 'w-0.json'))
    assert record['program'] == f'pyscf {pyscf.__version__}'
    assert record['settings'] == DFTSettings().to_dict()
    assert record['units']['forces'] == 'eV/Angstrom (= -dE/dR)'
    assert record['metadata']['smiles'] == 'O'
    np.testing.assert_array_equal(record['pos'], WATER_POS)  # read back exactly

    # an interrupted label leaves no file behind, and the next run does the rest
    import pyg_tensorpot.dft.labeller as module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(module, 'compute_label', interrupted)
    with pytest.raises(KeyboardInterrupt):
        labeller.run(queue)
    assert sorted(os.listdir(tmp_path)) == ['w-0.json']
    monkeypatch.undo()
    assert PySCFLabeller(str(tmp_path)).run(queue) == 1  # only w-1
    assert PySCFLabeller(str(tmp_path)).run(queue) == 0
    assert [r['key'] for r in iter_labels(str(tmp_path))] == ['w-0', 'w-1']


def test_a_broken_label_file_is_named(tmp_path):
    path = tmp_path / 'x.json'
    path.write_text('{"format": 1, "key": "x"', encoding='utf-8')
    with pytest.raises(ValueError, match='cannot read the DFT label file'):
        read_label(str(path))
    path.write_text(json.dumps({'format': 1, 'key': 'x'}), encoding='utf-8')
    with pytest.raises(ValueError, match='missing'):
        read_label(str(path))


def fake_label(folder, key, smiles, kind, z, pos, energy, forces, temperature=0.0):
    # the layout PySCFLabeller writes (its values are tested above); no DFT needed here
    record = dict(format=1, key=key, z=list(map(int, z)), pos=np.asarray(pos).tolist(),
                  energy=energy, forces=np.asarray(forces).tolist(),
                  settings=DFTSettings().to_dict(),
                  metadata=dict(smiles=smiles, kind=kind, temperature=temperature))
    with open(osp.join(folder, f'{key}.json'), 'w', encoding='utf-8') as f:
        json.dump(record, f)


def test_split_is_by_molecule_and_fixed():
    assert molecule_bucket('CCO') == molecule_bucket('CCO')
    names = [f'C{"C" * k}O' for k in range(60)]
    parts = {conformation_split(s) for s in names}
    assert parts == {'train', 'val', 'test'}
    test = next(s for s in names if conformation_split(s) == 'test')
    train = next(s for s in names if conformation_split(s) == 'train')
    val = next(s for s in names if conformation_split(s) == 'val')
    other = next(s for s in names if s != train and conformation_split(s) == 'train')
    assert conformation_split(f'{train}.{other}') == 'train'
    # a cluster across parts is in none: test holds only unseen molecules, train no test one
    for a, b in ((train, test), (test, val), (val, train)):
        assert conformation_split(f'{a}.{b}') == 'mixed'


def test_dataset_serves_the_labels(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / 'labels'
    folder.mkdir()
    smiles = [f'C{"C" * k}O' for k in range(30)]
    expected = {}
    for k, s in enumerate(smiles):
        n = 3 + k % 4
        z = rng.choice([1, 6, 8], size=n)
        pos, forces = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
        energy = -1000.0 * (k + 1) - 0.123456789012
        kind = ('conformer', 'normal-modes', 'md', 'torsion-120', 'cluster-2')[k % 5]
        fake_label(str(folder), f'r1-{k:05d}', s, kind, z, pos, energy, forces, 300.0 * (k % 2))
        expected[f'r1-{k:05d}'] = (z, pos, energy, forces, kind)
    ds = OrganicDFT(folder=str(folder), log=False)
    assert len(ds) == 30
    for k, key in enumerate(sorted(expected)):
        z, pos, energy, forces, kind = expected[key]
        d = ds[k]
        assert d.z.tolist() == z.tolist()
        assert d.energy.dtype == torch.float64 and float(d.energy) == energy
        torch.testing.assert_close(d.pos, torch.from_numpy(pos).float())
        torch.testing.assert_close(d.forces, torch.from_numpy(forces).float())
        assert kind.startswith(KINDS[int(d.kind)])
        assert int(d.molecule) == molecule_id(smiles[k])
    # the id is the molecule's: shared by its conformations, distinct between molecules
    assert len({int(d.molecule) for d in ds}) == 30
    assert molecule_id('CCO') == molecule_id('CCO') != molecule_id('OCC.CCO')
    split = ds.fixed_split()
    assert sum(len(v) for v in split.values()) == 30
    for part, idx in split.items():
        for i in idx.tolist():
            assert conformation_split(smiles[i]) == part[len('idx_'):]
    # cached under a root, and rebuilt when a label is added
    root = str(tmp_path / 'root')
    assert len(OrganicDFT(root, folder=str(folder), log=False)) == 30
    fake_label(str(folder), 'r1-99999', 'CCCN', 'md', [7, 1, 1, 1], rng.standard_normal((4, 3)),
               -5.0, rng.standard_normal((4, 3)))
    assert len(OrganicDFT(root, folder=str(folder), log=False)) == 31


def test_a_cluster_across_parts_is_served_in_no_part(tmp_path):
    rng = np.random.default_rng(1)
    names = [f'C{"C" * k}N' for k in range(40)]
    by_part = {}
    for s in names:
        by_part.setdefault(conformation_split(s), s)
    clusters = [by_part['train'], by_part['test'], f"{by_part['train']}.{by_part['test']}",
                f"{by_part['val']}.{by_part['train']}"]
    for k, s in enumerate(clusters):
        fake_label(str(tmp_path), f'r1-{k:05d}', s, 'cluster-2', [6, 1, 1],
                   rng.standard_normal((3, 3)), -10.0 * (k + 1), rng.standard_normal((3, 3)))
    ds = OrganicDFT(folder=str(tmp_path), log=False)
    assert ds.storage().split.tolist() == [0, 2, 3, 3]
    split = ds.fixed_split()
    assert {k: v.tolist() for k, v in split.items()} == {
        'idx_train': [0], 'idx_val': [], 'idx_test': [1]}


def test_dataset_refuses_an_empty_or_missing_folder(tmp_path):
    from pyg_tensorpot.datasets.base import RawFileError
    with pytest.raises(RawFileError, match='does not exist'):
        OrganicDFT(folder=str(tmp_path / 'nowhere'))
    with pytest.raises(RawFileError, match='holds no DFT label files'):
        OrganicDFT(folder=str(tmp_path))


@pytest.mark.skipif(not glob.glob(osp.join(BUNDLED, '*.json')),
                    reason='no bundled labels yet (examples/label_dft.py writes them)')
def test_bundled_labels_are_at_the_validated_settings():
    ds = OrganicDFT(log=False)
    records = list(iter_labels(BUNDLED))
    try:
        from rdkit import Chem
        from pyg_tensorpot.sampling.molecules import MoleculeFilter, skeleton_key
        s66 = MoleculeFilter().excluded
    except ImportError:
        s66 = None
    assert len(ds) == len(records)
    for r in records:
        assert r['settings'] == DFTSettings().to_dict() and r['converged']
        assert r['program'].startswith('pyscf ')
        assert set(r['z'].tolist()) <= {1, 6, 7, 8}
        if s66 is not None:  # S66x8 stays a clean test set
            assert not {skeleton_key(Chem.MolFromSmiles(m))
                        for m in r['metadata']['smiles'].split('.')} & s66
    split = ds.fixed_split()
    molecules = {part: {m for i in idx.tolist() for m in records[i]['metadata']['smiles']
                        .split('.')} for part, idx in split.items()}
    assert not molecules['idx_test'] & molecules['idx_train']
    assert not molecules['idx_test'] & molecules['idx_val']
    assert not molecules['idx_val'] & molecules['idx_train']


def test_standard_split_of_organic_dft_is_its_fixed_split(tmp_path):
    from pyg_tensorpot.datasets import load_split, standard_split
    rng = np.random.default_rng(2)
    for k in range(25):
        fake_label(str(tmp_path), f'r1-{k:05d}', f'C{"C" * k}N', 'conformer', [7, 1, 1],
                   rng.standard_normal((3, 3)), -50.0 - k, rng.standard_normal((3, 3)))
    ds = OrganicDFT(folder=str(tmp_path), log=False)
    fixed = ds.fixed_split()
    path = str(tmp_path / 'splits.npz')
    for seed in (None, 1, 7):  # no seed moves a molecule between parts
        split = standard_split(ds, seed=seed, path=path)
        assert all(torch.equal(split[k], fixed[k]) for k in fixed)
    assert all(torch.equal(load_split(path, len(ds))[k], fixed[k]) for k in fixed)
