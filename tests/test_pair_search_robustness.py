"""The neighbour search never kills the process and always finds exactly the brute-force pairs.

vesin-torch 0.6.2 dies with SIGFPE on flat or elongated point sets (see the bug report at the
top of pyg_tensorpot/nn/pair_search.py), so every input that used to crash it runs in a child
process here: the test checks a normal exit, then compares the pairs the child found with a
brute-force search in this process (float64, the distance test of edge_vectors).
"""
import itertools
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import pyg_tensorpot.nn.pair_search as pair_search
from pyg_tensorpot.nn import neighbor_pairs
from pyg_tensorpot.structures import water_box

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUTOFF = 5.0

# The inputs, built the same way in the child (where they go through neighbor_pairs) and here
# (where brute force checks them). Every generator is seeded.
CASES = textwrap.dedent('''
    import math
    import torch
    from pyg_tensorpot.structures import water_box

    def patch(origin, n, seed):
        # A dense, flat patch of atoms (about 2 A apart) so that flat inputs have pairs.
        g = torch.Generator().manual_seed(seed)
        xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * math.sqrt(n) * 2.0
        return torch.cat([xy, torch.zeros(n, 1, dtype=torch.float64)], 1) + torch.tensor(origin)

    def open_cases():
        g = torch.Generator().manual_seed(0)
        cases = {}
        cases['three_atoms_2000A'] = torch.tensor(
            [[0.0, 0.0, 0.0], [2000.0, 0.0, 0.0], [0.0, 2000.0, 0.0]], dtype=torch.float64)
        cases['flat_3000A_sheet'] = torch.cat([
            torch.cat([torch.rand(600, 2, generator=g, dtype=torch.float64) * 3000.0,
                       torch.zeros(600, 1, dtype=torch.float64)], 1),
            patch([1000.0, 1000.0, 0.0], 400, 1)])
        cases['line_1e7A'] = torch.tensor(
            [[0.0, 0.0, 0.0], [1e7, 0.0, 0.0], [1e7 + 1.0, 0.0, 0.0], [1e7 + 3.0, 0.5, 0.0]],
            dtype=torch.float64)
        cases['sparse_1e4A_and_cluster'] = torch.cat([
            torch.rand(1000, 3, generator=g, dtype=torch.float64) * 1e4,
            water_box(100)[1] + 17.0])
        cases['cluster_at_1e6A'] = torch.cat([
            water_box(60)[1] + 1e6, torch.zeros(1, 3, dtype=torch.float64)])
        return cases

    def periodic_cases():
        g = torch.Generator().manual_seed(1)
        d = lambda *v: torch.diag(torch.tensor(v, dtype=torch.float64))
        cases = {}
        slab = torch.cat([torch.rand(120, 3, generator=g, dtype=torch.float64)
                          * torch.tensor([3000.0, 3000.0, 3.0], dtype=torch.float64),
                          patch([5.0, 5.0, 1.0], 60, 2)])
        cases['flat_periodic_cell'] = (slab, d(3000.0, 3000.0, 3.0), [True, True, True])
        sheet = torch.cat([torch.rand(200, 2, generator=g, dtype=torch.float64) * 2000.0,
                           torch.zeros(200, 1, dtype=torch.float64)], 1)
        sheet = torch.cat([sheet, patch([1990.0, 1000.0, 0.0], 100, 3)])
        cases['sheet_pbc_xy_open_z'] = (sheet, d(2000.0, 2000.0, 0.0), [True, True, False])
        tri = torch.tensor([[7.0, 0.0, 0.0], [2.1, 6.5, 0.0], [-1.3, 1.7, 6.8]],
                           dtype=torch.float64)
        frac = torch.rand(40, 3, generator=g, dtype=torch.float64) * 3.0 - 1.0
        cases['triclinic_mixed_pbc'] = (frac @ tri, tri, [True, False, True])
        cases['triclinic'] = (frac @ tri, tri, [True, True, True])
        huge = torch.rand(10, 3, generator=g, dtype=torch.float64) * 1e5
        huge = torch.cat([huge, huge[:1] + 1.5, torch.tensor([[1.0, 1.0, 1.0]],
                                                             dtype=torch.float64)])
        cases['huge_cell_1e5A'] = (huge, d(1e5, 1e5, 1e5), [True, True, True])
        cases['tiny_cell_1.5A'] = (torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.1, 0.2]],
                                                dtype=torch.float64), d(1.5, 1.7, 1.9),
                                   [True, True, True])
        cases['atoms_1e12A_outside'] = (torch.tensor([[1e12 + 0.5, 2.0, 3.0], [1.0, 2.0, 3.0],
                                                      [-3e11, 9.5, 9.0]], dtype=torch.float64),
                                        d(10.0, 10.0, 10.0), [True, True, True])
        return cases
''')

