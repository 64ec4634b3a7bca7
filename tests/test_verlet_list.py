"""The Verlet list (pyg_tensorpot.nn.verlet): the same pairs, energies, forces and stress as a
fresh neighbour search along MD trajectories, rebuilds exactly when an atom has moved more
than half the skin or the cell, periodicity or atoms change, and bad skins refused."""
import numpy as np
import pytest
import torch

from pyg_tensorpot import HIPNN, TensorNet
from pyg_tensorpot.nn.neighbors import neighbor_pairs
from pyg_tensorpot.nn.verlet import VerletList
from pyg_tensorpot.structures import water_box

pytestmark = pytest.mark.usefixtures('one_thread')  # small systems (conftest.py)


def pair_set(edge_index, shifts):
    # Directed edges as (j, i, rounded shift) tuples: order-free comparison.
    rows = edge_index.t().tolist()
    if shifts is None:
        return sorted((j, i) for j, i in rows)
    shift = torch.round(shifts.detach().to(torch.float64) * 1e6).long().tolist()
    return sorted((j, i, *s) for (j, i), s in zip(rows, shift))


def small_models():
    torch.manual_seed(0)
    tensornet = TensorNet(hidden_channels=16, num_layers=1, num_rbf=8, cutoff=4.0,
                          max_z=10).double().eval()
    torch.manual_seed(0)
    hipnn = HIPNN(hidden_channels=16, num_interactions=1, num_atom_layers=1,
                  num_sensitivities=8, soft_max=3.5, cutoff=4.0, max_order=2).double().eval()
    return {'tensornet': tensornet, 'hipnn-ts': hipnn}


