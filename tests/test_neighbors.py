"""The vesin-backed neighbour list against brute force."""
import itertools

import pytest
import torch

from pyg_tensorpot.nn import NeighborPairs, edge_vectors, neighbor_pairs


def brute_force_pairs(pos, cutoff, batch, cell=None, images=2):
    pairs = set()
    shifts = [torch.zeros(3, dtype=pos.dtype)]
    if cell is not None:
        shifts = [torch.tensor(s, dtype=pos.dtype) @ cell
                  for s in itertools.product(range(-images, images + 1), repeat=3)]
    for i in range(pos.size(0)):
        for j in range(pos.size(0)):
            if batch[i] != batch[j]:
                continue
            for s in shifts:
                d = float(torch.linalg.vector_norm(pos[i] - pos[j] - s))
                if 0 < d < cutoff:
                    pairs.add((j, i, tuple(round(float(v), 6) for v in s)))
    return pairs


def graph_pairs(edge_index, shifts):
    if shifts is None:
        shifts = torch.zeros(edge_index.size(1), 3)
    return {(int(j), int(i), tuple(round(float(v), 6) + 0.0 for v in s))
            for (j, i), s in zip(edge_index.T.tolist(), shifts)}


def test_open_boundaries_batched_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(40, 3, generator=g, dtype=torch.float64) * 6.0
    batch = torch.tensor([0] * 15 + [1] * 5 + [2] * 20)
    edge_index, shifts, _ = neighbor_pairs(pos, 2.5, batch)
    assert shifts is None
    assert graph_pairs(edge_index, None) == brute_force_pairs(pos, 2.5, batch)


def test_self_loops_are_added_once():
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [5.0, 0, 0]])
    edge_index = neighbor_pairs(pos, 2.0, loop=True).edge_index
    loops = edge_index[:, edge_index[0] == edge_index[1]]
    assert sorted(loops[0].tolist()) == [0, 1, 2]
    assert edge_index.size(1) == 2 + 3


@pytest.mark.parametrize('cell', [
    torch.eye(3, dtype=torch.float64) * 3.1,
    torch.tensor([[4.0, 0.0, 0.0], [1.2, 3.5, 0.0], [-0.7, 0.9, 3.8]], dtype=torch.float64),
])
def test_periodic_matches_brute_force(cell):
    g = torch.Generator().manual_seed(1)
    frac = torch.rand(6, 3, generator=g, dtype=torch.float64)
    pos = frac @ cell
    batch = torch.zeros(6, dtype=torch.long)
    for _ in range(3):  # the same graph every call
        edge_index, shifts, _ = neighbor_pairs(pos, 3.3, cell=cell)
        assert graph_pairs(edge_index, shifts) == brute_force_pairs(pos, 3.3, batch, cell)
    vec, dist = edge_vectors(pos, edge_index, shifts)
    assert float(dist.max()) < 3.3 and float(dist.min()) > 0


def test_partial_periodicity_and_cell_per_structure():
    cell = torch.eye(3, dtype=torch.float64) * 3.0
    pos = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 2.7], [1.0, 1.0, 1.0], [1.0, 1.0, 2.2]],
                       dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1])
    cells = torch.stack([cell, cell * 1.5])
    pbc = torch.tensor([[False, False, True], [False, False, False]])
    edge_index, shifts, _ = neighbor_pairs(pos, 1.3, batch, cell=cells, pbc=pbc)
    # Structure 0: atoms 0 and 1 are 0.8 A apart through the z boundary only.
    pairs = graph_pairs(edge_index, shifts)
    assert (1, 0, (0.0, 0.0, -3.0)) in pairs and (0, 1, (0.0, 0.0, 3.0)) in pairs
    # Structure 1 is open: 1.2 A apart directly.
    assert (3, 2, (0.0, 0.0, 0.0)) in pairs
    assert len(pairs) == 4


