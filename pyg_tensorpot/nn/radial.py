r"""Radial basis expansions :math:`e_k(d)` of interatomic distances, and the evaluation of
radial filters built on them without keeping their intermediates for the backward pass."""
import math
from typing import List, Optional

import torch
from torch import Tensor

from pyg_tensorpot.nn.cutoff import CosineCutoff

#: Rows of a radial filter evaluated at once by :func:`recomputed_filter`.
FILTER_CHUNK_ROWS = 16384


def gradient_requested(ctx, index: int) -> bool:
    """Whether the running backward pass needs the gradient of tensor input :obj:`index` of the
    autograd function whose :obj:`ctx` this is (``autograd.grad(energy, pos)`` needs no weight
    gradients, although the weights require them)."""
    node = ctx.next_functions[index][0]
    if node is None:
        return False
    try:  # a private query of the autograd engine: failing it only costs time
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


class _RecomputedFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module: torch.nn.Module, num_params: int, edge_attr: Tensor,
                envelope: Tensor, *params: Tensor) -> Tensor:
        ctx.module = module
        ctx.save_for_backward(edge_attr, envelope, *params)
        return evaluate_filter(module, edge_attr, envelope)

    @staticmethod
    def backward(ctx, grad: Tensor):
        edge_attr, envelope, *params = ctx.saved_tensors
        module = ctx.module
        needed = [ctx.needs_input_grad[2 + i] and gradient_requested(ctx, i)
                  for i in range(2 + len(params))]
        inputs = [edge_attr, envelope, *params]
        if not any(needed):
            return (None, None, *[None for _ in inputs])
        if torch.is_grad_enabled():
            # A double backward (force training): recompute differentiably, all rows at once.
            wanted = [x for x, n in zip(inputs, needed) if n]
            out = module(edge_attr) * envelope.unsqueeze(-1)
            found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True,
                                             allow_unused=True))
            grads: List[Optional[Tensor]] = [next(found) if n else None for n in needed]
            return (None, None, *grads)
        return (None, None, *filter_gradients(module, edge_attr, envelope, params, grad,
                                               needed))


def evaluate_filter(module: torch.nn.Module, edge_attr: Tensor, envelope: Tensor) -> Tensor:
    """:obj:`module(edge_attr) * envelope[:, None]` without autograd, in blocks of
    :obj:`FILTER_CHUNK_ROWS` rows (the forward pass of :func:`recomputed_filter`)."""
    rows = edge_attr.size(0)
    with torch.no_grad():
        first = module(edge_attr[:1])
        out = first.new_empty((rows, first.size(-1)))
        for start in range(0, rows, FILTER_CHUNK_ROWS):
            chunk = slice(start, min(start + FILTER_CHUNK_ROWS, rows))
            torch.mul(module(edge_attr[chunk]), envelope[chunk].unsqueeze(-1), out=out[chunk])
    return out


def filter_gradients(module: torch.nn.Module, edge_attr: Tensor, envelope: Tensor,
                     params: List[Tensor], grad: Tensor,
                     needed: List[bool]) -> List[Optional[Tensor]]:
    """The gradients of :obj:`(edge_attr, envelope, *params)` (those flagged in :obj:`needed`)
    of :obj:`evaluate_filter(module, edge_attr, envelope)` given the upstream :obj:`grad`
    :obj:`[R, F]`, recomputing the network block by block (no graph is built)."""
    if isinstance(module, torch.nn.Linear):
        return _linear_filter_backward(module, edge_attr, envelope, grad, needed)
    inputs = [edge_attr, envelope, *params]
    grads = [torch.zeros_like(x) if n else None for x, n in zip(inputs, needed)]
    rows = edge_attr.size(0)
    for start in range(0, rows, FILTER_CHUNK_ROWS):
        chunk = slice(start, min(start + FILTER_CHUNK_ROWS, rows))
        with torch.enable_grad():
            attr = edge_attr[chunk].detach().requires_grad_(needed[0])
            env = envelope[chunk].detach().requires_grad_(needed[1])
            out = module(attr) * env.unsqueeze(-1)
            wanted = [x for x, n in zip([attr, env, *params], needed) if n]
            found = iter(torch.autograd.grad(out, wanted, grad[chunk], allow_unused=True))
        for i, n in enumerate(needed):
            if not n:
                continue
            value = next(found)
            if value is None:
                continue
            if i < 2:
                grads[i][chunk] = value
            else:
                grads[i].add_(value)
    return grads


