"""HIP-NN / HIP-NN-TS layers and model: sizes, layer forms, second derivatives, errors.
Symmetries, batching and forces of every model kind: tests/test_model_contract.py."""
import math

import pytest
import torch
from torch_geometric.data import Data

from pyg_tensorpot import HIPNN, TensorNet
from pyg_tensorpot.nn import (
    HIPNNInteraction,
    HierarchicalEnergyHead,
    InverseGaussianSensitivity,
    OnSiteLayer,
    SpeciesOneHot,
    hierarchicality,
    neighbor_pairs,
)
from pyg_tensorpot.nn.neighbors import edge_vectors

ORDERS = [0, 1, 2]

# Water and methanol (Angstrom).
WATER_Z = [8, 1, 1]
WATER_POS = [[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]]
METHANOL_Z = [6, 8, 1, 1, 1, 1]
METHANOL_POS = [[-0.0468, 0.6637, 0.0], [-0.0468, -0.7571, 0.0], [-1.0858, 0.9725, 0.0],
                [0.4375, 1.0761, 0.8906], [0.4375, 1.0761, -0.8906],
                [0.8614, -1.0895, 0.0]]


def small_model(max_order=0, **kwargs):
    defaults = dict(hidden_channels=8, num_interactions=2, num_atom_layers=1,
                    num_sensitivities=5, soft_min=0.75, soft_max=3.5, cutoff=4.0,
                    max_order=max_order)
    defaults.update(kwargs)
    return HIPNN(**defaults).double()


def two_molecules():
    z = torch.tensor(WATER_Z + METHANOL_Z)
    pos = torch.tensor(WATER_POS + [[p[0] + 6.0, p[1], p[2] + 1.0] for p in METHANOL_POS],
                       dtype=torch.float64)
    batch = torch.tensor([0] * 3 + [1] * 6)
    return z, pos, batch


def closed_form(S, F, K, N, M):
    """HIPNN.md 1.8: resnet=True parameter count."""
    first = K * F * S + (S * F + F) + 2 * K + (F * F + F) + S * F + M * 2 * (F * F + F)
    later = K * F * F + (F * F + F) + 2 * K + (F * F + F) + M * 2 * (F * F + F)
    return first + (N - 1) * later + S + N * (F + 1)


@pytest.mark.parametrize('width,counts', [
    (20, (16206, 16246, 16286)),
    (64, (150230, 150358, 150486)),
    (128, (587094, 587350, 587606)),
    (256, (2320982, 2321494, 2322006)),
])
def test_parameter_counts(width, counts):
    assert closed_form(4, width, 20, 2, 3) == counts[0]
    for order, expected in zip(ORDERS, counts):
        model = HIPNN(hidden_channels=width, max_order=order)
        assert sum(p.numel() for p in model.parameters()) == expected
        assert expected - counts[0] == order * width * 2


def test_plain_form_parameter_count():
    S, F, K, N, M = 4, 16, 6, 2, 2
    model = HIPNN(hidden_channels=F, num_interactions=N, num_atom_layers=M,
                  num_sensitivities=K, residual=False)
    first = K * F * S + S * F + F + 2 * K + M * (F * F + F)
    later = K * F * F + F * F + F + 2 * K + M * (F * F + F)
    assert sum(p.numel() for p in model.parameters()) == first + later + S + N * (F + 1)


def test_sensitivity_initialisation_and_values():
    sens = InverseGaussianSensitivity(20, 0.75, 5.5, 6.5).double()
    assert sens.mu[0].item() == pytest.approx(5.5)
    assert sens.mu[-1].item() == pytest.approx(0.75)
    assert torch.allclose(sens.sigma, torch.full((20, ), 30.0, dtype=torch.float64))
    inverse = 1.0 / sens.mu
    assert torch.allclose(inverse[1:] - inverse[:-1], torch.full((19, ), (1 / 0.75 - 1 / 5.5) /
                                                                 19, dtype=torch.float64))
    r = torch.tensor([1.0, 3.0, 6.4, 6.5, 7.0], dtype=torch.float64)
    mu, sigma = sens.mu[4], sens.sigma[4]
    expected = torch.exp(-0.5 * sigma**2 * (1 / r - 1 / mu)**2) * torch.cos(
        math.pi * r / 13.0)**2 * (r <= 6.5)
    torch.testing.assert_close(sens(r)[:, 4], expected)
    assert sens(r)[-1].abs().max() == 0


