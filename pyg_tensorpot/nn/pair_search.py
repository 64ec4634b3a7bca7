r"""Pair search behind :func:`~pyg_tensorpot.nn.radius_graph`: which atoms of the same
structure (or which periodic images) are closer than the cutoff, found with vesin's cell lists in
float64 on the CPU. Returns unordered pairs ``(i, j)`` once each, with vesin's integer image
shifts turned into Cartesian translations; :mod:`pyg_tensorpot.nn.neighbors` makes both
directions and the edge vectors.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from vesin_torch import NeighborList


def _vesin_pairs(points: Tensor, cutoff: float, box: Tensor,
                 periodic: Union[bool, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    # Each unordered pair (or pair of periodic images) once; both directions are made later.
    calculator = NeighborList(cutoff=cutoff, full_list=False, sorted=True)
    i, j, shifts = calculator.compute(points, box, periodic, quantities='ijS', copy=True)
    return i.long(), j.long(), shifts


def open_boundary_pairs(points: Tensor, batch: Tensor, cutoff: float) -> Tuple[Tensor, Tensor]:
    # One vesin call for the whole batch: every structure is translated along x, far enough
    # from the previous one that no pair can straddle two structures. The translation only
    # selects pairs; distances are recomputed from the untouched positions by the caller.
    num_structures = int(batch.max()) + 1 if batch.numel() > 0 else 0
    if num_structures > 1:
        lo = torch.full((num_structures, ), float('inf'), dtype=torch.float64)
        hi = torch.full((num_structures, ), -float('inf'), dtype=torch.float64)
        lo = lo.scatter_reduce(0, batch, points[:, 0], 'amin')
        hi = hi.scatter_reduce(0, batch, points[:, 0], 'amax')
        width = torch.nan_to_num(hi - lo, posinf=0.0, neginf=0.0) + 2.0 * cutoff + 1.0
        start = torch.cumsum(width, 0) - width
        offset = start - torch.nan_to_num(lo, posinf=0.0)
        points = points.clone()
        points[:, 0] += offset[batch]
    box = torch.zeros(3, 3, dtype=torch.float64)
    i, j, _ = _vesin_pairs(points, cutoff, box, False)
    return i, j


def periodic_pairs(points: Tensor, batch: Tensor, cutoff: float, cell: Tensor,
                    pbc: Optional[Union[bool, Tensor]]) -> Tuple[Tensor, Tensor, Tensor]:
    num_structures = int(batch.max()) + 1 if batch.numel() > 0 else 0
    if cell.shape[-2:] != (3, 3) or cell.dim() not in (2, 3):
        raise ValueError(f'cell must have shape [3, 3] or [{num_structures}, 3, 3], '
                         f'got {list(cell.shape)}')
    cells = cell if cell.dim() == 3 else cell.unsqueeze(0).expand(num_structures, 3, 3)
    if cells.size(0) != num_structures:
        raise ValueError(f'cell must have shape [3, 3] or [{num_structures}, 3, 3], '
                         f'got {list(cell.shape)}')
    if pbc is None:
        pbc = True
    pbc_t = torch.as_tensor(pbc, dtype=torch.bool).cpu()
    pbc_t = pbc_t.reshape(-1, 3) if pbc_t.dim() > 0 else pbc_t.reshape(1, 1).expand(1, 3)
    if pbc_t.size(0) not in (1, num_structures):
        raise ValueError(f'pbc must be a bool, [3] or [{num_structures}, 3] bools')
    # vesin reads the raw buffer: the flags must be contiguous, not a broadcast view.
    pbc_t = pbc_t.expand(num_structures, 3).contiguous()
    cells_cpu = cells.detach().to('cpu', torch.float64)

    all_i, all_j, all_shift = [], [], []
    counts = torch.bincount(batch, minlength=num_structures)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(batch, stable=True)
    for s in range(num_structures):
        atoms = order[starts[s]:starts[s] + counts[s]]
        i, j, shift = _vesin_pairs(points[atoms], cutoff, cells_cpu[s], pbc_t[s])
        all_i.append(atoms[i])
        all_j.append(atoms[j])
        # Cartesian translation of the neighbour's image; differentiable w.r.t. the cell.
        all_shift.append(shift.to(cell.dtype).to(cell.device) @ cells[s])
    i = torch.cat(all_i)
    j = torch.cat(all_j)
    # vesin's vector is r_j + S - r_i; our r_ij = r_i - (r_j + s_ij).
    shifts = torch.cat(all_shift).cpu() if all_shift else torch.zeros(0, 3)
    return i, j, shifts


