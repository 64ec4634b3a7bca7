"""Activation functions by name, as TensorNet and HIP-NN configurations spell them."""
import math
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor


def _silu_second_derivative_loop(x, grad, grad_grad, out):  # pragma: no cover - compiled
    # out = grad_grad * grad * silu''(x), silu''(x) = s (1 - s) (2 + x (1 - 2 s)), s = sigmoid(x)
    for k in numba_prange(x.size):
        v = x[k]
        s = 1.0 / (1.0 + math.exp(-v))
        out[k] = grad_grad[k] * grad[k] * (s * (1.0 - s) * (2.0 + v * (1.0 - 2.0 * s)))


# Numba's parallel range once Numba is imported (the loop above runs only compiled); a module
# global, so that the loop is a plain module-level function that Numba can cache.
numba_prange = range
_compiled_loop: Optional[Callable] = None
_numba_missing = False


def _numba_second_derivative() -> Optional[Callable]:
    global _compiled_loop, _numba_missing, numba_prange
    if _compiled_loop is None and not _numba_missing:
        try:
            import numba
        except ImportError:
            _numba_missing = True
            return None
        numba_prange = numba.prange
        _compiled_loop = numba.njit(parallel=True, cache=True, nogil=True)(
            _silu_second_derivative_loop)
    return _compiled_loop


def _silu_second_term(x: Tensor, grad: Tensor, grad_grad: Tensor) -> Tensor:
    # d/dx of silu'(x) * grad, contracted with grad_grad. One fused pass on CPU (Numba) in
    # place of the ~10 elementwise passes of PyTorch's silu_double_backward; the PyTorch
    # formula where a graph is kept (third derivatives), on other devices or without Numba.
    loop = None
    if not torch.is_grad_enabled() and x.device.type == 'cpu' and \
            x.dtype in (torch.float32, torch.float64):
        loop = _numba_second_derivative()
    if loop is None:
        s = torch.sigmoid(x)
        return grad_grad * grad * (s * (1 - s) * (2 + x * (1 - 2 * s)))
    out = torch.empty(x.shape, dtype=x.dtype)
    loop(*[t.detach().to(x.dtype).contiguous().reshape(-1).numpy()
           for t in (x, grad, grad_grad)], out.reshape(-1).numpy())
    return out


class _SiLUDerivative(torch.autograd.Function):
    # grad * silu'(x), the backward of SiLU, with an explicit backward of its own.
    @staticmethod
    def forward(ctx, x: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(x, grad)
        return torch.ops.aten.silu_backward(grad, x)

    @staticmethod
    def backward(ctx, grad_grad: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        x, grad = ctx.saved_tensors
        grad_x = _silu_second_term(x, grad, grad_grad) if ctx.needs_input_grad[0] else None
        grad_grad_out = _SiLUDerivative.apply(x, grad_grad) if ctx.needs_input_grad[1] \
            else None
        return grad_x, grad_grad_out


class _SiLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.nn.functional.silu(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, = ctx.saved_tensors
        return _SiLUDerivative.apply(x, grad)


class SiLU(torch.nn.Module):
    r"""The sigmoid-weighted linear unit :math:`x\,\sigma(x)` (as :class:`torch.nn.SiLU`), with
    cheaper second derivatives for force training: the double backward pass
    :math:`\bar g\, g\, \sigma(1-\sigma)(2 + x(1 - 2\sigma))` is one fused pass over the
    tensor on CPU (Numba) instead of about ten elementwise passes. Values and derivatives of
    every order equal :class:`torch.nn.SiLU`'s to rounding. TorchScript and
    :func:`torch.compile` use :func:`torch.nn.functional.silu`.

    Shapes:
        - **input:** any :math:`(*)`
        - **output:** :math:`(*)`
    """
    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.compiler.is_compiling() or \
                not torch.is_grad_enabled():
            return torch.nn.functional.silu(x)
        return self._with_fused_derivatives(x)

    @torch.jit.unused
    def _with_fused_derivatives(self, x: Tensor) -> Tensor:
        return _SiLUFunction.apply(x)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'


class ShiftedSoftplus(torch.nn.Module):
    r"""SchNet's shifted softplus :math:`\log(1 + e^x) - \log 2` (zero at the origin)."""
    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.softplus(x) - math.log(2.0)


_ACTIVATIONS: Dict[str, Callable[[], torch.nn.Module]] = {
    'silu': SiLU,
    'ssp': ShiftedSoftplus,
    'softplus': torch.nn.Softplus,
    'tanh': torch.nn.Tanh,
    'sigmoid': torch.nn.Sigmoid,
    'mish': torch.nn.Mish,
}


def activation_resolver(activation: Union[str, torch.nn.Module]) -> torch.nn.Module:
    """Returns a fresh activation module for a name such as ``'silu'``, or the module itself."""
    if isinstance(activation, torch.nn.Module):
        return activation
    try:
        return _ACTIVATIONS[activation.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation '{activation}'; choose one of "
                         f"{sorted(_ACTIVATIONS)}") from None
