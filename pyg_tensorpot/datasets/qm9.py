"""QM9 from PyG's raw files (``gdb9.sdf``, ``gdb9.sdf.csv``, ``uncharacterized.txt``)."""
import os
import os.path as osp
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch_geometric.datasets import QM9 as PygQM9
from torch_geometric.datasets.qm9 import HAR2EV, KCALMOL2EV, atomrefs, conversion

from pyg_tensorpot.datasets.arguments import DatasetArguments, Unpack
from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    RawFileError,
    collate_storage,
    extract_archive,
    logger,
    raw_read_errors,
)
from pyg_tensorpot.utils.elements import atomic_number

#: Names of the 19 columns of ``y``, in PyG's order (after it moves A, B, C to the end).
QM9_TARGETS: List[str] = [
    'mu', 'alpha', 'homo', 'lumo', 'gap', 'r2', 'zpve', 'U0', 'U', 'H', 'G', 'cv',
    'U0_atom', 'U_atom', 'H_atom', 'G_atom', 'A', 'B', 'C',
]

#: Units of the 19 columns of ``y`` after PyG's conversion.
QM9_UNITS: List[str] = [
    'D', 'a0^3', 'eV', 'eV', 'eV', 'a0^2', 'eV', 'eV', 'eV', 'eV', 'eV', 'cal/(mol K)',
    'eV', 'eV', 'eV', 'eV', 'GHz', 'GHz', 'GHz',
]

#: Number of molecules of the release and of uncharacterised ones (Ramakrishnan et al.).
QM9_NUM_MOLECULES = 133_885
QM9_NUM_UNCHARACTERIZED = 3_054


def read_sdf_atoms(path: str):
    r"""Reads the titles, atomic numbers and positions of every record of a V2000 SD file.

    Returns:
        (list, np.ndarray, np.ndarray, np.ndarray): titles, atoms per record ``(records,)``,
        atomic numbers ``(atoms,)`` and positions ``(atoms, 3)`` in the file's units
        (Angstrom for QM9).
    """
    with open(path, encoding='utf-8') as f:
        text = f.read()
    records = text.split('$$$$')
    if records and not records[-1].strip():
        records = records[:-1]
    titles, counts, symbols, coords = [], [], [], []
    for index, record in enumerate(records):
        lines = record.lstrip('\r\n').splitlines()
        if len(lines) < 4:
            raise RawFileError(f"'{path}', record {index + 1}: truncated SDF record")
        try:
            n = int(lines[3][0:3])
        except ValueError:
            raise RawFileError(f"'{path}', record {index + 1}: bad counts line "
                               f"'{lines[3]}'") from None
        if n < 1:
            raise RawFileError(f"'{path}', record {index + 1}: atom count {n} in the counts "
                               f"line '{lines[3]}' is not positive")
        if 'V3000' in lines[3]:
            raise RawFileError(f"'{path}', record {index + 1}: V3000 records are not "
                               f"supported (QM9's gdb9.sdf is V2000)")
        atom_lines = lines[4:4 + n]
        if len(atom_lines) != n:
            raise RawFileError(f"'{path}', record {index + 1}: truncated atom block")
        titles.append(lines[0].strip())
        counts.append(n)
        for line in atom_lines:
            coords.append((line[0:10], line[10:20], line[20:30]))
            symbols.append(line[31:34].strip())
    try:
        pos = np.array(coords, dtype=np.float64).reshape(-1, 3)
    except ValueError as error:
        raise RawFileError(f"'{path}': unreadable coordinates ({error})") from None
    unique, inverse = np.unique(np.array(symbols), return_inverse=True)
    try:
        table = np.array([atomic_number(s) for s in unique], dtype=np.int64)
    except ValueError as error:
        raise RawFileError(f"'{path}': {error}") from None
    return titles, np.array(counts, dtype=np.int64), table[inverse.reshape(-1)], pos


