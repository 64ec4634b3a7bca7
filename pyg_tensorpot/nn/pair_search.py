r"""Pair search behind :func:`~pyg_tensorpot.nn.neighbor_pairs`: which atoms of the same
structure (or which periodic images) are closer than the cutoff.

Length: over 500 lines because it holds both exact pair searches (vesin behind its safety
check, on the CPU and on an accelerator, and the hashed cell list for the boxes vesin cannot
take) and the upstream bug report; they share the safety checks and the exact test.

Two exact methods, both in float64 (vesin converts the positions to float64 itself):

* vesin's cell list (fast, multi-threaded C++), used whenever the box it would build is safe
  and efficient (:func:`vesin_grid_is_safe`, checked before every call); on an accelerator,
  vesin runs on the device for ordinary boxes (:func:`device_pairs`: fully periodic or open,
  vesin-safe), so the positions stay where they are;
* a hashed cell list written here (:func:`_grid_candidates`), which only stores occupied cells
  and so needs :math:`O(N)` memory whatever the shape or size of the point cloud: flat sheets,
  exploded trajectories, atoms at :math:`10^6` A, dense clusters far apart.

Both search with a radius a hair larger than the cutoff and then keep exactly the pairs with
:math:`\lVert (\mathbf{r}_i - \mathbf{r}_j) - \mathbf{s} \rVert < r_c`, evaluated on the
caller's positions the way :func:`~pyg_tensorpot.nn.edge_vectors` evaluates them, so the set
of pairs does not depend on the method, on how structures were moved to share one search, or
on rounding when atoms are wrapped into their cell. Pairs are unordered and come once each,
oriented so that :math:`i < j`, or :math:`i = j` with the first non-zero component of the
integer image shift positive.

Upstream bug report (vesin-torch 0.6.2, the newest release; vesin ``cpu_cell_list.cpp``):

    Title: SIGFPE (integer division by zero) in CellList for flat or elongated boxes

    import torch
    from vesin_torch import NeighborList
    points = torch.tensor([[0.0, 0, 0], [2000.0, 0, 0], [0, 2000.0, 0]], dtype=torch.float64)
    NeighborList(cutoff=5.0, full_list=False).compute(
        points, torch.zeros(3, 3, dtype=torch.float64), False, quantities='ij')

    The process dies with SIGFPE (shell exit code 136, ``subprocess`` return code -8), no
    Python exception. Also with two points at x = 0 and x = 1e7 A, and for periodic boxes
    such as ``torch.diag(torch.tensor([3000.0, 3000.0, 3.0]))`` or a 2000 x 2000 A sheet with
    ``periodic=[True, True, False]``. 1500 A instead of 2000 A works.

    Cause: ``CellList::CellList`` caps the number of cells at ``MAX_NUMBER_OF_CELLS`` (1e5)
    by rescaling ``n_cells[2] = trunc(cbrt(1e5 / (ratio_x_y * ratio_y_z**2)))``. When the box
    is flat or elongated (here 400 x 400 x 1 cells) the cube root is below 1 and truncates to
    0, which propagates to ``n_cells[1]`` and ``n_cells[0]``; the integer ``%``/``/`` in
    ``divmod`` (and ``foreach_pair``) then divide by a zero cell count. Clamping each rescaled
    count to at least 1 (and re-deriving the others from the remaining budget) fixes it.
    Unrelated but nearby: ``add_point`` casts ``floor(fractional * n_cells)`` to ``int32``
    without a range check, which overflows for atoms more than ~2e9 cells outside a periodic
    cell.
"""
import itertools
import math
from typing import Callable, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor
from vesin_torch import NeighborList

#: vesin's ``MAX_NUMBER_OF_CELLS``: above this many cells it rescales its grid (the rescale
#: that can round a direction down to zero cells).
VESIN_MAX_CELLS = 1e5

#: Above this mean number of atoms sharing a vesin cell with an atom (reached when vesin caps
#: its grid on a large, mostly empty box), vesin degenerates towards an all-pairs search and the
#: hashed cell list is used instead. Liquid water at a 5 A cutoff has about 13 per vesin cell.
MAX_ATOMS_PER_VESIN_CELL = 256.0

#: Most pairs a periodic search may produce before it is refused (about 20 GB of edges):
#: a cell much smaller than the cutoff sphere otherwise fills the memory with images.
MAX_PAIRS = 1 << 28

#: Candidate pairs examined at once by the hashed cell list (bounds its memory).
_CHUNK = 1 << 21

# Each unordered pair of neighbouring cells once: the cell itself and the 13 offsets that are
# lexicographically positive.
_HALF_STENCIL = [(0, 0, 0)] + [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)]


def _search_radius(cutoff: float, scale: float) -> float:
    # Slightly larger than the cutoff so that rounding (translating structures, wrapping atoms
    # into the cell, binning) can never lose a pair; the exact test comes afterwards.
    return cutoff * (1.0 + 1e-9) + 64.0 * 2.220446049250313e-16 * scale


