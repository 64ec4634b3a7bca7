"""Train/validation/test splits of the literature, seeded and saved to disk.

Random splits follow torchmd-net's ``train_val_test_split``: fractions become sizes with
``round(len * fraction)``, the size left as :obj:`None` takes the rest, ``arange(len)`` is
permuted with ``numpy.random.default_rng(seed).permutation`` and cut into train | val | test in
that order. Splits are dictionaries ``{'idx_train', 'idx_val', 'idx_test'}`` of ``torch.long``
tensors, saved as ``splits.npz`` with the same keys (torchmd-net's ``--splits`` format).
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from pyg_tensorpot.datasets.base import RawFileError, logger
from pyg_tensorpot.utils.files import atomic_open

Split = Dict[str, Tensor]
Size = Optional[Union[int, float]]

SPLIT_KEYS = ('idx_train', 'idx_val', 'idx_test')


def split_sizes(num: int, train_size: Size, val_size: Size, test_size: Size) -> tuple:
    """Integer sizes of train/val/test for :obj:`num` samples (torchmd-net's rules: floats are
    fractions rounded with :func:`round`, at most one size is :obj:`None` and takes the
    rest)."""
    sizes = [train_size, val_size, test_size]
    if sum(s is None for s in sizes) > 1:
        raise ValueError('at most one of train_size, val_size, test_size may be None')
    is_float = [isinstance(s, float) for s in sizes]
    for s in sizes:
        if isinstance(s, float) and not 0.0 <= s <= 1.0:
            raise ValueError(f'a fractional split size must lie in [0, 1], got {s}')
        if s is not None and s < 0:
            raise ValueError(f'split sizes must be non-negative, got {s}')
    sizes = [round(num * s) if f else s for s, f in zip(sizes, is_float)]

    def trim_last_fraction(exclude: int = -1) -> None:
        # rounding two fractions up can overshoot by one sample: take it from the last one
        for i in (2, 1, 0):
            if is_float[i] and i != exclude and sizes[i] > 0:
                sizes[i] -= 1
                return

    rest = sizes.index(None) if None in sizes else None
    if rest is not None:
        others = sum(s for i, s in enumerate(sizes) if i != rest)
        if others == num + 1:
            trim_last_fraction(exclude=rest)
            others -= 1
        sizes[rest] = num - others
    elif sum(sizes) == num + 1:
        trim_last_fraction()
    if min(sizes) < 0 or sum(sizes) > num:
        raise ValueError(f'the dataset has {num} samples, too few for a '
                         f'{sizes[0]}/{sizes[1]}/{sizes[2]} train/val/test split')
    return tuple(int(s) for s in sizes)


def random_split(
    num: int,
    train_size: Size = 0.8,
    val_size: Size = 0.1,
    test_size: Size = None,
    seed: int = 1,
    path: Optional[str] = None,
    groups: Optional[Union[np.ndarray, Tensor]] = None,
) -> Split:
    r"""Random train/val/test split of :obj:`num` samples, identical to torchmd-net's
    ``train_val_test_split`` for the same sizes and seed.

    With :obj:`groups`, whole groups are split instead of samples (e.g. the conformations of
    one dissociation scan, whose energies are compared with each other): the units of
    :func:`group_units` are permuted and cut into train | val | test where their running count
    of samples reaches the sizes, so each part holds its size or up to one group more, and
    every group lies in one part.

    Args:
        num (int): Number of samples.
        train_size (int or float, optional): Training samples (a float is a fraction).
            (default: :obj:`0.8`)
        val_size (int or float, optional): Validation samples. (default: :obj:`0.1`)
        test_size (int or float, optional): Test samples; :obj:`None` takes the rest.
            (default: :obj:`None`)
        seed (int, optional): Seed of ``numpy.random.default_rng``. (default: :obj:`1`)
        path (str, optional): Where to save the split (``.npz``); see :func:`save_split`.
            (default: :obj:`None`)
        groups (array, optional): The group of every sample :obj:`[num]` (-1 for none).
            (default: :obj:`None`)
    """
    n_train, n_val, n_test = split_sizes(num, train_size, val_size, test_size)
    total = n_train + n_val + n_test
    if total < num:
        logger.warning('%d samples are in none of train/val/test', num - total)
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != num:
            raise ValueError(f'groups has {len(groups)} entries for {num} samples')
        units = group_units(groups)
        order = [units[k] for k in rng.permutation(len(units))]
        # cut after the first unit at which the running count reaches each size
        ends = np.cumsum([len(unit) for unit in order])
        cuts = [0] + [min(int(np.searchsorted(ends, size)) + 1, len(order)) if size else 0
                      for size in (n_train, n_train + n_val, total)]
        cuts = np.maximum.accumulate(cuts).tolist()
        parts = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        split = {key: torch.tensor([i for unit in part for i in unit], dtype=torch.long)
                 for key, part in zip(SPLIT_KEYS, parts)}
        return _maybe_save(split, path, num)
    perm = rng.permutation(np.arange(num, dtype=np.int64))
    split = {
        'idx_train': torch.from_numpy(perm[:n_train].copy()),
        'idx_val': torch.from_numpy(perm[n_train:n_train + n_val].copy()),
        'idx_test': torch.from_numpy(perm[n_train + n_val:total].copy()),
    }
    return _maybe_save(split, path, num)


def group_units(groups: Union[Sequence[int], np.ndarray, Tensor]) -> List[List[int]]:
    r"""The sample indices grouped into units: all samples of a group (id :math:`\geq 0`)
    form one unit, in order of first appearance, and every sample of group -1 is a unit of its
    own (after the groups)."""
    units: Dict[int, List[int]] = {}
    singles: List[List[int]] = []
    for i, g in enumerate(np.asarray(groups, dtype=np.int64).reshape(-1).tolist()):
        if g >= 0:
            units.setdefault(g, []).append(i)
        else:
            singles.append([i])
    return list(units.values()) + singles


def save_split(split: Split, path: str) -> None:
    """Saves a split as ``.npz`` with keys ``idx_train/idx_val/idx_test`` (atomically)."""
    with atomic_open(path) as f:
        np.savez(f, **{k: np.asarray(split[k], dtype=np.int64) for k in SPLIT_KEYS})


def load_split(path: str, num: Optional[int] = None) -> Split:
    """Loads a split saved by :func:`save_split` (or torchmd-net's ``splits.npz``), checking
    that the index sets are disjoint and, if :obj:`num` is given, within ``[0, num)``."""
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in SPLIT_KEYS if k not in f.files]
        if missing:
            raise ValueError(f"'{path}' is not a split file: it lacks {missing}")
        split = {k: torch.from_numpy(f[k].astype(np.int64)) for k in SPLIT_KEYS}
    check_split(split, num, source=path)
    return split


def check_split(split: Split, num: Optional[int] = None, source: str = 'split') -> None:
    """Raises if the index sets overlap, repeat an index or leave ``[0, num)``."""
    joined = torch.cat([split[k] for k in SPLIT_KEYS])
    if joined.numel() != torch.unique(joined).numel():
        raise ValueError(f'{source}: train/val/test indices overlap or repeat')
    if num is not None and joined.numel() and (int(joined.min()) < 0 or
                                               int(joined.max()) >= num):
        raise ValueError(f'{source}: indices outside [0, {num}) (a split for another dataset?)')


def _maybe_save(split: Split, path: Optional[str], num: int) -> Split:
    check_split(split, num)
    if path is None:
        return split
    if osp.exists(path):
        existing = load_split(path, num)
        if not all(torch.equal(existing[k], split[k]) for k in SPLIT_KEYS):
            raise ValueError(f"'{path}' holds a different split; delete it or choose another "
                             f"path (load it with load_split to reuse it)")
        return existing
    save_split(split, path)
    return split


def rmd17_split(
    dataset,
    index: int = 1,
    num_val: int = 50,
    seed: int = 1,
    path: Optional[str] = None,
    split_dir: Optional[str] = None,
) -> Split:
    r"""One of the five official rMD17 splits (Christensen and von Lilienfeld, 2020):
    ``rmd17/splits/index_train_0<index>.csv`` (1,000 training frames) and
    ``index_test_0<index>.csv`` (1,000 test frames). A validation set of :obj:`num_val` frames
    is drawn from the 1,000 training frames with ``default_rng(seed)`` (the official files
    define none); the remaining ones are the training set.

    Args:
        dataset (RMD17): The rMD17 dataset (its raw folder holds the split files).
        index (int, optional): Which official split, 1 to 5. (default: :obj:`1`)
        num_val (int, optional): Validation frames taken from the training file.
            (default: :obj:`50`)
        seed (int, optional): Seed of the validation draw. (default: :obj:`1`)
        path (str, optional): Where to save the split. (default: :obj:`None`)
        split_dir (str, optional): Folder with the csv files, if not the dataset's
            ``raw/rmd17/splits``. (default: :obj:`None`)
    """
    if index not in (1, 2, 3, 4, 5):
        raise ValueError(f'rMD17 has five official splits (1 to 5), got {index}')
    folder = split_dir if split_dir is not None else dataset.split_dir()
    parts = {}
    for part in ('train', 'test'):
        file = osp.join(folder, f'index_{part}_0{index}.csv')
        if not osp.exists(file):
            raise RawFileError(f"official rMD17 split file '{file}' not found (it is part of "
                               f"rmd17.tar.bz2)")
        try:
            values = np.loadtxt(file, dtype=np.float64, ndmin=1)
        except ValueError as error:
            raise RawFileError(f"'{file}' is not a list of frame indices: {error}") from None
        if not np.all(values == np.round(values)):
            raise RawFileError(f"'{file}' holds non-integer frame indices")
        parts[part] = values.astype(np.int64)
    train = parts['train']
    if not 0 <= num_val < train.size:
        raise ValueError(f'num_val must be in [0, {train.size}), got {num_val}')
    perm = np.random.default_rng(seed).permutation(train.size)
    split = {
        'idx_train': torch.from_numpy(np.sort(train[perm[num_val:]])),
        'idx_val': torch.from_numpy(np.sort(train[perm[:num_val]])),
        'idx_test': torch.from_numpy(parts['test']),
    }
    return _maybe_save(split, path, _full_length(dataset))


def _full_length(dataset) -> int:
    slices = getattr(dataset, 'slices', None)
    if slices:
        return next(iter(slices.values())).numel() - 1
    return len(dataset)


#: Standard random protocols: ``name: (train, val, test, seed)``.
PROTOCOLS = {
    'rmd17': (950, 50, None, 12345),       # TensorNet / torchmd-net rMD17 configs
    'qm9': (110_000, 10_000, None, 1),     # TensorNet QM9 config (U0)
    'ani1x': (0.8, 0.1, None, 1),          # TensorNet ANI-1x config (over conformations)
    'spice': (0.8, 0.1, None, 1),          # TensorNet SPICE config
    'comp6': (0, 0, None, 1),              # external test set only
}
#: Protocols whose split is fixed by the dataset itself (``dataset.fixed_split()``), no seed.
FIXED_PROTOCOLS = ('organic-dft',)


def _protocol_for(dataset) -> str:
    from pyg_tensorpot.datasets import md17
    name = type(dataset).__name__.lower()
    if isinstance(dataset, (md17.RMD17, md17.MD17, md17.MD17EthanolSample)):
        return 'rmd17'
    if name == 'organicdft':
        return 'organic-dft'
    for key in ('qm9', 'ani1x', 'spice', 'comp6'):
        if key in name:
            return key
    raise ValueError(f'no standard split is defined for {type(dataset).__name__}; use '
                     f'random_split(len(dataset), ...)')


def standard_split(
    dataset,
    protocol: Optional[str] = None,
    seed: Optional[int] = None,
    path: Optional[str] = None,
) -> Split:
    r"""The standard split of the literature for :obj:`dataset`:

    * rMD17 / MD17 (and :class:`MD17EthanolSample`): 950 train / 50 val / rest test, seed
      12345 (TensorNet, torchmd-net); for the five official 1,000-frame rMD17 splits use
      :func:`rmd17_split`;
    * QM9: 110,000 / 10,000 / rest, seed 1;
    * ANI-1x and SPICE: 80 % / 10 % / rest over conformations, seed 1 (COMP6 is ANI-1x's
      external test set);
    * COMP6: everything is test;
    * OrganicDFT: its fixed split by molecule (``dataset.fixed_split()``, no seed: the same
      molecules are test in every run and every release).

    Args:
        dataset: The dataset (its length and type choose the protocol).
        protocol (str, optional): Override: ``'rmd17'``, ``'qm9'``, ``'ani1x'``, ``'spice'``
            or ``'comp6'``. (default: :obj:`None`)
        seed (int, optional): Override of the protocol's seed. (default: :obj:`None`)
        path (str, optional): Save the split there (``splits.npz``); if the file exists it
            must hold the same split. (default: :obj:`None`)
    """
    protocol = protocol or _protocol_for(dataset)
    if protocol in FIXED_PROTOCOLS:
        if not hasattr(dataset, 'fixed_split'):
            raise ValueError(f"the '{protocol}' split is fixed by its dataset, and "
                             f"{type(dataset).__name__} has none")
        return _maybe_save(dataset.fixed_split(), path, len(dataset))
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown split protocol '{protocol}'; choose one of "
                         f"{sorted([*PROTOCOLS, *FIXED_PROTOCOLS])}")
    train, val, test, default_seed = PROTOCOLS[protocol]
    return random_split(len(dataset), train, val, test,
                        default_seed if seed is None else seed, path)


def split_datasets(dataset, split: Split) -> Sequence:
    """``(train, val, test)`` subsets of :obj:`dataset` for a split."""
    return tuple(dataset[split[k]] for k in SPLIT_KEYS)
