r"""Our own wB97X/6-31G(d) labels of organic molecules, chosen by active learning."""
import hashlib
import os.path as osp
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pyg_tensorpot.datasets.arguments import LocalDatasetArguments, Unpack
from pyg_tensorpot.datasets.base import AtomisticInMemoryDataset, RawFileError, collate_storage

#: Kinds of sampling a conformation can come from (the ``kind`` index served).
KINDS = ('conformer', 'normal-modes', 'md', 'torsion', 'cluster')


def _kind_index(kind: str, key: str) -> int:
    # 'torsion-120' and 'cluster-3' carry the angle and the number of molecules
    for k, name in enumerate(KINDS):
        if kind == name or kind.startswith(name + '-'):
            return k
    raise RawFileError(f"label '{key}' has the unknown sampling kind {kind!r}; known: "
                       f"{list(KINDS)}")


def _bundled_folder() -> str:
    here = osp.dirname(osp.dirname(osp.abspath(__file__)))
    return osp.join(here, 'data', 'organic_dft', 'labels')


def molecule_id(smiles: str) -> int:
    """A stable integer id of a molecule (or of a cluster ``"A.B"``): the first 60 bits of the
    SHA-256 of its canonical SMILES, the same in every release whatever labels are added."""
    return int(hashlib.sha256(smiles.encode('utf-8')).hexdigest()[:15], 16)


def molecule_bucket(smiles: str, buckets: int = 10) -> int:
    """The bucket (0 .. :obj:`buckets` - 1) of a molecule, from the SHA-256 of its canonical
    SMILES: independent of the order and number of labels, so that the split of a molecule
    never changes as labels are added."""
    return int(hashlib.sha256(smiles.encode('utf-8')).hexdigest()[:8], 16) % buckets


SPLIT_PARTS = ('train', 'val', 'test', 'mixed')


def conformation_split(smiles: str, test_bucket: int = 0, val_bucket: int = 1,
                       buckets: int = 10) -> str:
    """``"test"``, ``"val"`` or ``"train"`` for a conformation of :obj:`smiles`, the part of
    all its molecules; ``"mixed"`` for a cluster ``"A.B"`` whose molecules are in different
    parts (in none of the three, so that a test conformation holds only molecules unseen in
    training and a training one no test molecule)."""
    parts = {_bucket_part(molecule_bucket(part, buckets), test_bucket, val_bucket)
             for part in smiles.split('.')}
    return parts.pop() if len(parts) == 1 else 'mixed'


def _bucket_part(bucket: int, test_bucket: int, val_bucket: int) -> str:
    return 'test' if bucket == test_bucket else 'val' if bucket == val_bucket else 'train'


