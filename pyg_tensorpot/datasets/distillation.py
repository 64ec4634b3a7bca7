"""Teacher-labelled conformations: the label files of the ANI-1x distillation recipe."""
import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from pyg_tensorpot.datasets.arguments import LocalDatasetArguments, Unpack
from pyg_tensorpot.datasets.base import (
    AtomisticInMemoryDataset,
    RawFileError,
    collate_storage,
    file_hash,
)
from pyg_tensorpot.datasets.reference_energies import ANI1X_SELF_ENERGIES_HARTREE, hartree_to_ev

#: Arrays every label file holds (``group`` is optional: dissociation scans only).
LABEL_KEYS = ('natoms', 'z', 'pos', 'energy', 'forces', 'source')


def source_kind(name: str) -> str:
    """The kind of a conformation's ``source`` name (:attr:`DistillationDataset.sources`):
    ``'qm9-xyz'`` for the QM9 xyz files (``dsgdb9nsd_*``), ``'qm9-db'``, ``'s66-monomer'``,
    else the name's first dash-separated word (``'ani1x'``, ``'spice'``, ``'pair'``,
    ``'dimer'``); ``'other'`` for a word outside :attr:`DistillationDataset.sources`."""
    if name.startswith('dsgdb9nsd'):
        return 'qm9-xyz'
    if name.startswith('qm9-db'):
        return 'qm9-db'
    if name.startswith('s66'):
        return 's66-monomer'
    kind = name.split('-')[0]
    return kind if kind in DistillationDataset.sources else 'other'


class DistillationDataset(AtomisticInMemoryDataset):
    r"""Conformations labelled by a teacher model, as written by the ``label`` and
    ``label-dimers`` steps of ``examples/pretrain_ani1x_distillation.py`` (the ANI-1x
    8-model ensemble as teacher of the pretrained ``tensornet-ani1x`` and ``hipnn-ts-ani1x``).

    A label file is an ``.npz`` with ``natoms`` ``(M,)``, ``z`` ``(sum natoms,)``, ``pos``
    ``(sum natoms, 3)`` Angstrom, ``energy`` ``(M,)`` eV (the teacher's total energy),
    ``forces`` ``(sum natoms, 3)`` eV/Angstrom, ``source`` ``(M,)`` (where each conformation
    comes from, e.g. ``qm9-db-17``, ``pair``, ``dimer-hbond``), optionally ``temperature``
    ``(M,)`` K (of the MD that sampled it; 0 for constructed geometries), ``group`` ``(M,)``
    (the dissociation scan of a dimer conformation, -1 for none) and ``info`` (the sampling
    settings as JSON, :attr:`infos`).

    Samples carry ``z``, ``pos`` (Angstrom), ``energy`` (eV, float64, ``[1]``), ``forces``
    (eV/Angstrom), ``temperature`` (K), ``source`` (index into :attr:`sources`, by
    :func:`source_kind`) and ``group``: the dissociation scan, numbered over all files
    (the scans of the second file follow those of the first), -1 for a conformation in no
    scan. With ``data.group_key: group`` the training engine keeps every scan in one batch and
    on one side of the split, and ``loss.relative_energy_weight`` fits the energies relative
    to each scan's mean.

    Args:
        root (str, optional): Folder of the processed file (``root/processed``); :obj:`None`
            reads the label files into memory on every construction. (default: :obj:`None`)
        paths (str or Sequence[str]): The label file(s), in order.
        transform, pre_transform, pre_filter, log, force_reload: See
            :class:`~pyg_tensorpot.datasets.base.AtomisticInMemoryDataset`.
    """
    name = 'distillation'
    #: Names of the ``source`` labels (:func:`source_kind`).
    sources = ('qm9-db', 'qm9-xyz', 'ani1x', 'spice', 's66-monomer', 'pair', 'dimer', 'other')

    def __init__(self, root: Optional[str] = None,
                 paths: Union[str, Sequence[str]] = (),
                 **kwargs: Unpack[LocalDatasetArguments]) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not isinstance(paths, Sequence) or not paths:
            raise ValueError('DistillationDataset needs paths=[...]: the label files written '
                             'by examples/pretrain_ani1x_distillation.py label / label-dimers')
        self.paths = [osp.abspath(os.fspath(p)) for p in paths]
        for path in self.paths:
            if not osp.isfile(path):
                raise FileNotFoundError(f"label file '{path}' does not exist (or is not a "
                                        f"file); write it with examples/"
                                        f"pretrain_ani1x_distillation.py label")
        self.file_sha256 = [file_hash(p) for p in self.paths]
        super().__init__(root, verify_checksums=False, **kwargs)

    @property
    def raw_file_names(self) -> List[str]:
        return [osp.basename(p) for p in self.paths]

    @property
    def raw_paths(self) -> List[str]:
        return list(self.paths)

    def download(self) -> None:
        raise RawFileError(f'the label files {self.paths} are missing; write them with '
                           f'examples/pretrain_ani1x_distillation.py label')

    def options(self) -> Dict[str, Any]:
        return {'paths': self.paths, 'sha256': self.file_sha256}

    @property
    def infos(self) -> List[Dict[str, Any]]:
        """The sampling settings of every label file (its ``info``), with its name."""
        out = []
        for path in self.paths:
            with np.load(path, allow_pickle=False) as f:
                info = json.loads(str(f['info'])) if 'info' in f.files else {}
            out.append({'file': osp.basename(path), **info})
        return out

    def atomref(self) -> Dict[int, float]:
        """The ANI-1x self energies (``sae_linfit.dat``, eV) of H, C, N, O: the energies the
        ANI-1x ensemble adds to its networks' output, so the reference of its labels."""
        return hartree_to_ev(ANI1X_SELF_ENERGIES_HARTREE)

    def process_storage(self):
        num_atoms, atom, graph = [], {'z': [], 'pos': [], 'forces': []}, {
            'energy': [], 'temperature': [], 'source': [], 'group': []}
        next_group = 0
        for path in self.paths:
            arrays = _read_label_file(path)
            n = arrays['natoms'].size
            group = arrays['group']
            # scans of later files are numbered after those of earlier ones
            group = np.where(group >= 0, group + next_group, -1)
            if (group >= 0).any():
                next_group = int(group.max()) + 1
            num_atoms.append(arrays['natoms'])
            atom['z'].append(arrays['z'].astype(np.int64))
            atom['pos'].append(arrays['pos'].astype(np.float32))
            atom['forces'].append(arrays['forces'].astype(np.float32))
            graph['energy'].append(arrays['energy'].astype(np.float64))
            graph['temperature'].append(arrays['temperature'].astype(np.float32))
            graph['source'].append(np.array([self.sources.index(source_kind(str(s)))
                                             for s in arrays['source']], dtype=np.int64))
            graph['group'].append(group.astype(np.int64).reshape(n))
        return collate_storage(
            torch.from_numpy(np.concatenate(num_atoms)),
            {k: torch.from_numpy(np.concatenate(v)) for k, v in atom.items()},
            {k: torch.from_numpy(np.concatenate(v)) for k, v in graph.items()})

    def __repr__(self) -> str:
        return f'{type(self).__name__}({len(self)}, files={self.raw_file_names})'


