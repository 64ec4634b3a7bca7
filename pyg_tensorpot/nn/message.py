r"""Fused message kernels of TensorNet's embedding and interaction layers.

Both layers sum per-edge products of radial filters with the 10 packed tensor components
into the receiving atoms. A plain gather-multiply-scatter materialises several ``[E, 10, H]``
tensors and keeps some of them alive for the backward pass (about 1 GB each for 5,000 atoms
of liquid water at a 4.5 A cutoff). Here every sum is a contraction of one multilinear form,

.. math::
    F(g, y, m) = \sum_{(j, i)} \sum_{k, h} g_{r(ij),\, c(k),\, h}\; y_{j k h}\; m_{i k h}
    \quad \text{(interaction)}, \qquad
    F(r, p, q, m) = \sum_{(j, i)} \sum_{k, h} r_{r(ij),\, c(k),\, h}\; p_{ij h}\;
    q_{ij k}\; m_{i k h} \quad \text{(embedding)},

with :math:`c(k)` the irreducible part (I, A or S) of component :math:`k` and :math:`r(ij)` the
radial row of the edge. The message is :math:`\partial F / \partial m`, and the gradient of
:math:`\partial F / \partial a` with respect to any other factor :math:`b` is
:math:`\partial F / \partial b` with the upstream gradient in the place of :math:`a`: the
backward pass of every contraction is made of contractions, so the double backward of force
training needs nothing more, and nothing per edge is kept for it.

Each contraction runs in a compiled loop over the edges when `Numba <https://numba.pydata.org>`_
is installed and the tensors are on the CPU (no per-edge temporary at all; the edges are
visited in their given order, so the result is deterministic), and otherwise as chunked
gather/multiply/:obj:`index_add_` passes whose per-edge temporaries hold at most
:obj:`CHUNK_ELEMENTS` numbers. In evaluation, :func:`recomputed_gather_scatter` and
:func:`recomputed_embedding_scatter` also compute the filters inside the contraction, one block
of :obj:`ROW_BLOCK` radial rows at a time, recompute them the same way in its backward pass,
and take the pair embeddings at atom level: nothing of the size of the filters is ever formed
for all rows at once.

The module is longer than 500 lines because the two forms, their compiled loops, their PyTorch
fallbacks and the recomputing wrapper share one slot/backward scheme, which splitting would
scatter over several files.
"""
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from pyg_tensorpot.nn.radial import (
    evaluate_filter,
    filter_gradients,
    gradient_requested,
    recomputed_filter,
)
from pyg_tensorpot.nn.tensor_algebra import PART_SLICES, scale_parts

#: Number of float elements of one per-edge temporary of the PyTorch kernels; sets their chunk
#: length.
CHUNK_ELEMENTS = 2**22
#: Use the compiled (Numba) kernels on CPU tensors when Numba is installed.
USE_NUMBA = True
#: Radial rows per block of :func:`recomputed_gather_scatter` and
#: :func:`recomputed_embedding_scatter`: their filters and the filters' gradient exist one
#: block at a time (:obj:`[ROW_BLOCK, 3, H]`, 96 MiB at H = 128 in float32) instead of for all
#: rows (3 GB each at 100,000 atoms of water).
ROW_BLOCK = 65536


def _chunks(num_edges: int, width: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(width, 1))
    for start in range(0, num_edges, step):
        yield slice(start, min(start + step, num_edges))


def _reduce_parts(products: Tensor) -> Tensor:
    # [E, 10, H] -> [E, 3, H], summing the components of each irreducible part.
    return torch.stack([products[:, part].sum(1) for part in PART_SLICES], dim=1)


def _expand_parts(filters: Tensor) -> Tensor:
    # [E, 3, H] -> [E, 10, H], each part's filter repeated over its components.
    return filters.repeat_interleave(torch.tensor([1, 3, 6], device=filters.device), dim=1)


# ---------------------------------------------------------------------------------------------
# Loops compiled by Numba (on first use; also plain-Python correct, if slow). Component k
# belongs to part 0 (k = 0), 1 (k = 1..3) or 2 (k = 4..9).


def _loop_scatter(values, filters, gather, scatter, row, out):  # pragma: no cover - compiled
    # out[scatter[e], k] += filters[row[e], c(k)] * values[gather[e], k]
    H = values.shape[2]
    for e in range(gather.shape[0]):
        s, t, r = gather[e], scatter[e], row[e]
        for k in range(10):
            c = 0 if k == 0 else (1 if k < 4 else 2)
            for h in range(H):
                out[t, k, h] += filters[r, c, h] * values[s, k, h]


