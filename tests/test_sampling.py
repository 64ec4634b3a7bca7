"""Organic-chemistry sampling: molecules (S66x8 excluded), conformers, normal modes, torsion
scans, clusters and the committee-disagreement selection."""
import math
import os.path as osp

import numpy as np
import pytest
import torch

from pyg_tensorpot.sampling.clusters import closest_contact, make_clusters, random_rotation
from pyg_tensorpot.sampling.conformers import (
    KB_EV,
    finite_difference_hessian,
    normal_mode_samples,
    normal_modes,
)
from pyg_tensorpot.sampling.selection import (
    ANI1X_RHO_THRESHOLD_EV,
    committee_scores,
    ensemble_scores,
    select,
)

S66X8 = osp.join(osp.dirname(__file__), 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
WATER = (np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692],
                                        [0.0, -0.7572, -0.4692]]))


def harmonic(k_bond: float = 30.0, k_angle: float = 5.0):
    """Forces of bond springs between every pair of atoms (rest lengths: the reference
    geometry), a potential whose minimum and Hessian are known exactly."""
    def potential(ref):
        pairs = [(i, j) for i in range(len(ref)) for j in range(i + 1, len(ref))]
        rest = {p: np.linalg.norm(ref[p[0]] - ref[p[1]]) for p in pairs}

        def forces(z, pos):
            f = np.zeros_like(pos)
            for (i, j) in pairs:
                d = pos[i] - pos[j]
                r = np.linalg.norm(d)
                k = k_bond if min(z[i], z[j]) > 1 or max(z[i], z[j]) > 1 else k_angle
                g = k * (r - rest[(i, j)]) * d / r
                f[i] -= g
                f[j] += g
            return f

        def energy(z, pos):
            e = 0.0
            for (i, j) in pairs:
                r = np.linalg.norm(pos[i] - pos[j])
                k = k_bond if min(z[i], z[j]) > 1 or max(z[i], z[j]) > 1 else k_angle
                e += 0.5 * k * (r - rest[(i, j)]) ** 2
            return e
        return forces, energy
    return potential


# ------------------------------------------------------------------------------- normal modes
def test_hessian_by_finite_differences_of_a_harmonic_potential():
    z, pos = WATER
    forces, energy = harmonic()(pos)
    hessian = finite_difference_hessian(forces, z, pos, delta=1e-4)
    assert hessian.shape == (9, 9)
    np.testing.assert_allclose(hessian, hessian.T)
    # second derivative of the energy along a random direction, by differences of energies
    v = np.random.default_rng(0).standard_normal(pos.shape)
    h = 1e-3
    curvature = (energy(z, pos + h * v) - 2 * energy(z, pos) + energy(z, pos - h * v)) / h**2
    assert v.ravel() @ hessian @ v.ravel() == pytest.approx(curvature, rel=1e-4)


def test_normal_modes_and_samples_stay_under_the_harmonic_energy_bound():
    z, pos = WATER
    forces, energy = harmonic()(pos)
    hessian = finite_difference_hessian(forces, z, pos, delta=1e-4)
    modes, constants = normal_modes(z, hessian)
    assert modes.shape == (3, 3, 3) and (constants > 0).all()
    np.testing.assert_allclose(np.einsum('inc,jnc->ij', modes, modes).diagonal(), 1.0)
    temperature = 1000.0
    samples = normal_mode_samples(z, pos, hessian, temperature, 200, seed=1, max_step=10.0)
    bound = 1.5 * len(z) * KB_EV * temperature
    harmonic_energies = [0.5 * (s - pos).ravel() @ hessian @ (s - pos).ravel() for s in samples]
    # the modes are H-orthogonal (q_i^T H q_j = 0 for i != j), so the harmonic energy is the
    # sum of 1/2 K_i R_i^2 = 3/2 c_i N kT over the modes, at most 3/2 N kT
    assert max(harmonic_energies) <= bound * (1 + 1e-6)
    assert np.mean(harmonic_energies) > 0.1 * bound  # the samples do move
    again = normal_mode_samples(z, pos, hessian, temperature, 200, seed=1, max_step=10.0)
    assert all(np.array_equal(a, b) for a, b in zip(samples, again))


def test_hessian_from_an_ase_calculator_equals_the_callable():
    pytest.importorskip('ase')
    from ase.calculators.emt import EMT
    from pyg_tensorpot.sampling.conformers import ase_forces
    z, pos = WATER
    calc = EMT()
    np.testing.assert_allclose(finite_difference_hessian(calc, z, pos),
                               finite_difference_hessian(ase_forces(calc), z, pos))


