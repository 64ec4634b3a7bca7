"""Property-based fuzzing of the dataset readers (issue 17, part 4).

Every raw format a loader reads (HDF5 of ANI-1x / COMP6 / SPICE, rMD17 npz, extended XYZ, the
rMD17 tar.bz2 and QM9 zip archives) and the processed file are damaged in drawn ways: cut at a
drawn offset, bits flipped at drawn positions, keys or groups removed, values of the wrong
dtype or shape, NaN energies. Whatever is drawn, building the dataset must either give a
correct dataset (finite served values, the expected number of structures where that is
known) or raise the documented :class:`RawFileError` / :class:`ChecksumError` whose message
names the damaged file, and a failure must leave the raw files byte for byte and the folder
listing as they were, with no partial processed file.
"""
import hashlib
import io
import os
import os.path as osp
import shutil
import tarfile
import tempfile
import warnings
import zipfile

import numpy as np
import pytest
import torch

from pyg_tensorpot.datasets import ANI1x, COMP6, RMD17, SPICE, MD17EthanolSample
from pyg_tensorpot.datasets.base import (
    LOCK_FILE_NAME,
    ChecksumError,
    RawFileError,
    extract_archive,
)
from pyg_tensorpot.datasets.md17 import read_extxyz
from pyg_tensorpot.datasets.qm9 import QM9

h5py = pytest.importorskip('h5py')
hypothesis = pytest.importorskip('hypothesis')
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DATA = osp.join(osp.dirname(__file__), 'data')
ANI1X_SAMPLE = osp.join(DATA, 'ani1x', 'modelforge_ani1x_release_n5.hdf5')
SPICE_SAMPLE = osp.join(DATA, 'spice', 'modelforge_SPICE-1.1.4_n2.hdf5')
S66X8 = osp.join(DATA, 'comp6', 's66x8_wb97x6-31gd.h5')
RMD17_SAMPLE = osp.join(DATA, 'rmd17', 'rmd17fmt_ethanol_pbe_def2svp_pyscf_20.npz')
QM9_XYZ = osp.join(DATA, 'qm9')
BUNDLED_EXTXYZ = MD17EthanolSample.bundled_path()  # before the tests point it elsewhere

# Each example builds a dataset from files of tens of kB, so a few tens of examples per
# reader keep the whole file well under a minute; tmp_path only holds the per-example folders.
FUZZ = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
DOCUMENTED = (RawFileError, ChecksumError)

# ----------------------------------------------------------------------------- invariants
def listing(root):
    """``{relative path: sha256}`` of every file below :obj:`root` except the lock file."""
    out = {}
    for base, _, files in os.walk(root):
        for file in files:
            path = osp.join(base, file)
            rel = osp.relpath(path, root)
            if rel != LOCK_FILE_NAME:
                with open(path, 'rb') as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def build_checked(root, build, names, expected_len=None, extracts=False):
    """Runs :obj:`build` on :obj:`root` and checks the outcome; returns the dataset or
    :obj:`None` after a documented failure. With :obj:`extracts`, a success may replace the
    raw archive by its members."""
    before = listing(root)
    raw_before = {k: v for k, v in before.items() if k.startswith('raw' + os.sep)}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        try:
            ds = build()
        except DOCUMENTED as error:
            message = str(error)
            assert any(name in message for name in names), message
            after = listing(root)
            assert after == before, f'{message}\nfiles changed: {set(after) ^ set(before)}'
            return None
    after = listing(root)
    if not extracts:
        assert {k: v for k, v in after.items() if k.startswith('raw' + os.sep)} == raw_before
    processed = sorted(k for k in after if k.startswith('processed' + os.sep))
    assert len(processed) == 2 and processed[1] == processed[0] + '.json', processed
    assert not any(k.endswith('.tmp') for k in after)
    assert_served_finite(ds)
    if expected_len is not None:
        assert len(ds) == expected_len
    return ds


def assert_served_finite(ds):
    assert len(ds) > 0
    store = ds.storage()
    for key in ('pos', 'energy', 'forces'):
        if key in store:
            assert torch.isfinite(store[key]).all(), key
    ptr = ds.slices['z']
    assert int(ptr[-1]) == store.z.numel() == store.pos.size(0)
    assert ((store.z >= 1) & (store.z <= 118)).all()
    sample = ds[len(ds) - 1]
    assert sample.pos.shape == (sample.z.numel(), 3) and sample.energy.shape == (1,)


