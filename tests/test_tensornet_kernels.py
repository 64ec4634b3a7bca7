"""The fused message kernels equal PyG's generic message/aggregate path, gradients included,
with the compiled (Numba) loops and with the chunked PyTorch fallback; the recomputed radial
filters and the recomputed atom-level updates give the numbers and gradients of the plain
evaluation."""
import importlib.util

import pytest
import torch

from pyg_tensorpot.nn import TensorEmbedding, TensorInteraction, tensor_algebra
from pyg_tensorpot.nn.conv import tensor_interaction
from pyg_tensorpot.nn import message as message_module
from pyg_tensorpot.nn import radial as radial_module
from pyg_tensorpot.nn.message import (
    embedding_scatter,
    filtered_gather_scatter,
    recomputed_embedding_scatter,
    recomputed_gather_scatter,
)
from pyg_tensorpot.nn.radial import recomputed_filter

HAS_NUMBA = importlib.util.find_spec('numba') is not None
BACKENDS = [pytest.param('numba', marks=pytest.mark.skipif(not HAS_NUMBA,
                                                           reason='numba not installed')),
            'torch']


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == 'torch':
        monkeypatch.setattr(message_module, 'USE_NUMBA', False)
        # Force several chunks (of 3 edges) even on tiny graphs.
        monkeypatch.setattr(message_module, 'CHUNK_ELEMENTS', 60)
    return request.param


def random_graph(num_nodes=4, num_edges=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    radial_index = torch.randint(0, 5, (num_edges, ), generator=g)
    return edge_index, radial_index, g


@pytest.mark.parametrize('use_rows', [False, True])
def test_filtered_gather_scatter_gradients(backend, use_rows):
    edge_index, radial_index, g = random_graph()
    H = 2
    features = torch.randn(4, 10, H, generator=g, dtype=torch.float64, requires_grad=True)
    rows = 5 if use_rows else edge_index.size(1)
    filters = torch.randn(rows, 3, H, generator=g, dtype=torch.float64, requires_grad=True)
    index = radial_index if use_rows else None

    def fused(f, w):
        return filtered_gather_scatter(f, w, edge_index, index)

    torch.autograd.gradcheck(fused, (features, filters), fast_mode=True)
    torch.autograd.gradgradcheck(fused, (features, filters), fast_mode=True)


def test_embedding_scatter_gradients(backend):
    edge_index, radial_index, g = random_graph(seed=1)
    H = 2
    E = edge_index.size(1)
    radial = torch.randn(5, 3, H, generator=g, dtype=torch.float64, requires_grad=True)
    pair = torch.randn(E, H, generator=g, dtype=torch.float64, requires_grad=True)
    geometry = torch.randn(E, 10, generator=g, dtype=torch.float64, requires_grad=True)

    def fused(r, p, q):
        return embedding_scatter(r, p, q, edge_index, 4, radial_index)

    torch.autograd.gradcheck(fused, (radial, pair, geometry), fast_mode=True)
    torch.autograd.gradgradcheck(fused, (radial, pair, geometry), fast_mode=True)


def test_interaction_fused_equals_propagate(backend):
    torch.manual_seed(0)
    layer = TensorInteraction(4, num_rbf=5, cutoff=3.0).double()
    edge_index, radial_index, g = random_graph(seed=2)
    y = torch.randn(4, 10, 4, generator=g, dtype=torch.float64)
    filters = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    fused = layer.message_and_aggregate(edge_index, y, filters, radial_index)
    generic = layer.propagate(edge_index, y=y, filters=filters[radial_index], size=(4, 4))
    torch.testing.assert_close(fused, generic, rtol=1e-14, atol=1e-14)


def test_embedding_fused_equals_propagate(backend):
    torch.manual_seed(0)
    layer = TensorEmbedding(4, num_rbf=5, cutoff=3.0).double()
    edge_index, radial_index, g = random_graph(seed=3)
    E = edge_index.size(1)
    radial = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    pair = torch.randn(E, 4, generator=g, dtype=torch.float64)
    unit = torch.nn.functional.normalize(torch.randn(E, 3, generator=g, dtype=torch.float64),
                                         dim=-1)
    fused = layer.message_and_aggregate(edge_index, radial, pair, unit, 4, radial_index)
    generic = layer.propagate(edge_index, radial=radial[radial_index], pair=pair,
                              edge_unit=unit, size=(4, 4))
    torch.testing.assert_close(fused, generic, rtol=1e-14, atol=1e-14)
    # The A components hold f^A u and the S components the traceless outer product.
    assert generic.shape == (4, tensor_algebra.NUM_COMPONENTS, 4)


@pytest.mark.skipif(not HAS_NUMBA, reason='numba not installed')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_numba_equals_torch_kernels(monkeypatch, dtype):
    # Every contraction of both forms (messages and all their gradients), on a larger graph
    # with shared radial rows, against the chunked PyTorch kernels.
    edge_index, _, g = random_graph(num_nodes=30, num_edges=400, seed=4)
    rows = torch.randint(0, 50, (400, ), generator=g)
    H = 16
    features = torch.randn(30, 10, H, generator=g, dtype=dtype, requires_grad=True)
    filters = torch.randn(50, 3, H, generator=g, dtype=dtype, requires_grad=True)
    radial = torch.randn(50, 3, H, generator=g, dtype=dtype, requires_grad=True)
    pair = torch.randn(400, H, generator=g, dtype=dtype, requires_grad=True)
    geometry = torch.randn(400, 10, generator=g, dtype=dtype, requires_grad=True)
    upstream = torch.randn(30, 10, H, generator=g, dtype=dtype)
    inputs = (features, filters, radial, pair, geometry)

    def evaluate():
        out = (filtered_gather_scatter(features, filters, edge_index, rows)
               + embedding_scatter(radial, pair, geometry, edge_index, 30, rows))
        return [out, *torch.autograd.grad(out, inputs, upstream)]

    compiled = evaluate()
    monkeypatch.setattr(message_module, 'USE_NUMBA', False)
    monkeypatch.setattr(message_module, 'CHUNK_ELEMENTS', 1000)
    reference = evaluate()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-13
    for a, b in zip(compiled, reference):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


def test_kernels_reject_bad_shapes():
    edge_index, radial_index, g = random_graph()
    with pytest.raises(ValueError, match='radial row'):
        filtered_gather_scatter(torch.randn(4, 10, 2), torch.randn(3, 3, 2), edge_index,
                                radial_index)
    with pytest.raises(ValueError, match=r'features \[N, 10, H\]'):
        filtered_gather_scatter(torch.randn(4, 10, 2), torch.randn(5, 3, 3), edge_index,
                                radial_index)
    with pytest.raises(ValueError, match='geometry'):
        embedding_scatter(torch.randn(5, 3, 2), torch.randn(7, 2), torch.randn(8, 10),
                          edge_index, 4, radial_index)


@pytest.fixture
def small_filter_chunks(monkeypatch):
    monkeypatch.setattr(radial_module, 'FILTER_CHUNK_ROWS', 3)


def filter_mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.SiLU(), torch.nn.Linear(5, 6),
                               torch.nn.SiLU()).double()