def test_bad_inputs_are_refused():
    z, pos = WATER
    with pytest.raises(ValueError, match='shape'):
        finite_difference_hessian(lambda z, p: p, z, pos[:2])
    with pytest.raises(ValueError, match='Hessian of 3 atoms'):
        normal_modes(z, np.eye(6))
    with pytest.raises(ValueError, match='temperature'):
        normal_mode_samples(z, pos, np.eye(9), -5.0, 3)


# ------------------------------------------------------------------------------------ clusters
def test_random_rotations_are_rotations():
    rng = np.random.default_rng(3)
    for _ in range(20):
        r = random_rotation(rng)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)


def test_clusters_have_the_drawn_closest_contact():
    z, pos = WATER
    methane = (np.array([6, 1, 1, 1, 1]),
               np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                         [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]], dtype=float))
    pool = [(z, pos), methane, (z, pos + 0.0)]
    clusters = make_clusters(pool, 12, sizes=(2, 3), max_atoms=13, contact=(2.0, 2.5), seed=4)
    assert len(clusters) == 12
    for members, (cz, cpos) in clusters:
        assert len(set(members)) == len(members)  # distinct molecules
        assert cz.tolist() == sum((pool[m][0].tolist() for m in members), [])
        # every molecule keeps its shape and touches the ones before it at 2.0-2.5 A
        start = len(pool[members[0]][0])
        for m in members[1:]:
            n = len(pool[m][0])
            part = cpos[start:start + n]
            ref = pool[m][1]
            np.testing.assert_allclose(np.linalg.norm(part[:, None] - part[None], axis=-1),
                                       np.linalg.norm(ref[:, None] - ref[None], axis=-1),
                                       atol=1e-12)
            assert 2.0 - 1e-9 <= closest_contact(cpos[:start], part) <= 2.5 + 1e-9
            start += n
    with pytest.raises(ValueError, match='too few'):
        make_clusters(pool[:1], 1, sizes=(2, ))
    # with groups, a cluster joins molecules of one group only
    pool = [(z, pos + k) for k in range(6)]
    groups = ['train', 'test', 'train', 'test', 'train', 'val']
    clusters = make_clusters(pool, 30, sizes=(2, ), groups=groups, seed=1)
    assert all(len({groups[m] for m in members}) == 1 for members, _ in clusters)
    assert {groups[members[0]] for members, _ in clusters} == {'train', 'test'}
    with pytest.raises(ValueError, match='groups has 2 entries'):
        make_clusters(pool, 1, groups=groups[:2])
    with pytest.raises(ValueError, match='largest group'):
        make_clusters(pool, 1, sizes=(3, ), groups=['a', 'b', 'c'] * 2)


# ----------------------------------------------------------------------------------- selection
def test_committee_scores_are_the_sample_spread():
    rng = np.random.default_rng(0)
    energies = rng.standard_normal((8, 5))
    forces = [rng.standard_normal((8, n, 3)) for n in (3, 4, 5, 6, 7)]
    scores = committee_scores(energies, forces)
    for b in range(5):
        s = math.sqrt(sum((e - energies[:, b].mean()) ** 2 for e in energies[:, b]) / 7)
        assert scores['energy_std'][b] == pytest.approx(s)
        assert scores['rho'][b] == pytest.approx(s / math.sqrt(forces[b].shape[1]))
        assert scores['forces_std'][b] == pytest.approx(forces[b].std(0, ddof=1).mean())
    with pytest.raises(ValueError, match='num_members >= 2'):
        committee_scores(energies[:1])
    with pytest.raises(ValueError, match='conformation 1'):
        committee_scores(energies, [forces[0], forces[1][:, :, :2]] + forces[2:])


def test_select_orders_caps_and_thresholds():
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.7, 0.8])
    groups = ['a', 'a', 'b', 'a', 'a', 'c']
    assert select(scores, 10) == [1, 2, 5, 4, 0, 3]
    assert select(scores, 3) == [1, 2, 5]
    assert select(scores, 10, groups, max_per_group=2) == [1, 2, 5, 4]
    assert select(scores, 10, threshold=0.6) == [1, 2, 5, 4]
    with pytest.raises(ValueError, match='NaN'):
        select(np.array([0.1, np.nan]), 1)
    with pytest.raises(ValueError, match='needs the groups'):
        select(scores, 1, max_per_group=1)
    assert ANI1X_RHO_THRESHOLD_EV == pytest.approx(0.23 / 23.0605, rel=1e-4)