def damage(data: bytes, cut, flips) -> bytes:
    """:obj:`data` cut to :obj:`cut` bytes (when not :obj:`None`) with the drawn bit flips."""
    out = bytearray(data)
    for position, bit in flips:
        out[position % len(out)] ^= 1 << bit
    return bytes(out if cut is None else out[:cut % max(len(out), 1)])


def damage_draws(max_flips=6):
    """Either a cut at a drawn offset or drawn bit flips (offsets wrap around the file)."""
    flips = st.lists(st.tuples(st.integers(0, 1 << 31), st.integers(0, 7)), min_size=1,
                     max_size=max_flips)
    return st.one_of(st.tuples(st.integers(0, 1 << 31), st.just([])),
                     st.tuples(st.none(), flips))


def fresh_root(tmp_path):
    return tempfile.mkdtemp(dir=tmp_path)


def put(root, name, data: bytes):
    path = osp.join(root, 'raw', name)
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def read(path) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


# ----------------------------------------------------------------------------- HDF5 bytes
HDF5_READERS = {
    'ANI-1x HDF5': (ANI1X_SAMPLE, 'ani1x-release.h5',
                    lambda root: ANI1x(root, log=False, verify_checksums=False)),
    'SPICE HDF5': (SPICE_SAMPLE, 'SPICE-1.1.4.hdf5',
                   lambda root: SPICE(root, version='1.1.4', log=False, verify_checksums=False)),
    'COMP6 HDF5': (S66X8, 's66x8_wb97x6-31gd.h5',
                   lambda root: COMP6(root, subset='s66x8', log=False,
                                      verify_checksums=False)),
}


@pytest.mark.parametrize('reader', list(HDF5_READERS))
@FUZZ
@given(draw=damage_draws())
@example(draw=(None, [(120, 0)]))  # found: h5py raised RuntimeError (wrong B-tree signature)
@example(draw=(None, [(50532, 6)]))  # found: a damaged ANI-1x force became -inf in float32
def test_hdf5_damaged_bytes(tmp_path, reader, draw):
    source, name, build = HDF5_READERS[reader]
    root = fresh_root(tmp_path)
    put(root, name, damage(read(source), *draw))
    build_checked(root, lambda: build(root), [name])


