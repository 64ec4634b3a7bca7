"""Replay while fine-tuning (data.replay_dataset): teacher-labelled conformations (label files
of the distillation recipe) join the training split of our DFT labels, never its validation or
test parts; groups of both stay whole and apart; and a short fine-tuning run through the
engine."""
import os.path as osp

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

pytest.importorskip('h5py')

from test_training_distillation import write_label_files  # noqa: E402  (tests/ on sys.path)
from test_training_own_data import TINY_FINE_TUNING  # noqa: E402

from pyg_tensorpot.training import ConfigError, ReplayMix, load_config, prepare_data  # noqa: E402,E501
from pyg_tensorpot.training.data import structure_groups  # noqa: E402
from pyg_tensorpot.training.export import load_trained_model  # noqa: E402
from pyg_tensorpot.training.run import train  # noqa: E402

DISTILLATION = 'pyg_tensorpot.datasets.distillation:DistillationDataset'


def molecule(n: int, energy: float, group: int, **extra) -> Data:
    return Data(z=torch.full((n, ), 6), pos=torch.randn(n, 3), energy=torch.tensor([energy]),
                forces=torch.randn(n, 3), group=torch.tensor([group]), **extra)


def test_mix_serves_the_common_attributes_and_keeps_groups_apart():
    torch.manual_seed(0)
    train_part = [molecule(3, -1.0, 70, kind=torch.tensor([1])),
                  molecule(4, -2.0, 70, kind=torch.tensor([1])),
                  molecule(2, -3.0, -1, kind=torch.tensor([2]))]
    replayed = [Data(z=torch.full((2, ), 1), pos=torch.randn(2, 3), energy=torch.tensor([-9.0]),
                     forces=torch.randn(2, 3), scan=torch.tensor([s]),
                     source=torch.tensor([0])) for s in (0, 0, 5, -1)]
    mix = ReplayMix(train_part, replayed, 'group', 'scan', required=('energy', 'forces'))
    assert len(mix) == 7 and mix.num_replay == 4
    assert mix.keys == ['energy', 'forces', 'pos', 'z']  # kind and source are not shared
    # groups: 70 -> 0 on the training side; scans 0, 5 -> 1, 2 after them; -1 stays
    assert mix.groups.tolist() == [0, 0, -1, 1, 1, 2, -1]
    assert torch.equal(structure_groups(mix, 'group'), mix.groups)
    for index, source in enumerate(train_part + replayed):
        item = mix[index]
        assert sorted(item.keys()) == ['energy', 'forces', 'group', 'pos', 'z']
        assert torch.equal(item.pos, source.pos) and torch.equal(item.forces, source.forces)
        assert item.group.tolist() == [int(mix.groups[index])]
    assert torch.equal(mix[-1].pos, replayed[-1].pos)
    with pytest.raises(IndexError):
        mix[7]
    # without groups nothing is added
    plain = ReplayMix(train_part, replayed)
    assert plain.groups is None and 'group' not in plain[0].keys()


def test_mix_refuses_replayed_structures_without_the_forces_of_the_loss():
    train_part = [molecule(3, -1.0, 0)]
    no_forces = [Data(z=torch.ones(2, dtype=torch.long), pos=torch.zeros(2, 3),
                      energy=torch.tensor([-1.0]))]
    with pytest.raises(ConfigError, match=r"have no \['forces'\]"):
        ReplayMix(train_part, no_forces, required=('energy', 'forces', 'stress'))
    with pytest.raises(ConfigError, match='non-empty'):
        ReplayMix(train_part, [])


def replay_overrides(tmp_path, size=None):
    distill, scans = write_label_files(tmp_path)
    out = ['data.dataset=OrganicDFT', 'data.group_key=molecule',
           f'data.replay_dataset={DISTILLATION}', f'data.replay_root={tmp_path / "replay"}',
           f'data.replay_args={{paths: [{distill}, {scans}]}}', 'data.replay_group_key=group']
    return out + ([f'data.replay_size={size}'] if size is not None else [])


def test_replayed_structures_join_the_training_split_only(tmp_path):
    plain = prepare_data(load_config(None, ['data.dataset=OrganicDFT',
                                            'data.group_key=molecule']).data, 0)
    config = load_config(None, replay_overrides(tmp_path, size=12))
    prepared = prepare_data(config.data, 0)
    # validation and test are those of the dataset alone (its fixed split by molecule)
    for key in ('idx_train', 'idx_val', 'idx_test'):
        assert torch.equal(prepared.split[key], plain.split[key])
    assert len(prepared.val) == len(plain.val) and len(prepared.test['test']) == len(
        plain.test['test'])
    # the training set: the dataset's training part, then whole dissociation scans (8
    # conformations each) and single conformations of the label files, 12 or up to one scan more
    mix = prepared.train
    assert isinstance(mix, ReplayMix) and mix.num_train == len(plain.train)
    assert 12 <= mix.num_replay < 12 + 8 and len(mix) == len(plain.train) + mix.num_replay
    replay_groups = structure_groups(prepared.replay, 'group')
    for scan in torch.unique(replay_groups[replay_groups >= 0]):
        assert int((replay_groups == scan).sum()) == 8
    train_groups, mixed_groups = mix.groups[:mix.num_train], mix.groups[mix.num_train:]
    assert (train_groups >= 0).all()  # every organic-dft conformation has its molecule
    assert set(train_groups.tolist()).isdisjoint(set(mixed_groups[mixed_groups >= 0].tolist()))
    # the replayed structures are served unchanged (energies in eV, forces in eV/A)
    for k in range(mix.num_replay):
        served, source = mix[mix.num_train + k], prepared.replay[k]
        assert torch.equal(served.energy, source.energy)
        assert torch.equal(served.forces, source.forces)
    # drawn with the split seed: the same structures every time
    again = prepare_data(config.data, 0).replay
    assert torch.equal(torch.cat([d.energy for d in again]),
                       torch.cat([d.energy for d in prepared.replay]))


def test_replay_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match='set data.replay_dataset'):
        load_config(None, ['data.replay_size=10'])
    with pytest.raises(ConfigError, match='data.replay_size'):
        load_config(None, [f'data.replay_dataset={DISTILLATION}', 'data.replay_size=0'])
    with pytest.raises(ConfigError, match='set it too'):
        load_config(None, [f'data.replay_dataset={DISTILLATION}', 'data.replay_group_key=g'])
    config = load_config(None, replay_overrides(tmp_path, size=10_000))
    with pytest.raises(ConfigError, match='10000 structures asked for'):
        prepare_data(config.data, 0)


def test_fine_tuning_with_replay_runs_on_the_engine(tmp_path):
    config = load_config(None, replay_overrides(tmp_path, size=16) + [
        'model.init=tensornet-ani1x', 'data.reference_energies=pretrained',
        'loss.relative_energy_weight=1.0', 'trainer.max_epochs=1',
        f'out_dir={tmp_path / "run"}'] + TINY_FINE_TUNING)
    result = train(config, verbose=False)
    assert result.steps > 0 and np.isfinite(result.test_metrics['test']['forces_mae'])
    # the training structures recorded with the model count the replayed ones
    prepared = prepare_data(config.data, config.seed)
    exported = open(osp.join(result.model_path, 'config.json')).read()
    assert f'"training_structures": {len(prepared.train)}' in exported
    assert len(prepared.train) == prepared.train.num_train + prepared.train.num_replay
    model, saved = load_trained_model(result.model_path)
    assert model.supported_elements == [1, 6, 7, 8]
    assert saved.data.replay_dataset == DISTILLATION and saved.data.replay_size == 16