CHILD = textwrap.dedent('''
    import sys
    import torch
    from pyg_tensorpot.nn import neighbor_pairs
    from pyg_tensorpot.structures import water_box
    exec(open(sys.argv[1]).read())
    cutoff = {cutoff}
    results = {{}}
    for name, pos in open_cases().items():
        print(name, flush=True)
        results[name] = neighbor_pairs(pos, cutoff).edge_index
    print('TensorNet on three_atoms_2000A', flush=True)
    from pyg_tensorpot.models import TensorNet
    torch.manual_seed(0)
    model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=8, cutoff=cutoff)
    pos = open_cases()['three_atoms_2000A'].float()
    results['tensornet_energy'] = model(z=torch.tensor([8, 1, 1]), pos=pos).detach()
    for name, (pos, cell, pbc) in periodic_cases().items():
        print(name, flush=True)
        edge_index, shifts, _ = neighbor_pairs(pos, cutoff, cell=cell, pbc=torch.tensor(pbc))
        results[name] = edge_index
        results[name + ':shifts'] = shifts
    # 100,000 water molecules, each its own structure, in one call: identical copies (the old
    # layout put them on one line) and the molecules of a liquid box (overlapping in space).
    n = 100000
    batch = torch.arange(n).repeat_interleave(3)
    for name, pos in (('copies', water_box(1)[1].repeat(n, 1)), ('liquid', water_box(n)[1])):
        print('100k water molecules,', name, flush=True)
        edge_index = neighbor_pairs(pos, cutoff, batch).edge_index
        results['water_100k:' + name] = edge_index[:, :edge_index.size(1) // 2].clone()
    torch.save(results, sys.argv[2])
''').format(cutoff=CUTOFF)

namespace = {}
exec(CASES, namespace)
open_cases, periodic_cases = namespace['open_cases'], namespace['periodic_cases']


pytestmark = pytest.mark.usefixtures('one_thread')  # small systems (conftest.py)


@pytest.fixture(scope='module')
def child(tmp_path_factory):
    """Runs every input that crashed vesin in one child process (one import of torch)."""
    tmp = tmp_path_factory.mktemp('pair_search_child')
    cases_file = tmp / 'cases.py'
    cases_file.write_text(CASES)
    out = tmp / 'results.pt'
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
               OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, '-c', CHILD, str(cases_file), str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                          text=True, timeout=300)
    results = torch.load(out, weights_only=True) if proc.returncode == 0 else None
    return proc.returncode, proc.stdout, results


def child_results(child):
    returncode, log, results = child
    # A signal shows as a negative code (SIGFPE: -8); the log ends with the case that ran.
    assert returncode == 0, f'the child process exited with {returncode}:\n{log[-2000:]}'
    return results


def canonical(i, j, shift):
    # An unordered pair (with its image translation) in one orientation, rounded to 1e-6 A.
    s = tuple(round(float(v), 6) + 0.0 for v in shift)
    m = tuple(round(-float(v), 6) + 0.0 for v in shift)
    return min((i, j, s), (j, i, m))


def brute_open(pos, cutoff, batch=None):
    n = pos.size(0)
    i, j = torch.triu_indices(n, n, 1)
    keep = torch.linalg.vector_norm(pos[i] - pos[j], dim=-1) < cutoff
    if batch is not None:
        keep &= batch[i] == batch[j]
    return {(a, b) for a, b in zip(i[keep].tolist(), j[keep].tolist())}


def effective_box(cell, pbc):
    # Non-periodic rows replaced by unit normals, to count the images needed per direction.
    rows = [k for k in range(3) if pbc[k]]
    box = cell.clone()
    if len(rows) == 2:
        c = torch.linalg.cross(cell[rows[0]], cell[rows[1]])
        box[3 - sum(rows)] = c / c.norm()
    elif len(rows) < 2:
        return None
    return box


