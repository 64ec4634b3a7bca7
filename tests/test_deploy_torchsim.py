"""The TorchSim wrapper: a batch of different systems equals each system alone, the stress sign
against TorchSim's own Lennard-Jones model and the cell convention against ASE's, batched NVE
conserves every system's energy, and bad input gets the package's errors."""
import numpy as np
import pytest
import torch

ts = pytest.importorskip('torch_sim')

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from torch_sim.models.lennard_jones import LennardJonesModel  # noqa: E402

from pyg_tensorpot import compute_properties, from_pretrained  # noqa: E402
from pyg_tensorpot.deploy.torchsim import TensorPotModel  # noqa: E402
from pyg_tensorpot.models.ensemble import Ensemble  # noqa: E402
from pyg_tensorpot.nn.graph import atom_graph  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402

#: Molecules of 3 to 12 atoms (C, H, N, O only: the pretrained models' elements).
MOLECULES = ['H2O', 'CH4', 'NH3', 'C6H6', 'CH3OH', 'HCOOH', 'CH3CN', 'C2H4']

#: Float64 throughout: a batch and a single system differ only by summation order, at the
#: 1e-13 relative level for energies of ~1e3 eV and forces of ~1 eV/A.
TOL = dict(rtol=1e-10, atol=1e-10)


pytestmark = pytest.mark.usefixtures('one_thread')  # small systems (conftest.py)


@pytest.fixture(scope='module')
def pretrained64():
    return {name: from_pretrained(name).double() for name in ('tensornet-ani1x',
                                                              'hipnn-ts-ani1x')}


def molecules(names, seed: int = 0):
    rng = np.random.default_rng(seed)
    atoms = []
    for name in names:
        mol = molecule(name)
        # Off equilibrium, so that the forces are not small.
        mol.positions += rng.normal(scale=0.05, size=mol.positions.shape)
        atoms.append(mol)
    return atoms


def sheared_water(num_molecules: int, seed: int) -> Atoms:
    # A triclinic cell (not symmetric), so that a cell passed transposed would give another
    # energy: it tests TorchSim's column convention against ours (rows).
    z, pos, cell = water_box(num_molecules, seed=seed)
    atoms = Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)
    shear = np.array([[1.0, 0.0, 0.0], [0.18, 1.0, 0.0], [-0.12, 0.21, 1.0]])
    atoms.set_cell(atoms.cell.array @ shear.T @ np.diag([1.0, 0.97, 1.04]), scale_atoms=True)
    return atoms


def alone(model, atoms: Atoms, properties):
    cell = torch.as_tensor(np.array(atoms.cell), dtype=torch.float64) if atoms.pbc.any() \
        else None
    return compute_properties(model, torch.as_tensor(atoms.numbers),
                              torch.as_tensor(atoms.positions, dtype=torch.float64),
                              cell=cell, pbc=torch.as_tensor(atoms.pbc) if cell is not None
                              else None, properties=properties)


@pytest.mark.parametrize('name', ['tensornet-ani1x', 'hipnn-ts-ani1x'])
def test_batch_of_molecules_equals_each_alone(pretrained64, name):
    model = pretrained64[name]
    wrapper = TensorPotModel(model)
    assert wrapper.model is model  # float64, eval, CPU: used as given, no copy
    atoms = molecules(MOLECULES)
    state = ts.io.atoms_to_state(atoms, wrapper.device, wrapper.dtype)
    out = wrapper(state)
    assert set(out) == {'energy', 'forces'}
    assert out['energy'].shape == (len(atoms), ) and out['energy'].dtype == torch.float64
    assert out['forces'].shape == (sum(len(a) for a in atoms), 3)
    start = 0
    for k, mol in enumerate(atoms):
        ref = alone(model, mol, ('energy', 'forces'))
        torch.testing.assert_close(out['energy'][k:k + 1], ref['energy'], **TOL)
        torch.testing.assert_close(out['forces'][start:start + len(mol)], ref['forces'], **TOL)
        start += len(mol)


def test_ensemble_and_pretrained_name(pretrained64):
    atoms = molecules(['CH3OH', 'H2O', 'NH3'], seed=1)
    committee = TensorPotModel(['tensornet-ani1x', 'hipnn-ts-ani1x'], dtype=torch.float64)
    assert isinstance(committee.model, Ensemble) and not committee.model.training
    out = committee(ts.io.atoms_to_state(atoms, committee.device, committee.dtype))
    reference = Ensemble(list(pretrained64.values())).eval()
    start = 0
    for k, mol in enumerate(atoms):
        ref = alone(reference, mol, ('energy', 'forces'))
        torch.testing.assert_close(out['energy'][k:k + 1], ref['energy'], **TOL)
        torch.testing.assert_close(out['forces'][start:start + len(mol)], ref['forces'], **TOL)
        start += len(mol)


