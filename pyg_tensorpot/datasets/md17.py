"""MD17, revised MD17 (rMD17) and the bundled 2,000-frame MD17 ethanol sample.

Length: over 500 lines because three loaders of one family share their parsers and
checks (the npz release, the extxyz trajectories and the bundled sample).
"""
import os
import os.path as osp
import re
import tokenize
import zipfile
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from pyg_tensorpot.datasets.arguments import DatasetArguments, LocalDatasetArguments, Unpack
from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    RawFileError,
    collate_storage,
    extract_archive,
    logger,
)
from pyg_tensorpot.utils.elements import atomic_number
from pyg_tensorpot.utils.units import KCAL_PER_MOL_TO_EV

#: The ten rMD17 molecules and their npz file stems (``rmd17_<stem>.npz``).
RMD17_MOLECULES: Dict[str, str] = {
    'aspirin': 'aspirin',
    'azobenzene': 'azobenzene',
    'benzene': 'benzene',
    'ethanol': 'ethanol',
    'malonaldehyde': 'malonaldehyde',
    'naphthalene': 'naphthalene',
    'paracetamol': 'paracetamol',
    'salicylic acid': 'salicylic',
    'toluene': 'toluene',
    'uracil': 'uracil',
}

#: Original MD17 (sGDML) files: DFT (PBE+vdW-TS) trajectories, the FHI-aims benzene set and the
#: coupled-cluster sets (zips with ``<stem>-train.npz`` / ``<stem>-test.npz``).
MD17_FILES: Dict[str, str] = {
    'aspirin': 'md17_aspirin.npz',
    'benzene': 'md17_benzene2017.npz',
    'ethanol': 'md17_ethanol.npz',
    'malonaldehyde': 'md17_malonaldehyde.npz',
    'naphthalene': 'md17_naphthalene.npz',
    'salicylic acid': 'md17_salicylic.npz',
    'toluene': 'md17_toluene.npz',
    'uracil': 'md17_uracil.npz',
    'paracetamol': 'paracetamol_dft.npz',
    'azobenzene': 'azobenzene_dft.npz',
    'benzene fhi-aims': 'benzene2018_dft.npz',
    'benzene ccsd(t)': 'benzene_ccsd_t.zip',
    'aspirin ccsd': 'aspirin_ccsd.zip',
    'malonaldehyde ccsd(t)': 'malonaldehyde_ccsd_t.zip',
    'ethanol ccsd(t)': 'ethanol_ccsd_t.zip',
    'toluene ccsd(t)': 'toluene_ccsd_t.zip',
}


def _normalise_name(name: str) -> str:
    key = re.sub(r'[\s_]+', ' ', str(name).strip().lower())
    key = re.sub(r'^(revised|rmd17|md17) ', '', key)
    key = key.replace('naphtalene', 'naphthalene')  # the spelling of some loaders
    if key == 'salicylic':
        key = 'salicylic acid'
    return key


def _molecule_key(molecule: str, table: Dict[str, str], what: str) -> str:
    """The key of :obj:`table` that :obj:`molecule` names (see :func:`_normalise_name`)."""
    key = _normalise_name(molecule)
    if key not in table:
        raise ValueError(f"unknown {what} molecule '{molecule}'; choose one of "
                         f"{sorted(table)}")
    return key


# What numpy and zipfile raise on a damaged npz: a corrupt .npy header is parsed as a Python
# literal (SyntaxError, TokenError), a corrupt shape can ask for more memory than exists.
# RuntimeError: zipfile's "is encrypted, password required" for a flipped flag bit.
_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError,
               NotImplementedError, SyntaxError, tokenize.TokenError, MemoryError,
               OverflowError, RuntimeError)


