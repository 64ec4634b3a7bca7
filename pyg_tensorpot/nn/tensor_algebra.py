r"""Algebra of rank-2 Cartesian tensor features.

A tensor feature holds, for every atom, :math:`H` channels of a :math:`3 \times 3` matrix, stored
channels-last as :obj:`[num_atoms, 3, 3, H]`. Every matrix splits into its irreducible parts

.. math::
    \mathbf{X} = I\,\mathbf{1} + \mathbf{A} + \mathbf{S}, \qquad
    I = \tfrac{1}{3}\operatorname{tr}\mathbf{X}, \quad
    \mathbf{A} = \tfrac{1}{2}(\mathbf{X} - \mathbf{X}^\top), \quad
    \mathbf{S} = \tfrac{1}{2}(\mathbf{X} + \mathbf{X}^\top) - I\,\mathbf{1},

a scalar (1 number), an antisymmetric part (3 numbers, a vector) and a symmetric traceless part
(5 numbers). Under a rotation or reflection :math:`\mathbf{R}`, each part transforms as
:math:`\mathbf{X} \mapsto \mathbf{R}\mathbf{X}\mathbf{R}^\top`. Mixing channels with a matrix
acting on the last axis commutes with that action.

For message passing the parts are packed into 10 components per channel,
:obj:`[..., 10, H]`: :math:`(I, a_x, a_y, a_z, S_{xx}, S_{yy}, S_{zz}, S_{xy}, S_{xz}, S_{yz})`
with :math:`\mathbf{a} = \operatorname{vec}(\mathbf{A})`, so that a per-edge message touches 10
instead of 27 numbers per channel.
"""
from typing import Tuple

import torch
from torch import Tensor

NUM_COMPONENTS = 10
#: The packed components of each irreducible part: I -> [0], A -> [1, 4), S -> [4, 10).
PART_SLICES = (slice(0, 1), slice(1, 4), slice(4, 10))


def skew(vector: Tensor) -> Tensor:
    r"""The cross-product matrix :math:`[\mathbf{v}]_\times` of :obj:`vector`, so that
    :math:`[\mathbf{v}]_\times \mathbf{w} = \mathbf{v} \times \mathbf{w}`.

    Args:
        vector (torch.Tensor): Shape :obj:`[..., 3, H]`.

    Returns:
        torch.Tensor: Shape :obj:`[..., 3, 3, H]`.
    """
    vx, vy, vz = vector.unbind(-2)
    zero = torch.zeros_like(vx)
    rows = (zero, -vz, vy, vz, zero, -vx, -vy, vx, zero)
    return torch.stack(rows, dim=-2).unflatten(-2, (3, 3))


def skew_to_vector(tensor: Tensor) -> Tensor:
    r"""The vector :math:`\operatorname{vec}(\mathbf{A}) = \frac{1}{2}(A_{zy} - A_{yz},
    A_{xz} - A_{zx}, A_{yx} - A_{xy})`, the inverse of :func:`skew` on antisymmetric input.

    Args:
        tensor (torch.Tensor): Shape :obj:`[..., 3, 3, H]`.

    Returns:
        torch.Tensor: Shape :obj:`[..., 3, H]`.
    """
    t = tensor
    return 0.5 * torch.stack((t[..., 2, 1, :] - t[..., 1, 2, :], t[..., 0, 2, :] - t[..., 2, 0, :],
                              t[..., 1, 0, :] - t[..., 0, 1, :]), dim=-2)


def scalar_to_tensor(scalar: Tensor) -> Tensor:
    r"""The isotropic tensor :math:`I\,\mathbf{1}`; :obj:`[..., H]` to :obj:`[..., 3, 3, H]`."""
    eye = torch.eye(3, dtype=scalar.dtype, device=scalar.device)
    return scalar.unsqueeze(-2).unsqueeze(-2) * eye.unsqueeze(-1)


