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