@pytest.mark.parametrize('cell', [None, torch.eye(3, dtype=torch.float64) * 3.1])
def test_pair_index_joins_the_two_directions_and_the_loops(cell):
    pos = torch.rand(7, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    pairs = neighbor_pairs(pos, 2.9, loop=True, cell=cell)
    assert isinstance(pairs, NeighborPairs)
    num_atoms, num_edges = pos.size(0), pairs.edge_index.size(1)
    num_pairs = (num_edges - num_atoms) // 2
    assert num_pairs > 0 and pairs.pair_index.shape == (num_edges, )
    expected = torch.cat([torch.arange(num_pairs).repeat(2), torch.full((num_atoms, ), num_pairs)])
    assert torch.equal(pairs.pair_index, expected)
    # Edge p and edge p + P are the same pair reversed, the neighbour's image mirrored.
    forward, backward = pairs.edge_index[:, :num_pairs], pairs.edge_index[:, num_pairs:-num_atoms]
    assert torch.equal(forward, backward.flip(0))
    if cell is not None:
        assert torch.equal(pairs.shifts[:num_pairs], -pairs.shifts[num_pairs:-num_atoms])
        assert bool((pairs.shifts[-num_atoms:] == 0).all())
    # Exactly equal: the two vectors are negatives of each other in IEEE arithmetic.
    _, dist = edge_vectors(pos, pairs.edge_index, pairs.shifts)
    torch.testing.assert_close(dist[:num_pairs], dist[num_pairs:-num_atoms], rtol=0, atol=0)


def test_edge_vectors_convention_and_self_loop_gradient():
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]], requires_grad=True)
    edge_index = torch.tensor([[1, 0, 0], [0, 1, 0]])
    vec, dist = edge_vectors(pos, edge_index)
    # Receiver minus neighbour: r_0 - r_1 for the edge 1 -> 0.
    torch.testing.assert_close(vec[0], torch.tensor([-1.5, 0.0, 0.0]))
    torch.testing.assert_close(dist, torch.tensor([1.5, 1.5, 0.0]))
    dist.sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_budget_exceeded_is_an_error():
    pos = torch.rand(30, 3, generator=torch.Generator().manual_seed(2)) * 2
    with pytest.raises(ValueError, match='more than max_num_neighbors=5'):
        neighbor_pairs(pos, 3.0, max_num_neighbors=5)
    edge_index = neighbor_pairs(pos, 3.0, max_num_neighbors=29).edge_index
    assert edge_index.size(1) == 30 * 29


def test_bad_arguments():
    with pytest.raises(ValueError, match='pos must have shape'):
        neighbor_pairs(torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match='cutoff must be positive'):
        neighbor_pairs(torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError, match='cell must have shape'):
        neighbor_pairs(torch.zeros(4, 3), 1.0, cell=torch.eye(2))


def _pair_keys(i, j, shifts):
    # Unordered pairs with their integer image shift, in one orientation (i < j, or i == j
    # with the first non-zero shift component positive).
    keys = set()
    for a, b, s in zip(i.tolist(), j.tolist(), shifts.tolist()):
        s = tuple(int(v) for v in s)
        if a > b or (a == b and next((v for v in s if v != 0), 0) < 0):
            a, b, s = b, a, tuple(-v for v in s)
        keys.add((a, b, s))
    return keys