def brute_periodic(pos, cutoff, cell, pbc):
    box = effective_box(cell, pbc)
    volume = abs(float(torch.linalg.det(box)))
    mask = torch.tensor(pbc)
    n = pos.size(0)
    i, j = (t.flatten() for t in torch.meshgrid(torch.arange(n), torch.arange(n),
                                                indexing='ij'))
    frac = pos @ torch.linalg.inv(box)
    # Every image within the cutoff is within m cells of the nearest one, per direction.
    base = torch.where(mask, torch.round(frac[i] - frac[j]), 0.0)
    reach = []
    for k in range(3):
        face = volume / float(torch.linalg.cross(box[(k + 1) % 3], box[(k + 2) % 3]).norm())
        m = math.ceil(cutoff / face) + 1 if pbc[k] else 0
        reach.append(range(-m, m + 1))
    pairs = set()
    for offset in itertools.product(*reach):
        shift = base + torch.tensor(offset, dtype=torch.float64)
        s = shift @ cell
        d = torch.linalg.vector_norm((pos[i] - pos[j]) - s, dim=-1)
        keep = (d < cutoff) & ((i != j) | (shift != 0).any(dim=1))
        for a, b, v in zip(i[keep].tolist(), j[keep].tolist(), s[keep].tolist()):
            pairs.add(canonical(a, b, v))
    return pairs


def graph_pairs(edge_index, shifts=None):
    """The first half of neighbor_pairs' edges (each pair once) as canonical pairs."""
    half = edge_index.size(1) // 2
    if shifts is None:
        shifts = torch.zeros(half, 3, dtype=torch.float64)
    found = [canonical(int(i), int(j), s.tolist())
             for (j, i), s in zip(edge_index[:, :half].T.tolist(), shifts[:half])]
    assert len(found) == len(set(found)), 'a pair was returned twice'
    return set(found)


@pytest.mark.parametrize('name', list(open_cases()))
def test_open_inputs_that_crashed_vesin(child, name):
    results = child_results(child)
    pos = open_cases()[name]
    expected = {(a, b, (0.0, 0.0, 0.0)) for a, b in brute_open(pos, CUTOFF)}
    assert graph_pairs(results[name]) == expected


def test_tensornet_on_three_atoms_2000A_apart(child):
    energy = child_results(child)['tensornet_energy']
    assert energy.shape == (1, ) and bool(torch.isfinite(energy).all())


@pytest.mark.parametrize('name', list(periodic_cases()))
def test_periodic_inputs(child, name):
    results = child_results(child)
    pos, cell, pbc = periodic_cases()[name]
    expected = brute_periodic(pos, CUTOFF, cell, pbc)
    assert graph_pairs(results[name], results[name + ':shifts']) == expected
    assert len(expected) > 0 or name == 'tiny_cell_1.5A'


def test_100k_water_molecules_in_one_call(child):
    results = child_results(child)
    # Independent check: at 5 A every molecule has exactly its three intramolecular pairs
    # (O-H 0.96 A, H-H 1.51 A) and no other, as each molecule is its own structure.
    n = 100000
    first = torch.arange(n) * 3
    low = torch.cat([first, first, first + 1])
    high = torch.cat([first + 1, first + 2, first + 2])
    expected_keys = torch.sort(low * 3 * n + high).values
    for name in ('copies', 'liquid'):
        edge_index = results['water_100k:' + name]
        low = torch.minimum(edge_index[0], edge_index[1])
        high = torch.maximum(edge_index[0], edge_index[1])
        keys = torch.sort(low * 3 * n + high).values
        assert torch.equal(keys, expected_keys), name


# In-process checks of both search methods (none of these inputs crashes vesin).

@pytest.fixture(params=['vesin', 'hashed cell list'])
def method(request, monkeypatch):
    if request.param == 'hashed cell list':
        monkeypatch.setattr(pair_search, 'vesin_grid_is_safe', lambda *args, **kwargs: False)
        # Small chunks, so that pairs straddling chunk boundaries are exercised.
        monkeypatch.setattr(pair_search, '_CHUNK', 997)
    return request.param


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_open_batched_both_methods(method, seed):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(400, 3, generator=g, dtype=torch.float64) * 15.0
    batch = torch.randint(0, 6, (400, ), generator=g)
    i, j = pair_search.open_boundary_pairs(pos, batch, 3.0)
    found = list(zip(i.tolist(), j.tolist()))
    assert len(found) == len(set(found)) and all(a < b for a, b in found)
    assert set(found) == brute_open(pos, 3.0, batch)


@pytest.mark.parametrize('pbc', [[True, True, True], [True, False, True], [False, True, True],
                                 [True, True, False]])
