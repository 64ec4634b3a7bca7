"""OpenMM: the model as an OpenMM force (PythonForce route and openmm-torch's TorchScript
convention) reproduces compute_properties, conserves energy in NVE and handles periodic boxes."""
import io
import json
import os.path as osp
import zipfile

import numpy as np
import pytest
import torch

openmm = pytest.importorskip('openmm')
ase_io = pytest.importorskip('ase.io')

import pyg_tensorpot  # noqa: E402
from pyg_tensorpot.deploy import openmm as deploy_openmm  # noqa: E402
from pyg_tensorpot.deploy.openmm import (  # noqa: E402
    EV_TO_KJ_PER_MOL, create_simulation, export_openmm, load_openmm, openmm_module,
    python_force)
from pyg_tensorpot.hub import from_pretrained  # noqa: E402
from pyg_tensorpot.models.properties import compute_properties  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402

ETHANOL = osp.join(osp.dirname(pyg_tensorpot.__file__), 'data', 'md17_ethanol_sample_2000.extxyz')
# eV/A -> kJ/mol/nm.
FORCE_SCALE = EV_TO_KJ_PER_MOL * 10.0


pytestmark = pytest.mark.usefixtures('one_thread')  # small systems (conftest.py)


@pytest.fixture(scope='module')
def model64():
    return from_pretrained('tensornet-ani1x').double()


@pytest.fixture(scope='module')
def ethanol():
    atoms = ase_io.read(ETHANOL, index=0)
    return torch.tensor(atoms.numbers), torch.tensor(atoms.positions, dtype=torch.float64)


def openmm_results(context):
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    forces = state.getForces(asNumpy=True).value_in_unit(openmm.unit.kilojoule_per_mole /
                                                         openmm.unit.nanometer)
    return energy / EV_TO_KJ_PER_MOL, torch.from_numpy(np.asarray(forces) / FORCE_SCALE)


def assert_close(energy, forces, ref, rtol):
    ref_energy, ref_forces = float(ref['energy'].sum()), ref['forces'].double()
    assert abs(energy - ref_energy) <= rtol * abs(ref_energy)
    assert (forces - ref_forces).abs().max() <= rtol * ref_forces.abs().max()


def test_unit_constants():
    # 1 eV = e N_A / 1000 kJ/mol with the exact SI values of e and N_A.
    assert EV_TO_KJ_PER_MOL == pytest.approx(1.602176634e-19 * 6.02214076e23 / 1e3, rel=1e-14)
    assert deploy_openmm.NM_TO_ANGSTROM == 10.0


def test_single_point_molecule_float64(model64, ethanol):
    z, pos = ethanol
    simulation = create_simulation(model64, z, pos, openmm.VerletIntegrator(0.0005))
    energy, forces = openmm_results(simulation.context)
    assert_close(energy, forces, compute_properties(model64, z, pos), rtol=1e-10)


def test_single_point_molecule_float32(ethanol):
    z, pos = ethanol
    model = from_pretrained('tensornet-ani1x')
    assert next(model.parameters()).dtype == torch.float32
    simulation = create_simulation(model, z, pos, openmm.VerletIntegrator(0.0005))
    energy, forces = openmm_results(simulation.context)
    # Both sides run the same float32 model, but OpenMM stores nm: x / 10 * 10 can differ from
    # x by one float64 ulp, which can flip the float32 rounding of a coordinate (6e-8
    # relative). With forces of order 1 eV/A and curvatures of order 10-100 eV/A^2 that moves
    # forces by < 1e-5 eV/A (1e-6 relative to the largest force here) and the energy far less.
    assert_close(energy, forces, compute_properties(model, z, pos), rtol=1e-5)