class QM9(AtomisticInMemoryDataset):
    r"""The QM9 dataset from `"Quantum chemistry structures and properties of 134 kilo
    molecules" <https://doi.org/10.1038/sdata.2014.22>`_ (Ramakrishnan et al., Sci. Data 1,
    140022 (2014)): 133,885 small organic molecules (up to 9 heavy atoms C, N, O, F) at
    B3LYP/6-31G(2df,p), of which the 3,054 that failed the geometry-consistency check (listed in
    ``uncharacterized.txt``) are removed, leaving 130,831.

    This class reads the same raw files as PyG's :class:`torch_geometric.datasets.QM9`
    (``gdb9.sdf`` and ``gdb9.sdf.csv`` from MoleculeNet, ``uncharacterized.txt`` from figshare)
    and reuses its URLs, column order, unit conversions and atom references, so that ``y`` is
    the same ``[1, 19]`` float32 tensor as PyG's (``mu, alpha, homo, lumo, gap, r2, zpve, U0,
    U, H, G, cv, U0_atom, U_atom, H_atom, G_atom, A, B, C``, see :obj:`QM9_UNITS`). Only the
    atom block of the SD file is needed, so RDKit is not (PyG needs it to build its
    chemical-graph features ``x``/``edge_index``, which interatomic potentials do not use).

    Samples: ``z``, ``pos`` (Angstrom), ``y`` and ``energy`` ``[1]``, the selected target in
    float64, computed from the csv text without PyG's float32 rounding (about 1 meV for U0),
    and ``idx``, the 0-based record index in ``gdb9.sdf`` (as PyG's ``idx``; molecule ``gdb_k``
    has ``idx = k - 1``).

    Args:
        root (str): Root folder.
        target (int or str, optional): Column of ``y`` served as ``energy``: ``'U0'`` (7),
            ``'U'`` (8), ``'H'`` (9), ``'G'`` (10) or an atomisation energy
            (``'U0_atom'`` ...). (default: ``'U0'``)
        transform, pre_transform, pre_filter, log, force_reload, verify_checksums,
            mmap, source, repo_id, revision: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    raw_url = PygQM9.raw_url
    raw_url2 = PygQM9.raw_url2
    targets = tuple(QM9_TARGETS)
    name = 'qm9'

    def __init__(
        self,
        root: str,
        target: Union[int, str] = 'U0',
        **kwargs: Unpack[DatasetArguments],
    ) -> None:
        if isinstance(target, str):
            if target not in QM9_TARGETS:
                raise ValueError(f"unknown QM9 target '{target}'; choose one of {QM9_TARGETS}")
            target = QM9_TARGETS.index(target)
        if not 0 <= int(target) < 19 or QM9_UNITS[int(target)] != 'eV':
            raise ValueError(f'the energy target must be an energy column of y (eV), got '
                             f'{target}')
        self.target = int(target)
        super().__init__(root, **kwargs)

    @property
    def raw_file_names(self) -> List[str]:
        return ['gdb9.sdf', 'gdb9.sdf.csv', 'uncharacterized.txt']

    def options(self) -> Dict:
        return {'target': self.target}

    def download(self) -> None:
        """Downloads MoleculeNet's ``qm9.zip`` and figshare's ``uncharacterized.txt`` into
        ``root/raw``; files already there (e.g. ``qm9.zip`` copied from elsewhere) are used as
        they are. The zip is extracted all or nothing (see
        :func:`~pyg_tensorpot.datasets.base.extract_archive`) and deleted only after a
        complete extraction."""
        from torch_geometric.data import download_url
        if not all(osp.exists(osp.join(self.raw_dir, name)) for name in self.raw_file_names[:2]):
            path = download_url(self.raw_url, self.raw_dir, log=self.log)
            extract_archive(path, self.raw_dir, required=self.raw_file_names[:2])
            os.unlink(path)
        if not osp.exists(osp.join(self.raw_dir, 'uncharacterized.txt')):
            path = download_url(self.raw_url2, self.raw_dir, log=self.log)
            os.replace(path, osp.join(self.raw_dir, 'uncharacterized.txt'))

    def atomref(self, target: Optional[Union[int, str]] = None) -> Optional[Dict[int, float]]:
        """PyG's per-element reference energies ``{Z: eV}`` for U0, U, H or G (the isolated
        atoms at B3LYP/6-31G(2df,p), from QM9's ``atomref.txt``); :obj:`None` for other
        targets (e.g. the atomisation energies, which are already referenced)."""
        target = self.target if target is None else target
        if isinstance(target, str):
            target = QM9_TARGETS.index(target)
        if int(target) not in atomrefs or not any(atomrefs[int(target)]):
            return None
        return {z: float(v) for z, v in zip((1, 6, 7, 8, 9), atomrefs[int(target)])}

    def _read_targets(self):
        path = self.raw_paths[1]
        with open(path) as f:
            lines = f.read().split('\n')[1:-1]
        names, rows = [], []
        for number, line in enumerate(lines, start=2):
            fields = line.split(',')
            if len(fields) < 20:
                raise RawFileError(f"'{path}', line {number}: expected mol_id and 19 values, "
                                   f"got {len(fields)} fields")
            names.append(fields[0].strip())
            rows.append(fields[1:20])
        try:
            values = np.array(rows, dtype=np.float64)
        except ValueError as error:
            raise RawFileError(f"'{path}': unreadable number ({error})") from None
        # Exactly PyG's float32 arithmetic for y.
        y = torch.tensor(values.tolist(), dtype=torch.float)
        y = torch.cat([y[:, 3:], y[:, :3]], dim=-1)
        y = y * conversion.view(1, -1)
        # The selected energy in float64, with PyG's factors.
        ordered = np.concatenate([values[:, 3:], values[:, :3]], axis=1)
        factor = HAR2EV if self.target < 12 else KCALMOL2EV  # Hartree or kcal/mol columns
        energy = ordered[:, self.target] * factor
        return names, y, energy

    def _read_skip(self) -> np.ndarray:
        path = self.raw_paths[2]
        with open(path) as f:
            lines = f.read().split('\n')[9:-2]  # as PyG: 9 header lines, a footer
        try:
            skip = [int(line.split()[0]) - 1 for line in lines]
        except (ValueError, IndexError):
            raise RawFileError(f"'{path}' is not QM9's uncharacterized.txt (9 header lines, "
                               f"one molecule index per line, one footer line)") from None
        return np.array(skip, dtype=np.int64)

    def process_storage(self):
        with raw_read_errors(self.raw_paths, 'QM9'):
            return self._read_raw()

    def _read_raw(self):
        titles, num_atoms, z, pos = read_sdf_atoms(self.raw_paths[0])
        names, y, energy = self._read_targets()
        if len(names) != len(titles):
            raise RawFileError(f"gdb9.sdf has {len(titles)} molecules but gdb9.sdf.csv has "
                               f"{len(names)} rows: the raw files do not belong together")
        mismatch = [i for i, (a, b) in enumerate(zip(titles, names)) if a != b]
        if mismatch:
            i = mismatch[0]
            raise RawFileError(f"record {i + 1} of gdb9.sdf is '{titles[i]}' but row {i + 1} of "
                               f"gdb9.sdf.csv is '{names[i]}'")
        skip = self._read_skip()
        if len(titles) == QM9_NUM_MOLECULES and skip.size != QM9_NUM_UNCHARACTERIZED:
            logger.warning('uncharacterized.txt lists %d molecules, not %d', skip.size,
                           QM9_NUM_UNCHARACTERIZED)
        keep = np.ones(len(titles), dtype=bool)
        keep[skip[(skip >= 0) & (skip < len(titles))]] = False
        atom_keep = np.repeat(keep, num_atoms)
        with np.errstate(over='ignore', invalid='ignore'):
            pos32 = pos.astype(np.float32)  # a finite 1e39 in the SD file is inf in float32
        atom_ok = np.isfinite(pos32).all(axis=1)
        molecule_ok = np.add.reduceat(atom_ok, np.r_[0, np.cumsum(num_atoms)[:-1]]) == num_atoms
        finite = (np.isfinite(energy) & torch.isfinite(y).all(dim=1).numpy() & molecule_ok)
        if not finite[keep].all():
            logger.warning('QM9: dropped %d molecules with NaN targets',
                           int((~finite[keep]).sum()))
            keep &= finite
            atom_keep = np.repeat(keep, num_atoms)
        index = np.nonzero(keep)[0]
        if index.size == 0:
            raise RawFileError(f"'{self.raw_paths[0]}': no molecule is left after removing the "
                               f"uncharacterized ones and those with NaN values")
        atom_fields = {'z': torch.from_numpy(z[atom_keep]),
                       'pos': torch.from_numpy(pos32[atom_keep])}
        graph_fields = {'y': y[torch.from_numpy(keep)],
                        'energy': torch.from_numpy(energy[keep]),
                        'idx': torch.from_numpy(index)}
        return collate_storage(torch.from_numpy(num_atoms[keep]), atom_fields, graph_fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, target='{QM9_TARGETS[self.target]}')"