def _loop_reduce(left, right, gather, scatter, row, out):  # pragma: no cover - compiled
    # out[row[e], c] += sum_{k in c} left[gather[e], k] * right[scatter[e], k]
    H = left.shape[2]
    for e in range(gather.shape[0]):
        s, t, r = gather[e], scatter[e], row[e]
        for h in range(H):
            out[r, 0, h] += left[s, 0, h] * right[t, 0, h]
        for k in range(1, 4):
            for h in range(H):
                out[r, 1, h] += left[s, k, h] * right[t, k, h]
        for k in range(4, 10):
            for h in range(H):
                out[r, 2, h] += left[s, k, h] * right[t, k, h]


def _loop_embed(radial, pair, geometry, target, row, out):  # pragma: no cover - compiled
    # out[target[e], k] += (radial[row[e], c(k)] * pair[e]) * geometry[e, k]
    H = pair.shape[1]
    for e in range(target.shape[0]):
        t, r = target[e], row[e]
        for k in range(10):
            c = 0 if k == 0 else (1 if k < 4 else 2)
            q = geometry[e, k]
            for h in range(H):
                out[t, k, h] += (radial[r, c, h] * pair[e, h]) * q


def _loop_embed_radial(pair, geometry, grad, target, row, out):  # pragma: no cover - compiled
    # out[row[e], c] += pair[e] * sum_{k in c} geometry[e, k] * grad[target[e], k]
    H = pair.shape[1]
    for e in range(target.shape[0]):
        t, r = target[e], row[e]
        for c in range(3):
            lo = 0 if c == 0 else (1 if c == 1 else 4)
            hi = 1 if c == 0 else (4 if c == 1 else 10)
            for h in range(H):
                acc = geometry[e, lo] * grad[t, lo, h]
                for k in range(lo + 1, hi):
                    acc += geometry[e, k] * grad[t, k, h]
                out[r, c, h] += pair[e, h] * acc


def _loop_embed_pair(radial, geometry, grad, target, row, out):  # pragma: no cover - compiled
    # out[e] = sum_k radial[row[e], c(k)] * geometry[e, k] * grad[target[e], k]
    H = out.shape[1]
    for e in range(target.shape[0]):
        t, r = target[e], row[e]
        for k in range(10):
            c = 0 if k == 0 else (1 if k < 4 else 2)
            q = geometry[e, k]
            for h in range(H):
                out[e, h] += radial[r, c, h] * (q * grad[t, k, h])


def _loop_embed_geometry(radial, pair, grad, target, row, out):  # pragma: no cover - compiled
    # out[e, k] = sum_h radial[row[e], c(k)] * pair[e] * grad[target[e], k]
    H = pair.shape[1]
    for e in range(target.shape[0]):
        t, r = target[e], row[e]
        for k in range(10):
            c = 0 if k == 0 else (1 if k < 4 else 2)
            acc = 0.0
            for h in range(H):
                acc += (radial[r, c, h] * pair[e, h]) * grad[t, k, h]
            out[e, k] = acc


_LOOPS = {loop.__name__: loop for loop in (_loop_scatter, _loop_reduce, _loop_embed,
                                           _loop_embed_radial, _loop_embed_pair,
                                           _loop_embed_geometry)}
_compiled: Dict[str, Callable] = {}
_numba_missing = False


def _numba_loop(name: str) -> Optional[Callable]:
    global _numba_missing
    if _numba_missing:
        return None
    if name not in _compiled:
        try:
            import numba
        except ImportError:
            _numba_missing = True
            return None
        # No fastmath: every product and sum rounds as in the PyTorch kernels.
        _compiled[name] = numba.njit(cache=True, nogil=True)(_LOOPS[name])
    return _compiled[name]


def _compiled_loop(name: str, tensors: List[Tensor]) -> Optional[Callable]:
    """The Numba loop :obj:`name` if it can run on :obj:`tensors` (CPU, float32/float64)."""
    if not USE_NUMBA or any(t.device.type != 'cpu' for t in tensors):
        return None
    if tensors[0].dtype not in (torch.float32, torch.float64):
        return None
    return _numba_loop(name)


def _run(loop: Callable, *tensors: Tensor) -> None:
    loop(*[t.detach().contiguous().numpy() for t in tensors[:-1]], tensors[-1].numpy())


# ---------------------------------------------------------------------------------------------
# The interaction form F(g, y, m): slot 0 filters [R, 3, H] (by radial row), slot 1 neighbour
# features [N, 10, H] (by source), slot 2 receiver features [N, 10, H] (by target).


def _scatter(values: Tensor, filters: Tensor, gather: Tensor, scatter: Tensor, row: Tensor,
             num_nodes: int, out: Optional[Tensor] = None) -> Tensor:
    """out[scatter[e]] += filters[row[e]] (per part) * values[gather[e]], [num_nodes, 10, H]
    (into :obj:`out` if given)."""
    if out is None:
        out = values.new_zeros((num_nodes, ) + tuple(values.shape[1:]))
    loop = _compiled_loop('_loop_scatter', [values, filters])
    if loop is not None:
        _run(loop, values, filters, gather, scatter, row, out)
        return out
    for edges in _chunks(gather.numel(), values[0].numel()):
        messages = values.index_select(0, gather[edges])
        edge_filters = filters.index_select(0, row[edges])
        for c, part in enumerate(PART_SLICES):
            messages[:, part].mul_(edge_filters[:, c:c + 1])
        out.index_add_(0, scatter[edges], messages)
    return out


