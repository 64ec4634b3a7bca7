"""Shared machinery of the atomistic datasets: checksums, collated storage, safe atomic files.

Length: over 500 lines because the machinery every loader shares (atomic writes, archive
extraction, file locks, manifests, raw-file error translation) lives in one place.

Every dataset of :mod:`pyg_tensorpot.datasets` is a PyG
:class:`~torch_geometric.data.InMemoryDataset` whose samples carry

* ``z`` (``[num_atoms]``, ``torch.long``): atomic numbers,
* ``pos`` (``[num_atoms, 3]``, ``float32``): positions in Angstrom,
* ``energy`` (``[1]``, ``float64``): energy in eV,
* ``forces`` (``[num_atoms, 3]``, ``float32``): forces (minus the gradient) in eV/Angstrom,
  where the data has them,

plus dataset-specific extras. The processed storage is built directly as collated tensors and
``slices`` (no per-structure Python objects for the large datasets), written atomically (temporary
file, then :func:`os.replace`) together with a manifest holding its SHA-256, and only ever read
with ``torch.load(..., weights_only=True)`` after the manifest has been checked: an interrupted
or corrupt processed file is re-processed, never loaded. Downloading, extracting and processing
hold a file lock (``root/.pyg_tensorpot.lock``), so that several processes building the same root
at once (the ranks of a distributed run) leave one valid processed file: the first builds it, the
others wait and load it.
"""
import bisect
import bz2
import contextlib
import gzip
import hashlib
import inspect
import json
import logging
import lzma
import os
import os.path as osp
import pickle
import shutil
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, InMemoryDataset

from pyg_tensorpot.datasets.arguments import with_shared_arguments
from pyg_tensorpot.utils.files import atomic_open, atomic_write_text, file_digest

logger = logging.getLogger('pyg_tensorpot.datasets')

#: Bumped whenever the processed layout changes, so that old processed files are rebuilt.
PROCESSED_FORMAT_VERSION = 1

#: Name of the lock file held in the dataset root while raw files are fetched or processed.
LOCK_FILE_NAME = '.pyg_tensorpot.lock'

# Everything a damaged archive makes the standard-library decompressors raise.
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError,
                   OSError, ValueError, KeyError, NotImplementedError)


class ChecksumError(RuntimeError):
    """A raw file does not have the checksum of the published release."""


class RawFileError(RuntimeError):
    """A raw file is missing, unreadable or not in the layout of the published release."""


class ProcessedFileError(RuntimeError):
    """A processed file could not be read although its manifest matched (it changed on disk
    while it was being read)."""


def require_h5py(what: str = 'this dataset'):
    """Imports :mod:`h5py`, with an installation hint when it is missing."""
    try:
        import h5py
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(f"reading {what} needs h5py: pip install 'pyg-tensorpot[data]' "
                          f"(or pip install h5py)") from error
    return h5py


def open_hdf5(path: str):
    """Opens an HDF5 raw file for reading (an :class:`h5py.File`); one that is not HDF5, or
    is damaged, raises :class:`RawFileError` naming it."""
    h5py = require_h5py()
    try:
        return h5py.File(path, 'r')
    except OSError as error:
        raise RawFileError(f"cannot open '{path}' as HDF5 ({error}): the file is corrupt or "
                           f"incomplete; delete it and download it again") from error


def group_atomic_numbers(group: Any, name: str, path: str) -> np.ndarray:
    """The ``atomic_numbers`` of an HDF5 molecule group as ``int64`` ``(n,)``; raises
    :class:`RawFileError` naming the group unless they are all from 1 to 118."""
    z = np.asarray(group['atomic_numbers'][()], dtype=np.int64).reshape(-1)
    if z.size == 0 or z.min() < 1 or z.max() > 118:
        raise RawFileError(f"group '{name}' of '{path}': atomic numbers "
                           f"{z.tolist()[:20]} are not all from 1 to 118")
    return z


def molecule_groups(f: Any, path: str, what: str) -> List[str]:
    """The names of the molecule groups of an open HDF5 file, in file order; a file without
    any raises :class:`RawFileError` saying it is not :obj:`what` (e.g. ``'a SPICE file'``)."""
    h5py = require_h5py(what)
    names = [name for name, item in f.items() if isinstance(item, h5py.Group)]
    if not names:
        raise RawFileError(f"'{path}' has no molecule groups: not {what}")
    return names


def checked_molecule_group(group: Any, name: str, path: str, needed: Sequence[str],
                           layout: str) -> np.ndarray:
    """Checks that the HDF5 molecule group :obj:`name` holds the datasets :obj:`needed`
    (``'atomic_numbers'`` first, then floating-point arrays) and returns its atomic numbers
    (:func:`group_atomic_numbers`); raises :class:`RawFileError` naming the group, the file
    and what is missing or of the wrong kind (``not the <layout>``)."""
    missing = [key for key in needed if key not in group]
    if missing:
        raise RawFileError(f"group '{name}' of '{path}' lacks {missing}: not the {layout}")
    check_kind(group[needed[0]], 'iu', path)
    for key in needed[1:]:
        check_kind(group[key], 'f', path)
    return group_atomic_numbers(group, name, path)