# ----------------------------------------------------------------------------- HDF5 layout
def _mutate_group(group, key, operation, rng):
    """Applies one drawn layout damage to ``group[key]`` (``rng`` picks the NaN rows)."""
    value = group[key][()]
    del group[key]
    if operation == 'delete':
        return
    if operation == 'text':
        group[key] = np.array([b'not a number'] * max(1, np.shape(value)[0] if np.ndim(value)
                                                       else 1))
    elif operation == 'int':
        with np.errstate(invalid='ignore'):  # NaN holes cast to some integer
            group[key] = np.asarray(value).astype(np.int64) \
                if np.asarray(value).dtype.kind == 'f' else np.asarray(value)
    elif operation == 'drop_row':
        group[key] = np.asarray(value)[:-1] if np.ndim(value) else value
    elif operation == 'transpose':
        group[key] = np.asarray(value).T
    elif operation == 'scalar':
        flat = np.asarray(value).reshape(-1)
        group[key] = flat[0] if flat.size else np.float64(0.0)
    elif operation == 'nan':
        array = np.array(value, dtype=np.float64) if np.asarray(value).dtype.kind == 'f' \
            else np.asarray(value)
        if array.dtype.kind == 'f' and array.ndim and array.shape[0]:  # drop_row may empty it
            rows = rng.choice(array.shape[0], size=max(1, array.shape[0] // 2), replace=False)
            array[rows] = np.nan
        group[key] = array


LAYOUT_OPERATIONS = ['delete', 'text', 'int', 'drop_row', 'transpose', 'scalar', 'nan']
LAYOUT_KEYS = {
    'ANI-1x HDF5': ['atomic_numbers', 'coordinates', 'wb97x_dz.energy', 'wb97x_dz.forces'],
    'SPICE HDF5': ['atomic_numbers', 'conformations', 'formation_energy',
                   'dft_total_gradient', 'smiles', 'subset'],
    'COMP6 HDF5': ['species', 'coordinates', 'energies', 'forces'],
}

FLOAT_KEYS = {
    'ANI-1x HDF5': {'coordinates', 'wb97x_dz.energy', 'wb97x_dz.forces'},
    'SPICE HDF5': {'conformations', 'formation_energy', 'dft_total_gradient'},
    'COMP6 HDF5': {'coordinates', 'energies', 'forces'},
}
TYPED_KEYS = {reader: keys | ({'atomic_numbers'} if reader != 'COMP6 HDF5' else set())
              for reader, keys in FLOAT_KEYS.items()}


def _small_comp6(path):
    with h5py.File(S66X8, 'r') as src, h5py.File(path, 'w') as dst:
        top = dst.create_group('s66x8')
        for k in (0, 7):
            src.copy(src[f's66x8/mol{k:02d}'], top, name=f'mol{k:02d}')


@pytest.mark.parametrize('reader', list(LAYOUT_KEYS))
@FUZZ
@given(data=st.data())
def test_hdf5_damaged_layout(tmp_path, reader, data):
    source, name, build = HDF5_READERS[reader]
    root = fresh_root(tmp_path)
    path = put(root, name, b'')
    if reader == 'COMP6 HDF5':
        _small_comp6(path)
    else:
        shutil.copy(source, path)
    with h5py.File(path, 'r') as f:
        groups = sorted(g.name for g in _groups(f))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16), label='seed'))
    edits = data.draw(st.lists(st.tuples(st.sampled_from(groups),
                                         st.sampled_from(LAYOUT_KEYS[reader]),
                                         st.sampled_from(LAYOUT_OPERATIONS + ['group'])),
                               min_size=1, max_size=3), label='edits')
    wrong_dtype = set()
    with h5py.File(path, 'r+') as f:
        for group, key, operation in edits:
            if group not in f:
                continue
            if operation == 'group':
                del f[group]
            elif key in f[group]:
                if (operation == 'text' and key in TYPED_KEYS[reader]) or \
                        (operation == 'int' and key in FLOAT_KEYS[reader]):
                    wrong_dtype.add(group)
                _mutate_group(f[group], key, operation, rng)
        wrong_dtype &= set(g.name for g in _groups(f))
    ds = build_checked(root, lambda: build(root), [name])
    if wrong_dtype:  # text or integer positions/energies/forces are never accepted
        assert ds is None, wrong_dtype


def _groups(f):
    found = []

    def visit(_, item):
        if isinstance(item, h5py.Group) and any(isinstance(v, h5py.Dataset)
                                                for v in item.values()):
            found.append(item)
    f.visititems(visit)
    return found


@FUZZ
@given(data=st.data())
def test_ani1x_nan_energies_are_dropped_exactly(tmp_path, data):
    """NaN energies drawn at random: the dataset keeps exactly the other conformations."""
    root = fresh_root(tmp_path)
    path = put(root, 'ani1x-release.h5', read(ANI1X_SAMPLE))
    with h5py.File(path, 'r+') as f:
        sizes = {name: f[name]['wb97x_dz.energy'].shape[0] for name in f}
        flat = [(name, row) for name in sorted(sizes) for row in range(sizes[name])]
        chosen = data.draw(st.sets(st.sampled_from(flat), max_size=len(flat)), label='nan')
        for name, row in chosen:
            energy = f[name]['wb97x_dz.energy'][()]
            energy[row] = np.nan
            f[name]['wb97x_dz.energy'][...] = energy
    expected = len(flat) - len(chosen)
    ds = build_checked(root, lambda: ANI1x(root, log=False, verify_checksums=False),
                       ['ani1x-release.h5'], expected_len=expected or None)
    assert (ds is None) == (expected == 0)


# ----------------------------------------------------------------------------- rMD17 npz
def _rmd17_arrays():
    with np.load(RMD17_SAMPLE) as f:
        return {k: f[k] for k in f.files}


RMD17_NAME = osp.join('rmd17', 'npz_data', 'rmd17_ethanol.npz')


