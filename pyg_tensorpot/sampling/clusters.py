r"""Dimers and clusters of different molecules: the intermolecular contacts (hydrogen bonds,
stacking, dispersion) that single molecules do not sample.

Each molecule is turned to a random orientation (a uniformly random rotation from a unit
quaternion) and moved in from a random direction until its closest contact with the atoms
already placed equals a target distance drawn uniformly from :obj:`contact`; ANI-1x's dimer
sampling covered contacts of about 1.6-5 Angstrom.
"""
from typing import Hashable, List, Optional, Sequence, Tuple

import numpy as np

Structure = Tuple[np.ndarray, np.ndarray]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3)."""
    q = rng.standard_normal(4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])


def closest_contact(pa: np.ndarray, pb: np.ndarray) -> float:
    """The smallest distance (Angstrom) between an atom of :obj:`pa` and one of :obj:`pb`."""
    return float(np.linalg.norm(pa[:, None] - pb[None], axis=-1).min())


def place(fixed: np.ndarray, mobile: np.ndarray, contact: float,
          rng: np.random.Generator) -> np.ndarray:
    r""":obj:`mobile` (centred, randomly rotated) placed along a random direction from the
    centre of :obj:`fixed` so that their closest contact is :obj:`contact` Angstrom (bisection
    on the distance of the centres, the outermost such position)."""
    if not contact > 0:
        raise ValueError(f'the contact distance must be positive, got {contact}')
    centre = fixed.mean(0)
    moved = (mobile - mobile.mean(0)) @ random_rotation(rng).T
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    reach = np.linalg.norm(fixed - centre, axis=1).max() + np.linalg.norm(moved, axis=1).max()
    lo, hi = 0.0, reach + contact + 1.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if closest_contact(fixed, moved + centre + mid * direction) < contact:
            lo = mid
        else:
            hi = mid
    return moved + centre + hi * direction


def make_cluster(molecules: Sequence[Structure], rng: np.random.Generator,
                 contact: Tuple[float, float] = (1.7, 3.5)) -> Structure:
    r"""One cluster of :obj:`molecules` (``(z, pos)`` each), added one at a time around those
    placed before; returns the atomic numbers and positions of all atoms, molecule by molecule.

    Args:
        molecules (Sequence[Tuple[numpy.ndarray, numpy.ndarray]]): Two or more molecules.
        rng (numpy.random.Generator): Random numbers.
        contact (Tuple[float, float], optional): Range of the closest intermolecular contact
            (Angstrom). (default: :obj:`(1.7, 3.5)`)
    """
    if len(molecules) < 2:
        raise ValueError(f'a cluster has at least two molecules, got {len(molecules)}')
    lo, hi = contact
    if not 0 < lo <= hi:
        raise ValueError(f'contact must be a range 0 < low <= high (Angstrom), got {contact}')
    z0, p0 = molecules[0]
    zs, ps = [np.asarray(z0)], [np.asarray(p0, dtype=np.float64) - np.mean(p0, axis=0)]
    for z, pos in molecules[1:]:
        placed = place(np.concatenate(ps), np.asarray(pos, dtype=np.float64),
                       rng.uniform(lo, hi), rng)
        zs.append(np.asarray(z))
        ps.append(placed)
    return np.concatenate(zs).astype(np.int64), np.concatenate(ps)


def make_clusters(pool: Sequence[Structure], count: int, sizes: Sequence[int] = (2, 2, 3),
                  max_atoms: int = 40, contact: Tuple[float, float] = (1.7, 3.5),
                  seed: int = 0, distinct: bool = True,
                  groups: Optional[Sequence[Hashable]] = None
                  ) -> List[Tuple[List[int], Structure]]:
    r"""Random dimers and clusters of molecules from :obj:`pool`.

    Args:
        pool (Sequence[Tuple[numpy.ndarray, numpy.ndarray]]): Molecules ``(z, pos)``.
        count (int): Clusters wanted.
        sizes (Sequence[int], optional): Numbers of molecules, drawn uniformly per cluster
            (repeat a size to weight it). (default: :obj:`(2, 2, 3)`)
        max_atoms (int, optional): Most atoms in a cluster. (default: :obj:`40`)
        contact (Tuple[float, float], optional): Closest-contact range (Angstrom).
            (default: :obj:`(1.7, 3.5)`)
        seed (int, optional): Random seed. (default: :obj:`0`)
        distinct (bool, optional): No molecule twice in one cluster (varied molecules).
            (default: :obj:`True`)
        groups (Sequence[Hashable], optional): A group per molecule of :obj:`pool`; a cluster
            draws all its molecules from one group (e.g. the part of a split by molecule, so
            that no cluster joins a test molecule to a training one). (default: :obj:`None`)

    Returns:
        ``(indices into pool, (z, pos))`` per cluster.
    """
    if count < 0 or not sizes or min(sizes) < 2:
        raise ValueError('count must be >= 0 and every cluster size at least 2')
    if groups is not None and len(groups) != len(pool):
        raise ValueError(f'groups has {len(groups)} entries for a pool of {len(pool)} molecules')
    small = [k for k, (z, _) in enumerate(pool) if len(z) <= max_atoms - 1]
    members_of = {}
    for k in small:
        members_of.setdefault(None if groups is None else groups[k], []).append(k)
    largest = max((len(v) for v in members_of.values()), default=0)
    if largest < (max(sizes) if distinct else 1):
        raise ValueError(f'the pool has {largest} molecules of at most {max_atoms - 1} atoms '
                         f'in its largest group: too few for clusters of {max(sizes)}')
    rng = np.random.default_rng(seed)
    out = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 1000 * max(count, 1):
            raise ValueError(f'no cluster of at most {max_atoms} atoms found in {tries} draws: '
                             f'raise max_atoms or use smaller molecules')
        size = int(rng.choice(sizes))
        first = int(rng.choice(small))
        group = members_of[None if groups is None else groups[first]]
        if distinct and len(group) < size:
            continue
        rest = [k for k in group if k != first] if distinct else group
        members = [first] + [int(k) for k in rng.choice(rest, size=size - 1,
                                                        replace=not distinct)]
        if sum(len(pool[k][0]) for k in members) > max_atoms:
            continue
        out.append((members, make_cluster([pool[k] for k in members], rng, contact)))
    return out
