"""The raw HDF5 files with one group per molecule (ANI-1x, SPICE), opened for processing."""
import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

from pyg_tensorpot.datasets.base import (
    ReadPosition,
    StorageBuilder,
    check_allocation,
    checked_molecule_group,
    molecule_groups,
    open_hdf5,
    progress,
    raw_read_errors,
    require_h5py,
)


def finite_as_float32(values: np.ndarray) -> np.ndarray:
    """Whether every value of each conformation (the first axis) is finite as it is stored,
    in float32: the huge numbers of a damaged file overflow to infinity there."""
    with np.errstate(over='ignore', invalid='ignore'):
        stored = np.asarray(values).astype(np.float32)
    return np.isfinite(stored).reshape(stored.shape[0], -1).all(axis=1)


@dataclass
class MoleculeFile:
    r"""An open raw HDF5 file whose groups are molecules (their ``atomic_numbers`` and arrays
    of conformations), as :func:`molecule_file` yields it.

    Args:
        handle (h5py.File): The open file.
        path (str): Its path (named in messages).
        what (str): The dataset (named in messages), e.g. ``'ANI-1x'``.
        layout (str): The layout a group that lacks a dataset is not, e.g.
            ``'ANI-1x release layout'``.
        position (ReadPosition): Where the reader is, for the messages of
            :func:`~pyg_tensorpot.datasets.base.raw_read_errors`.
        names (List[str]): The molecule groups, in file order.
    """
    handle: Any
    path: str
    what: str
    layout: str
    position: ReadPosition
    names: List[str] = field(default_factory=list)

    def group(self, name: str) -> Any:
        """The group :obj:`name`, recorded as the place being read."""
        self.position.group = name
        return self.handle[name]

    def checked_groups(self, names: Sequence[str], needed: Sequence[str], desc: str,
                       log: bool) -> Iterator[Tuple[str, Any, np.ndarray]]:
        """Yields ``(name, group, atomic numbers)`` of the groups :obj:`names` (with a progress
        bar :obj:`desc` when :obj:`log`), each checked to hold the datasets :obj:`needed`
        (``'atomic_numbers'`` first; see
        :func:`~pyg_tensorpot.datasets.base.checked_molecule_group`)."""
        for name in progress(names, desc=desc, enabled=log, unit='group'):
            group = self.group(name)
            yield name, group, checked_molecule_group(group, name, self.path, needed,
                                                      self.layout)

    def builder(self, num_structures: int, num_atoms: int,
                atom_fields: Dict[str, Tuple[Tuple[int, ...], torch.dtype]],
                graph_fields: Dict[str, Tuple[Tuple[int, ...], torch.dtype]],
                bytes_per_structure: int) -> StorageBuilder:
        """The :class:`~pyg_tensorpot.datasets.base.StorageBuilder` of the conformations the
        file's shapes announce, after checking that they fit the size of the file (40 bytes per
        atom and :obj:`bytes_per_structure`; a corrupt shape is a
        :class:`~pyg_tensorpot.datasets.base.RawFileError`, not an exhausted memory)."""
        check_allocation(40 * num_atoms + bytes_per_structure * num_structures, [self.path],
                         self.what)
        return StorageBuilder(num_structures, num_atoms, atom_fields, graph_fields)


@contextlib.contextmanager
def molecule_file(path: str, what: str, layout: str, kind: str) -> Iterator[MoleculeFile]:
    r"""Opens the raw HDF5 file of a molecule-group dataset for processing: :mod:`h5py` is
    imported with an installation hint naming :obj:`what`, a file without molecule groups
    raises :class:`~pyg_tensorpot.datasets.base.RawFileError` saying it is not :obj:`kind`
    (e.g. ``'a SPICE file'``), and every error of a damaged file raised while the block reads
    it becomes a :class:`~pyg_tensorpot.datasets.base.RawFileError` naming the file and the
    group (:func:`~pyg_tensorpot.datasets.base.raw_read_errors`).

    Args:
        path (str): The raw file.
        what (str): The dataset, e.g. ``'ANI-1x'``.
        layout (str): See :class:`MoleculeFile`.
        kind (str): What a file of the dataset is, e.g. ``'the ANI-1x release'``.
    """
    with raw_read_errors([path], what) as position:
        require_h5py(what)
        with open_hdf5(path) as handle:
            yield MoleculeFile(handle, path, what, layout, position,
                               molecule_groups(handle, path, kind))
