r"""Covalent bonds from geometry alone: two atoms are bonded when they are closer than
:obj:`factor` (1.25 by default) times the sum of their covalent radii,

.. math::
    b_{ij} = \left[\, \lVert \mathbf{r}_i - \mathbf{r}_j \rVert
    < f\,(R_{Z_i} + R_{Z_j}) \,\right], \qquad i \neq j.

The radii are those of Cordero et al., Dalton Trans. 2008, 2832 (single-bond radii; C is sp3's
0.76 Angstrom), so the rule finds single, double and triple bonds of organic molecules and no
hydrogen bond (an O-H...O contact of 1.8 Angstrom is more than 1.25 x 0.97 Angstrom). It is
the check that a molecule kept its bonds in MD, how a cluster splits into molecules, and the
identity of a molecule's graph (:func:`bond_graph_key`) by which data sets are kept apart.
"""
import hashlib
from typing import Dict, List

import numpy as np

from pyg_tensorpot.utils.elements import symbol
from pyg_tensorpot.utils.validation import structure_arrays

#: Covalent radii in Angstrom (Cordero et al. 2008) of the elements of organic chemistry.
COVALENT_RADII: Dict[int, float] = {1: 0.31, 5: 0.84, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57,
                                    14: 1.11, 15: 1.07, 16: 1.05, 17: 1.02, 35: 1.20, 53: 1.39}

#: Bond when the distance is below this multiple of the sum of the covalent radii.
BOND_FACTOR = 1.25


def _checked(z, pos, factor: float):
    z, pos = structure_arrays(z, pos, allow_empty=True)
    if not factor > 0:
        raise ValueError(f'factor must be positive, got {factor}')
    unknown = sorted({int(v) for v in z} - set(COVALENT_RADII))
    if unknown:
        names = ', '.join(symbol(v) if 0 < v < 119 else str(v) for v in unknown)
        raise ValueError(f'no covalent radius for {names}: bonds are perceived for '
                         + ', '.join(symbol(v) for v in COVALENT_RADII))
    return z, pos


def bonded_pairs(z, pos, factor: float = BOND_FACTOR) -> np.ndarray:
    r"""The bond matrix of one structure (open boundaries).

    Args:
        z (array_like): Atomic numbers :obj:`[N]`.
        pos (array_like): Positions in Angstrom :obj:`[N, 3]`.
        factor (float, optional): Multiple of the sum of the covalent radii below which two
            atoms are bonded. (default: :obj:`1.25`)

    Returns:
        numpy.ndarray: Symmetric boolean :obj:`[N, N]` matrix, :obj:`False` on the diagonal.
    """
    z, pos = _checked(z, pos, factor)
    radii = np.array([COVALENT_RADII[int(v)] for v in z])
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    bonded = dist < factor * (radii[:, None] + radii[None])
    np.fill_diagonal(bonded, False)
    return bonded


def bonded_fragments(z, pos, factor: float = BOND_FACTOR) -> List[np.ndarray]:
    r"""The covalently bonded fragments (molecules) of a structure: the connected components
    of :func:`bonded_pairs`.

    Args:
        z (array_like): Atomic numbers :obj:`[N]`.
        pos (array_like): Positions in Angstrom :obj:`[N, 3]`.
        factor (float, optional): As in :func:`bonded_pairs`. (default: :obj:`1.25`)

    Returns:
        List[numpy.ndarray]: The atom indices of each fragment, ascending, fragments ordered
        by their first atom.
    """
    bonded = bonded_pairs(z, pos, factor)
    label = -np.ones(len(bonded), dtype=np.int64)
    for start in range(len(bonded)):
        if label[start] >= 0:
            continue
        stack, label[start] = [start], start
        while stack:
            i = stack.pop()
            for j in np.nonzero(bonded[i] & (label < 0))[0]:
                label[j] = start
                stack.append(int(j))
    return [np.nonzero(label == k)[0] for k in np.unique(label)]


def bond_graph_key(z, pos, factor: float = BOND_FACTOR, iterations: int = 4) -> str:
    r"""An identity of a structure's covalent graph (:func:`bonded_pairs`) that no atom order,
    rotation, translation or conformation changes: the sorted element-labelled
    Weisfeiler-Lehman colours after :obj:`iterations` rounds (each atom's colour is the hash of
    its colour and the sorted colours of its bonded neighbours), hashed with SHA-256.

    Two different molecules share a key only when the refinement cannot tell their graphs
    apart (rare for organic molecules; never for different formulas); stereoisomers, which
    have one graph, share theirs. Tautomers and the fragments of a cluster are different
    graphs: key each fragment of :func:`bonded_fragments` to compare molecules.

    Args:
        z (array_like): Atomic numbers :obj:`[N]`.
        pos (array_like): Positions in Angstrom :obj:`[N, 3]`.
        factor (float, optional): As in :func:`bonded_pairs`. (default: :obj:`1.25`)
        iterations (int, optional): Refinement rounds. (default: :obj:`4`)

    Returns:
        str: 64 hexadecimal digits.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f'iterations must be a non-negative integer, got {iterations!r}')
    bonded = bonded_pairs(z, pos, factor)
    colours = [str(int(v)) for v in np.asarray(z).reshape(-1)]
    neighbours = [np.nonzero(row)[0] for row in bonded]
    for _ in range(iterations):
        colours = [hashlib.sha256((colours[i] + '|' + ','.join(
            sorted(colours[j] for j in neighbours[i]))).encode()).hexdigest()[:16]
            for i in range(len(colours))]
    return hashlib.sha256(' '.join(sorted(colours)).encode()).hexdigest()
