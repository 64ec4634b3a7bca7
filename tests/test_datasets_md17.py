"""MD17, rMD17 and the bundled MD17 ethanol sample: units, layouts, splits, loaders."""
import logging
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from pyg_tensorpot.datasets import (
    MD17,
    RMD17,
    MD17EthanolSample,
    RawFileError,
    rmd17_split,
    split_datasets,
    standard_split,
)
from pyg_tensorpot.datasets.md17 import read_extxyz
from pyg_tensorpot.utils.units import KCAL_PER_MOL_TO_EV

HERE = osp.dirname(__file__)
RMD17_SAMPLE = osp.join(HERE, 'data', 'rmd17', 'rmd17fmt_ethanol_pbe_def2svp_pyscf_20.npz')
ETHANOL_Z = [6, 6, 8, 1, 1, 1, 1, 1, 1]


@pytest.fixture(scope='module')
def sample():
    return MD17EthanolSample(log=False)


def test_sample_values(sample):
    assert len(sample) == 2000
    first = sample[0]
    assert first.z.tolist() == ETHANOL_Z and first.z.dtype == torch.long
    # first frame of the file: energy=-97195.01189948035 kcal/mol, atom 0 force 26.23068692 ...
    assert first.energy.dtype == torch.float64 and first.energy.shape == (1,)
    assert first.energy.item() == pytest.approx(-97195.01189948035 * KCAL_PER_MOL_TO_EV,
                                                abs=1e-9)
    expected = torch.tensor([26.23068692, -14.15197537, 33.37017128]) * KCAL_PER_MOL_TO_EV
    assert torch.allclose(first.forces[0], expected, rtol=1e-6)
    assert torch.allclose(first.pos[1], torch.tensor([-1.17217626, -0.14702492, -0.70509080]))
    assert KCAL_PER_MOL_TO_EV == pytest.approx(0.0433641, rel=1e-6)


def test_sample_cached_on_disk_equals_in_memory(sample, tmp_path):
    cached = MD17EthanolSample(str(tmp_path), log=False)
    again = MD17EthanolSample(str(tmp_path), log=False)  # loads the processed file
    for i in (0, 1234, 1999):
        for key in ('z', 'pos', 'forces', 'energy'):
            assert torch.equal(cached[i][key], sample[i][key])
            assert torch.equal(again[i][key], sample[i][key])


def test_sample_split_and_loader(sample, tmp_path):
    split = standard_split(sample, path=str(tmp_path / 'splits.npz'))
    perm = np.random.default_rng(12345).permutation(2000)  # torchmd-net rMD17 protocol
    assert split['idx_train'].tolist() == perm[:950].tolist()
    assert split['idx_val'].tolist() == perm[950:1000].tolist()
    assert split['idx_test'].tolist() == perm[1000:].tolist()
    with np.load(tmp_path / 'splits.npz') as f:
        assert f['idx_val'].tolist() == perm[950:1000].tolist()
    train, val, test = split_datasets(sample, split)
    assert (len(train), len(val), len(test)) == (950, 50, 1000)
    batch = next(iter(DataLoader(train, batch_size=8, shuffle=False)))
    assert batch.num_graphs == 8 and batch.energy.shape == (8,)
    assert batch.forces.shape == (72, 3) and batch.batch.max().item() == 7
    assert batch.energy[0].item() == pytest.approx(sample[int(perm[0])].energy.item())


