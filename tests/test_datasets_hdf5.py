"""ANI-1x, COMP6 v1 and SPICE from their HDF5 release layouts (real samples + written files)."""
import logging
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from pyg_tensorpot.datasets import ANI1x, COMP6, SPICE, ChecksumError, RawFileError, \
    fit_reference_energies, standard_split
from pyg_tensorpot.datasets.comp6 import COMP6_SUBSETS
from pyg_tensorpot.datasets.reference_energies import ANI1_SELF_ENERGIES_HARTREE
from pyg_tensorpot.datasets.spice import smiles_formal_charge
from pyg_tensorpot.utils.units import BOHR_TO_ANGSTROM, HARTREE_TO_EV

h5py = pytest.importorskip('h5py')

DATA = osp.join(osp.dirname(__file__), 'data')
ANI1X_SAMPLE = osp.join(DATA, 'ani1x', 'modelforge_ani1x_release_n5.hdf5')
SPICE_SAMPLE = osp.join(DATA, 'spice', 'modelforge_SPICE-1.1.4_n2.hdf5')
S66X8 = osp.join(DATA, 'comp6', 's66x8_wb97x6-31gd.h5')
# The ANI-1x and SPICE samples are small extracts: their checksums are not the releases'.
UNCHECKED = {'verify_checksums': False}


def place(src, root, name):
    os.makedirs(osp.join(root, 'raw'), exist_ok=True)
    shutil.copy(src, osp.join(root, 'raw', name))


# ----------------------------------------------------------------------------- ANI-1x
@pytest.fixture
def ani_root(tmp_path):
    place(ANI1X_SAMPLE, str(tmp_path), 'ani1x-release.h5')
    return str(tmp_path)


def test_ani1x_values(ani_root):
    ds = ANI1x(ani_root, **UNCHECKED, log=False)
    assert len(ds) == 8  # all 8 conformations of the sample have wB97X/6-31G(d) data
    with h5py.File(ANI1X_SAMPLE, 'r') as f:
        g = f['C1H4N4O4']
        energy, forces = g['wb97x_dz.energy'][0], g['wb97x_dz.forces'][0]
        pos, z = g['coordinates'][0], g['atomic_numbers'][()]
    first = ds[0]
    assert first.z.tolist() == z.tolist()
    assert first.energy.item() == pytest.approx(energy * HARTREE_TO_EV, abs=1e-9)
    # ANI-1x stores true forces (no sign change), Hartree/Angstrom -> eV/Angstrom
    assert torch.allclose(first.forces, torch.from_numpy(forces * HARTREE_TO_EV), rtol=1e-6)
    assert torch.equal(first.pos, torch.from_numpy(pos))
    assert ds.atomref()[1] == pytest.approx(-0.600952980 * HARTREE_TO_EV)