def test_pairs_match_fresh_search_along_random_walk():
    z, pos, cell = water_box(24, seed=3)
    verlet = VerletList(cutoff=4.0, skin=0.6, self_loops=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        pos = pos + 0.08 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
        got = verlet.pairs(pos, cell=cell, z=z)
        fresh = neighbor_pairs(pos, 4.0, loop=True, cell=cell)
        assert pair_set(got.edge_index, got.shifts) == pair_set(fresh.edge_index, fresh.shifts)
        # Both directions of a pair share its row, every row is used.
        assert int(got.pair_index.max()) + 1 == got.pair_index.unique().numel()
    assert 1 < verlet.num_builds < verlet.num_calls == 12


@pytest.mark.parametrize('pbc', [(True, True, True), (True, False, True)])
def test_wrapping_atoms_into_the_cell_keeps_the_candidates(pbc):
    # A random walk wrapped back into a sheared cell every step (as TorchSim's integrators
    # do): the pairs stay those of a fresh search, and the builds are those of the same walk
    # unwrapped, since wrapping is not motion.
    z, pos, cell = water_box(24, seed=5)
    cell = cell @ torch.tensor([[1.0, 0.0, 0.0], [0.15, 1.0, 0.0], [-0.1, 0.2, 1.0]],
                               dtype=cell.dtype).T
    flags = torch.tensor(pbc)
    wrapped_list, unwrapped_list = VerletList(4.0, skin=0.6), VerletList(4.0, skin=0.6)
    generator = torch.Generator().manual_seed(2)
    inverse = torch.linalg.inv(cell)
    for _ in range(16):
        pos = pos + 0.07 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
        fractional = pos @ inverse
        wrapped = (fractional - torch.floor(fractional) * flags) @ cell
        got = wrapped_list.pairs(wrapped, cell=cell, pbc=flags, z=z)
        fresh = neighbor_pairs(wrapped, 4.0, cell=cell, pbc=flags)
        assert pair_set(got.edge_index, got.shifts) == pair_set(fresh.edge_index, fresh.shifts)
        unwrapped_list.pairs(pos, cell=cell, pbc=flags, z=z)
    assert wrapped_list.num_rebases > 0, wrapped_list
    assert wrapped_list.num_builds == unwrapped_list.num_builds < 16, (wrapped_list,
                                                                       unwrapped_list)


def test_rebuild_exactly_when_an_atom_moves_more_than_half_the_skin():
    z, pos, cell = water_box(16, seed=1)
    verlet = VerletList(cutoff=4.0, skin=1.0)
    verlet.pairs(pos, cell=cell, z=z)
    assert verlet.num_builds == 1
    direction = torch.tensor([0.6, 0.0, 0.8], dtype=pos.dtype)  # unit vector
    for step, (distance, builds) in enumerate([(0.2, 1), (0.49, 1), (0.499, 1), (0.501, 2)]):
        moved = pos.clone()
        moved[5] += distance * direction
        got = verlet.pairs(moved, cell=cell, z=z)
        assert verlet.num_builds == builds, (distance, verlet)
        fresh = neighbor_pairs(moved, 4.0, cell=cell)
        assert pair_set(got.edge_index, got.shifts) == pair_set(fresh.edge_index, fresh.shifts)
    # Displacements count from the last build: 0.3 A further on is no rebuild.
    moved[5] += 0.3 * direction
    verlet.pairs(moved, cell=cell, z=z)
    assert verlet.num_builds == 2 and verlet.num_calls == 6


def test_cell_pbc_atoms_and_species_changes_rebuild():
    z, pos, cell = water_box(16, seed=2)
    verlet = VerletList(cutoff=4.0, skin=1.0)
    verlet.pairs(pos, cell=cell, z=z)
    verlet.pairs(pos, cell=cell.clone(), z=z.clone())
    assert verlet.num_builds == 1
    strained = cell * 1.0001  # atoms move by far less than the skin, but the box changed
    got = verlet.pairs(pos, cell=strained, z=z)
    assert verlet.num_builds == 2
    fresh = neighbor_pairs(pos, 4.0, cell=strained)
    assert pair_set(got.edge_index, got.shifts) == pair_set(fresh.edge_index, fresh.shifts)
    verlet.pairs(pos, cell=strained, pbc=torch.tensor([True, True, False]), z=z)
    assert verlet.num_builds == 3
    other = z.clone()
    other[0] = 7
    verlet.pairs(pos, cell=strained, pbc=torch.tensor([True, True, False]), z=other)
    assert verlet.num_builds == 4
    verlet.pairs(pos[:-3], cell=strained, pbc=torch.tensor([True, True, False]), z=other[:-3])
    assert verlet.num_builds == 5
    verlet.pairs(pos[:-3])  # no cell any more: a molecule
    assert verlet.num_builds == 6
    verlet.reset()
    verlet.pairs(pos[:-3])
    assert verlet.num_builds == 7


def test_skin_zero_builds_every_call():
    z, pos, cell = water_box(8, seed=0)
    verlet = VerletList(cutoff=4.0, skin=0.0)
    for _ in range(3):
        verlet.pairs(pos, cell=cell, z=z)
    assert verlet.num_builds == verlet.num_calls == 3
    assert 'skin=0.0' in repr(verlet) and 'builds=3' in repr(verlet)


@pytest.mark.parametrize('skin', [-0.1, float('nan'), float('inf'), True, '1.0', None])
def test_bad_skin_is_refused(skin):
    with pytest.raises(ValueError, match='skin|Angstrom'):
        VerletList(cutoff=4.0, skin=skin)


def test_bad_cutoff_and_positions_are_refused():
    with pytest.raises(ValueError, match='cutoff'):
        VerletList(cutoff=0.0, skin=1.0)
    with pytest.raises(ValueError, match='pos'):
        VerletList(cutoff=4.0, skin=1.0).pairs(torch.zeros(4, 2))


def test_float32_pair_at_the_cutoff_matches_fresh_search():
    # Two atoms whose float32 distance straddles the cutoff by one unit in the last place:
    # the pair set is decided in float64 on the float32 values, by both searches.
    cutoff = 4.0
    below = torch.nextafter(torch.tensor(cutoff, dtype=torch.float32),
                            torch.tensor(0.0, dtype=torch.float32))
    for x in (below, torch.tensor(cutoff, dtype=torch.float32)):
        pos = torch.tensor([[0.0, 0.0, 0.0], [float(x), 0.0, 0.0], [1.0, 1.5, 0.3]],
                           dtype=torch.float32)
        verlet = VerletList(cutoff=cutoff, skin=0.5)
        got = verlet.pairs(pos)
        fresh = neighbor_pairs(pos, cutoff)
        assert pair_set(got.edge_index, None) == pair_set(fresh.edge_index, None)
        assert ((got.edge_index[0] == 1) & (got.edge_index[1] == 0)).any() == (
            bool(x < cutoff))


def _md_check(model, z, pos, cell, skin, steps, dt=0.5, batch=None):
    # A short velocity-Verlet trajectory (A, fs-like units) driven by the fresh-search forces;
    # every step, compute_properties with the Verlet list gives the same energy, forces,
    # per-atom energies and (periodic) stress as without it.
    from pyg_tensorpot import compute_properties
    generator = torch.Generator().manual_seed(1)
    velocity = 0.02 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
    verlet = VerletList(model.cutoff, skin, model.self_loops, model.max_num_neighbors)
    properties = ('energy', 'forces') + (('stress', ) if cell is not None else ())
    worst = 0.0
    for _ in range(steps):
        ref = compute_properties(model, z, pos, batch=batch, cell=cell, properties=properties)
        got = compute_properties(model, z, pos, batch=batch, cell=cell, properties=properties,
                                 neighbors=verlet)
        for key in properties:
            worst = max(worst, float((got[key] - ref[key]).abs().max() /
                                     ref[key].abs().max()))
        f_ref = ref['forces']
        velocity = velocity + dt * f_ref * 0.01
        pos = pos + dt * velocity
    # Per-atom energies through the reused list as well (the last geometry).
    ref = compute_properties(model, z, pos, batch=batch, cell=cell, properties=('energies', ))
    got = compute_properties(model, z, pos, batch=batch, cell=cell, properties=('energies', ),
                             neighbors=verlet)
    worst = max(worst, float((got['energies'] - ref['energies']).abs().max() /
                             ref['energies'].abs().max()))
    return worst, verlet


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
def test_md_trajectory_periodic_water_box_matches_fresh_search(name):
    model = small_models()[name]
    z, pos, cell = water_box(16, seed=0)
    worst, verlet = _md_check(model, z, pos, cell, skin=0.3, steps=12)
    assert worst < 1e-12, worst
    assert 1 < verlet.num_builds < verlet.num_calls, verlet


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
def test_md_trajectory_molecule_matches_fresh_search(name):
    from model_factories import ETHANOL_POS, ETHANOL_Z  # tests/ is on sys.path
    model = small_models()[name]
    z, pos = ETHANOL_Z, ETHANOL_POS
    worst, verlet = _md_check(model, z, pos, None, skin=0.3, steps=12)
    assert worst < 1e-12, worst
    assert verlet.num_builds < verlet.num_calls, verlet


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
def test_md_trajectory_batch_of_molecules_matches_fresh_search(name):
    from model_factories import ETHANOL_POS, ETHANOL_Z  # tests/ is on sys.path
    model = small_models()[name]
    z = torch.cat([ETHANOL_Z, ETHANOL_Z])
    pos = torch.cat([ETHANOL_POS, ETHANOL_POS + torch.tensor([0.1, -0.2, 0.05],
                                                               dtype=ETHANOL_POS.dtype)])
    batch = torch.repeat_interleave(torch.arange(2), ETHANOL_Z.numel())
    worst, verlet = _md_check(model, z, pos, None, skin=0.3, steps=8, batch=batch)
    assert worst < 1e-12, worst
    assert verlet.num_builds < verlet.num_calls, verlet


def test_compute_properties_refuses_a_foreign_verlet_list():
    from pyg_tensorpot import compute_properties
    from pyg_tensorpot.models.ensemble import Ensemble
    from model_factories import ETHANOL_POS, ETHANOL_Z  # tests/ is on sys.path
    model = small_models()['tensornet']
    with pytest.raises(ValueError, match='was not made for this model'):
        compute_properties(model, ETHANOL_Z, ETHANOL_POS,
                           neighbors=VerletList(model.cutoff + 1.0, skin=0.5))
    with pytest.raises(ValueError, match='needs a model of the package'):
        compute_properties(Ensemble([model, model]), ETHANOL_Z, ETHANOL_POS,
                           neighbors=VerletList(model.cutoff, skin=0.5))
    with pytest.raises(ValueError, match='either edge_index or neighbors'):
        compute_properties(model, ETHANOL_Z, ETHANOL_POS,
                           edge_index=torch.tensor([[0, 1], [1, 0]]),
                           neighbors=VerletList(model.cutoff, skin=0.5))
    with pytest.raises(TypeError, match='must be a pyg_tensorpot.nn.VerletList'):
        compute_properties(model, ETHANOL_Z, ETHANOL_POS, neighbors='skin')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_verlet_list_on_cuda_matches_cpu():
    z, pos, cell = water_box(32, seed=4)
    verlet = VerletList(cutoff=4.0, skin=0.5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        pos = pos + 0.05 * torch.randn(pos.shape, generator=generator, dtype=pos.dtype)
        got = verlet.pairs(pos.cuda(), cell=cell.cuda(), z=z.cuda())
        assert got.edge_index.device.type == 'cuda' and got.shifts.device.type == 'cuda'
        fresh = neighbor_pairs(pos, 4.0, cell=cell)
        assert pair_set(got.edge_index.cpu(), got.shifts.cpu()) == pair_set(
            fresh.edge_index, fresh.shifts)
    assert 1 <= verlet.num_builds <= verlet.num_calls == 4


def test_calculator_with_skin_matches_fresh_calculator_in_nve():
    ase = pytest.importorskip('ase')
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    from pyg_tensorpot.calculator import TensorPotCalculator
    z, pos, cell = water_box(16, seed=0)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(scale=0.01, size=(len(atoms), 3)))
    reference = atoms.copy()
    model = small_models()['tensornet']
    atoms.calc = TensorPotCalculator(model, skin=0.5)
    reference.calc = TensorPotCalculator(model)
    dynamics = VelocityVerlet(atoms, 1.0 * units.fs)
    for _ in range(8):
        dynamics.run(1)
        reference.positions = atoms.positions
        for prop in ('get_potential_energy', 'get_forces', 'get_stress'):
            got, want = getattr(atoms, prop)(), getattr(reference, prop)()
            assert np.abs(np.asarray(got) - want).max() <= 1e-12 * np.abs(want).max()
    assert atoms.calc.verlet.num_builds < atoms.calc.verlet.num_calls
    assert ase is not None