def _check_finite(points: Tensor, batch: Tensor) -> None:
    bad = ~torch.isfinite(points).all(dim=-1)
    if bool(bad.any()):
        atom = int(bad.nonzero()[0, 0])
        raise ValueError(f'atom {atom} (structure {int(batch[atom])}) has a non-finite position '
                         f'{points[atom].tolist()} A; the neighbour list needs finite '
                         f'coordinates')


def vesin_grid(faces: List[float], cutoff: float) -> Tuple[List[float], bool, bool]:
    r"""The cell grid vesin's CPU cell list would build, and whether it is safe to use.

    Mirrors ``CellList::CellList`` of vesin 0.6: :math:`\lfloor d_k / r_c \rfloor` cells
    (at least one) along each direction, rescaled to about ``VESIN_MAX_CELLS`` cells in total
    when there would be more. The grid is unsafe when the rescale leaves a direction with no
    cell (vesin then divides by zero and the process dies), or comes within rounding of it.

    Args:
        faces (List[float]): Distances between opposite faces of vesin's box, Angstrom.
        cutoff (float): Search radius in Angstrom.

    Returns:
        (cells, safe, coarsened): the number of cells along each direction, :obj:`True` when
        every direction keeps at least one cell with a margin, and :obj:`True` when vesin had to
        rescale (its cells are then wider than the cutoff).
    """
    if not all(math.isfinite(d) and d > 0 for d in faces):
        return [1.0, 1.0, 1.0], False, False
    n = [max(math.trunc(d / cutoff), 1.0) for d in faces]
    if n[0] * n[1] * n[2] <= VESIN_MAX_CELLS:
        return n, True, False
    ratio_xy = n[0] / n[1]
    ratio_yz = n[1] / n[2]
    raw_z = math.cbrt(VESIN_MAX_CELLS / (ratio_xy * ratio_yz * ratio_yz))
    raw_y = ratio_yz * math.trunc(raw_z)
    raw_x = ratio_xy * math.trunc(raw_y)
    margin = 1.0 + 1e-6
    safe = raw_z >= margin and raw_y >= margin and raw_x >= margin
    cells = [float(math.trunc(raw_x)), float(math.trunc(raw_y)), float(math.trunc(raw_z))]
    return cells, safe, True


def vesin_grid_is_safe(faces: List[float], cutoff: float,
                       fractional: Optional[Callable[[], Tensor]] = None,
                       periodic: Tuple[bool, bool, bool] = (False, False, False)) -> bool:
    r"""Decides, before calling vesin, whether its cell list can serve this box.

    Refused: a grid that vesin would round down to zero cells along a direction (a flat or
    elongated box, see :func:`vesin_grid`), and a grid that vesin had to coarsen (more than
    ``VESIN_MAX_CELLS`` cells needed) on which the average atom shares its cell with more than
    ``MAX_ATOMS_PER_VESIN_CELL`` atoms (dense clusters inside a huge, mostly empty box), where
    vesin would test nearly all pairs. The second test costs one pass over the atoms and is
    only made for coarsened grids.

    Args:
        faces (List[float]): Distances between opposite faces of vesin's box, Angstrom.
        cutoff (float): Search radius in Angstrom.
        fractional (Callable, optional): Returns the fractional coordinates of the atoms in
            vesin's box, shape :obj:`[num_atoms, 3]`, for the occupancy test.
            (default: :obj:`None`)
        periodic (Tuple[bool, bool, bool], optional): Periodic directions.
            (default: :obj:`(False, False, False)`)
    """
    cells, safe, coarsened = vesin_grid(faces, cutoff)
    if not safe:
        return False
    if not coarsened or fractional is None:
        return True
    frac = fractional()
    index = torch.floor(frac * torch.tensor(cells, dtype=torch.float64, device=frac.device))
    index = index.long()
    for k in range(3):
        n_k = int(cells[k])
        index[:, k] = index[:, k] % n_k if periodic[k] else index[:, k].clamp(0, n_k - 1)
    flat = (index[:, 2] * int(cells[1]) + index[:, 1]) * int(cells[0]) + index[:, 0]
    counts = torch.bincount(flat).double()
    shared = float((counts * counts).sum()) / max(frac.size(0), 1)
    return shared <= MAX_ATOMS_PER_VESIN_CELL


def _open_faces(points: Tensor) -> Tuple[List[float], Tensor]:
    # vesin's box without periodicity: the points' extent plus 1% (at least 1 A).
    lo = points.amin(dim=0)
    extent = points.amax(dim=0) - lo
    extent = torch.where(extent < 1e-6, torch.ones_like(extent), extent)
    faces = torch.clamp(extent * 1.01, min=1.0)
    return faces.tolist(), lo


