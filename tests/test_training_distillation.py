"""The distillation recipe on the training engine: label files (in the format of
examples/pretrain_ani1x_distillation.py label / label-dimers) as a dataset, the scan-relative
energy loss, batches and splits that keep a dissociation scan whole, and a short run through
``pyg-tensorpot train``."""
import json
import os.path as osp

import numpy as np
import pytest
import torch

h5py = pytest.importorskip('h5py')

from pyg_tensorpot.datasets.distillation import DistillationDataset, source_kind  # noqa: E402
from pyg_tensorpot.training.config import ConfigError, DataConfig  # noqa: E402
from pyg_tensorpot.training.data import make_split, structure_groups  # noqa: E402
from pyg_tensorpot.training.losses import EnergyForceLoss, group_relative_errors  # noqa: E402
from pyg_tensorpot.training.sampling import (  # noqa: E402
    GroupBatchSampler,
    training_loader,
)

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
S66X8 = osp.join(HERE, 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
HARTREE_TO_EV = 27.211386246
SYMBOLS = {'H': 1, 'C': 6, 'N': 7, 'O': 8}


def _s66_scans(first: int, count: int):
    """``count`` S66x8 dissociation scans (8 conformations each): z, pos, E (eV), F (eV/A)."""
    out = []
    with h5py.File(S66X8, 'r') as f:
        for index in range(first, first + count):
            g = f[f's66x8/mol{index:02d}']
            z = np.array([SYMBOLS[s.decode()] for s in g['species'][()]])
            out.append((z, g['coordinates'][()], g['energies'][()] * HARTREE_TO_EV,
                        -g['forces'][()] * HARTREE_TO_EV))
    return out


def write_label_files(folder) -> tuple:
    """A ``label`` file (the conformations of two S66x8 dimers as MD-like snapshots and
    pairs) and a ``label-dimers`` file (three S66x8 scans), with the arrays, dtypes and
    ``np.savez_compressed`` of the labeller; returns their paths."""
    def save(path, scans, sources, group=None, info=None):
        conformations = [(z, pos[k], e[k], f[k]) for z, pos, e, f in scans for k in range(8)]
        arrays = dict(
            natoms=np.array([len(z) for z, *_ in conformations]),
            z=np.concatenate([z for z, *_ in conformations]).astype(np.int8),
            pos=np.concatenate([p for _, p, _, _ in conformations]).astype(np.float32),
            energy=np.array([e for _, _, e, _ in conformations]),
            forces=np.concatenate([f for *_, f in conformations]).astype(np.float32),
            temperature=np.array([300.0 if s.startswith('qm9') else 0.0 for s in sources],
                                 dtype=np.float32),
            source=np.array(sources), info=json.dumps(info))
        if group is not None:
            arrays['group'] = group
        np.savez_compressed(path, **arrays)
        return str(path)

    sources = [f'qm9-db-{k}' for k in range(8)] + ['pair'] * 8
    distill = save(folder / 'ani1x_distill.npz', _s66_scans(0, 2), sources,
                   info={'molecules': 2, 'temperatures': [300.0], 'seed': 0})
    # label-dimers numbers its scans 0..scans-1 and drops whole scans (here scan 1)
    scans = save(folder / 'ani1x_dimer_scans.npz', _s66_scans(2, 3),
                 ['dimer-hbond'] * 16 + ['dimer-random'] * 8,
                 group=np.repeat([0, 2, 3], 8), info={'scans': 4, 'kept_scans': 3, 'seed': 1})
    return distill, scans


@pytest.fixture
def label_files(tmp_path):
    return write_label_files(tmp_path)


def test_dataset_reads_the_label_files(label_files, tmp_path):
    distill, scans = label_files
    dataset = DistillationDataset(str(tmp_path / 'processed'), paths=[distill, scans],
                                  log=False)
    assert len(dataset) == 16 + 24
    raw = np.load(scans)
    sample = dataset[16 + 8]  # the first conformation of the second scan
    assert sample.energy.dtype == torch.float64
    assert sample.energy.item() == raw['energy'][8]  # eV, unchanged
    start = int(raw['natoms'][:8].sum())
    np.testing.assert_array_equal(sample.forces.numpy(),
                                  raw['forces'][start:start + raw['natoms'][8]])
    assert sample.z.dtype == torch.long and sample.pos.shape == (raw['natoms'][8], 3)
    # the scans of the second file are numbered after the (absent) scans of the first
    groups = structure_groups(dataset, 'group')
    assert groups.tolist() == [-1] * 16 + [0] * 8 + [2] * 8 + [3] * 8
    names = [DistillationDataset.sources[int(d.source)] for d in dataset]
    assert names[:8] == ['qm9-db'] * 8 and names[8:16] == ['pair'] * 8
    assert set(names[16:]) == {'dimer'}
    assert [info['file'] for info in dataset.infos] == ['ani1x_distill.npz',
                                                         'ani1x_dimer_scans.npz']
    assert dataset.infos[1]['kept_scans'] == 3
    # the processed file is reused, and a changed label file is processed again
    again = DistillationDataset(str(tmp_path / 'processed'), paths=[distill, scans],
                                log=False)
    assert again.processed_paths == dataset.processed_paths
    assert source_kind('dsgdb9nsd_000001.xyz') == 'qm9-xyz'
    assert source_kind('s66-monomer-mol03') == 's66-monomer'
    assert source_kind('something-else') == 'other'


def test_dataset_refuses_bad_label_files(tmp_path, label_files):
    with pytest.raises(ValueError, match='needs paths'):
        DistillationDataset(paths=[])
    with pytest.raises(FileNotFoundError, match='label-file|does not exist'):
        DistillationDataset(paths=[str(tmp_path / 'missing.npz')])
    arrays = dict(np.load(label_files[0]))
    arrays['pos'] = arrays['pos'][:-1]
    np.savez(tmp_path / 'cut.npz', **arrays)
    from pyg_tensorpot.datasets import RawFileError
    with pytest.raises(RawFileError, match='pos has shape'):
        DistillationDataset(paths=[str(tmp_path / 'cut.npz')], log=False)
    del arrays['forces']
    np.savez(tmp_path / 'noforces.npz', **arrays)
    with pytest.raises(RawFileError, match=r"lacks \['forces'\]"):
        DistillationDataset(paths=[str(tmp_path / 'noforces.npz')], log=False)


def test_relative_energy_loss_equals_a_hand_computation():
    # float64 throughout: the same number on every CPU
    energy = torch.tensor([1.0, 2.0, 4.0, 10.0, 11.0, 7.0, -3.0], dtype=torch.float64)
    target = torch.tensor([0.0, 1.5, 3.0, 0.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    group = torch.tensor([4, 4, 4, 9, 9, -1, -1])
    diff = np.array([1.0, 0.5, 1.0, 10.0, 11.0])
    centred = np.concatenate([diff[:3] - diff[:3].mean(), diff[3:] - diff[3:].mean()])
    np.testing.assert_allclose(group_relative_errors(energy, target, group).numpy(), centred,
                               rtol=0, atol=1e-15)
    loss = EnergyForceLoss(energy_weight=0.5, force_weight=0.0, relative_energy_weight=3.0)
    parts = loss(energy, target, torch.full((7,), 2))
    per_molecule = ((energy - target) ** 2).mean().item()
    assert 'relative_energy' not in parts  # no groups given: no relative term
    parts = loss(energy, target, torch.full((7,), 2), group=group)
    assert parts['relative_energy'].item() == pytest.approx(np.mean(centred ** 2), abs=1e-15)
    assert parts['loss'].item() == pytest.approx(
        0.5 * per_molecule + 3.0 * np.mean(centred ** 2), abs=1e-14)
    mae = EnergyForceLoss(0.0, 0.0, 'mae', relative_energy_weight=1.0)
    assert mae(energy, target, torch.full((7,), 2), group=group)['loss'].item() == \
        pytest.approx(np.abs(centred).mean(), abs=1e-15)
    # a constant offset per scan does not count; structures in no scan never do
    shifted = target + torch.where(group >= 0, group, 0).double() * 0.25
    shifted[5:] += torch.tensor([5.0, -2.0], dtype=torch.float64)
    assert loss(shifted, target, torch.full((7,), 2), group=group)[
        'relative_energy'].item() == pytest.approx(0.0, abs=1e-15)
    # gradients reach the predicted energies
    energy.requires_grad_(True)
    loss(energy, target, torch.full((7,), 2), group=group)['loss'].backward()
    assert torch.isfinite(energy.grad).all() and energy.grad[:5].abs().sum() > 0


def test_validation_metric_spans_batches():
    from pyg_tensorpot.training.metrics import ErrorAccumulator, loss_from_metrics
    errors = ErrorAccumulator()
    target = torch.zeros(3, dtype=torch.float64)
    # scan 4 split over two evaluation batches: errors 1, 3 | 2; one structure in no scan
    errors.update(torch.tensor([1.0, 3.0, 9.0], dtype=torch.float64), target,
                  torch.full((3,), 2), group=torch.tensor([4, 4, -1]))
    errors.update(torch.tensor([2.0, 5.0, 7.0], dtype=torch.float64), target,
                  torch.full((3,), 2), group=torch.tensor([4, 8, 8]))
    metrics = errors.compute()
    centred = np.array([-1.0, 1.0, 0.0, -1.0, 1.0])  # scan 4: mean 2; scan 8: mean 6
    assert metrics['relative_energy_mae'] == pytest.approx(np.abs(centred).mean(), abs=1e-15)
    assert metrics['relative_energy_rmse'] == pytest.approx(
        np.sqrt(np.mean(centred ** 2)), abs=1e-15)
    assert loss_from_metrics(metrics, 'mse', 0.0, 0.0, False, relative_energy_weight=2.0) == \
        pytest.approx(2.0 * np.mean(centred ** 2), abs=1e-15)
    errors.reset()
    assert 'relative_energy_mae' not in errors.compute()


GROUPS = np.array([-1, 3, 3, 3, -1, 7, 7, -1, -1] + [11] * 8 + [-1] * 6 + [12] * 8)


def _check_whole(batches, groups):
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    for g in set(groups[groups >= 0].tolist()):
        members = set(np.nonzero(groups == g)[0].tolist())
        assert sum(members <= set(b) for b in batches) == 1, f'group {g} was split'


def test_group_batches_never_split_a_group():
    sampler = GroupBatchSampler(GROUPS, batch_size=6, seed=5)
    assert len(sampler) == 6  # ceil(31 / 6)
    seen = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # the same number every epoch
        _check_whole(batches, GROUPS)
        assert max(len(b) for b in batches) <= 6 + 8  # a batch, or up to one group more
        seen.append(batches)
    assert seen[0] != seen[1]  # a new order every epoch ...
    sampler.set_epoch(1)
    assert list(sampler) == seen[1]  # ... that is a function of (seed, epoch) only
    # more scans than the batch holds: one batch per unit at most
    assert len(GroupBatchSampler(np.repeat(np.arange(3), 8), batch_size=4)) == 3


def test_resuming_gives_the_same_batches(label_files):
    dataset = DistillationDataset(paths=list(label_files), log=False)
    groups = structure_groups(dataset, 'group')
    loader = training_loader(dataset, 8, seed=3, groups=groups)
    loader.order.set_epoch(2)
    epoch = list(loader)
    for batch in epoch:  # each of the three scans (8 conformations) whole in its batch
        scans = batch.group[batch.group >= 0]
        assert all(int((scans == g).sum()) == 8 for g in scans.unique())
    # interrupted after batch 1 of epoch 2: the resumed loader continues with batch 2
    loader.mark_batch(1)
    state = loader.state_dict()
    assert state == {'epoch': 2, 'batches': 2, 'seed': 3}
    resumed = training_loader(dataset, 8, seed=3, groups=groups)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(epoch) - 2
    assert all(torch.equal(a.pos, b.pos) and torch.equal(a.energy, b.energy)
               for a, b in zip(rest, epoch[2:]))
    with pytest.raises(ValueError, match='one process'):
        training_loader(dataset, 8, seed=3, num_replicas=2, rank=0, groups=groups)


def test_split_keeps_every_scan_on_one_side(label_files):
    dataset = DistillationDataset(paths=list(label_files), log=False)
    config = DataConfig(train_size=0.6, val_size=0.2, test_size=None, group_key='group')
    split = make_split(dataset, config, seed=1)
    groups = structure_groups(dataset, 'group').numpy()
    parts = [set(split[k].tolist()) for k in ('idx_train', 'idx_val', 'idx_test')]
    assert sum(len(p) for p in parts) == len(dataset)
    for g in (0, 2, 3):
        members = set(np.nonzero(groups == g)[0].tolist())
        assert sum(members <= p for p in parts) == 1
    with pytest.raises(ConfigError, match="no per-structure 'scan'"):
        make_split(dataset, DataConfig(train_size=0.6, val_size=0.2, group_key='scan'), 1)


def test_relative_weight_needs_groups():
    from pyg_tensorpot.training.config import TrainingConfig
    with pytest.raises(ConfigError, match='set data.group_key'):
        TrainingConfig.from_dict({'loss': {'relative_energy_weight': 1.0}})


def _stage_two(label_files, tmp_path, out, *overrides) -> list:
    """``pyg-tensorpot train`` arguments of stage 2 of the recipe
    (examples/distill-ani1x-tensornet-scans.yaml) for two epochs on the small label files,
    from the shipped tensornet-ani1x."""
    return ['train', osp.join(ROOT, 'examples', 'distill-ani1x-tensornet-scans.yaml'),
            'model.init=tensornet-ani1x', f'out_dir={out}', f'data.root={tmp_path / "data"}',
            f'data.args.paths=[{label_files[0]}, {label_files[1]}]', 'data.test_dataset=null',
            'data.train_size=0.7', 'data.val_size=0.3', 'data.batch_size=8',
            'trainer.max_epochs=2', 'trainer.max_time=null', *overrides]


def test_recipe_fine_tunes_through_the_command_line(label_files, tmp_path):
    pytest.importorskip('lightning')
    pytest.importorskip('yaml')
    import csv

    from pyg_tensorpot.cli import main
    from pyg_tensorpot.hub import from_pretrained
    out = tmp_path / 'run'
    assert main(_stage_two(label_files, tmp_path, out) + ['--quiet']) == 0
    split = np.load(out / 'splits.npz')
    groups = np.array([-1] * 16 + [0] * 8 + [2] * 8 + [3] * 8)
    for g in (0, 2, 3):  # every scan on one side of the split
        sides = [np.isin(np.nonzero(groups == g)[0], split[k]).all()
                 for k in ('idx_train', 'idx_val')]
        assert sum(sides) == 1
    with open(out / 'logs' / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    relative = [float(r['train_relative_energy_loss']) for r in rows
                if r.get('train_relative_energy_loss')]
    assert len(relative) == 2 and all(np.isfinite(relative)) and relative[0] > 0
    validation = [float(r['val_relative_energy_mae']) for r in rows
                  if r.get('val_relative_energy_mae')]
    assert len(validation) == 2 and all(v > 0 for v in validation)
    model = from_pretrained(str(out / 'model'))
    assert model.supported_elements == [1, 6, 7, 8]
    z, pos, e, _ = _s66_scans(0, 1)[0]
    energy = model(torch.from_numpy(z), torch.from_numpy(pos[0]).float())
    assert abs(energy.item() - e[0]) < 0.01 * abs(e[0])  # the pretrained scale was kept


def test_interrupted_run_resumes_to_the_same_model(label_files, tmp_path):
    """A run stopped in the middle of its second epoch (after a step checkpoint) and resumed
    ends with exactly the weights of an uninterrupted run: the resumed loader gives the rest
    of that epoch's group batches."""
    pytest.importorskip('lightning')
    pytest.importorskip('yaml')
    from safetensors.torch import load_file

    from pyg_tensorpot.training import load_config, train

    def run(out, *overrides, resume=None):
        args = _stage_two(label_files, tmp_path, out, 'trainer.checkpoint_every_n_steps=1',
                          *overrides)
        return train(load_config(args[1], args[2:]), resume=resume, verbose=False)

    reference = run(tmp_path / 'a')
    per_epoch = reference.steps // 2
    assert per_epoch >= 2
    stopped = run(tmp_path / 'b', f'trainer.max_steps={per_epoch + 2}')
    state = torch.load(tmp_path / 'b' / 'checkpoints' / 'last.ckpt', weights_only=True)
    # the step checkpoint of the last step run: two batches into the second epoch
    assert state['global_step'] == per_epoch + 2
    assert state['loops']['fit_loop']['state_dict']['combined_loader'] == [
        {'epoch': 1, 'batches': 2, 'seed': 0}]
    assert stopped.steps == per_epoch + 2
    resumed = run(tmp_path / 'b', resume='auto')
    assert resumed.steps == reference.steps
    weights = [load_file(osp.join(r.model_path, 'model.safetensors'))
               for r in (reference, resumed)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
