"""TensorNet-specific properties: caller graphs, standardisation, heads, periodic images and
input validation. Symmetries, batching, forces and float32 of every model kind:
tests/test_model_contract.py."""
import math

import pytest
import torch

from pyg_tensorpot import TensorNet
from pyg_tensorpot.nn import neighbor_pairs

from model_factories import ETHANOL_POS, ETHANOL_Z, WATER_POS, WATER_Z  # noqa: E402


def random_rotation(seed, proper=True):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if not proper:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


def make_model(equivariance='O(3)', output='energy', **kwargs):
    torch.manual_seed(0)
    model = TensorNet(hidden_channels=16, num_layers=2, num_rbf=8, cutoff=4.0,
                      equivariance=equivariance, output=output, **kwargs).double()
    # Leave the initialisation so that every parameter (LayerNorm affine too) matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def two_molecules():
    pos = torch.cat([ETHANOL_POS, WATER_POS + torch.tensor([10.0, 0.0, 0.0],
                                                          dtype=torch.float64)])
    z = torch.cat([ETHANOL_Z, WATER_Z])
    batch = torch.tensor([0] * 9 + [1] * 3)
    return z, pos, batch


def test_caller_supplied_edge_index():
    model = make_model()
    z, pos, batch = two_molecules()
    reference = model(z, pos, batch)
    # No self-loops: the model adds them.
    edge_index = neighbor_pairs(pos, model.cutoff, batch).edge_index
    torch.testing.assert_close(model(z, pos, batch, edge_index=edge_index), reference,
                               rtol=1e-13, atol=1e-13)
    # A graph with extra pairs beyond the cutoff gives the same energy (the envelope is 0).
    full = torch.combinations(torch.arange(9), 2).T
    full = torch.cat([full, full.flip(0)], dim=1)
    torch.testing.assert_close(model(ETHANOL_Z, ETHANOL_POS, edge_index=full),
                               reference[:1], rtol=1e-13, atol=1e-13)


def test_standardisation_and_atomref():
    model = make_model()
    z, pos, batch = two_molecules()
    base = model(z, pos, batch)
    atomic = model.atomic_energies(z, pos, batch)  # mean 0, std 1, no atomref yet
    model.set_standardization(mean=-2.0, std=3.0)
    model.set_atomref({1: -0.5, 6: -37.8, 8: -75.0})
    ref = {1: -0.5, 6: -37.8, 8: -75.0}
    shift = torch.tensor([sum(ref[int(v)] for v in z[batch == b]) for b in range(2)],
                         dtype=torch.float64)
    sums = torch.zeros(2, dtype=torch.float64).index_add_(0, batch, atomic)
    torch.testing.assert_close(model(z, pos, batch), -2.0 + 3.0 * sums + shift)
    torch.testing.assert_close(base, sums)
    with pytest.raises(ValueError, match='std must be positive'):
        model.set_standardization(0.0, 0.0)


def test_training_graph_for_force_loss():
    model = make_model().train()
    z, pos, batch = two_molecules()
    energy, forces = model.energy_and_forces(z, pos, batch)
    assert forces.requires_grad  # create_graph follows model.training
    loss = energy.square().mean() + forces.square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    _, forces = model.energy_and_forces(z, pos, batch)
    assert not forces.requires_grad


def test_periodic_cell_matches_explicit_images():
    model = make_model()
    cell = torch.eye(3, dtype=torch.float64) * 4.2
    z = torch.tensor([8, 1, 1])
    pos = WATER_POS + 1.0
    periodic = model(z, pos, cell=cell)
    # Same energy from an explicit supercell: the embedding and two interactions see three
    # neighbour shells, so 7x7x7 copies; the centre copy's atomic energies are summed.
    shifts = torch.stack(torch.meshgrid(*[torch.arange(-3, 4)] * 3, indexing='ij'), -1)
    shifts = shifts.reshape(-1, 3).to(torch.float64) @ cell
    big_pos = (pos.unsqueeze(0) + shifts.unsqueeze(1)).reshape(-1, 3)
    big_z = z.repeat(len(shifts))
    centre = int((shifts.abs().sum(-1) == 0).nonzero())
    atomic = model.atomic_energies(big_z, big_pos).reshape(len(shifts), 3)[centre]
    torch.testing.assert_close(periodic, atomic.sum().reshape(1), rtol=1e-11, atol=1e-11)


