r"""Conformations of one molecule: conformer search, normal-mode sampling and torsion scans.

* :func:`embed_conformers`: ETKDG v3 distance-geometry embedding (Wang et al., J. Chem. Inf.
  Model. 60, 2044 (2020)) of several conformers, each relaxed with the MMFF94 force field and
  pruned by heavy-atom RMSD.
* :func:`normal_mode_samples`: ANI-1's normal-mode sampling (Smith, Isayev, Roitberg, Chem.
  Sci. 8, 3192 (2017)). For the :math:`N_f` normal modes :math:`\mathbf{q}_i` (unit Cartesian
  vectors) with force constants :math:`K_i` of a minimum, a sample is

  .. math::
      \mathbf{R} = \mathbf{R}_0 + \sum_i \pm\sqrt{\frac{3 c_i N_a k_B T}{K_i}}\,\mathbf{q}_i,

  with random signs and :math:`c_i \ge 0`, :math:`\sum_i c_i \le 1` drawn uniformly, so that
  the harmonic energy of a sample is at most :math:`\tfrac32 N_a k_B T`. The Hessian comes
  from any potential (:func:`finite_difference_hessian` of a forces callable or an ASE
  calculator).
* :func:`torsion_scan`: one rotatable dihedral turned in steps, the rest of the molecule
  relaxed with MMFF94 at each angle.

Positions are in Angstrom, energies in eV, forces in eV/Angstrom.
"""
import math
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np

from pyg_tensorpot.sampling.molecules import _rdkit
from pyg_tensorpot.utils.units import KCAL_PER_MOL_TO_EV

#: Boltzmann constant in eV/K.
KB_EV = 8.617333262e-5
#: Atomic masses (amu) of the elements sampled here.
MASSES = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999}

ForcesFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def molecule_with_hydrogens(smiles: str):
    """The RDKit molecule of :obj:`smiles` with explicit hydrogens."""
    Chem = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f'cannot parse the SMILES {smiles!r}')
    return Chem.AddHs(mol)


def atomic_numbers(mol) -> np.ndarray:
    return np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()], dtype=np.int64)


def embed_conformers(smiles: str, num_conformers: int = 8, seed: int = 0,
                     prune_rms: float = 0.5, optimize: bool = True,
                     max_iters: int = 2000
                     ) -> Tuple[object, np.ndarray, List[np.ndarray], List[float]]:
    r"""Conformer search: ETKDG v3 embeddings relaxed with MMFF94, lowest energy first.

    Args:
        smiles (str): The molecule.
        num_conformers (int, optional): Embeddings tried. (default: :obj:`8`)
        seed (int, optional): Random seed of the embedding. (default: :obj:`0`)
        prune_rms (float, optional): Embeddings closer than this heavy-atom RMSD (Angstrom)
            to a kept one are dropped. (default: :obj:`0.5`)
        optimize (bool, optional): Relax with MMFF94 (UFF where MMFF has no parameters).
            (default: :obj:`True`)
        max_iters (int, optional): Force-field iterations per conformer. (default: :obj:`2000`)

    Returns:
        The RDKit molecule (with its conformers), the atomic numbers :obj:`[N]`, the positions
        :obj:`[N, 3]` of each conformer and their force-field energies (eV).
    """
    Chem = _rdkit()
    from rdkit.Chem import AllChem
    if num_conformers < 1:
        raise ValueError(f'num_conformers must be at least 1, got {num_conformers}')
    mol = molecule_with_hydrogens(smiles)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.pruneRmsThresh = prune_rms
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_conformers, params=params))
    if not ids:
        params.useRandomCoords = True
        ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_conformers, params=params))
    if not ids:
        raise ValueError(f'RDKit cannot embed {smiles!r} in 3-D')
    if optimize:
        if AllChem.MMFFHasAllMoleculeParams(mol):
            results = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=max_iters)
        else:
            results = AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=max_iters)
        energies = [e * KCAL_PER_MOL_TO_EV for _, e in results]
    else:
        energies = [math.nan] * len(ids)
    order = sorted(range(len(ids)), key=lambda k: energies[k] if optimize else k)
    z = atomic_numbers(mol)
    positions = [mol.GetConformer(ids[k]).GetPositions().astype(np.float64) for k in order]
    mol_sorted = Chem.Mol(mol)
    mol_sorted.RemoveAllConformers()
    for k in order:
        mol_sorted.AddConformer(Chem.Conformer(mol.GetConformer(ids[k])), assignId=True)
    return mol_sorted, z, positions, [energies[k] for k in order]