def _linear_filter_backward(module: torch.nn.Linear, edge_attr: Tensor, envelope: Tensor,
                            grad: Tensor, needed: List[bool]) -> List[Optional[Tensor]]:
    # f = (e W^T + b) phi: with G = grad W, de = G phi and dphi = G . e + grad . b, so that
    # nothing needs recomputing; dW = (grad phi)^T e and db = sum(grad phi).
    grads: List[Optional[Tensor]] = [None] * len(needed)
    if needed[0] or needed[1]:
        projected = grad @ module.weight
        if needed[0]:
            grads[0] = projected * envelope.unsqueeze(-1)
        if needed[1]:
            grads[1] = (projected * edge_attr).sum(-1)
            if module.bias is not None:
                grads[1] = grads[1] + grad @ module.bias
    if any(needed[2:]):
        scaled = grad * envelope.unsqueeze(-1)
        names = [name for name, _ in module.named_parameters()]
        for i, name in enumerate(names):
            if needed[2 + i]:
                grads[2 + i] = scaled.t() @ edge_attr if name == 'weight' else scaled.sum(0)
    return grads


def recomputed_filter(module: torch.nn.Module, edge_attr: Tensor, envelope: Tensor) -> Tensor:
    r"""The radial filter :math:`\phi(d)\,\mathrm{MLP}(\mathbf{e}(d))`, evaluated in chunks of
    :obj:`FILTER_CHUNK_ROWS` rows and recomputed chunk by chunk in the backward pass, so that
    none of the network's intermediates (several :obj:`[R, H]` to :obj:`[R, 3H]` tensors per
    layer) is kept alive; a double backward recomputes it differentiably. Eager mode only
    (TorchScript and torch.compile evaluate the module directly).

    Args:
        module (torch.nn.Module): The filter network, applied row-wise to :obj:`edge_attr`.
        edge_attr (torch.Tensor): Radial basis :math:`\mathbf{e}(d)`, shape :obj:`[R, K]`.
        envelope (torch.Tensor): Cutoff envelope :math:`\phi(d)`, shape :obj:`[R]`.

    Returns:
        torch.Tensor: :obj:`[R, F]`, the same numbers as :obj:`module(edge_attr) *
        envelope[:, None]`.
    """
    if edge_attr.dim() != 2 or envelope.shape != edge_attr.shape[:1]:
        raise ValueError(f'recomputed_filter: need edge_attr [R, K] and envelope [R], got '
                         f'{list(edge_attr.shape)} and {list(envelope.shape)}')
    params = [p for p in module.parameters()]
    return _RecomputedFilter.apply(module, len(params), edge_attr, envelope, *params)