def write_rmd17_raw(root, molecule='ethanol', energies=None):
    folder = osp.join(root, 'raw', 'rmd17', 'npz_data')
    os.makedirs(folder, exist_ok=True)
    with np.load(RMD17_SAMPLE) as f:
        arrays = {k: f[k] for k in f.files}
    if energies is not None:
        arrays['energies'] = energies
    np.savez(osp.join(folder, f'rmd17_{molecule}.npz'), **arrays)
    splits = osp.join(root, 'raw', 'rmd17', 'splits')
    os.makedirs(splits, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        perm = rng.permutation(20)
        np.savetxt(osp.join(splits, f'index_train_0{k}.csv'), perm[:12], fmt='%d')
        np.savetxt(osp.join(splits, f'index_test_0{k}.csv'), perm[12:], fmt='%d')
    return arrays


def test_rmd17_values(tmp_path):
    arrays = write_rmd17_raw(str(tmp_path))
    ds = RMD17(str(tmp_path), molecule='ethanol', log=False)
    assert len(ds) == 20 and repr(ds) == "RMD17(20, molecule='ethanol')"
    frame = ds[3]
    assert frame.z.tolist() == arrays['nuclear_charges'].tolist()
    assert frame.energy.item() == pytest.approx(arrays['energies'][3] * KCAL_PER_MOL_TO_EV,
                                                abs=1e-9)
    assert frame.energy.item() == pytest.approx(-97078.0 * KCAL_PER_MOL_TO_EV, abs=1.0)
    assert torch.allclose(frame.forces, torch.from_numpy(
        arrays['forces'][3] * KCAL_PER_MOL_TO_EV).float(), rtol=1e-6, atol=1e-7)
    assert torch.allclose(frame.pos, torch.from_numpy(arrays['coords'][3]).float())
    assert frame.old_index.item() == 300
    # PyG's and torchmd-net's names select the same molecule
    alias = RMD17(str(tmp_path), molecule='revised ethanol', log=False)
    assert torch.equal(alias.storage().energy, ds.storage().energy)


def test_rmd17_official_split(tmp_path):
    write_rmd17_raw(str(tmp_path))
    ds = RMD17(str(tmp_path), molecule='ethanol', log=False)
    split = rmd17_split(ds, index=2, num_val=2, seed=0, path=str(tmp_path / 's.npz'))
    train_file = np.loadtxt(tmp_path / 'raw/rmd17/splits/index_train_02.csv', dtype=int)
    test_file = np.loadtxt(tmp_path / 'raw/rmd17/splits/index_test_02.csv', dtype=int)
    assert sorted(split['idx_train'].tolist() + split['idx_val'].tolist()) == \
        sorted(train_file.tolist())
    assert len(split['idx_val']) == 2
    assert split['idx_test'].tolist() == test_file.tolist()
    with pytest.raises(ValueError, match='five official splits'):
        rmd17_split(ds, index=6)


def test_rmd17_bad_names_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown rMD17 molecule 'ethanl'.*aspirin"):
        RMD17(str(tmp_path), molecule='ethanl')
    with pytest.raises(ValueError, match='unknown MD17 molecule'):
        MD17(str(tmp_path), molecule='caffeine')
    write_rmd17_raw(str(tmp_path))
    ds = RMD17(str(tmp_path), molecule='ethanol', log=False)
    shutil.rmtree(tmp_path / 'raw' / 'rmd17' / 'splits')
    with pytest.raises(RawFileError, match='index_train_01.csv'):
        rmd17_split(ds)


def test_npz_marked_encrypted_is_a_raw_file_error(tmp_path):
    # One flipped flag bit marks a zip member as encrypted: zipfile then raises RuntimeError
    # ("password required"), which must reach the user as a RawFileError naming the file.
    from pyg_tensorpot.datasets.md17 import _npz_arrays
    data = bytearray(open(RMD17_SAMPLE, 'rb').read())
    start = data.find(b'PK\x01\x02')  # the first central-directory entry; flags at +8
    assert start > 0
    data[start + 8] |= 0x01
    path = tmp_path / 'encrypted.npz'
    path.write_bytes(bytes(data))
    with pytest.raises(RawFileError, match='encrypted.npz'):
        _npz_arrays(str(path), ('energies', 'coords', 'forces', 'nuclear_charges'))
    # The file's own messages are kept, not wrapped again.
    with pytest.raises(RawFileError, match=r"has no \['no_such_key'\]"):
        _npz_arrays(RMD17_SAMPLE, ('no_such_key',))


def test_rmd17_nan_frames_dropped_and_logged(tmp_path, caplog):
    with np.load(RMD17_SAMPLE) as f:
        energies = f['energies'].copy()
    energies[[2, 5]] = np.nan
    write_rmd17_raw(str(tmp_path), energies=energies)
    with caplog.at_level(logging.WARNING, logger='pyg_tensorpot.datasets'):
        ds = RMD17(str(tmp_path), molecule='ethanol', log=False)
    assert len(ds) == 18
    assert 'dropped 2 of 20 frames' in caplog.text
    assert torch.isfinite(ds.storage().energy).all()


def test_md17_original_npz(tmp_path):
    arrays = read_extxyz(MD17EthanolSample.bundled_path())
    n = 9
    frames = 50
    raw = tmp_path / 'md17_ethanol' / 'raw'
    raw.mkdir(parents=True)
    R = arrays['pos'][:frames * n].reshape(frames, n, 3)
    F = arrays['forces'][:frames * n].reshape(frames, n, 3)
    E = arrays['energy'][:frames, None]  # sGDML stores E with shape (m, 1)
    np.savez(raw / 'md17_ethanol.npz', R=R, z=arrays['z'][:n], E=E, F=F, type='d',
             name='ethanol', theory='DFT: PBE+vdW-TS', r_unit='Ang', e_unit='kcal/mol')
    ds = MD17(str(tmp_path), molecule='ethanol', log=False)
    assert len(ds) == frames and repr(ds) == "MD17(50, molecule='ethanol')"
    sample = MD17EthanolSample(log=False)
    assert torch.allclose(ds.storage().energy, sample.storage().energy[:frames])
    assert torch.allclose(ds[7].forces, sample[7].forces)


def test_md17_coupled_cluster_needs_train_flag(tmp_path):
    with pytest.raises(ValueError, match='train=True or train=False'):
        MD17(str(tmp_path), molecule='ethanol CCSD(T)')
    with pytest.raises(ValueError, match='no published train/test split'):
        MD17(str(tmp_path), molecule='ethanol', train=True)
    raw = tmp_path / 'ethanol_ccsd_t' / 'raw'
    raw.mkdir(parents=True)
    with np.load(RMD17_SAMPLE) as f:
        R, z, E, F = f['coords'], f['nuclear_charges'], f['energies'], f['forces']
    np.savez(raw / 'ethanol_ccsd_t-train.npz', R=R[:15], z=z, E=E[:15, None], F=F[:15])
    np.savez(raw / 'ethanol_ccsd_t-test.npz', R=R[15:], z=z, E=E[15:, None], F=F[15:])
    train = MD17(str(tmp_path), molecule='ethanol CCSD(T)', train=True, log=False)
    test = MD17(str(tmp_path), molecule='ethanol CCSD(T)', train=False, log=False)
    assert (len(train), len(test)) == (15, 5)
    assert test[0].energy.item() == pytest.approx(E[15] * KCAL_PER_MOL_TO_EV)
