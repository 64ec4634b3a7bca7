"""Shared dataset machinery: safe processed files, checksums, splits, reference energies."""
import glob
import json
import os
import os.path as osp
import warnings

import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from pyg_tensorpot.datasets import (
    ChecksumError,
    MD17EthanolSample,
    fit_reference_energies,
    load_split,
    random_split,
    save_split,
    standard_split,
)
from pyg_tensorpot.datasets.base import (
    StorageBuilder,
    atomic_torch_save,
    git_blob_sha1,
    verify_checksum,
)
from pyg_tensorpot.datasets.reference_energies import atomref_tensor, reference_energy_sum
from pyg_tensorpot.datasets.splits import split_sizes


@pytest.fixture
def cached(tmp_path):
    MD17EthanolSample(str(tmp_path), log=False)
    path, = glob.glob(str(tmp_path / 'processed' / '*.pt'))
    return tmp_path, path


def test_processed_file_has_manifest_and_loads_weights_only(cached, monkeypatch):
    root, path = cached
    with open(path + '.json') as f:
        manifest = json.load(f)
    assert manifest['num_structures'] == 2000 and manifest['size'] == osp.getsize(path)
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('weights_only'))
        return original(*args, **kwargs)
    monkeypatch.setattr(torch, 'load', spy)
    ds = MD17EthanolSample(str(root), log=False)
    assert len(ds) == 2000 and calls == [True]


def test_corrupt_processed_file_is_reprocessed(cached):
    root, path = cached
    reference = MD17EthanolSample(log=False)
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xFF  # a flipped bit torch.load itself would not notice
    with open(path, 'wb') as f:
        f.write(bytes(data))
    with pytest.warns(UserWarning, match='SHA-256 differs'):
        ds = MD17EthanolSample(str(root), log=False)
    assert torch.equal(ds.storage().pos, reference.storage().pos)
    assert torch.equal(ds.storage().energy, reference.storage().energy)


def test_interrupted_processing_is_never_loaded(cached):
    root, path = cached
    os.remove(path + '.json')  # as if the run died between the data file and its manifest
    with open(path, 'r+b') as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match='no manifest'):
        ds = MD17EthanolSample(str(root), log=False)
    assert len(ds) == 2000


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError('disk full')
    target = tmp_path / 'x.pt'
    atomic_torch_save({'a': torch.ones(3)}, str(target))
    with pytest.raises(RuntimeError, match='disk full'):
        atomic_torch_save({'a': Boom()}, str(target))
    assert torch.equal(torch.load(target, weights_only=True)['a'], torch.ones(3))
    assert os.listdir(tmp_path) == ['x.pt']


def test_checksums(tmp_path):
    path = tmp_path / 'f.bin'
    path.write_bytes(b'hello\n')
    assert git_blob_sha1(str(path)) == 'ce013625030ba8dba906f756967f9e9ca394464a'  # git
    verify_checksum(str(path), 'md5', 'b1946ac92492d2347c6235b4d2611184')
    verify_checksum(str(path), 'git-blob', 'ce013625')  # published prefixes are accepted
    with pytest.raises(ChecksumError, match=r"f\.bin' has md5 b1946ac9"):
        verify_checksum(str(path), 'md5', '0' * 32)


def test_pre_transform_and_pre_filter(tmp_path):
    def keep_low(data):
        return bool(data.energy < -4214.7)

    def add_count(data):
        data.num_h = (data.z == 1).sum().view(1)
        return data
    ds = MD17EthanolSample(str(tmp_path), pre_filter=keep_low, pre_transform=add_count,
                           log=False)
    full = MD17EthanolSample(log=False)
    assert len(ds) == int((full.storage().energy < -4214.7).sum())
    assert ds[0].num_h.item() == 6 and (ds.storage().energy < -4214.7).all()


def test_split_sizes_follow_torchmdnet():
    assert split_sizes(100, 0.8, 0.1, None) == (80, 10, 10)
    assert split_sizes(2000, 950, 50, None) == (950, 50, 1000)
    assert split_sizes(130_831, 110_000, 10_000, None) == (110_000, 10_000, 10_831)
    assert split_sizes(15, 0.5, 0.5, None) == (8, 7, 0)  # rounding overshoot trimmed
    with pytest.raises(ValueError, match='at most one'):
        split_sizes(10, None, None, 2)
    with pytest.raises(ValueError, match='too few'):
        split_sizes(10, 8, 5, None)


def test_random_split_saved_and_reloaded(tmp_path):
    path = str(tmp_path / 'splits.npz')
    split = random_split(100, 0.8, 0.1, None, seed=1, path=path)
    perm = np.random.default_rng(1).permutation(100)
    assert split['idx_train'].tolist() == perm[:80].tolist()
    assert split['idx_test'].tolist() == perm[90:].tolist()
    again = random_split(100, 0.8, 0.1, None, seed=1, path=path)  # same file: fine
    assert all(torch.equal(split[k], again[k]) for k in split)
    with pytest.raises(ValueError, match='holds a different split'):
        random_split(100, 0.8, 0.1, None, seed=2, path=path)
    loaded = load_split(path, num=100)
    assert torch.equal(loaded['idx_val'], split['idx_val'])
    save_split({'idx_train': torch.tensor([0, 1]), 'idx_val': torch.tensor([1]),
                'idx_test': torch.tensor([2])}, str(tmp_path / 'bad.npz'))
    with pytest.raises(ValueError, match='overlap'):
        load_split(str(tmp_path / 'bad.npz'))


def test_standard_split_protocols():
    ds = MD17EthanolSample(log=False)
    assert [len(v) for v in standard_split(ds).values()] == [950, 50, 1000]
    ani = standard_split(ds, protocol='ani1x')
    assert [len(v) for v in ani.values()] == [1600, 200, 200]
    assert ani['idx_train'].tolist()[:3] == np.random.default_rng(1).permutation(2000)[:3].tolist()
    with pytest.raises(ValueError, match='unknown split protocol'):
        standard_split(ds, protocol='md22')


