"""The pretraining recipe (examples/pretrain_ani1x_distillation.py) without torchani: its
geometry helpers, and its training step end to end on real DFT labels (S66x8)."""
import importlib.util
import json
import os.path as osp
import socket

import h5py
import numpy as np
import pytest
import torch

from pyg_tensorpot.hub import from_pretrained

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


def test_components_split_a_dimer(recipe):
    z, pos, _, _ = s66_dimer(0)  # water dimer
    parts = recipe.components(z, pos[2])
    assert sorted(sorted(z[p].tolist()) for p in parts) == [[1, 1, 8], [1, 1, 8]]


def test_pairs_have_the_requested_contact(recipe):
    z, pos, _, _ = s66_dimer(0)
    part = recipe.components(z, pos[2])[0]
    snaps = [{'z': z[part], 'pos': pos[2][part]}] * 3
    pairs = recipe.make_pairs(snaps, 20, max_atoms=12, seed=0)
    for zz, pp in pairs:
        assert len(zz) == 6
        a, b = pp[:3], pp[3:]
        dmin = np.linalg.norm(a[:, None] - b[None], axis=-1).min()
        assert 1.59 < dmin < 5.01
        assert len(recipe.components(zz, pp)) == 2


@pytest.mark.parametrize('kind', ['tensornet', 'hipnn-ts'])
def test_train_and_save(recipe, tmp_path, kind):
    zs, poss, es, fs, src = [], [], [], [], []
    for index in (0, 1, 2):
        z, pos, e, f = s66_dimer(index)
        for k in range(8):
            zs.append(z)
            poss.append(pos[k])
            es.append(e[k])
            fs.append(f[k])
            src.append(f'pair-{index}')
    npz = str(tmp_path / 'labels.npz')
    np.savez(npz, natoms=np.array([len(z) for z in zs]), z=np.concatenate(zs).astype(np.int8),
             pos=np.concatenate(poss).astype(np.float32), energy=np.array(es),
             forces=np.concatenate(fs).astype(np.float32), temperature=np.zeros(len(es)),
             source=np.array(src), info=json.dumps({'test': True}))
    out = str(tmp_path / 'model')
    recipe.main(['train', '--model', kind, '--data', npz, '--out', out, '--hidden', '4',
                 '--batch-size', '8', '--max-epochs', '1', '--val-fraction', '0.25'])
    model = from_pretrained(out)
    config = model.pretrained_config
    assert config['training_data']['conformations'] == 24
    assert config['training']['stages'][0]['steps'] == 3  # 18 training conformations, 8/batch
    assert config['metrics']['validation (held-out distillation conformations)'][
        'conformations'] == 6
    energy, forces = model.energy_and_forces(torch.from_numpy(zs[0]),
                                             torch.from_numpy(poss[0]).float())
    # reference energies are the ANI-1x self energies: already the right magnitude
    assert abs(energy.item() - es[0]) < 0.05 * abs(es[0])
    assert torch.isfinite(forces).all()

    # stage 2: fine-tuning from the saved model on the same dimers as dissociation scans
    scans = str(tmp_path / 'scans.npz')
    np.savez(scans, **{k: v for k, v in np.load(npz).items()},
             group=np.repeat(np.arange(3), 8))
    tuned = str(tmp_path / 'tuned')
    recipe.main(['train', '--model', kind, '--data', scans, '--init', out,
                 '--out', tuned, '--batch-size', '8', '--max-epochs', '1',
                 '--val-fraction', '0.34', '--relative-energy-weight', '1.0'])
    config = from_pretrained(tuned).pretrained_config
    first, second = config['training']['stages']
    assert first['steps'] == 3 and second['initialised_from'] == out
    assert second['steps'] == 2  # two whole scans of 8 in training, one in validation
    assert config['training_data']['conformations'] == 24
    validation = config['metrics']['validation (held-out distillation conformations)']
    assert validation['conformations'] == 8
    assert validation['scan_relative_energy_mae_ev'] > 0
    card = open(osp.join(tuned, 'README.md')).read()
    assert 'Stage 2 of 2:' in card and 'initialised_from' in card
    with pytest.raises(ValueError, match='not a'):
        recipe.main(['train', '--model', 'hipnn-ts' if kind == 'tensornet' else 'tensornet',
                     '--data', npz, '--init', out, '--out', str(tmp_path / 'x'),
                     '--max-epochs', '1'])


def test_dimer_scans_scale_the_contact(recipe):
    z, pos, _, _ = s66_dimer(0)  # water dimer: both monomers can donate and accept
    monomers = [('water', z[p], pos[2][p]) for p in recipe.components(z, pos[2])]
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
            assert len(recipe.components(zz, pp)) == 2
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


def test_relative_energy_loss_and_scan_batches(recipe):
    # float64: the numpy reference is float64 and the result is then the same on every CPU
    energy = torch.tensor([1.0, 2.0, 4.0, 10.0, 11.0, 7.0], dtype=torch.float64)
    target = torch.tensor([0.0, 1.5, 3.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 5, 5, -1])
    diff = np.array([1.0, 0.5, 1.0, 10.0, 11.0])
    centred = np.concatenate([diff[:3] - diff[:3].mean(), diff[3:] - diff[3:].mean()])
    loss = recipe.relative_energy_mse(energy, target, group)
    assert loss.item() == pytest.approx(np.mean(centred ** 2))
    # a constant offset per scan does not count
    assert recipe.relative_energy_mse(target + group.float(), target, group).item() == \
        pytest.approx(0.0, abs=1e-12)
    groups = np.array([-1, 3, 3, 3, -1, 7, 7, -1, -1])
    batches = recipe.unit_batches(groups, 4, np.random.default_rng(0))
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    for scan in (3, 7):
        members = set(np.nonzero(groups == scan)[0])
        assert sum(members <= set(b) for b in batches) == 1
