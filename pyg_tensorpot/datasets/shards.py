r"""The shard format of datasets on the Hugging Face Hub: safetensors files, no pickle.

A dataset's collated storage (``{key: tensor}``, concatenated over structures) and its
``slices`` (``{key: [num_structures + 1] long}`` offsets) are cut by structure ranges into
shards of bounded size, ``data-00000-of-00003.safetensors`` ..., each holding for structures
``s0 <= i < s1``

* ``data.<key>``: the rows of ``<key>`` those structures own (narrowed along the key's
  concatenation dimension), and
* ``slices.<key>``: the shard-local offsets ``slices[key][s0:s1 + 1] - slices[key][s0]``
  (keys whose offsets are the same tensor, e.g. every per-atom field, share one entry, named
  in the file's metadata),

so that every shard is a small dataset by itself. Shards are read with
:func:`safetensors.safe_open`, which memory-maps the file: opening a multi-GiB dataset touches
only the header and the offsets, the samples are paged in when they are used. Every shard is
checked against the byte size and the SHA-256 the dataset card records before it is opened
(a truncated file could otherwise end the process with ``SIGBUS`` when a page past its end is
touched).
"""
import json
import os
import os.path as osp
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from pyg_tensorpot.datasets.base import file_hash
from pyg_tensorpot.utils.files import atomic_open

#: Version of the shard layout (bumped on incompatible changes).
SHARD_FORMAT_VERSION = 1

#: The machine-readable card of a Hub dataset repository.
CARD_NAME = 'dataset_card.json'
#: The saved splits (``idx_train``, ``idx_val``, ``idx_test``, ...) as safetensors.
SPLITS_NAME = 'splits.safetensors'
#: Value of the card's ``format`` field.
CARD_FORMAT = 'pyg-tensorpot-dataset-shards'
#: Default upper bound of the size of one shard.
DEFAULT_MAX_SHARD_BYTES = 512 * 2**20

class ShardError(RuntimeError):
    """A shard or the dataset card describing it is missing, truncated, corrupt or
    inconsistent."""


def shard_name(index: int, count: int) -> str:
    """``data-00000-of-00003.safetensors`` style name of shard :obj:`index` of :obj:`count`."""
    return f'data-{index:05d}-of-{count:05d}.safetensors'


def _cat_dims(storage: Dict[str, Tensor]) -> Dict[str, int]:
    data = Data.from_dict(dict(storage))
    dims = {}
    for key, value in storage.items():
        dim = data.__cat_dim__(key, value)
        dims[key] = 0 if dim is None else int(dim) % max(value.dim(), 1)
    return dims


def _structure_bytes(storage: Dict[str, Tensor], slices: Dict[str, Tensor],
                     dims: Dict[str, int]) -> Tensor:
    """Bytes each structure occupies in the storage (float64 vector ``[num_structures]``)."""
    total = None
    for key, value in storage.items():
        ptr = slices[key].to(torch.float64)
        rows = max(value.size(dims[key]), 1)
        per_row = value.numel() * value.element_size() / rows
        cost = (ptr[1:] - ptr[:-1]) * per_row + 8.0  # + its offset entry
        total = cost if total is None else total + cost
    return total