def test_recomputed_filter_values_and_gradients(monkeypatch):
    mlp = filter_mlp()
    g = torch.Generator().manual_seed(5)
    attr = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    envelope = torch.rand(10, generator=g, dtype=torch.float64, requires_grad=True)
    expected = mlp(attr) * envelope.unsqueeze(-1)
    # In one chunk, the very same operations; in chunks of 3 rows, the same up to the
    # blocking of the matrix products.
    assert torch.equal(recomputed_filter(mlp, attr, envelope), expected)
    monkeypatch.setattr(radial_module, 'FILTER_CHUNK_ROWS', 3)
    torch.testing.assert_close(recomputed_filter(mlp, attr, envelope), expected, rtol=1e-14,
                               atol=1e-15)

    def fn(a, e):
        return recomputed_filter(mlp, a, e)

    torch.autograd.gradcheck(fn, (attr, envelope), fast_mode=True)
    torch.autograd.gradgradcheck(fn, (attr, envelope), fast_mode=True)

    # Weight gradients: those of the plain evaluation, and left alone by autograd.grad on the
    # inputs only (energy and forces).
    upstream = torch.randn(10, 6, generator=g, dtype=torch.float64)
    plain = torch.autograd.grad(expected, list(mlp.parameters()), upstream, retain_graph=True)
    recomputed_filter(mlp, attr, envelope).backward(upstream)
    for p, reference in zip(mlp.parameters(), plain):
        torch.testing.assert_close(p.grad, reference, rtol=1e-13, atol=1e-13)
        p.grad = None
    grad_attr, = torch.autograd.grad(recomputed_filter(mlp, attr, envelope), attr, upstream)
    reference, = torch.autograd.grad(expected, attr, upstream)
    torch.testing.assert_close(grad_attr, reference, rtol=1e-13, atol=1e-13)
    assert all(p.grad is None for p in mlp.parameters())