def test_reference_energy_helpers():
    ds = MD17EthanolSample(log=False)
    fit = ds[:500].fit_atomref()
    slow = fit_reference_energies([ds[i] for i in range(500)])
    assert fit == pytest.approx(slow)
    # with a single composition the minimum-norm fit reproduces the mean energy exactly
    total = reference_energy_sum(ds[0].z, None, fit)
    assert total.item() == pytest.approx(ds.storage().energy[:500].mean().item(), abs=1e-6)
    table = atomref_tensor({1: -13.6, 8: -2042.6}, max_z=10)
    assert table.shape == (10,) and table[8].item() == -2042.6 and table[6].item() == 0.0
    batch = torch.tensor([0, 0, 1])
    sums = reference_energy_sum(torch.tensor([1, 8, 1]), batch, {1: -1.0, 8: -10.0})
    assert sums.tolist() == [-11.0, -1.0]
    # the tables plug into the model API directly
    from pyg_tensorpot.models import AtomisticModel
    model = AtomisticModel(cutoff=5.0, max_z=10, self_loops=False)
    model.set_atomref(fit)
    assert model.atomref[8].item() == pytest.approx(fit[8], rel=1e-6)
    model.set_atomref(table)
    assert model.atomref[1].item() == pytest.approx(-13.6)
    data = [Data(z=torch.tensor([1, 1]), energy=torch.tensor([-2.0])),
            Data(z=torch.tensor([1, 8]), energy=torch.tensor([-11.0]))]
    assert fit_reference_energies(data) == pytest.approx({1: -1.0, 8: -10.0})


@pytest.mark.parametrize('kept', [19, 10])  # few dropped: view + zeroed tail; many: a copy
def test_storage_builder_after_late_drops(tmp_path, kept):
    builder = StorageBuilder(20, 60, {'pos': ((3,), torch.float32)},
                             {'energy': ((), torch.float64)})
    z = np.array([8, 1, 1])
    pos = np.arange(kept * 9, dtype=np.float32).reshape(kept, 3, 3)
    builder.add(z, {'pos': pos}, {'energy': -np.arange(kept, dtype=np.float64)})
    storage, slices = builder.finish()
    assert storage['z'].shape == (3 * kept,) and storage['energy'].shape == (kept,)
    atomic_torch_save((storage, slices), str(tmp_path / 'd.pt'))
    loaded, loaded_slices = torch.load(tmp_path / 'd.pt', weights_only=True)
    assert torch.equal(loaded['pos'], torch.from_numpy(pos.reshape(-1, 3)))
    assert loaded['z'].tolist() == [8, 1, 1] * kept
    assert loaded_slices['pos'].tolist() == list(range(0, 3 * kept + 1, 3))


def test_shared_constructor_arguments_are_stated_once():
    import inspect

    from pyg_tensorpot.datasets import ANI1x, COMP6, MD17, QM9, RMD17, SPICE, ExtXYZDataset
    from pyg_tensorpot.datasets.arguments import DatasetArguments, LocalDatasetArguments
    shared = list(DatasetArguments.__annotations__)
    local = list(LocalDatasetArguments.__annotations__)
    for cls, own in [(QM9, ['target']), (RMD17, ['molecule']), (MD17, ['molecule', 'train']),
                     (COMP6, ['subset']), (ANI1x, ['level', 'forces']),
                     (SPICE, ['version', 'energy'])]:
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[:2] == ['self', 'root'], cls
        assert all(name in params for name in own), cls
        assert list(params)[-len(shared):] == shared, cls
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in shared), cls
        assert params['log'].default is True and params['source'].default == 'raw'
        with pytest.raises(TypeError, match=f"{cls.__name__}.*unexpected keyword.*'lgo'"):
            cls('unused', lgo=False)
    params = inspect.signature(MD17EthanolSample.__init__).parameters
    assert list(params) == ['self', 'root'] + local
    # the bundled sample has no Hub copy and no checksum option: refused by name
    with pytest.raises(TypeError, match="MD17EthanolSample.*'mmap'"):
        MD17EthanolSample(mmap=True)
    with pytest.raises(TypeError, match="'source'"):
        ExtXYZDataset('unused', 'unused.xyz', source='hub')


def test_processing_writes_only_checked_files(cached):
    root, path = cached
    # PyG's default process step (unchecked pickles of the hooks) is not run
    assert sorted(os.listdir(root / 'processed')) == sorted([osp.basename(path),
                                                             osp.basename(path) + '.json'])
    ds = MD17EthanolSample(str(root), log=False)
    assert not ds.has_download and not ds.has_process


def test_index_selection_and_whole_storage(cached):
    root, _ = cached
    ds = MD17EthanolSample(str(root), log=False)
    view = ds[torch.tensor([5, 2, 7])]
    assert view.energies().tolist() == [ds[i].energy.item() for i in (5, 2, 7)]
    assert view.num_atoms.tolist() == [9, 9, 9]
    counts, elements = view.element_counts()
    assert elements == [1, 6, 8] and counts.tolist() == [[6.0, 2.0, 1.0]] * 3
    # storage() is the whole dataset whatever the view, and reads it without a warning
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert view.storage().energy.numel() == len(ds) == 2000


def test_a_root_is_needed_to_download(tmp_path, monkeypatch):
    from pyg_tensorpot.datasets import RMD17, RawFileError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RawFileError, match='no root folder'):
        RMD17(None, molecule='ethanol', log=False)
    assert os.listdir(tmp_path) == []  # nothing written into the working directory