def mmff_forces(mol) -> ForcesFn:
    """MMFF94 forces (eV/Angstrom) of :obj:`mol` (with hydrogens) as a ``forces(z, pos)``
    callable: a cheap potential for tests and first guesses of a Hessian."""
    Chem = _rdkit()
    from rdkit.Chem import AllChem
    from rdkit.Geometry import Point3D
    work = Chem.Mol(mol)
    if work.GetNumConformers() == 0:
        raise ValueError('the molecule has no 3-D conformer: embed it first')
    props = AllChem.MMFFGetMoleculeProperties(work)
    if props is None:
        raise ValueError('MMFF94 has no parameters for this molecule')
    z_mol = atomic_numbers(work)
    conf = work.GetConformer()

    def forces(z: np.ndarray, pos: np.ndarray) -> np.ndarray:
        if not np.array_equal(np.asarray(z), z_mol):
            raise ValueError('the atoms differ from those of the molecule of the force field')
        pos = np.asarray(pos, dtype=np.float64)
        for k, (x, y, w) in enumerate(pos):
            conf.SetAtomPosition(k, Point3D(float(x), float(y), float(w)))
        # a fresh force field per call: RDKit's CalcGrad(positions) on a reused field mixes
        # in terms of the positions it saw before (measured: 9 kcal/mol/A off)
        field = AllChem.MMFFGetMoleculeForceField(work, props)
        return -np.asarray(field.CalcGrad()).reshape(-1, 3) * KCAL_PER_MOL_TO_EV

    return forces


def ase_forces(calculator) -> ForcesFn:
    """A ``forces(z, pos)`` callable (eV/Angstrom) from an ASE calculator."""
    from ase import Atoms

    def forces(z: np.ndarray, pos: np.ndarray) -> np.ndarray:
        atoms = Atoms(numbers=np.asarray(z), positions=np.asarray(pos))
        atoms.calc = calculator
        return np.asarray(atoms.get_forces(), dtype=np.float64)

    return forces


def finite_difference_hessian(potential: Union[ForcesFn, object], z: np.ndarray,
                              pos: np.ndarray, delta: float = 5e-3) -> np.ndarray:
    r"""The Hessian :math:`\partial^2 E / \partial R_a \partial R_b` (eV/Angstrom^2,
    :obj:`[3N, 3N]`, symmetrised) by central differences of the forces.

    Args:
        potential (callable or ase.calculators.calculator.Calculator): ``forces(z, pos)`` in
            eV/Angstrom, or an ASE calculator.
        z (numpy.ndarray): Atomic numbers :obj:`[N]`.
        pos (numpy.ndarray): Positions :obj:`[N, 3]` (Angstrom), near a minimum.
        delta (float, optional): Displacement (Angstrom). (default: :obj:`5e-3`)
    """
    forces = potential if callable(potential) and not hasattr(potential, 'get_forces') \
        else ase_forces(potential)
    pos = np.asarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] != len(z):
        raise ValueError(f'pos must have shape [{len(z)}, 3], got {list(pos.shape)}')
    if not delta > 0:
        raise ValueError(f'delta must be positive, got {delta}')
    n = pos.size
    hessian = np.empty((n, n))
    flat = pos.ravel()
    for a in range(n):
        plus, minus = flat.copy(), flat.copy()
        plus[a] += delta
        minus[a] -= delta
        f_plus = forces(z, plus.reshape(-1, 3)).ravel()
        f_minus = forces(z, minus.reshape(-1, 3)).ravel()
        hessian[a] = -(f_plus - f_minus) / (2 * delta)
    return 0.5 * (hessian + hessian.T)