def _read_label_file(path: str) -> Dict[str, np.ndarray]:
    """The arrays of one label file, checked for the layout the labeller writes."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in LABEL_KEYS if k not in f.files]
            if missing:
                raise RawFileError(f"'{path}' lacks {missing}: not a label file of "
                                   f"examples/pretrain_ani1x_distillation.py (it has "
                                   f"{sorted(f.files)})")
            arrays = {k: f[k] for k in f.files if k != 'info'}
    except (OSError, ValueError, EOFError) as error:
        raise RawFileError(f"cannot read '{path}' as an .npz label file ({error})") from None
    natoms = np.asarray(arrays['natoms']).reshape(-1).astype(np.int64)
    m, total = natoms.size, int(natoms.sum())
    if m == 0 or natoms.min() < 1:
        raise RawFileError(f"'{path}': natoms must list at least one conformation, each of "
                           f"at least one atom")
    shapes = {'z': (total,), 'pos': (total, 3), 'forces': (total, 3), 'energy': (m,),
              'source': (m,)}
    arrays.setdefault('temperature', np.zeros(m, dtype=np.float32))
    arrays.setdefault('group', np.full(m, -1, dtype=np.int64))
    shapes.update(temperature=(m,), group=(m,))
    for key, shape in shapes.items():
        if tuple(arrays[key].shape) != shape:
            raise RawFileError(f"'{path}': {key} has shape {tuple(arrays[key].shape)}, "
                               f"expected {shape} for {m} conformations of {total} atoms")
    z = arrays['z']
    if z.min() < 1 or z.max() > 118:
        raise RawFileError(f"'{path}': atomic numbers must lie in 1..118")
    for key in ('pos', 'forces', 'energy'):
        if not np.isfinite(arrays[key]).all():
            raise RawFileError(f"'{path}': {key} holds NaN or infinite values")
    arrays['natoms'] = natoms
    return arrays