def test_ani1x_levels_self_energies_and_extras(ani_root, caplog):
    with caplog.at_level(logging.WARNING, logger='pyg_tensorpot.datasets'):
        cc = ANI1x(ani_root, **UNCHECKED, level='ccsd(t)_cbs', forces=False, log=False)
    assert len(cc) == 6 and 'forces' not in cc[0]
    assert 'dropped 2 conformations with NaN' in caplog.text  # C1H6N2O5 has 2 NaN rows
    with h5py.File(ANI1X_SAMPLE, 'r') as f:
        g = f['C1H4N4O4']
        e_cc = g['ccsd(t)_cbs.energy'][0]
        e_mp2 = g['hf_tz.energy'][0] + g['mp2_tz.corr_energy'][0]
        e_dz = g['wb97x_dz.energy'][0]
        z = g['atomic_numbers'][()]
        # conformations whose dipole and CM5 charges are both present, in file order
        dipoles = [row for name in f for row, q in zip(f[name]['wb97x_dz.dipole'][()],
                                                       f[name]['wb97x_dz.cm5_charges'][()])
                   if np.isfinite(row).all() and np.isfinite(q).all()]
    assert cc[0].energy.item() == pytest.approx(e_cc * HARTREE_TO_EV, abs=1e-9)
    assert cc.atomref()[8] == pytest.approx(-75.16043537275567 * HARTREE_TO_EV)
    mp2 = ANI1x(ani_root, **UNCHECKED, level='mp2_tz', forces=False, log=False)
    assert mp2[0].energy.item() == pytest.approx(e_mp2 * HARTREE_TO_EV, abs=1e-9)
    # the TensorNet-paper convention: minus the ANI-1 wB97X/6-31G(d) self energies
    paper = ANI1x(ani_root, **UNCHECKED, self_energies='ani1', log=False)
    ref = sum(ANI1_SELF_ENERGIES_HARTREE[int(v)] for v in z)
    assert paper[0].energy.item() == pytest.approx((e_dz - ref) * HARTREE_TO_EV, abs=1e-9)
    assert paper.atomref() is None
    extra = ANI1x(ani_root, **UNCHECKED, log=False,
                  extra_keys=('wb97x_dz.dipole', 'wb97x_dz.cm5_charges'))
    assert len(extra) == len(dipoles) == 4
    assert extra[0].wb97x_dz_dipole.shape == (1, 3)
    assert extra[0].wb97x_dz_cm5_charges.shape == extra[0].z.shape
    assert torch.allclose(extra.storage().wb97x_dz_dipole, torch.from_numpy(np.stack(dipoles)))
    with pytest.raises(ValueError, match='no forces'):
        ANI1x(ani_root, **UNCHECKED, level='ccsd(t)_cbs')
    with pytest.raises(ValueError, match='unknown ANI-1x level'):
        ANI1x(ani_root, **UNCHECKED, level='b3lyp')


def write_ani1x_layout(path, groups):
    """ANI-1x release layout: one group per formula, keys as in ani1x-release.h5."""
    with h5py.File(path, 'w') as f:
        for name, (z, pos, energy, forces) in groups.items():
            g = f.create_group(name)
            g['atomic_numbers'] = np.asarray(z, dtype=np.uint8)
            g['coordinates'] = np.asarray(pos, dtype=np.float32)
            g['wb97x_dz.energy'] = np.asarray(energy, dtype=np.float64)
            g['wb97x_dz.forces'] = np.asarray(forces, dtype=np.float32)
            g['ccsd(t)_cbs.energy'] = np.full(len(energy), np.nan)


def test_ani1x_nan_forces_dropped(tmp_path, caplog):
    rng = np.random.default_rng(0)
    forces = rng.normal(size=(4, 3, 3))
    forces[2, 2, 0] = np.nan
    energy = np.array([-76.1, np.nan, -76.3, -76.0])
    write_ani1x_layout(str(tmp_path / 'ani.h5'), {
        'H2O1': ([8, 1, 1], rng.normal(size=(4, 3, 3)), energy, forces),
        'H4C1': ([6, 1, 1, 1, 1], rng.normal(size=(2, 5, 3)), [-40.5, -40.4],
                 rng.normal(size=(2, 5, 3)))})
    place(str(tmp_path / 'ani.h5'), str(tmp_path), 'ani1x-release.h5')
    with caplog.at_level(logging.WARNING, logger='pyg_tensorpot.datasets'):
        ds = ANI1x(str(tmp_path), log=False, verify_checksums=False)
    assert len(ds) == 4 and 'dropped 2 conformations' in caplog.text
    expected = np.array([-76.1, -76.0, -40.5, -40.4]) * HARTREE_TO_EV
    assert np.allclose(ds.storage().energy.numpy(), expected, atol=1e-9)
    assert ds.num_atoms.tolist() == [3, 3, 5, 5]
    assert ds.storage().molecule.tolist() == [0, 0, 1, 1]
    # the fast least-squares path equals the per-structure one
    assert fit_reference_energies(ds) == pytest.approx(fit_reference_energies(list(ds)))
    split = standard_split(ds)
    assert [len(v) for v in split.values()] == [3, 0, 1]  # round(3.2), round(0.4), rest


def test_ani1x_checksum_is_checked(ani_root):
    # the 5-group sample is not the 5.6 GB release: its md5 differs from figshare's
    with pytest.raises(ChecksumError,
                       match='ani1x-release.h5.*98090dd6679106da861f52bed825ffb7'):
        ANI1x(ani_root, log=False)