def progress(iterable: Iterable, total: Optional[int] = None, desc: str = '',
             enabled: bool = True, unit: str = 'it'):
    """Wraps :obj:`iterable` in a :mod:`tqdm` progress bar (when :obj:`enabled`)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("progress bars need tqdm: pip install 'pyg-tensorpot[data]' "
                          "(or pip install tqdm), or pass log=False") from None
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def file_hash(path: str, algorithm: str = 'sha256', chunk_size: int = 1 << 24) -> str:
    """The hexadecimal :mod:`hashlib` digest of a file, read in chunks
    (:func:`pyg_tensorpot.utils.files.file_digest`)."""
    return file_digest(path, algorithm, chunk_size)


def git_blob_sha1(path: str) -> str:
    """The git blob id of a file (SHA-1 of ``b'blob <size>\\0' + content``), the checksum
    GitHub publishes for every file of a repository."""
    digest = hashlib.sha1()
    digest.update(f'blob {osp.getsize(path)}\0'.encode())
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 24), b''):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str, algorithm: str, expected: str, what: str = '') -> None:
    """Raises :class:`ChecksumError` naming :obj:`path` when its checksum is not
    :obj:`expected` (a prefix of the hexadecimal digest is accepted where only a prefix is
    published). :obj:`algorithm` is a :mod:`hashlib` name or ``'git-blob'``."""
    if not osp.isfile(path):
        raise RawFileError(f"raw file '{path}' does not exist")
    actual = git_blob_sha1(path) if algorithm == 'git-blob' else file_hash(path, algorithm)
    expected = expected.lower()
    if not actual.startswith(expected):
        label = f' of {what}' if what else ''
        raise ChecksumError(
            f"raw file '{path}' has {algorithm} {actual}, but the published file{label} has "
            f"{expected}: the download is corrupt, incomplete or a different version. Delete "
            f"it and download again (or pass verify_checksums=False if you deliberately use a "
            f"modified file).")


def atomic_torch_save(obj: Any, path: str) -> None:
    """:func:`torch.save` through :func:`~pyg_tensorpot.utils.files.atomic_open`, so a crash
    never leaves a half-written :obj:`path`."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def extract_archive(path: str, folder: str, required: Sequence[str] = ()) -> List[str]:
    r"""Extracts a tar (``.tar``, ``.tar.gz``, ``.tar.bz2``, ``.tar.xz``) or zip archive into
    :obj:`folder` all or nothing: the members are first written to a temporary folder inside
    :obj:`folder` (only regular files and folders with safe relative names, tar's ``'data'``
    filter), the checksums the formats carry (bzip2 block CRCs, zip CRC-32) are checked on the
    way, and only when every member was read completely and every name of :obj:`required` is
    present are the files moved into place with :func:`os.replace`. A damaged or incomplete
    archive raises :class:`RawFileError` naming it and leaves :obj:`folder` as it was; the
    archive itself is never modified.

    Args:
        path (str): The archive.
        folder (str): Destination folder.
        required (Sequence[str], optional): Member paths (``/``-separated, relative) that must
            be in the archive. (default: ``()``)

    Returns:
        list: The extracted member paths, relative to :obj:`folder`.
    """
    if not osp.isfile(path):
        raise RawFileError(f"archive '{path}' does not exist")
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.extract-', dir=folder)
    try:
        try:
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()  # reads every member and checks its CRC-32
                    if bad is not None:
                        raise zipfile.BadZipFile(f"member '{bad}' fails its CRC-32 check")
                    for info in archive.infolist():
                        name = info.filename
                        if osp.isabs(name) or '..' in name.replace('\\', '/').split('/'):
                            raise zipfile.BadZipFile(f"unsafe member name '{name}'")
                    archive.extractall(tmp)
            else:
                # tarfile reads a compressed stream lazily and takes a damaged one for the end
                # of the archive (members after the damage vanish, the member holding it is cut
                # short without an error), so the whole stream is checked first.
                _check_compressed_stream(path)
                with tarfile.open(path, 'r:*') as archive:
                    archive.extractall(tmp, filter='data')
        except _ARCHIVE_ERRORS as error:
            raise RawFileError(f"cannot extract '{path}' ({type(error).__name__}: {error}): the "
                               f"archive is corrupt or incomplete; delete it and download it "
                               f"again") from None
        members = []
        for base, _, files in os.walk(tmp):
            for file in files:
                members.append(osp.relpath(osp.join(base, file), tmp).replace(os.sep, '/'))
        missing = sorted(set(required) - set(members))
        if missing:
            raise RawFileError(f"archive '{path}' lacks {missing} (it has {sorted(members)[:20]}"
                               f"): not the published archive, or a damaged one")
        for member in sorted(members):
            target = osp.join(folder, *member.split('/'))
            os.makedirs(osp.dirname(target), exist_ok=True)
            os.replace(osp.join(tmp, *member.split('/')), target)
        return sorted(members)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_compressed_stream(path: str) -> None:
    """Decompresses a gzip, bzip2 or xz file to its end, discarding the output, so that a
    truncated stream or a failed CRC raises here (uncompressed files pass unread)."""
    with open(path, 'rb') as f:
        magic = f.read(6)
    if magic[:3] == b'BZh':
        opener = bz2.open
    elif magic[:2] == b'\x1f\x8b':
        opener = gzip.open
    elif magic == b'\xfd7zXZ\x00':
        opener = lzma.open
    else:
        return
    with opener(path, 'rb') as stream:
        while stream.read(1 << 24):
            pass


