"""TorchScript: every model kind scripted agrees with eager, with the built-in neighbour list and
with engine-supplied pairs, for several atom counts through one compiled module; derivatives,
save/load round trips and damaged files."""
import zipfile
from typing import Dict, Tuple

import pytest
import torch
from torch import Tensor

from pyg_tensorpot.deploy.export import (
    FORMAT_VERSION,
    export_model,
    load_scripted,
    read_scripted_metadata,
)
from pyg_tensorpot.deploy.scripted import ScriptablePotential, script_model
from pyg_tensorpot.models import HIPNN, AtomisticModel, TensorNet, compute_properties
from pyg_tensorpot.structures import water_box
from model_factories import ComposedPotential  # tests/ is on sys.path

vesin_torch = pytest.importorskip('vesin_torch')

ETHANOL_Z = torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_POS = torch.tensor([[-0.0009, 0.5567, 0.0], [1.2108, -0.3613, 0.0],
                            [-1.1737, -0.2306, 0.0], [-0.0281, 1.2020, 0.8817],
                            [-0.0281, 1.2020, -0.8817], [2.1450, 0.2016, 0.0],
                            [1.1847, -1.0007, 0.8845], [1.1847, -1.0007, -0.8845],
                            [-1.9534, 0.3414, 0.0]], dtype=torch.float64)


def _build(kind: str) -> AtomisticModel:
    torch.manual_seed(0)
    if kind.startswith('tensornet'):
        model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=6, cutoff=3.5, max_z=10,
                          equivariance='SO(3)' if kind.endswith('so3') else 'O(3)')
    elif kind.startswith('hipnn'):
        model = HIPNN(hidden_channels=8, num_interactions=2, num_atom_layers=1,
                      num_sensitivities=4, soft_min=0.8, soft_max=3.0, cutoff=3.5,
                      elements=(1, 6, 8), max_order=int(kind[-1]))
    else:
        model = ComposedPotential()
    # Nonzero reference energies and standardisation, as a trained model has.
    model.set_atomref({1: -13.6, 6: -1029.8, 8: -2041.5})
    model.set_standardization(0.7, 1.3)
    return model.eval()


KINDS = ('tensornet-o3', 'tensornet-so3', 'hipnn-0', 'hipnn-1', 'hipnn-2', 'composed')
_SCRIPTED: Dict[Tuple[str, torch.dtype], Tuple[AtomisticModel, torch.jit.ScriptModule]] = {}


def scripted(kind: str, dtype: torch.dtype) -> Tuple[AtomisticModel, torch.jit.ScriptModule]:
    # One compiled module per model kind and dtype serves every test and atom count.
    if (kind, dtype) not in _SCRIPTED:
        model = _build(kind).to(dtype)
        _SCRIPTED[kind, dtype] = model, script_model(model, dtype)
    return _SCRIPTED[kind, dtype]


def systems(dtype: torch.dtype):
    """Molecule, batch of two molecules and two periodic water boxes (different sizes)."""
    pos = ETHANOL_POS.to(dtype)
    moved = (ETHANOL_POS @ torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator()
                                                       .manual_seed(1),
                                                       dtype=torch.float64))[0]).to(dtype)
    batch = torch.cat([torch.zeros(9, dtype=torch.long), torch.ones(9, dtype=torch.long)])
    yield ETHANOL_Z, pos, None, None
    yield torch.cat([ETHANOL_Z, ETHANOL_Z]), torch.cat([pos, moved + 10.0]), None, batch
    for n in (4, 9):
        z, box_pos, cell = water_box(n, dtype=dtype)
        yield z, box_pos, cell, None


def _close(actual: Tensor, expected: Tensor, dtype: torch.dtype) -> None:
    # float64: both paths do the same operations up to summation order (~1e-15 relative);
    # float32: the 1e-6 relative bound on energies (network rounding ~1e-7, summed
    # in float64 with float64 reference energies).
    rel = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rel, atol=0.0)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('kind', KINDS)
def test_scripted_energy_equals_eager(kind, dtype):
    model, module = scripted(kind, dtype)
    for z, pos, cell, batch in systems(dtype):
        expected = model(z, pos, batch, cell=cell).detach()
        actual = module(z, pos, cell, None, None, None, batch)
        assert actual.dtype == torch.float64 and actual.shape == expected.shape
        _close(actual, expected, dtype)


@pytest.mark.parametrize('kind', ['tensornet-o3', 'hipnn-2', 'composed'])
def test_jit_script_of_the_model_itself(kind):
    model = _build(kind).double()
    compiled = torch.jit.script(model)
    for z, pos, cell, batch in systems(torch.float64):
        _close(compiled(z, pos, batch, None, cell), model(z, pos, batch, cell=cell).detach(),
               torch.float64)


