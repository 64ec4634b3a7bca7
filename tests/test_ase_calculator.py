"""The ASE calculator: derivatives against finite differences, periodic invariances, caching,
dtypes, bad input and energy conservation in NVE."""
import importlib
import re
import sys

import numpy as np
import pytest
import torch

ase = pytest.importorskip('ase')

from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402
from ase.calculators.fd import (calculate_numerical_forces,  # noqa: E402
                                calculate_numerical_stress)

import pyg_tensorpot.calculator as calculator_module  # noqa: E402
from pyg_tensorpot import HIPNN, TensorNet, compute_properties, from_pretrained  # noqa: E402
from pyg_tensorpot.calculator import TensorPotCalculator  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402


pytestmark = pytest.mark.usefixtures('one_thread')  # small systems (conftest.py)


def small_tensornet(cutoff: float = 4.0) -> TensorNet:
    torch.manual_seed(0)
    return TensorNet(hidden_channels=16, num_layers=1, num_rbf=8, cutoff=cutoff,
                     max_z=10).double().eval()


def small_hipnn_ts() -> HIPNN:
    torch.manual_seed(0)
    return HIPNN(hidden_channels=16, num_interactions=1, num_atom_layers=1,
                 num_sensitivities=8, soft_max=3.5, cutoff=4.0, max_order=2).double().eval()


MODELS = {'tensornet': small_tensornet, 'hipnn-ts': small_hipnn_ts}


def water_atoms(num_molecules: int = 8, shape: str = 'orthorhombic', seed: int = 0) -> Atoms:
    z, pos, cell = water_box(num_molecules, seed=seed)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    if shape == 'triclinic':
        # A shear of every lattice vector; positions follow (no overlaps across the faces).
        shear = np.array([[1.0, 0.0, 0.0], [0.18, 1.0, 0.0], [-0.12, 0.21, 1.0]])
        atoms.set_cell(atoms.cell.array @ shear.T @ np.diag([1.0, 0.97, 1.04]),
                       scale_atoms=True)
    return atoms


def thermalize(atoms: Atoms, temperature_K: float, seed: int) -> None:
    from ase.md import velocitydistribution as vd
    rng = np.random.default_rng(seed)
    # Newer ASE renamed MaxwellBoltzmannDistribution to thermalize_momenta (same draw).
    draw = getattr(vd, 'thermalize_momenta', None) or vd.MaxwellBoltzmannDistribution
    draw(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.parametrize('shape', ['molecule', 'orthorhombic', 'triclinic'])
def test_forces_match_finite_differences(name, shape):
    if shape == 'molecule':
        atoms = molecule('CH3CH2OH')
        atoms.rattle(0.05, seed=1)
    else:
        atoms = water_atoms(shape=shape)
    atoms.calc = TensorPotCalculator(MODELS[name]())
    forces = atoms.get_forces()
    assert forces.dtype == np.float64 and forces.shape == (len(atoms), 3)
    iatoms = [0, 1, 5, len(atoms) - 1]
    # Central differences in float64 (energies of a few eV): truncation ~eps^2 and rounding
    # ~1e-16 E / eps are both far below the 1e-6 bound.
    numerical = calculate_numerical_forces(atoms, eps=1e-5, iatoms=iatoms)
    assert relative_error(forces[iatoms], numerical) < 1e-6


@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.parametrize('shape', ['orthorhombic', 'triclinic'])
def test_stress_matches_finite_differences(name, shape):
    atoms = water_atoms(shape=shape)
    atoms.calc = TensorPotCalculator(MODELS[name]())
    stress = atoms.get_stress()
    assert stress.shape == (6, ) and stress.dtype == np.float64
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    assert relative_error(stress, numerical) < 1e-6
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T, rtol=0, atol=1e-14)


def test_stress_mixed_boundaries_and_zero_vacuum_vector():
    atoms = water_atoms()
    atoms.pbc = (True, True, False)
    atoms.center(vacuum=4.0, axis=2)
    model = small_tensornet()
    atoms.calc = TensorPotCalculator(model)
    stress = atoms.get_stress()
    assert relative_error(stress, calculate_numerical_stress(atoms, eps=1e-5)) < 1e-6
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    # The lattice vector of the non-periodic direction may be zero; it changes nothing.
    flat = atoms.copy()
    flat.cell[2] = 0.0
    flat.calc = TensorPotCalculator(model)
    assert flat.get_potential_energy() == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(flat.get_forces(), forces, rtol=0, atol=1e-10)
    with pytest.raises(PropertyNotImplementedError, match='non-periodic'):
        flat.get_stress()