def test_periodic_water_boxes_with_stress(pretrained64):
    model = pretrained64['tensornet-ani1x']
    wrapper = TensorPotModel(model, compute_stress=True)
    boxes = [sheared_water(8, seed=0), sheared_water(27, seed=1)]
    state = ts.io.atoms_to_state(boxes, wrapper.device, wrapper.dtype)
    # TorchSim keeps lattice vectors as columns: its cell is ASE's transposed.
    torch.testing.assert_close(state.cell[0], torch.as_tensor(boxes[0].cell.array.T))
    out = wrapper(state)
    assert out['stress'].shape == (2, 3, 3)
    start = 0
    for k, box in enumerate(boxes):
        ref = alone(model, box, ('energy', 'forces', 'stress'))
        torch.testing.assert_close(out['energy'][k:k + 1], ref['energy'], **TOL)
        torch.testing.assert_close(out['forces'][start:start + len(box)], ref['forces'], **TOL)
        torch.testing.assert_close(out['stress'][k], ref['stress'][0], **TOL)
        start += len(box)
    # The transposed (wrong) cell is another crystal: its energy differs, so the comparison
    # above does tell the two conventions apart.
    wrong = alone(model, Atoms(numbers=boxes[0].numbers, positions=boxes[0].positions,
                               cell=boxes[0].cell.array.T, pbc=True), ('energy', ))
    assert abs(float(wrong['energy'][0] - out['energy'][0])) > 1e-3


class PairLJ(torch.nn.Module):
    """Lennard-Jones as TorchSim writes it (12-6, cut at the cutoff without a shift), as an
    energy-only module; forces and stress come from compute_properties by autograd."""
    dtype = torch.float64

    def __init__(self, sigma: float, epsilon: float, cutoff: float):
        super().__init__()
        self.sigma, self.epsilon, self.cutoff = sigma, epsilon, cutoff

    def forward(self, z, pos, batch, cell=None, pbc=None):
        graph = atom_graph(z, pos, self.cutoff, batch, cell=cell, pbc=pbc,
                           num_graphs=1 if cell is None else cell.reshape(-1, 3, 3).size(0))
        x6 = (self.sigma / graph.edge_weight)**6
        # Every pair appears in both directions: half of the sum.
        pair = 0.5 * 4.0 * self.epsilon * (x6 * x6 - x6)
        return torch.zeros(graph.num_graphs, dtype=pos.dtype).index_add(
            0, graph.batch[graph.edge_index[1]], pair)


def argon(a: float, repeat, shear: bool, seed: int) -> Atoms:
    crystal = bulk('Ar', 'fcc', a=a, cubic=True).repeat(repeat)
    if shear:
        crystal.set_cell(crystal.cell.array @ np.array([[1.0, 0.0, 0.0], [0.1, 1.0, 0.0],
                                                        [-0.07, 0.12, 1.0]]).T,
                         scale_atoms=True)
    crystal.positions += np.random.default_rng(seed).normal(scale=0.05,
                                                            size=crystal.positions.shape)
    return crystal


#: Argon (sigma in A, epsilon in eV) and a cutoff longer than half the 10 A box.
SIGMA, EPSILON, CUTOFF = 3.405, 0.0104, 6.0


def test_stress_sign_matches_torchsim_lennard_jones():
    # A compressed, rattled cubic argon crystal (a = 5.0 A, equilibrium about 5.26 A):
    # TorchSim's own analytic Lennard-Jones model and ours by autograd through the wrapper.
    # The energies agree. TorchSim 0.3.0's LennardJonesModel adds every pair's force and
    # virial once per direction of its full neighbour list, so its forces and stress are
    # twice the derivatives of its energy (0.6's pair potentials halve them): forces and
    # stress are compared up to one positive factor c (1 for a correct model), which keeps
    # what matters here, the sign (negative stress when compressed, as in ASE).
    crystal = argon(5.0, (2, 2, 2), shear=False, seed=3)
    lj = LennardJonesModel(sigma=SIGMA, epsilon=EPSILON, cutoff=CUTOFF, dtype=torch.float64,
                           compute_stress=True)
    ours = TensorPotModel(PairLJ(SIGMA, EPSILON, CUTOFF), compute_stress=True)
    assert ours.dtype == torch.float64
    state = ts.io.atoms_to_state([crystal], ours.device, ours.dtype)
    expected, got = lj(state), ours(state)
    torch.testing.assert_close(got['energy'], expected['energy'].reshape(-1), **TOL)
    factor = float((expected['forces'] * got['forces']).sum() / got['forces'].pow(2).sum())
    assert factor in (pytest.approx(1.0), pytest.approx(2.0))
    torch.testing.assert_close(factor * got['forces'], expected['forces'], **TOL)
    torch.testing.assert_close(factor * got['stress'], expected['stress'].reshape(1, 3, 3),
                               **TOL)
    assert bool((torch.diagonal(got['stress'][0]) < 0).all())