def test_one_class_compiled_in_several_configurations():
    # TorchScript gives a class compiled twice in one process (other submodule types) a
    # mangled name, and isinstance on submodules then fails: the models branch on constants.
    torch.manual_seed(0)
    z, pos, cell = water_box(4, dtype=torch.float64)
    for kwargs in ({'num_atom_layers': 1}, {'num_atom_layers': 2, 'residual': False},
                   {'num_atom_layers': 0, 'max_order': 1}):
        model = HIPNN(hidden_channels=8, num_interactions=2, num_sensitivities=4, soft_min=0.8,
                      soft_max=3.0, cutoff=3.5, elements=(1, 8), **kwargs).double().eval()
        _close(torch.jit.script(model)(z, pos, None, None, cell),
               model(z, pos, cell=cell).detach(), torch.float64)
    for output in ('dipole', 'energy', 'polarizability', 'energy'):
        model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=6, cutoff=3.5, max_z=10,
                          output=output).double().eval()
        torch.testing.assert_close(torch.jit.script(model)(z, pos, None, None, cell),
                                   model(z, pos, cell=cell).detach(), rtol=1e-12, atol=1e-14)


def test_jit_script_of_an_ensemble():
    # An Ensemble of differently built members (and a class compiled twice in one process,
    # in two configurations) scripts, and its mean energy and forces equal the eager ones.
    from pyg_tensorpot.models import Ensemble
    ensemble = Ensemble([_build('tensornet-o3'), _build('hipnn-2'), _build('hipnn-1')]).double()
    compiled = torch.jit.script(ensemble.eval())
    for z, pos, cell, batch in systems(torch.float64):
        _close(compiled(z, pos, batch, None, cell), ensemble(z, pos, batch, cell=cell).detach(),
               torch.float64)
        pos = pos.clone().requires_grad_(True)
        forces = -torch.autograd.grad(compiled(z, pos, batch, None, cell).sum(), pos)[0]
        expected = compute_properties(ensemble, z, pos.detach(), batch, cell=cell)['forces']
        torch.testing.assert_close(forces, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('output', ['dipole', 'polarizability'])
def test_jit_script_of_tensor_outputs(output):
    torch.manual_seed(0)
    model = TensorNet(hidden_channels=8, num_layers=1, num_rbf=6, cutoff=3.5, max_z=10,
                      output=output).double().eval()
    compiled = torch.jit.script(model)
    for z, pos, _, batch in list(systems(torch.float64))[:2]:
        torch.testing.assert_close(compiled(z, pos, batch), model(z, pos, batch).detach(),
                                   rtol=1e-12, atol=1e-14)


def _engine_pairs(pos: Tensor, cell: Tensor, cutoff: float) -> Tuple[Tensor, Tensor]:
    # An engine's full list: vesin pair (i, j, S) has the vector r_j + S C - r_i, so the
    # neighbour is j and the receiver i; shuffled, as an engine owes us no order.
    i, j, shifts = vesin_torch.NeighborList(cutoff=cutoff, full_list=True).compute(
        pos.double(), cell.double(), True, 'ijS')
    order = torch.randperm(i.numel(), generator=torch.Generator().manual_seed(0))
    return torch.stack([j, i])[:, order], shifts[order]


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('kind', ['tensornet-o3', 'hipnn-1', 'composed'])
def test_engine_supplied_pairs(kind, dtype):
    model, module = scripted(kind, dtype)
    for n in (4, 9):
        z, pos, cell = water_box(n, dtype=dtype)
        edge_index, shifts = _engine_pairs(pos, cell, model.cutoff)
        expected = model(z, pos, cell=cell).detach()
        _close(module(z, pos, cell, None, edge_index, shifts, None), expected, dtype)
        # Float shifts (metatomic passes them in the positions' dtype) are accepted.
        _close(module(z, pos, cell, None, edge_index, shifts.to(dtype), None), expected, dtype)
    # A molecule with the engine's pairs and no cell.
    i, j = torch.triu_indices(9, 9, 1)
    edges = torch.cat([torch.stack([i, j]), torch.stack([j, i])], dim=1)
    pos = ETHANOL_POS.to(dtype)
    _close(module(ETHANOL_Z, pos, None, None, edges, None, None),
           model(ETHANOL_Z, pos, edge_index=edges).detach(), dtype)


@pytest.mark.parametrize('kind', ['tensornet-so3', 'hipnn-2'])
def test_scripted_derivatives_equal_compute_properties(kind):
    model, module = scripted(kind, torch.float64)
    z, pos, cell = water_box(9, dtype=torch.float64)
    pos = pos + 0.05 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(2),
                                   dtype=torch.float64)
    expected = compute_properties(model, z, pos, cell=cell,
                                  properties=('energy', 'forces', 'stress', 'virial'))
    edge_index, shifts = _engine_pairs(pos, cell, model.cutoff)
    with torch.no_grad(), pytest.raises(torch.jit.Error, match='needs autograd'):
        module.forward_with_derivatives(z, pos, cell, None, None, None, None, True)
    for pairs in ((None, None), (edge_index, shifts)):
        out = module.forward_with_derivatives(z, pos, cell, None, pairs[0], pairs[1], None,
                                              True)
        for key in ('energy', 'forces', 'stress', 'virial'):
            # float64 derivatives by the same autograd graph: rounding-level differences.
            torch.testing.assert_close(out[key], expected[key].detach(), rtol=1e-10,
                                       atol=1e-12)
    # A molecule: forces only.
    out = module.forward_with_derivatives(ETHANOL_Z, ETHANOL_POS, None, None, None, None, None,
                                          True)
    expected = compute_properties(model, ETHANOL_Z, ETHANOL_POS)
    assert set(out) == {'energy', 'forces'}
    torch.testing.assert_close(out['forces'], expected['forces'].detach(), rtol=1e-10,
                               atol=1e-12)