class OrganicDFT(AtomisticInMemoryDataset):
    r"""Conformations of C/H/N/O molecules (NCI molecules and new BRICS joins of up to 25
    heavy atoms, their conformers, normal-mode samples, MD at 300-1,000 K, torsion scans, and
    dimers and trimers of different molecules) chosen by the spread of the ANI-1x ensemble, with
    our own wB97X/6-31G(d) energies and forces computed with PySCF
    (:mod:`pyg_tensorpot.dft`; the level of theory of ANI-1x and COMP6). S66x8's molecules are
    left out, so that COMP6 S66x8 stays a clean test set. See ``datasets/organic-dft.md``.

    The labels are shipped with the package, one JSON file per conformation in
    ``pyg_tensorpot/data/organic_dft/labels``; :obj:`folder` reads another folder of files
    written by :class:`~pyg_tensorpot.dft.PySCFLabeller` (e.g. one still being labelled).

    Served per conformation: ``z``, ``pos`` (Angstrom), ``energy`` (eV, float64, total
    energy), ``forces`` (eV/Angstrom, :math:`-\nabla E`), ``kind`` (index into
    :data:`KINDS`), ``temperature`` (K of the MD or normal-mode sampling, 0 otherwise),
    ``split`` (0 train, 1 val, 2 test, 3 a cluster of molecules from different parts;
    see :meth:`fixed_split`), ``molecule`` (:func:`molecule_id` of the SMILES: the
    conformations of one molecule or cluster share it, for conformational energies and for
    ``data.group_key``).

    Args:
        root (str, optional): Folder to cache the processed file in; with :obj:`None` the
            labels are read in memory. (default: :obj:`None`)
        folder (str, optional): Folder of label files. (default: the bundled labels)
        **kwargs: The shared dataset arguments (transform, pre_filter, log, ...).
    """
    name = 'organic_dft'

    def __init__(self, root: Optional[str] = None, folder: Optional[str] = None,
                 **kwargs: Unpack[LocalDatasetArguments]) -> None:
        self.folder = osp.abspath(folder) if folder is not None else _bundled_folder()
        if not osp.isdir(self.folder):
            raise RawFileError(f"the DFT label folder '{self.folder}' does not exist"
                               + ('' if folder is not None else
                                  ': the package installation is incomplete'))
        from pyg_tensorpot.dft.labeller import label_keys
        self._keys = label_keys(self.folder)
        if not self._keys:
            raise RawFileError(f"'{self.folder}' holds no DFT label files (<key>.json)")
        super().__init__(root, **kwargs)

    @property
    def raw_dir(self) -> str:
        return self.folder

    @property
    def raw_file_names(self) -> List[str]:
        return [f'{key}.json' for key in self._keys]

    def options(self) -> Dict:
        # the processed file is rebuilt whenever a label is added or the folder changes
        digest = hashlib.sha256('\n'.join([self.folder] + self._keys).encode()).hexdigest()
        return {'labels': digest[:16]}

    def download(self) -> None:
        raise RawFileError(f"label files of '{self.folder}' vanished while reading it")

    def process_storage(self):
        from pyg_tensorpot.dft.labeller import read_label
        zs, pos, forces, energy, kind, temperature, split, molecule, num_atoms = (
            [] for _ in range(9))
        for key in self._keys:
            record = read_label(osp.join(self.folder, f'{key}.json'))
            meta = record.get('metadata', {})
            smiles = meta.get('smiles')
            if not smiles:
                raise RawFileError(f"label '{key}' of '{self.folder}' has no SMILES in its "
                                   f"metadata: the split needs it")
            zs.append(record['z'])
            pos.append(record['pos'])
            forces.append(record['forces'])
            energy.append(record['energy'])
            num_atoms.append(record['z'].size)
            kind.append(_kind_index(str(meta.get('kind', 'conformer')), key))
            temperature.append(float(meta.get('temperature') or 0.0))
            split.append(SPLIT_PARTS.index(conformation_split(smiles)))
            molecule.append(molecule_id(smiles))
        atom_fields = {'z': torch.from_numpy(np.concatenate(zs)),
                       'pos': torch.from_numpy(np.concatenate(pos).astype(np.float32)),
                       'forces': torch.from_numpy(np.concatenate(forces).astype(np.float32))}
        graph_fields = {'energy': torch.tensor(energy, dtype=torch.float64),
                        'kind': torch.tensor(kind, dtype=torch.long),
                        'temperature': torch.tensor(temperature, dtype=torch.float32),
                        'split': torch.tensor(split, dtype=torch.long),
                        'molecule': torch.tensor(molecule, dtype=torch.long)}
        return collate_storage(torch.tensor(num_atoms), atom_fields, graph_fields)

    def fixed_split(self) -> Dict[str, Tensor]:
        """The fixed split by molecule (no molecule in two parts): a molecule is test if the
        SHA-256 of its canonical SMILES is 0 modulo 10 (about 10 %), val if 1, else train; a
        cluster is in the part of its molecules, and in none if they are in different parts.
        Returns ``idx_train``, ``idx_val``, ``idx_test``."""
        split = self.storage().split
        if self._indices is not None:
            split = split[torch.as_tensor(self.indices())]
        return {f'idx_{name}': torch.nonzero(split == k).flatten()
                for k, name in enumerate(('train', 'val', 'test'))}

    def __repr__(self) -> str:
        return f'{type(self).__name__}({len(self)})'


def kind_names(kinds: Sequence[int]) -> List[str]:
    """The sampling kinds of the served ``kind`` indices."""
    return [KINDS[int(k)] for k in kinds]
