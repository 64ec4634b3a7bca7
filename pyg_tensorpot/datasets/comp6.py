"""The COMP6 v1 benchmark suite (wB97X/6-31G(d)), the external test set of ANI-1x."""
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np
import torch

from pyg_tensorpot.datasets.arguments import DatasetArguments, Unpack
from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    RawFileError,
    StorageBuilder,
    check_allocation,
    check_kind,
    logger,
    open_hdf5,
    progress,
    raw_read_errors,
    require_h5py,
)
from pyg_tensorpot.datasets.reference_energies import ANI1_SELF_ENERGIES_HARTREE, hartree_to_ev
from pyg_tensorpot.utils.elements import atomic_number
from pyg_tensorpot.utils.units import HARTREE_TO_EV

#: The six subsets of COMP6 v1, in the order of the whole suite: ``subset: [(dir, file)]``.
COMP6_SUBSETS: Dict[str, List[Tuple[str, str]]] = {
    'ani_md': [('ANI-MD', 'ani_md_bench.h5')],
    'drugbank': [('DrugBank', 'drugbank_testset.h5')],
    'gdb07to09': [('GDB07to09', f'gdb11_0{k}_test500.h5') for k in (7, 8, 9)],
    'gdb10to13': [('GDB10to13', 'gdb11_10_test500.h5'), ('GDB10to13', 'gdb11_11_test500.h5'),
                  ('GDB10to13', 'gdb13_12_test1000.h5'), ('GDB10to13', 'gdb13_13_test1000.h5')],
    'tripeptides': [('Tripeptides', 'tripeptide_full.h5')],
    's66x8': [('s66x8', 's66x8_wb97x6-31gd.h5')],
}

#: Git blob ids (SHA-1 of ``'blob <size>\\0' + content``) of the files in ``isayev/COMP6``;
#: only S66x8's is known in full, the others by their first 8 hexadecimal digits.
COMP6_GIT_BLOBS: Dict[str, str] = {
    'ani_md_bench.h5': 'd168ba5e',
    'drugbank_testset.h5': '6ba6de27',
    'gdb11_07_test500.h5': '777129cb',
    'gdb11_08_test500.h5': '6e99a494',
    'gdb11_09_test500.h5': '31bda868',
    'gdb11_10_test500.h5': 'a8fd8662',
    'gdb11_11_test500.h5': '34d83b10',
    'gdb13_12_test1000.h5': 'ff0669cf',
    'gdb13_13_test1000.h5': '06c12624',
    'tripeptide_full.h5': 'd9b89b37',
    's66x8_wb97x6-31gd.h5': '60def9dae025577f94ecd8716720184e17e2cdd1',
}

_ALIASES = {'all': 'all', 'comp6': 'all', 'comp6v1': 'all', 'ani-md': 'ani_md',
            'animd': 'ani_md', 'gdb7to9': 'gdb07to09', 'gdb7-9': 'gdb07to09',
            'gdb10-13': 'gdb10to13', 's66': 's66x8', 'tripeptide': 'tripeptides'}


_MOLECULE_KEYS = ('species', 'coordinates', 'energies', 'forces')


def _molecule_groups(h5py, root_group, path: str) -> List:
    """The molecule groups below the first top-level group (any group holding one of
    ``species``, ``coordinates``, ``energies``, ``forces``), in file order."""
    tops = [item for item in root_group.values() if isinstance(item, h5py.Group)]
    if not tops:
        raise RawFileError(f"'{path}' has no top-level group: not a COMP6 v1 file")
    found = []

    def walk(group):
        # A group holding any of the per-molecule arrays is a molecule group (a missing one is
        # reported by the reader, not silently skipped).
        if any(key in group for key in _MOLECULE_KEYS):
            found.append(group)
            return
        for item in group.values():
            if isinstance(item, h5py.Group):
                walk(item)
    walk(tops[0])
    if not found:
        raise RawFileError(f"'{path}' has no molecule group (with 'species', "
                           f"'coordinates', 'energies', 'forces'): not a COMP6 v1 file")
    return found


def _species_to_z(species: np.ndarray, where: str) -> np.ndarray:
    values = species.tolist()
    try:
        return np.array([atomic_number(v.decode() if isinstance(v, bytes) else str(v))
                         for v in values], dtype=np.int64)
    except ValueError as error:
        raise RawFileError(f'{where}: {error}') from None


