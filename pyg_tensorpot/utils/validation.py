"""Input checks shared by every model: they fail loudly, with messages a chemist understands.

Cost: in eager mode the checks of the values (finite positions, known elements, batch
indices) are reduced on the tensors' device to one flag, so a model on an accelerator waits
for one host sync per call, not one per check; the detailed message is only assembled when a
check fails. Under :func:`torch.compile` (:func:`torch.compiler.is_compiling`) the shape and
dtype checks run while tracing (free at run time) and the value checks become
:func:`torch._assert_async` nodes of the compiled graph (no graph break, no host sync): they
raise a :class:`RuntimeError` naming the problem on the CPU, and a device-side assertion on
CUDA.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from pyg_tensorpot.utils.elements import symbol

#: The integer types that torch accepts as indices (embeddings, scatter, index_select).
INDEX_DTYPES = (torch.int64, torch.int32)

#: Without an explicit num_graphs, a batch may imply at most this many structures beyond its
#: number of atoms (gaps, i.e. empty structures); a larger index is taken for a mistake.
MAX_IMPLIED_EMPTY_STRUCTURES = 100_000

#: Two atoms closer than this (Angstrom) are almost certainly a bug in the input geometry.
MIN_INTERATOMIC_DISTANCE = 0.1


def _element_name(number: int) -> str:
    # 'O (Z=8)' for an element, 'Z=119' for a number that is no element.
    name = symbol(number)
    return name if name.startswith('Z=') else f'{name} (Z={number})'


def check_atoms(
    z: Tensor,
    pos: Tensor,
    batch: Optional[Tensor] = None,
    max_z: Optional[int] = None,
    supported_elements: Optional[Sequence[int]] = None,
) -> None:
    r"""Validates atomic numbers, positions and the batch vector of a (batch of) structure(s).

    Args:
        z (torch.Tensor): Atomic numbers, shape :obj:`[num_atoms]`, integer dtype.
        pos (torch.Tensor): Cartesian positions in Angstrom, shape :obj:`[num_atoms, 3]`.
        batch (torch.Tensor, optional): Molecule index of every atom, shape :obj:`[num_atoms]`.
            (default: :obj:`None`)
        max_z (int, optional): Atomic numbers must be smaller than this. (default: :obj:`None`)
        supported_elements (Sequence[int], optional): If given, every atomic number must be one
            of these. (default: :obj:`None`)
    """
    if not isinstance(z, Tensor) or not isinstance(pos, Tensor):
        raise TypeError('z and pos must be torch tensors')
    if z.dim() != 1:
        raise ValueError(f'z (atomic numbers) must have shape [num_atoms], got {list(z.shape)}')
    # Only int64/int32 can index embeddings and scatter; int8 would also wrap max_z=128 to
    # -128 and refuse every element with a misleading message.
    if z.dtype not in INDEX_DTYPES:
        raise TypeError(f'z (atomic numbers) must be an integer tensor (torch.long), got '
                        f'{z.dtype}; convert it with z.long()')
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError(f'pos must have shape [num_atoms, 3] (Angstrom), got {list(pos.shape)}')
    if pos.size(0) != z.size(0):
        raise ValueError(f'z has {z.size(0)} atoms but pos has {pos.size(0)} rows')
    if not pos.dtype.is_floating_point:
        raise TypeError(f'pos must be a floating-point tensor, got {pos.dtype}')
    if z.numel() == 0:
        raise ValueError('the structure has no atoms')
    if batch is not None:
        if not isinstance(batch, Tensor):
            raise TypeError('batch must be a torch tensor with the structure index of every '
                            'atom')
        if batch.dim() != 1 or batch.size(0) != z.size(0):
            raise ValueError(f'batch must have shape [num_atoms]={[z.size(0)]}, '
                             f'got {list(batch.shape)}')
        if batch.dtype not in INDEX_DTYPES:
            raise TypeError(f'batch must be an integer tensor (torch.long), got {batch.dtype}; '
                            'convert it with batch.long()')
    bad = ~torch.isfinite(pos).all(dim=-1)
    unknown = z <= 0
    if max_z is not None:
        unknown = unknown | (z >= max_z)
    if supported_elements is not None:
        allowed = torch.as_tensor(list(supported_elements), dtype=z.dtype, device=z.device)
        unknown = unknown | ~torch.isin(z, allowed)
    negative = (batch < 0) if batch is not None else torch.zeros_like(unknown)
    if torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), 'positions contain NaN or infinite values')
        torch._assert_async(~unknown.any(), 'unknown element: an atomic number is not '
                            'positive or not known to this model')
        torch._assert_async(~negative.any(), 'batch indices must be non-negative')
        return
    # One host sync for all value checks; the messages are built only on failure.
    if not bool(bad.any() | unknown.any() | negative.any()):
        return
    if bool(bad.any()):
        idx = bad.nonzero().flatten()[:10].tolist()
        raise ValueError(f'positions contain NaN or infinite values (atoms {idx})')
    if bool((z <= 0).any()):
        idx = (z <= 0).nonzero().flatten()[:10].tolist()
        raise ValueError(f'atomic numbers must be positive; atoms {idx} have '
                         f'{z[idx].tolist()}')
    # Every unknown element is named at once, whichever limit it breaks.
    if bool(unknown.any()):
        names = ', '.join(_element_name(v) for v in sorted(set(z[unknown].tolist())))
        if supported_elements is not None:
            known = ', '.join(symbol(int(v)) for v in sorted(supported_elements))
            raise ValueError(f'unknown element {names}: this model only knows {known}')
        raise ValueError(f'unknown element {names}: this model supports atomic numbers '
                         f'below max_z={max_z}')
    raise ValueError('batch indices must be non-negative')


def structure_arrays(z, pos, allow_empty: bool = False):
    r"""One structure's atomic numbers and positions as NumPy arrays, checked: :obj:`z` a 1-D
    integer array (non-empty unless :obj:`allow_empty`), :obj:`pos` finite with shape
    :obj:`[len(z), 3]` (Angstrom).

    Returns:
        (z, pos): :obj:`int64` :obj:`[N]` and :obj:`float64` :obj:`[N, 3]`.
    """
    z = np.asarray(z)
    pos = np.asarray(pos, dtype=np.float64)
    if z.ndim != 1 or (z.size == 0 and not allow_empty) or not np.issubdtype(z.dtype,
                                                                             np.integer):
        raise ValueError(f'z must be a {"" if allow_empty else "non-empty "}1-D array of atomic '
                         f'numbers, got shape {list(z.shape)} and dtype {z.dtype}')
    if pos.shape != (z.size, 3):
        raise ValueError(f'pos must have shape [{z.size}, 3] (Angstrom) for {z.size} atoms, '
                         f'got {list(pos.shape)}')
    if not np.isfinite(pos).all():
        raise ValueError('pos has NaN or infinite coordinates')
    return z.astype(np.int64), pos


def check_min_distance(edge_index: Tensor, edge_weight: Tensor,
                       min_distance: float = MIN_INTERATOMIC_DISTANCE) -> None:
    r"""Raises if two distinct atoms of the graph are closer than :obj:`min_distance` Angstrom.

    Self-loops (an atom paired with itself) are ignored.
    """
    not_self = edge_index[0] != edge_index[1]
    too_close = not_self & (edge_weight < min_distance)
    if torch.compiler.is_compiling():
        torch._assert_async(~too_close.any(), 'coincident or overlapping atoms: two atoms are '
                            'closer than the minimum distance; check the geometry and its units')
        return
    if bool(too_close.any()):
        k = int(too_close.nonzero()[0, 0])
        i, j = int(edge_index[1, k]), int(edge_index[0, k])
        d = float(edge_weight[k])
        raise ValueError(f'atoms {i} and {j} are {d:.4f} A apart (less than {min_distance} A): '
                         'coincident or overlapping atoms; check the geometry and its units')


def check_total_charge(total_charge: Optional[Tensor], num_graphs: int) -> None:
    r"""Raises unless :obj:`total_charge` is :obj:`None` or one finite charge (in e) per
    structure, shape :obj:`[num_graphs]`."""
    if total_charge is None:
        return
    if not isinstance(total_charge, Tensor):
        raise TypeError('total_charge must be a tensor with one charge (e) per structure')
    if total_charge.dim() != 1 or total_charge.size(0) != num_graphs:
        raise ValueError(f'total_charge must have shape [num_structures]={[num_graphs]}, got '
                         f'{list(total_charge.shape)}')
    if total_charge.dtype.is_floating_point and torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(total_charge).all(),
                            'total_charge contains NaN or infinite values')
    elif total_charge.dtype.is_floating_point and not bool(torch.isfinite(total_charge).all()):
        raise ValueError('total_charge contains NaN or infinite values')


def check_num_graphs(batch: Optional[Tensor], num_atoms: int,
                     num_graphs: Optional[int] = None) -> int:
    r"""The number of structures of a batch: :obj:`num_graphs` checked against :obj:`batch`,
    or :obj:`batch.max() + 1`.

    Structures without atoms (gaps in :obj:`batch`, such as :obj:`[0, 0, 2, 2]`) are allowed
    and get zero energy; a batch implying more than :obj:`MAX_IMPLIED_EMPTY_STRUCTURES`
    structures beyond its number of atoms must state :obj:`num_graphs`, since a stray index
    such as :obj:`10**12` would otherwise allocate per-structure outputs of that size.

    Args:
        batch (torch.Tensor, optional): Structure of every atom (validated by
            :func:`check_atoms`); :obj:`None` for one structure.
        num_atoms (int): Number of atoms.
        num_graphs (int, optional): Number of structures, if the caller knows it.
            (default: :obj:`None`)
    """
    if num_graphs is not None and (isinstance(num_graphs, bool)
                                   or not isinstance(num_graphs, int)):
        if isinstance(num_graphs, Tensor) and num_graphs.numel() == 1 and \
                not num_graphs.dtype.is_floating_point and num_graphs.dtype != torch.bool:
            num_graphs = int(num_graphs)
        else:
            raise TypeError(f'num_graphs must be a positive int, got {num_graphs!r}')
    if num_graphs is not None and batch is not None and (
            batch.device.type != 'cpu' or torch.compiler.is_compiling()):
        # A caller passes num_graphs to save the device sync of batch.max(); on an
        # accelerator and under torch.compile it is trusted (an index beyond it fails in
        # the scatter).
        if num_graphs < 1:
            raise ValueError(f'num_graphs must be at least 1, got {num_graphs}')
        return num_graphs
    if batch is not None and num_graphs is None and torch.compiler.is_compiling():
        raise ValueError('under torch.compile a batch of structures needs num_graphs= (the '
                         'number of structures): reading it from batch.max() would stop the '
                         'compiled graph')
    top = int(batch.max()) + 1 if batch is not None and batch.numel() > 0 else 1
    if num_graphs is None:
        if top - num_atoms > MAX_IMPLIED_EMPTY_STRUCTURES:
            raise ValueError(f'batch index {top - 1} implies {top} structures for '
                             f'{num_atoms} atoms; pass num_graphs= if the batch really has '
                             'that many (empty) structures')
        return top
    if num_graphs < 1:
        raise ValueError(f'num_graphs must be at least 1, got {num_graphs}')
    if top > num_graphs:
        raise ValueError(f'batch refers to structure {top - 1} but num_graphs={num_graphs}')
    return num_graphs


def script_check_atoms(z: Tensor, pos: Tensor, batch: Optional[Tensor], max_z: int,
                       supported_elements: Optional[List[int]] = None) -> None:
    r""":func:`check_atoms` for TorchScript: the same checks, with plainer messages."""
    if z.dim() != 1:
        raise ValueError('z (atomic numbers) must have shape [num_atoms]')
    if z.dtype != torch.int64 and z.dtype != torch.int32:
        raise TypeError('z (atomic numbers) must be an integer tensor (torch.long)')
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError('pos must have shape [num_atoms, 3] (Angstrom)')
    if pos.size(0) != z.size(0):
        raise ValueError('z has ' + str(z.size(0)) + ' atoms but pos has ' + str(pos.size(0))
                         + ' rows')
    if not torch.is_floating_point(pos):
        raise TypeError('pos must be a floating-point tensor')
    if z.numel() == 0:
        raise ValueError('the structure has no atoms')
    if not bool(torch.isfinite(pos).all()):
        raise ValueError('positions contain NaN or infinite values')
    if bool((z <= 0).any()) or bool((z >= max_z).any()):
        raise ValueError('unknown element: atomic numbers must be in 1..' + str(max_z - 1))
    if supported_elements is not None:
        allowed = torch.tensor(supported_elements, dtype=z.dtype, device=z.device)
        if not bool(torch.isin(z, allowed).all()):
            raise ValueError('unknown element: this model only knows atomic numbers '
                             + str(supported_elements))
    if batch is not None:
        if batch.dim() != 1 or batch.size(0) != z.size(0):
            raise ValueError('batch must have shape [num_atoms]')
        if batch.dtype != torch.int64 and batch.dtype != torch.int32:
            raise TypeError('batch must be an integer tensor (torch.long)')
        if bool((batch < 0).any()):
            raise ValueError('batch indices must be non-negative')


def script_check_num_graphs(batch: Optional[Tensor], num_atoms: int,
                            num_graphs: Optional[int] = None,
                            max_empty: int = MAX_IMPLIED_EMPTY_STRUCTURES) -> int:
    r""":func:`check_num_graphs` for TorchScript (module constants reach TorchScript as
    default arguments). Under :func:`torch.compile` a given :obj:`num_graphs` is trusted (no
    host sync)."""
    if torch.compiler.is_compiling() and (batch is None or num_graphs is not None):
        if num_graphs is None:
            return 1
        if num_graphs < 1:
            raise ValueError('num_graphs must be at least 1')
        return num_graphs
    top = int(batch.max()) + 1 if batch is not None and batch.numel() > 0 else 1
    if num_graphs is None:
        if top - num_atoms > max_empty:
            raise ValueError('batch index ' + str(top - 1) + ' implies too many structures; '
                             'pass num_graphs= if the batch really has that many')
        return top
    if num_graphs < 1:
        raise ValueError('num_graphs must be at least 1')
    if top > num_graphs:
        raise ValueError('batch refers to structure ' + str(top - 1) + ' but num_graphs='
                         + str(num_graphs))
    return num_graphs


def script_check_total_charge(total_charge: Optional[Tensor], num_graphs: int) -> None:
    r""":func:`check_total_charge` for TorchScript."""
    if total_charge is None:
        return
    if total_charge.dim() != 1 or total_charge.size(0) != num_graphs:
        raise ValueError('total_charge must have shape [num_structures]')
    if torch.is_floating_point(total_charge) and not bool(torch.isfinite(total_charge).all()):
        raise ValueError('total_charge contains NaN or infinite values')