def _npz_arrays(path: str, keys: Tuple[str, ...],
                optional: Tuple[str, ...] = ()) -> Dict[str, np.ndarray]:
    """The arrays :obj:`keys` (and those of :obj:`optional` that exist) of an npz file, read
    completely (zip CRC checked); any damage raises :class:`RawFileError` naming the file and
    the key."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, 'files'):
                raise RawFileError(f"'{path}' is a single .npy array, not an npz archive")
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise RawFileError(f"'{path}' has no {missing} (it has {sorted(f.files)}): "
                                   f"not a file of the expected release")
            out = {}
            for key in tuple(keys) + tuple(k for k in optional if k in f.files):
                try:
                    out[key] = f[key]
                except _NPZ_ERRORS as error:
                    raise RawFileError(f"cannot read array '{key}' of '{path}' "
                                       f"({type(error).__name__}: {error}): the file is corrupt "
                                       f"or incomplete; delete it and download it "
                                       f"again") from None
            return out
    except RawFileError:  # a RuntimeError too: already names the file
        raise
    except _NPZ_ERRORS as error:
        raise RawFileError(f"cannot read '{path}' as an npz archive ({type(error).__name__}: "
                           f"{error}); the file is corrupt or incomplete: delete it and "
                           f"download it again") from None


def _numeric(array: np.ndarray, key: str, source: str) -> np.ndarray:
    if array.dtype.kind not in 'iuf':
        raise RawFileError(f"{source}: '{key}' holds {array.dtype} values, not real numbers")
    return array


def trajectory_storage(
    z: np.ndarray,
    pos: np.ndarray,
    energy: np.ndarray,
    forces: Optional[np.ndarray],
    energy_scale: float,
    force_scale: float,
    source: str = '',
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    r"""Collated storage of a trajectory of one molecule (every frame has the same :obj:`z`),
    dropping frames with a NaN/inf energy, position or force (the count is logged)."""
    z = _numeric(np.asarray(z), 'atomic numbers', source).reshape(-1)
    if z.size == 0 or not (np.isfinite(z).all() and (z == np.round(z)).all() and
                           ((z >= 1) & (z <= 118)).all()):
        raise RawFileError(f'{source}: atomic numbers {z.tolist()[:20]} are not all whole '
                           f'numbers from 1 to 118')
    z = z.astype(np.int64)
    pos = _numeric(np.asarray(pos), 'positions', source).astype(np.float64)
    energy = _numeric(np.asarray(energy), 'energies', source).astype(np.float64).reshape(-1)
    if pos.ndim != 3 or pos.shape[1:] != (z.size, 3) or energy.size != pos.shape[0]:
        raise RawFileError(f'{source}: inconsistent shapes z {z.shape}, positions {pos.shape}, '
                           f'energies {energy.shape}')
    if forces is not None:
        forces = _numeric(np.asarray(forces), 'forces', source)
        if forces.shape != pos.shape:
            raise RawFileError(f'{source}: forces have shape {forces.shape}, positions '
                               f'{pos.shape}')
    # Finiteness is checked after the conversion to the stored units and dtypes: a corrupt
    # but finite value (1e300 Angstrom) would otherwise become inf in float32.
    with np.errstate(over='ignore', invalid='ignore'):
        pos32 = pos.astype(np.float32)
        energy = energy * energy_scale
        good = np.isfinite(energy) & np.isfinite(pos32).all(axis=(1, 2))
        if forces is not None:
            forces = (forces.astype(np.float64) * force_scale).astype(np.float32)
            good &= np.isfinite(forces).all(axis=(1, 2))
    dropped = int((~good).sum())
    if dropped:
        logger.warning('%s: dropped %d of %d frames with NaN/inf values', source, dropped,
                       good.size)
        pos32, energy = pos32[good], energy[good]
        forces = forces[good] if forces is not None else None
    num, n_atoms = pos32.shape[0], z.size
    if num == 0:
        raise RawFileError(f'{source}: no frame has finite energy, positions and forces')
    atom_fields = {
        'z': torch.from_numpy(np.tile(z, num)),
        'pos': torch.from_numpy(pos32.reshape(-1, 3)),
    }
    if forces is not None:
        atom_fields['forces'] = torch.from_numpy(forces.reshape(-1, 3))
    graph_fields = {'energy': torch.from_numpy(energy)}
    return collate_storage(torch.full((num,), n_atoms, dtype=torch.long), atom_fields,
                           graph_fields)


class RMD17(AtomisticInMemoryDataset):
    r"""The revised MD17 dataset (rMD17) from `"On the role of gradients for machine learning
    of molecular energies and forces" <https://arxiv.org/abs/2007.09593>`_ (Christensen and
    von Lilienfeld, 2020): 100,000 frames per molecule (azobenzene 99,988) of the original MD17
    trajectories recomputed at PBE/def2-SVP (ORCA, tight SCF, dense grid).

    Raw layout (``root/raw``, shared by all ten molecules, as in PyG):
    ``rmd17/npz_data/rmd17_<molecule>.npz`` with ``nuclear_charges`` ``(n,)``, ``coords``
    ``(frames, n, 3)`` Angstrom, ``energies`` ``(frames,)`` kcal/mol and ``forces``
    ``(frames, n, 3)`` kcal/mol/Angstrom; ``rmd17/splits/index_{train,test}_0{1..5}.csv`` hold
    the five official 1,000-frame splits (see :func:`~pyg_tensorpot.datasets.rmd17_split`).
    The processed samples are in eV and eV/Angstrom (energies stored as float64, i.e. without
    the float32 quantisation of PyG/torchmd-net) and keep ``old_index`` (the frame index in
    the original MD17 trajectory).

    Args:
        root (str): Root folder.
        molecule (str, optional): One of ``aspirin, azobenzene, benzene, ethanol,
            malonaldehyde, naphthalene, paracetamol, salicylic acid (or salicylic), toluene,
            uracil``; ``'revised ethanol'`` (PyG's name) also works. (default: ``'aspirin'``)
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums,
            mmap, source, repo_id, revision: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    url = ('https://archive.materialscloud.org/record/file?filename=rmd17.tar.bz2'
           '&record_id=466')
    #: Mirror of the same archive (figshare article 12672038).
    mirror_url = 'https://figshare.com/ndownloader/files/23950376'
    molecules = tuple(RMD17_MOLECULES)

    def __init__(
        self,
        root: str,
        molecule: str = 'aspirin',
        **kwargs: Unpack[DatasetArguments],
    ) -> None:
        self.molecule = _molecule_key(molecule, RMD17_MOLECULES, 'rMD17')
        self.name = 'rmd17_' + RMD17_MOLECULES[self.molecule]
        super().__init__(root, **kwargs)

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.join('rmd17', 'npz_data', f'rmd17_{RMD17_MOLECULES[self.molecule]}.npz')]

    def options(self) -> Dict:
        return {'molecule': self.molecule}

    def download(self) -> None:
        """Downloads ``rmd17.tar.bz2`` into ``root/raw`` (an archive already there, e.g.
        copied from elsewhere, is used as it is) and extracts it all or nothing (see
        :func:`~pyg_tensorpot.datasets.base.extract_archive`); the archive is deleted only
        after a complete extraction."""
        from torch_geometric.data import download_url
        path = download_url(self.url, self.raw_dir, log=self.log, filename='rmd17.tar.bz2')
        required = [name.replace(os.sep, '/') for name in self._raw_names()]
        extract_archive(path, self.raw_dir, required=required)
        os.unlink(path)

    def process_storage(self):
        path = self.raw_paths[0]
        arrays = _npz_arrays(path, ('nuclear_charges', 'coords', 'energies', 'forces'),
                             optional=('old_indices',))
        old = arrays.get('old_indices')
        if old is not None and old.dtype.kind not in 'iu':
            old = None
        storage, slices = trajectory_storage(
            arrays['nuclear_charges'], arrays['coords'], arrays['energies'], arrays['forces'],
            KCAL_PER_MOL_TO_EV, KCAL_PER_MOL_TO_EV, source=path)
        num = slices['energy'].numel() - 1
        if old is not None and old.size == num:  # only when no frame was dropped
            storage['old_index'] = torch.from_numpy(old.astype(np.int64))
            slices['old_index'] = slices['energy']
        storage['idx'] = torch.arange(num)
        slices['idx'] = slices['energy']
        return storage, slices

    def split_dir(self) -> str:
        """Folder of the official split files (``raw/rmd17/splits``)."""
        return osp.join(self.raw_dir, 'rmd17', 'splits')

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, molecule='{self.molecule}')"


