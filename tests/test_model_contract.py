"""The contract every potential keeps, checked on every model kind (tests/model_factories.py:
TensorNet O(3) and SO(3), HIP-NN, HIP-NN-TS l = 1 and 2, a user-composed model): energies
invariant under rotations, reflections (O(3) models), translations and permutations of atoms,
forces equivariant, batching exact, forces = -dE/dpos, float32 close to float64, a periodic cell
rotated with its atoms, and the save_pretrained round trip.

Stress against strain finite differences, the Hessian and per-atom energies are in
tests/test_properties.py; model-specific behaviour in tests/test_tensornet_model.py and
tests/test_hipnn_model.py.
"""
import pytest
import torch

from pyg_tensorpot import compute_properties
from pyg_tensorpot.hub import MODEL_CLASSES, from_pretrained
from pyg_tensorpot.structures import water_box
from model_factories import (  # tests/ is on sys.path
    ETHANOL_POS,
    ETHANOL_Z,
    FACTORIES,
    WATER_POS,
    WATER_Z,
    ComposedPotential,
    build_model,
)

KINDS = list(FACTORIES)
O3_KINDS = [kind for kind in KINDS if kind != 'tensornet-so3']
DTYPES = [torch.float64, torch.float32]

# Relative tolerances, on the scale max|expected| of the compared quantity. float64: the paths
# differ only in summation order and in rounding of the transformed positions (measured at most
# 6e-15). float32 (positions rounded to 6e-8 relative, then the network's rounding): measured
# over every test and kind below, with the AVX-512, AVX2 and scalar kernels and 1 or 2 threads,
# at most 1.9e-6 for energies and 7.5e-6 for forces; the bounds leave a factor of 10.
ENERGY_RTOL = {torch.float64: 1e-10, torch.float32: 2e-5}
FORCE_RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}

METHANOL_Z = torch.tensor([6, 8, 1, 1, 1, 1])
METHANOL_POS = torch.tensor([
    [-0.0468, 0.6637, 0.0], [-0.0468, -0.7571, 0.0], [-1.0858, 0.9725, 0.0],
    [0.4375, 1.0761, 0.8906], [0.4375, 1.0761, -0.8906], [0.8614, -1.0895, 0.0],
], dtype=torch.float64)
# A methanol distorted out of its mirror plane: chiral, so only an O(3) model must give its
# mirror image the same energy.
CHIRAL_POS = METHANOL_POS + 0.1 * torch.randn(6, 3, generator=torch.Generator().manual_seed(5),
                                              dtype=torch.float64)

_MODELS = {}


def model_of(kind: str, dtype: torch.dtype):
    # Building is deterministic and the tests do not change the models: build each once.
    if (kind, dtype) not in _MODELS:
        _MODELS[kind, dtype] = build_model(kind, dtype)
    return _MODELS[kind, dtype]


def molecules():
    """Ethanol, water and the chiral methanol, as one batch (in space apart)."""
    z = torch.cat([ETHANOL_Z, WATER_Z, METHANOL_Z])
    shifts = torch.tensor([[0.0, 0.0, 0.0], [7.0, 0.0, 0.0], [0.0, 7.0, 0.0]],
                          dtype=torch.float64)
    pos = torch.cat([ETHANOL_POS + shifts[0], WATER_POS + shifts[1], CHIRAL_POS + shifts[2]])
    batch = torch.tensor([0] * 9 + [1] * 3 + [2] * 6)
    return z, pos, batch


def orthogonal(seed: int, proper: bool = True) -> torch.Tensor:
    """A random rotation (:obj:`proper`) or rotoreflection, float64 :obj:`[3, 3]`."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q


def energy_and_forces(kind, dtype, z, pos, batch=None, **kwargs):
    # Geometry is built in float64 and rounded once to the model's dtype.
    energy, forces = model_of(kind, dtype).energy_and_forces(z, pos.to(dtype), batch, **kwargs)
    return energy, forces.double()


def assert_close(actual, expected, rtol):
    """Equal up to :obj:`rtol` times the largest magnitude of :obj:`expected`."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize('dtype', DTYPES, ids=['float64', 'float32'])
