"""Export to metatomic: metatomic's own ASE calculator reproduces our calculator, the engine's
neighbour vectors and our recomputed ones give the same derivatives, and bad files are
refused clearly."""
import json
import zipfile

import numpy as np
import pytest
import torch

# Our module first: it lets metatensor compile after torch_geometric's torch.index_select patch.
mt = pytest.importorskip('pyg_tensorpot.deploy.metatomic')
metatomic_ase = pytest.importorskip('metatomic_ase')
ase = pytest.importorskip('ase')

from ase.build import molecule  # noqa: E402

from pyg_tensorpot.calculator import TensorPotCalculator  # noqa: E402
from pyg_tensorpot.hub import from_pretrained  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402

NAMES = ['tensornet-ani1x', 'hipnn-ts-ani1x']


def _structures(slab=False):
    z, pos, cell = water_box(8)
    box = ase.Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    structures = [molecule('CH3CH2OH'), box]
    if slab:
        # Periodic in x and y only (metatomic zeroes the third lattice vector).
        slab = box.copy()
        slab.pbc = (True, True, False)
        slab.cell[2, 2] = 20.0
        structures.append(slab)
    return structures


def _results(atoms, calc, energies=True):
    atoms = atoms.copy()
    atoms.calc = calc
    out = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces()}
    if energies:
        out['energies'] = atoms.get_potential_energies()
    if atoms.pbc.all():
        out['stress'] = atoms.get_stress()
    return out


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp('metatomic')
    files = {}
    for name in NAMES:
        files[name, torch.float64] = mt.export_metatomic(name, str(folder / f'{name}.pt'))
    files['tensornet-ani1x', torch.float32] = mt.export_metatomic(
        'tensornet-ani1x', str(folder / 'tensornet-f32.pt'), dtype=torch.float32)
    return files


# metatomic's calculator also computes a (meaningless, NaN) stress of structures that are not
# periodic in every direction, and warns about it.
@pytest.mark.filterwarnings('ignore:invalid value encountered:RuntimeWarning')
@pytest.mark.filterwarnings('ignore:stress requested but likely to be wrong')
@pytest.mark.parametrize('name', NAMES)
def test_ase_calculator_reproduces_ours_float64(exported, name):
    calc = metatomic_ase.MetatomicCalculator(mt.load_metatomic(exported[name, torch.float64]))
    ours = TensorPotCalculator(name, dtype=torch.float64)
    for atoms in _structures(slab=True):
        theirs, ref = _results(atoms, calc), _results(atoms, ours)
        assert abs(theirs['energy'] - ref['energy']) <= 1e-6 * abs(ref['energy'])
        scale = np.abs(ref['forces']).max()
        assert np.abs(theirs['forces'] - ref['forces']).max() <= 1e-6 * scale
        np.testing.assert_allclose(theirs['energies'], ref['energies'], rtol=1e-6, atol=1e-9)
        if 'stress' in ref:
            scale = np.abs(ref['stress']).max()
            assert np.abs(theirs['stress'] - ref['stress']).max() <= 1e-6 * scale


@pytest.mark.filterwarnings('ignore:invalid value encountered:RuntimeWarning')
@pytest.mark.filterwarnings('ignore:stress requested but likely to be wrong')
def test_ase_calculator_reproduces_ours_float32(exported):
    calc = metatomic_ase.MetatomicCalculator(
        mt.load_metatomic(exported['tensornet-ani1x', torch.float32]))
    ours = TensorPotCalculator('tensornet-ani1x', dtype=torch.float32)
    for atoms in _structures():
        theirs, ref = _results(atoms, calc, False), _results(atoms, ours, False)
        # Both run the network in float32 (unit roundoff 6e-8) but form the pair vectors in a
        # different order (engine pairs + shifts vs our own search); the per-atom terms
        # (order 1 eV) then differ by ~1e-6 eV, summed in float64 over <= 24 atoms.
        assert abs(theirs['energy'] - ref['energy']) <= 1e-4
        # Forces are sums of ~100 pair terms with cancellation: measured 1e-6 - 4e-6 of the
        # largest force; 5e-5 leaves an order of magnitude for other CPUs' kernels.
        scale = np.abs(ref['forces']).max()
        assert np.abs(theirs['forces'] - ref['forces']).max() <= 5e-5 * scale
        if 'stress' in ref:
            scale = np.abs(ref['stress']).max()
            assert np.abs(theirs['stress'] - ref['stress']).max() <= 5e-5 * scale


