"""Bond perception from geometry (pyg_tensorpot.utils.bonds): real molecules, invariances and
bad input."""
import numpy as np
import pytest

from pyg_tensorpot.structures import water_box
from pyg_tensorpot.utils.bonds import (BOND_FACTOR, COVALENT_RADII, bond_graph_key,
                                       bonded_fragments, bonded_pairs)

# ethanol, CH3-CH2-OH (a relaxed geometry, Angstrom)
ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])
ETHANOL_POS = np.array([
    [-1.1879, -0.3829, 0.0000], [0.0026, 0.5526, 0.0000], [1.1820, -0.2472, 0.0000],
    [-2.1234, 0.1822, 0.0000], [-1.1590, -1.0251, 0.8868], [-1.1590, -1.0251, -0.8868],
    [-0.0317, 1.2024, 0.8828], [-0.0317, 1.2024, -0.8828], [1.9617, 0.3160, 0.0000]])
ETHANOL_BONDS = {(0, 1), (1, 2), (0, 3), (0, 4), (0, 5), (1, 6), (1, 7), (2, 8)}


def bond_set(matrix):
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(matrix)))}


def test_ethanol_has_its_eight_bonds_and_is_one_fragment():
    bonds = bonded_pairs(ETHANOL_Z, ETHANOL_POS)
    assert bonds.dtype == bool and (bonds == bonds.T).all() and not bonds.diagonal().any()
    assert bond_set(bonds) == ETHANOL_BONDS
    fragments = bonded_fragments(ETHANOL_Z, ETHANOL_POS)
    assert len(fragments) == 1 and fragments[0].tolist() == list(range(9))


def test_rule_is_the_sum_of_radii_times_the_factor():
    for d, bonded in ((0.999 * BOND_FACTOR * 1.42, True), (1.001 * BOND_FACTOR * 1.42, False)):
        pos = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0]])
        assert bonded_pairs([6, 8], pos)[0, 1] == bonded  # C 0.76 + O 0.66 = 1.42 A
    pos = np.array([[0.0, 0.0, 0.0], [1.9, 0.0, 0.0]])
    assert not bonded_pairs([6, 6], pos)[0, 1]
    assert bonded_pairs([6, 6], pos, factor=1.3)[0, 1]
    assert COVALENT_RADII[1] == 0.31


def test_invariant_under_rotation_translation_and_permutation():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = ETHANOL_POS @ q.T + np.array([3.0, -7.0, 11.0])
    assert bond_set(bonded_pairs(ETHANOL_Z, moved)) == ETHANOL_BONDS
    perm = rng.permutation(9)
    bonds = bonded_pairs(ETHANOL_Z[perm], ETHANOL_POS[perm])
    np.testing.assert_array_equal(bonds, bonded_pairs(ETHANOL_Z, ETHANOL_POS)[perm][:, perm])


def test_water_box_splits_into_its_molecules_without_hydrogen_bonds():
    z, pos, _ = water_box(27)
    fragments = bonded_fragments(z.numpy(), pos.numpy())
    assert len(fragments) == 27
    assert all(sorted(z[f].tolist()) == [1, 1, 8] for f in fragments)
    # a hydrogen bond, H...O 1.8 A, is not a covalent bond
    pos = np.array([[0.0, 0.0, 0.0], [0.97, 0.0, 0.0], [2.77, 0.0, 0.0]])
    assert bond_set(bonded_pairs([8, 1, 8], pos)) == {(0, 1)}


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match='no covalent radius for Fe'):
        bonded_pairs([26, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r'shape \[2, 3\]'):
        bonded_pairs([6, 1], np.zeros((3, 3)))
    with pytest.raises(ValueError, match='NaN'):
        bonded_pairs([6, 1], np.array([[0.0, 0.0, np.nan], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match='atomic numbers'):
        bonded_pairs([6.0, 1.0], np.zeros((2, 3)))
    with pytest.raises(ValueError, match='factor must be positive'):
        bonded_pairs([6, 1], np.eye(2, 3), factor=0.0)
    assert bonded_fragments(np.zeros(0, dtype=np.int64), np.zeros((0, 3))) == []


def dimethyl_ether():
    """CH3-O-CH3 (C-O 1.41 A, C-O-C 112 degrees, tetrahedral methyls with C-H 1.09 A): an
    isomer of ethanol, C2H6O."""
    half = np.radians(56.0)
    carbons = [np.array([s * 1.41 * np.sin(half), -1.41 * np.cos(half), 0.0]) for s in (1, -1)]
    pos = [np.zeros(3), *carbons]
    for c in carbons:
        d = c / np.linalg.norm(c)
        u = np.cross(d, [0.0, 0.0, 1.0])
        u /= np.linalg.norm(u)
        v = np.cross(d, u)
        for phi in np.radians([0.0, 120.0, 240.0]):
            pos.append(c + 1.09 * (np.cos(np.radians(70.5)) * d + np.sin(np.radians(70.5))
                                   * (np.cos(phi) * u + np.sin(phi) * v)))
    return np.array([8, 6, 6, 1, 1, 1, 1, 1, 1]), np.array(pos)


def test_graph_key_is_the_molecule_not_its_geometry():
    key = bond_graph_key(ETHANOL_Z, ETHANOL_POS)
    assert len(key) == 64 and int(key, 16) >= 0
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(len(ETHANOL_Z))
    moved = ETHANOL_POS[perm] @ rotation.T + rng.normal(size=3) + rng.normal(
        scale=0.02, size=ETHANOL_POS.shape)  # atom order, rotation, translation, vibration
    assert bond_graph_key(ETHANOL_Z[perm], moved) == key
    z, pos = dimethyl_ether()
    assert sorted(z) == sorted(ETHANOL_Z) and len(bond_set(bonded_pairs(z, pos))) == 8
    assert bond_graph_key(z, pos) != key  # same formula, another graph
    assert bond_graph_key(z, pos, iterations=0) == bond_graph_key(ETHANOL_Z, ETHANOL_POS,
                                                                    iterations=0)  # formula
    assert bond_graph_key(ETHANOL_Z[:3], ETHANOL_POS[:3]) != key


def test_graph_key_refuses_bad_iterations():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match='iterations'):
            bond_graph_key(ETHANOL_Z, ETHANOL_POS, iterations=bad)
