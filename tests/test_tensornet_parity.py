"""Parity of TensorNet with torchmd-net 3.1.0 (fixtures in tests/fixtures/tensornet)."""
import glob
import json
import os

import numpy as np
import pytest
import torch

from pyg_tensorpot.io import load_torchmdnet

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), 'fixtures', 'tensornet',
                                         '*.npz')))
SMALL_SO3 = [p for p in FIXTURES if p.endswith('tensornet_so3_h16_l1.npz')][0]


def load_fixture(path):
    data = np.load(path)
    with open(path[:-4] + '.json') as f:
        meta = json.load(f)
    state = {k[3:]: torch.from_numpy(data[k]) for k in data.files if k.startswith('sd/')}
    tensors = {k: torch.from_numpy(data[k]) for k in ('z', 'pos', 'batch', 'energy', 'forces')}
    return state, meta, tensors


def relative_error(a, b):
    return float((a.detach() - b).abs().max() / b.abs().max())


def test_all_fixtures_found():
    names = {os.path.basename(p)[:-4] for p in FIXTURES}
    assert names == {'tensornet_o3_h32_l2', 'tensornet_so3_h16_l1', 'tensornet_ani1x_h128_l2'}


@pytest.mark.parametrize('path', FIXTURES, ids=lambda p: os.path.basename(p)[:-4])
def test_energy_and_forces_match_torchmdnet(path):
    state, meta, ref = load_fixture(path)
    model = load_torchmdnet(state, hparams=meta['hyperparameters'])
    hp = meta['hyperparameters']
    assert model.equivariance == hp['equivariance_invariance_group']
    assert model.hidden_channels == hp['embedding_dimension']
    assert model.cutoff == pytest.approx(hp['cutoff_upper'])
    assert next(model.parameters()).dtype == torch.float64
    energy, forces = model.energy_and_forces(ref['z'], ref['pos'], ref['batch'])
    assert energy.shape == ref['energy'].shape
    assert relative_error(energy, ref['energy']) < 1e-9
    assert relative_error(forces, ref['forces']) < 1e-9


@pytest.mark.parametrize('path', FIXTURES[:1], ids=lambda p: os.path.basename(p)[:-4])
def test_hparams_inferred_from_weights_alone(path):
    # Without hyperparameters, the cutoff is recovered from the first expnorm centre.
    state, meta, ref = load_fixture(path)
    model = load_torchmdnet(state)
    assert model.cutoff == pytest.approx(meta['hyperparameters']['cutoff_upper'], rel=1e-12)
    energy = model(ref['z'], ref['pos'], ref['batch'])
    assert relative_error(energy, ref['energy']) < 1e-9


def _lightning_checkpoint(state, hparams, interleaved=False):
    # The layout of a Lightning 2.x checkpoint written by torchmd-net's LNNP module.
    sd = {f'model.{k}': v.clone() for k, v in state.items()}
    hp = dict(hparams)
    if interleaved:
        H = hp['embedding_dimension']
        for key in list(sd):
            if key.endswith(('tensor_embedding.linears_scalar.1.weight',
                             'tensor_embedding.linears_scalar.1.bias')) or (
                                 '.layers.' in key and '.linears_scalar.2.' in key):
                value = sd[key]
                # block row c*H + h -> interleaved row 3*h + c
                sd[key] = value.reshape(3, H, *value.shape[1:]).transpose(0, 1).reshape(
                    value.shape)
        hp['check_errors'] = True
        # Pre-PR-314 names of the Scalar head.
        for i in (0, 2):
            for p in ('weight', 'bias'):
                sd[f'model.output_model.output_network.{i}.{p}'] = sd.pop(
                    f'model.output_model.output_network.layers.{i}.{p}')
    return {
        'epoch': 3, 'global_step': 120, 'pytorch-lightning_version': '2.6.0',
        'state_dict': sd, 'loops': {}, 'callbacks': {}, 'optimizer_states': [],
        'lr_schedulers': [], 'hparams_name': 'kwargs', 'hyper_parameters': hp
    }