@pytest.mark.parametrize('kind', KINDS)
def test_rotation_and_translation_invariance(kind, dtype):
    z, pos, batch = molecules()
    energy, forces = energy_and_forces(kind, dtype, z, pos, batch)
    for seed in (1, 2):
        rotation = orthogonal(seed)
        shift = torch.tensor([0.3, -1.2, 2.5], dtype=torch.float64) * seed
        moved_energy, moved_forces = energy_and_forces(kind, dtype, z, pos @ rotation.T + shift,
                                                       batch)
        assert_close(moved_energy, energy, ENERGY_RTOL[dtype])
        assert_close(moved_forces, forces @ rotation.T, FORCE_RTOL[dtype])


@pytest.mark.parametrize('dtype', DTYPES, ids=['float64', 'float32'])
@pytest.mark.parametrize('kind', O3_KINDS)
def test_o3_models_are_reflection_invariant(kind, dtype):
    z, pos, batch = molecules()
    energy, forces = energy_and_forces(kind, dtype, z, pos, batch)
    for seed in (3, 4):
        mirror = orthogonal(seed, proper=False)
        mirrored_energy, mirrored_forces = energy_and_forces(kind, dtype, z, pos @ mirror.T,
                                                             batch)
        assert_close(mirrored_energy, energy, ENERGY_RTOL[dtype])
        assert_close(mirrored_forces, forces @ mirror.T, FORCE_RTOL[dtype])


@pytest.mark.parametrize('dtype', DTYPES, ids=['float64', 'float32'])
def test_so3_tensornet_tells_enantiomers_apart(dtype):
    # SO(3) TensorNet is invariant under rotations only. Every rotoreflection of a structure
    # gives the same mirror image up to a rotation, so all of them give one energy (the
    # enantiomer's); for an achiral molecule (planar water) that is the molecule's own energy;
    # for the chiral methanol it differs, by 1.5e-6 relative for this small model: far above
    # float64 rounding (1e-15), within float32's, so float32 checks only the equalities.
    kind = 'tensornet-so3'
    first, second = orthogonal(3, proper=False), orthogonal(4, proper=False)
    for z, pos, chiral in ((WATER_Z, WATER_POS, False), (METHANOL_Z, CHIRAL_POS, True)):
        energy, _ = energy_and_forces(kind, dtype, z, pos)
        mirrored, forces = energy_and_forces(kind, dtype, z, pos @ first.T)
        mirrored_again, forces_again = energy_and_forces(kind, dtype, z, pos @ second.T)
        rotation = second @ first.T  # proper: takes the first mirror image to the second
        assert_close(mirrored_again, mirrored, ENERGY_RTOL[dtype])
        assert_close(forces_again, forces @ rotation.T, FORCE_RTOL[dtype])
        if not chiral:
            assert_close(mirrored, energy, ENERGY_RTOL[dtype])
        elif dtype == torch.float64:
            assert float((mirrored - energy).abs()) > 1e-8 * float(energy.abs())


@pytest.mark.parametrize('dtype', DTYPES, ids=['float64', 'float32'])
@pytest.mark.parametrize('kind', KINDS)
def test_permutation_of_atoms(kind, dtype):
    z, pos, batch = molecules()
    energy, forces = energy_and_forces(kind, dtype, z, pos, batch)
    # Atoms of the three molecules interleaved: the batch vector need not be sorted.
    perm = torch.randperm(z.numel(), generator=torch.Generator().manual_seed(6))
    permuted_energy, permuted_forces = energy_and_forces(kind, dtype, z[perm], pos[perm],
                                                         batch[perm])
    assert_close(permuted_energy, energy, ENERGY_RTOL[dtype])
    assert_close(permuted_forces, forces[perm], FORCE_RTOL[dtype])


@pytest.mark.parametrize('dtype', DTYPES, ids=['float64', 'float32'])
@pytest.mark.parametrize('kind', KINDS)
def test_batch_equals_each_structure_alone(kind, dtype):
    z, pos, batch = molecules()
    # All three on top of each other: structures of a batch never see each other.
    pos = pos.clone()
    for b in range(3):
        pos[batch == b] -= pos[batch == b].mean(0)
    energy, forces = energy_and_forces(kind, dtype, z, pos, batch)
    for b in range(3):
        alone_energy, alone_forces = energy_and_forces(kind, dtype, z[batch == b],
                                                       pos[batch == b])
        assert_close(energy[b:b + 1], alone_energy, ENERGY_RTOL[dtype])
        assert_close(forces[batch == b], alone_forces, FORCE_RTOL[dtype])


