"""Radial bases, cutoffs and the rank-2 tensor algebra, each on its own."""
import math

import pytest
import torch

from pyg_tensorpot.nn import (
    CosineCutoff,
    CosineSquaredCutoff,
    ExpNormalSmearing,
    GaussianSmearing,
)
from pyg_tensorpot.nn import tensor_algebra as ta


def random_tensor(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def rotation(seed, proper=True):
    q, r = torch.linalg.qr(random_tensor(3, 3, seed=seed))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) == proper:
        q = -q
    return q


def test_cosine_cutoff_values():
    cutoff = CosineCutoff(4.5)
    d = torch.tensor([0.0, 2.25, 4.5, 6.0], dtype=torch.float64)
    torch.testing.assert_close(cutoff(d), torch.tensor([1.0, 0.5, 0.0, 0.0],
                                                       dtype=torch.float64))
    lower = CosineCutoff(5.0, cutoff_lower=1.0)
    assert float(lower(torch.tensor(3.0))) == pytest.approx(1.0)
    assert float(lower(torch.tensor(0.5))) == 0.0
    with pytest.raises(ValueError):
        CosineCutoff(1.0, cutoff_lower=2.0)


def test_cosine_squared_cutoff_values_and_slopes():
    cutoff = CosineSquaredCutoff(6.5)
    d = torch.tensor([0.0, 3.25, 6.5, 7.0], dtype=torch.float64, requires_grad=True)
    value = cutoff(d)
    torch.testing.assert_close(value.detach(), torch.tensor([1.0, 0.5, 0.0, 0.0],
                                                            dtype=torch.float64))
    (grad, ) = torch.autograd.grad(value.sum(), d)
    assert abs(float(grad[0])) < 1e-15 and abs(float(grad[2])) < 1e-15


def test_expnorm_parameters_and_values():
    # TENSORNET.md 1.3: r_c = 4.5 A and K = 32 give mu_1 = e^-4.5 and beta = 261.8.
    rbf = ExpNormalSmearing(0.0, 4.5, 32)
    assert float(rbf.means[0]) == pytest.approx(math.exp(-4.5), rel=1e-6)
    assert float(rbf.means[-1]) == pytest.approx(1.0)
    assert float(rbf.betas[0]) == pytest.approx(261.8, abs=0.05)
    d = torch.tensor([0.0, 1.3, 4.5])
    e = rbf(d)
    assert e.shape == (3, 32)
    expected = 0.5 * (math.cos(math.pi * 1.3 / 4.5) + 1) * torch.exp(
        -rbf.betas * (math.exp(-5 / 4.5 * 1.3) - rbf.means)**2)
    torch.testing.assert_close(e[1], expected)
    assert torch.all(e[2] == 0)
    assert not rbf.means.requires_grad and 'means' in dict(rbf.named_buffers())
    trainable = ExpNormalSmearing(0.0, 4.5, 8, trainable=True)
    assert {n for n, _ in trainable.named_parameters()} == {'means', 'betas'}


def test_gaussian_smearing():
    rbf = GaussianSmearing(0.0, 5.0, 11)
    e = rbf(torch.tensor([2.0]))
    assert e.shape == (1, 11)
    assert float(e[0, 4]) == pytest.approx(1.0)
    assert float(e[0, 5]) == pytest.approx(math.exp(-0.5 * (0.5 / 0.5)**2))


def test_decompose_compose_round_trip_and_properties():
    x = random_tensor(5, 3, 3, 4)
    scalar, antisym, sym = ta.decompose(x)
    torch.testing.assert_close(ta.compose(scalar, antisym, sym), x)
    torch.testing.assert_close(antisym, -antisym.transpose(1, 2))
    torch.testing.assert_close(sym, sym.transpose(1, 2))
    torch.testing.assert_close(sym.diagonal(dim1=1, dim2=2).sum(-1), torch.zeros(5, 4,
                                                                                 dtype=x.dtype))
    # The parts are orthogonal: squared norms add up.
    total = 3 * scalar**2 + ta.squared_norm(antisym) + ta.squared_norm(sym)
    torch.testing.assert_close(ta.squared_norm(x), total)


def test_skew_and_vector_are_inverse_and_cross_product():
    v = random_tensor(6, 3, 2, seed=1)
    w = random_tensor(6, 3, 2, seed=2)
    A = ta.skew(v)
    torch.testing.assert_close(ta.skew_to_vector(A), v)
    Aw = torch.einsum('nabh,nbh->nah', A, w)
    torch.testing.assert_close(Aw, torch.cross(v, w, dim=1))


def test_pack_unpack_round_trip():
    x = random_tensor(4, 3, 3, 5, seed=3)
    parts = ta.decompose(x)
    packed = ta.pack(*parts)
    assert packed.shape == (4, ta.NUM_COMPONENTS, 5)
    torch.testing.assert_close(ta.unpack(packed), x)
    for a, b in zip(ta.unpack_parts(packed), parts):
        torch.testing.assert_close(a, b)


def test_traceless_outer():
    u = random_tensor(7, 3, seed=4)
    comps = ta.traceless_outer(u)
    full = u[:, :, None] * u[:, None, :] - (u * u).sum(-1)[:, None, None] / 3 * torch.eye(
        3, dtype=u.dtype)
    packed = ta.pack(torch.zeros(7, 1, dtype=u.dtype), torch.zeros(7, 3, 3, 1, dtype=u.dtype),
                     full.unsqueeze(-1))
    torch.testing.assert_close(comps, packed[:, 4:, 0])