def test_one_hot_species():
    onehot = SpeciesOneHot([1, 6, 7, 8])
    x = onehot(torch.tensor([8, 1, 6, 7]), torch.float64)
    assert x.dtype == torch.float64
    assert x.argmax(-1).tolist() == [3, 0, 1, 2] and x.sum().item() == 4
    with pytest.raises(ValueError, match=r'unknown element Cl \(Z=17\): this model only knows '
                       r'H, C, N, O'):
        onehot(torch.tensor([1, 17]))


@pytest.mark.parametrize('max_order', ORDERS)
def test_contraction_orders_agree(max_order):
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    edge_vec, edge_weight = edge_vectors(pos, edge_index)
    for in_channels in (4, 12):
        x = torch.randn(z.numel(), in_channels, dtype=torch.float64)
        layer = HIPNNInteraction(in_channels, 10, 5, 0.75, 3.5, 4.0, max_order).double()
        out = {}
        for contraction in ('project_first', 'environment_first'):
            layer.contraction = contraction
            out[contraction] = layer(x, edge_index, edge_weight, edge_vec)
        torch.testing.assert_close(out['project_first'], out['environment_first'])


def test_interaction_layer_matches_direct_sum():
    """The weight-tied tensor sensitivities, summed pair by pair."""
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    edge_vec, edge_weight = edge_vectors(pos, edge_index)
    x = torch.randn(z.numel(), 3, dtype=torch.float64)
    layer = HIPNNInteraction(3, 4, 5, 0.75, 3.5, 4.0, max_order=2, cusp_reg=1e-6).double()
    out = layer(x, edge_index, edge_weight, edge_vec)
    V = layer.weight.detach()
    for i in range(z.numel()):
        m0 = torch.zeros(4, dtype=torch.float64)
        m1 = torch.zeros(3, 4, dtype=torch.float64)
        m2 = torch.zeros(3, 3, 4, dtype=torch.float64)
        for e in (edge_index[1] == i).nonzero().flatten().tolist():
            j = int(edge_index[0, e])
            rij = pos[j] - pos[i]
            r = rij.norm()
            unit = rij / r
            c = torch.einsum('v,vgf,f->g', layer.sensitivity(r[None])[0].detach(), V, x[j])
            m0 += c
            m1 += unit[:, None] * c
            quad = torch.outer(unit, unit) - torch.eye(3, dtype=torch.float64) / 3
            m2 += quad[:, :, None] * c
        expected = (m0 + layer.scale[0] * torch.sqrt((m1**2).sum(0) + 1e-6) +
                    layer.scale[1] * torch.sqrt((m2**2).sum((0, 1)) + 1e-6) +
                    layer.lin_self(x[i]))
        torch.testing.assert_close(out[i], expected.detach())


