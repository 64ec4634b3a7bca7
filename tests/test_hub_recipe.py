"""The labelling recipe (examples/pretrain_ani1x_distillation.py) without torchani: its
geometry helpers on real S66x8 dimers. Training on its label files runs on the engine
(tests/test_training_distillation.py)."""
import importlib.util
import os.path as osp
import socket

import h5py
import numpy as np
import pytest

from pyg_tensorpot.utils.bonds import bonded_fragments

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
S66X8 = osp.join(ROOT, 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
HARTREE_TO_EV = 27.211386246


@pytest.fixture(scope='module')
def recipe():
    spec = importlib.util.spec_from_file_location(
        'pretrain_ani1x_distillation', osp.join(ROOT, 'examples',
                                                'pretrain_ani1x_distillation.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def blocked(sock, address):
        raise OSError(f'network access blocked in tests (tried {address!r})')
    monkeypatch.setattr(socket.socket, 'connect', blocked)


def s66_dimer(index: int):
    with h5py.File(S66X8, 'r') as f:
        g = f[f's66x8/mol{index:02d}']
        z = np.array([{'H': 1, 'C': 6, 'N': 7, 'O': 8}[s.decode()] for s in g['species'][()]])
        return (z, g['coordinates'][()].astype(np.float64), g['energies'][()] * HARTREE_TO_EV,
                -g['forces'][()].astype(np.float64) * HARTREE_TO_EV)


def test_bonded_fragments_split_a_dimer():
    z, pos, _, _ = s66_dimer(0)  # water dimer
    parts = bonded_fragments(z, pos[2])
    assert sorted(sorted(z[p].tolist()) for p in parts) == [[1, 1, 8], [1, 1, 8]]


def test_pairs_have_the_requested_contact(recipe):
    z, pos, _, _ = s66_dimer(0)
    part = bonded_fragments(z, pos[2])[0]
    snaps = [{'z': z[part], 'pos': pos[2][part]}] * 3
    pairs = recipe.make_pairs(snaps, 20, max_atoms=12, seed=0)
    for zz, pp in pairs:
        assert len(zz) == 6
        a, b = pp[:3], pp[3:]
        dmin = np.linalg.norm(a[:, None] - b[None], axis=-1).min()
        assert 1.59 < dmin < 5.01
        assert len(bonded_fragments(zz, pp)) == 2


def test_dimer_scans_scale_the_contact(recipe):
    z, pos, _, _ = s66_dimer(0)  # water dimer: both monomers can donate and accept
    monomers = [('water', z[p], pos[2][p]) for p in bonded_fragments(z, pos[2])]
    scans = recipe.make_dimer_scans(monomers, 12, hbond_fraction=0.5, noise=0.0, seed=3)
    n = len(recipe.SCAN_FACTORS)
    assert len(scans) == 12 * n
    kinds = {kind for kind, _, _ in scans}
    assert kinds == {'dimer-hbond', 'dimer-random'}
    for start in range(0, len(scans), n):
        scan = scans[start:start + n]
        contacts, polar = [], []

        def internal(p):
            return np.linalg.norm(p[:, None] - p[None], axis=-1)

        for kind, zz, pp in scan:
            a, b = pp[:3], pp[3:]
            assert len(bonded_fragments(zz, pp)) == 2
            # rigid monomers: the same internal distances at every separation
            np.testing.assert_allclose(internal(a), internal(scan[0][2][:3]), atol=1e-9)
            np.testing.assert_allclose(internal(b), internal(scan[0][2][3:]), atol=1e-9)
            contacts.append(np.linalg.norm(a[:, None] - b[None], axis=-1).min())
            # H of a to O of b (the hydrogen bond of an H-bond scan)
            polar.append(np.linalg.norm(a[zz[:3] == 1][:, None] - b[zz[3:] == 8][None],
                                        axis=-1).min())
        if scan[0][0] == 'dimer-hbond':
            ratios = np.array(polar) / polar[2]
            assert 1.8 <= polar[2] <= 2.1
        else:
            ratios = np.array(contacts) / contacts[2]
            assert 2.2 <= contacts[2] <= 3.0
        np.testing.assert_allclose(ratios, recipe.SCAN_FACTORS, rtol=1e-6)


def test_sampling_pool_leaves_out_the_held_out_dft_molecules(recipe):
    from pyg_tensorpot.datasets import OrganicDFT
    from pyg_tensorpot.utils.bonds import bond_graph_key
    keys = recipe.held_out_graph_keys()
    dataset = OrganicDFT(log=False)
    split = dataset.fixed_split()
    held_out = [dataset[int(i)] for part in ('val', 'test') for i in split[f'idx_{part}']]
    single = {int(d.molecule) for d in held_out  # clusters are made of such molecules
              if len(bonded_fragments(d.z.numpy(), d.pos.double().numpy())) == 1}
    assert len(keys) >= len(single) > 0
    pool = recipe.load_molecules(s66_monomers=False)
    assert len(pool) > 0
    for _, z, pos in pool:
        assert not any(bond_graph_key(z[f], pos[f]) in keys for f in bonded_fragments(z, pos))
    # a held-out molecule put into the pool is taken out again, alone or in a cluster
    data = dataset[int(split['idx_test'][0])]
    z, pos = data.z.numpy(), data.pos.double().numpy()
    water_z, water_pos, _, _ = s66_dimer(0)
    part = bonded_fragments(water_z, water_pos[2])[0]
    cluster_z = np.concatenate([z, water_z[part]])
    cluster_pos = np.concatenate([pos, water_pos[2][part] + pos.max(0) + 4.0])
    kept = recipe.without_held_out(
        [('held-out', z, pos), ('cluster', cluster_z, cluster_pos), pool[0]], keys)
    assert [name for name, _, _ in kept] == [pool[0][0]]