def test_nve_conserves_energy(model64, ethanol):
    z, pos = ethanol
    simulation = create_simulation(model64, z, pos, openmm.VerletIntegrator(0.0005))
    simulation.context.setVelocitiesToTemperature(300.0, 7)
    totals = []
    for _ in range(10):
        state = simulation.context.getState(getEnergy=True)
        totals.append((state.getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(
            openmm.unit.kilojoule_per_mole))
        simulation.step(20)
    state = simulation.context.getState(getEnergy=True, getPositions=True)
    kinetic = state.getKineticEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    # 200 velocity-Verlet steps of 0.5 fs at 300 K: the total energy deviates by at most
    # 0.34 kJ/mol (3.5 meV) from its start (measured; 0.085 kJ/mol at 0.25 fs, the dt^2 of the
    # integrator's shadow-Hamiltonian error) against a kinetic energy of about 70 kJ/mol;
    # 1 kJ/mol leaves room for other CPUs' rounding and would catch a stale or wrongly
    # scaled force (a factor-10 unit error breaks it by orders of magnitude).
    assert kinetic > 20.0
    assert max(abs(t - totals[0]) for t in totals) < 1.0
    # The reported potential energy is the model's at the final positions, not an estimate.
    final = torch.from_numpy(np.asarray(state.getPositions(asNumpy=True).value_in_unit(
        openmm.unit.nanometer)) * 10.0)
    assert (final - pos).abs().max() > 1e-3
    energy = state.getPotentialEnergy().value_in_unit(openmm.unit.kilojoule_per_mole)
    ref = float(compute_properties(model64, z, final)['energy'].sum()) * EV_TO_KJ_PER_MOL
    assert energy == pytest.approx(ref, rel=1e-12)


def test_periodic_water_box(model64):
    z, pos, cell = water_box(8)
    simulation = create_simulation(model64, z, pos, openmm.VerletIntegrator(0.0005), cell=cell)
    ref = compute_properties(model64, z, pos, cell=cell, pbc=torch.ones(3, dtype=torch.bool))
    assert_close(*openmm_results(simulation.context), ref, rtol=1e-10)
    # OpenMM passes positions unwrapped (or wrapped into any image): moving a molecule by
    # lattice vectors changes nothing.
    moved = pos.clone()
    moved[3:6] += 2 * cell[0] - cell[2]
    simulation.context.setPositions(moved.numpy() / 10.0)
    assert_close(*openmm_results(simulation.context), ref, rtol=1e-10)
    # Periodic images matter at this box size: the energy differs from the isolated cluster.
    isolated = float(compute_properties(model64, z, pos)['energy'].sum())
    assert abs(isolated - float(ref['energy'].sum())) > 1e-3


def test_python_force_errors(model64, ethanol):
    z, pos = ethanol
    with pytest.raises(ValueError, match='not trained on the elements'):
        python_force(model64, [6, 26])
    with pytest.raises(ValueError, match='list of integers'):
        python_force(model64, ['C', 'H'])
    with pytest.raises(ValueError, match='reduced form'):
        create_simulation(model64, z[:3], pos[:3], openmm.VerletIntegrator(0.0005),
                          cell=torch.tensor([[5.0, 0, 0], [4.0, 5, 0], [0, 0, 5]]))
    # A force set up for fewer atoms than the system: a clear error, not a crash.
    system = openmm.System()
    for _ in range(3):
        system.addParticle(1.0)
    system.addForce(python_force(model64, [8, 1]))
    context = openmm.Context(system, openmm.VerletIntegrator(0.0005),
                             openmm.Platform.getPlatformByName('Reference'))
    context.setPositions(np.zeros((3, 3)))
    with pytest.raises(Exception, match='set up for 2 atoms'):
        context.getState(getEnergy=True)
    # The model is never pickled into an XML system.
    with pytest.raises(Exception, match='could not be pickled'):
        openmm.XmlSerializer.serialize(system)


def test_torchscript_module_convention(model64, ethanol):
    z, pos = ethanol
    module = openmm_module(model64, z, torch.float64)
    positions = (pos / 10.0).requires_grad_()
    energy = module(positions)
    forces = -torch.autograd.grad(energy, positions)[0]
    assert energy.dtype == torch.float64 and energy.dim() == 0
    ref = compute_properties(model64, z, pos)
    assert_close(energy.item() / EV_TO_KJ_PER_MOL, forces / FORCE_SCALE, ref, rtol=1e-10)
    with pytest.raises(Exception, match='num_atoms, 3'):
        module(positions[:4].detach())


def test_export_periodic_round_trip(model64, tmp_path):
    z, pos, cell = water_box(8)
    path = export_openmm(model64, str(tmp_path / 'water.pt'), torch.float64, atomic_numbers=z,
                         periodic=True)
    module, metadata = load_openmm(path)
    assert metadata['atomic_numbers'] == z.tolist() and metadata['periodic'] is True
    assert metadata['units'] == {'positions': 'nm', 'boxvectors': 'nm', 'energy': 'kJ/mol'}
    positions = (pos / 10.0).requires_grad_()
    energy = module(positions, cell / 10.0)
    forces = -torch.autograd.grad(energy, positions)[0]
    ref = compute_properties(model64, z, pos, cell=cell, pbc=torch.ones(3, dtype=torch.bool))
    assert_close(energy.item() / EV_TO_KJ_PER_MOL, forces / FORCE_SCALE, ref, rtol=1e-10)


def test_export_float32(ethanol, tmp_path):
    z, pos = ethanol
    model = from_pretrained('tensornet-ani1x')
    module, metadata = load_openmm(
        export_openmm(model, str(tmp_path / 'ethanol.pt'), atomic_numbers=z))
    assert metadata['dtype'] == 'float32' and metadata['periodic'] is False
    positions = (pos / 10.0).requires_grad_()
    energy = module(positions)
    forces = -torch.autograd.grad(energy, positions)[0]
    # The module rounds nm positions to float32 and multiplies by 10 in float32, which moves a
    # coordinate by up to ~1e-7 relative against compute_properties' direct rounding of the
    # Angstrom value: forces shift by < 1e-5 eV/A (see test_single_point_molecule_float32).
    assert_close(energy.item() / EV_TO_KJ_PER_MOL, forces / FORCE_SCALE,
                 compute_properties(model, z, pos), rtol=1e-5)


def test_read_atoms(ethanol, tmp_path):
    from ase import Atoms
    z, pos = ethanol
    ase_io.write(tmp_path / 'ethanol.xyz', Atoms(numbers=z.numpy(), positions=pos.numpy()))
    assert deploy_openmm.read_atoms(str(tmp_path / 'ethanol.xyz')) == (z.tolist(), False)
    slab = Atoms('H2', positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=[1, 1, 0])
    ase_io.write(tmp_path / 'slab.extxyz', slab)
    with pytest.raises(ValueError, match='all three'):
        deploy_openmm.read_atoms(str(tmp_path / 'slab.extxyz'))
    with pytest.raises(ValueError, match='cannot read'):
        deploy_openmm.read_atoms(str(tmp_path / 'missing.xyz'))


def test_export_errors(model64, ethanol, tmp_path):
    z, _ = ethanol
    with pytest.raises(ValueError, match='atomic_numbers'):
        export_openmm(model64, str(tmp_path / 'x.pt'))
    with pytest.raises(ValueError, match='dtype'):
        openmm_module(model64, z, torch.float16)
    path = export_openmm(model64, str(tmp_path / 'ok.pt'), torch.float64, atomic_numbers=z)
    data = (tmp_path / 'ok.pt').read_bytes()
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='corrupt or truncated'):
        load_openmm(str(truncated))
    text = tmp_path / 'text.pt'
    text.write_text('not a model')
    with pytest.raises(ValueError, match='corrupt or truncated'):
        load_openmm(str(text))
    # The same archive with a future format version.
    future = io.BytesIO()
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(future, 'w') as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename.endswith('/pyg_tensorpot.json'):
                metadata = json.loads(content)
                metadata['format_version'] = 99
                content = json.dumps(metadata).encode()
            target.writestr(info, content)
    (tmp_path / 'future.pt').write_bytes(future.getvalue())
    with pytest.raises(ValueError, match='format version 99'):
        load_openmm(str(tmp_path / 'future.pt'))