def test_second_derivatives_for_force_training():
    """Forces are differentiable again (gradcheck of the forces = Hessian check)."""
    model = small_model(2, hidden_channels=4, num_sensitivities=3)
    z = torch.tensor(WATER_Z + [1])
    pos = torch.tensor(WATER_POS + [[1.2, 1.4, 0.8]], dtype=torch.float64)

    def forces(p):
        (gradient, ) = torch.autograd.grad(model(z, p).sum(), p, create_graph=True)
        return -gradient

    assert torch.autograd.gradcheck(forces, (pos.clone().requires_grad_(True), ))
    model.train()
    _, f = model.energy_and_forces(z, pos)
    f.square().sum().backward()
    interaction = model.blocks[1][0].layer
    for parameter in (interaction.weight, interaction.scale, interaction.sensitivity.mu,
                      model.energy_head.layers[2].weight):
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def test_caller_edge_index_equals_built_graph():
    model = small_model(2)
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    shuffled = edge_index[:, torch.randperm(edge_index.size(1))]
    with_loops = torch.cat([shuffled, torch.arange(z.numel()).repeat(2, 1)], dim=1)
    expected = model(z, pos, batch)
    torch.testing.assert_close(model(z, pos, batch, edge_index=shuffled), expected)
    torch.testing.assert_close(model(z, pos, batch, edge_index=with_loops), expected)
    # Pairs beyond the cutoff add nothing (the cos^2 cutoff is zero there).
    full = torch.combinations(torch.arange(z.numel()), 2).T
    full = full[:, batch[full[0]] == batch[full[1]]]
    full = torch.cat([full, full.flip(0)], dim=1)
    torch.testing.assert_close(model(z, pos, batch, edge_index=full), expected)


def test_isolated_atoms_and_single_atom():
    model = small_model(2)
    z = torch.tensor([8, 1])
    pos = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    energy, forces = model.energy_and_forces(z, pos)
    assert torch.isfinite(energy).all() and forces.abs().max() == 0
    single = model(z[:1], pos[:1])
    assert single.shape == (1, ) and torch.isfinite(single).all()


def _layer_outputs_and_gradients(layer, x, pos, edge_index, pair_index=None):
    pos = pos.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    edge_vec, edge_weight = edge_vectors(pos, edge_index)
    if pair_index is None:
        out = layer(x, edge_index, edge_weight, edge_vec)
    else:
        layout = layer.neighbor_layout(edge_index, x.size(0), pair_index)
        first = torch.zeros(int(pair_index.max()) + 1, dtype=torch.long).scatter_reduce(
            0, pair_index, torch.arange(pair_index.numel()), 'amin', include_self=False)
        out = layer(x, edge_index, edge_weight, edge_vec, layout, edge_weight[first])
    parameters = [layer.weight, layer.sensitivity.mu, layer.sensitivity.sigma]
    grads = torch.autograd.grad(out.square().sum(), [pos, x] + parameters)
    return [out] + list(grads)