def test_ani1x_corrupt_raw_file(tmp_path):
    os.makedirs(tmp_path / 'raw')
    (tmp_path / 'raw' / 'ani1x-release.h5').write_bytes(b'not an hdf5 file' * 10)
    with pytest.raises(RawFileError, match='ani1x-release.h5.*corrupt or incomplete'):
        ANI1x(str(tmp_path), log=False, verify_checksums=False)


# ----------------------------------------------------------------------------- COMP6
def test_comp6_s66x8_values(tmp_path):
    place(S66X8, str(tmp_path), 's66x8_wb97x6-31gd.h5')
    ds = COMP6(str(tmp_path), subset='s66x8', log=False)  # git blob id verified
    assert len(ds) == 528
    assert sorted(ds.storage().z.unique().tolist()) == [1, 6, 7, 8]
    assert ds.num_atoms.min().item() == 6 and ds.num_atoms.max().item() == 34
    with h5py.File(S66X8, 'r') as f:
        g = f['s66x8/mol00']
        energies, gradient = g['energies'][()], g['forces'][()]
    for k in (0, 5):
        assert ds[k].energy.item() == pytest.approx(energies[k] * HARTREE_TO_EV, abs=1e-9)
        # COMP6 v1 stores +dE/dR under "forces": the served forces are its negative
        assert torch.allclose(ds[k].forces, torch.from_numpy(-gradient[k] * HARTREE_TO_EV),
                              rtol=1e-6)
    # the water dimer energy is lowest at the second separation (0.95 x equilibrium)
    assert int(torch.argmin(ds.storage().energy[:8])) == 1
    assert ds.atomref()[6] == pytest.approx(-37.8302333826 * HARTREE_TO_EV)
    batch = next(iter(DataLoader(ds, batch_size=16)))
    assert batch.energy.shape == (16,) and batch.subset.unique().tolist() == [5]


def test_comp6_checksum_mismatch_names_file(tmp_path):
    place(S66X8, str(tmp_path), 's66x8_wb97x6-31gd.h5')
    path = tmp_path / 'raw' / 's66x8_wb97x6-31gd.h5'
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match='s66x8_wb97x6-31gd.h5.*git-blob'):
        COMP6(str(tmp_path), subset='s66x8', log=False)


def test_comp6_whole_suite_order(tmp_path):
    """The whole suite concatenates the six subsets in order; each file is written here in
    the S66x8 layout under its release name (top-level group named after the file)."""
    os.makedirs(tmp_path / 'raw')
    with h5py.File(S66X8, 'r') as src:
        for k, (subset, files) in enumerate(COMP6_SUBSETS.items()):
            for j, (_, file) in enumerate(files):
                with h5py.File(tmp_path / 'raw' / file, 'w') as dst:
                    top = dst.create_group(file[:-3])
                    src.copy(src[f's66x8/mol{k:02d}'], top, name='mol00')
                    src.copy(src[f's66x8/mol{10 + j:02d}'], top, name='mol01')
    ds = COMP6(str(tmp_path), subset='all', log=False, verify_checksums=False)
    n_files = sum(len(v) for v in COMP6_SUBSETS.values())
    assert len(ds) == n_files * 16
    assert ds.storage().subset.unique_consecutive().tolist() == list(range(6))
    assert ds.storage().molecule.max().item() == 2 * n_files - 1
    gdb = COMP6(str(tmp_path), subset='gdb10to13', log=False, verify_checksums=False)
    assert len(gdb) == 4 * 16
    with pytest.raises(ValueError, match='unknown COMP6 v1 subset'):
        COMP6(str(tmp_path), subset='gdb14')


# ----------------------------------------------------------------------------- SPICE
@pytest.fixture
def spice_root(tmp_path):
    place(SPICE_SAMPLE, str(tmp_path), 'SPICE-1.1.4.hdf5')
    return str(tmp_path)


def test_spice_checksum_is_checked(spice_root):
    # the sample is not the full release, so its md5 differs from the published one
    with pytest.raises(ChecksumError, match='SPICE-1.1.4.hdf5.*f27d4c81da0e37d6547276bf6b4ae6a1'):
        SPICE(spice_root, version='1.1.4', log=False)