def test_periodic_triclinic_both_methods(method, pbc):
    cell = torch.tensor([[4.0, 0.3, 0.2], [1.2, 3.5, 0.1], [-0.7, 0.9, 3.8]],
                        dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    pos = (torch.rand(25, 3, generator=g, dtype=torch.float64) * 3.0 - 1.0) @ cell
    edge_index, shifts, _ = neighbor_pairs(pos, 3.3, cell=cell, pbc=torch.tensor(pbc))
    assert graph_pairs(edge_index, shifts) == brute_periodic(pos, 3.3, cell, pbc)


def test_batched_periodic_both_methods(method):
    # Two structures with their own cells, one of them open: pairs never cross structures.
    cells = torch.stack([torch.eye(3, dtype=torch.float64) * 5.0,
                         torch.eye(3, dtype=torch.float64) * 6.0])
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(30, 3, generator=g, dtype=torch.float64) * 5.0
    batch = torch.tensor([0] * 12 + [1] * 18)
    pbc = torch.tensor([[True, True, True], [False, False, False]])
    edge_index, shifts, _ = neighbor_pairs(pos, 2.6, batch, cell=cells, pbc=pbc)
    expected = brute_periodic(pos[:12], 2.6, cells[0], [True] * 3)
    expected |= {(a + 12, b + 12, (0.0, 0.0, 0.0)) for a, b in brute_open(pos[12:], 2.6)}
    assert graph_pairs(edge_index, shifts) == expected


def test_both_methods_agree_on_a_water_cluster(monkeypatch):
    _, pos, _ = water_box(300)
    i, j = pair_search.open_boundary_pairs(pos, torch.zeros(900, dtype=torch.long), CUTOFF)
    monkeypatch.setattr(pair_search, 'vesin_grid_is_safe', lambda *args, **kwargs: False)
    i2, j2 = pair_search.open_boundary_pairs(pos, torch.zeros(900, dtype=torch.long), CUTOFF)
    assert set(zip(i.tolist(), j.tolist())) == set(zip(i2.tolist(), j2.tolist()))
    assert i.numel() > 10000


def test_vesin_grid_criterion():
    # 2000 A x 2000 A flat at 5 A: 400 x 400 x 1 cells, rescaled to 0 cells (the crash);
    # 1500 A: 300 x 300 x 1 = 90,000 cells, no rescale.
    assert not pair_search.vesin_grid([2020.0, 2020.0, 1.01], 5.0)[1]
    assert pair_search.vesin_grid([1515.0, 1515.0, 1.01], 5.0)[1]
    assert not pair_search.vesin_grid([1.01e7, 1.01, 1.01], 5.0)[1]
    cells, safe, coarsened = pair_search.vesin_grid([1e4, 1e4, 1e4], 5.0)
    assert safe and coarsened and cells[0] * cells[1] * cells[2] <= 1e5
    # A dense cluster alone in a huge box: safe grid, but nearly all pairs would be tested.
    frac = torch.cat([torch.rand(2000, 3, dtype=torch.float64) * 1e-3,
                      torch.rand(10, 3, dtype=torch.float64)])
    assert not pair_search.vesin_grid_is_safe([1e4, 1e4, 1e4], 5.0, lambda: frac)


def test_clear_errors():
    pos = torch.tensor([[0.0, 0.0, 0.0], [float('nan'), 0.0, 1.0]])
    with pytest.raises(ValueError, match='atom 1 .* non-finite position'):
        neighbor_pairs(pos, CUTOFF)
    with pytest.raises(ValueError, match='atom 1 .* non-finite position'):
        neighbor_pairs(pos, CUTOFF, cell=torch.eye(3) * 10)
    with pytest.raises(ValueError, match='linearly dependent'):
        neighbor_pairs(torch.zeros(2, 3), CUTOFF,
                       cell=torch.tensor([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 3.0]]))
    with pytest.raises(ValueError, match='periodic images of the cell'):
        neighbor_pairs(torch.zeros(2, 3), CUTOFF, cell=torch.eye(3) * 0.01)
    with pytest.raises(ValueError, match='non-finite cell'):
        neighbor_pairs(torch.zeros(2, 3), CUTOFF, cell=torch.eye(3) * float('inf'))


def test_empty_and_single_atom():
    for n in (0, 1):
        edge_index, shifts, _ = neighbor_pairs(torch.zeros(n, 3), CUTOFF)
        assert edge_index.shape == (2, 0) and shifts is None
    # One atom in a small cell sees its own images.
    edge_index, shifts, _ = neighbor_pairs(torch.zeros(1, 3, dtype=torch.float64), 2.5,
                                           cell=torch.eye(3, dtype=torch.float64) * 2.0)
    assert edge_index.size(1) == 2 * 3 and bool((shifts.norm(dim=-1) == 2.0).all())