@pytest.mark.parametrize('unwrapped', [False, True])
def test_device_search_gives_the_cpu_pair_set(unwrapped):
    # The accelerator path (vesin on the tensors' device) run on CPU tensors: the same pairs
    # and integer shifts as the CPU search, for a batch of a periodic box (atoms outside the
    # cell when unwrapped) and a molecule.
    from pyg_tensorpot.nn.pair_search import device_pairs, open_boundary_pairs, periodic_pairs
    from pyg_tensorpot.structures import water_box
    z, pos, cell = water_box(24, seed=5)
    if unwrapped:
        pos = pos + torch.tensor([1.0, -2.0, 3.0], dtype=pos.dtype) @ cell
    molecule = torch.rand(9, 3, generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64) * 4.0
    points = torch.cat([pos, molecule])
    batch = torch.tensor([0] * pos.size(0) + [1] * 9)
    cells = torch.stack([cell, torch.eye(3, dtype=cell.dtype) * 10.0])
    flags = torch.tensor([[True, True, True], [False, False, False]])
    i, j, shifts = device_pairs(points, batch, 2, 4.0, cells, flags)
    ci, cj, cshifts = periodic_pairs(points, batch, 4.0, cells, flags, integer=True)
    assert _pair_keys(i, j, shifts) == _pair_keys(ci, cj, cshifts)
    assert len(_pair_keys(i, j, shifts)) == i.numel()
    # The dispatch find_pairs makes for accelerator tensors (one cell for the batch).
    from pyg_tensorpot.nn.neighbors import _on_device, find_pairs
    wi, wj, wshifts = _on_device(pos.float(), torch.zeros(pos.size(0), dtype=torch.long), 4.0,
                                 cell.float(), None)
    fi, fj, fshifts = find_pairs(pos.float(), 4.0, cell=cell.float())
    assert _pair_keys(wi, wj, wshifts) == _pair_keys(fi, fj, fshifts)
    oi, oj = open_boundary_pairs(molecule, torch.zeros(9, dtype=torch.long), 4.0)
    di, dj, _ = device_pairs(molecule, torch.zeros(9, dtype=torch.long), 1, 4.0, None, None)
    assert {tuple(sorted(p)) for p in zip(di.tolist(), dj.tolist())} == set(
        zip(oi.tolist(), oj.tolist()))


def test_device_search_hands_unsafe_boxes_to_the_cpu():
    from pyg_tensorpot.nn.pair_search import device_pairs
    # A flat 3000 x 3000 x 3 A box (vesin 0.6.2 divides by zero) and mixed boundaries.
    points = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    batch = torch.zeros(2, dtype=torch.long)
    flat = torch.diag(torch.tensor([3000.0, 3000.0, 3.0], dtype=torch.float64)).unsqueeze(0)
    assert device_pairs(points, batch, 1, 5.0, flat, torch.ones(1, 3, dtype=torch.bool)) is None
    slab = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 20.0
    assert device_pairs(points, batch, 1, 5.0, slab,
                        torch.tensor([[True, True, False]])) is None
    far = torch.tensor([[0.0, 0.0, 0.0], [1e7, 0.0, 0.0]], dtype=torch.float64)
    assert device_pairs(far, batch, 1, 5.0, None, None) is None


def test_float32_positions_pair_set_decided_in_float64():
    # A pair one float32 ulp below the cutoff is kept, one at the cutoff is not, whatever
    # the search; the set equals that of the float64 copy of the same values.
    cutoff = 3.0
    below = float(torch.nextafter(torch.tensor(cutoff, dtype=torch.float32),
                                  torch.tensor(0.0, dtype=torch.float32)))
    pos = torch.tensor([[0.0, 0.0, 0.0], [below, 0.0, 0.0], [0.0, cutoff, 0.0]],
                       dtype=torch.float32)
    got = neighbor_pairs(pos, cutoff)
    assert graph_pairs(got.edge_index, None) == {(1, 0, (0.0, 0.0, 0.0)),
                                                 (0, 1, (0.0, 0.0, 0.0))}
    same = neighbor_pairs(pos.double(), cutoff)
    assert graph_pairs(same.edge_index, None) == graph_pairs(got.edge_index, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_cuda_search_stays_on_device_and_matches_cpu(dtype):
    from pyg_tensorpot.structures import water_box
    z, pos, cell = water_box(64, seed=2)
    pos, cell = pos.to(dtype), cell.to(dtype)
    got = neighbor_pairs(pos.cuda(), 4.0, cell=cell.cuda())
    assert got.edge_index.is_cuda and got.shifts.is_cuda and got.pair_index.is_cuda
    want = neighbor_pairs(pos, 4.0, cell=cell)
    assert graph_pairs(got.edge_index.cpu(), got.shifts.cpu()) == graph_pairs(want.edge_index,
                                                                              want.shifts)
    molecule = neighbor_pairs(pos[:30].cuda(), 4.0)
    assert graph_pairs(molecule.edge_index.cpu(), None) == graph_pairs(
        neighbor_pairs(pos[:30], 4.0).edge_index, None)