def _npz_bytes(arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@FUZZ
@given(draw=damage_draws())
@example(draw=(None, [(395, 2)]))  # found: a damaged .npy header raised SyntaxError
def test_rmd17_npz_damaged_bytes(tmp_path, draw):
    root = fresh_root(tmp_path)
    put(root, RMD17_NAME, damage(_npz_bytes(_rmd17_arrays()), *draw))
    build_checked(root, lambda: RMD17(root, molecule='ethanol', log=False),
                  ['rmd17_ethanol.npz'])


NPZ_KEYS = ['nuclear_charges', 'coords', 'energies', 'forces', 'old_indices']


@FUZZ
@given(key=st.sampled_from(NPZ_KEYS), operation=st.sampled_from(LAYOUT_OPERATIONS),
       seed=st.integers(0, 2 ** 16))
def test_rmd17_npz_damaged_layout(tmp_path, key, operation, seed):
    arrays = _rmd17_arrays()
    value, rng = arrays.pop(key), np.random.default_rng(seed)
    expected = None
    if operation == 'text':
        arrays[key] = np.array(['not a number'] * len(value))
    elif operation == 'int':
        arrays[key] = value.astype(np.int64)
    elif operation == 'drop_row':
        arrays[key] = value[:-1]
    elif operation == 'transpose':
        arrays[key] = value.T
    elif operation == 'scalar':
        arrays[key] = value.reshape(-1)[:1].reshape(())
    elif operation == 'nan':
        array = value.astype(np.float64)
        rows = rng.choice(len(array), size=int(rng.integers(1, len(array) + 1)), replace=False)
        array[rows] = np.nan
        arrays[key] = array
        if key in ('coords', 'energies', 'forces'):
            expected = len(value) - len(rows)
    root = fresh_root(tmp_path)
    put(root, RMD17_NAME, _npz_bytes(arrays))
    ds = build_checked(root, lambda: RMD17(root, molecule='ethanol', log=False),
                       ['rmd17_ethanol.npz'], expected_len=expected or None)
    if operation == 'nan' and expected:
        assert ds is not None
    if ds is not None and key != 'old_indices' and operation in ('delete', 'text'):
        pytest.fail(f'{operation} of {key} was accepted')


# ----------------------------------------------------------------------------- extended XYZ
def _extxyz_text(frames=12) -> bytes:
    with open(BUNDLED_EXTXYZ, 'rb') as f:
        lines = f.read().split(b'\n')
    return b'\n'.join(lines[:frames * 11]) + b'\n'


@FUZZ
@given(draw=damage_draws(max_flips=4))
def test_extxyz_damaged_bytes(tmp_path, draw, monkeypatch):
    """The MD17 sample reader on a damaged copy of its first 12 frames (through the dataset,
    with the bundled path pointed at the copy and its checksum set aside)."""
    folder = fresh_root(tmp_path)
    path = osp.join(folder, 'frames.extxyz')
    with open(path, 'wb') as f:
        f.write(damage(_extxyz_text(), *draw))
    monkeypatch.setattr(MD17EthanolSample, 'bundled_path', staticmethod(lambda: path))
    monkeypatch.setattr(MD17EthanolSample, 'checksums', {})
    root = osp.join(folder, 'root')
    os.makedirs(root)
    before = read(path)
    try:
        arrays = read_extxyz(path)
    except RawFileError as error:
        assert 'frames.extxyz' in str(error)
        arrays = None
    ds = build_checked(root, lambda: MD17EthanolSample(root, log=False), ['frames.extxyz'])
    assert read(path) == before
    if arrays is None:
        assert ds is None
    elif 'forces' in arrays and arrays['forces'].shape[1] == 3:
        owner = np.repeat(np.arange(arrays['energy'].size), arrays['num_atoms'])
        good = np.isfinite(arrays['energy'])
        with np.errstate(over='ignore'):
            bad = ~(np.isfinite(arrays['pos'].astype(np.float32)).all(1) &
                    np.isfinite(arrays['forces'].astype(np.float32)).all(1))
        good[owner[bad]] = False
        assert (ds is None) == (not good.any())
        if ds is not None:
            assert ds.storage().idx.tolist() == np.nonzero(good)[0].tolist()


@FUZZ
@given(frame=st.integers(0, 11), field=st.sampled_from(['energy', 'pos', 'forces']),
       token=st.sampled_from(['nan', 'inf', '-inf', '1e999']))
def test_extxyz_non_finite_values_dropped(tmp_path, frame, field, token, monkeypatch):
    lines = _extxyz_text().decode().split('\n')
    head = frame * 11
    if field == 'energy':
        lines[head + 1] = lines[head + 1].replace('energy=', f'energy={token} old=', 1)
    else:
        fields = lines[head + 3].split()
        fields[1 if field == 'pos' else 4] = token
        lines[head + 3] = ' '.join(fields)
    folder = fresh_root(tmp_path)
    path = osp.join(folder, 'frames.extxyz')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
    monkeypatch.setattr(MD17EthanolSample, 'bundled_path', staticmethod(lambda: path))
    monkeypatch.setattr(MD17EthanolSample, 'checksums', {})
    ds = MD17EthanolSample(log=False)
    assert len(ds) == 11 and frame not in ds.storage().idx.tolist()
    assert_served_finite(ds)


# ----------------------------------------------------------------------------- archives
def _rmd17_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:bz2') as archive:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        add('rmd17/npz_data/rmd17_ethanol.npz', _npz_bytes(_rmd17_arrays()))
        for k in range(1, 6):
            add(f'rmd17/splits/index_train_0{k}.csv', b'\n'.join(b'%d' % i for i in range(12)))
            add(f'rmd17/splits/index_test_0{k}.csv', b'\n'.join(b'%d' % i for i in range(12, 20)))
    return buffer.getvalue()


@FUZZ
@given(draw=damage_draws())
@example(draw=(None, [(842, 7)]))  # found: tarfile extracted a cut-short member silently
def test_rmd17_archive_damaged_bytes(tmp_path, draw):
    """rMD17 from ``rmd17.tar.bz2`` placed in ``raw/`` (as after a download): a damaged
    archive is refused and left in place, nothing half-extracted stays behind."""
    root = fresh_root(tmp_path)
    archive = put(root, 'rmd17.tar.bz2', damage(_rmd17_archive(), *draw))
    ds = build_checked(root, lambda: RMD17(root, molecule='ethanol', log=False),
                       ['rmd17.tar.bz2', 'rmd17_ethanol.npz'], extracts=True)
    if ds is not None:  # extracted completely: the archive is gone, every member is there
        assert not osp.exists(archive)
        assert len(os.listdir(osp.join(root, 'raw', 'rmd17', 'splits'))) == 10


def test_archive_with_unsafe_or_missing_members(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:bz2') as archive:
        info = tarfile.TarInfo('../outside.txt')
        info.size = 2
        archive.addfile(info, io.BytesIO(b'hi'))
    root = str(tmp_path)
    path = put(root, 'rmd17.tar.bz2', buffer.getvalue())
    with pytest.raises(RawFileError, match='rmd17.tar.bz2.*corrupt'):
        RMD17(root, molecule='ethanol', log=False)
    assert sorted(os.listdir(tmp_path)) == sorted(['raw', LOCK_FILE_NAME])
    assert os.listdir(tmp_path / 'raw') == ['rmd17.tar.bz2']
    with open(path, 'wb') as f:
        f.write(_rmd17_archive())
    with pytest.raises(RawFileError, match=r"lacks \['rmd17/npz_data/rmd17_aspirin.npz'\]"):
        RMD17(root, molecule='aspirin', log=False)
    assert os.listdir(tmp_path / 'raw') == ['rmd17.tar.bz2']
    members = extract_archive(path, str(tmp_path / 'out'), ['rmd17/npz_data/rmd17_ethanol.npz'])
    assert len(members) == 11 and os.listdir(tmp_path / 'out') == ['rmd17']


def _qm9_zip() -> bytes:
    """``qm9.zip`` (``gdb9.sdf`` and ``gdb9.sdf.csv``) from the first 10 QM9 molecules."""
    sdf, csv = [], ['mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,u298,h298,g298,cv,'
                    'u0_atom,u298_atom,h298_atom,g298_atom']
    for k in range(1, 11):
        with open(osp.join(QM9_XYZ, f'dsgdb9nsd_{k:06d}.xyz')) as f:
            lines = f.read().replace('*^', 'e').splitlines()
        n = int(lines[0])
        props = lines[1].split()[2:17]
        atoms = [line.split() for line in lines[2:2 + n]]
        sdf.append(f'gdb_{k}\n     RDKit          3D\n\n{n:3d}  0  0  0  0  0  0  0  0  0999 '
                   f'V2000')
        for s, x, y, z, _ in atoms:
            sdf.append(f'{float(x):10.4f}{float(y):10.4f}{float(z):10.4f} {s:<3} 0  0  0  0  0'
                       f'  0  0  0  0  0  0  0')
        sdf.append('M  END\n$$$$')
        csv.append(','.join([f'gdb_{k}'] + props + ['-1.0'] * 4))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as archive:
        archive.writestr('gdb9.sdf', '\n'.join(sdf) + '\n')
        archive.writestr('gdb9.sdf.csv', '\n'.join(csv) + '\n')
    return buffer.getvalue()


UNCHARACTERIZED = ''.join(f'header {k}\n' for k in range(9)) + '      3  C3  x\n  1 footer\n'


@FUZZ
@given(draw=damage_draws())
def test_qm9_archive_damaged_bytes(tmp_path, draw):
    root = fresh_root(tmp_path)
    put(root, 'uncharacterized.txt', UNCHARACTERIZED.encode())
    archive = put(root, 'qm9.zip', damage(_qm9_zip(), *draw))
    ds = build_checked(root, lambda: QM9(root, log=False), ['qm9.zip', 'gdb9.sdf'],
                       extracts=True)
    if ds is not None:
        assert not osp.exists(archive) and len(ds) <= 9


@FUZZ
@given(name=st.sampled_from(['gdb9.sdf', 'gdb9.sdf.csv', 'uncharacterized.txt']),
       draw=damage_draws(max_flips=4))
def test_qm9_text_files_damaged(tmp_path, name, draw):
    root = fresh_root(tmp_path)
    put(root, 'uncharacterized.txt', UNCHARACTERIZED.encode())
    with zipfile.ZipFile(io.BytesIO(_qm9_zip())) as archive:
        for member in ('gdb9.sdf', 'gdb9.sdf.csv'):
            put(root, member, archive.read(member))
    path = osp.join(root, 'raw', name)
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(damage(data, *draw))
    build_checked(root, lambda: QM9(root, log=False), [name, 'gdb9.sdf'])


# ----------------------------------------------------------------------------- processed file
@FUZZ
@given(operation=st.sampled_from(['truncate', 'flip', 'replace-garbage', 'replace-other',
                                  'drop-manifest', 'edit-manifest']),
       draw=damage_draws(max_flips=3), mmap=st.booleans())
def test_processed_file_damaged_under_loaded_dataset(tmp_path, operation, draw, mmap):
    """The processed file is damaged while a dataset that loaded it is in use: the loaded
    dataset keeps serving the same values (read into memory; memory-mapped ones only face
    whole-file replacement, the one change the package makes), and opening the root again
    loads a valid file or processes the raw file again, to the same values."""
    if mmap and operation not in ('replace-garbage', 'replace-other'):
        operation = 'replace-garbage'
    root = fresh_root(tmp_path)
    put(root, RMD17_NAME, _npz_bytes(_rmd17_arrays()))
    ds = RMD17(root, molecule='ethanol', log=False, mmap=mmap)
    reference = {k: ds.storage()[k].clone() for k in ('z', 'pos', 'energy', 'forces')}
    path = ds.processed_paths[0]
    original = read(path)
    if operation == 'truncate':
        with open(path, 'r+b') as f:
            f.truncate((draw[0] or 0) % len(original))
    elif operation == 'flip':
        with open(path, 'r+b') as f:
            f.write(damage(original, None, draw[1] or [(len(original) // 2, 0)]))
    elif operation.startswith('replace'):
        if operation == 'replace-garbage':
            data = damage(original, *draw)
        else:  # a valid processed file of other data, under the old manifest
            arrays = _rmd17_arrays()
            arrays['energies'] = arrays['energies'] + 1.0
            other_root = fresh_root(tmp_path)
            put(other_root, RMD17_NAME, _npz_bytes(arrays))
            data = read(RMD17(other_root, molecule='ethanol', log=False).processed_paths[0])
        tmp = path + '.new'
        with open(tmp, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    elif operation == 'drop-manifest':
        os.remove(path + '.json')
    else:
        with open(path + '.json', 'a') as f:
            f.write('}')
    for key, value in reference.items():
        assert torch.equal(ds.storage()[key], value), key
    assert torch.equal(ds[7].pos, reference['pos'][63:72])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        again = RMD17(root, molecule='ethanol', log=False)
    for key, value in reference.items():
        assert torch.equal(again.storage()[key], value), key
