"""torch.compile of the models (issue 12): the graph construction of a caller's edges and the
input checks trace with fullgraph=True (no graph break), the compiled energies equal the
eager ones, and the input checks stay active under compile.

The "eager" backend is used: it runs dynamo's tracing (which is where graph breaks occur)
without inductor's code generation, so the tests are cheap and deterministic.
"""
import pytest
import torch

from model_factories import (  # tests/ is on sys.path
    ETHANOL_POS,
    ETHANOL_Z,
    WATER_POS,
    WATER_Z,
    build_model,
)
from pyg_tensorpot.nn.conv import HIPNNInteraction
from pyg_tensorpot.nn.neighbors import edge_vectors, neighbor_pairs
from pyg_tensorpot.nn.verlet import VerletList

pytestmark = pytest.mark.usefixtures('one_thread')

#: Every kind traces whole without a break. HIP-NN's padded neighbour grid has a
#: data-dependent width, so under compile its interaction sums over the edge list instead
#: (HIPNNLayout.padded is False).
FULLGRAPH_KINDS = ['tensornet-o3', 'tensornet-so3', 'composed', 'hipnn', 'hipnn-ts-l1',
                   'hipnn-ts-l2']


def caller_edges(model, z, pos, batch=None):
    # An MD engine's full list: every directed edge once, no self-loops.
    graph = model.graph(z, pos, batch)
    edges = graph.edge_index
    return edges[:, edges[0] != edges[1]]