def _compress(values: Tensor) -> Tensor:
    # Integer-valued floats to small integers >= 1 that keep "equal", "differ by one" and
    # "differ by more" (the only relations a 3x3x3 stencil looks at).
    uniq, inverse = torch.unique(values, return_inverse=True)
    gaps = torch.clamp(torch.diff(uniq), max=2.0).long()
    ranks = torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, 0)]) + 1
    return ranks[inverse]


def _grid_candidates(points: Tensor, radius: float, group: Optional[Tensor] = None,
                     active: Optional[Tensor] = None) -> Iterator[Tuple[Tensor, Tensor]]:
    r"""Hashed cell list: yields, chunk by chunk, every unordered pair of points of the same
    group closer than :obj:`radius` (and some farther ones), each once.

    Cells are cubes of side :obj:`radius`; only occupied cells exist (their integer coordinates
    are compressed so that any spread of points gives small keys), so memory is :math:`O(N)`
    plus one chunk of candidates.

    Args:
        points (torch.Tensor): Positions, float64, shape :obj:`[num_points, 3]`.
        radius (float): Search radius, the cell side.
        group (torch.Tensor, optional): Group of every point; points of different groups are
            never paired. (default: :obj:`None`)
        active (torch.Tensor, optional): Boolean mask; cells without an active point are not
            paired with each other. (default: :obj:`None`)

    Yields:
        (u, v): point indices of candidate pairs, :obj:`u != v`.
    """
    num_points = points.size(0)
    if num_points < 2:
        return
    q = torch.floor((points - points.amin(dim=0)) / radius)
    cx, cy, cz = _compress(q[:, 0]), _compress(q[:, 1]), _compress(q[:, 2])
    if group is not None:
        # Cells of different groups are made non-adjacent along x.
        rows, inverse = torch.unique(torch.stack([group, cx], dim=1), dim=0, return_inverse=True)
        same = rows[1:, 0] == rows[:-1, 0]
        gaps = torch.where(same, torch.clamp(rows[1:, 1] - rows[:-1, 1], max=2), 2)
        cx = (torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, 0)]) + 1)[inverse]
    size_y = int(cy.max()) + 2
    size_z = int(cz.max()) + 2
    if (int(cx.max()) + 2) * size_y * size_z >= 1 << 62:
        raise ValueError(f'the {num_points} atoms are spread over too many neighbour cells of '
                         f'{radius:.6g} A to index; check the positions (Angstrom) for atoms '
                         f'that flew apart')
    key = (cx * size_y + cy) * size_z + cz
    order = torch.argsort(key)
    cell_keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    num_cells = cell_keys.numel()
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    cell_of = torch.repeat_interleave(torch.arange(num_cells), counts)
    sorted_active: Optional[Tensor] = None
    cell_active: Optional[Tensor] = None
    if active is not None:
        sorted_active = active[order]
        cell_active = torch.zeros(num_cells, dtype=torch.long).index_add_(
            0, cell_of, sorted_active.long()) > 0
    position = torch.arange(num_points)

    for offset in _HALF_STENCIL:
        if offset == (0, 0, 0):
            b_start = position + 1
            b_count = ends[cell_of] - b_start
            row_mask = b_count > 0
            if cell_active is not None:
                row_mask &= cell_active[cell_of]
        else:
            shift = (offset[0] * size_y + offset[1]) * size_z + offset[2]
            wanted = cell_keys + shift
            found = torch.searchsorted(cell_keys, wanted).clamp(max=num_cells - 1)
            hit = cell_keys[found] == wanted
            neighbour = torch.where(hit, found, -1)[cell_of]
            row_mask = neighbour >= 0
            safe = neighbour.clamp(min=0)
            b_start = starts[safe]
            b_count = counts[safe]
            if cell_active is not None and sorted_active is not None:
                row_mask &= sorted_active | cell_active[safe]
        rows = row_mask.nonzero().flatten()
        if rows.numel() == 0:
            continue
        b_start, b_count = b_start[rows], b_count[rows]
        total_per_row = torch.cumsum(b_count, 0)
        total = int(total_per_row[-1])
        cuts: List[int] = []
        if total > _CHUNK:
            marks = torch.arange(_CHUNK, total, _CHUNK, dtype=torch.long)
            cuts = torch.searchsorted(total_per_row, marks, right=True).tolist()
        bounds = [0] + cuts + [rows.numel()]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if hi <= lo:
                continue
            count = b_count[lo:hi]
            rep = torch.repeat_interleave(torch.arange(hi - lo), count)
            first = torch.cumsum(count, 0) - count
            local = torch.arange(rep.numel()) - first[rep]
            yield order[rows[lo:hi][rep]], order[b_start[lo:hi][rep] + local]