class ReadPosition:
    """Where a reader is in a raw file (set by the reader, quoted by :func:`raw_read_errors`)."""
    def __init__(self) -> None:
        self.group: Optional[str] = None

    def __str__(self) -> str:
        return '' if self.group is None else f", group '{self.group}'"


@contextlib.contextmanager
def raw_read_errors(paths: Sequence[str], what: str) -> Iterator[ReadPosition]:
    r"""Turns every error a damaged raw file makes a reader library raise (:mod:`h5py` raises
    :class:`OSError`, :class:`RuntimeError`, :class:`KeyError`, :class:`ValueError`,
    :class:`TypeError` or :class:`IndexError` depending on which structure is damaged, numpy
    a :class:`MemoryError` for a corrupt shape) into a :class:`RawFileError` naming the file
    and, where the reader records it in the yielded :class:`ReadPosition`, the group.

    Args:
        paths (Sequence[str]): The raw files being read (named in the message).
        what (str): The dataset, e.g. ``'ANI-1x'``.
    """
    position = ReadPosition()
    try:
        yield position
    except RawFileError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            MemoryError, OverflowError) as error:
        names = ', '.join(f"'{p}'" for p in paths)
        raise RawFileError(
            f"cannot read {names}{position} as {what} data ({type(error).__name__}: {error}): "
            f"the file is corrupt, incomplete or not in the layout of the release; delete it "
            f"and download it again") from error


_KIND_NAMES = {'f': 'floating-point numbers', 'i': 'integers', 'u': 'integers',
               'S': 'text', 'O': 'text', 'U': 'text'}


def check_kind(dataset: Any, kinds: str, path: str) -> None:
    """Raises :class:`RawFileError` naming the file and the HDF5 dataset when
    :obj:`dataset` does not hold values of one of the numpy dtype kinds :obj:`kinds`
    (``'f'`` floating point, ``'iu'`` integers, ``'SOU'`` text)."""
    if dataset.dtype.kind not in kinds:
        expected = ' or '.join(sorted({_KIND_NAMES.get(k, k) for k in kinds}))
        raise RawFileError(f"'{path}', dataset '{dataset.name}' holds {dataset.dtype} values, "
                           f"not {expected}: not the layout of the release")


def check_allocation(num_bytes: int, paths: Sequence[str], what: str) -> None:
    """Raises :class:`RawFileError` when the arrays a raw file's shapes announce would take
    more than 64 times the size of the files (a corrupt shape, which would otherwise exhaust
    the memory of the machine)."""
    size = sum(osp.getsize(p) for p in paths)
    if num_bytes > 64 * size + (1 << 26):
        names = ', '.join(f"'{p}'" for p in paths)
        raise RawFileError(f'the array shapes in {names} announce {num_bytes / 2**30:.1f} GiB '
                           f'of {what} data, but the files hold {size / 2**30:.3f} GiB: a '
                           f'shape is corrupt; delete the file and download it again')


@contextlib.contextmanager
def build_lock(root: Optional[str], what: str = 'dataset') -> Iterator[None]:
    r"""Holds the lock file ``root/.pyg_tensorpot.lock`` (a :class:`filelock.FileLock`)
    while a dataset root is downloaded, extracted or processed, so that concurrent processes
    building the same root run one after the other. The operating system releases the lock
    when its holder dies, so a killed run never blocks the next one. Where the root cannot
    hold a lock file (a read-only copy of processed data), the build runs without it: the
    atomic writes still keep every file whole.

    Args:
        root (str, optional): The dataset root; :obj:`None` means no lock. (default: :obj:`None`)
        what (str, optional): Name used in the waiting message. (default: ``'dataset'``)
    """
    if root is None:
        yield
        return
    from filelock import FileLock, Timeout
    lock = FileLock(osp.join(root, LOCK_FILE_NAME))
    try:
        os.makedirs(root, exist_ok=True)
        try:
            lock.acquire(timeout=1.0)
        except Timeout:
            logger.info('%s: waiting for another process building %s', what, root)
            lock.acquire()
    except OSError as error:
        logger.warning('%s: cannot lock %s (%s); building without a lock', what, root, error)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def collate_storage(
    num_atoms: Tensor,
    atom_fields: Dict[str, Tensor],
    graph_fields: Dict[str, Tensor],
) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    r"""Builds the collated storage of an :class:`~torch_geometric.data.InMemoryDataset`
    directly from concatenated arrays, without creating one :class:`Data` per structure.

    Args:
        num_atoms (torch.Tensor): Number of atoms of each structure, shape ``[N]``.
        atom_fields (dict): Per-atom tensors, concatenated over structures along dim 0
            (``[sum(num_atoms), ...]``).
        graph_fields (dict): Per-structure tensors, shape ``[N, ...]``; structure :math:`i`
            gets row :math:`i` with a leading dimension of 1 (e.g. ``energy`` ``[N]`` gives
            ``[1]`` per structure).

    Returns:
        (dict, dict): The storage dict and the ``slices`` dict.
    """
    num_atoms = num_atoms.to(torch.long)
    n = num_atoms.numel()
    ptr = torch.zeros(n + 1, dtype=torch.long)
    torch.cumsum(num_atoms, 0, out=ptr[1:])
    total = int(ptr[-1])
    graph_ptr = torch.arange(n + 1, dtype=torch.long)
    data: Dict[str, Tensor] = {}
    slices: Dict[str, Tensor] = {}
    for key, value in atom_fields.items():
        if value.size(0) != total:
            raise ValueError(f"per-atom field '{key}' has {value.size(0)} rows, expected {total}")
        data[key], slices[key] = value, ptr
    for key, value in graph_fields.items():
        if value.size(0) != n:
            raise ValueError(f"per-structure field '{key}' has {value.size(0)} rows, "
                             f"expected {n}")
        data[key], slices[key] = value, graph_ptr
    return data, slices


