"""Results that must not depend on the CPU: the water boxes that tests and benchmarks share
(built in float64, cast once) and float64 model outputs under other kernel paths."""
import math
import os
import subprocess
import sys

import torch
from hypothesis import given
from hypothesis import strategies as st

from pyg_tensorpot.structures import WATER_VOLUME_PER_MOLECULE, water_box

OH_BOND = 0.9572  # Angstrom, the TIP3P geometry water_box promises
HOH_ANGLE = math.radians(104.52)
# Largest distance of an atom from its molecule's centre (the mean of O, H, H positions):
# the hydrogens, at sqrt((b sin(t/2))^2 + (b cos(t/2) / 3)^2) = 0.78 A (the oxygen: 0.39 A).
H_FROM_CENTRE = math.hypot(OH_BOND * math.sin(HOH_ANGLE / 2),
                           OH_BOND * math.cos(HOH_ANGLE / 2) / 3)


def minimum_image_distances(pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """All pair distances in an orthorhombic periodic cell, :obj:`[N, N]`."""
    lengths = cell.diagonal()
    delta = pos[:, None, :] - pos[None, :, :]
    delta = delta - lengths * torch.round(delta / lengths)
    return delta.norm(dim=-1)


@given(num_molecules=st.integers(1, 30), density=st.floats(0.5, 1.5),
       seed=st.integers(0, 2**31 - 1))
def test_water_box_geometry_density_and_contacts(num_molecules, density, seed):
    z, pos, cell = water_box(num_molecules, density=density, seed=seed)
    assert z.tolist() == [8, 1, 1] * num_molecules
    assert pos.dtype == cell.dtype == torch.float64 and pos.shape == (3 * num_molecules, 3)
    # rigid molecules: float64 construction, so bond lengths and angles to 1e-12
    molecules = pos.view(num_molecules, 3, 3)
    bonds = molecules[:, 1:] - molecules[:, :1]
    lengths = bonds.norm(dim=-1)
    assert (lengths - OH_BOND).abs().max() < 1e-12
    cos_angle = (bonds[:, 0] * bonds[:, 1]).sum(-1) / (lengths[:, 0] * lengths[:, 1])
    assert (cos_angle - math.cos(HOH_ANGLE)).abs().max() < 1e-12
    # the cell is the lattice's: liquid density per lattice site, enough sites
    assert torch.count_nonzero(cell - torch.diag(cell.diagonal())) == 0
    spacing = (WATER_VOLUME_PER_MOLECULE / density)**(1 / 3)
    sites = torch.round(cell.diagonal() / spacing)
    assert (cell.diagonal() - sites * spacing).abs().max() < 1e-9
    assert int(sites.prod()) >= num_molecules
    assert abs(float(torch.det(cell) / sites.prod()) * density / WATER_VOLUME_PER_MOLECULE
               - 1) < 1e-12
    # no close contacts, across the faces too: molecular centres are a lattice spacing apart
    distances = minimum_image_distances(pos, cell)
    other = torch.arange(num_molecules).repeat_interleave(3)
    other = other[:, None] != other[None, :]
    if num_molecules > 1:
        assert distances[other].min() >= spacing - 2 * H_FROM_CENTRE - 1e-9
    # the same seed gives the same box; float32 is the float64 box rounded once
    _, again, _ = water_box(num_molecules, density=density, seed=seed)
    assert torch.equal(again, pos)
    _, pos32, cell32 = water_box(num_molecules, density=density, seed=seed,
                                 dtype=torch.float32)
    assert torch.equal(pos32, pos.float()) and torch.equal(cell32, cell.float())


def kernel_path_results(float_type: torch.dtype = torch.float64) -> dict:
    """What must not depend on the CPU kernel path: a cluster of 8 water molecules from
    :func:`water_box` and the energies and forces of the pretrained models on it.

    Args:
        float_type (torch.dtype, optional): The models' floating-point type.
            (default: :obj:`torch.float64`)

    Returns:
        dict: :obj:`capability` (the kernel path), :obj:`pos` and :obj:`models`, a
        (energy, forces) pair in float64 per registered model.
    """
    from pyg_tensorpot.hub import PRETRAINED_MODELS, from_pretrained
    z, pos, _ = water_box(8, seed=3)
    results = {'capability': torch.backends.cpu.get_cpu_capability(), 'pos': pos, 'models': {}}
    for name in sorted(PRETRAINED_MODELS):
        model = from_pretrained(name).to(float_type).eval()
        energy, forces = model.energy_and_forces(z, pos.to(float_type))
        results['models'][name] = (energy.double(), forces.double())
    return results


def test_float64_results_do_not_depend_on_the_kernel_path(tmp_path):
    # Another CPU runs other vectorised kernels (AVX-512, AVX2, scalar) with other summation
    # orders; ATEN_CPU_CAPABILITY=default makes this CPU run the scalar ones. Tests that
    # compare with numbers recorded elsewhere (the S66x8 model cards) rely on float64 results
    # agreeing between kernel paths, and on water_box being built the same.
    out = tmp_path / 'default.pt'
    script = ('import sys, torch\n'
              f'sys.path.insert(0, {os.path.dirname(__file__)!r})\n'
              'from test_cpu_independence import kernel_path_results\n'
              'torch.save(kernel_path_results(), sys.argv[1])\n')
    env = dict(os.environ, ATEN_CPU_CAPABILITY='default', HF_HUB_OFFLINE='1')
    done = subprocess.run([sys.executable, '-c', script, str(out)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scalar = torch.load(out, weights_only=True)
    native = kernel_path_results()
    assert scalar['capability'] == 'DEFAULT'
    assert torch.equal(scalar['pos'], native['pos'])
    assert sorted(scalar['models']) == sorted(native['models']) != []
    for name, (energy, forces) in native['models'].items():
        other_energy, other_forces = scalar['models'][name]
        # measured (AMD EPYC, scalar vs AVX-512): energies identical, forces 6e-15 of the
        # largest component apart; float32 forces would be 7e-6 apart
        assert (other_energy - energy).abs().max() <= 1e-12 * energy.abs().max(), name
        assert (other_forces - forces).abs().max() <= 1e-12 * forces.abs().max(), name