@pytest.mark.parametrize('case', ['hipnn-ts-ani1x short orthorhombic',
                                  'hipnn-ts-ani1x short triclinic',
                                  'tensornet long orthorhombic'])
def test_supercell_energy_per_atom(case):
    name, length, shape = case.split()
    if name == 'tensornet':
        model = small_tensornet(cutoff=3.0)
    else:
        model = name
    calc = TensorPotCalculator(model)
    atoms = water_atoms(shape=shape)
    heights = atoms.cell.volume / np.linalg.norm(np.cross(atoms.cell[[1, 2, 0]],
                                                          atoms.cell[[2, 0, 1]]), axis=1)
    cutoff = calc.model.cutoff
    # The two regimes: images of an atom within its own cutoff sphere, or not.
    assert (heights.min() < 2 * cutoff) == (length == 'short')
    atoms.calc = calc
    energy = atoms.get_potential_energy() / len(atoms)
    stress = atoms.get_stress()
    forces = atoms.get_forces()
    supercell = atoms.repeat(2)
    supercell.calc = calc
    assert supercell.get_potential_energy() / len(supercell) == pytest.approx(energy, rel=1e-9)
    np.testing.assert_allclose(supercell.get_stress(), stress, rtol=0, atol=1e-9)
    np.testing.assert_allclose(supercell.get_forces()[:len(atoms)], forces, rtol=0, atol=1e-9)


def test_unwrapped_positions_give_the_same_results():
    atoms = water_atoms(shape='triclinic')
    atoms.calc = TensorPotCalculator(small_tensornet())
    energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                              atoms.get_stress())
    shifted = atoms.copy()
    rng = np.random.default_rng(0)
    shifted.positions += rng.integers(-2, 3, size=(len(atoms), 3)) @ atoms.cell.array
    shifted.calc = atoms.calc
    assert shifted.get_potential_energy() == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(shifted.get_forces(), forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(shifted.get_stress(), stress, rtol=0, atol=1e-12)
    shifted.wrap()
    assert shifted.get_potential_energy() == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(shifted.get_forces(), forces, rtol=0, atol=1e-10)


def test_model_by_name_and_per_atom_energies():
    calc = TensorPotCalculator('hipnn-ts-ani1x')
    assert calc.model.dtype == torch.float64 and not calc.model.training
    reference = from_pretrained('hipnn-ts-ani1x').double()
    atoms = molecule('CH3CH2OH')
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert isinstance(energy, float)
    assert atoms.get_potential_energy(force_consistent=True) == energy
    z = torch.as_tensor(atoms.numbers)
    pos = torch.as_tensor(atoms.positions)
    expected = compute_properties(reference, z, pos)
    assert energy == pytest.approx(float(expected['energy'][0]), rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), expected['forces'].numpy(), rtol=0,
                               atol=1e-10)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms), ) and energies.dtype == np.float64
    assert energies.sum() == pytest.approx(energy, rel=1e-12)


def test_model_is_reused_and_results_cached(monkeypatch):
    model = small_tensornet()
    calc = TensorPotCalculator(model)
    # Already float64, on the CPU and in eval mode: used as is, not copied.
    assert calc.model is model
    calls = []
    original = calculator_module.compute_properties

    def counting(model_, *args, **kwargs):
        calls.append((id(model_), tuple(kwargs['properties'])))
        return original(model_, *args, **kwargs)

    monkeypatch.setattr(calculator_module, 'compute_properties', counting)
    atoms = water_atoms()
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_potential_energy()
    assert calls == [(id(model), ('energy', 'forces'))]
    atoms.get_stress()
    assert len(calls) == 2 and 'stress' in calls[1][1]
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert len(calls) == 3 and {c[0] for c in calls} == {id(model)}

    float32 = small_tensornet().float()
    converted = TensorPotCalculator(float32)
    assert converted.model is not float32 and converted.model.dtype == torch.float64
    assert float32.dtype == torch.float32, 'the model passed in must not be modified'
    trained = small_tensornet().train()
    assert TensorPotCalculator(trained).model is not trained and trained.training