def test_ensemble_scores_are_the_members_spread():
    from torch_geometric.data import Data
    from pyg_tensorpot import Ensemble, TensorNet, compute_properties
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(TensorNet(hidden_channels=8, num_layers=1, num_rbf=8,
                                 cutoff=3.0).double().eval())
    z, pos = WATER
    rng = np.random.default_rng(5)
    structures = [Data(z=torch.from_numpy(z), pos=torch.from_numpy(pos + 0.05 * rng.standard_normal(
        pos.shape))) for _ in range(5)]
    scores = ensemble_scores(Ensemble(members), structures, batch_size=2)
    for b, data in enumerate(structures):
        each = [compute_properties(m, data.z, data.pos) for m in members]
        e = torch.stack([x['energy'] for x in each]).reshape(-1)
        f = torch.stack([x['forces'] for x in each])
        assert scores['energy_std'][b] == pytest.approx(float(e.std()), rel=1e-10)
        assert scores['forces_std'][b] == pytest.approx(float(f.std(0).mean()), rel=1e-10)
        assert scores['num_atoms'][b] == 3


# ----------------------------------------------------------------------------- RDKit: molecules
def test_s66_monomers_are_those_of_comp6_s66x8():
    pytest.importorskip('rdkit')
    h5py = pytest.importorskip('h5py')
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from pyg_tensorpot.sampling.molecules import S66_MONOMER_SMILES, skeleton_key
    keys = set()
    with h5py.File(S66X8, 'r') as f:
        for group in f['s66x8'].values():
            symbols = [s.decode() for s in group['species'][()]]
            pos = group['coordinates'][2].astype(float)  # the 1.00x dimer
            xyz = f'{len(symbols)}\n\n' + '\n'.join(
                f'{s} {x:.8f} {y:.8f} {w:.8f}' for s, (x, y, w) in zip(symbols, pos))
            mol = Chem.MolFromXYZBlock(xyz)
            rdDetermineBonds.DetermineBonds(mol, charge=0)
            for frag in Chem.GetMolFrags(mol, asMols=True):
                keys.add(skeleton_key(frag))
    assert keys == {skeleton_key(Chem.MolFromSmiles(s)) for s in S66_MONOMER_SMILES}
    assert len(keys) == 14


def test_filter_excludes_s66x8_and_what_dft_cannot_label():
    pytest.importorskip('rdkit')
    from rdkit import Chem
    from pyg_tensorpot.sampling.molecules import MoleculeFilter
    keep = MoleculeFilter(1, 30)
    mol = Chem.MolFromSmiles
    assert not keep(mol('c1ccccc1')) and not keep(mol('C1=CC=CC=C1'))  # benzene, any writing
    assert not keep(mol('OC(=O)C')) and not keep(mol('[2H]O[2H]'))  # acetic acid, heavy water
    assert keep(mol('Cc1ccccc1')) and keep(mol('C[N+](=O)[O-]'))  # toluene, nitromethane
    assert not keep(mol('Fc1ccccc1'))  # not C/H/N/O
    assert not keep(mol('[CH3]'))  # radical
    assert not keep(mol('C[NH3+]'))  # charged
    assert not keep(mol('CC.O'))  # two molecules
    assert not MoleculeFilter(10, 20)(mol('CCO'))
    with pytest.raises(ValueError, match='min_heavy'):
        MoleculeFilter(5, 4)
    with pytest.raises(ValueError, match='cannot parse'):
        MoleculeFilter(exclude_smiles=['C1CC'])


def test_nci_molecules_and_brics_joins():
    pytest.importorskip('rdkit')
    from rdkit import Chem
    from pyg_tensorpot.sampling.molecules import (
        MoleculeFilter,
        brics_fragments,
        brics_molecules,
        nci_molecules,
        skeleton_key,
    )
    nci = nci_molecules(MoleculeFilter(1, 60))
    assert len(nci) > 2000
    s66 = MoleculeFilter().excluded
    assert all(skeleton_key(Chem.MolFromSmiles(s)) not in s66 for s in nci)
    assert all(v.startswith('nci-') for v in nci.values())
    some = sorted(nci)[:200]
    fragments = brics_fragments(some)
    assert fragments and all('*' in f for f in fragments)
    keep = MoleculeFilter(12, 26)
    joined = brics_molecules(fragments, 10, keep, seed=7)
    assert joined == brics_molecules(fragments, 10, keep, seed=7)  # seeded
    assert len(joined) == len(set(joined)) >= 5
    for smiles in joined:
        m = Chem.MolFromSmiles(smiles)
        assert keep(m) and '*' not in smiles and 12 <= m.GetNumHeavyAtoms() <= 26


