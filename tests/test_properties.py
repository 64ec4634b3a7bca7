"""The model contract and the one property function: forces, stress, virial, per-atom energies
and the Hessian by autograd, against finite differences, for every kind of model (float64)."""
import importlib.util
import os

import pytest
import torch

from pyg_tensorpot import HIPNN, TensorNet, compute_properties
from pyg_tensorpot.structures import water_box

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'examples')


def _custom_model():
    spec = importlib.util.spec_from_file_location('custom_tensor_model',
                                                  os.path.join(EXAMPLES,
                                                               'custom_tensor_model.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TinyTensorPotential(hidden=8, num_rbf=8, cutoff=3.0)


FACTORIES = {
    'tensornet': lambda: TensorNet(hidden_channels=8, num_layers=2, num_rbf=8, cutoff=3.0),
    'tensornet-so3': lambda: TensorNet(hidden_channels=8, num_layers=1, num_rbf=8, cutoff=3.0,
                                       equivariance='SO(3)'),
    'hipnn-ts': lambda: HIPNN(hidden_channels=8, num_interactions=1, num_sensitivities=6,
                              soft_min=0.75, soft_max=2.5, cutoff=3.0, elements=[1, 8],
                              max_order=2),
    'hipnn': lambda: HIPNN(hidden_channels=8, num_interactions=1, num_sensitivities=6,
                           soft_min=0.75, soft_max=2.5, cutoff=3.0, elements=[1, 8]),
    'custom': _custom_model,
}


def make(name, atomref=False, mean=0.0):
    torch.manual_seed(3)
    model = FACTORIES[name]().double().eval()
    model.set_standardization(mean, 1.7)
    if atomref:
        # Large reference energies enter energies, not derivatives (finite differences of
        # energies of ~-6,000 eV would lose 1e-8 to rounding, so those tests go without).
        model.set_atomref({1: -13.6, 8: -2041.0})
    return model


def small_box(triclinic: bool):
    z, pos, cell = water_box(8, seed=1)
    if triclinic:
        skew = torch.tensor([[1.0, 0.0, 0.0], [0.21, 1.0, 0.0], [-0.13, 0.17, 1.0]],
                            dtype=torch.float64)
        frac = pos @ torch.linalg.inv(cell)
        cell = skew @ cell
        pos = frac @ cell
    return z, pos, cell


def central_difference(function, h):
    # Fourth-order stencil, truncation error O(h^4). HIP-NN-TS's narrow sensitivity functions
    # have large high derivatives: measured on the Hessian test, the error is 4e-9 at
    # h = 3e-5, 5e-7 at 1e-4 and 4e-5 at 3e-4, so the tests use h = 2e-5.
    return (-function(2 * h) + 8 * function(h) - 8 * function(-h) + function(-2 * h)) / (12 * h)


def strained_energy(model, z, pos, cell, strain):
    deform = torch.eye(3, dtype=torch.float64) + strain
    with torch.no_grad():
        return float(model(z, pos @ deform, cell=cell @ deform))


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
@pytest.mark.parametrize('triclinic', [False, True], ids=['orthorhombic', 'triclinic'])
def test_stress_is_strain_derivative(name, triclinic):
    model = make(name)
    z, pos, cell = small_box(triclinic)
    out = compute_properties(model, z, pos, cell=cell,
                             properties=['energy', 'stress', 'virial'])
    volume = float(torch.linalg.det(cell).abs())
    numeric = torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            direction = torch.zeros(3, 3, dtype=torch.float64)
            direction[a, b] += 0.5
            direction[b, a] += 0.5
            numeric[a, b] = central_difference(
                lambda t: strained_energy(model, z, pos, cell, t * direction), 2e-5) / volume
    stress = out['stress'][0]
    assert float(stress.abs().max()) > 1e-4  # a meaningful (non-zero) stress
    torch.testing.assert_close(stress, numeric, rtol=1e-6, atol=1e-6 * float(numeric.abs().max()))
    torch.testing.assert_close(stress, stress.T, rtol=0, atol=1e-15)
    torch.testing.assert_close(out['virial'][0], -stress * volume)


# The package's own model kinds: tests/test_model_contract.py; here the example's model.
@pytest.mark.parametrize('name', ['custom'])
def test_forces_are_minus_gradient(name):
    model = make(name)
    z, pos, cell = small_box(False)
    z, pos = z[:9], pos[:9]  # three molecules
    out = compute_properties(model, z, pos)
    for atom, axis in [(0, 0), (4, 1), (8, 2)]:
        def energy(t):
            moved = pos.clone()
            moved[atom, axis] += t
            return float(model(z, moved))
        numeric = -central_difference(energy, 2e-5)
        assert abs(float(out['forces'][atom, axis]) - numeric) < 1e-8 * max(1.0, abs(numeric))


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
def test_hessian_symmetric_and_matches_force_differences(name):
    model = make(name)
    z, pos, _ = small_box(False)
    z, pos = z[:6], pos[:6]
    out = compute_properties(model, z, pos, properties=['energy', 'forces', 'hessian'])
    hessian = out['hessian']
    assert hessian.shape == (18, 18)
    torch.testing.assert_close(hessian, hessian.T, rtol=1e-9, atol=1e-10)
    for a in (0, 4, 11, 17):
        def forces(t):
            moved = pos.clone().reshape(-1)
            moved[a] += t
            return compute_properties(model, z, moved.reshape(-1, 3))['forces'].reshape(-1)
        numeric = -central_difference(forces, 2e-5)
        torch.testing.assert_close(hessian[:, a], numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('name', list(FACTORIES))
def test_per_atom_energies_sum_to_energy(name):
    model = make(name, atomref=True, mean=0.5)
    z, pos, cell = small_box(True)
    batch = torch.zeros_like(z)
    batch[12:] = 1
    out = compute_properties(model, z, pos, batch, properties=['energy', 'energies'])
    direct = model(z, pos, batch)
    assert out['energies'].shape == z.shape and out['energies'].dtype == torch.float64
    torch.testing.assert_close(out['energy'], direct, rtol=1e-13, atol=1e-10)


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
@pytest.mark.parametrize('num_molecules', [1, 27], ids=['short-cell', 'long-cell'])
def test_energy_per_atom_equals_supercell(name, num_molecules):
    # One water: a 3.1 A cell, about half of twice the 3 A cutoff, where every atom sees
    # several images of itself; 27 waters: 9.3 A. The model's mean is a per-structure
    # constant (as in torchmd-net), so it is 0 here.
    model = make(name, atomref=True)
    z, pos, cell = water_box(num_molecules, seed=2)
    energy = compute_properties(model, z, pos, cell=cell, properties=['energy', 'stress'])
    shifts = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing='ij'), -1)
    shifts = shifts.reshape(-1, 3).to(torch.float64) @ cell
    big_pos = (pos.unsqueeze(0) + shifts.unsqueeze(1)).reshape(-1, 3)
    big = compute_properties(model, z.repeat(8), big_pos, cell=2 * cell,
                             properties=['energy', 'stress'])
    per_atom = energy['energy'] / z.numel()
    assert abs(float(big['energy'] / big_pos.size(0) - per_atom)) <= 1e-9 * abs(float(per_atom))
    torch.testing.assert_close(big['stress'], energy['stress'], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts'])
def test_atoms_outside_the_cell_need_no_wrapping(name):
    model = make(name)
    z, pos, cell = small_box(True)
    moved = pos.clone()
    moved[::4] += cell[0] * 2 - cell[2]  # whole lattice vectors: the same periodic system
    moved[1::5] -= 3 * cell[1]
    a = compute_properties(model, z, pos, cell=cell, properties=['energy', 'forces', 'stress'])
    b = compute_properties(model, z, moved, cell=cell,
                           properties=['energy', 'forces', 'stress'])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-10)


def test_one_positional_order_for_every_model():
    z, pos, cell = small_box(False)
    pbc = torch.tensor([True, True, True])
    charge = torch.tensor([0.0], dtype=torch.float64)
    for name in FACTORIES:
        model = make(name)
        by_position = model(z, pos, None, None, cell, pbc, charge)
        by_keyword = model(z=z, pos=pos, cell=cell, pbc=pbc, total_charge=charge)
        assert torch.equal(by_position, by_keyword), name


@pytest.mark.parametrize('name', ['tensornet', 'hipnn-ts', 'custom'])
def test_caller_graph_in_any_order_gives_the_same_energy(name):
    model = make(name)
    z, pos, _ = small_box(False)
    z, pos = z[:12], pos[:12]
    own = compute_properties(model, z, pos)
    distance = torch.cdist(pos, pos)
    edges = ((distance < model.cutoff) & (distance > 0)).nonzero().T
    shuffled = edges[:, torch.randperm(edges.size(1), generator=torch.Generator().manual_seed(0))]
    given = compute_properties(model, z, pos, edge_index=shuffled.flip(0))
    torch.testing.assert_close(given['energy'], own['energy'], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(given['forces'], own['forces'], rtol=1e-10, atol=1e-12)


def test_data_and_batch_inputs():
    from torch_geometric.data import Batch, Data
    model = make('tensornet')
    z, pos, cell = small_box(True)
    data = Data(z=z, pos=pos, cell=cell.unsqueeze(0), pbc=torch.ones(1, 3, dtype=torch.bool))
    single = compute_properties(model, data, properties=['energy', 'stress'])
    direct = compute_properties(model, z, pos, cell=cell, properties=['energy', 'stress'])
    torch.testing.assert_close(single['stress'], direct['stress'])
    batch = Batch.from_data_list([data, data])
    both = compute_properties(model, batch, properties=['energy', 'stress'])
    torch.testing.assert_close(both['energy'], direct['energy'].repeat(2))
    torch.testing.assert_close(both['stress'], direct['stress'].repeat(2, 1, 1))


def test_graph_kept_only_when_asked():
    model = make('tensornet')
    z, pos, _ = small_box(False)
    out = compute_properties(model, z, pos)
    assert not out['forces'].requires_grad
    kept = compute_properties(model, z, pos, create_graph=True)
    assert kept['forces'].requires_grad  # a force loss can backpropagate
    model.train()
    assert compute_properties(model, z, pos)['forces'].requires_grad


@pytest.mark.parametrize('case, message', [
    ('zero-volume', 'zero volume'),
    ('pbc-without-cell', 'without a cell'),
    ('nan-cell', 'NaN'),
    ('stress-molecule', 'not defined'),
    ('stress-no-periodic-direction', 'non-periodic'),
    ('bad-cell-shape', 'cell must have shape'),
    ('unknown-property', 'unknown properties'),
    ('duplicate-edges', 'duplicate edges'),
    ('edges-across-structures', 'different structures'),
    ('bad-total-charge', 'total_charge'),
])
def test_bad_input_gets_a_clear_error(case, message):
    model = make('tensornet')
    z, pos, cell = small_box(False)
    kwargs, properties = {}, ['energy', 'forces']
    if case == 'zero-volume':
        kwargs['cell'] = torch.tensor([[6.0, 0, 0], [0, 6.0, 0], [6.0, 6.0, 0]],
                                      dtype=torch.float64)
    elif case == 'pbc-without-cell':
        kwargs['pbc'] = torch.tensor([True, False, False])
    elif case == 'nan-cell':
        kwargs['cell'] = cell.clone().fill_diagonal_(float('nan'))
    elif case == 'stress-molecule':
        properties = ['stress']
    elif case == 'stress-no-periodic-direction':
        kwargs.update(cell=cell, pbc=False)
        properties = ['stress']
    elif case == 'bad-cell-shape':
        kwargs['cell'] = cell[:2]
    elif case == 'unknown-property':
        properties = ['magnetisation']
    elif case == 'duplicate-edges':
        kwargs['edge_index'] = torch.tensor([[0, 0, 1], [1, 1, 0]])
    elif case == 'edges-across-structures':
        batch = torch.zeros_like(z)
        batch[3:] = 1
        kwargs.update(batch=batch, edge_index=torch.tensor([[0, 4], [4, 0]]))
    elif case == 'bad-total-charge':
        kwargs['total_charge'] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        compute_properties(model, z, pos, properties=properties, **kwargs)


def test_float32_energies_summed_in_float64():
    # The per-element reference energies (about -2,041 eV here) are large: in float32 they
    # alone would carry an error of ~1e-4 eV per atom. The model keeps them in float64.
    model64 = make('tensornet', atomref=True)
    model32 = make('tensornet', atomref=True).float()
    assert model32.atomref.dtype == torch.float64 and model32.dtype == torch.float32
    z, pos, cell = water_box(125, seed=4)
    e64 = compute_properties(model64, z, pos, cell=cell, properties=['energy'])['energy']
    e32 = compute_properties(model32, z, pos.float(), cell=cell.float(),
                             properties=['energy'])['energy']
    assert e32.dtype == torch.float64
    # Only the network's own float32 rounding remains: ~1e-7 eV per atom, random in sign.
    assert abs(float(e32 - e64)) < 1e-3


def test_total_charge_reaches_the_model_from_a_batch():
    # SPICE stores the total charge of each structure as `charge`; other data as
    # `total_charge`. Both reach TensorNet's (1 + 0.1 Q) factor.
    from torch_geometric.data import Batch, Data
    model = make('tensornet')
    z, pos, _ = small_box(False)
    z, pos = z[:6], pos[:6]
    charges = torch.tensor([1.0, -1.0], dtype=torch.float64)
    explicit = compute_properties(model, torch.cat([z, z]), torch.cat([pos, pos]),
                                  torch.tensor([0] * 6 + [1] * 6), total_charge=charges)
    neutral = compute_properties(model, z, pos)
    for key in ('charge', 'total_charge'):
        batch = Batch.from_data_list([Data(z=z, pos=pos, **{key: charges[i:i + 1]})
                                      for i in range(2)])
        out = compute_properties(model, batch)
        torch.testing.assert_close(out['energy'], explicit['energy'])
        assert float((out['energy'] - neutral['energy']).abs().min()) > 1e-8


def test_regularization_terms_come_from_the_model_contract():
    # HIP-NN adds its two penalty terms, from the same pass as the energy and its forces;
    # TensorNet declares none.
    z, pos, _ = small_box(False)
    model = make('hipnn-ts')
    out = compute_properties(model, z, pos, regularization=True)
    assert {key for key in out if key.startswith('regularization.')} == {
        'regularization.hierarchicality', 'regularization.l2'}
    plain = compute_properties(model, z, pos)
    torch.testing.assert_close(out['energy'], plain['energy'], rtol=0, atol=0)
    torch.testing.assert_close(out['forces'], plain['forces'], rtol=0, atol=0)
    torch.testing.assert_close(out['regularization.l2'], model.l2_penalty().detach())
    tensornet = compute_properties(make('tensornet'), z, pos, regularization=True)
    assert sorted(tensornet) == ['energy', 'forces']
    with pytest.raises(ValueError, match='two calls'):
        compute_properties(model, z, pos, properties=['energies'], regularization=True)


def test_per_atom_energies_of_a_plain_module_get_a_clear_error():
    from pyg_tensorpot import Ensemble

    class Totals(torch.nn.Module):
        # Follows the forward contract but is not an AtomisticModel.
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, z, pos, batch):
            return self.scale * pos.square().sum().reshape(1)

    z, pos, _ = small_box(False)
    assert compute_properties(Totals(), z, pos)['energy'].shape == (1, )
    for model in (Totals(), Ensemble([make('tensornet'), Totals()])):
        with pytest.raises(ValueError, match='returns only the total energy'):
            compute_properties(model, z, pos, properties=['energies'])
    committee = Ensemble([make('tensornet'), make('hipnn')])
    out = compute_properties(committee, z, pos, properties=['energy', 'energies'])
    torch.testing.assert_close(out['energies'].sum(), out['energy'].sum(), rtol=1e-12,
                               atol=1e-9)
