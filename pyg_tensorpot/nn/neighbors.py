r"""Neighbour pairs on top of `vesin <https://github.com/Luthaf/vesin>`_ (and an exact hashed
cell list for the boxes vesin cannot handle safely, :mod:`pyg_tensorpot.nn.pair_search`).

The search runs on the device of the positions (vesin on CUDA) except for the rare boxes vesin
cannot take, and decides the pair set in float64 whatever their dtype (:func:`find_pairs`);
:class:`~pyg_tensorpot.nn.verlet.VerletList` reuses it across MD steps with a skin.

Models do not call :func:`neighbor_pairs` themselves: their one graph builder is
:func:`~pyg_tensorpot.nn.graph.atom_graph`, which adds the geometry (edge vectors, distances,
unit vectors) to these pairs.

Edge convention (PyG's ``flow="source_to_target"``): ``edge_index[0]`` is the neighbour
:math:`j` (source of the message) and ``edge_index[1]`` the receiving atom :math:`i`. The edge
vector is :math:`\mathbf{r}_{ij} = \mathbf{r}_i - (\mathbf{r}_j + \mathbf{s}_{ij})`, receiver
minus neighbour, where :math:`\mathbf{s}_{ij}` is the Cartesian lattice translation of the
periodic image of :math:`j` (zero without periodic boundaries).
"""
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from pyg_tensorpot.nn.pair_search import device_pairs, open_boundary_pairs, periodic_pairs


class NeighborPairs(NamedTuple):
    r"""The directed edges between atoms of the same structure closer than the cutoff.

    Shapes:
        - **edge_index** :math:`(2, E)`: row 0 the neighbour :math:`j`, row 1 the receiver
          :math:`i`. The :math:`P` pairs found come first, then the same :math:`P` pairs
          reversed, then the self-loops if requested, so :math:`E = 2P` (or :math:`2P + N`).
        - **shifts** :math:`(E, 3)` or :obj:`None`: Cartesian image translations
          :math:`\mathbf{s}_{ij}` of the neighbours in Angstrom (with a cell only).
        - **pair_index** :math:`(E)`: the pair of every edge, in :math:`0, \dots, P - 1`; the
          two directions of a pair share it, and all self-loops share :math:`P`, so that
          functions of the distance only can be evaluated once per pair.
    """
    edge_index: Tensor
    shifts: Optional[Tensor]
    pair_index: Tensor