def _vesin_exact(search: Tensor, radius: float, cutoff: float, box: Tensor,
                 periodic: Union[bool, Tensor],
                 exact: Callable[[Tensor, Tensor, Tensor], Tensor]
                 ) -> Tuple[Tensor, Tensor, Tensor]:
    # vesin with the search radius, then the exact test only where vesin's distance (computed
    # on moved or wrapped points) is within the rounding margin of the cutoff.
    device = search.device
    # Sorting is an extra pass that only the CPU cell list offers; order does not matter.
    calculator = NeighborList(cutoff=radius, full_list=False, sorted=device.type == 'cpu')
    if isinstance(periodic, bool) and not periodic:
        i, j, d = calculator.compute(search, box, periodic, quantities='ijd', copy=True)
        shifts = torch.zeros(0, 3, dtype=torch.long, device=device)
    else:
        i, j, shifts, d = calculator.compute(search, box, periodic, quantities='ijSd',
                                             copy=True)
        shifts = shifts.long()
    i, j = i.long(), j.long()
    margin = radius - cutoff
    doubtful = (d >= cutoff - margin).nonzero().flatten()
    if doubtful.numel() > 0:
        keep = torch.ones(i.numel(), dtype=torch.bool, device=device)
        keep[doubtful] = exact(i[doubtful], j[doubtful],
                               shifts[doubtful] if shifts.numel() else shifts)
        i, j = i[keep], j[keep]
        shifts = shifts[keep] if shifts.numel() else shifts
    return i, j, shifts