def test_float32_agrees_with_float64():
    atoms = water_atoms()
    results = {}
    for dtype in (torch.float32, torch.float64):
        atoms.calc = TensorPotCalculator('tensornet-ani1x', dtype=dtype)
        results[dtype] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    (e32, f32, s32), (e64, f64, s64) = results[torch.float32], results[torch.float64]
    assert f32.dtype == np.float64
    # float32 rounds positions by ~6e-8 x 6 A and every activation by ~6e-8 relative; the
    # per-atom terms (order 1 eV) are summed in float64. Measured differences: energy
    # 1.5e-6 eV, forces 1.4e-5 eV/A (of forces up to 1 eV/A), stress 1.7e-7 eV/A^3; the
    # bounds leave a 14-60x margin for other CPUs' float32 kernels.
    assert abs(e32 - e64) < 1e-4
    np.testing.assert_allclose(f32, f64, rtol=0, atol=2e-4)
    np.testing.assert_allclose(s32, s64, rtol=0, atol=1e-5)


def test_total_charge_from_info_and_argument():

    class ChargedSpring(torch.nn.Module):
        """E = q + sum |r|^2 / 2: the charge shifts the energy, and shows it was passed."""

        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, z, pos, batch=None, edge_index=None, cell=None, pbc=None,
                    total_charge=None, num_graphs=None):
            q = torch.zeros(1, dtype=pos.dtype) if total_charge is None else total_charge
            return q + 0.5 * self.k * (pos**2).sum().reshape(1)

    atoms = molecule('H2O')
    spring = 0.5 * float((atoms.positions**2).sum())
    atoms.calc = TensorPotCalculator(ChargedSpring().eval())
    assert atoms.get_potential_energy() == pytest.approx(spring)
    np.testing.assert_allclose(atoms.get_forces(), -atoms.positions)
    atoms.info['charge'] = -1
    assert atoms.get_potential_energy() == pytest.approx(spring - 1.0)
    atoms.calc = TensorPotCalculator(ChargedSpring().eval(), charge=2)
    assert atoms.get_potential_energy() == pytest.approx(spring - 1.0)
    del atoms.info['charge']
    assert atoms.get_potential_energy() == pytest.approx(spring + 2.0)
    atoms.info['charge'] = 'minus one'
    with pytest.raises(ValueError, match='charge'):
        atoms.get_potential_energy()


def test_bad_input_raises_clear_errors():
    calc = TensorPotCalculator(small_hipnn_ts())
    ethanol = molecule('CH3CH2OH')
    ethanol.calc = calc
    with pytest.raises(PropertyNotImplementedError, match='not periodic'):
        ethanol.get_stress()
    broken = ethanol.copy()
    broken.positions[3] = np.nan
    broken.calc = calc
    with pytest.raises(ValueError, match=r'NaN .*H3'):
        broken.get_forces()
    silicon = Atoms('SiH4', positions=molecule('SiH4').positions)
    silicon.calc = calc
    with pytest.raises(ValueError, match='Si'):
        silicon.get_potential_energy()
    collapsed = water_atoms()
    collapsed.cell[1] = 0.0
    collapsed.calc = calc
    with pytest.raises(ValueError, match='zero length'):
        collapsed.get_potential_energy()
    empty = Atoms()
    empty.calc = calc
    with pytest.raises(ValueError, match='no atoms'):
        empty.get_potential_energy()
    # After every refusal the calculator still works.
    assert np.isfinite(ethanol.get_forces()).all()
    with pytest.raises(TypeError, match='dtype'):
        TensorPotCalculator(small_hipnn_ts(), dtype=torch.int64)
    with pytest.raises(TypeError, match='model'):
        TensorPotCalculator(42)


def test_nve_conserves_energy():
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = water_atoms()
    atoms.calc = TensorPotCalculator('hipnn-ts-ani1x')
    thermalize(atoms, 300.0, seed=0)
    totals = []
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dyn.run(100)
    totals = np.array(totals) / len(atoms)
    assert np.isfinite(totals).all()
    # Velocity Verlet at 0.5 fs on flexible water (O-H period ~9 fs) conserves a shadow
    # energy: the total energy fluctuates by ~(omega dt)^2 / 8 ~ 1% of the vibrational energy
    # while the lattice start relaxes (potential energy falls by 0.06 eV/atom, 300 -> 600 K).
    # Measured: spread 5.2e-4 eV/atom, first-to-last 10 steps 1e-4 eV/atom; a force that is
    # not the energy's gradient or a broken integrator breaks these 4x / 10x bounds.
    assert totals.max() - totals.min() < 2e-3
    assert abs(totals[-10:].mean() - totals[:10].mean()) < 1e-3
    assert 200 < atoms.get_temperature() < 900