class ExpNormalSmearing(torch.nn.Module):
    r"""The exponential-normal radial basis of PhysNet (Unke & Meuwly, 2019), as in TensorNet

    .. math::
        e_k(d) = \phi(d)\,\exp\left(-\beta_k\left(e^{-\alpha (d - r_l)} - \mu_k\right)^2\right),
        \qquad \alpha = \frac{5}{r_c - r_l},

    with :math:`\mu_k` evenly spaced in :math:`[e^{-(r_c - r_l)}, 1]`, one width
    :math:`\beta_k = \left(\frac{2}{K}(1 - e^{-(r_c - r_l)})\right)^{-2}` and :math:`\phi` the
    :class:`CosineCutoff` on :math:`[0, r_c]`.

    Args:
        cutoff_lower (float, optional): :math:`r_l` in Angstrom. (default: :obj:`0.0`)
        cutoff_upper (float, optional): :math:`r_c` in Angstrom. (default: :obj:`5.0`)
        num_rbf (int, optional): Number of functions :math:`K`. (default: :obj:`50`)
        trainable (bool, optional): If :obj:`True`, :math:`\mu` and :math:`\beta` are learned.
            (default: :obj:`False`)
    """
    def __init__(self, cutoff_lower: float = 0.0, cutoff_upper: float = 5.0, num_rbf: int = 50,
                 trainable: bool = False):
        super().__init__()
        self.cutoff_lower = float(cutoff_lower)
        self.cutoff_upper = float(cutoff_upper)
        self.num_rbf = int(num_rbf)
        self.trainable = trainable
        self.cutoff_fn = CosineCutoff(cutoff_upper)
        self.alpha = 5.0 / (self.cutoff_upper - self.cutoff_lower)
        means, betas = self._initial_params()
        if trainable:
            self.means = torch.nn.Parameter(means)
            self.betas = torch.nn.Parameter(betas)
        else:
            self.register_buffer('means', means)
            self.register_buffer('betas', betas)

    def _initial_params(self):
        start = math.exp(-(self.cutoff_upper - self.cutoff_lower))
        means = torch.linspace(start, 1.0, self.num_rbf)
        betas = torch.full((self.num_rbf, ), (2.0 / self.num_rbf * (1.0 - start))**-2)
        return means, betas

    def reset_parameters(self):
        means, betas = self._initial_params()
        with torch.no_grad():
            self.means.copy_(means)
            self.betas.copy_(betas)

    def forward(self, distances: Tensor) -> Tensor:
        d = distances.unsqueeze(-1)
        return self.cutoff_fn(d) * torch.exp(
            -self.betas * (torch.exp(self.alpha * (self.cutoff_lower - d)) - self.means)**2)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff_lower={self.cutoff_lower}, '
                f'cutoff_upper={self.cutoff_upper}, num_rbf={self.num_rbf}, '
                f'trainable={self.trainable})')


class GaussianSmearing(torch.nn.Module):
    r"""Gaussian radial basis with evenly spaced centres (SchNet)

    .. math::
        e_k(d) = \exp\left(-\frac{(d - \mu_k)^2}{2 \Delta^2}\right),

    with :math:`\mu_k` evenly spaced in :math:`[r_l, r_c]` and :math:`\Delta` their spacing.
    Like torchmd-net's ``gauss`` basis it has no cutoff envelope of its own.

    Args:
        cutoff_lower (float, optional): :math:`r_l` in Angstrom. (default: :obj:`0.0`)
        cutoff_upper (float, optional): :math:`r_c` in Angstrom. (default: :obj:`5.0`)
        num_rbf (int, optional): Number of functions :math:`K`. (default: :obj:`50`)
        trainable (bool, optional): If :obj:`True`, centres and width are learned.
            (default: :obj:`False`)
    """
    def __init__(self, cutoff_lower: float = 0.0, cutoff_upper: float = 5.0, num_rbf: int = 50,
                 trainable: bool = False):
        super().__init__()
        if num_rbf < 2:
            raise ValueError('GaussianSmearing needs num_rbf >= 2')
        self.cutoff_lower = float(cutoff_lower)
        self.cutoff_upper = float(cutoff_upper)
        self.num_rbf = int(num_rbf)
        self.trainable = trainable
        offset, coeff = self._initial_params()
        if trainable:
            self.offset = torch.nn.Parameter(offset)
            self.coeff = torch.nn.Parameter(coeff)
        else:
            self.register_buffer('offset', offset)
            self.register_buffer('coeff', coeff)

    def _initial_params(self):
        offset = torch.linspace(self.cutoff_lower, self.cutoff_upper, self.num_rbf)
        coeff = torch.tensor(-0.5 / float(offset[1] - offset[0])**2)
        return offset, coeff

    def reset_parameters(self):
        offset, coeff = self._initial_params()
        with torch.no_grad():
            self.offset.copy_(offset)
            self.coeff.copy_(coeff)

    def forward(self, distances: Tensor) -> Tensor:
        return torch.exp(self.coeff * (distances.unsqueeze(-1) - self.offset)**2)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(cutoff_lower={self.cutoff_lower}, '
                f'cutoff_upper={self.cutoff_upper}, num_rbf={self.num_rbf}, '
                f'trainable={self.trainable})')