def test_triclinic_stress_matches_ase_lennard_jones():
    # Sheared cells, so that a transposed cell or a stress of the wrong sign would show: the
    # wrapper's stress and forces (TorchSim's column cell converted to our rows) against
    # ASE's analytic Lennard-Jones (rows, ASE's sign). ASE shifts every pair energy by
    # V(r_c), which moves the energy but neither forces nor stress.
    from ase.calculators.lj import LennardJones
    crystals = [argon(5.0, (2, 2, 2), shear=True, seed=4), argon(5.1, (3, 2, 2), shear=True,
                                                                   seed=5)]
    ours = TensorPotModel(PairLJ(SIGMA, EPSILON, CUTOFF), compute_stress=True)
    got = ours(ts.io.atoms_to_state(crystals, ours.device, ours.dtype))
    start = 0
    for k, crystal in enumerate(crystals):
        crystal.calc = LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=CUTOFF, smooth=False)
        torch.testing.assert_close(got['stress'][k],
                                   torch.as_tensor(crystal.get_stress(voigt=False)), **TOL)
        torch.testing.assert_close(got['forces'][start:start + len(crystal)],
                                   torch.as_tensor(crystal.get_forces()), **TOL)
        start += len(crystal)


def test_batched_nve_conserves_energy_per_system(pretrained64):
    wrapper = TensorPotModel(pretrained64['tensornet-ani1x'])
    # ASE's geometries (near equilibrium): 300 K of kinetic energy to start with.
    state = ts.io.atoms_to_state([molecule(name) for name in ('H2O', 'CH4', 'NH3', 'CH3OH',
                                                              'C2H4')],
                                 wrapper.device, wrapper.dtype)
    units = ts.units.MetalUnits
    init, step = ts.integrators.nve(
        wrapper, dt=torch.tensor(0.5e-3 * units.time, dtype=torch.float64),
        kT=torch.tensor(300.0 * units.temperature, dtype=torch.float64), seed=0)
    md = init(state)

    def total_energy(md):
        return md.energy + ts.quantities.calc_kinetic_energy(
            masses=md.masses, momenta=md.momenta, system_idx=md.system_idx)

    start = total_energy(md).clone()
    worst = torch.zeros_like(start)
    for _ in range(100):
        md = step(md)
        worst = torch.maximum(worst, (total_energy(md) - start).abs())
    # Velocity Verlet at 0.5 fs: measured at most 2.7 meV per system over 200 steps (the
    # error halves to a quarter at 0.25 fs, as an O(dt^2) integration error does); a
    # wrong sign or a missing force term would change the energy by eV within these steps.
    assert bool((worst < 1e-2).all()), worst
    assert bool((md.momenta.abs().sum(-1) > 0).all())  # every system did move


@pytest.mark.parametrize('periodic', [False, True])
def test_verlet_skin_follows_the_fresh_search_along_md(pretrained64, periodic):
    # Two wrappers of one model, with and without a skin, on the same NVE trajectory (driven
    # by the fresh search): every step the skin's energies, forces and stress are the fresh
    # search's, while the candidates are searched only a few times.
    model = pretrained64['tensornet-ani1x']
    fresh = TensorPotModel(model, compute_stress=periodic)
    reused = TensorPotModel(model, compute_stress=periodic, skin=0.5)
    systems = [sheared_water(8, seed=0), sheared_water(12, seed=1)] if periodic else \
        molecules(['CH3OH', 'C6H6', 'HCOOH'], seed=2)
    state = ts.io.atoms_to_state(systems, fresh.device, fresh.dtype)
    units = ts.units.MetalUnits
    init, step = ts.integrators.nve(
        fresh, dt=torch.tensor(0.5e-3 * units.time, dtype=torch.float64),
        kT=torch.tensor(600.0 * units.temperature, dtype=torch.float64), seed=0)
    md = init(state)
    keys = ['energy', 'forces'] + (['stress'] if periodic else [])
    for _ in range(12):
        md = step(md)
        ref, got = fresh(md), reused(md)
        for key in keys:
            torch.testing.assert_close(got[key], ref[key], rtol=1e-12, atol=1e-12)
    assert reused.verlet is not None and reused.verlet.num_calls == 12
    assert 1 <= reused.verlet.num_builds < 12, reused.verlet
    assert 'skin=0.5' in repr(reused)