def test_openmmtorch_absent_or_unusable_is_said_clearly(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, 'openmmtorch', None)  # import then finds no module
    with pytest.raises(ImportError, match='openmmtorch is not installed.*python_force'):
        deploy_openmm.load_openmmtorch()


def test_torch_force(model64, ethanol, tmp_path):
    try:
        deploy_openmm.load_openmmtorch()
    except ImportError as error:
        pytest.skip(f'openmmtorch does not work here: {error}')
    z, pos = ethanol
    for force in (deploy_openmm.torch_force(model64, z, dtype=torch.float64),
                  deploy_openmm.torch_force(
                      export_openmm(model64, str(tmp_path / 'e.pt'), torch.float64,
                                    atomic_numbers=z))):
        system = openmm.System()
        for _ in range(z.numel()):
            system.addParticle(1.0)
        system.addForce(force)
        context = openmm.Context(system, openmm.VerletIntegrator(0.0005),
                                 openmm.Platform.getPlatformByName('Reference'))
        context.setPositions(pos.numpy() / 10.0)
        assert_close(*openmm_results(context), compute_properties(model64, z, pos),
                     rtol=1e-10)


def test_langevin_example(tmp_path):
    import runpy
    example = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'examples',
                       'openmm_md.py')
    main = runpy.run_path(example)['main']
    result = main(['--steps', '10', '--interval', '5', '--output', str(tmp_path)])
    assert result['potential_energy_kj_mol'] == pytest.approx(result['model_energy_kj_mol'],
                                                              rel=1e-12)
    with open(result['trajectory']) as handle:
        assert handle.read().count('MODEL') == 2
    with open(result['log']) as handle:
        assert len(handle.read().splitlines()) == 3
