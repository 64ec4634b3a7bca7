"""The fused message kernels equal PyG's generic message/aggregate path, gradients included."""
import pytest
import torch

from pyg_tensorpot.nn import TensorEmbedding, TensorInteraction, tensor_algebra
from pyg_tensorpot.nn import message as message_module
from pyg_tensorpot.nn.message import embedding_scatter, filtered_gather_scatter


@pytest.fixture
def small_chunks(monkeypatch):
    # Force several chunks (of 3 edges) even on tiny graphs.
    monkeypatch.setattr(message_module, 'CHUNK_ELEMENTS', 60)


def random_graph(num_nodes=4, num_edges=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    radial_index = torch.randint(0, 5, (num_edges, ), generator=g)
    return edge_index, radial_index, g


@pytest.mark.parametrize('use_rows', [False, True])
def test_filtered_gather_scatter_gradients(small_chunks, use_rows):
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


def test_embedding_scatter_gradients(small_chunks):
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


def test_interaction_fused_equals_propagate(small_chunks):
    torch.manual_seed(0)
    layer = TensorInteraction(4, num_rbf=5, cutoff=3.0).double()
    edge_index, radial_index, g = random_graph(seed=2)
    y = torch.randn(4, 10, 4, generator=g, dtype=torch.float64)
    filters = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    fused = layer.message_and_aggregate(edge_index, y, filters, radial_index)
    generic = layer.propagate(edge_index, y=y, filters=filters[radial_index], size=(4, 4))
    torch.testing.assert_close(fused, generic)


def test_embedding_fused_equals_propagate(small_chunks):
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
    torch.testing.assert_close(fused, generic)
    # The A components hold f^A u and the S components the traceless outer product.
    assert generic.shape == (4, tensor_algebra.NUM_COMPONENTS, 4)