def test_torchsim_runner_integrates_the_wrapper(pretrained64):
    # TorchSim's high-level runner (state from ASE atoms, its unit handling, Langevin): the
    # potential energies it ends with are the model's at the final positions.
    wrapper = TensorPotModel(pretrained64['hipnn-ts-ani1x'])
    torch.manual_seed(0)
    final = ts.integrate(system=[molecule('H2O'), molecule('CH3OH')], model=wrapper,
                         integrator=ts.nvt_langevin, n_steps=5, temperature=300.0,
                         timestep=0.0005)
    assert final.energy.shape == (2, )
    torch.testing.assert_close(final.energy, wrapper(final)['energy'], **TOL)
    assert not torch.equal(final.positions, ts.io.atoms_to_state(
        [molecule('H2O'), molecule('CH3OH')], wrapper.device, wrapper.dtype).positions)


def test_bad_input_gets_clear_errors(pretrained64):
    wrapper = TensorPotModel(pretrained64['tensornet-ani1x'])
    # Silicon is not an element of ANI-1x: the model's own message names it.
    state = ts.io.atoms_to_state([molecule('H2O'), molecule('SiH4')], wrapper.device,
                                 wrapper.dtype)
    with pytest.raises(ValueError, match='unknown element Si'):
        wrapper(state)
    stressed = TensorPotModel(pretrained64['tensornet-ani1x'], compute_stress=True)
    with pytest.raises(ValueError, match='stress is only defined for periodic cells'):
        stressed(ts.io.atoms_to_state([molecule('H2O')], wrapper.device, wrapper.dtype))
    with pytest.raises(TypeError, match='floating-point torch dtype'):
        TensorPotModel(pretrained64['tensornet-ani1x'], dtype=torch.int64)
    with pytest.raises(TypeError, match='torch.nn.Module'):
        TensorPotModel(42)
    for skin in (-0.5, float('nan'), True, '1'):
        with pytest.raises(ValueError, match='skin must be a finite number of Angstrom'):
            TensorPotModel(pretrained64['tensornet-ani1x'], skin=skin)
    ensemble = Ensemble([pretrained64['tensornet-ani1x'], pretrained64['tensornet-ani1x']])
    with pytest.raises(ValueError, match='a Verlet skin needs a model of the package'):
        TensorPotModel(ensemble, skin=0.5)


def test_caller_model_is_not_modified():
    model = from_pretrained('tensornet-ani1x')  # float32
    wrapper = TensorPotModel(model, dtype=torch.float64, compute_forces=False)
    assert model.dtype == torch.float32 and wrapper.model is not model
    assert wrapper.model.dtype == torch.float64
    assert not any(p.requires_grad for p in wrapper.model.parameters())
    out = wrapper(ts.io.atoms_to_state([molecule('CH4')], wrapper.device, wrapper.dtype))
    assert set(out) == {'energy'}
    # A plain dict (TorchSim 0.3.0's StateDict) is accepted as well as a SimState.
    state = ts.io.atoms_to_state([molecule('CH4')], wrapper.device, wrapper.dtype)
    plain = wrapper({'positions': state.positions, 'cell': state.cell, 'pbc': state.pbc,
                     'atomic_numbers': state.atomic_numbers})
    torch.testing.assert_close(plain['energy'], out['energy'], **TOL)


def test_batched_md_example_runs():
    # The example as shipped, shortened (and with the faster model): it picks 32 different
    # molecules, and a short run stays finite with a temperature for every molecule.
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'examples',
                        'torchsim_batched_md.py')
    spec = importlib.util.spec_from_file_location('torchsim_batched_md', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    names = [atoms.get_chemical_formula() for atoms in example.g2_molecules(32)]
    assert len(set(names)) >= 30  # distinct molecules (two isomer pairs share a formula)
    result = example.main(['--molecules', '4', '--steps', '6', '--model', 'hipnn-ts-ani1x',
                           '--seed', '1'])
    assert result['temperatures'].shape == (4, )
    assert bool(torch.isfinite(result['potential_energy']).all())
    assert bool((result['temperatures'] > 0).all()) and result['steps_per_s'] > 0
