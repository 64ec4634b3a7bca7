"""The pretraining recipe (examples/pretrain_ani1x_distillation.py) without torchani: its
geometry helpers, and its training step end to end on real DFT labels (S66x8)."""
import importlib.util
import json
import os
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
    assert config['training']['steps'] == 3  # 18 training conformations, batches of 8
    assert config['metrics']['validation (held-out distillation conformations)'][
        'conformations'] == 6
    energy, forces = model.energy_and_forces(torch.from_numpy(zs[0]),
                                             torch.from_numpy(poss[0]).float())
    # reference energies are the ANI-1x self energies: already the right magnitude
    assert abs(energy.item() - es[0]) < 0.05 * abs(es[0])
    assert torch.isfinite(forces).all()