def decompose(tensor: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Splits :obj:`tensor` :obj:`[..., 3, 3, H]` into :math:`(I, \mathbf{A}, \mathbf{S})`.

    Returns:
        (I, A, S): the scalar part :obj:`[..., H]` (one third of the trace) and the
        antisymmetric and symmetric-traceless parts :obj:`[..., 3, 3, H]`.
    """
    transpose = tensor.transpose(-3, -2)
    antisymmetric = 0.5 * (tensor - transpose)
    scalar = tensor.diagonal(dim1=-3, dim2=-2).mean(-1)
    symmetric = 0.5 * (tensor + transpose) - scalar_to_tensor(scalar)
    return scalar, antisymmetric, symmetric


def compose(scalar: Tensor, antisymmetric: Tensor, symmetric: Tensor) -> Tensor:
    r"""The inverse of :func:`decompose`: :math:`I\,\mathbf{1} + \mathbf{A} + \mathbf{S}`."""
    return scalar_to_tensor(scalar) + antisymmetric + symmetric


def squared_norm(tensor: Tensor) -> Tensor:
    r"""Squared Frobenius norm per channel, :math:`\sum_{ab} X_{ab}^2`;
    :obj:`[..., 3, 3, H]` to :obj:`[..., H]`. (TensorNet's "norm" is always this square.)"""
    return tensor.square().sum((-3, -2))


def matmul(left: Tensor, right: Tensor) -> Tensor:
    r"""Matrix product per channel, :math:`(\mathbf{L}\mathbf{R})_{ab} = \sum_c L_{ac}R_{cb}`."""
    # Three outer products of columns of L with rows of R, summed in the order c = 0, 1, 2:
    # no [..., 3, 3, 3, H] temporary, and unbind's backward is one stack.
    columns = left.unbind(-2)
    rows = right.unbind(-3)
    out = columns[0].unsqueeze(-2) * rows[0].unsqueeze(-3)
    out = out + columns[1].unsqueeze(-2) * rows[1].unsqueeze(-3)
    return out + columns[2].unsqueeze(-2) * rows[2].unsqueeze(-3)


def o3_product(message: Tensor, features: Tensor) -> Tensor:
    r"""The parity-preserving product :math:`\mathbf{M}\mathbf{Y} + \mathbf{Y}\mathbf{M}`.

    It maps :math:`(\mathbf{M}^\top, \mathbf{Y}^\top)` to the transpose of its value, so a
    network built on it is invariant under improper rotations as well (group O(3))."""
    return matmul(message, features) + matmul(features, message)


def so3_product(message: Tensor, features: Tensor) -> Tensor:
    r"""The product :math:`2\,\mathbf{Y}\mathbf{M}`, equivariant under proper rotations only
    (group SO(3)): reflections can change the invariants it produces."""
    return 2.0 * matmul(features, message)


def pack(scalar: Tensor, antisymmetric: Tensor, symmetric: Tensor) -> Tensor:
    r"""Packs :math:`(I, \mathbf{A}, \mathbf{S})` into the 10 components :obj:`[..., 10, H]`."""
    s = symmetric
    return torch.stack((scalar, *skew_to_vector(antisymmetric).unbind(-2), s[..., 0, 0, :],
                        s[..., 1, 1, :], s[..., 2, 2, :], s[..., 0, 1, :], s[..., 0, 2, :],
                        s[..., 1, 2, :]), dim=-2)


def unpack(components: Tensor) -> Tensor:
    r"""The full tensor :obj:`[..., 3, 3, H]` from the 10 components :obj:`[..., 10, H]`."""
    # compose(*unpack_parts(components)) entry by entry, with the same roundings
    # ((I 1 + A) + S: a diagonal entry is I + S_aa, an off-diagonal one S_ab +/- a_c).
    i, ax, ay, az, xx, yy, zz, xy, xz, yz = components.unbind(-2)
    return torch.stack((i + xx, xy - az, xz + ay, xy + az, i + yy, yz - ax, xz - ay, yz + ax,
                        i + zz), dim=-2).unflatten(-2, (3, 3))


def unpack_parts(components: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Like :func:`unpack`, but returns :math:`(I, \mathbf{A}, \mathbf{S})` separately."""
    scalar, vector, traceless = components.split([1, 3, 6], dim=-2)
    xx, yy, zz, xy, xz, yz = traceless.unbind(-2)
    symmetric = torch.stack((xx, xy, xz, xy, yy, yz, xz, yz, zz), dim=-2).unflatten(-2, (3, 3))
    return scalar.squeeze(-2), skew(vector), symmetric


def traceless_outer(vector: Tensor) -> Tensor:
    r"""The 6 packed components of :math:`\mathbf{u}\mathbf{u}^\top - \frac{1}{3}|\mathbf{u}|^2
    \mathbf{1}` for :obj:`vector` :obj:`[..., 3]`, as :obj:`[..., 6]`
    (:math:`xx, yy, zz, xy, xz, yz`)."""
    x, y, z = vector.unbind(-1)
    third = (x * x + y * y + z * z) / 3.0
    return torch.stack((x * x - third, y * y - third, z * z - third, x * y, x * z, y * z), dim=-1)


def pack_tensor(tensor: Tensor) -> Tensor:
    r"""The 10 packed components :obj:`[..., 10, H]` of a full tensor :obj:`[..., 3, 3, H]`;
    the same as :obj:`pack(*decompose(tensor))`."""
    # One unbind (its backward is one stack) instead of nine selects (each of whose backward
    # would fill a zero tensor of the input's size).
    t00, t01, t02, t10, t11, t12, t20, t21, t22 = tensor.flatten(-3, -2).unbind(-2)
    scalar = tensor.diagonal(dim1=-3, dim2=-2).mean(-1)
    return torch.stack((
        scalar,
        0.5 * (t21 - t12),
        0.5 * (t02 - t20),
        0.5 * (t10 - t01),
        t00 - scalar,
        t11 - scalar,
        t22 - scalar,
        0.5 * (t01 + t10),
        0.5 * (t02 + t20),
        0.5 * (t12 + t21),
    ), dim=-2)


def packed_squared_norms(components: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Squared Frobenius norms :math:`(\|I\mathbf{1}\|^2, \|\mathbf{A}\|^2, \|\mathbf{S}\|^2)`
    per channel, each :obj:`[..., H]`, from packed components :obj:`[..., 10, H]`."""
    i, a, diagonal, off_diagonal = components.split([1, 3, 3, 3], dim=-2)
    scalar = 3.0 * i.squeeze(-2).square()
    antisymmetric = 2.0 * a.square().sum(-2)
    symmetric = diagonal.square().sum(-2) + 2.0 * off_diagonal.square().sum(-2)
    return scalar, antisymmetric, symmetric


def mix_packed(components: Tensor, scalar_mixing: torch.nn.Module,
               antisymmetric_mixing: torch.nn.Module,
               symmetric_mixing: torch.nn.Module) -> Tensor:
    r"""Applies a channel mixing per irreducible part to packed components :obj:`[..., 10, H]`:
    the same as mixing :math:`I`, :math:`\mathbf{A}` and :math:`\mathbf{S}` as full tensors,
    since a map on the channel axis commutes with packing. (Eager only; TorchScript code uses
    :func:`mix_parts`.)"""
    mixings = (scalar_mixing, antisymmetric_mixing, symmetric_mixing)
    return torch.cat([mix(components[..., part, :]) for mix, part in zip(mixings, PART_SLICES)],
                     dim=-2)


def mix_parts(components: Tensor, scalar_weight: Tensor, antisymmetric_weight: Tensor,
              symmetric_weight: Tensor) -> Tensor:
    r"""Bias-free channel mixing :math:`\mathbf{x} \mapsto \mathbf{W}\mathbf{x}` per
    irreducible part of packed components :obj:`[..., 10, H]`, with one :obj:`[H', H]` weight per
    part (those of bias-free :class:`torch.nn.Linear` layers, with identical results);
    :func:`mix_packed` written for TorchScript."""
    linear = torch.nn.functional.linear
    i, a, s = components.split([1, 3, 6], dim=-2)
    return torch.cat([linear(i, scalar_weight), linear(a, antisymmetric_weight),
                      linear(s, symmetric_weight)], dim=-2)


def scale_parts(components: Tensor, factors: Tensor) -> Tensor:
    r"""Multiplies the components :obj:`[..., 10, H]` of each irreducible part by that part's
    factor, :obj:`factors` :obj:`[..., 3, H]` in the order :math:`(I, \mathbf{A}, \mathbf{S})`."""
    i, a, s = components.split([1, 3, 6], dim=-2)
    fi, fa, fs = factors.split([1, 1, 1], dim=-2)
    return torch.cat([i * fi, a * fa, s * fs], dim=-2)