@pytest.mark.parametrize('interleaved', [False, True])
def test_lightning_checkpoint_file(tmp_path, interleaved):
    path = SMALL_SO3
    state, meta, ref = load_fixture(path)
    ckpt = _lightning_checkpoint(state, meta['hyperparameters'], interleaved)
    file = tmp_path / 'epoch=3.ckpt'
    torch.save(ckpt, file)
    model = load_torchmdnet(file)
    assert model.equivariance == 'SO(3)'
    energy, forces = model.energy_and_forces(ref['z'], ref['pos'], ref['batch'])
    assert relative_error(energy, ref['energy']) < 1e-9
    assert relative_error(forces, ref['forces']) < 1e-9


def test_atomref_prior_is_imported():
    state, meta, ref = load_fixture(SMALL_SO3)
    hp = dict(meta['hyperparameters'], prior_model='Atomref')
    atomref = torch.linspace(-3.0, 1.0, hp['max_z']).to(torch.float64).unsqueeze(1)
    state = dict(state, **{'prior_model.0.atomref.weight': atomref,
                           'prior_model.0.initial_atomref': atomref.clone()})
    model = load_torchmdnet(state, hparams=hp)
    plain = load_torchmdnet(load_fixture(SMALL_SO3)[0], hparams=meta['hyperparameters'])
    shift = torch.zeros_like(ref['energy']).index_add_(0, ref['batch'],
                                                       atomref[ref['z'], 0])
    energy = model(ref['z'], ref['pos'], ref['batch'])
    expected = plain(ref['z'], ref['pos'], ref['batch']) + shift
    torch.testing.assert_close(energy, expected, rtol=1e-12, atol=1e-12)


def test_unsupported_checkpoints_fail_clearly(tmp_path):
    from pyg_tensorpot.io import TorchMDNetImportError
    state, meta, _ = load_fixture(SMALL_SO3)
    with pytest.raises(TorchMDNetImportError, match="output_model 'EquivariantDipoleMoment'"):
        load_torchmdnet(state, hparams=dict(meta['hyperparameters'],
                                            output_model='EquivariantDipoleMoment'))
    with pytest.raises(TorchMDNetImportError, match="only TensorNet"):
        load_torchmdnet(state, hparams=dict(meta['hyperparameters'], model='equivariant-'
                                            'transformer'))
    with pytest.raises(TorchMDNetImportError, match='not a torchmd-net TensorNet'):
        load_torchmdnet({'weight': torch.zeros(3)})
    extra = dict(state, **{'representation_model.mystery.weight': torch.zeros(2)})
    with pytest.raises(TorchMDNetImportError, match='unexpected keys'):
        load_torchmdnet(extra, hparams=meta['hyperparameters'])
    corrupt = tmp_path / 'broken.ckpt'
    corrupt.write_bytes(b'PK\x03\x04 definitely not a checkpoint')
    with pytest.raises(TorchMDNetImportError, match='broken.ckpt'):
        load_torchmdnet(corrupt)
    with pytest.raises(FileNotFoundError):
        load_torchmdnet(tmp_path / 'missing.ckpt')


def test_pickled_objects_are_refused(tmp_path):
    # A checkpoint that smuggles a Python object is not unpickled (weights_only=True).
    from pyg_tensorpot.io import TorchMDNetImportError

    state, meta, _ = load_fixture(SMALL_SO3)
    ckpt = _lightning_checkpoint(state, meta['hyperparameters'])
    ckpt['hyper_parameters']['callback'] = _Gadget()
    file = tmp_path / 'gadget.ckpt'
    torch.save(ckpt, file)
    with pytest.raises(TorchMDNetImportError, match='weights_only'):
        load_torchmdnet(file)


class _Gadget:
    pass