def test_import_without_ase_names_the_extra(monkeypatch):
    # The package is imported afresh with ASE made unimportable (a None entry in sys.modules
    # blocks an import); monkeypatch restores every module afterwards.
    for name in list(sys.modules):
        if name == 'ase' or name.startswith(('ase.', 'pyg_tensorpot')):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'ase', None)
    fresh = importlib.import_module('pyg_tensorpot')
    assert hasattr(fresh, 'TensorNet') and sys.modules['ase'] is None
    with pytest.raises(ImportError, match=re.escape("pip install 'pyg-tensorpot[ase]'")):
        importlib.import_module('pyg_tensorpot.calculator')


@pytest.mark.parametrize('name', sorted(MODELS))
@pytest.mark.parametrize('shape', ['molecule', 'triclinic'])
def test_skin_gives_the_results_of_a_fresh_search(name, shape):
    if shape == 'molecule':
        atoms = molecule('CH3CH2OH')
    else:
        atoms = water_atoms(shape=shape)
    reference = atoms.copy()
    atoms.calc = TensorPotCalculator(MODELS[name](), skin=0.8)
    reference.calc = TensorPotCalculator(MODELS[name]())
    properties = ['energy', 'forces'] + ([] if shape == 'molecule' else ['stress'])
    rng = np.random.default_rng(3)
    for _ in range(4):
        displacement = rng.normal(scale=0.05, size=(len(atoms), 3))
        atoms.positions = atoms.positions + displacement
        reference.positions = atoms.positions
        atoms.calc.calculate(atoms, properties)
        reference.calc.calculate(reference, properties)
        for key in properties:
            got, want = atoms.calc.results[key], reference.calc.results[key]
            assert relative_error(np.asarray(got), np.asarray(want)) < 1e-12, key
    assert 1 <= atoms.calc.verlet.num_builds < atoms.calc.verlet.num_calls == 4
    # Per-atom energies come from a fresh search, and still sum to the energy.
    energies = atoms.get_potential_energies()
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    assert 'skin=0.8' in repr(atoms.calc)


@pytest.mark.parametrize('skin', [-0.5, float('nan'), float('inf'), True, '0.5'])
def test_bad_skin_is_a_value_error(skin):
    with pytest.raises(ValueError, match='skin'):
        TensorPotCalculator(small_hipnn_ts(), skin=skin)


def test_skin_needs_a_model_of_the_package():
    with pytest.raises(ValueError, match='AtomisticModel'):
        TensorPotCalculator([small_hipnn_ts(), small_hipnn_ts()], skin=0.5)
    assert TensorPotCalculator(small_hipnn_ts()).verlet is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('name', ['tensornet-ani1x', 'hipnn-ts-ani1x'])
@pytest.mark.parametrize('skin', [0.0, 0.5])
def test_every_pretrained_model_on_cuda_matches_cpu(name, skin):
    atoms = water_atoms()
    atoms.calc = TensorPotCalculator(name, device='cuda', skin=skin)
    energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                              atoms.get_stress())
    atoms.calc = TensorPotCalculator(name, device='cpu')
    assert energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stress, atoms.get_stress(), rtol=0, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_cuda_matches_cpu():
    atoms = water_atoms()
    atoms.calc = TensorPotCalculator('tensornet-ani1x', device='cuda')
    assert next(atoms.calc.model.parameters()).is_cuda
    energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                              atoms.get_stress())
    atoms.calc = TensorPotCalculator('tensornet-ani1x', device='cpu')
    # float64 on both devices; only the order of summations differs.
    assert energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(forces, atoms.get_forces(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(stress, atoms.get_stress(), rtol=0, atol=1e-10)


def test_cuda_unavailable_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    with pytest.raises(ValueError, match='CUDA is not available'):
        TensorPotCalculator(small_hipnn_ts(), device='cuda')