def test_capabilities_and_metadata(exported):
    model = mt.load_metatomic(exported['hipnn-ts-ani1x', torch.float64])
    capabilities = model.capabilities()
    assert capabilities.length_unit == 'angstrom'
    assert capabilities.dtype == 'float64'
    assert capabilities.interaction_range == 5.0
    assert list(capabilities.atomic_types) == [1, 6, 7, 8]
    assert capabilities.outputs['energy'].unit == 'eV'
    assert capabilities.outputs['energy'].sample_kind == 'atom'
    assert set(capabilities.supported_devices) == {'cpu', 'cuda'}
    options = model.requested_neighbor_lists()
    assert len(options) == 1 and options[0].full_list and options[0].cutoff == 5.0
    metadata = model.metadata()
    assert metadata.name == 'hipnn-ts-ani1x'
    assert any('Chigaev' in ref for ref in metadata.references['architecture'])
    extra = json.loads(metadata.extra['pyg_tensorpot'])
    assert extra['format_version'] == mt.FORMAT_VERSION
    assert extra['architecture'] == 'HIP-NN-TS'


def _system(atoms, model, strain=None):
    import vesin.metatomic
    from metatomic.torch import System
    positions = torch.tensor(atoms.positions, requires_grad=True)
    cell = torch.tensor(np.array(atoms.cell))
    strained_pos, strained_cell = positions, cell
    if strain is not None:
        strained_pos, strained_cell = positions @ strain, cell @ strain
    system = System(torch.tensor(atoms.numbers, dtype=torch.int32), strained_pos,
                    strained_cell, torch.tensor(atoms.pbc))
    for calculator in vesin.metatomic.neighbor_lists_for_model('angstrom', model):
        calculator.add_neighbor_list([system])
    return system, positions


def test_selected_atoms_energy_is_their_share(exported):
    from metatensor.torch import Labels
    from metatomic.torch import ModelEvaluationOptions, ModelOutput
    model = mt.load_metatomic(exported['tensornet-ani1x', torch.float64])
    atoms = _structures()[1]
    system, _ = _system(atoms, model)
    chosen = torch.tensor([[0, a] for a in (0, 4, 5, 17)], dtype=torch.int32)

    def run(sample_kind, selected):
        options = ModelEvaluationOptions(
            length_unit='angstrom', selected_atoms=selected,
            outputs={'energy': ModelOutput(unit='eV', sample_kind=sample_kind)})
        return model([system], options, check_consistency=True)['energy'].block()

    per_atom = run('atom', None).values.reshape(-1)
    partial = run('system', Labels(['system', 'atom'], chosen)).values.reshape(-1)
    assert torch.allclose(partial, per_atom[[0, 4, 5, 17]].sum(), rtol=1e-12)
    total = run('system', None).values.reshape(-1)
    assert torch.allclose(total, per_atom.sum(), rtol=1e-12)