@pytest.mark.parametrize('max_order', ORDERS)
@pytest.mark.parametrize('contraction', ['project_first', 'environment_first'])
def test_blocked_neighbour_sums_equal_one_block(max_order, contraction):
    """The sums over blocks of a few atoms (and their gradients) equal the one-block sums,
    and sensitivities per pair equal sensitivities per edge."""
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    g = torch.Generator().manual_seed(3)
    x = torch.randn(z.numel(), 6, generator=g, dtype=torch.float64)
    layer = HIPNNInteraction(6, 5, 4, 0.75, 3.5, 4.0, max_order,
                             contraction=contraction).double()
    layer.block_elements = 2**40
    expected = _layer_outputs_and_gradients(layer, x, pos, edge_index)
    layer.block_elements = 12  # blocks of one atom
    for got, want in zip(_layer_outputs_and_gradients(layer, x, pos, edge_index), expected):
        torch.testing.assert_close(got, want)
    low = torch.minimum(edge_index[0], edge_index[1])
    high = torch.maximum(edge_index[0], edge_index[1])
    pair_index = torch.unique(low * z.numel() + high, return_inverse=True)[1]
    assert int(pair_index.max()) + 1 == edge_index.size(1) // 2
    got = _layer_outputs_and_gradients(layer, x, pos, edge_index, pair_index)
    for got, want in zip(got, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize('block_slots', [1, 2**20])
def test_angular_pair_sum_gradients(block_slots):
    """First and second derivatives of the fused HIP-NN-TS neighbour sum (blocks of one atom
    and one block), against the plain formula."""
    from pyg_tensorpot.nn.conv import hipnn_sums as module
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    layout = HIPNNInteraction.neighbor_layout(edge_index, z.numel(), block_slots=block_slots)
    blocks = layout.source_blocks
    g = torch.Generator().manual_seed(5)
    N, K, F, C = z.numel(), 3, 2, 4
    grid = torch.randn(layout.source_row.numel(), K, generator=g, dtype=torch.float64)
    grid[layout.source_row == layout.num_rows] = 0.0
    grid.requires_grad_(True)
    projected = torch.randn(N, K, F, generator=g, dtype=torch.float64, requires_grad=True)
    angular = torch.randn(layout.receiver_mask.numel(), C, generator=g, dtype=torch.float64)
    angular = angular * layout.receiver_mask.unsqueeze(-1)
    angular.requires_grad_(True)
    receivers = layout.receiver_blocks

    def fused(grid, projected, angular):
        return module.angular_pair_sum(grid, projected, angular, layout.receiver_source_slot,
                                       blocks, receivers)

    inputs = (grid, projected, angular)
    torch.testing.assert_close(
        fused(*inputs),
        module._plain_angular_pair_sum(grid, projected, angular, layout.receiver_source_slot,
                                       blocks, receivers))
    assert torch.autograd.gradcheck(fused, inputs)
    assert torch.autograd.gradgradcheck(fused, inputs)
    # the blocked backward function itself, to third derivatives of the sum
    slot = layout.receiver_source_slot
    grad_out = torch.randn(N, C, F, generator=g, dtype=torch.float64, requires_grad=True)

    def backward(grid, projected, angular, grad_out):
        pair = module._plain_pairs(grid, projected, blocks).detach()
        return module._AngularPairSumBackward.apply(grid, projected, angular, slot, pair,
                                                    grad_out, blocks, receivers, True, True,
                                                    True)

    assert torch.autograd.gradcheck(backward, inputs + (grad_out, ))
    assert torch.autograd.gradgradcheck(backward, inputs + (grad_out, ))


@pytest.mark.parametrize('block_slots', [1, 2**20])
def test_pair_sum_gradients(block_slots):
    """First, second and third derivatives of the fused HIP-NN neighbour sum (blocks of one
    atom and one block), against the plain formula."""
    from pyg_tensorpot.nn.conv import hipnn_sums as module
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    layout = HIPNNInteraction.neighbor_layout(edge_index, z.numel(), block_slots=block_slots)
    blocks = layout.source_blocks
    g = torch.Generator().manual_seed(6)
    N, K, F = z.numel(), 3, 2
    grid = torch.randn(layout.source_row.numel(), K, generator=g, dtype=torch.float64)
    grid[layout.source_row == layout.num_rows] = 0.0
    grid.requires_grad_(True)
    projected = torch.randn(N, K, F, generator=g, dtype=torch.float64, requires_grad=True)
    target = layout.source_target

    def fused(grid, projected):
        return module.pair_sum(grid, projected, target, blocks)

    torch.testing.assert_close(fused(grid, projected),
                               module._plain_pair_sum(grid, projected, target, blocks))
    assert torch.autograd.gradcheck(fused, (grid, projected))
    assert torch.autograd.gradgradcheck(fused, (grid, projected))
    # a leaf that needs no gradient (the species one-hot of the first layer) gets none
    out = fused(grid, projected.detach())
    assert torch.autograd.grad(out.square().sum(), grid)[0].shape == grid.shape
    grad_out = torch.randn(N, F, generator=g, dtype=torch.float64, requires_grad=True)

    def backward(grid, projected, grad_out):
        return module._PairSumBackward.apply(grid, projected, target, grad_out, blocks, True,
                                             True)

    assert torch.autograd.gradgradcheck(backward, (grid, projected, grad_out))


@pytest.mark.parametrize('max_order', ORDERS)
@pytest.mark.parametrize('contraction', ['project_first', 'environment_first'])
def test_ragged_grids_equal_the_edge_list_on_a_one_way_graph(max_order, contraction):
    """A caller's graph whose atoms send and receive different numbers of edges (atom 0
    receives nothing, atom 1 sends nothing to atom 2): the sums over the ragged grids, and their gradients, equal the sums over
    the edge list (the layout of torch.compile), with blocks of one atom and of all."""
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    one_way = (edge_index[1] == 0) | ((edge_index[0] == 1) & (edge_index[1] == 2))
    edge_index = edge_index[:, ~one_way]
    sent = torch.bincount(edge_index[0], minlength=z.numel())
    received = torch.bincount(edge_index[1], minlength=z.numel())
    assert not torch.equal(sent, received)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(z.numel(), 6, generator=g, dtype=torch.float64)
    layer = HIPNNInteraction(6, 5, 4, 0.75, 3.5, 4.0, max_order,
                             contraction=contraction).double()
    rows = torch.arange(edge_index.size(1))

    def outputs(layout):
        p = pos.clone().requires_grad_(True)
        features = x.clone().requires_grad_(True)
        edge_vec, edge_weight = edge_vectors(p, edge_index)
        out = layer(features, edge_index, edge_weight, edge_vec, layout)
        return [out] + list(torch.autograd.grad(out.square().sum(), [p, features, layer.weight]))

    expected = outputs(HIPNNInteraction._edge_layout(edge_index, z.numel(), rows,
                                                     edge_index.size(1)))
    for block_slots in (1, 2**20):
        layout = layer.neighbor_layout(edge_index, z.numel(), block_slots=block_slots)
        for got, want in zip(outputs(layout), expected):
            torch.testing.assert_close(got, want)


def test_ragged_neighbors_layout():
    """Rows sorted by degree, blocks as wide as their largest degree, every edge in its own
    slot of its atom's row, padding only at the ends of the shorter rows of a block."""
    from pyg_tensorpot.nn.ragged_neighbors import ragged_neighbors
    index = torch.tensor([2, 0, 2, 2, 1, 0, 4, 4, 4, 4])
    layout = ragged_neighbors(index, 6, block_slots=5)
    assert layout.order.tolist() == [4, 2, 0, 1, 3, 5]  # degrees 4, 3, 2, 1, 0, 0
    assert layout.blocks == [(0, 1, 4, 0), (1, 2, 3, 4), (2, 4, 2, 7)]
    assert layout.num_slots == 11  # 10 edges and one padding slot (atom 1's second column)
    assert layout.slot.tolist() == [4, 7, 5, 6, 9, 8, 0, 1, 2, 3]
    with pytest.raises(ValueError, match='block_slots must be positive'):
        ragged_neighbors(index, 6, block_slots=0)
    # one block of everything, for a graph whose atoms have equal degrees: no padding at all
    ring = torch.tensor([0, 1, 1, 2, 2, 0])
    layout = ragged_neighbors(ring, 3, block_slots=100)
    assert layout.blocks == [(0, 3, 2, 0)] and layout.num_slots == 6
    assert sorted(layout.slot.tolist()) == list(range(6))


def test_layout_must_match_the_graph():
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    edge_vec, edge_weight = edge_vectors(pos, edge_index)
    layer = HIPNNInteraction(4, 5, 3, 0.75, 3.5, 4.0, 2).double()
    x = torch.randn(z.numel(), 4, dtype=torch.float64)
    with pytest.raises(ValueError, match='pair_weight needs the layout of its pair_index'):
        layer(x, edge_index, edge_weight, edge_vec, None, edge_weight[:3])
    layout = layer.neighbor_layout(edge_index[:, :4], z.numel())
    with pytest.raises(ValueError, match='the layout belongs to another graph'):
        layer(x, edge_index, edge_weight, edge_vec, layout)
    with pytest.raises(ValueError, match='pair_index must have one entry per edge'):
        layer.neighbor_layout(edge_index, z.numel(), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_sensitivities_are_never_subnormal_and_match_the_direct_formula(dtype):
    # The module evaluates exp(log phi - scaled^2 / 2) and zeroes results whose exponent is
    # below log(tiny) + 7; the direct formula, taken in float64 as the reference, gives
    # subnormal float32 numbers for the narrow Gaussians at hand.
    sens = InverseGaussianSensitivity(20, 0.75, 5.5, 6.5).to(dtype)
    # up to 6.4: at the cutoff itself float32 cos(pi / 2) is 4e-8, not 0 (the cutoff's rounding)
    r = torch.linspace(0.3, 6.4, 2000, dtype=dtype)
    s = sens(r).detach()
    info = torch.finfo(dtype)
    r64, mu64, sigma64 = r.double(), sens.mu.detach().double(), sens.sigma.detach().double()
    scaled = (1 / r64[:, None] - 1 / mu64) * sigma64
    plain = torch.exp(-0.5 * scaled**2) * sens.cutoff_fn(r64)[:, None]
    floor = math.exp(math.log(info.tiny) + 7.0)
    if dtype == torch.float32:
        assert ((plain > 0) & (plain < info.tiny)).any()  # the case at hand
    assert not ((s != 0) & (s.abs() < info.tiny)).any()
    above, below = plain > 1.01 * floor, plain < 0.99 * floor
    assert above.sum() > 1000 and below.sum() > 1000
    assert (s[below] == 0).all()
    # relative error of exp(x) is about |x| eps; |x| < 800 here
    rel = ((s.double() - plain).abs() / plain)[above]
    assert rel.max() < 800 * info.eps


def test_sensitivity_gradients_match_finite_differences():
    sens = InverseGaussianSensitivity(6, 0.9, 3.0, 4.0).double()
    r = torch.linspace(0.95, 3.9, 17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sens, (r, ))
    assert torch.autograd.gradgradcheck(sens, (r, ))


def test_hierarchical_energy_and_hierarchicality():
    head = HierarchicalEnergyHead([4, 8, 8]).double()
    assert head.layers[0].bias is None and head.layers[1].bias is not None
    terms = torch.tensor([[1.0, 0.5, 0.1], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                         dtype=torch.float64)
    batch = torch.tensor([0, 0, 1])
    h = hierarchicality(terms, batch)
    expected0 = 0.25 / 1.25 + 0.01 / 0.26 + 0.0 + 0.0
    torch.testing.assert_close(h, torch.tensor([expected0, 0.0], dtype=torch.float64))

    model = small_model(1)
    z, pos, batch = two_molecules()
    energy, penalties = model.graph_outputs_and_regularization(z, pos, model.graph(z, pos, batch))
    assert sorted(penalties) == sorted(model.regularizers) == ['hierarchicality', 'l2']
    terms = model.energy_terms(z, pos, model.graph(z, pos, batch))
    torch.testing.assert_close(energy, torch.zeros(2, dtype=torch.float64).index_add(
        0, batch, terms.sum(-1)))
    torch.testing.assert_close(energy, model(z, pos, batch))
    hier = hierarchicality(terms, batch)
    assert hier.shape == (2, ) and (hier > 0).all()
    torch.testing.assert_close(penalties['hierarchicality'], hier.mean())
    torch.testing.assert_close(penalties['l2'], model.l2_penalty())


def test_standardization_and_atomref_leave_species_head_unscaled():
    model = small_model(0)
    z, pos, batch = two_molecules()
    terms = model.energy_terms(z, pos, model.graph(z, pos, batch))
    model.set_standardization(mean=1.5, std=2.0)
    model.set_atomref({1: -0.5, 8: -75.0})
    per_atom = terms[:, 0] + 2.0 * terms[:, 1:].sum(-1) + model.atomref[z]
    expected = torch.zeros(2, dtype=torch.float64).index_add(0, batch, per_atom) + 1.5
    torch.testing.assert_close(model(z, pos, batch), expected)


def test_fit_reference_energies():
    model = small_model(0, elements=(1, 6, 8))
    truth = {1: -13.6, 6: -1029.9, 8: -2042.6}
    data = []
    for counts in ([2, 0, 1], [4, 1, 0], [4, 1, 1], [6, 2, 1], [2, 1, 2]):
        z = torch.tensor([1] * counts[0] + [6] * counts[1] + [8] * counts[2])
        energy = sum(truth[int(a)] for a in z)
        data.append(Data(z=z, energy=torch.tensor([energy], dtype=torch.float64)))
    before = [layer.weight.detach().clone() for layer in model.energy_head.layers]
    fitted = model.fit_reference_energies(data)
    for element, value in truth.items():
        assert fitted[element] == pytest.approx(value, rel=1e-10)
    w0 = model.energy_head.layers[0].weight
    torch.testing.assert_close(w0[0], torch.tensor([-13.6, -1029.9, -2042.6],
                                                   dtype=torch.float64))
    assert not w0.requires_grad
    torch.testing.assert_close(model.energy_head.layers[1].weight, before[1] * 1e-2)
    torch.testing.assert_close(model.energy_head.layers[2].weight, before[2] * 1e-4)
    with pytest.raises(ValueError, match='not in'):
        small_model(0, elements=(1, 8)).fit_reference_energies(data)


def test_on_site_layer_forms():
    x = torch.randn(5, 6)
    residual = OnSiteLayer(6, 6)
    hidden = torch.nn.functional.softplus(residual.layer(x))
    torch.testing.assert_close(residual(x), residual.lin_residual(hidden) + x)
    plain = OnSiteLayer(6, 6, residual=False)
    torch.testing.assert_close(plain(x), torch.nn.functional.softplus(plain.layer(x)))
    assert plain.lin_residual is None
    assert 'residual=False' in repr(plain)


def test_interchangeable_with_tensornet():
    z, pos, batch = two_molecules()
    for model in (small_model(1), TensorNet(hidden_channels=8, num_layers=1,
                                            num_rbf=4).double()):
        model.eval()
        energy, forces = model.energy_and_forces(z, pos, batch)
        assert energy.shape == (2, ) and forces.shape == pos.shape
        assert not energy.requires_grad and not forces.requires_grad
    assert 'max_order=1' in repr(small_model(1))
    assert 'HIPNNInteraction(4, 8' in repr(small_model(1).blocks[0][0])


def test_bad_inputs():
    model = small_model(2)
    z, pos, batch = two_molecules()
    with pytest.raises(ValueError, match=r'unknown element Cl \(Z=17\): this model only knows'
                       r' H, C, N, O'):
        model(torch.tensor([17, 1, 1]), pos[:3])
    nan_pos = pos.clone()
    nan_pos[2, 1] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        model(z, nan_pos, batch)
    coincident = pos.clone()
    coincident[1] = coincident[0]
    with pytest.raises(ValueError, match='coincident'):
        model(z, coincident, batch)
    with pytest.raises(ValueError, match=r'pos must have shape \[num_atoms, 3\]'):
        model(z, pos[:, :2], batch)
    with pytest.raises(ValueError, match='z has 9 atoms but pos has 8'):
        model(z, pos[:8], batch)
    with pytest.raises(ValueError, match='batch must have shape'):
        model(z, pos, batch[:4])
    with pytest.raises(TypeError, match='model.to'):
        model(z, pos.float(), batch)
    with pytest.raises(ValueError, match='max_order'):
        HIPNN(max_order=3)
    with pytest.raises(ValueError, match='soft_min < soft_max'):
        HIPNN(soft_min=3.0, soft_max=2.0)
    with pytest.raises(ValueError, match='must not exceed the cutoff'):
        HIPNN(soft_max=7.0, cutoff=6.5)