class MD17(AtomisticInMemoryDataset):
    r"""The original MD17 trajectories from `"Machine learning of accurate energy-conserving
    molecular force fields" <https://arxiv.org/abs/1611.04678>`_ (Chmiela et al., 2017), as
    distributed by sGDML (DFT PBE+vdW-TS; also the FHI-aims benzene set and the CCSD/CCSD(T)
    sets of `Chmiela et al., 2018 <https://arxiv.org/abs/1802.09238>`_).

    Raw layout: ``root/<file>/raw/<file>.npz`` with keys ``z`` ``(n,)``, ``R``
    ``(frames, n, 3)`` Angstrom, ``E`` ``(frames, 1)`` kcal/mol and ``F``
    ``(frames, n, 3)`` kcal/mol/Angstrom; the coupled-cluster sets are zips holding
    ``<stem>-train.npz`` and ``<stem>-test.npz``. Note that the original MD17 energies are
    noisy (see :class:`RMD17`). Samples are in eV and eV/Angstrom.

    Args:
        root (str): Root folder.
        molecule (str, optional): ``aspirin, benzene, ethanol, malonaldehyde, naphthalene,
            salicylic acid, toluene, uracil, paracetamol, azobenzene``, ``'benzene FHI-aims'``,
            or a coupled-cluster set ``'benzene CCSD(T)', 'aspirin CCSD',
            'malonaldehyde CCSD(T)', 'ethanol CCSD(T)', 'toluene CCSD(T)'``.
            (default: ``'ethanol'``)
        train (bool, optional): For the coupled-cluster sets, load the published training
            (:obj:`True`) or test (:obj:`False`) part. (default: :obj:`None`)
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums,
            mmap, source, repo_id, revision: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    url = 'http://quantum-machine.org/gdml/data/npz'

    def __init__(
        self,
        root: str,
        molecule: str = 'ethanol',
        train: Optional[bool] = None,
        **kwargs: Unpack[DatasetArguments],
    ) -> None:
        self.molecule = _molecule_key(molecule, MD17_FILES, 'MD17')
        self.file_name = MD17_FILES[self.molecule]
        self.coupled_cluster = self.file_name.endswith('.zip')
        if self.coupled_cluster and train is None:
            raise ValueError(f"'{molecule}' comes with a published train/test split: pass "
                             f"train=True or train=False")
        if not self.coupled_cluster and train is not None:
            raise ValueError(f"'{molecule}' has no published train/test split; leave "
                             f"train=None and use pyg_tensorpot.datasets.random_split")
        self.train = train
        self.name = self.file_name[:-4] + ('' if train is None else
                                           ('-train' if train else '-test'))
        super().__init__(root, **kwargs)

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.file_name[:-4], 'raw')

    @property
    def raw_file_names(self) -> List[str]:
        if self.coupled_cluster:
            return [self.name + '.npz']
        return [self.file_name]

    def options(self) -> Dict:
        return {'molecule': self.molecule, 'train': self.train}

    def download(self) -> None:
        from torch_geometric.data import download_url
        path = download_url(f'{self.url}/{self.file_name}', self.raw_dir, log=self.log)
        if self.coupled_cluster:
            extract_archive(path, self.raw_dir, required=self._raw_names())
            os.unlink(path)

    def process_storage(self):
        path = self.raw_paths[0]
        arrays = _npz_arrays(path, ('z', 'R', 'E', 'F'))
        storage, slices = trajectory_storage(arrays['z'], arrays['R'], arrays['E'],
                                             arrays['F'], KCAL_PER_MOL_TO_EV,
                                             KCAL_PER_MOL_TO_EV, source=path)
        storage['idx'] = torch.arange(slices['energy'].numel() - 1)
        slices['idx'] = slices['energy']
        return storage, slices

    def __repr__(self) -> str:
        extra = '' if self.train is None else f', train={self.train}'
        return f"{type(self).__name__}({len(self)}, molecule='{self.molecule}'{extra})"


def read_extxyz(path: str) -> Dict[str, np.ndarray]:
    r"""Reads an extended-XYZ file whose frames have ``Properties=species:S:1:pos:R:3`` and
    optionally further real columns such as ``forces:R:3``, and an ``energy=`` key on the
    comment line (``nan`` is read as NaN; the caller decides what to do with such frames).

    Raises:
        RawFileError: Naming the file and the line of the first problem (not UTF-8 text, a bad
            atom count, a missing or unreadable energy, a changed ``Properties``, a row with
            the wrong number of columns, an unknown element, a truncated last frame).

    Returns:
        dict: ``num_atoms`` ``(frames,)``, ``z`` ``(atoms,)``, ``pos`` ``(atoms, 3)``,
        ``energy`` ``(frames,)`` and ``forces`` ``(atoms, 3)`` (if present), in the file's units.
    """
    try:
        with open(path, 'rb') as f:
            text = f.read().decode('utf-8')
    except OSError as error:
        raise RawFileError(f"cannot read '{path}' ({error})") from None
    except UnicodeDecodeError as error:
        line = text_line_of(path, error.start)
        raise RawFileError(f"'{path}', line {line}: not UTF-8 text (byte {error.start}): the "
                           f"file is corrupt") from None
    lines = text.splitlines()
    num_atoms, energies, rows, row_lines = [], [], [], []
    properties = names = widths = None
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
            comment = lines[i + 1]
        except (ValueError, IndexError):
            raise RawFileError(f"'{path}', line {i + 1}: expected an atom count, got "
                               f"'{lines[i][:40]}'") from None
        if n < 1:
            raise RawFileError(f"'{path}', line {i + 1}: atom count {n} is not positive")
        match = re.search(r'(?:^|\s)energy=\s*(\S+)', comment)
        if match is None:
            raise RawFileError(f"'{path}', line {i + 2}: no energy= on the comment line")
        try:
            energy = float(match.group(1).replace('d', 'e').replace('D', 'e'))
        except ValueError:
            raise RawFileError(f"'{path}', line {i + 2}: unreadable energy "
                               f"'{match.group(1)[:40]}'") from None
        props = re.search(r'Properties=(\S+)', comment)
        props = props.group(1) if props else 'species:S:1:pos:R:3'
        if properties is None:
            properties = props
            names, widths = _extxyz_columns(props, path, i + 2)
        elif props != properties:
            raise RawFileError(f"'{path}', line {i + 2}: Properties changed to {props}")
        if i + 2 + n > len(lines):
            raise RawFileError(f"'{path}', line {i + 1}: the frame announces {n} atoms but the "
                               f"file ends after {len(lines) - i - 2}: the last frame is "
                               f"truncated")
        energies.append(energy)
        num_atoms.append(n)
        rows.extend(lines[i + 2:i + 2 + n])
        row_lines.append(i + 3)
        i += 2 + n
    if not num_atoms:
        raise RawFileError(f"'{path}' holds no frame")
    split = [row.split() for row in rows]
    expected = 1 + sum(widths[1:])
    try:
        if any(len(fields) != expected for fields in split):
            raise ValueError
        values = np.array([fields[1:] for fields in split], dtype=np.float64)
    except ValueError:
        atom = next(k for k, fields in enumerate(split) if len(fields) != expected or
                    not _all_floats(fields[1:]))
        frame = int(np.searchsorted(np.cumsum(num_atoms), atom, side='right'))
        line = row_lines[frame] + atom - int(np.sum(num_atoms[:frame]))
        raise RawFileError(f"'{path}', line {line} (frame {frame}): expected a symbol and "
                           f"{expected - 1} numbers (Properties={properties}), got "
                           f"'{rows[atom][:60]}'") from None
    symbols = np.array([fields[0] for fields in split])
    out = {'num_atoms': np.array(num_atoms, dtype=np.int64),
           'energy': np.array(energies, dtype=np.float64)}
    unique, inverse = np.unique(symbols, return_inverse=True)
    try:
        table = np.array([atomic_number(sym) for sym in unique], dtype=np.int64)
    except ValueError as error:
        raise RawFileError(f"'{path}': {error}") from None
    out['z'] = table[inverse.reshape(-1)]
    column = 0
    for name, width in zip(names[1:], widths[1:]):
        out[name] = values[:, column:column + width]
        column += width
    if 'pos' not in out or out['pos'].shape[1] != 3:
        raise RawFileError(f"'{path}' has no 3-column positions (Properties={properties})")
    return out


def text_line_of(path: str, offset: int) -> int:
    """The 1-based line number of byte :obj:`offset` of a file."""
    with open(path, 'rb') as f:
        return f.read(offset).count(b'\n') + 1


def _all_floats(fields) -> bool:
    try:
        [float(v) for v in fields]
    except ValueError:
        return False
    return True


def _extxyz_columns(props: str, path: str, line: int) -> Tuple[List[str], List[int]]:
    columns = props.split(':')
    try:
        if len(columns) % 3 or len(columns) < 6:
            raise ValueError
        names, kinds = columns[0::3], columns[1::3]
        widths = [int(w) for w in columns[2::3]]
        if (kinds[0] != 'S' or widths[0] != 1 or any(k != 'R' for k in kinds[1:]) or
                min(widths) < 1):
            raise ValueError
    except ValueError:
        raise RawFileError(f"'{path}', line {line}: Properties={props} is not "
                           f"'species:S:1' followed by real columns such as pos:R:3") from None
    return names, widths


class MD17EthanolSample(AtomisticInMemoryDataset):
    r"""2,000 real frames of the original MD17 ethanol trajectory (DFT PBE+vdW-TS, Chmiela et
    al., 2017), shipped with the package (from SchNetPack's tutorial data, MIT licence), so
    that examples and tests run without any download. Energies in eV, forces in eV/Angstrom
    (converted from the file's kcal/mol and kcal/mol/Angstrom).

    Args:
        root (str, optional): Folder to cache the processed file in; with :obj:`None` the
            bundled file is parsed in memory (about a second). (default: :obj:`None`)
        transform (callable, optional): Applied to every sample on access. (default: :obj:`None`)
        pre_transform (callable, optional): Applied to every sample before storing.
            (default: :obj:`None`)
        pre_filter (callable, optional): Keeps the samples for which it returns :obj:`True`.
            (default: :obj:`None`)
        log (bool, optional): Print messages. (default: :obj:`True`)
        force_reload (bool, optional): Re-process the cached file. (default: :obj:`False`)
    """
    name = 'md17_ethanol_sample'
    file_name = 'md17_ethanol_sample_2000.extxyz'
    #: SHA-256 of the bundled file.
    checksums = {file_name: ('sha256',
                             'c610eb9113939e21c2c4d9afcc5736671a33884fc5df45f4cf036a377ec699d4')}

    def __init__(self, root: Optional[str] = None,
                 **kwargs: Unpack[LocalDatasetArguments]) -> None:
        super().__init__(root, **kwargs)

    @staticmethod
    def bundled_path() -> str:
        """Path of the bundled extended-XYZ file."""
        here = osp.dirname(osp.dirname(osp.abspath(__file__)))
        return osp.join(here, 'data', MD17EthanolSample.file_name)

    @property
    def raw_dir(self) -> str:
        return osp.dirname(self.bundled_path())

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.basename(self.bundled_path())]

    def download(self) -> None:
        raise RawFileError(f"the bundled file '{self.bundled_path()}' is missing: the package "
                           f"installation is incomplete")

    def process_storage(self):
        path = self.bundled_path()
        arrays = read_extxyz(path)
        if 'forces' not in arrays or arrays['forces'].shape[1] != 3:
            raise RawFileError(f"'{path}' has no forces:R:3 column")
        owner = np.repeat(np.arange(arrays['num_atoms'].size), arrays['num_atoms'])
        # Checked in the stored units and dtypes: a finite 1e39 would be inf in float32.
        with np.errstate(over='ignore', invalid='ignore'):
            pos = arrays['pos'].astype(np.float32)
            forces = (arrays['forces'] * KCAL_PER_MOL_TO_EV).astype(np.float32)
            energy = arrays['energy'] * KCAL_PER_MOL_TO_EV
        bad_atom = ~(np.isfinite(pos).all(axis=1) & np.isfinite(forces).all(axis=1))
        good = np.isfinite(energy)
        good[owner[bad_atom]] = False
        frames = np.nonzero(good)[0]  # ``idx`` keeps the frame number of the file
        if frames.size == 0:
            raise RawFileError(f"'{path}' has no frame with finite values")
        if frames.size < good.size:
            logger.warning("%s: dropped %d of %d frames with NaN/inf values", path,
                           good.size - frames.size, good.size)
        keep_atom = good[owner]
        atom_fields = {
            'z': torch.from_numpy(arrays['z'][keep_atom]),
            'pos': torch.from_numpy(pos[keep_atom]),
            'forces': torch.from_numpy(forces[keep_atom]),
        }
        graph_fields = {'energy': torch.from_numpy(energy[good]),
                        'idx': torch.from_numpy(frames)}
        num_atoms = torch.from_numpy(arrays['num_atoms'][good])
        return collate_storage(num_atoms, atom_fields, graph_fields)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({len(self)})'