def plan_shards(storage: Dict[str, Tensor], slices: Dict[str, Tensor],
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> List[Tuple[int, int]]:
    """Structure ranges ``[(s0, s1), ...]`` whose shards hold at most :obj:`max_shard_bytes`
    each (a single structure larger than that gets a shard of its own)."""
    num = next(iter(slices.values())).numel() - 1
    if num <= 0:
        raise ShardError('the dataset has no structures: nothing to shard')
    cost = torch.cumsum(_structure_bytes(storage, slices, _cat_dims(storage)), 0)
    ranges, start, base = [], 0, 0.0
    while start < num:
        # the last structure that still fits below base + max_shard_bytes
        end = int(torch.searchsorted(cost, torch.tensor([base + max_shard_bytes],
                                                         dtype=torch.float64), right=True))
        end = min(max(end, start + 1), num)
        ranges.append((start, end))
        base = float(cost[end - 1])
        start = end
    return ranges


def write_shards(storage: Dict[str, Tensor], slices: Dict[str, Tensor], folder: str,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> List[Dict[str, Any]]:
    r"""Writes the collated :obj:`storage` and :obj:`slices` as safetensors shards into
    :obj:`folder` (each file atomically).

    Args:
        storage (dict): ``{key: tensor}`` collated storage.
        slices (dict): ``{key: [num_structures + 1] long}`` offsets.
        folder (str): Destination folder.
        max_shard_bytes (int, optional): Upper bound of a shard's size.
            (default: :obj:`DEFAULT_MAX_SHARD_BYTES`, 512 MiB)

    Returns:
        list: One entry per shard: ``{'file', 'structures': [s0, s1], 'size', 'sha256'}``.
    """
    from safetensors.torch import save
    if set(storage) != set(slices):
        raise ShardError(f'storage keys {sorted(storage)} and slices keys {sorted(slices)} '
                         f'differ')
    dims = _cat_dims(storage)
    # keys that share one offsets tensor (collate_storage gives every per-atom field the same)
    owner: Dict[str, str] = {}
    for key in sorted(slices):
        for other in sorted(set(owner.values())):
            if slices[other] is slices[key] or torch.equal(slices[other], slices[key]):
                owner[key] = other
                break
        else:
            owner[key] = key
    ranges = plan_shards(storage, slices, max_shard_bytes)
    os.makedirs(folder, exist_ok=True)
    entries = []
    for index, (s0, s1) in enumerate(ranges):
        tensors: Dict[str, Tensor] = {}
        for key, value in storage.items():
            a, b = int(slices[key][s0]), int(slices[key][s1])
            tensors[f'data.{key}'] = value.narrow(dims[key], a, b - a).contiguous()
        for key in sorted(set(owner.values())):
            ptr = slices[key][s0:s1 + 1]
            tensors[f'slices.{key}'] = (ptr - ptr[0]).to(torch.long).contiguous()
        # one metadata entry: safetensors orders several entries differently on every save,
        # and identical datasets must give identical (re-uploadable, deduplicated) files
        metadata = {'pyg_tensorpot': json.dumps(
            {'format': SHARD_FORMAT_VERSION, 'structures': [s0, s1], 'slices_of': owner,
             'cat_dims': dims}, sort_keys=True)}
        name = shard_name(index, len(ranges))
        path = osp.join(folder, name)
        with atomic_open(path) as f:
            f.write(save(tensors, metadata=metadata))
        entries.append({'file': name, 'structures': [s0, s1], 'size': osp.getsize(path),
                        'sha256': file_hash(path)})
    return entries


def verify_file(path: str, size: int, sha256: Optional[str], what: str) -> None:
    """Raises :class:`ShardError` naming :obj:`path` when it is missing or its byte size or
    SHA-256 differs from the card's (:obj:`sha256` :obj:`None` checks the size only)."""
    if not osp.isfile(path):
        raise ShardError(f"{what} '{path}' is missing (an incomplete download?)")
    actual = osp.getsize(path)
    if actual != size:
        raise ShardError(f"{what} '{path}' has {actual} bytes but the dataset card says {size}: "
                         f"the file is truncated or not the one the card describes; delete it "
                         f"from the Hub cache and download it again. It was not loaded.")
    if sha256 is not None:
        digest = file_hash(path)
        if digest != sha256:
            raise ShardError(f"{what} '{path}' has SHA-256 {digest} but the dataset card says "
                             f"{sha256}: the file is corrupt or the card belongs to another "
                             f"upload; delete it from the Hub cache and download it again. It "
                             f"was not loaded.")


class Shard:
    """One opened (memory-mapped) shard: its storage and shard-local slices."""
    def __init__(self, start: int, stop: int, storage: Dict[str, Tensor],
                 slices: Dict[str, Tensor]) -> None:
        self.start, self.stop = start, stop
        self.data = Data.from_dict(storage)
        self.slices = slices


def open_shard(path: str, entry: Dict[str, Any], keys: Sequence[str]) -> Shard:
    """Opens a verified shard (memory-mapped) and checks that its contents agree with the
    card entry :obj:`entry` and the card's :obj:`keys`; raises :class:`ShardError`."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework='pt') as f:
            metadata = json.loads((f.metadata() or {}).get('pyg_tensorpot', '{}'))
            names = set(f.keys())
            owner = dict(metadata.get('slices_of', {}))
            structures = metadata.get('structures')
            storage = {key: f.get_tensor(f'data.{key}') for key in keys}
            shared = {name: f.get_tensor(f'slices.{name}') for name in set(owner.values())}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ShardError(f"cannot read shard '{path}' ({type(error).__name__}: {error}): not a "
                         f"dataset shard of this format") from None
    s0, s1 = entry['structures']
    if structures != [s0, s1] or sorted(owner) != sorted(keys) or \
            len(names) != len(keys) + len(shared):
        raise ShardError(f"shard '{path}' holds structures {structures} and keys "
                         f"{sorted(owner)}, but the dataset card describes structures "
                         f"{[s0, s1]} and keys {sorted(keys)}")
    slices = {key: shared[owner[key]] for key in keys}
    for key in keys:
        ptr = slices[key]
        if ptr.dtype != torch.long or ptr.numel() != s1 - s0 + 1 or int(ptr[0]) != 0 or \
                (ptr.numel() > 1 and bool((ptr[1:] < ptr[:-1]).any())):
            raise ShardError(f"shard '{path}': the offsets of '{key}' are not "
                             f"{s1 - s0 + 1} increasing integers from 0")
    return Shard(s0, s1, storage, slices)


def check_shard_keys(shard: Shard, keys: Dict[str, Dict[str, Any]], path: str) -> None:
    """Raises :class:`ShardError` when a tensor of :obj:`shard` has another dtype or trailing
    shape than the card's :obj:`keys` ``{key: {'dtype', 'shape', 'cat_dim'}}`` record, or
    fewer rows than its offsets address."""
    for key, spec in keys.items():
        value = shard.data[key]
        shape, expected = list(value.shape), list(spec['shape'])
        dim = int(spec['cat_dim'])
        fits = len(shape) == len(expected) and (not shape or 0 <= dim < len(shape))
        rows = shape[dim] if fits and shape else 1
        if fits and shape:
            shape[dim] = expected[dim] = -1
        if str(value.dtype).split('.')[-1] != spec['dtype'] or not fits or shape != expected:
            raise ShardError(f"shard '{path}': '{key}' is {value.dtype} {tuple(value.shape)}, but "
                             f"the dataset card says {spec['dtype']} {tuple(spec['shape'])}")
        if int(shard.slices[key][-1]) != rows:
            raise ShardError(f"shard '{path}': the offsets of '{key}' address "
                             f"{int(shard.slices[key][-1])} rows, the tensor has {rows}")


def key_specs(storage: Dict[str, Tensor]) -> Dict[str, Dict[str, Any]]:
    """``{key: {'dtype', 'shape', 'cat_dim'}}`` of a storage (shape with the concatenation
    dimension set to -1), as recorded in the dataset card."""
    dims = _cat_dims(storage)
    specs = {}
    for key, value in storage.items():
        shape = list(value.shape)
        if shape:
            shape[dims[key]] = -1
        specs[key] = {'dtype': str(value.dtype).split('.')[-1], 'shape': shape,
                      'cat_dim': dims[key]}
    return specs


def concatenate(shards: Sequence[Shard]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
    """The collated storage and global slices of :obj:`shards` (copies into memory)."""
    keys = list(shards[0].data.keys())
    dims = {key: int(shards[0].data.__cat_dim__(key, shards[0].data[key]) or 0) for key in keys}
    storage = {key: torch.cat([s.data[key] for s in shards], dim=dims[key]) for key in keys}
    return storage, global_slices(shards)


def global_slices(shards: Sequence[Shard]) -> Dict[str, Tensor]:
    """The dataset-wide offsets of every key (keys that share shard offsets share the result,
    so a dataset with many per-atom fields costs one offsets vector for all of them)."""
    out: Dict[str, Tensor] = {}
    done: Dict[int, Tensor] = {}
    for key in shards[0].slices:
        ident = id(shards[0].slices[key])
        if ident not in done:
            ptr = torch.empty(shards[-1].stop + 1, dtype=torch.long)
            ptr[0], offset = 0, 0
            for shard in shards:  # written in place: no temporary copy of millions of offsets
                local = shard.slices[key]
                torch.add(local[1:], offset, out=ptr[shard.start + 1:shard.stop + 1])
                offset += int(local[-1])
            done[ident] = ptr
        out[key] = done[ident]
    return out


def read_card(folder: str) -> Dict[str, Any]:
    """Reads and checks the ``dataset_card.json`` of a pulled folder; raises
    :class:`ShardError` naming the file and the field."""
    path = osp.join(folder, CARD_NAME)
    if not osp.isfile(path):
        raise ShardError(f"'{path}' is missing: not a pyg-tensorpot dataset repository")
    try:
        with open(path, encoding='utf-8') as f:
            card = json.load(f)
    except (OSError, ValueError) as error:
        raise ShardError(f"cannot read the dataset card '{path}' ({error})") from None

    def fail(message: str):
        raise ShardError(f"dataset card '{path}': {message}")

    if not isinstance(card, dict) or card.get('format') != CARD_FORMAT:
        fail(f"its format is not '{CARD_FORMAT}'")
    if card.get('format_version') != SHARD_FORMAT_VERSION:
        fail(f"format version {card.get('format_version')!r}; this pyg-tensorpot reads "
             f"{SHARD_FORMAT_VERSION} (upgrade pyg-tensorpot)")
    num = card.get('num_structures')
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        fail(f'num_structures must be a positive integer, got {num!r}')
    keys = card.get('keys')
    if not isinstance(keys, dict) or not keys:
        fail('it lists no keys')
    for key, spec in keys.items():
        if not (isinstance(spec, dict) and isinstance(spec.get('dtype'), str) and
                isinstance(spec.get('shape'), list) and isinstance(spec.get('cat_dim'), int)
                and all(isinstance(v, int) for v in spec['shape'])):
            fail(f"key '{key}' needs dtype, shape and cat_dim")
    shards = card.get('shards')
    if not isinstance(shards, list) or not shards:
        fail('it lists no shards')
    expected_start = 0
    for entry in shards:
        if not (isinstance(entry, dict) and isinstance(entry.get('file'), str) and
                re.fullmatch(r'data-\d{5}-of-\d{5}\.safetensors', entry['file']) and
                isinstance(entry.get('size'), int) and isinstance(entry.get('sha256'), str) and
                isinstance(entry.get('structures'), list) and len(entry['structures']) == 2 and
                all(isinstance(v, int) for v in entry['structures'])):
            fail(f'bad shard entry {entry!r}')
        s0, s1 = entry['structures']
        if s0 != expected_start or s1 <= s0:
            fail(f"shard '{entry['file']}' covers structures [{s0}, {s1}), expected to start at "
                 f"{expected_start}")
        expected_start = s1
    if expected_start != num:
        fail(f'the shards cover {expected_start} structures, the card says {num}')
    splits = card.get('splits')
    if splits is not None and not (isinstance(splits, dict) and
                                   splits.get('file') == SPLITS_NAME and
                                   isinstance(splits.get('size'), int) and
                                   isinstance(splits.get('sha256'), str)):
        fail(f'bad splits entry {splits!r}')
    if not isinstance(card.get('dataset'), str) or not isinstance(card.get('options'), dict):
        fail('dataset (class name) and options are required')
    return card


def load_shards(folder: str, card: Dict[str, Any], verify_checksums: bool = True
                ) -> List[Shard]:
    """Verifies (byte size always, SHA-256 unless :obj:`verify_checksums` is :obj:`False`)
    and opens every shard of :obj:`card` in :obj:`folder`, memory-mapped."""
    shards = []
    keys = list(card['keys'])
    for entry in card['shards']:
        path = osp.join(folder, entry['file'])
        verify_file(path, entry['size'], entry['sha256'] if verify_checksums else None, 'shard')
        shard = open_shard(path, entry, keys)
        check_shard_keys(shard, card['keys'], path)
        shards.append(shard)
    return shards


def load_splits(folder: str, card: Dict[str, Any], num: int,
                verify_checksums: bool = True) -> Optional[Dict[str, Tensor]]:
    """The saved splits of a pulled folder (:obj:`None` when it has none), checked."""
    entry = card.get('splits')
    if entry is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = osp.join(folder, entry['file'])
    verify_file(path, entry['size'], entry['sha256'] if verify_checksums else None,
                'splits file')
    try:
        splits = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise ShardError(f"cannot read the splits file '{path}' ({error})") from None
    for name, index in splits.items():
        if index.dtype != torch.long or index.dim() != 1 or (
                index.numel() and (int(index.min()) < 0 or int(index.max()) >= num)):
            raise ShardError(f"splits file '{path}': '{name}' is not a list of structure "
                             f"indices below {num}")
    return {name: splits[name].clone() for name in sorted(splits)}


def check_split_indices(split: Optional[Dict[str, Any]], num: int
                        ) -> Optional[Dict[str, Tensor]]:
    """``{name: long index tensor}`` of a split to save (:obj:`None` for none); raises
    :class:`ValueError` for anything that is not 1-D integer indices below :obj:`num`."""
    if split is None:
        return None
    if not isinstance(split, dict) or not split:
        raise ValueError(f'split must be a dict {{name: index tensor}}, got {type(split).__name__}')
    out = {}
    for name, index in split.items():
        index = torch.as_tensor(index)
        if index.dtype not in (torch.long, torch.int32) or index.dim() != 1:
            raise ValueError(f"split '{name}' must be a 1-D integer index tensor, got "
                             f"{index.dtype} {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num):
            raise ValueError(f"split '{name}' indexes outside the {num} structures")
        out[str(name)] = index.to(torch.long).contiguous()
    return out
