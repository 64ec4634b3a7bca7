"""MD17, revised MD17 (rMD17) and the bundled 2,000-frame MD17 ethanol sample."""
import os
import os.path as osp
import re
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    RawFileError,
    collate_storage,
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


def _rmd17_key(molecule: str) -> str:
    key = _normalise_name(molecule)
    if key not in RMD17_MOLECULES:
        raise ValueError(f"unknown rMD17 molecule '{molecule}'; choose one of "
                         f"{sorted(RMD17_MOLECULES)}")
    return key


def _md17_key(molecule: str) -> str:
    key = _normalise_name(molecule)
    if key not in MD17_FILES:
        raise ValueError(f"unknown MD17 molecule '{molecule}'; choose one of "
                         f"{sorted(MD17_FILES)}")
    return key


def _npz_arrays(path: str, keys: Tuple[str, ...]) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise RawFileError(f"'{path}' has no {missing} (it has {sorted(f.files)}): "
                                   f"not a file of the expected release")
            return {k: f[k] for k in keys}
    except (OSError, ValueError) as error:
        raise RawFileError(f"cannot read '{path}' as an npz archive ({error}); the file is "
                           f"corrupt or incomplete: delete it and download it again") from error


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
    z = np.asarray(z).reshape(-1).astype(np.int64)
    pos = np.asarray(pos, dtype=np.float64)
    energy = np.asarray(energy, dtype=np.float64).reshape(-1)
    if pos.ndim != 3 or pos.shape[1:] != (z.size, 3) or energy.size != pos.shape[0]:
        raise RawFileError(f'{source}: inconsistent shapes z {z.shape}, positions {pos.shape}, '
                           f'energies {energy.shape}')
    good = np.isfinite(energy) & np.isfinite(pos).all(axis=(1, 2))
    if forces is not None:
        forces = np.asarray(forces)
        if forces.shape != pos.shape:
            raise RawFileError(f'{source}: forces have shape {forces.shape}, positions '
                               f'{pos.shape}')
        good &= np.isfinite(forces).all(axis=(1, 2))
    dropped = int((~good).sum())
    if dropped:
        logger.warning('%s: dropped %d of %d frames with NaN/inf values', source, dropped,
                       good.size)
        pos, energy = pos[good], energy[good]
        forces = forces[good] if forces is not None else None
    num, n_atoms = pos.shape[0], z.size
    atom_fields = {
        'z': torch.from_numpy(np.tile(z, num)),
        'pos': torch.from_numpy(pos.reshape(-1, 3)).to(torch.float32),
    }
    if forces is not None:
        atom_fields['forces'] = torch.from_numpy(
            forces.reshape(-1, 3).astype(np.float64) * force_scale).to(torch.float32)
    graph_fields = {'energy': torch.from_numpy(energy * energy_scale)}
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
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums: See
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
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        log: bool = True,
        force_reload: bool = False,
        verify_checksums: bool = True,
    ) -> None:
        self.molecule = _rmd17_key(molecule)
        self.name = 'rmd17_' + RMD17_MOLECULES[self.molecule]
        super().__init__(root, transform, pre_transform, pre_filter, log, force_reload,
                         verify_checksums)

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.join('rmd17', 'npz_data', f'rmd17_{RMD17_MOLECULES[self.molecule]}.npz')]

    def options(self) -> Dict:
        return {'molecule': self.molecule}

    def download(self) -> None:
        from torch_geometric.data import download_url, extract_tar
        path = download_url(self.url, self.raw_dir, log=self.log, filename='rmd17.tar.bz2')
        extract_tar(path, self.raw_dir, mode='r:bz2', log=self.log)
        os.unlink(path)

    def process_storage(self):
        path = self.raw_paths[0]
        arrays = _npz_arrays(path, ('nuclear_charges', 'coords', 'energies', 'forces'))
        with np.load(path, allow_pickle=False) as f:
            old = f['old_indices'] if 'old_indices' in f.files else None
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
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    url = 'http://quantum-machine.org/gdml/data/npz'

    def __init__(
        self,
        root: str,
        molecule: str = 'ethanol',
        train: Optional[bool] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        log: bool = True,
        force_reload: bool = False,
        verify_checksums: bool = True,
    ) -> None:
        self.molecule = _md17_key(molecule)
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
        super().__init__(root, transform, pre_transform, pre_filter, log, force_reload,
                         verify_checksums)

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
        from torch_geometric.data import download_url, extract_zip
        path = download_url(f'{self.url}/{self.file_name}', self.raw_dir, log=self.log)
        if self.coupled_cluster:
            extract_zip(path, self.raw_dir, log=self.log)
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
    optionally ``forces:R:3``, and an ``energy=`` key on the comment line.

    Returns:
        dict: ``num_atoms`` ``(frames,)``, ``z`` ``(atoms,)``, ``pos`` ``(atoms, 3)``,
        ``energy`` ``(frames,)`` and ``forces`` ``(atoms, 3)`` (if present), in the file's units.
    """
    with open(path) as f:
        lines = f.read().splitlines()
    num_atoms, energies, blocks = [], [], []
    properties = None
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
        match = re.search(r'energy=\s*([-+0-9.eEdD]+)', comment)
        if match is None:
            raise RawFileError(f"'{path}', line {i + 2}: no energy= on the comment line")
        props = re.search(r'Properties=(\S+)', comment)
        props = props.group(1) if props else 'species:S:1:pos:R:3'
        if properties is None:
            properties = props
        elif props != properties:
            raise RawFileError(f"'{path}', line {i + 2}: Properties changed to {props}")
        energies.append(float(match.group(1)))
        num_atoms.append(n)
        blocks.append(lines[i + 2:i + 2 + n])
        if len(blocks[-1]) != n:
            raise RawFileError(f"'{path}': the last frame is truncated")
        i += 2 + n
    columns = properties.split(':')
    names = columns[0::3]
    widths = [int(w) for w in columns[2::3]]
    flat = [line.split() for block in blocks for line in block]
    symbols = np.array([row[0] for row in flat])
    values = np.array([row[1:] for row in flat], dtype=np.float64)
    out = {'num_atoms': np.array(num_atoms, dtype=np.int64),
           'energy': np.array(energies, dtype=np.float64)}
    unique, inverse = np.unique(symbols, return_inverse=True)
    out['z'] = np.array([atomic_number(s) for s in unique], dtype=np.int64)[inverse]
    column = 0
    for name, width in zip(names[1:], widths[1:]):
        out[name] = values[:, column:column + width]
        column += width
    if 'pos' not in out:
        raise RawFileError(f"'{path}' has no positions (Properties={properties})")
    return out


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

    def __init__(
        self,
        root: Optional[str] = None,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        log: bool = True,
        force_reload: bool = False,
    ) -> None:
        self._cached = root is not None
        if self._cached:
            super().__init__(root, transform, pre_transform, pre_filter, log, force_reload)
            return
        self.verify_checksums = True
        InMemoryDataset.__init__(self, None, transform, pre_transform, pre_filter, log)
        self.verify_raw_files()
        storage, slices = self.process_storage()
        if pre_transform is not None or pre_filter is not None:
            storage, slices = self._apply_pre_hooks(storage, slices)
        self._data = Data.from_dict(storage)
        self.slices = slices

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
        return [self.file_name]

    def _download(self) -> None:
        if not osp.exists(self.bundled_path()):
            raise RawFileError(f"the bundled file '{self.bundled_path()}' is missing: the "
                               f"package installation is incomplete")

    def _process(self) -> None:
        if not self._cached:
            return
        super()._process()

    def process_storage(self):
        arrays = read_extxyz(self.bundled_path())
        num_atoms = torch.from_numpy(arrays['num_atoms'])
        atom_fields = {
            'z': torch.from_numpy(arrays['z']),
            'pos': torch.from_numpy(arrays['pos']).to(torch.float32),
            'forces': torch.from_numpy(arrays['forces'] * KCAL_PER_MOL_TO_EV).to(torch.float32),
        }
        graph_fields = {'energy': torch.from_numpy(arrays['energy'] * KCAL_PER_MOL_TO_EV),
                        'idx': torch.arange(num_atoms.numel())}
        return collate_storage(num_atoms, atom_fields, graph_fields)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({len(self)})'