def _reduce(left: Tensor, right: Tensor, gather: Tensor, scatter: Tensor, row: Tensor,
            num_rows: int, out: Optional[Tensor] = None) -> Tensor:
    """out[row[e], c] += sum over part c of left[gather[e]] * right[scatter[e]]."""
    if out is None:
        out = left.new_zeros((num_rows, 3, left.size(-1)))
    loop = _compiled_loop('_loop_reduce', [left, right])
    if loop is not None:
        _run(loop, left, right, gather, scatter, row, out)
        return out
    for edges in _chunks(gather.numel(), left[0].numel()):
        products = left.index_select(0, gather[edges])
        products.mul_(right.index_select(0, scatter[edges]))
        out.index_add_(0, row[edges], _reduce_parts(products))
    return out


def _interaction_slot(slot: int, a: Tensor, b: Tensor, source: Tensor, target: Tensor,
                      row: Tensor, sizes: Tuple[int, int, int],
                      out: Optional[Tensor] = None) -> Tensor:
    # ∂F/∂(slot) from the other two factors (a, b), given in slot order; added into out if given.
    if slot == 2:  # (g, y) -> messages at the receivers
        return _scatter(b, a, source, target, row, sizes[2], out)
    if slot == 1:  # (g, m) -> the transpose graph: from receivers back to neighbours
        return _scatter(b, a, target, source, row, sizes[1], out)
    return _reduce(a, b, source, target, row, sizes[0], out)  # (y, m) -> filters