def test_atomic_energies_sum_to_energy():
    model, module = scripted('hipnn-1', torch.float64)
    z, pos, cell = water_box(4)
    per_atom = module.atomic_energies(z, pos, cell, None, None, None, None)
    torch.testing.assert_close(per_atom, model.atomic_energies(z, pos, cell=cell).detach(),
                               rtol=1e-12, atol=0.0)


def test_bad_input_raises_in_torchscript():
    _, module = scripted('hipnn-0', torch.float64)
    with pytest.raises(Exception, match='unknown element'):
        module(torch.tensor([9, 1]), torch.tensor([[0.0, 0, 0], [1.0, 0, 0]],
                                                  dtype=torch.float64))
    with pytest.raises(Exception, match=r'shape \[num_atoms, 3\]'):
        module(torch.tensor([8, 1]), torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(Exception, match='apart'):
        module(torch.tensor([8, 1]), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(Exception, match='do not exist'):
        module(torch.tensor([8, 1]), torch.tensor([[0.0, 0, 0], [1.0, 0, 0]],
                                                  dtype=torch.float64),
               None, None, torch.tensor([[0, 5], [1, 0]]), None, None)
    with pytest.raises(TypeError, match='AtomisticModel'):
        ScriptablePotential(torch.nn.Linear(2, 2))


def test_save_load_round_trip(tmp_path):
    model, _ = scripted('tensornet-o3', torch.float32)
    path = export_model(model, 'torchscript', str(tmp_path / 'model.pt'), torch.float32)
    module, info = load_scripted(path)
    assert info['format_version'] == FORMAT_VERSION and info['dtype'] == 'float32'
    assert info['cutoff'] == model.cutoff and info['units']['energy'] == 'eV'
    for z, pos, cell, batch in systems(torch.float32):
        _close(module(z, pos, cell, None, None, None, batch),
               model(z, pos, batch, cell=cell).detach(), torch.float32)


def test_damaged_files_raise_clearly(tmp_path):
    model, _ = scripted('hipnn-0', torch.float64)
    good = export_model(model, 'torchscript', str(tmp_path / 'good.pt'), torch.float64)
    data = open(good, 'rb').read()

    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='truncated'):
        load_scripted(str(truncated))

    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a model at all')
    with pytest.raises(ValueError, match='not a complete model archive'):
        load_scripted(str(garbage))

    with pytest.raises(ValueError, match='does not exist'):
        load_scripted(str(tmp_path / 'missing.pt'))

    # Another format version: rewrite the metadata entry.
    future = tmp_path / 'future.pt'
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(future, 'w') as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename.endswith('/extra/pyg_tensorpot.json'):
                content = content.replace(b'"format_version": 1', b'"format_version": 99')
            target.writestr(item, content)
    with pytest.raises(ValueError, match='format version 99'):
        read_scripted_metadata(str(future))

    # A TorchScript file that is not ours.
    foreign = tmp_path / 'foreign.pt'
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    with pytest.raises(ValueError, match='without pyg_tensorpot.json'):
        load_scripted(str(foreign))