class COMP6(AtomisticInMemoryDataset):
    r"""The COMP6 v1 benchmark suite from `"Less is more: sampling chemical space with active
    learning" <https://doi.org/10.1063/1.5023802>`_ (Smith et al., J. Chem. Phys. 148, 241733
    (2018)): ANI-MD, DrugBank, GDB07to09, GDB10to13, Tripeptides and S66x8 conformations with
    wB97X/6-31G(d) energies and forces (the level of theory of ANI-1x, whose external test
    set it is).

    Raw layout (``root/raw/<file>.h5``, as in ``isayev/COMP6/COMP6v1``): one top-level group
    holding one group per molecule with ``species`` ``(n,)`` element symbols (bytes),
    ``coordinates`` ``(m, n, 3)`` Angstrom, ``energies`` ``(m,)`` Hartree and ``forces``
    ``(m, n, 3)`` Hartree/Angstrom. **The v1 files store the gradient** :math:`+\partial E /
    \partial \mathbf{r}` under ``forces`` (checked on S66x8 against wB97X/6-31G(d) recomputed
    with PySCF, and torchmd-net negates it too): this loader serves ``forces`` = minus the
    stored array, in eV/Angstrom. Energies are total energies in eV (float64); conformations
    with NaN values are dropped (count logged). Samples also carry ``subset`` (index in
    :obj:`COMP6.subsets`) and ``molecule`` (running index of the molecule group).

    Args:
        root (str): Root folder.
        subset (str, optional): ``'ani_md'``, ``'drugbank'``, ``'gdb07to09'``,
            ``'gdb10to13'``, ``'tripeptides'``, ``'s66x8'`` or ``'all'`` (the whole suite in
            that order). (default: ``'all'``)
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums,
            mmap, source, repo_id, revision: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`. The checksums
            are the git blob ids of the GitHub repository (only a prefix for some files).
    """
    url = 'https://raw.githubusercontent.com/isayev/COMP6/master/COMP6v1'
    subsets = tuple(COMP6_SUBSETS)
    checksums = {name: ('git-blob', blob) for name, blob in COMP6_GIT_BLOBS.items()}

    def __init__(
        self,
        root: str,
        subset: str = 'all',
        **kwargs: Unpack[DatasetArguments],
    ) -> None:
        key = str(subset).strip().lower().replace(' ', '')
        key = _ALIASES.get(key, key)
        if key != 'all' and key not in COMP6_SUBSETS:
            raise ValueError(f"unknown COMP6 v1 subset '{subset}'; choose one of "
                             f"{list(COMP6_SUBSETS) + ['all']}")
        self.subset = key
        self.name = f'comp6v1_{key}'
        super().__init__(root, **kwargs)

    def _files(self) -> List[Tuple[str, str, str]]:
        names = list(COMP6_SUBSETS) if self.subset == 'all' else [self.subset]
        return [(name, folder, file) for name in names for folder, file in COMP6_SUBSETS[name]]

    @property
    def raw_file_names(self) -> List[str]:
        return [file for _, _, file in self._files()]

    def options(self) -> Dict:
        return {'subset': self.subset}

    def download(self) -> None:
        from torch_geometric.data import download_url
        for _, folder, file in self._files():
            if not osp.exists(osp.join(self.raw_dir, file)):
                download_url(f'{self.url}/{folder}/{file}', self.raw_dir, log=self.log)

    def atomref(self) -> Dict[int, float]:
        """The ANI-1 wB97X/6-31G(d) self energies (eV), torchmd-net's COMP6 atomref."""
        return hartree_to_ev(ANI1_SELF_ENERGIES_HARTREE)

    def process_storage(self):
        with raw_read_errors(self.raw_paths, 'COMP6') as position:
            return self._read_raw(position)

    def _read_raw(self, position):
        h5py = require_h5py('COMP6')
        plans = []  # (path, group name, z, subset index, molecule index)
        total_confs = total_atoms = 0
        handles = []
        try:
            for subset, _, file in self._files():
                path = osp.join(self.raw_dir, file)
                handle = open_hdf5(path)
                handles.append(handle)
                for group in _molecule_groups(h5py, handle, path):
                    where = f"'{path}', group '{group.name}'"
                    position.group = group.name
                    for key in ('species', 'coordinates', 'energies', 'forces'):
                        if key not in group:
                            raise RawFileError(f'{where} lacks {key!r}')
                    check_kind(group['species'], 'SOU', path)
                    for key in ('coordinates', 'energies', 'forces'):
                        check_kind(group[key], 'f', path)
                    z = _species_to_z(np.asarray(group['species'][()]).reshape(-1), where)
                    shape = group['coordinates'].shape
                    if len(shape) != 3 or shape[1:] != (z.size, 3):
                        raise RawFileError(f'{where}: coordinates {shape} do not match '
                                           f'{z.size} atoms')
                    plans.append((group, z, self.subsets.index(subset), len(plans)))
                    total_confs += shape[0]
                    total_atoms += shape[0] * z.size
            check_allocation(40 * total_atoms + 24 * total_confs, self.raw_paths, 'COMP6')
            builder = StorageBuilder(
                total_confs, total_atoms,
                {'pos': ((3,), torch.float32), 'forces': ((3,), torch.float32)},
                {'energy': ((), torch.float64), 'subset': ((), torch.long),
                 'molecule': ((), torch.long)})
            dropped = 0
            for group, z, subset_index, molecule in progress(
                    plans, total=len(plans), desc='COMP6', enabled=self.log, unit='group'):
                position.group = group.name
                pos = group['coordinates'][()]
                energy = np.asarray(group['energies'][()], dtype=np.float64).reshape(-1)
                gradient = group['forces'][()]
                if gradient.shape != pos.shape or energy.size != pos.shape[0]:
                    raise RawFileError(f"'{group.file.filename}', group '{group.name}': "
                                       f"energies {energy.shape} / forces {gradient.shape} do "
                                       f"not match coordinates {pos.shape}")
                good = (np.isfinite(energy) & np.isfinite(pos).all(axis=(1, 2)) &
                        np.isfinite(gradient).all(axis=(1, 2)))
                if not good.all():
                    dropped += int((~good).sum())
                    pos, energy, gradient = pos[good], energy[good], gradient[good]
                m = energy.size
                builder.add(z, {'pos': pos,
                                'forces': gradient * np.float32(-HARTREE_TO_EV)},
                            {'energy': energy * HARTREE_TO_EV,
                             'subset': np.full(m, subset_index, dtype=np.int64),
                             'molecule': np.full(m, molecule, dtype=np.int64)})
        finally:
            for handle in handles:
                handle.close()
        if dropped:
            logger.warning('COMP6 %s: dropped %d conformations with NaN values', self.subset,
                           dropped)
        return builder.finish()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, subset='{self.subset}')"