@pytest.mark.parametrize('kind', KINDS)
def test_forces_are_minus_energy_gradient(kind):
    model = model_of(kind, torch.float64)
    z, pos = METHANOL_Z, CHIRAL_POS
    n = z.numel()
    _, forces = model.energy_and_forces(z, pos)
    # Fourth-order central differences of every coordinate, the 4 x 3n displaced structures
    # evaluated as one batch (exact: test_batch_equals_each_structure_alone). Truncation
    # ~h^4 times the fifth derivative, rounding ~1e-16 |E| / h: measured at most 2.6e-11
    # relative to max|F| over all kinds at h = 1e-4 (7.7e-11 at h / 3, where rounding grows;
    # 1e-9 at 3 h, where truncation does), so the bound is 1e-9.
    h = 1e-4
    steps = torch.tensor([h, -h, 2 * h, -2 * h], dtype=torch.float64).view(4, 1, 1, 1)
    displaced = pos + steps * torch.eye(3 * n, dtype=torch.float64).view(3 * n, n, 3)
    batch = torch.arange(4 * 3 * n).repeat_interleave(n)
    with torch.no_grad():
        e = model(z.repeat(4 * 3 * n), displaced.reshape(-1, 3), batch).view(4, n, 3)
    numeric = -(8 * (e[0] - e[1]) - (e[2] - e[3])) / (12 * h)
    assert_close(forces, numeric, 1e-9)


@pytest.mark.parametrize('kind', KINDS)
def test_float32_model_agrees_with_float64(kind):
    z, pos, batch = molecules()
    energy64, forces64 = model_of(kind, torch.float64).energy_and_forces(z, pos, batch)
    model32 = model_of(kind, torch.float32)
    energy32, forces32 = model32.energy_and_forces(z, pos.float(), batch)
    # Energies are summed in float64 whatever the model's dtype; forces keep the model's.
    assert energy32.dtype == torch.float64 and forces32.dtype == torch.float32
    assert_close(energy32, energy64, ENERGY_RTOL[torch.float32])
    assert_close(forces32.double(), forces64, FORCE_RTOL[torch.float32])
    with pytest.raises(TypeError, match='float64 but the model is torch.float32'):
        model32(z, pos, batch)


@pytest.mark.parametrize('kind', KINDS)
def test_periodic_cell_rotated_with_its_atoms(kind):
    model = model_of(kind, torch.float64)
    z, pos, cell = water_box(4, seed=2)
    rotation = orthogonal(7)
    out = compute_properties(model, z, pos, cell=cell,
                             properties=['energy', 'forces', 'stress'])
    moved = compute_properties(model, z, pos @ rotation.T + 0.4, cell=cell @ rotation.T,
                               properties=['energy', 'forces', 'stress'])
    stress = out['stress'][0]
    assert float(stress.abs().max()) > 1e-5  # a meaningful (non-zero) stress
    torch.testing.assert_close(stress, stress.T, rtol=0, atol=1e-15)
    assert_close(moved['energy'], out['energy'], 1e-10)
    assert_close(moved['forces'], out['forces'] @ rotation.T, 1e-10)
    assert_close(moved['stress'][0], rotation @ stress @ rotation.T, 1e-10)


@pytest.mark.parametrize('dtype', DTYPES, ids=['float64', 'float32'])
@pytest.mark.parametrize('kind', KINDS)
def test_save_pretrained_round_trip_is_bit_identical(kind, dtype, tmp_path, monkeypatch):
    if kind == 'composed':
        # A user's class becomes loadable once registered; the registry is restored after.
        monkeypatch.setitem(MODEL_CLASSES, 'ComposedPotential', ComposedPotential)
    model = model_of(kind, dtype)
    z, pos, batch = molecules()
    folder = model.save_pretrained(str(tmp_path / kind))
    loaded = from_pretrained(folder)
    assert type(loaded) is type(model) and loaded.dtype == dtype
    assert torch.equal(loaded(z, pos.to(dtype), batch), model(z, pos.to(dtype), batch))


def test_unregistered_model_class_cannot_be_saved(tmp_path):
    assert 'ComposedPotential' not in MODEL_CLASSES
    with pytest.raises(ValueError, match='ComposedPotential is not a registered model class'):
        model_of('composed', torch.float64).save_pretrained(str(tmp_path / 'composed'))