class StorageBuilder:
    r"""Fills preallocated collated tensors group by group (one HDF5 molecule group at a
    time), so that millions of conformations are stored without one Python object per
    conformation and without concatenating copies.

    Args:
        max_structures (int): Upper bound of the number of structures.
        max_atoms (int): Upper bound of the total number of atoms.
        atom_fields (dict): ``{name: (tail_shape, dtype)}`` of per-atom fields (``z`` is
            always added).
        graph_fields (dict): ``{name: (tail_shape, dtype)}`` of per-structure fields.
    """
    def __init__(self, max_structures: int, max_atoms: int,
                 atom_fields: Dict[str, Tuple[Tuple[int, ...], torch.dtype]],
                 graph_fields: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]) -> None:
        self.atom = {'z': torch.empty(max_atoms, dtype=torch.long)}
        self.atom.update({k: torch.empty((max_atoms,) + tuple(tail), dtype=dtype)
                          for k, (tail, dtype) in atom_fields.items()})
        self.graph = {k: torch.empty((max_structures,) + tuple(tail), dtype=dtype)
                      for k, (tail, dtype) in graph_fields.items()}
        self.num_atoms = torch.empty(max_structures, dtype=torch.long)
        self.n_structures = 0
        self.n_atoms = 0

    def add(self, z: np.ndarray, atom_values: Dict[str, np.ndarray],
            graph_values: Dict[str, np.ndarray]) -> None:
        """Adds :math:`m` conformations of one molecule: :obj:`atom_values` have shape
        ``(m, n, *tail)``, :obj:`graph_values` ``(m, *tail)``."""
        n = int(z.shape[0])
        m = int(next(iter(graph_values.values())).shape[0])
        if m == 0:
            return
        a0, a1 = self.n_atoms, self.n_atoms + m * n
        s0, s1 = self.n_structures, self.n_structures + m
        self.atom['z'][a0:a1].view(m, n).copy_(torch.from_numpy(
            np.asarray(z, dtype=np.int64)).expand(m, n))
        for key, value in atom_values.items():
            target = self.atom[key][a0:a1]
            target.view((m, n) + tuple(target.shape[1:])).copy_(torch.from_numpy(
                np.ascontiguousarray(value)))
        for key, value in graph_values.items():
            self.graph[key][s0:s1].copy_(torch.from_numpy(np.ascontiguousarray(value)))
        self.num_atoms[s0:s1] = n
        self.n_structures, self.n_atoms = s1, a1

    @staticmethod
    def _shrink(tensor: Tensor, rows: int) -> Tensor:
        if rows == tensor.size(0):
            return tensor
        if rows >= 0.95 * tensor.size(0):
            # A few conformations were dropped after allocation (NaN forces, force filter):
            # keep a view of the first rows (no copy of gigabytes) and zero the unused tail so
            # that the saved file is deterministic.
            tensor[rows:].zero_()
            return tensor[:rows]
        return tensor[:rows].clone()

    def finish(self) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """The collated storage and slices of what was added."""
        atom = {k: self._shrink(v, self.n_atoms) for k, v in self.atom.items()}
        graph = {k: self._shrink(v, self.n_structures) for k, v in self.graph.items()}
        num_atoms = self.num_atoms[:self.n_structures].clone()
        self.atom, self.graph = {}, {}
        return collate_storage(num_atoms, atom, graph)