def test_recomputed_filter_force_training(small_filter_chunks):
    # create_graph=True through the recomputed filter: the gradient of a force-like loss with
    # respect to the weights is that of the plain evaluation.
    g = torch.Generator().manual_seed(6)
    attr = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    envelope = torch.rand(10, generator=g, dtype=torch.float64)
    grads = []
    for recompute in (False, True):
        mlp = filter_mlp()
        out = recomputed_filter(mlp, attr, envelope) if recompute else \
            mlp(attr) * envelope.unsqueeze(-1)
        force, = torch.autograd.grad(out.square().sum(), attr, create_graph=True)
        grads.append(torch.autograd.grad(force.square().sum(), list(mlp.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('equivariance', ['O(3)', 'SO(3)'])
@pytest.mark.parametrize('recompute_filters', [False, True])
@pytest.mark.parametrize('recompute_atoms', [False, True])
def test_interaction_recomputed_update_equals_plain(equivariance, recompute_filters,
                                                    recompute_atoms, monkeypatch):
    # Eval mode of large systems recomputes the atom-level update in the backward pass
    # (checkpoint, in blocks of atoms) and the filters; small systems and training mode keep
    # their intermediates. Same values and gradients.
    if recompute_filters:  # as if the system were large: filters in blocks of 2 radial rows
        monkeypatch.setattr(tensor_interaction, 'RECOMPUTE_FILTER_ELEMENTS', 0)
        monkeypatch.setattr(message_module, 'ROW_BLOCK', 2)
    if recompute_atoms:  # as if there were many atoms: checkpoints of 3 atoms
        monkeypatch.setattr(tensor_interaction, 'RECOMPUTE_ATOM_ELEMENTS', 0)
        monkeypatch.setattr(tensor_interaction, 'ATOM_CHUNK', 3)
    torch.manual_seed(0)
    layer = TensorInteraction(4, num_rbf=5, cutoff=3.0, equivariance=equivariance).double()
    edge_index, radial_index, g = random_graph(seed=7)
    x = torch.randn(4, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(5, generator=g, dtype=torch.float64) * 3.0
    attr = torch.rand(5, 5, generator=g, dtype=torch.float64)
    charge = torch.tensor([0.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    results = []
    for training in (True, False):
        layer.train(training)
        out = layer(x, edge_index, weight, attr, charge, radial_index)
        results.append((out, *torch.autograd.grad(out.square().sum(), x)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize('bias', [True, False])
def test_recomputed_linear_filter_gradients(bias):
    # A single linear layer (TensorNet's embedding) has a closed-form backward pass.
    torch.manual_seed(1)
    linear = torch.nn.Linear(4, 6, bias=bias).double()
    g = torch.Generator().manual_seed(8)
    attr = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    envelope = torch.rand(10, generator=g, dtype=torch.float64, requires_grad=True)
    params = list(linear.parameters())
    upstream = torch.randn(10, 6, generator=g, dtype=torch.float64)
    plain = torch.autograd.grad(linear(attr) * envelope.unsqueeze(-1), [attr, envelope, *params],
                                upstream)
    recomputed = torch.autograd.grad(recomputed_filter(linear, attr, envelope),
                                     [attr, envelope, *params], upstream)
    for a, b in zip(recomputed, plain):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    torch.autograd.gradgradcheck(lambda a, e: recomputed_filter(linear, a, e), (attr, envelope),
                                 fast_mode=True)


@pytest.mark.parametrize('row_block', [None, 2])
@pytest.mark.parametrize('form', ['interaction', 'embedding'])
def test_recomputed_contractions_equal_kept_filters(backend, small_filter_chunks, form,
                                                    row_block, monkeypatch):
    # The contractions with the filters recomputed in the backward pass: the values of the
    # contraction of module(edge_attr) * envelope, their gradients (weights included, and none
    # computed for the weights by autograd.grad on the inputs) and their double backward; with
    # row_block, the filters are formed in blocks of 2 of the 5 radial rows (3 blocks).
    if row_block is not None:
        monkeypatch.setattr(message_module, 'ROW_BLOCK', row_block)
    edge_index, radial_index, g = random_graph(seed=9)
    E = edge_index.size(1)
    H = 2
    mlp = filter_mlp() if form == 'interaction' else torch.nn.Linear(4, 6).double()
    attr = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    envelope = torch.rand(5, generator=g, dtype=torch.float64, requires_grad=True)
    if form == 'interaction':
        inputs = (torch.randn(4, 10, H, generator=g, dtype=torch.float64, requires_grad=True), )

        def recomputed(a, e, y):
            return recomputed_gather_scatter(y, mlp, a, e, edge_index, radial_index)

        def kept(a, e, y):
            filters = (mlp(a) * e.unsqueeze(-1)).unflatten(-1, (3, H))
            return filtered_gather_scatter(y, filters, edge_index, radial_index)
    else:
        # Pair embeddings at atom level: Z_ij = receiver_i + sender_j.
        inputs = (torch.randn(4, H, generator=g, dtype=torch.float64, requires_grad=True),
                  torch.randn(4, H, generator=g, dtype=torch.float64, requires_grad=True),
                  torch.randn(E, 10, generator=g, dtype=torch.float64, requires_grad=True))

        def recomputed(a, e, receiver, sender, q):
            return recomputed_embedding_scatter(mlp, a, e, receiver, sender, q, edge_index,
                                                radial_index)

        def kept(a, e, receiver, sender, q):
            radial = (mlp(a) * e.unsqueeze(-1)).unflatten(-1, (3, H))
            pair = receiver[edge_index[1]] + sender[edge_index[0]]
            return embedding_scatter(radial, pair, q, edge_index, 4, radial_index)

    args = (attr, envelope, *inputs)
    torch.testing.assert_close(recomputed(*args), kept(*args), rtol=1e-14, atol=1e-14)
    params = list(mlp.parameters())
    upstream = torch.randn(4, 10, H, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(kept(*args), [*args, *params], upstream)
    found = torch.autograd.grad(recomputed(*args), [*args, *params], upstream)
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    recomputed(*args).backward(upstream)
    for p, reference in zip(params, expected[len(args):]):
        torch.testing.assert_close(p.grad, reference, rtol=1e-13, atol=1e-13)
        p.grad = None
    torch.autograd.grad(recomputed(*args), attr, upstream)
    assert all(p.grad is None for p in params)
    # Force training: the weight gradient of a loss on the input gradient.
    weight_grads = []
    for fn in (kept, recomputed):
        force, = torch.autograd.grad(fn(*args).square().sum(), attr, create_graph=True)
        weight_grads.append(torch.autograd.grad(force.square().sum(), params))
    for a, b in zip(*weight_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.autograd.gradcheck(recomputed, args, fast_mode=True)
    torch.autograd.gradgradcheck(recomputed, args, fast_mode=True)


def test_recomputed_contractions_reject_bad_shapes():
    edge_index, radial_index, g = random_graph()
    mlp = torch.nn.Linear(4, 6).double()
    with pytest.raises(ValueError, match='radial row'):
        recomputed_gather_scatter(torch.randn(4, 10, 2), mlp, torch.randn(3, 4),
                                  torch.rand(3), edge_index, radial_index)
    with pytest.raises(ValueError, match=r'envelope \[R\]'):
        recomputed_embedding_scatter(mlp, torch.randn(5, 4), torch.rand(4), torch.randn(4, 2),
                                     torch.randn(4, 2), torch.randn(8, 10), edge_index,
                                     radial_index)


def test_row_blocked_filters_keep_energy_and_forces(monkeypatch):
    # A large system's path (filters recomputed in the contractions' backward pass, formed a few
    # radial rows at a time, and the atom-level update checkpointed in blocks of 4 atoms) gives
    # the energy and forces of the small-system path, in float64.
    from pyg_tensorpot import TensorNet
    torch.manual_seed(3)
    model = TensorNet(hidden_channels=8, num_layers=2, num_rbf=6, cutoff=4.0).double().eval()
    g = torch.Generator().manual_seed(4)
    z = torch.tensor([8, 1, 1, 6, 1, 1, 1, 7, 1])
    pos = torch.randn(9, 3, generator=g, dtype=torch.float64) * 1.3
    expected = model.energy_and_forces(z, pos)
    monkeypatch.setattr(tensor_interaction, 'RECOMPUTE_FILTER_ELEMENTS', 0)
    monkeypatch.setattr(tensor_interaction, 'RECOMPUTE_ATOM_ELEMENTS', 0)
    monkeypatch.setattr(tensor_interaction, 'ATOM_CHUNK', 4)
    monkeypatch.setattr(message_module, 'ROW_BLOCK', 4)
    found = model.energy_and_forces(z, pos)
    for a, b in zip(found, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