def test_engine_vectors_and_recomputed_vectors_have_equal_derivatives(exported):
    # The engine's neighbour vectors are differentiable (registered on positions and cell);
    # the exported model recomputes r_j - r_i + S h from positions and cell instead. Both
    # must give the same derivatives with respect to positions and strain.
    model = mt.load_metatomic(exported['tensornet-ani1x', torch.float64])
    atoms = _structures()[1]
    grads = []
    for use_engine_vectors in (True, False):
        strain = torch.eye(3, dtype=torch.float64, requires_grad=True)
        system, positions = _system(atoms, model, strain)
        block = system.get_neighbor_list(model.requested_neighbor_lists()[0])
        pairs = block.samples.values.to(torch.long)
        if use_engine_vectors:
            vectors = block.values.reshape(-1, 3)
        else:
            vectors = (system.positions[pairs[:, 1]] - system.positions[pairs[:, 0]] +
                       pairs[:, 2:5].to(torch.float64) @ system.cell)
        # A smooth pair energy of the vectors, not a symmetric function of distances only.
        energy = (torch.exp(-0.3 * (vectors**2).sum(-1)) * (1.0 + vectors[:, 0])).sum()
        grads.append(torch.autograd.grad(energy, [positions, strain]))
    for engine, ours in zip(*grads):
        torch.testing.assert_close(engine, ours, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# bad files
# ----------------------------------------------------------------------------------------------
def _rewrite(src, dst, entry, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            payload = zin.read(info.filename)
            if info.filename.endswith('/extra/' + entry):
                payload = data
            zout.writestr(info, payload)
    return str(dst)


def test_truncated_corrupt_and_foreign_files_raise(exported, tmp_path):
    src = exported['tensornet-ani1x', torch.float64]
    data = open(src, 'rb').read()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='truncated or corrupt'):
        mt.load_metatomic(str(truncated))

    # Flip bytes inside the largest stored entry: its CRC no longer matches.
    with zipfile.ZipFile(src) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    corrupt = bytearray(data)
    middle = start + info.file_size // 2
    corrupt[middle:middle + 8] = bytes(255 - b for b in corrupt[middle:middle + 8])
    (tmp_path / 'corrupt.pt').write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match='corrupt'):
        mt.load_metatomic(str(tmp_path / 'corrupt.pt'))

    (tmp_path / 'text.pt').write_text('not a model')
    with pytest.raises(ValueError, match='not a TorchScript'):
        mt.load_metatomic(str(tmp_path / 'text.pt'))

    plain = tmp_path / 'plain.pt'
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    with pytest.raises(ValueError, match='not a metatomic model'):
        mt.load_metatomic(str(plain))

    with pytest.raises(FileNotFoundError):
        mt.load_metatomic(str(tmp_path / 'missing.pt'))


def test_wrong_versions_and_extensions_raise(exported, tmp_path, monkeypatch):
    src = exported['tensornet-ani1x', torch.float64]
    newer = _rewrite(src, tmp_path / 'mta.pt', 'metatomic-version', b'99.0.0')
    with pytest.raises(ValueError, match='metatomic-torch 99.0.0'):
        mt.load_metatomic(newer)
    newer_torch = _rewrite(src, tmp_path / 'torch.pt', 'torch-version', b'99.1.0')
    with pytest.raises(ValueError, match='torch 99.1.0'):
        mt.load_metatomic(newer_torch)
    foreign = _rewrite(src, tmp_path / 'ext.pt', 'extensions',
                       b'[{"name": "evil", "sha256": "0", "path": "/tmp/evil.so"}]')
    with pytest.raises(ValueError, match='evil'):
        mt.load_metatomic(foreign)
    # An unchanged rewrite still loads: the checks above refuse the change, not the rewrite.
    same = _rewrite(src, tmp_path / 'same.pt', 'metatomic-version',
                    mt.mta.__version__.encode())
    assert mt.load_metatomic(same).capabilities().dtype == 'float64'

    # A file of a newer pyg-tensorpot format.
    monkeypatch.setattr(mt, 'FORMAT_VERSION', mt.FORMAT_VERSION + 1)
    future = mt.export_metatomic(from_pretrained('tensornet-ani1x'), str(tmp_path / 'f.pt'))
    monkeypatch.undo()
    with pytest.raises(ValueError, match='newer pyg-tensorpot'):
        mt.load_metatomic(future)


def test_export_rejects_bad_arguments(tmp_path):
    model = from_pretrained('tensornet-ani1x')
    with pytest.raises(TypeError, match='float32 or torch.float64'):
        mt.export_metatomic(model, str(tmp_path / 'x.pt'), dtype=torch.int64)
    assert not (tmp_path / 'x.pt').exists()
