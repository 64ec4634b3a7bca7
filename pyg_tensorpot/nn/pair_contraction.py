r"""Memory-lean edge contractions for message passing with many radial channels.

HIP-NN's message from :math:`j` to :math:`i` contracts :math:`K` radial sensitivities with
:math:`K` feature maps of :math:`j`. Written with plain indexing, the gathered
:obj:`[num_edges, K, F]` tensor is held in memory (and kept for the backward pass), which for
thousands of atoms runs to gigabytes. The three operations below process the edges in chunks,
never store more than one chunk of that tensor, and are each other's derivatives, so first and
second derivatives (forces, and force training) work to any order:

.. math::
    \text{gather\_contract:}\quad c_{e f} &= \sum_k s_{e k}\, X_{n_e k f}, \\
    \text{gather\_dot:}\quad t_{e k} &= \sum_f X_{n_e k f}\, d_{e f}, \\
    \text{scatter\_outer:}\quad Q_{n k f} &= \sum_{e:\, n_e = n} s_{e k}\, d_{e f},

with :math:`n_e` = :obj:`index[e]` the atom of edge :math:`e` that is read from or written to.
"""
import torch
from torch import Tensor

#: Elements of the per-chunk [chunk, K, F] temporary (16 MiB in float32).
CHUNK_ELEMENTS = 1 << 22


def _chunk_size(per_edge: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, per_edge))


def _gather_contract(s: Tensor, x: Tensor, index: Tensor) -> Tensor:
    num_edges, num_k = s.shape
    out = x.new_empty(num_edges, x.size(-1))
    step = _chunk_size(num_k * x.size(-1))
    for start in range(0, num_edges, step):
        stop = min(start + step, num_edges)
        block = x.index_select(0, index[start:stop])
        out[start:stop] = torch.bmm(s[start:stop].unsqueeze(1), block).squeeze(1)
    return out


def _gather_dot(x: Tensor, d: Tensor, index: Tensor) -> Tensor:
    num_edges = d.size(0)
    out = x.new_empty(num_edges, x.size(1))
    step = _chunk_size(x.size(1) * x.size(2))
    for start in range(0, num_edges, step):
        stop = min(start + step, num_edges)
        block = x.index_select(0, index[start:stop])
        out[start:stop] = torch.bmm(block, d[start:stop].unsqueeze(2)).squeeze(2)
    return out


def _scatter_outer(s: Tensor, d: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    num_edges, num_k = s.shape
    out = d.new_zeros(num_nodes, num_k, d.size(-1))
    step = _chunk_size(num_k * d.size(-1))
    for start in range(0, num_edges, step):
        stop = min(start + step, num_edges)
        out.index_add_(0, index[start:stop], s[start:stop].unsqueeze(2) * d[start:stop].unsqueeze(1))
    return out


class _GatherContract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(s, x, index)
        return _gather_contract(s, x, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        s, x, index = ctx.saved_tensors
        grad = grad.contiguous()
        grad_s = gather_dot(x, grad, index) if ctx.needs_input_grad[0] else None
        grad_x = scatter_outer(s, grad, index, x.size(0)) if ctx.needs_input_grad[1] else None
        return grad_s, grad_x, None


class _GatherDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, d: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(x, d, index)
        return _gather_dot(x, d, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, d, index = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = scatter_outer(grad, d, index, x.size(0)) if ctx.needs_input_grad[0] else None
        grad_d = gather_contract(grad, x, index) if ctx.needs_input_grad[1] else None
        return grad_x, grad_d, None


class _ScatterOuter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor, d: Tensor, index: Tensor, num_nodes: int) -> Tensor:
        ctx.save_for_backward(s, d, index)
        return _scatter_outer(s, d, index, num_nodes)

    @staticmethod
    def backward(ctx, grad: Tensor):
        s, d, index = ctx.saved_tensors
        grad = grad.contiguous()
        grad_s = gather_dot(grad, d, index) if ctx.needs_input_grad[0] else None
        grad_d = gather_contract(s, grad, index) if ctx.needs_input_grad[1] else None
        return grad_s, grad_d, None, None


def _check(name: str, s_or_x: Tensor, other: Tensor, index: Tensor) -> None:
    if index.dim() != 1 or index.dtype != torch.long:
        raise ValueError(f'{name}: index must be a 1-D int64 tensor, got {index.dtype} with '
                         f'shape {list(index.shape)}')
    if s_or_x.dtype != other.dtype:
        raise TypeError(f'{name}: dtypes differ ({s_or_x.dtype} and {other.dtype})')


def gather_contract(s: Tensor, x: Tensor, index: Tensor) -> Tensor:
    r""":math:`c_{ef} = \sum_k s_{ek} X_{n_e k f}` for :obj:`s` :obj:`[E, K]`, :obj:`x`
    :obj:`[N, K, F]` and :obj:`index` :obj:`[E]`; returns :obj:`[E, F]`."""
    _check('gather_contract', s, x, index)
    if s.dim() != 2 or x.dim() != 3 or s.size(1) != x.size(1) or s.size(0) != index.size(0):
        raise ValueError(f'gather_contract: incompatible shapes {list(s.shape)}, '
                         f'{list(x.shape)}, {list(index.shape)}')
    return _GatherContract.apply(s.contiguous(), x.contiguous(), index)


def gather_dot(x: Tensor, d: Tensor, index: Tensor) -> Tensor:
    r""":math:`t_{ek} = \sum_f X_{n_e k f} d_{ef}` for :obj:`x` :obj:`[N, K, F]`, :obj:`d`
    :obj:`[E, F]` and :obj:`index` :obj:`[E]`; returns :obj:`[E, K]`."""
    _check('gather_dot', x, d, index)
    if x.dim() != 3 or d.dim() != 2 or x.size(2) != d.size(1) or d.size(0) != index.size(0):
        raise ValueError(f'gather_dot: incompatible shapes {list(x.shape)}, {list(d.shape)}, '
                         f'{list(index.shape)}')
    return _GatherDot.apply(x.contiguous(), d.contiguous(), index)


def scatter_outer(s: Tensor, d: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    r""":math:`Q_{nkf} = \sum_{e: n_e = n} s_{ek} d_{ef}` for :obj:`s` :obj:`[E, K]`, :obj:`d`
    :obj:`[E, F]` and :obj:`index` :obj:`[E]`; returns :obj:`[num_nodes, K, F]`."""
    _check('scatter_outer', s, d, index)
    if s.dim() != 2 or d.dim() != 2 or s.size(0) != d.size(0) or s.size(0) != index.size(0):
        raise ValueError(f'scatter_outer: incompatible shapes {list(s.shape)}, '
                         f'{list(d.shape)}, {list(index.shape)}')
    return _ScatterOuter.apply(s.contiguous(), d.contiguous(), index, int(num_nodes))