def test_parts_transform_under_o3():
    x = random_tensor(3, 3, 3, 2, seed=5)
    for proper in (True, False):
        R = rotation(6, proper)
        rotate = lambda t: torch.einsum('ab,nbch,dc->nadh', R, t, R)  # noqa: E731
        s1, a1, S1 = ta.decompose(rotate(x))
        s0, a0, S0 = ta.decompose(x)
        torch.testing.assert_close(s1, s0)
        torch.testing.assert_close(a1, rotate(a0))
        torch.testing.assert_close(S1, rotate(S0))
        torch.testing.assert_close(ta.squared_norm(rotate(x)), ta.squared_norm(x))
        # vec(A) of a rotated skew matrix is det(R) R vec(A): a pseudovector.
        torch.testing.assert_close(ta.skew_to_vector(rotate(a0)),
                                   torch.det(R) * torch.einsum('ab,nbh->nah', R,
                                                               ta.skew_to_vector(a0)))


def test_products():
    m = random_tensor(2, 3, 3, 3, seed=7)
    y = random_tensor(2, 3, 3, 3, seed=8)
    expected = torch.einsum('nach,ncbh->nabh', m, y)
    torch.testing.assert_close(ta.matmul(m, y), expected)
    # O(3) product maps (M^T, Y^T) to the transpose; the SO(3) product does not.
    o3 = ta.o3_product(m, y)
    torch.testing.assert_close(ta.o3_product(m.transpose(1, 2), y.transpose(1, 2)),
                               o3.transpose(1, 2))
    so3 = ta.so3_product(m, y)
    torch.testing.assert_close(so3, 2 * torch.einsum('nach,ncbh->nabh', y, m))
    assert not torch.allclose(ta.so3_product(m.transpose(1, 2), y.transpose(1, 2)),
                              so3.transpose(1, 2))


def test_pack_tensor_and_packed_norms():
    x = random_tensor(4, 3, 3, 5, seed=9)
    packed = ta.pack_tensor(x)
    torch.testing.assert_close(packed, ta.pack(*ta.decompose(x)))
    scalar, antisym, sym = ta.decompose(x)
    n_i, n_a, n_s = ta.packed_squared_norms(packed)
    torch.testing.assert_close(n_i, 3 * scalar**2)
    torch.testing.assert_close(n_a, ta.squared_norm(antisym))
    torch.testing.assert_close(n_s, ta.squared_norm(sym))


def test_mix_packed_equals_mixing_full_parts():
    torch.manual_seed(0)
    mixings = [torch.nn.Linear(5, 5, bias=False).double() for _ in range(3)]
    x = random_tensor(4, 3, 3, 5, seed=10)
    scalar, antisym, sym = ta.decompose(x)
    full = ta.compose(mixings[0](scalar), mixings[1](antisym), mixings[2](sym))
    torch.testing.assert_close(ta.unpack(ta.mix_packed(ta.pack_tensor(x), *mixings)), full)


@pytest.mark.parametrize('numba_loop', [True, False])
def test_silu_derivatives_of_every_order_equal_torch(numba_loop, monkeypatch):
    # The package's SiLU (fused second derivative) against torch.nn.SiLU: values, gradients,
    # the double backward of force training, and a third derivative (where a graph is kept
    # the PyTorch formula is used); with and without the Numba loop.
    from pyg_tensorpot.nn import activations
    if not numba_loop:
        monkeypatch.setattr(activations, '_numba_second_derivative', lambda: None)
    elif activations._numba_second_derivative() is None:
        pytest.skip('Numba is not installed')
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(37, 11, generator=g, dtype=torch.float64) * 4.0
    w = torch.randn(37, 11, generator=g, dtype=torch.float64)
    results = []
    for module in (activations.SiLU(), torch.nn.SiLU()):
        x = x0.clone().requires_grad_(True)
        y = module(x)
        gx, = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        ggx, = torch.autograd.grad((gx * w).square().sum(), x, create_graph=True)
        gggx, = torch.autograd.grad(ggx.sum(), x)
        results.append((y, gx, ggx, gggx))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    x = x0[:3, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(activations._SiLUFunction.apply, (x, ))
    assert torch.autograd.gradgradcheck(activations._SiLUFunction.apply, (x, ))


def test_silu_float32_double_backward_is_accurate():
    # In float32 the fused second derivative is as accurate as PyTorch's formula: both against
    # the float64 result, within 2e-6 of its largest entry (measured: 2e-7 ours, 2e-6 PyTorch's).
    from pyg_tensorpot.nn.activations import SiLU
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(300, 64, generator=g) * 5.0
    w = torch.randn(300, 64, generator=g)
    grads = []
    for module, dtype in ((SiLU(), torch.float32), (torch.nn.SiLU(), torch.float64)):
        x = x0.to(dtype).requires_grad_(True)
        gx, = torch.autograd.grad((module(x) * w.to(dtype)).sum(), x, create_graph=True)
        ggx, = torch.autograd.grad((gx * w.to(dtype)).square().sum(), x)
        grads.append(ggx.double())
    scale = float(grads[1].abs().max())
    assert float((grads[0] - grads[1]).abs().max()) < 2e-6 * scale
    assert repr(SiLU()) == 'SiLU()'