class _InteractionContraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, slot: int, a: Tensor, b: Tensor, source: Tensor, target: Tensor,
                row: Tensor, sizes: Tuple[int, int, int]) -> Tensor:
        ctx.save_for_backward(a, b, source, target, row)
        ctx.slot, ctx.sizes = slot, sizes
        return _interaction_slot(slot, a, b, source, target, row, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, source, target, row = ctx.saved_tensors
        slots = [s for s in range(3) if s != ctx.slot]
        factors = {slots[0]: a, slots[1]: b, ctx.slot: grad.contiguous()}
        grads = []
        for i, (wanted, needed) in enumerate(zip(slots, ctx.needs_input_grad[1:3])):
            if not (needed and gradient_requested(ctx, i)):
                grads.append(None)
                continue
            x, y = [factors[s] for s in range(3) if s != wanted]
            grads.append(_InteractionContraction.apply(wanted, x, y, source, target, row,
                                                       ctx.sizes))
        return None, grads[0], grads[1], None, None, None, None


# ---------------------------------------------------------------------------------------------
# The embedding form F(r, p, q, m): slot 0 radial filters [R, 3, H] (by radial row), slot 1 pair
# embeddings [E, H], slot 2 edge components [E, 10], slot 3 receiver features [N, 10, H].


def _embedding_slot(slot: int, a: Tensor, b: Tensor, c: Tensor, target: Tensor, row: Tensor,
                    sizes: Tuple[int, int, int, int], out: Optional[Tensor] = None) -> Tensor:
    # ∂F/∂(slot) from the other three factors (a, b, c), given in slot order; the per-row and
    # per-atom results (slots 0 and 3) are added into out if given.
    names = ('_loop_embed_radial', '_loop_embed_pair', '_loop_embed_geometry', '_loop_embed')
    if slot == 1:
        out = a.new_zeros((target.numel(), a.size(-1)))
    elif slot == 2:
        out = a.new_zeros((target.numel(), c.size(1)))
    elif out is None:
        out = a.new_zeros((sizes[0], 3, a.size(-1))) if slot == 0 else \
            b.new_zeros((sizes[3], c.size(1), b.size(-1)))
    loop = _compiled_loop(names[slot], [a, b, c])
    if loop is not None:
        _run(loop, a, b, c, target, row, out)
        return out
    H = a.size(-1) if slot != 3 else b.size(-1)
    for edges in _chunks(target.numel(), c.size(1) * H):
        if slot == 3:  # (r, p, q) -> messages
            filters = a.index_select(0, row[edges]).mul_(b[edges].unsqueeze(1))
            messages = _expand_parts(filters).mul_(c[edges].unsqueeze(-1))
            out.index_add_(0, target[edges], messages)
            continue
        grad = c.index_select(0, target[edges])
        if slot == 0:  # (p, q, m) -> radial filters
            per_part = _reduce_parts(grad.mul_(b[edges].unsqueeze(-1)))
            out.index_add_(0, row[edges], per_part.mul_(a[edges].unsqueeze(1)))
        elif slot == 1:  # (r, q, m) -> pair embeddings
            per_part = _reduce_parts(grad.mul_(b[edges].unsqueeze(-1)))
            out[edges] = (a.index_select(0, row[edges]) * per_part).sum(1)
        else:  # (r, p, m) -> edge components
            filters = a.index_select(0, row[edges]).mul_(b[edges].unsqueeze(1))
            out[edges] = (grad * _expand_parts(filters)).sum(-1)
    return out


class _EmbeddingContraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, slot: int, a: Tensor, b: Tensor, c: Tensor, target: Tensor, row: Tensor,
                sizes: Tuple[int, int, int, int]) -> Tensor:
        ctx.save_for_backward(a, b, c, target, row)
        ctx.slot, ctx.sizes = slot, sizes
        return _embedding_slot(slot, a, b, c, target, row, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, c, target, row = ctx.saved_tensors
        slots = [s for s in range(4) if s != ctx.slot]
        factors = {slots[0]: a, slots[1]: b, slots[2]: c, ctx.slot: grad.contiguous()}
        grads = []
        for i, (wanted, needed) in enumerate(zip(slots, ctx.needs_input_grad[1:4])):
            # Forces do not ask for the pair embeddings' gradient (they depend on z only).
            if not (needed and gradient_requested(ctx, i)):
                grads.append(None)
                continue
            x, y, z = [factors[s] for s in range(4) if s != wanted]
            grads.append(_EmbeddingContraction.apply(wanted, x, y, z, target, row, ctx.sizes))
        return None, grads[0], grads[1], grads[2], None, None, None


# ---------------------------------------------------------------------------------------------
# Either form with its slot-0 filters computed from a radial network inside the contraction and
# recomputed in the backward pass, so that no [R, 3, H] filter is kept alive in between. The
# embedding form takes its pair embeddings at atom level, Z_ij = receiver_i + sender_j, formed
# per edge only while a pass runs: it keeps no [E, H] tensor either.

_FORMS = {'interaction': (_InteractionContraction, _interaction_slot),
          'embedding': (_EmbeddingContraction, _embedding_slot)}


def _form_factors(form: str, factors: List[Tensor],
                  indices: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
    # The factors and indices of the contraction itself, from the inputs of the function.
    if form == 'interaction':
        return factors, indices
    receiver, sender, geometry = factors
    source, target, row = indices
    pair = receiver.index_select(0, target) + sender.index_select(0, source)
    return [pair, geometry], [target, row]


def _add_input_grads(form: str, grads: List[Optional[Tensor]], indices: List[Tensor],
                     edges: Optional[Tensor], needed: List[bool],
                     totals: List[Optional[Tensor]]) -> None:
    # Gradients of one row block's contraction factors, added into those of the function's
    # inputs (totals, zeros of the inputs' shapes where needed). The interaction form's are
    # already added (slot functions accumulate into their out argument).
    if form == 'interaction':
        return
    grad_pair, grad_geometry = grads
    source, target, _ = indices
    if grad_pair is not None:
        for i, index in enumerate((target, source)):
            if needed[i]:
                totals[i].index_add_(0, index, grad_pair)
    if grad_geometry is not None:
        if edges is None:
            totals[2].copy_(grad_geometry)
        else:
            totals[2].index_copy_(0, edges, grad_geometry)


def _row_blocks(rows: Tensor, num_rows: int) -> List[Tuple[int, int, Optional[Tensor]]]:
    """:obj:`(lo, hi, edges)` for every block of :obj:`ROW_BLOCK` radial rows: the edges whose
    row is in :obj:`[lo, hi)`, in their given order (:obj:`None`, all edges, for one block)."""
    if num_rows <= ROW_BLOCK:
        return [(0, num_rows, None)]
    block = torch.div(rows, ROW_BLOCK, rounding_mode='floor')
    order = torch.sort(block, stable=True).indices
    counts = torch.bincount(block, minlength=(num_rows + ROW_BLOCK - 1) // ROW_BLOCK).tolist()
    blocks: List[Tuple[int, int, Optional[Tensor]]] = []
    start = 0
    for b, count in enumerate(counts):
        lo = b * ROW_BLOCK
        blocks.append((lo, min(lo + ROW_BLOCK, num_rows), order[start:start + count]))
        start += count
    return blocks


def _block(form: str, inputs: List[Tensor], indices: List[Tensor], sizes: Tuple[int, ...],
           lo: int, hi: int, edges: Optional[Tensor]):
    """The contraction restricted to the edges of radial rows :obj:`[lo, hi)`: its factors,
    indices and sizes, and the function's indices of those edges (rows counted from lo)."""
    if edges is not None:
        source, target, row = [x.index_select(0, edges) for x in indices]
        indices = [source, target, row - lo]
        if form == 'interaction':
            sizes = (hi - lo, ) + tuple(sizes[1:])
        else:
            receiver, sender, geometry = inputs
            inputs = [receiver, sender, geometry.index_select(0, edges)]
            sizes = (hi - lo, edges.numel(), edges.numel(), sizes[3])
    factors, contraction_indices = _form_factors(form, inputs, indices)
    return factors, contraction_indices, sizes, indices


def _block_filters(module: torch.nn.Module, edge_attr: Tensor, envelope: Tensor, lo: int,
                   hi: int) -> Tensor:
    filters = evaluate_filter(module, edge_attr[lo:hi], envelope[lo:hi])
    return filters.unflatten(-1, (3, filters.size(-1) // 3))


class _RecomputedContraction(torch.autograd.Function):
    # Without a double backward, the filters and their gradient are formed one block of
    # ROW_BLOCK radial rows at a time, in the forward and in the backward pass.
    @staticmethod
    def forward(ctx, form: str, module: torch.nn.Module, sizes: Tuple[int, ...],
                num_factors: int, num_indices: int, edge_attr: Tensor, envelope: Tensor,
                *rest: Tensor) -> Tensor:
        inputs = list(rest[:num_factors])
        indices = list(rest[num_factors:num_factors + num_indices])
        ctx.form, ctx.module, ctx.sizes = form, module, sizes
        ctx.counts = (num_factors, num_indices)
        ctx.save_for_backward(edge_attr, envelope, *rest)
        slot_fn = _FORMS[form][1]
        # Kept for the backward pass rather than sorted again there.
        ctx.blocks = _row_blocks(indices[-1], edge_attr.size(0))
        out: Optional[Tensor] = None
        for lo, hi, edges in ctx.blocks:
            factors, block_indices, block_sizes, _ = _block(form, inputs, indices, sizes, lo,
                                                            hi, edges)
            filters = _block_filters(module, edge_attr, envelope, lo, hi)
            out = slot_fn(len(factors) + 1, filters, *factors, *block_indices, block_sizes, out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        num_factors, num_indices = ctx.counts
        edge_attr, envelope, *rest = ctx.saved_tensors
        inputs = list(rest[:num_factors])
        input_indices = list(rest[num_factors:num_factors + num_indices])
        params = rest[num_factors + num_indices:]
        form, module, sizes = ctx.form, ctx.module, ctx.sizes
        contraction, slot_fn = _FORMS[form]
        # Tensor inputs in order: edge_attr, envelope, factors, indices, params.
        flags = [ctx.needs_input_grad[5 + i] and gradient_requested(ctx, i)
                 for i in range(2 + len(rest))]
        need_inputs = flags[2:2 + num_factors]
        need_filter = flags[:2] + flags[2 + num_factors + num_indices:]
        # The pair embeddings are wanted if the receiver or sender term is.
        need_factors = need_inputs if form == 'interaction' else \
            [need_inputs[0] or need_inputs[1], need_inputs[2]]
        count = len(need_factors)
        grad = grad.contiguous()
        if torch.is_grad_enabled():
            # A double backward (force training): differentiable recomputation and contractions.
            factor_grads: List[Optional[Tensor]] = [None] * count
            filter_grads: List[Optional[Tensor]] = [None] * len(need_filter)
            filters = recomputed_filter(module, edge_attr, envelope)
            filters = filters.unflatten(-1, (3, filters.size(-1) // 3))
            factors, indices = _form_factors(form, inputs, input_indices)
            slots = [filters, *factors, grad]
            for s in range(count + 1 if any(need_filter) else count):
                wanted = (s + 1) % (count + 1)  # the factors first, the filters last
                if wanted > 0 and not need_factors[wanted - 1]:
                    continue
                others = [slots[k] for k in range(count + 2) if k != wanted]
                value = contraction.apply(wanted, *others, *indices, sizes)
                if wanted > 0:
                    factor_grads[wanted - 1] = value
                    continue
                chosen = [x for x, n in zip([edge_attr, envelope, *params], need_filter) if n]
                found = iter(torch.autograd.grad(filters, chosen, value, create_graph=True,
                                                 allow_unused=True))
                filter_grads = [next(found) if n else None for n in need_filter]
            input_grads = _kept_input_grads(form, factor_grads, inputs, input_indices,
                                            need_inputs)
        else:
            input_grads, filter_grads = _blocked_backward(
                form, module, sizes, edge_attr, envelope, inputs, input_indices, list(params),
                grad, need_inputs, need_factors, need_filter, ctx.blocks)
        return (None, None, None, None, None, filter_grads[0], filter_grads[1], *input_grads,
                *[None] * num_indices, *filter_grads[2:])


def _kept_input_grads(form: str, grads: List[Optional[Tensor]], factors: List[Tensor],
                      indices: List[Tensor], needed: List[bool]) -> List[Optional[Tensor]]:
    # Gradients of the contraction's factors -> gradients of the function's inputs.
    if form == 'interaction':
        return grads
    totals: List[Optional[Tensor]] = [torch.zeros_like(x) if n else None
                                      for x, n in zip(factors[:2], needed[:2])]
    totals.append(grads[1])
    _add_input_grads(form, [grads[0], None], indices, None, needed, totals)
    return totals


def _blocked_backward(form: str, module: torch.nn.Module, sizes: Tuple[int, ...],
                      edge_attr: Tensor, envelope: Tensor, inputs: List[Tensor],
                      indices: List[Tensor], params: List[Tensor], grad: Tensor,
                      need_inputs: List[bool], need_factors: List[bool],
                      need_filter: List[bool],
                      blocks: List[Tuple[int, int, Optional[Tensor]]]
                      ) -> Tuple[List[Optional[Tensor]], List[Optional[Tensor]]]:
    # The gradients of the inputs and of the filter network's inputs and weights, one block of
    # radial rows at a time: the block's filters give the factors' gradients, then the factors
    # give the block's filter gradient, which the network's backward pass turns into the rest.
    slot_fn = _FORMS[form][1]
    count = len(need_factors)
    input_grads: List[Optional[Tensor]] = [torch.zeros_like(x) if n else None
                                           for x, n in zip(inputs, need_inputs)]
    filter_inputs = [edge_attr, envelope, *params]
    filter_grads: List[Optional[Tensor]] = [torch.zeros_like(x) if n else None
                                            for x, n in zip(filter_inputs, need_filter)]
    for lo, hi, edges in blocks:
        factors, block_indices, block_sizes, function_indices = _block(
            form, inputs, indices, sizes, lo, hi, edges)
        if any(need_factors):
            slots = [_block_filters(module, edge_attr, envelope, lo, hi), *factors, grad]
            factor_grads: List[Optional[Tensor]] = [None] * count
            for wanted in range(1, count + 1):
                if need_factors[wanted - 1]:
                    others = [slots[k] for k in range(count + 2) if k != wanted]
                    # The interaction form's atom gradient accumulates in place.
                    out = input_grads[0] if form == 'interaction' else None
                    factor_grads[wanted - 1] = slot_fn(wanted, *others, *block_indices,
                                                       block_sizes, out)
            _add_input_grads(form, factor_grads, function_indices, edges, need_inputs,
                             input_grads)
            del slots, factor_grads  # freed before the filters' gradient, of the same size
        if any(need_filter):
            grad_filters = slot_fn(0, *factors, grad, *block_indices, block_sizes)
            del factors
            found = filter_gradients(module, edge_attr[lo:hi], envelope[lo:hi], params,
                                     grad_filters.flatten(1), need_filter)
            del grad_filters
            for i, value in enumerate(found):
                if value is None:
                    continue
                target = filter_grads[i] if i >= 2 else filter_grads[i][lo:hi]
                target.add_(value)
    return input_grads, filter_grads


def _radial_rows(radial_index: Optional[Tensor], edge_index: Tensor) -> Tensor:
    if radial_index is None:
        return torch.arange(edge_index.size(1), device=edge_index.device)
    return radial_index.contiguous()


def _check_edges(name: str, edge_index: Tensor, rows: Tensor, num_rows: int) -> None:
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f'{name}: edge_index must have shape [2, num_edges], got '
                         f'{list(edge_index.shape)}')
    if rows.numel() != edge_index.size(1):
        raise ValueError(f'{name}: radial_index has {rows.numel()} entries for '
                         f'{edge_index.size(1)} edges')
    if rows.numel() > 0 and int(rows.max()) >= num_rows:
        raise ValueError(f'{name}: an edge refers to radial row {int(rows.max())}, but only '
                         f'{num_rows} rows of filters were given')


def filtered_gather_scatter(features: Tensor, filters: Tensor, edge_index: Tensor,
                            radial_index: Optional[Tensor] = None) -> Tensor:
    r"""Sums :math:`g^{c(k)}_{ij}\, y^k_j` over the edges :math:`(j, i)` into the receivers.

    Args:
        features (torch.Tensor): Packed node features :math:`y`, shape :obj:`[N, 10, H]`.
        filters (torch.Tensor): Filters :math:`(g^I, g^A, g^S)`, shape :obj:`[R, 3, H]`.
        edge_index (torch.Tensor): Row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`.
        radial_index (torch.Tensor, optional): Row of :obj:`filters` for every edge; if
            :obj:`None`, row :math:`e` belongs to edge :math:`e`. (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[N, 10, H]`.
    """
    if torch.jit.is_scripting():
        return _plain_filtered_gather_scatter(features, filters, edge_index, radial_index)
    return _fused_filtered_gather_scatter(features, filters, edge_index, radial_index)


@torch.jit.unused
def _fused_filtered_gather_scatter(features: Tensor, filters: Tensor, edge_index: Tensor,
                                   radial_index: Optional[Tensor]) -> Tensor:
    # Autograd functions cannot be compiled by TorchScript, torch.compile or torch.export:
    # those get the plain path (the same sums, with per-edge temporaries).
    if torch.compiler.is_compiling():
        return _plain_filtered_gather_scatter(features, filters, edge_index, radial_index)
    if features.dim() != 3 or filters.dim() != 3 or filters.size(1) != 3 or \
            features.size(-1) != filters.size(-1):
        raise ValueError(f'filtered_gather_scatter: need features [N, 10, H] and filters '
                         f'[R, 3, H], got {list(features.shape)} and {list(filters.shape)}')
    rows = _radial_rows(radial_index, edge_index)
    _check_edges('filtered_gather_scatter', edge_index, rows, filters.size(0))
    num_nodes = features.size(0)
    return _InteractionContraction.apply(2, filters.contiguous(), features.contiguous(),
                                         edge_index[0].contiguous(),
                                         edge_index[1].contiguous(), rows,
                                         (filters.size(0), num_nodes, num_nodes))


def _plain_filtered_gather_scatter(features: Tensor, filters: Tensor, edge_index: Tensor,
                                   radial_index: Optional[Tensor]) -> Tensor:
    rows = filters if radial_index is None else filters.index_select(0, radial_index)
    messages = scale_parts(features.index_select(0, edge_index[0]), rows)
    return torch.zeros_like(features).index_add(0, edge_index[1], messages)


def embedding_scatter(radial: Tensor, pair: Tensor, geometry: Tensor, edge_index: Tensor,
                      num_nodes: int, radial_index: Optional[Tensor] = None) -> Tensor:
    r"""Sums :math:`f^{c(k)}_{ij}\, q^k_{ij}` with :math:`f^c_{ij} = r^c_{ij} Z_{ij}` over the
    edges :math:`(j, i)` into the receivers (TensorNet's embedding).

    Args:
        radial (torch.Tensor): Radial filters :math:`r`, shape :obj:`[R, 3, H]`.
        pair (torch.Tensor): Pair embeddings :math:`Z_{ij}`, shape :obj:`[E, H]`.
        geometry (torch.Tensor): Per-edge components :math:`q`, shape :obj:`[E, 10]`.
        edge_index (torch.Tensor): Row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`.
        num_nodes (int): Number of nodes :math:`N`.
        radial_index (torch.Tensor, optional): Row of :obj:`radial` for every edge.
            (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[N, 10, H]`.
    """
    if torch.jit.is_scripting():
        return _plain_embedding_scatter(radial, pair, geometry, edge_index, num_nodes,
                                        radial_index)
    return _fused_embedding_scatter(radial, pair, geometry, edge_index, num_nodes, radial_index)


@torch.jit.unused
def _fused_embedding_scatter(radial: Tensor, pair: Tensor, geometry: Tensor, edge_index: Tensor,
                             num_nodes: int, radial_index: Optional[Tensor]) -> Tensor:
    if torch.compiler.is_compiling():
        return _plain_embedding_scatter(radial, pair, geometry, edge_index, num_nodes,
                                        radial_index)
    if radial.dim() != 3 or radial.size(1) != 3 or pair.dim() != 2 or geometry.dim() != 2 \
            or radial.size(-1) != pair.size(-1) or pair.size(0) != geometry.size(0) \
            or pair.size(0) != edge_index.size(-1):
        raise ValueError(f'embedding_scatter: need radial [R, 3, H], pair [E, H] and geometry '
                         f'[E, 10] for E edges, got {list(radial.shape)}, {list(pair.shape)}, '
                         f'{list(geometry.shape)} and {edge_index.size(-1)} edges')
    rows = _radial_rows(radial_index, edge_index)
    _check_edges('embedding_scatter', edge_index, rows, radial.size(0))
    return _EmbeddingContraction.apply(3, radial.contiguous(), pair.contiguous(),
                                       geometry.contiguous(), edge_index[1].contiguous(), rows,
                                       (radial.size(0), pair.size(0), pair.size(0), num_nodes))


def _plain_embedding_scatter(radial: Tensor, pair: Tensor, geometry: Tensor, edge_index: Tensor,
                             num_nodes: int, radial_index: Optional[Tensor]) -> Tensor:
    rows = radial if radial_index is None else radial.index_select(0, radial_index)
    filters = rows * pair.unsqueeze(1)
    messages = torch.cat([filters[:, 0:1] * geometry[:, 0:1, None],
                          filters[:, 1:2] * geometry[:, 1:4, None],
                          filters[:, 2:3] * geometry[:, 4:10, None]], dim=1)
    out = pair.new_zeros((num_nodes, geometry.size(1), pair.size(-1)))
    return out.index_add(0, edge_index[1], messages)


def recomputed_gather_scatter(features: Tensor, module: torch.nn.Module, edge_attr: Tensor,
                              envelope: Tensor, edge_index: Tensor,
                              radial_index: Optional[Tensor] = None) -> Tensor:
    r""":func:`filtered_gather_scatter` with the filters :math:`g = \phi(d)\,
    \mathrm{MLP}(\mathbf{e}(d))` computed inside, in blocks, and recomputed in the backward
    pass instead of being kept (one more evaluation of the network, about 1.5 kB less per edge
    row at :math:`H = 128` in float32); double backward recomputes them differentiably.
    Eager mode only.

    Args:
        features (torch.Tensor): Packed node features :math:`y`, shape :obj:`[N, 10, H]`.
        module (torch.nn.Module): The filter network, :obj:`[R, K] -> [R, 3H]` (parts I, A, S).
        edge_attr (torch.Tensor): Radial basis :math:`\mathbf{e}(d)`, shape :obj:`[R, K]`.
        envelope (torch.Tensor): Cutoff envelope :math:`\phi(d)`, shape :obj:`[R]`.
        edge_index (torch.Tensor): Row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`.
        radial_index (torch.Tensor, optional): Row of :obj:`edge_attr` for every edge.
            (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[N, 10, H]`.
    """
    if features.dim() != 3 or edge_attr.dim() != 2 or envelope.shape != edge_attr.shape[:1]:
        raise ValueError(f'recomputed_gather_scatter: need features [N, 10, H], edge_attr '
                         f'[R, K] and envelope [R], got {list(features.shape)}, '
                         f'{list(edge_attr.shape)} and {list(envelope.shape)}')
    rows = _radial_rows(radial_index, edge_index)
    _check_edges('recomputed_gather_scatter', edge_index, rows, edge_attr.size(0))
    num_nodes = features.size(0)
    params = list(module.parameters())
    return _RecomputedContraction.apply(
        'interaction', module, (edge_attr.size(0), num_nodes, num_nodes), 1, 3, edge_attr,
        envelope, features.contiguous(), edge_index[0].contiguous(),
        edge_index[1].contiguous(), rows, *params)


def recomputed_embedding_scatter(module: torch.nn.Module, edge_attr: Tensor, envelope: Tensor,
                                 receiver: Tensor, sender: Tensor, geometry: Tensor,
                                 edge_index: Tensor,
                                 radial_index: Optional[Tensor] = None) -> Tensor:
    r""":func:`embedding_scatter` with the radial filters :math:`r = \phi(d)\,
    \mathrm{module}(\mathbf{e}(d))` computed inside and recomputed in the backward pass
    (see :func:`recomputed_gather_scatter`), and the pair embeddings given at atom level,
    :math:`Z_{ij} = \mathbf{a}_i + \mathbf{b}_j` (receiver and sender terms), so that
    neither :obj:`[R, 3, H]` nor :obj:`[E, H]` tensors are kept between the passes.
    Eager mode only.

    Args:
        module (torch.nn.Module): The radial network, :obj:`[R, K] -> [R, 3H]`.
        edge_attr (torch.Tensor): Radial basis :math:`\mathbf{e}(d)`, shape :obj:`[R, K]`.
        envelope (torch.Tensor): Cutoff envelope :math:`\phi(d)`, shape :obj:`[R]`.
        receiver (torch.Tensor): Receiver term :math:`\mathbf{a}`, shape :obj:`[N, H]`.
        sender (torch.Tensor): Sender term :math:`\mathbf{b}`, shape :obj:`[N, H]`.
        geometry (torch.Tensor): Per-edge components :math:`q`, shape :obj:`[E, 10]`.
        edge_index (torch.Tensor): Row 0 the neighbour :math:`j`, row 1 the receiver :math:`i`.
        radial_index (torch.Tensor, optional): Row of :obj:`edge_attr` for every edge.
            (default: :obj:`None`)

    Returns:
        torch.Tensor: :obj:`[N, 10, H]`.
    """
    if receiver.dim() != 2 or receiver.shape != sender.shape or geometry.dim() != 2 \
            or geometry.size(0) != edge_index.size(-1) or edge_attr.dim() != 2 \
            or envelope.shape != edge_attr.shape[:1]:
        raise ValueError(f'recomputed_embedding_scatter: need edge_attr [R, K], envelope [R], '
                         f'receiver and sender [N, H] and geometry [E, 10] for E edges, got '
                         f'{list(edge_attr.shape)}, {list(envelope.shape)}, '
                         f'{list(receiver.shape)}, {list(sender.shape)}, '
                         f'{list(geometry.shape)} and {edge_index.size(-1)} edges')
    rows = _radial_rows(radial_index, edge_index)
    _check_edges('recomputed_embedding_scatter', edge_index, rows, edge_attr.size(0))
    params = list(module.parameters())
    num_edges = geometry.size(0)
    sizes = (edge_attr.size(0), num_edges, num_edges, receiver.size(0))
    return _RecomputedContraction.apply(
        'embedding', module, sizes, 3, 3, edge_attr, envelope, receiver.contiguous(),
        sender.contiguous(), geometry.contiguous(), edge_index[0].contiguous(),
        edge_index[1].contiguous(), rows, *params)