# ---------------------------------------------------------------------------- RDKit: conformers
def test_conformers_are_mmff_minima_and_torsion_scans_hit_their_angles():
    pytest.importorskip('rdkit')
    from rdkit.Chem import rdMolTransforms
    from pyg_tensorpot.sampling.conformers import (
        embed_conformers,
        mmff_forces,
        rotatable_torsions,
        torsion_scan,
    )
    mol, z, positions, energies = embed_conformers('CCOC(=O)c1ccccc1N', 6, seed=1,
                                                   prune_rms=0.1)
    assert z.tolist().count(6) == 9 and len(z) == 23  # C9H11NO2
    assert energies == sorted(energies)
    forces = mmff_forces(mol)
    for pos in positions:
        assert np.abs(forces(z, pos)).max() < 1e-3  # eV/A: relaxed
    hessian = finite_difference_hessian(forces, z, positions[0])
    _, constants = normal_modes(z, hessian)
    assert len(constants) == 3 * len(z) - 6 and constants.min() > -1e-3  # a minimum
    torsions = rotatable_torsions(mol)
    assert torsions
    angles = [0.0, 90.0, 180.0, -60.0]
    scan = torsion_scan(mol, torsions[0], angles)
    work = mol.__class__(mol)
    conf = work.GetConformer()
    for angle, pos in zip(angles, scan):
        for k, p in enumerate(pos):
            conf.SetAtomPosition(k, p.tolist())
        got = rdMolTransforms.GetDihedralDeg(conf, *torsions[0])
        assert abs((got - angle + 180) % 360 - 180) < 1.0
    with pytest.raises(ValueError, match='not joined by a bond outside a ring'):
        torsion_scan(mol, (5, 6, 7, 8), [0.0])


# ------------------------------------------------------------------- the shipped round-1 queue
QUEUE = osp.join(osp.dirname(osp.dirname(__file__)), 'pyg_tensorpot', 'data', 'organic_dft',
                 'queue_r1.npz')


@pytest.mark.skipif(not osp.exists(QUEUE), reason='no round-1 queue shipped')
def test_shipped_queue_is_ordered_capped_and_free_of_s66x8():
    import runpy
    queue = np.load(QUEUE)
    n = len(queue['key'])
    assert n > 0 and queue['num_atoms'].sum() == len(queue['z']) == len(queue['pos'])
    assert (np.diff(queue['rho']) <= 0).all()  # the most disputed first
    assert queue['num_atoms'].max() <= 40
    _, counts = np.unique(queue['group'], return_counts=True)
    assert counts.max() <= 8
    assert set(np.unique(queue['z']).tolist()) <= {1, 6, 7, 8}
    assert np.isfinite(queue['pos']).all()
    # what examples/label_dft.py hands the labeller
    label_dft = runpy.run_path(osp.join(osp.dirname(osp.dirname(__file__)), 'examples',
                                        'label_dft.py'))
    items = list(label_dft['read_queue'](QUEUE, 1, 3))
    from pyg_tensorpot.datasets.organic_dft import conformation_split
    kept = [key for key, smiles in zip(queue['key'][1::3].tolist(), queue['smiles'][1::3])
            if conformation_split(str(smiles)) != 'mixed']
    assert 0 < len(kept) < len(queue['key'][1::3])  # clusters across split parts are skipped
    assert [item['key'] for item in items] == kept
    for item in items[:20]:
        assert item['pos'].shape == (len(item['z']), 3)
        assert item['metadata']['smiles'] and item['metadata']['queue'] == 'queue_r1.npz'
    try:
        from rdkit import Chem
    except ImportError:
        return  # the S66x8 check needs RDKit; the rest holds without it
    from pyg_tensorpot.sampling.molecules import MoleculeFilter, skeleton_key
    s66 = MoleculeFilter().excluded
    for smiles in set(queue['smiles'].tolist()):
        assert not {skeleton_key(Chem.MolFromSmiles(m)) for m in smiles.split('.')} & s66