# Under torch.compile the search is one opaque call (a graph break by design): dynamo never
# traces the cell lists, whose data-dependent shapes would recompile at every step.
@torch.compiler.disable
def find_pairs(pos: Tensor, cutoff: float, batch: Optional[Tensor] = None,
               cell: Optional[Tensor] = None, pbc: Optional[Union[bool, Tensor]] = None
               ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    r"""Every unordered pair of atoms (or atom and periodic image) of the same structure
    closer than :obj:`cutoff`, once, with the integer image shift of :math:`j`.

    The pair set is decided in float64 on the exact values of :obj:`pos` whatever its dtype
    (vesin computes in float64; the pairs within rounding of the cutoff are re-tested with
    :math:`\lVert (\mathbf{r}_i - \mathbf{r}_j) - \mathbf{n}_{ij}\mathbf{C} \rVert < r_c` in
    float64), so float32 positions near the cutoff give the same pairs on every device and
    for every search method. On the CPU the search is that of
    :mod:`~pyg_tensorpot.nn.pair_search`; on an accelerator vesin runs on the device
    (:func:`~pyg_tensorpot.nn.pair_search.device_pairs`), except for the rare boxes it cannot
    take safely (flat, elongated or mostly empty, mixed boundaries), which are searched on the
    CPU.

    Args:
        pos (torch.Tensor): Positions in Angstrom :obj:`[num_atoms, 3]`.
        cutoff (float): Cutoff radius in Angstrom.
        batch (torch.Tensor, optional): Structure of every atom. (default: :obj:`None`)
        cell (torch.Tensor, optional): Lattice vectors as rows, :obj:`[3, 3]` or
            :obj:`[num_structures, 3, 3]`, Angstrom. (default: :obj:`None`)
        pbc (bool or torch.Tensor, optional): Periodic directions; fully periodic when
            :obj:`cell` is given and this is :obj:`None`. (default: :obj:`None`)

    Returns:
        (i, j, shifts): :obj:`[P]`, :obj:`[P]` and the integer shifts :obj:`[P, 3]` (long;
        :obj:`None` without a cell), with :math:`\mathbf{r}_{ij} = \mathbf{r}_i -
        (\mathbf{r}_j + \mathbf{n}_{ij}\mathbf{C})`, on the device of :obj:`pos`.
    """
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError(f'pos must have shape [num_atoms, 3], got {list(pos.shape)}')
    if not cutoff > 0:
        raise ValueError(f'cutoff must be positive, got {cutoff}')
    num_atoms = pos.size(0)
    device = pos.device
    if batch is None:
        batch = torch.zeros(num_atoms, dtype=torch.long, device=device)
    if device.type != 'cpu' and num_atoms > 0:
        try:
            found = _on_device(pos, batch, cutoff, cell, pbc)
        except RuntimeError as error:
            # A vesin build without this device's kernels: the CPU search gives the same pairs.
            warnings.warn(f'vesin could not search the neighbours on {device} ({error}); '
                          'searching on the CPU instead', RuntimeWarning, stacklevel=2)
            found = None
        if found is not None:
            return found
    points = pos.detach().to('cpu', torch.float64)
    batch_cpu = batch.to('cpu')
    if cell is None:
        i, j = open_boundary_pairs(points, batch_cpu, cutoff)
        return i.to(device), j.to(device), None
    i, j, shifts = periodic_pairs(points, batch_cpu, cutoff, cell, pbc, integer=True)
    return i.to(device), j.to(device), shifts.to(device)


def _on_device(pos: Tensor, batch: Tensor, cutoff: float, cell: Optional[Tensor],
               pbc: Optional[Union[bool, Tensor]]) -> Optional[Tuple[Tensor, Tensor,
                                                                     Optional[Tensor]]]:
    # vesin on the accelerator; None sends the rare boxes it cannot take to the CPU search.
    num_structures = int(batch.max()) + 1
    points = pos.detach().to(torch.float64)
    if cell is None:
        found = device_pairs(points, batch, num_structures, cutoff, None, None)
        return None if found is None else (found[0], found[1], None)
    flags = torch.as_tensor(True if pbc is None else pbc).to('cpu', torch.bool)
    flags = flags.reshape(1, 1).expand(1, 3) if flags.dim() == 0 else flags.reshape(-1, 3)
    if cell.dim() not in (2, 3) or cell.shape[-2:] != (3, 3) or flags.size(0) not in (
            1, num_structures):
        return None
    cells = cell.detach().to(pos.device, torch.float64).reshape(-1, 3, 3)
    if cells.size(0) not in (1, num_structures) or not bool(torch.isfinite(cells).all()):
        return None
    return device_pairs(points, batch, num_structures, cutoff,
                        cells.expand(num_structures, 3, 3),
                        flags.expand(num_structures, 3))


def cartesian_shifts(shifts: Tensor, cell: Tensor, batch: Tensor, i: Tensor) -> Tensor:
    r"""The Cartesian translations :math:`\mathbf{s}_{ij} = \mathbf{n}_{ij}\,\mathbf{C}_s` of
    integer image shifts, in :obj:`cell`'s dtype and differentiable with respect to it
    (strain derivatives).

    Args:
        shifts (torch.Tensor): Integer shifts :obj:`[P, 3]`.
        cell (torch.Tensor): Lattice vectors as rows, :obj:`[3, 3]` or :obj:`[B, 3, 3]`.
        batch (torch.Tensor): Structure of every atom :obj:`[N]`.
        i (torch.Tensor): The atom of every pair :obj:`[P]` (its structure's cell is used).
    """
    shifts = shifts.to(device=cell.device, dtype=cell.dtype)
    if cell.dim() == 2 or cell.size(0) == 1:
        return shifts @ cell.reshape(3, 3)
    cell_of_pair = cell.index_select(0, batch.index_select(0, i))
    return torch.bmm(shifts.unsqueeze(1), cell_of_pair).squeeze(1)


def pair_edges(i: Tensor, j: Tensor, shifts: Optional[Tensor], num_atoms: int,
               loop: bool = False, max_num_neighbors: Optional[int] = None,
               cutoff: Optional[float] = None) -> NeighborPairs:
    r"""The :class:`NeighborPairs` of unordered pairs: both directions of every pair, then
    the self-loops if :obj:`loop`, with the neighbour budget checked.

    Args:
        i (torch.Tensor): First atom of every pair :obj:`[P]`.
        j (torch.Tensor): Second atom of every pair :obj:`[P]`.
        shifts (torch.Tensor, optional): Cartesian image translations of :math:`j`,
            :obj:`[P, 3]`. (default: :obj:`None`)
        num_atoms (int): Number of atoms.
        loop (bool, optional): Add the self-loop of every atom. (default: :obj:`False`)
        max_num_neighbors (int, optional): Neighbour budget per atom (an error when
            exceeded). (default: :obj:`None`)
        cutoff (float, optional): The cutoff, for the error message only. (default: :obj:`None`)
    """
    device = i.device
    num_pairs = i.numel()
    # Both directions; seen from j, the image of i is at -s.
    if shifts is not None:
        shifts = torch.cat([shifts, -shifts], dim=0)
    i, j = torch.cat([i, j]), torch.cat([j, i])
    if max_num_neighbors is not None:
        counts = torch.bincount(i, minlength=num_atoms)
        if num_atoms > 0 and int(counts.max()) > max_num_neighbors:
            atom = int(counts.argmax())
            raise ValueError(
                f'atom {atom} has {int(counts.max())} neighbours within {cutoff} A, more than '
                f'max_num_neighbors={max_num_neighbors}; raise the budget (no pair is dropped)')

    # vesin's (i, j) pair has its vector pointing from i to j; i receives the message.
    edge_index = torch.stack([j, i], dim=0)
    pair_index = torch.arange(num_pairs, device=device).repeat(2)
    if loop:
        edge_index = torch.cat(
            [edge_index, torch.arange(num_atoms, device=device).repeat(2, 1)], dim=1)
        # Every self-loop has d = 0: one shared row.
        pair_index = torch.cat(
            [pair_index, torch.full((num_atoms, ), num_pairs, device=device)])
        if shifts is not None:
            shifts = torch.cat([shifts, shifts.new_zeros(num_atoms, 3)], dim=0)
    return NeighborPairs(edge_index, shifts, pair_index)


def neighbor_pairs(
    pos: Tensor,
    cutoff: float,
    batch: Optional[Tensor] = None,
    loop: bool = False,
    max_num_neighbors: Optional[int] = None,
    cell: Optional[Tensor] = None,
    pbc: Optional[Union[bool, Tensor]] = None,
) -> NeighborPairs:
    r"""Finds all atom pairs of the same structure closer than :obj:`cutoff`, periodic images
    included.

    Pairs are found in :math:`O(N)` by :func:`find_pairs`: vesin's cell lists on the device of
    :obj:`pos`, or, for boxes vesin cannot handle safely (flat, elongated or mostly empty),
    an exact hashed cell list on the CPU (see :mod:`pyg_tensorpot.nn.pair_search`), deciding
    the pair set in float64 whatever the dtype of :obj:`pos`. The pairs are not
    differentiable; the edge vectors computed from them with :func:`edge_vectors` are. Every
    pair is stored in both directions.

    Args:
        pos (torch.Tensor): Positions in Angstrom, shape :obj:`[num_atoms, 3]`.
        cutoff (float): Cutoff radius in Angstrom; pairs with :math:`d_{ij} < r_c` are kept.
        batch (torch.Tensor, optional): Structure index of every atom. (default: :obj:`None`)
        loop (bool, optional): If :obj:`True`, adds the self-loop :math:`(i, i)` of every atom.
            (default: :obj:`False`)
        max_num_neighbors (int, optional): Neighbour budget per atom (self-loops not counted).
            An atom with more neighbours raises an error instead of silently losing pairs.
            (default: :obj:`None`)
        cell (torch.Tensor, optional): Lattice vectors as rows, shape :obj:`[3, 3]` or
            :obj:`[num_structures, 3, 3]`, Angstrom. (default: :obj:`None`)
        pbc (bool or torch.Tensor, optional): Periodic directions, a bool or :obj:`[3]` bools
            (or :obj:`[num_structures, 3]`). Defaults to fully periodic when :obj:`cell` is
            given. (default: :obj:`None`)

    Returns:
        NeighborPairs: :obj:`edge_index`, :obj:`shifts` (:obj:`None` without a cell) and
        :obj:`pair_index`, on the device of :obj:`pos`.
    """
    num_atoms = pos.size(0) if pos.dim() == 2 else 0
    if batch is None:
        batch = torch.zeros(num_atoms, dtype=torch.long, device=pos.device)
    i, j, integer_shifts = find_pairs(pos, cutoff, batch, cell, pbc)
    shifts: Optional[Tensor] = None
    if integer_shifts is not None and cell is not None:
        shifts = cartesian_shifts(integer_shifts, cell, batch.to(i.device), i).to(pos.device)
    return pair_edges(i, j, shifts, num_atoms, loop, max_num_neighbors, cutoff)


def edge_vectors(pos: Tensor, edge_index: Tensor,
                 shifts: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    r"""Differentiable edge vectors :math:`\mathbf{r}_{ij}` and lengths :math:`d_{ij}`.

    Self-loops get a zero vector and length 0 with a finite gradient (the norm is only
    evaluated on the other edges).

    Args:
        pos (torch.Tensor): Positions, shape :obj:`[num_atoms, 3]`.
        edge_index (torch.Tensor): Graph, row 0 the neighbour :math:`j`, row 1 the receiver
            :math:`i`.
        shifts (torch.Tensor, optional): Cartesian image translations of the neighbours,
            shape :obj:`[num_edges, 3]`. (default: :obj:`None`)

    Returns:
        (edge_vec, edge_weight): :obj:`[num_edges, 3]` and :obj:`[num_edges]`.
    """
    source, target = edge_index[0], edge_index[1]
    edge_vec = pos.index_select(0, target) - pos.index_select(0, source)
    if shifts is not None:
        edge_vec = edge_vec - shifts.to(edge_vec.dtype)
    is_self = (source == target).unsqueeze(-1)
    if shifts is not None:
        is_self = is_self & (shifts == 0).all(dim=-1, keepdim=True)
    safe_vec = torch.where(is_self, torch.ones_like(edge_vec), edge_vec)
    edge_weight = torch.where(is_self.squeeze(-1), torch.zeros_like(edge_vec[:, 0]),
                              torch.linalg.vector_norm(safe_vec, dim=-1))
    return edge_vec, edge_weight