def test_spice_values(spice_root):
    ds = SPICE(spice_root, version='1.1.4', log=False, verify_checksums=False)
    assert len(ds) == 55
    assert sorted(ds.storage().z.unique().tolist()) == [1, 6, 7, 11]
    with h5py.File(SPICE_SAMPLE, 'r') as f:
        g = f['103147721']
        bohr, grad = g['conformations'][3], g['dft_total_gradient'][3]
        formation = g['formation_energy'][3]
        total = g['dft_total_energy'][3]
    frame = ds[3]
    assert torch.allclose(frame.pos, torch.from_numpy(bohr * BOHR_TO_ANGSTROM).float(),
                          atol=1e-6)
    assert torch.allclose(frame.forces, torch.from_numpy(
        -grad.astype(np.float64) * HARTREE_TO_EV / BOHR_TO_ANGSTROM).float(), rtol=1e-6)
    assert frame.energy.item() == pytest.approx(formation * HARTREE_TO_EV, abs=1e-9)
    assert ds[0].charge.item() == 1 and ds[54].charge.item() == 1  # [N+] and [Na+]
    tot = SPICE(spice_root, version='1.1.4', energy='total', log=False,
                verify_checksums=False)
    assert tot[3].energy.item() == pytest.approx(total * HARTREE_TO_EV, abs=1e-9)


def test_spice_filters_and_extras(spice_root, caplog):
    kw = dict(version='1.1.4', log=False, verify_checksums=False)
    assert len(SPICE(spice_root, subsets=['DES370K'], **kw)) == 5
    assert len(SPICE(spice_root, subsets=['pubchem'], **kw)) == 50
    assert len(SPICE(spice_root, elements=['H', 'C', 'N', 'O'], **kw)) == 50
    full = SPICE(spice_root, **kw)
    norms = full.storage().forces.norm(dim=-1)
    per_frame = torch.stack([norms[full.slices['forces'][i]:full.slices['forces'][i + 1]].max()
                             for i in range(len(full))])
    # halfway between two frames: the dataset's float64 norms and these float32 ones differ
    # in the last bit, by kernel path, so a frame exactly at the limit may fall either side
    ordered = per_frame.sort().values
    limit = float(ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2
    capped = SPICE(spice_root, max_force=limit, **kw)
    assert len(capped) == int((per_frame <= limit).sum())
    assert all(capped[i].forces.norm(dim=-1).max() <= limit for i in range(len(capped)))
    with caplog.at_level(logging.WARNING, logger='pyg_tensorpot.datasets'):
        extra = SPICE(spice_root, extra_keys=('mbis_charges', 'scf_dipole'), **kw)
    assert len(extra) == 50 and 'lacking' in caplog.text  # C#C.[Na+] has no MBIS data
    assert extra[0].mbis_charges.shape == (27,) and extra[0].scf_dipole.shape == (1, 3)
    assert extra[0].mbis_charges.sum().item() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match='unknown SPICE version'):
        SPICE(spice_root, version='3.0')


def test_spice_2_layout_and_loader(tmp_path):
    """A small file in the SPICE 2.0.1 layout, under its release name."""
    os.makedirs(tmp_path / 'raw')
    with h5py.File(SPICE_SAMPLE, 'r') as src, \
            h5py.File(tmp_path / 'raw' / 'SPICE-2.0.1.hdf5', 'w') as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
    ds = SPICE(str(tmp_path), version='2.0.1', log=False, verify_checksums=False)
    assert len(ds) == 55 and ds.atomref() == {1: 0.0, 6: 0.0, 7: 0.0, 11: 0.0}
    batch = next(iter(DataLoader(ds, batch_size=55)))
    assert batch.charge.tolist() == [1] * 55 and batch.pos.shape == (50 * 27 + 5 * 5, 3)


def test_smiles_formal_charge():
    assert smiles_formal_charge('[H:3][C:1]#[C:2][H:4].[Na+:5]') == 1
    assert smiles_formal_charge('[O-:1][C:2](=[O:3])[O-:4]') == -2
    assert smiles_formal_charge('[Ca+2:1].[Cl-:2].[Cl-:3]') == 0
    assert smiles_formal_charge('[N@+:1]') == 1 and smiles_formal_charge('CCO') == 0