def two_molecules():
    z = torch.cat([ETHANOL_Z, WATER_Z])
    pos = torch.cat([ETHANOL_POS, WATER_POS + torch.tensor([8.0, 0.0, 0.0],
                                                            dtype=torch.float64)])
    batch = torch.tensor([0] * ETHANOL_Z.numel() + [1] * WATER_Z.numel())
    return z, pos, batch


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize('kind', FULLGRAPH_KINDS)
def test_forward_with_edge_index_has_no_graph_break(kind):
    model = build_model(kind)
    z, pos, batch = two_molecules()
    edges = caller_edges(model, z, pos, batch)
    explanation = torch._dynamo.explain(model)(z, pos, batch, edges, num_graphs=2)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    eager = model(z, pos, batch, edges, num_graphs=2)
    got = compiled(z, pos, batch, edges, num_graphs=2)
    torch.testing.assert_close(got, eager, rtol=1e-12, atol=0.0)
    # The same energies as the model's own neighbour search.
    torch.testing.assert_close(got, model(z, pos, batch), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize('kind', ['tensornet-o3', 'composed', 'hipnn', 'hipnn-ts-l2'])
def test_graph_outputs_on_a_verlet_graph_has_no_graph_break(kind):
    # The Verlet graph has a pair_index: HIP-NN evaluates its sensitivities once per pair.
    model = build_model(kind)
    z, pos = ETHANOL_Z, ETHANOL_POS
    verlet = VerletList(model.cutoff, skin=0.5, self_loops=model.self_loops)
    graph = verlet.graph(z, pos)
    explanation = torch._dynamo.explain(model.graph_outputs)(z, pos, graph)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model.graph_outputs, backend='eager', fullgraph=True)
    torch.testing.assert_close(compiled(z, pos, graph), model(z, pos), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize('kind', ['hipnn', 'hipnn-ts-l2'])
def test_graph_construction_has_no_graph_break(kind):
    # What base.py, nn/graph.py and utils/validation.py do before the layers (checks, edge
    # vectors, distances) compiles in one graph.
    model = build_model(kind)
    z, pos, batch = two_molecules()
    edges = caller_edges(model, z, pos, batch)
    compiled = torch.compile(model.graph, backend='eager', fullgraph=True)
    graph = compiled(z, pos, batch, edges, num_graphs=2)
    eager = model.graph(z, pos, batch, edges, num_graphs=2)
    assert graph.num_graphs == 2
    # Each directed edge is its own row under compile; the distances are the same.
    torch.testing.assert_close(torch.sort(graph.edge_weight).values,
                               torch.sort(eager.edge_weight).values, rtol=0.0, atol=0.0)


@pytest.mark.parametrize('kind', ['tensornet-o3', 'hipnn', 'hipnn-ts-l2'])
def test_compiled_energy_and_forces_match_eager(kind):
    model = build_model(kind)
    z, pos = ETHANOL_Z, ETHANOL_POS
    edges = caller_edges(model, z, pos)
    compiled = torch.compile(model, backend='eager', fullgraph=True)

    def energy_and_forces(module):
        positions = pos.clone().requires_grad_(True)
        energy = module(z, positions, None, edges)
        return energy.detach(), -torch.autograd.grad(energy.sum(), positions)[0]

    for got, want in zip(energy_and_forces(compiled), energy_and_forces(model)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('max_order', [0, 1, 2])
@pytest.mark.parametrize('contraction', ['project_first', 'environment_first'])
def test_hipnn_interaction_edge_sums_match_the_padded_grid(max_order, contraction):
    """Under compile the layer sums over the edge list (no data-dependent grid width): its
    output and its gradients (first and second order, as force training needs) equal the
    eager padded-grid sums."""
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    g = torch.Generator().manual_seed(7)
    x = torch.randn(z.numel(), 6, generator=g, dtype=torch.float64)
    layer = HIPNNInteraction(6, 5, 4, 0.75, 3.5, 4.0, max_order,
                             contraction=contraction).double()
    layer.block_elements = 64  # eager: blocks of a few atoms

    def outputs_and_gradients(function):
        positions = pos.clone().requires_grad_(True)
        features = x.clone().requires_grad_(True)
        edge_vec, edge_weight = edge_vectors(positions, edge_index)
        out = function(features, edge_index, edge_weight, edge_vec)
        grad_pos, grad_x = torch.autograd.grad(out.square().sum(), [positions, features],
                                               create_graph=True)
        (second, ) = torch.autograd.grad(grad_pos.square().sum(), [layer.weight])
        return out, grad_pos, grad_x, second

    edge_vec, edge_weight = edge_vectors(pos, edge_index)
    explanation = torch._dynamo.explain(layer)(x, edge_index, edge_weight, edge_vec)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(layer, backend='eager', fullgraph=True)
    for got, want in zip(outputs_and_gradients(compiled), outputs_and_gradients(layer)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_hipnn_layout_under_compile_needs_num_pairs():
    z, pos, batch = two_molecules()
    edge_index = neighbor_pairs(pos, 4.0, batch).edge_index
    pair_index = torch.arange(edge_index.size(1))

    def layout(edge_index, pair_index):
        return HIPNNInteraction.neighbor_layout(edge_index, z.numel(), pair_index)

    with pytest.raises(Exception, match='pass num_pairs'):
        torch.compile(layout, backend='eager', fullgraph=True)(edge_index, pair_index)


def test_input_checks_stay_active_under_compile():
    model = build_model('tensornet-o3')
    z, pos = ETHANOL_Z, ETHANOL_POS
    edges = caller_edges(model, z, pos)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    compiled(z, pos, None, edges)
    bad = pos.clone()
    bad[2, 1] = float('nan')
    with pytest.raises(RuntimeError, match='NaN or infinite'):
        compiled(z, bad, None, edges)
    unknown = z.clone()
    unknown[0] = 12  # Mg, beyond max_z=10
    with pytest.raises(RuntimeError, match='unknown element'):
        compiled(unknown, pos, None, edges)
    close = pos.clone()
    close[1] = close[0] + 0.01
    with pytest.raises(RuntimeError, match='overlapping atoms'):
        compiled(z, close, None, edges)
    # Shape and dtype checks are made while tracing, with the eager messages.
    with pytest.raises(Exception, match='rows'):
        compiled(z[:-1], pos, None, edges)
    # Eager calls keep their chemist-friendly ValueErrors.
    with pytest.raises(ValueError, match=r'NaN or infinite values \(atoms \[2\]\)'):
        model(z, bad, None, edges)
    with pytest.raises(ValueError, match='unknown element Mg'):
        model(unknown, pos, None, edges)


def test_batch_needs_num_graphs_under_compile():
    model = build_model('tensornet-o3')
    z, pos, batch = two_molecules()
    edges = caller_edges(model, z, pos, batch)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with pytest.raises(Exception, match='num_graphs'):
        compiled(z, pos, batch, edges)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_compiled_model_on_cuda_matches_cpu():
    model = build_model('tensornet-o3')
    z, pos = ETHANOL_Z, ETHANOL_POS
    edges = caller_edges(model, z, pos)
    want = model(z, pos, None, edges)
    gpu = model.to('cuda')
    compiled = torch.compile(gpu, backend='eager', fullgraph=True)
    got = compiled(z.cuda(), pos.cuda(), None, edges.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=0.0)
