r"""Test and example structures built from first principles (no downloaded file).

:func:`water_box` places rigid water molecules (O-H 0.9572 A, H-O-H 104.52 deg, the TIP3P
geometry) on a simple cubic lattice at liquid density, each randomly rotated, so that examples,
tests and benchmarks share one reproducible liquid-like system of any size.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

#: Volume per molecule of liquid water at 298 K, 1.0 g/cm^3: 18.015 g/mol / N_A, in A^3.
WATER_VOLUME_PER_MOLECULE = 18.015 / 6.02214076e23 * 1e24

_OH = 0.9572
_HOH = math.radians(104.52)


def _water_molecule(dtype: torch.dtype) -> Tensor:
    half = _HOH / 2
    return torch.tensor([[0.0, 0.0, 0.0],
                         [_OH * math.sin(half), 0.0, _OH * math.cos(half)],
                         [-_OH * math.sin(half), 0.0, _OH * math.cos(half)]], dtype=dtype)


def _random_rotations(n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    # Uniform rotations from normalised quaternions.
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)
    ], dim=-1).reshape(n, 3, 3)
    return rot.to(dtype)


def water_box(num_molecules: int, density: float = 1.0, seed: int = 0,
              dtype: torch.dtype = torch.float64,
              shape: Optional[Tuple[int, int, int]] = None) -> Tuple[Tensor, Tensor, Tensor]:
    r"""A box of randomly oriented water molecules on a cubic lattice.

    The lattice spacing :math:`a = (V_\mathrm{H_2O} / \rho)^{1/3}` (3.104 A at
    :math:`\rho = 1` g/cm^3) gives the liquid's density when the box is filled; the returned
    cell is the lattice's periodic cell, so the structure is periodic without close contacts
    across its faces.

    Args:
        num_molecules (int): Number of water molecules (atoms: three times this).
        density (float, optional): Density in g/cm^3. (default: :obj:`1.0`)
        seed (int, optional): Seed of the orientations. (default: :obj:`0`)
        dtype (torch.dtype, optional): Floating-point type of :obj:`pos` and :obj:`cell`.
            (default: :obj:`torch.float64`)
        shape (Tuple[int, int, int], optional): Lattice sites along x, y and z; defaults to the
            smallest cube that holds every molecule. (default: :obj:`None`)

    Returns:
        (z, pos, cell): atomic numbers :obj:`[3M]` (O, H, H per molecule), positions in
        Angstrom :obj:`[3M, 3]` and the cell :obj:`[3, 3]` (lattice vectors as rows).
    """
    if num_molecules < 1:
        raise ValueError(f'num_molecules must be at least 1, got {num_molecules}')
    if not density > 0:
        raise ValueError(f'density must be positive (g/cm^3), got {density}')
    if shape is None:
        side = math.ceil(round(num_molecules**(1 / 3), 9))
        shape = (side, side, side)
    if shape[0] * shape[1] * shape[2] < num_molecules:
        raise ValueError(f'a lattice of {shape} sites cannot hold {num_molecules} molecules')
    spacing = (WATER_VOLUME_PER_MOLECULE / density)**(1 / 3)
    generator = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                      indexing='ij'), dim=-1).reshape(-1, 3)[:num_molecules]
    centres = (grid + 0.5) * spacing
    molecule = _water_molecule(torch.float64)
    molecule = molecule - molecule.mean(0)
    rot = _random_rotations(num_molecules, generator, torch.float64)
    pos = centres.unsqueeze(1) + torch.einsum('ka,mba->mkb', molecule, rot)
    z = torch.tensor([8, 1, 1]).repeat(num_molecules)
    cell = torch.diag(torch.tensor(shape, dtype=torch.float64) * spacing)
    return z, pos.reshape(-1, 3).to(dtype), cell.to(dtype)