def _orient(i: Tensor, j: Tensor, shifts: Optional[Tensor] = None
            ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    # One fixed orientation per unordered pair: i < j, or i == j and a positive image shift.
    flip = i > j
    if shifts is not None:
        flip = flip | ((i == j) & ~_leading_positive(shifts))
        shifts = torch.where(flip.unsqueeze(1), -shifts, shifts)
    return torch.where(flip, j, i), torch.where(flip, i, j), shifts


def _leading_positive(shifts: Tensor) -> Tensor:
    first = torch.argmax((shifts != 0).to(torch.uint8), dim=1, keepdim=True)
    return shifts.gather(1, first).squeeze(1) > 0


def _slot_grid(num_structures: int, slot: List[float]) -> List[int]:
    # Slots per direction, as close to a cube as the slot shape allows.
    side = (num_structures * slot[0] * slot[1] * slot[2])**(1.0 / 3.0)
    grid = [max(1, round(side / s)) for s in slot]
    while grid[0] * grid[1] * grid[2] < num_structures:
        k = min(range(3), key=lambda d: grid[d] * slot[d])
        grid[k] += 1
    return grid


def open_boundary_pairs(points: Tensor, batch: Tensor, cutoff: float) -> Tuple[Tensor, Tensor]:
    r"""All pairs of atoms of the same structure closer than :obj:`cutoff`, no periodicity.

    All structures share one search: each is translated into its own slot of a 3-D grid of
    slots, a cutoff apart, so the search box stays compact (a line of structures along one axis
    is what made vesin crash). The translation only selects pairs; distances are evaluated on
    the untouched positions.

    Args:
        points (torch.Tensor): Positions, float64 on the CPU, shape :obj:`[num_atoms, 3]`.
        batch (torch.Tensor): Structure index of every atom, shape :obj:`[num_atoms]`.
        cutoff (float): Cutoff radius in Angstrom; pairs with :math:`d_{ij} < r_c` are kept.

    Returns:
        (i, j): atom indices of every unordered pair once, :math:`i < j`, long tensors.
    """
    empty = torch.zeros(0, dtype=torch.long)
    if points.size(0) < 2:
        return empty, empty.clone()
    scale = float(points.abs().max())
    if not math.isfinite(scale):
        _check_finite(points, batch)
    num_structures = int(batch.max()) + 1
    search = points
    if num_structures > 1:
        fill = torch.full((num_structures, 3), float('inf'), dtype=torch.float64)
        index = batch.unsqueeze(1).expand(-1, 3)
        lo = fill.scatter_reduce(0, index, points, 'amin')
        hi = (-fill).scatter_reduce(0, index, points, 'amax')
        present = torch.isfinite(lo[:, :1])
        lo = torch.where(present, lo, 0.0)
        hi = torch.where(present, hi, 0.0)
        slot = (hi - lo).amax(dim=0) + _search_radius(cutoff, 2.0 * scale) + 1.0
        grid = _slot_grid(num_structures, slot.tolist())
        s = torch.arange(num_structures)
        corner = torch.stack([s % grid[0], (s // grid[0]) % grid[1], s // (grid[0] * grid[1])],
                             dim=1)
        search = points + (corner.double() * slot - lo)[batch]
        scale += float((corner.double() * slot).abs().max())
    radius = _search_radius(cutoff, 2.0 * scale)

    def exact(i: Tensor, j: Tensor, _: Optional[Tensor] = None) -> Tensor:
        within = torch.linalg.vector_norm(points[i] - points[j], dim=-1) < cutoff
        return within & (batch[i] == batch[j])

    faces, lo_search = _open_faces(search)

    def fractional() -> Tensor:
        return (search - lo_search) / torch.tensor(faces, dtype=torch.float64)

    if vesin_grid_is_safe(faces, radius, fractional):
        # vesin returns i < j.
        i, j, _ = _vesin_exact(search, radius, cutoff, torch.zeros(3, 3, dtype=torch.float64),
                               False, exact)
        return i, j
    all_i, all_j = [], []
    for u, v in _grid_candidates(points, radius, batch if num_structures > 1 else None):
        keep = exact(u, v)
        all_i.append(u[keep])
        all_j.append(v[keep])
    if not all_i:
        return empty, empty.clone()
    i, j, _ = _orient(torch.cat(all_i), torch.cat(all_j))
    return i, j


def _effective_box(cell: Tensor, periodic: List[bool]) -> Tensor:
    # The lattice with its non-periodic rows replaced by unit vectors orthogonal to the
    # periodic ones (as vesin does), so that fractional coordinates exist for any pbc.
    box = cell.clone()
    rows = [k for k in range(3) if periodic[k]]
    if len(rows) == 0:
        return torch.eye(3, dtype=cell.dtype)
    if len(rows) == 1:
        a = box[rows[0]] / torch.linalg.vector_norm(box[rows[0]])
        b = torch.tensor([0.0, 1.0, 0.0], dtype=cell.dtype)
        if abs(float(a @ b)) > 0.9:
            b = torch.tensor([0.0, 0.0, 1.0], dtype=cell.dtype)
        c = torch.linalg.cross(a, b)
        c = c / torch.linalg.vector_norm(c)
        b = torch.linalg.cross(c, a)
        box[(rows[0] + 1) % 3] = b / torch.linalg.vector_norm(b)
        box[(rows[0] + 2) % 3] = c
    elif len(rows) == 2:
        c = torch.linalg.cross(box[rows[0]], box[rows[1]])
        box[3 - rows[0] - rows[1]] = c / torch.linalg.vector_norm(c)
    return box


def _face_distances(boxes: Tensor) -> Tensor:
    # Distances between opposite faces of each box, [..., 3].
    volume = torch.abs(torch.linalg.det(boxes)).unsqueeze(-1)
    areas = torch.linalg.vector_norm(
        torch.linalg.cross(boxes[..., [1, 2, 0], :], boxes[..., [2, 0, 1], :], dim=-1), dim=-1)
    return volume / areas


def _check_lattice(cell: Tensor, periodic: List[bool], structure: int) -> float:
    # The measure (length, area or volume) of the periodic lattice; an error if it is
    # degenerate.
    rows = cell[[k for k in range(3) if periodic[k]]]
    lengths = torch.linalg.vector_norm(rows, dim=-1)
    measure = float(torch.linalg.det(rows @ rows.T).clamp(min=0.0))**0.5
    if not float(lengths.min()) > 0 or not measure > 1e-9 * float(lengths.prod()):
        raise ValueError(f'structure {structure}: the lattice vectors of the periodic '
                         f'directions {[k for k in range(3) if periodic[k]]} are zero or '
                         f'linearly dependent, cell={cell.tolist()} A')
    return measure


def _ghost_candidates(wrapped: Tensor, image: Tensor, fractional: Tensor, faces: Tensor,
                      box: Tensor, periodic: List[bool], radius: float
                      ) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
    # Periodic images within one search radius of the cell join the atoms in an open search;
    # a pair is seen from the side of an atom in the cell, and a pair with an image only in
    # the orientation _orient would give it (its mirror is found from the other atom's side).
    num_atoms = wrapped.size(0)
    atom = torch.arange(num_atoms)
    translation = torch.zeros(num_atoms, 3, dtype=torch.long)
    frac = fractional.clone()
    for k in range(3):
        if not periodic[k]:
            continue
        reach = radius / float(faces[k])
        lo = torch.ceil(-reach - frac[:, k]).long()
        hi = torch.floor(1.0 + reach - frac[:, k]).long()
        count = (hi - lo + 1).clamp(min=1)
        rep = torch.repeat_interleave(torch.arange(atom.numel()), count)
        step = lo[rep] + torch.arange(rep.numel()) - (torch.cumsum(count, 0) - count)[rep]
        atom, frac, translation = atom[rep], frac[rep], translation[rep]
        translation[:, k] = step
        frac[:, k] = frac[:, k] + step.double()
    ghost_pos = wrapped[atom] + translation.double() @ box
    original = (translation == 0).all(dim=1)
    for u, v in _grid_candidates(ghost_pos, radius, active=original):
        swap = ~original[u]
        u, v = torch.where(swap, v, u), torch.where(swap, u, v)
        keep = original[u]
        u, v = u[keep], v[keep]
        i, j = atom[u], atom[v]
        shift = translation[v] + image[i] - image[j]
        canonical = (i < j) | ((i == j) & _leading_positive(shift))
        keep = original[v] | canonical
        yield i[keep], j[keep], shift[keep]


def _structure_pairs(points: Tensor, wrapped: Tensor, image: Optional[Tensor],
                     fractional: Callable[[], Tensor], cutoff: float, radius: float, cell: Tensor,
                     box: Tensor, faces: List[float], measure: float, periodic: List[bool],
                     structure: int) -> Tuple[Tensor, Tensor, Tensor]:
    # Pairs (i, j, integer image shift) of one structure with at least one periodic direction;
    # box is the effective box, faces its face distances, measure the periodic lattice's.
    num_atoms = points.size(0)
    rows = [k for k in range(3) if periodic[k]]

    # Images of an atom inside the cutoff sphere (ball measure over the lattice's measure).
    ball = {1: 2.0 * radius, 2: math.pi * radius**2, 3: 4.0 / 3.0 * math.pi * radius**3}
    images = ball[len(rows)] / measure
    estimate = 0.5 * num_atoms * num_atoms * images
    if images > 1.0 and estimate > MAX_PAIRS:
        raise ValueError(
            f'structure {structure}: a cutoff of {cutoff} A holds about {images:.3g} periodic '
            f'images of the cell, so its {num_atoms} atoms would make about {estimate:.3g} '
            f'pairs, more than the {MAX_PAIRS} supported; check that the cell is in Angstrom '
            f'(cell={cell.tolist()}) and the cutoff')
    empty = torch.zeros(0, dtype=torch.long)
    if num_atoms == 0:
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long)

    vesin_faces = list(faces)
    lo = [0.0, 0.0, 0.0]
    for k in range(3):
        if not periodic[k]:
            lo[k] = float(wrapped[:, k].min())
            extent = float(wrapped[:, k].max()) - lo[k]
            vesin_faces[k] = max((extent if extent >= 1e-6 else 1.0) * 1.01, 1.0)

    def occupancy_fractional() -> Tensor:
        frac = fractional().clone()
        for k in range(3):
            if not periodic[k]:
                frac[:, k] = (wrapped[:, k] - lo[k]) / vesin_faces[k]
        return frac

    def exact(i: Tensor, j: Tensor, shift: Tensor) -> Tensor:
        vec = (points[i] - points[j]) - shift.double() @ cell
        return torch.linalg.vector_norm(vec, dim=-1) < cutoff

    # vesin visits (2 n + 1)^3 cells per cell, n = radius / face: bounded here.
    use_vesin = max(radius / faces[k] for k in rows) <= 16.0 and vesin_grid_is_safe(
        vesin_faces, radius, occupancy_fractional, (periodic[0], periodic[1], periodic[2]))
    if use_vesin:
        pbc = torch.tensor(periodic, dtype=torch.bool)
        if image is None:
            i, j, shift = _vesin_exact(wrapped, radius, cutoff, cell, pbc, exact)
        else:
            def exact_wrapped(i: Tensor, j: Tensor, shift: Tensor) -> Tensor:
                return exact(i, j, shift + image[i] - image[j])

            i, j, shift = _vesin_exact(wrapped, radius, cutoff, cell, pbc, exact_wrapped)
            shift = shift + image[i] - image[j]
        # vesin returns i <= j; only its half-space of self-image shifts differs from ours.
        # An atom's own images are at least the smallest face distance away.
        same = (i == j).nonzero().flatten() if min(faces[k] for k in rows) < radius else empty
        if same.numel() > 0:
            flip = same[~_leading_positive(shift[same])]
            shift[flip] = -shift[flip]
        return i, j, shift

    zero_image = image if image is not None else torch.zeros(num_atoms, 3, dtype=torch.long)
    all_i, all_j, all_s = [], [], []
    for i, j, shift in _ghost_candidates(wrapped, zero_image, fractional(), torch.tensor(faces),
                                         box, periodic, radius):
        keep = exact(i, j, shift)
        all_i.append(i[keep])
        all_j.append(j[keep])
        all_s.append(shift[keep])
    if not all_i:
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long)
    i, j, shift = _orient(torch.cat(all_i), torch.cat(all_j), torch.cat(all_s))
    assert shift is not None
    return i, j, shift


def periodic_pairs(points: Tensor, batch: Tensor, cutoff: float, cell: Tensor,
                   pbc: Optional[Union[bool, Tensor]],
                   integer: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    r"""All pairs of atoms and periodic images closer than :obj:`cutoff`, structure by structure.

    Atoms may lie anywhere (they are wrapped into their cell for the search, the shifts account
    for it); a structure without periodic direction gets the open-boundary search.

    Args:
        points (torch.Tensor): Positions, float64 on the CPU, shape :obj:`[num_atoms, 3]`.
        batch (torch.Tensor): Structure index of every atom, shape :obj:`[num_atoms]`.
        cutoff (float): Cutoff radius in Angstrom; pairs with :math:`d_{ij} < r_c` are kept.
        cell (torch.Tensor): Lattice vectors as rows, :obj:`[3, 3]` or
            :obj:`[num_structures, 3, 3]`, Angstrom.
        pbc (bool or torch.Tensor, optional): Periodic directions, a bool, :obj:`[3]` or
            :obj:`[num_structures, 3]` bools; :obj:`None` means fully periodic.
        integer (bool, optional): Return the integer image shifts :math:`\mathbf{n}_{ij}`
            (:math:`\mathbf{s}_{ij} = \mathbf{n}_{ij}\,\mathbf{C}`, long) instead of the
            Cartesian ones. (default: :obj:`False`)

    Returns:
        (i, j, shifts): every unordered pair once and the Cartesian translation
        :math:`\mathbf{s}_{ij}` of the image of :math:`j`, :math:`\mathbf{r}_{ij} =
        \mathbf{r}_i - (\mathbf{r}_j + \mathbf{s}_{ij})`, in :obj:`cell`'s dtype (and
        differentiable with respect to it), on the CPU.
    """
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
    pbc_t = pbc_t.expand(num_structures, 3)
    empty = torch.zeros(0, dtype=torch.long)
    if num_structures == 0:
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long if integer else
                                                 cell.dtype)
    cells64 = cells.detach().to('cpu', torch.float64)
    point_scale = float(points.abs().max())
    if not math.isfinite(point_scale):
        _check_finite(points, batch)
    bad_cell = ~torch.isfinite(cells64).flatten(1).all(dim=1)
    if bool(bad_cell.any()):
        s = int(bad_cell.nonzero()[0, 0])
        raise ValueError(f'structure {s} has a non-finite cell {cells64[s].tolist()} A')

    # Wrap every atom into its cell along the periodic directions (all structures at once);
    # degenerate cells are reported per structure below.
    full = pbc_t.all(dim=1)
    measures = torch.abs(torch.linalg.det(cells64))
    flat = ~(measures > 1e-9 * torch.linalg.vector_norm(cells64, dim=-1).prod(dim=1))
    for s in (full & flat).nonzero().flatten().tolist():
        _check_lattice(cells64[s], [True, True, True], s)
    boxes = torch.where(full.view(-1, 1, 1), cells64, torch.eye(3, dtype=torch.float64))
    for s in (~full & pbc_t.any(dim=1)).nonzero().flatten().tolist():
        periodic = pbc_t[s].tolist()
        measures[s] = _check_lattice(cells64[s], periodic, s)
        boxes[s] = _effective_box(cells64[s], periodic)
    faces = _face_distances(boxes).tolist()
    measures_list = measures.tolist()
    fractional = torch.einsum('ni,nij->nj', points, torch.linalg.inv(boxes)[batch])
    whole = torch.where(pbc_t[batch], torch.floor(fractional), 0.0)
    image: Optional[Tensor] = None
    wrapped = points
    if bool(whole.any()):
        image = whole.long()
        wrapped = points - torch.einsum('ni,nij->nj', whole, boxes[batch])
        fractional = fractional - whole
    scale = point_scale + 2.0 * float(cells64.abs().sum(dim=1).max())
    radius = _search_radius(cutoff, 2.0 * scale)

    all_i, all_j, all_shift = [], [], []
    counts = torch.bincount(batch, minlength=num_structures)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    counts_list = counts.tolist()
    # PyG batches are sorted: each structure is then a slice (a view), not a gather.
    in_order = bool((batch[1:] >= batch[:-1]).all())
    order = torch.arange(batch.numel()) if in_order else torch.argsort(batch, stable=True)
    for s in range(num_structures):
        start, stop = starts[s], starts[s] + counts_list[s]
        atoms = slice(start, stop) if in_order else order[start:stop]
        periodic = pbc_t[s].tolist()
        if not any(periodic):
            own = points[atoms]
            i, j = open_boundary_pairs(own, torch.zeros(own.size(0), dtype=torch.long), cutoff)
            shift = torch.zeros(i.numel(), 3, dtype=torch.long)
        else:
            own = points[atoms]
            i, j, shift = _structure_pairs(
                own, wrapped[atoms] if image is not None else own,
                image[atoms] if image is not None else None,
                lambda atoms=atoms: fractional[atoms], cutoff, radius, cells64[s], boxes[s],
                faces[s], measures_list[s], periodic, s)
        if num_structures > 1:
            i, j = (i + start, j + start) if in_order else (order[start:stop][i],
                                                             order[start:stop][j])
        all_i.append(i)
        all_j.append(j)
        # Cartesian translation of the neighbour's image; differentiable w.r.t. the cell.
        all_shift.append(shift if integer else
                         shift.to(device=cell.device, dtype=cell.dtype) @ cells[s])
    if num_structures == 1:
        return all_i[0], all_j[0], all_shift[0].cpu()
    return torch.cat(all_i), torch.cat(all_j), torch.cat(all_shift).cpu()


def device_pairs(points: Tensor, batch: Tensor, num_structures: int, cutoff: float,
                 cells: Optional[Tensor], flags: Optional[Tensor]
                 ) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    r"""The pairs of :func:`periodic_pairs` (integer shifts) or :func:`open_boundary_pairs`,
    found by vesin on the device of :obj:`points` (e.g. CUDA) for ordinary boxes, or
    :obj:`None` when a box needs the CPU search.

    Ordinary: every structure fully periodic or fully open, its vesin grid safe without
    coarsening (:func:`vesin_grid`), at most 16 cells of search per face, and within the pair
    budget. The pair set is the CPU one: vesin computes in float64, and the pairs within
    rounding of the cutoff are re-tested with the same float64 expression as on the CPU.
    Only a few numbers per structure (cell, extent) are read back to the host.

    Args:
        points (torch.Tensor): Positions, float64, on the device, :obj:`[num_atoms, 3]`.
        batch (torch.Tensor): Structure of every atom, :obj:`[num_atoms]`.
        num_structures (int): Number of structures.
        cutoff (float): Cutoff radius in Angstrom.
        cells (torch.Tensor, optional): Lattice vectors, float64 on the device,
            :obj:`[num_structures, 3, 3]`; :obj:`None` for open boundaries.
        flags (torch.Tensor, optional): Periodic directions :obj:`[num_structures, 3]`, bool,
            on the CPU. (default: :obj:`None`)

    Returns:
        (i, j, shifts) on the device, shifts :obj:`[P, 3]` long, or :obj:`None`.
    """
    device = points.device
    if flags is not None and not bool((flags.all(dim=1) | ~flags.any(dim=1)).all()):
        return None
    single = num_structures == 1
    point_scale = float(points.abs().max()) if points.numel() > 0 else 0.0
    if not math.isfinite(point_scale):
        return None
    cells_host = None if cells is None else cells.detach().cpu()
    scale = point_scale + (0.0 if cells_host is None else
                           2.0 * float(cells_host.abs().sum(dim=1).max()))
    radius = _search_radius(cutoff, 2.0 * scale)
    all_i: List[Tensor] = []
    all_j: List[Tensor] = []
    all_s: List[Tensor] = []
    for s in range(num_structures):
        atoms = None if single else (batch == s).nonzero().flatten()
        own = points if atoms is None else points.index_select(0, atoms)
        if own.size(0) == 0:
            continue
        periodic = flags is not None and bool(flags[s].all())
        if periodic:
            assert cells is not None and cells_host is not None
            box = cells[s]
            faces = _face_distances(cells_host[s]).tolist()
            measure = abs(float(torch.linalg.det(cells_host[s])))
            images = 4.0 / 3.0 * math.pi * radius**3 / measure if measure > 0 else math.inf
            _, safe, coarsened = vesin_grid(faces, radius)
            if (not safe or coarsened or max(radius / f for f in faces) > 16.0
                    or (images > 1.0 and 0.5 * own.size(0)**2 * images > MAX_PAIRS)):
                return None
            whole = torch.floor(own @ torch.linalg.inv(box))
            image = whole.long()
            wrapped = own - whole @ box

            def exact(i: Tensor, j: Tensor, shift: Tensor, own: Tensor = own,
                      image: Tensor = image, box: Tensor = box) -> Tensor:
                vec = (own[i] - own[j]) - (shift + image[i] - image[j]).double() @ box
                return torch.linalg.vector_norm(vec, dim=-1) < cutoff

            pbc = torch.ones(3, dtype=torch.bool, device=device)
            i, j, shift = _vesin_exact(wrapped, radius, cutoff, box, pbc, exact)
            shift = shift + image[i] - image[j]
        else:
            faces, _ = _open_faces(own)
            _, safe, coarsened = vesin_grid(faces, radius)
            if not safe or coarsened:
                return None

            def exact_open(i: Tensor, j: Tensor, _: Optional[Tensor] = None,
                           own: Tensor = own) -> Tensor:
                return torch.linalg.vector_norm(own[i] - own[j], dim=-1) < cutoff

            box = torch.zeros(3, 3, dtype=torch.float64, device=device)
            i, j, _ = _vesin_exact(own, radius, cutoff, box, False, exact_open)
            shift = torch.zeros(i.numel(), 3, dtype=torch.long, device=device)
        if atoms is not None:
            i, j = atoms[i], atoms[j]
        all_i.append(i)
        all_j.append(j)
        all_s.append(shift)
    if not all_i:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros(0, 3, dtype=torch.long, device=device)
    return torch.cat(all_i), torch.cat(all_j), torch.cat(all_s)