def test_dipole_head_equivariant_and_origin_free():
    model = make_model(output='dipole')
    z, pos, batch = two_molecules()
    mu = model(z, pos, batch)
    assert mu.shape == (2, 3)
    rot = random_rotation(4)
    mirror = random_rotation(5, proper=False)
    torch.testing.assert_close(model(z, pos @ rot.T + 3.0, batch), mu @ rot.T, rtol=1e-10,
                               atol=1e-12)
    # A dipole is a polar vector: it follows reflections too.
    torch.testing.assert_close(model(z, pos @ mirror.T, batch), mu @ mirror.T, rtol=1e-10,
                               atol=1e-12)


def test_polarizability_head_is_symmetric_rank2():
    model = make_model(output='polarizability')
    z, pos, batch = two_molecules()
    alpha = model(z, pos, batch)
    assert alpha.shape == (2, 3, 3)
    torch.testing.assert_close(alpha, alpha.transpose(1, 2))
    rot = random_rotation(6, proper=False)
    torch.testing.assert_close(model(z, pos @ rot.T - 1.0, batch), rot @ alpha @ rot.T,
                               rtol=1e-10, atol=1e-12)


def test_bad_input_fails_clearly():
    model = make_model(max_z=20)
    with pytest.raises(ValueError, match=r'unknown element Ca \(Z=20\)'):
        model(torch.tensor([20, 1]), torch.tensor([[0.0, 0, 0], [1.0, 0, 0]],
                                                  dtype=torch.float64))
    nan_pos = ETHANOL_POS.clone()
    nan_pos[4, 1] = math.nan
    with pytest.raises(ValueError, match=r'NaN or infinite values \(atoms \[4\]\)'):
        model(ETHANOL_Z, nan_pos)
    close = ETHANOL_POS.clone()
    close[3] = close[0] + 0.05
    with pytest.raises(ValueError, match='atoms 3 and 0 are 0.0500 A apart|atoms 0 and 3'):
        model(ETHANOL_Z, close)
    with pytest.raises(ValueError, match=r'pos must have shape \[num_atoms, 3\]'):
        model(ETHANOL_Z, ETHANOL_POS[:, :2])
    with pytest.raises(ValueError, match='z has 9 atoms but pos has 8 rows'):
        model(ETHANOL_Z, ETHANOL_POS[:8])
    with pytest.raises(TypeError, match='integer tensor'):
        model(ETHANOL_Z.double(), ETHANOL_POS)
    with pytest.raises(ValueError, match='atomic numbers must be positive'):
        model(torch.tensor([0, 1]), ETHANOL_POS[:2])
    with pytest.raises(ValueError, match='batch must have shape'):
        model(ETHANOL_Z, ETHANOL_POS, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='edge_index refers to atoms outside'):
        model(ETHANOL_Z, ETHANOL_POS, edge_index=torch.tensor([[0], [12]]))
    with pytest.raises(ValueError, match="output must be one of"):
        TensorNet(output='charges')
    with pytest.raises(ValueError, match="equivariance must be 'O\\(3\\)' or 'SO\\(3\\)'"):
        TensorNet(equivariance='E(3)')


def test_neighbour_budget_is_an_error_not_a_drop():
    model = make_model(max_num_neighbors=4)
    with pytest.raises(ValueError, match='max_num_neighbors=4'):
        model(ETHANOL_Z, ETHANOL_POS)


def test_parameter_count_matches_closed_form():
    # TENSORNET.md 1.8: ANI-1x configuration without a prior: 769,921 parameters.
    model = TensorNet(hidden_channels=128, num_layers=2, num_rbf=32, cutoff=4.5, max_z=128)
    assert sum(p.numel() for p in model.parameters()) == 769_921
    model = TensorNet(hidden_channels=256, num_layers=3, num_rbf=32, cutoff=5.0, max_z=128)
    assert sum(p.numel() for p in model.parameters()) == 3_925_249


def test_repr_and_reset():
    model = make_model()
    assert 'TensorNet(hidden_channels=16, num_layers=2' in repr(model)
    assert repr(model.interactions[0]) == 'TensorInteraction(16, num_rbf=8, equivariance=O(3))'
    assert repr(model.embedding) == 'TensorEmbedding(16, num_rbf=8, max_z=128, cutoff=4.0)'
    before = model.embedding.radial_projection.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.embedding.radial_projection.weight)
    bound = 1 / math.sqrt(8)
    assert model.embedding.radial_projection.weight.abs().max() <= bound


def test_torch_compile_matches_eager():
    model = make_model()
    z, pos, batch = two_molecules()
    expected_e, expected_f = model.energy_and_forces(z, pos, batch)
    compiled = torch.compile(model, backend='aot_eager', dynamic=True)
    energy, forces = TensorNet.energy_and_forces(compiled, z, pos, batch)
    torch.testing.assert_close(energy, expected_e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(forces, expected_f, rtol=1e-12, atol=1e-12)