def _options_tag(options: Dict[str, Any]) -> str:
    text = json.dumps(options, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


class AtomisticInMemoryDataset(InMemoryDataset):
    r"""Base class of this package's atomistic datasets (see the module docstring for the
    sample layout, the units and the processed-file safety guarantees).

    Subclasses define :obj:`raw_file_names`, :meth:`download` (the real URLs),
    :meth:`options` (everything that changes the processed content), :obj:`checksums`
    (``{raw_file_name: (algorithm, hex)}`` of the published files, where known) and
    :meth:`process_storage`, which returns ``(storage, slices)`` built with
    :func:`collate_storage`. Their ``__init__`` states only their own options and passes the
    shared arguments on as ``**kwargs: Unpack[DatasetArguments]`` (see
    :mod:`pyg_tensorpot.datasets.arguments`), which gives it the full signature.

    Downloading and processing run in :meth:`__init__` itself, under the build lock, with the
    checksum and manifest checks described in the module docstring; PyG's own download and
    process steps are switched off through its public :obj:`has_download` and
    :obj:`has_process` properties.

    Args:
        root (str): Root folder; raw files in ``root/raw``, processed files in
            ``root/processed``. :obj:`None` processes the raw files in memory, for a dataset
            whose raw files need no root (a bundled file).
        transform (callable, optional): Applied to every sample on access. (default: :obj:`None`)
        pre_transform (callable, optional): Applied to every sample before saving (this makes
            processing go through one :class:`Data` per structure). (default: :obj:`None`)
        pre_filter (callable, optional): Keeps the samples for which it returns :obj:`True`.
            (default: :obj:`None`)
        log (bool, optional): Print progress bars and messages. (default: :obj:`True`)
        force_reload (bool, optional): Re-process even if a valid processed file exists.
            (default: :obj:`False`)
        verify_checksums (bool, optional): Check the raw files against the published
            checksums before processing. (default: :obj:`True`)
        mmap (bool, optional): Memory-map the processed file instead of reading it into
            memory: little resident memory for multi-GiB datasets, but the file must then not
            be modified in place while the dataset is used (replacing it, as a rebuild does,
            is safe; truncating it in place kills the process with ``SIGBUS``). Read into
            memory (the default), a loaded dataset is unaffected by anything that happens to
            the file afterwards. (default: :obj:`False`)
        source (str, optional): ``"raw"`` processes the raw files in :obj:`root`; ``"hub"``
            pulls the processed dataset from a Hugging Face Hub dataset repository (see
            :meth:`from_hub`): safetensors shards, each checked against the SHA-256 of the
            repository's card before it is memory-mapped, giving exactly the samples
            processing the raw files gives. (default: ``"raw"``)
        repo_id (str, optional): With ``source="hub"``, the repository ``"org/name"``.
            (default: :obj:`None`, ``"pyg-tensorpot/<name>"``)
        revision (str, optional): With ``source="hub"``, the branch, tag or commit.
            (default: :obj:`None`, ``main``)
    """
    #: ``{raw_file_name: (hashlib algorithm or 'git-blob', hex digest or prefix)}``.
    checksums: Dict[str, Tuple[str, str]] = {}
    #: Short name used for the processed file.
    name: str = 'dataset'

    def __init__(
        self,
        root: Optional[str],
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        pre_filter: Optional[Callable] = None,
        log: bool = True,
        force_reload: bool = False,
        verify_checksums: bool = True,
        mmap: bool = False,
        source: str = 'raw',
        repo_id: Optional[str] = None,
        revision: Optional[str] = None,
    ) -> None:
        self.verify_checksums = verify_checksums
        self.mmap = bool(mmap)
        if source not in ('raw', 'hub'):
            raise ValueError(f"source must be 'raw' (process the raw files) or 'hub' (pull the "
                             f"processed dataset from the Hugging Face Hub), got {source!r}")
        self.source = source
        if source == 'hub':
            if pre_transform is not None or pre_filter is not None:
                raise ValueError('pre_transform and pre_filter apply while processing raw '
                                 'files; a dataset pulled from the Hub is already processed '
                                 '(use transform, or source="raw")')
            self._init_from_hub(transform, log, repo_id, revision)
            return
        if root is None:
            super().__init__(None, transform, pre_transform, pre_filter, log, force_reload)
            self._check_raw_files(in_memory=True)
            if self.verify_checksums:
                self.verify_raw_files()
            storage, slices = self._processed_storage()
            self.data, self.slices = Data.from_dict(storage), slices
            return
        lock_root = osp.expanduser(osp.normpath(root))
        with build_lock(lock_root, type(self).__name__):
            super().__init__(root, transform, pre_transform, pre_filter, log, force_reload)
            self._check_raw_files(in_memory=False)
            self._build_processed_file()
            self.load(self.processed_paths[0])

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get('__init__')
        if init is not None:
            cls.__init__ = with_shared_arguments(init, AtomisticInMemoryDataset.__init__)

    @property
    def has_download(self) -> bool:
        # __init__ fetches the raw files itself (under the build lock, with error messages
        # naming the files to place by hand), not through PyG's default download step.
        return False

    @property
    def has_process(self) -> bool:
        # __init__ processes itself, checking the manifest and checksums, not through PyG's
        # default process step (which would write and read unchecked pickles).
        return False

    def storage(self) -> Data:
        r"""The collated storage of the whole dataset (all structures, whatever the index
        selection of this view); a dataset pulled from the Hub as several shards is
        concatenated in memory on the first call.

        PyG exposes this storage only through its deprecated :obj:`data` property, which
        warns on every read; this is the one place that reads it.
        """
        shards = self.__dict__.get('_shards')
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            data = self.data
        if data is None and shards is not None:
            from pyg_tensorpot.datasets.shards import concatenate
            data = Data.from_dict(concatenate(shards)[0])
            self.data = data
        return data

    def _view(self, values: Tensor) -> Tensor:
        """The rows of per-structure :obj:`values` that this view selects."""
        index = self.indices()
        if isinstance(index, range) and index == range(values.size(0)):
            return values
        return values[torch.as_tensor(list(index) if isinstance(index, range) else index)]

    # ------------------------------------------------------------------ Hugging Face Hub
    def _init_from_hub(self, transform: Optional[Callable], log: bool, repo_id: Optional[str],
                       revision: Optional[str]) -> None:
        from pyg_tensorpot.datasets import remote
        from pyg_tensorpot.datasets.shards import ShardError, global_slices
        generic = type(self) is AtomisticInMemoryDataset
        if repo_id is None:
            if generic:
                raise ValueError('AtomisticInMemoryDataset.from_hub needs repo_id')
            repo_id = f'{remote.DEFAULT_ORGANISATION}/{self.name}'
        self.__dict__['_shards'] = None
        self.hub_repo_id, self.hub_revision = repo_id, revision
        InMemoryDataset.__init__(self, None, transform, None, None, log)
        folder, card, shards, splits = remote.pull(repo_id, revision, self.verify_checksums)
        if not generic:
            options = _as_json(self.options())
            if card['dataset'] != type(self).__name__ or card['options'] != options:
                raise ShardError(
                    f"Hub dataset repository '{repo_id}' holds {card['dataset']} with options "
                    f"{card['options']}, not {type(self).__name__} with options {options}: pass "
                    f"the matching options, another revision, or load it with "
                    f"AtomisticInMemoryDataset.from_hub('{repo_id}')")
        else:
            self.name = str(card.get('name', self.name))
        self.hub_folder, self.hub_card = folder, card
        if splits is not None:
            self.split = splits
        if len(shards) == 1:
            self.data, self.slices = shards[0].data, shards[0].slices
        else:
            self.__dict__['_shards'] = shards
            self._shard_starts = [shard.start for shard in shards]
            self.slices = global_slices(shards)
            self.data = None

    @classmethod
    def from_hub(
        cls,
        repo_id: Optional[str] = None,
        revision: Optional[str] = None,
        cache_dir: Optional[str] = None,
        token: Optional[str] = None,
        local_files_only: bool = False,
        force_download: bool = False,
        **kwargs: Any,
    ) -> 'AtomisticInMemoryDataset':
        r"""Pulls the processed dataset from a Hugging Face Hub dataset repository
        (``repo_type="dataset"``) through :func:`huggingface_hub.snapshot_download`, which uses
        the Hub cache and honours ``HF_HUB_OFFLINE``. Every shard is checked against the byte
        size and SHA-256 in the repository's ``dataset_card.json`` before it is opened
        (memory-mapped, so a multi-GiB dataset is not read into memory); nothing is unpickled.

        On a public dataset class (``ANI1x.from_hub(...)``, the classes whose constructor
        takes :obj:`source`) the constructor options (:obj:`kwargs`) must be those the
        repository was built with. On this base class, or on a class built from the user's own
        files (:class:`~pyg_tensorpot.datasets.ExtXYZDataset`, whose raw file the puller does
        not have), any repository loads as an :class:`AtomisticInMemoryDataset` with its saved
        :obj:`split` and its reference energies (:meth:`atomref`).

        Args:
            repo_id (str, optional): ``"org/name"``. (default: :obj:`None`,
                ``"pyg-tensorpot/<name>"`` for a dataset class)
            revision (str, optional): Branch, tag or commit. (default: :obj:`None`, ``main``)
            cache_dir (str, optional): Hub cache folder. (default: :obj:`None`, the Hub's)
            token (str, optional): Hub token for private repositories. (default: :obj:`None`)
            local_files_only (bool, optional): Only use the Hub cache. (default: :obj:`False`)
            force_download (bool, optional): Download again even if cached.
                (default: :obj:`False`)
            **kwargs: Constructor arguments (options, :obj:`transform`, :obj:`log`,
                :obj:`verify_checksums`).

        Raises:
            pyg_tensorpot.datasets.remote.HubDatasetError: The repository or revision is not
                reachable or not cached.
            pyg_tensorpot.datasets.shards.ShardError: A file is missing, truncated or corrupt,
                or the card disagrees with the files or the requested options.
        """
        from pyg_tensorpot.datasets.remote import hub_options
        with hub_options(cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                         force_download=force_download):
            if 'source' not in inspect.signature(cls.__init__).parameters:
                cls = AtomisticInMemoryDataset
            if cls is AtomisticInMemoryDataset:
                self = cls.__new__(cls)
                self.verify_checksums = bool(kwargs.pop('verify_checksums', True))
                self.mmap, self.source = False, 'hub'
                unknown = set(kwargs) - {'transform', 'log'}
                if unknown:
                    raise TypeError(f'AtomisticInMemoryDataset.from_hub got unexpected '
                                    f'arguments {sorted(unknown)}')
                self._init_from_hub(kwargs.get('transform'), kwargs.get('log', True), repo_id,
                                    revision)
                return self
            return cls(None, source='hub', repo_id=repo_id, revision=revision, **kwargs)

    def save_to_folder(self, folder: str, **kwargs: Any) -> Dict[str, Any]:
        """Writes the Hub repository folder of this dataset (shards, card, splits, README);
        see :func:`pyg_tensorpot.datasets.remote.save_to_folder` for :obj:`kwargs`
        (:obj:`licence`, :obj:`citation`, :obj:`split`, :obj:`max_shard_bytes`). Returns the
        card."""
        from pyg_tensorpot.datasets.remote import save_to_folder
        return save_to_folder(self, folder, **kwargs)

    def push_to_hub(self, repo_id: str, token: Optional[str] = None, private: bool = False,
                    revision: Optional[str] = None, **kwargs: Any):
        """Uploads this dataset to the Hub dataset repository :obj:`repo_id` as safetensors
        shards with a card carrying its licence and citation; refuses a dataset whose licence
        forbids redistribution, and needs :obj:`licence` for the user's own data. See
        :func:`pyg_tensorpot.datasets.remote.push_to_hub` for :obj:`kwargs`. Returns the
        :class:`huggingface_hub.CommitInfo`."""
        from pyg_tensorpot.datasets.remote import push_to_hub
        return push_to_hub(self, repo_id, token=token, private=private, revision=revision,
                           **kwargs)

    def get(self, idx: int) -> Data:
        shards = self.__dict__.get('_shards')
        if shards is None:
            return super().get(idx)
        from torch_geometric.data.separate import separate
        shard = shards[bisect.bisect_right(self._shard_starts, idx) - 1]
        # no per-sample cache (InMemoryDataset keeps one): a streamed pass over millions of
        # structures must not accumulate them in memory
        return separate(cls=shard.data.__class__, batch=shard.data, idx=idx - shard.start,
                        slice_dict=shard.slices, decrement=False)

    # ------------------------------------------------------------------ file names
    def options(self) -> Dict[str, Any]:
        """Everything that changes the processed content (hashed into the file name)."""
        return {}

    @property
    def processed_file_names(self) -> List[str]:
        options = dict(self.options(), _format=PROCESSED_FORMAT_VERSION)
        return [f'{self.name}_{_options_tag(options)}.pt']

    @property
    def manifest_path(self) -> str:
        """The JSON manifest written next to the processed file."""
        return self.processed_paths[0] + '.json'

    # ------------------------------------------------------------------ download / process
    def _check_raw_files(self, in_memory: bool) -> None:
        """Downloads the raw files that are missing (into the root; without one, i.e.
        :obj:`in_memory`, a missing file is an error)."""
        missing = [p for p in self.raw_paths if not osp.exists(p)]
        if not missing:
            return
        if in_memory:
            raise RawFileError(f'{type(self).__name__}: the raw files {missing} are missing and '
                               f'there is no root folder to download them into; pass root=...')
        os.makedirs(self.raw_dir, exist_ok=True)
        try:
            self.download()
        except (OSError, ValueError) as error:  # URLError is an OSError
            raise RawFileError(
                f'could not download the raw files of {type(self).__name__} ({error}). '
                f'Without network access, download them elsewhere and place '
                f'{self._raw_names()} in {self.raw_dir}; they are used as they are after the '
                f'checksum check.') from error
        still = [p for p in self.raw_paths if not osp.exists(p)]
        if still:
            raise RawFileError(f'raw files missing after download: {still}')

    def download(self) -> None:
        raise RawFileError(f'{type(self).__name__} has no download; place the raw files '
                           f'{self.raw_file_names} in {self.raw_dir}')

    def verify_raw_files(self) -> None:
        """Checks every raw file with a published checksum; raises :class:`ChecksumError`
        naming the first file that does not match."""
        for name, path in zip(self._raw_names(), self.raw_paths):
            if name in self.checksums:
                algorithm, expected = self.checksums[name]
                if self.log:
                    logger.info('checking %s of %s', algorithm, path)
                verify_checksum(path, algorithm, expected, what=type(self).__name__)

    def _raw_names(self) -> List[str]:
        names = self.raw_file_names
        return [names] if isinstance(names, str) else list(names)

    def _build_processed_file(self) -> None:
        """Processes the raw files unless a valid processed file (manifest, size and SHA-256
        checked) is already there."""
        path = self.processed_paths[0]
        if not self.force_reload and self._processed_is_valid(path):
            self._check_transform_reprs()
            return
        if self.verify_checksums:
            self.verify_raw_files()
        if self.log:
            print(f'Processing {type(self).__name__} ...', file=sys.stderr)
        self.process()

    def process(self) -> None:
        """Processes the raw files into the processed file (and its manifest)."""
        storage, slices = self._processed_storage()
        self.save_storage(storage, slices, self.processed_paths[0])

    def _processed_storage(self) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        storage, slices = self.process_storage()
        if self.pre_filter is not None or self.pre_transform is not None:
            storage, slices = self._apply_pre_hooks(storage, slices)
        return storage, slices

    def process_storage(self) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        raise NotImplementedError

    def _apply_pre_hooks(self, storage, slices):
        tmp = InMemoryDataset.__new__(InMemoryDataset)
        InMemoryDataset.__init__(tmp, None, log=False)
        tmp.data, tmp.slices = Data.from_dict(storage), slices
        data_list = [tmp.get(i) for i in range(tmp.len())]
        if self.pre_filter is not None:
            data_list = [d for d in data_list if self.pre_filter(d)]
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        if not data_list:
            raise ValueError('pre_filter removed every structure')
        data, slices = InMemoryDataset.collate(data_list)
        if slices is None:  # a single structure: build trivial slices
            slices = {key: torch.tensor([0, value.size(data.__cat_dim__(key, value) or 0)])
                      for key, value in data.items() if isinstance(value, Tensor)}
        return data.to_dict(), slices

    def save_storage(self, storage: Dict[str, Tensor], slices: Dict[str, Tensor],
                     path: str) -> None:
        """Writes the collated storage atomically, then its manifest (also atomically)."""
        num = next(iter(slices.values())).numel() - 1 if slices else 1
        atomic_torch_save((storage, slices), path)
        manifest = {
            'format': PROCESSED_FORMAT_VERSION,
            'dataset': type(self).__name__,
            'options': self.options(),
            'num_structures': int(num),
            'size': osp.getsize(path),
            'sha256': file_hash(path),
            'pre_transform': _repr(self.pre_transform),
            'pre_filter': _repr(self.pre_filter),
        }
        atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str),
                          path + '.json')

    def _read_manifest(self, path: str) -> Optional[dict]:
        try:
            with open(path + '.json') as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _processed_is_valid(self, path: str) -> bool:
        if not osp.exists(path):
            return False
        manifest = self._read_manifest(path)
        reason = None
        if manifest is None:
            reason = 'it has no manifest (an interrupted run?)'
        elif manifest.get('format') != PROCESSED_FORMAT_VERSION:
            reason = 'it was written by another version of pyg_tensorpot'
        elif (manifest.get('dataset') != type(self).__name__ or
              manifest.get('options') != _as_json(self.options())):
            reason = (f"its manifest describes {manifest.get('dataset')} with options "
                      f"{manifest.get('options')}, not this dataset (a copied file?)")
        elif manifest.get('size') != osp.getsize(path):
            reason = 'its size differs from the manifest (truncated?)'
        elif manifest.get('sha256') != file_hash(path):
            reason = 'its SHA-256 differs from the manifest (corrupt?)'
        if reason is not None:
            warnings.warn(f"ignoring processed file '{path}': {reason}; processing again",
                          stacklevel=3)
            return False
        return True

    def _check_transform_reprs(self) -> None:
        manifest = self._read_manifest(self.processed_paths[0]) or {}
        for key in ('pre_transform', 'pre_filter'):
            if manifest.get(key, 'None') != _repr(getattr(self, key)):
                warnings.warn(f'The `{key}` argument differs from the one used in the '
                              f'processed version of this dataset; pass force_reload=True to '
                              f'process it again with the new one.', stacklevel=4)

    def load(self, path: str, data_cls=Data) -> None:
        """Loads a processed file written by :meth:`save_storage` (``weights_only=True``;
        memory-mapped when the dataset was created with ``mmap=True``)."""
        try:
            loaded = torch.load(path, weights_only=True, mmap=getattr(self, 'mmap', False))
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            raise ProcessedFileError(
                f"cannot read the processed file '{path}' ({type(error).__name__}: {error}) "
                f"although its manifest matched: it changed on disk while it was read. Run "
                f"again (it is checked and, if needed, processed again).") from error
        if not (isinstance(loaded, tuple) and len(loaded) == 2 and
                all(isinstance(part, dict) for part in loaded) and
                all(isinstance(v, Tensor) for part in loaded for v in part.values())):
            raise ProcessedFileError(f"the processed file '{path}' does not hold "
                                     f"(storage, slices) tensor dicts; delete it and run again")
        storage, slices = loaded
        self.data = data_cls.from_dict(storage)  # the setter also drops PyG's sample cache
        self.slices = slices

    # ------------------------------------------------------------------ helpers
    @property
    def num_atoms(self) -> Tensor:
        """Number of atoms of every structure (of this view, honouring index selection)."""
        ptr = self.slices['z']
        counts = ptr[1:] - ptr[:-1]
        return self._view(counts)

    def element_counts(self) -> Tuple[Tensor, List[int]]:
        """``([num_structures, num_elements] float64 counts, elements)``: how many atoms of each
        element present each structure has (vectorised; honours index selection)."""
        ptr = self.slices['z']
        n = ptr.numel() - 1
        z = self.storage().z.long()
        elements, column = torch.unique(z, return_inverse=True)
        owner = torch.repeat_interleave(torch.arange(n), ptr[1:] - ptr[:-1])
        counts = torch.zeros(n, elements.numel(), dtype=torch.float64)
        counts.index_put_((owner, column), torch.ones(z.numel(), dtype=torch.float64),
                          accumulate=True)
        return self._view(counts), elements.tolist()

    def energies(self, key: str = 'energy') -> Tensor:
        """All energies of this view as a float64 vector (honours index selection)."""
        store = self.storage()
        if key not in store:
            raise KeyError(f"{type(self).__name__} has no '{key}'; it has "
                           f"{sorted(store.keys())}")
        return self._view(store[key].reshape(-1).to(torch.float64))

    def atomref(self) -> Optional[Dict[int, float]]:
        """Published per-element reference energies ``{Z: eV}`` for this dataset's energies, or
        :obj:`None` when there are none (use :meth:`fit_atomref`); for a dataset pulled with
        ``AtomisticInMemoryDataset.from_hub``, the ones its Hub card records."""
        table = (getattr(self, 'hub_card', None) or {}).get('atomref')
        return None if table is None else {int(z): float(e) for z, e in table.items()}

    def fit_atomref(self, elements: Optional[Sequence[int]] = None,
                    energy_key: str = 'energy') -> Dict[int, float]:
        """Least-squares per-element energies ``{Z: eV}`` (see
        :func:`~pyg_tensorpot.datasets.fit_reference_energies`). Call it on the training split,
        e.g. ``dataset[split['idx_train']].fit_atomref()``."""
        from pyg_tensorpot.datasets.reference_energies import fit_reference_energies
        return fit_reference_energies(self, elements, energy_key)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({len(self)})'


def _as_json(obj: Any) -> Any:
    """:obj:`obj` as it reads back from the manifest (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _repr(obj: Any) -> str:
    if obj is None:
        return 'None'
    import re
    return re.sub('(<.*?)\\s.*(>)', r'\1\2', str(obj))