def normal_modes(z: np.ndarray, hessian: np.ndarray,
                 linear: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    r"""Vibrational modes of a Hessian: unit Cartesian displacement vectors
    :obj:`[N_f, N, 3]` and force constants :math:`K_i = \omega_i^2 \mu_i` (eV/Angstrom^2) of
    the :math:`N_f = 3N - 6` (:math:`3N - 5` if :obj:`linear`) modes, the translations and
    rotations (the smallest :math:`|\omega|`) left out."""
    z = np.asarray(z)
    n = len(z)
    if hessian.shape != (3 * n, 3 * n):
        raise ValueError(f'the Hessian of {n} atoms has shape [{3 * n}, {3 * n}], got '
                         f'{list(hessian.shape)}')
    missing = sorted({int(v) for v in z} - set(MASSES))
    if missing:
        raise ValueError(f'no mass for atomic numbers {missing}')
    inv_sqrt_m = np.repeat([1.0 / math.sqrt(MASSES[int(v)]) for v in z], 3)
    omega2, vectors = np.linalg.eigh(hessian * inv_sqrt_m[:, None] * inv_sqrt_m[None])
    rigid = 5 if linear else 6
    keep = np.sort(np.argsort(np.abs(omega2))[rigid:]) if n > 2 else np.argsort(
        np.abs(omega2))[-1:]
    cart = (vectors[:, keep] * inv_sqrt_m[:, None]).T  # [N_f, 3N]
    norm2 = (cart ** 2).sum(1)
    reduced_mass = 1.0 / norm2
    constants = omega2[keep] * reduced_mass
    return (cart / np.sqrt(norm2)[:, None]).reshape(-1, n, 3), constants


def normal_mode_samples(z: np.ndarray, pos: np.ndarray, hessian: np.ndarray,
                        temperature: float, count: int, seed: int = 0,
                        min_constant: float = 0.05, max_step: float = 0.6,
                        linear: bool = False) -> List[np.ndarray]:
    r"""ANI-1 normal-mode samples around a minimum (see the module docstring).

    Args:
        z (numpy.ndarray): Atomic numbers :obj:`[N]`.
        pos (numpy.ndarray): The minimum :obj:`[N, 3]` (Angstrom).
        hessian (numpy.ndarray): Its Hessian (eV/Angstrom^2), e.g. from
            :func:`finite_difference_hessian`.
        temperature (float): :math:`T` (Kelvin); ANI-1x used 300-1,000 K.
        count (int): Samples.
        seed (int, optional): Random seed. (default: :obj:`0`)
        min_constant (float, optional): Force constants below this (eV/Angstrom^2; soft or
            imaginary modes of an inexact minimum) are raised to it, bounding the step.
            (default: :obj:`0.05`)
        max_step (float, optional): Largest displacement along one mode (Angstrom).
            (default: :obj:`0.6`)
        linear (bool, optional): The molecule is linear. (default: :obj:`False`)
    """
    if not temperature > 0 or count < 0:
        raise ValueError(f'need a positive temperature and count >= 0, got {temperature} K '
                         f'and {count}')
    modes, constants = normal_modes(z, hessian, linear)
    constants = np.maximum(constants, min_constant)
    rng = np.random.default_rng(seed)
    kT = KB_EV * temperature
    n = len(z)
    out = []
    for _ in range(count):
        c = rng.uniform(0, 1, size=len(constants))
        c *= rng.uniform(0, 1) / c.sum()
        step = np.sqrt(3 * c * n * kT / constants) * rng.choice((-1.0, 1.0), size=c.size)
        step = np.clip(step, -max_step, max_step)
        out.append(np.asarray(pos, dtype=np.float64) + np.tensordot(step, modes, axes=1))
    return out


def rotatable_torsions(mol) -> List[Tuple[int, int, int, int]]:
    """One dihedral (four atom indices, heavy atoms where possible) about every rotatable
    single bond of :obj:`mol` (not in a ring, both ends with another heavy neighbour)."""
    Chem = _rdkit()
    pattern = Chem.MolFromSmarts('[!$(*#*)&!D1]-&!@[!$(*#*)&!D1]')
    torsions = []
    for j, k in mol.GetSubstructMatches(pattern):
        def other(a, b):
            atoms = [n for n in mol.GetAtomWithIdx(a).GetNeighbors() if n.GetIdx() != b]
            atoms.sort(key=lambda n: (n.GetAtomicNum() == 1, n.GetIdx()))
            return atoms[0].GetIdx() if atoms else None
        i, l_ = other(j, k), other(k, j)
        if i is not None and l_ is not None:
            torsions.append((i, j, k, l_))
    return torsions


def torsion_scan(mol, torsion: Sequence[int], angles: Sequence[float],
                 conformer: int = 0, relax: bool = True,
                 max_iters: int = 500) -> List[np.ndarray]:
    """Positions of :obj:`mol` with the dihedral :obj:`torsion` set to each of :obj:`angles`
    (degrees), the rest relaxed with MMFF94 under that dihedral constraint.

    Args:
        mol: RDKit molecule with hydrogens and a conformer.
        torsion (Sequence[int]): Four atom indices.
        angles (Sequence[float]): Dihedral angles (degrees).
        conformer (int, optional): Conformer to start from. (default: :obj:`0`)
        relax (bool, optional): Relax the other coordinates. (default: :obj:`True`)
        max_iters (int, optional): Force-field iterations per angle. (default: :obj:`500`)
    """
    Chem = _rdkit()
    from rdkit.Chem import AllChem, rdMolTransforms
    if len(torsion) != 4 or len(set(torsion)) != 4:
        raise ValueError(f'a torsion is four distinct atom indices, got {list(torsion)}')
    if mol.GetNumConformers() == 0:
        raise ValueError('the molecule has no 3-D conformer: embed it first')
    i, j, k, l_ = (int(a) for a in torsion)
    if mol.GetBondBetweenAtoms(j, k) is None or mol.GetBondBetweenAtoms(j, k).IsInRing():
        raise ValueError(f'atoms {j} and {k} are not joined by a bond outside a ring: no '
                         f'torsion to scan')
    props = AllChem.MMFFGetMoleculeProperties(mol) if relax else None
    out = []
    for angle in angles:
        work = Chem.Mol(mol)
        conf = work.GetConformer(mol.GetConformers()[conformer].GetId())
        rdMolTransforms.SetDihedralDeg(conf, i, j, k, l_, float(angle))
        if relax and props is not None:
            field = AllChem.MMFFGetMoleculeForceField(work, props, confId=conf.GetId())
            field.MMFFAddTorsionConstraint(i, j, k, l_, False, float(angle), float(angle),
                                           1e4)
            field.Minimize(maxIts=max_iters)
        out.append(conf.GetPositions().astype(np.float64))
    return out
