"""HIP-NN's neighbour sums over the per-atom grids of :class:`HIPNNLayout`, as fused autograd
functions: blocks of atoms at a time into reused buffers, and only their inputs kept for the
backward passes. The plain formulas beside them are what TorchScript and torch.compile run,
and what the fused functions are tested against.

Length: over 500 lines because each of the two sums comes with its blocked backward pass, the
blocked backward of that (force training) and the plain formulas both are tested against:
one contraction each, kept in one place.

Both grids (the source grid of the pair messages, one row per neighbour atom, and the
receiver grid, one row per receiving atom) are ragged: their rows are sorted by degree and
cut into blocks of :obj:`(start, end, width, offset)`, each block a :obj:`[end - start, width,
...]` grid stored flat from slot :obj:`offset` on
(:func:`~pyg_tensorpot.nn.ragged_neighbors.ragged_neighbors`), so that almost no slot is
padding. The rows of :obj:`projected` are in the source grid's order, the sums come out in
the receiver grid's (:func:`pair_sum` adds into atoms directly).
"""
from typing import Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

#: Default elements of one block of per-slot messages (sets the block length): a block stays
#: in cache, where the batched products run several times faster than over [S, F] at once.
CHUNK_ELEMENTS = 2**18


Block = Tuple[int, int, int, int]  # (start, end, width, offset)
Blocks = List[Block]


def _ragged(flat: Tensor, block: Block) -> Tensor:
    # The [rows, width, ...] grid of one source block out of its flat [slots, ...] storage.
    start, end, width, offset = block
    return flat[offset:offset + (end - start) * width].view(end - start, width, flat.size(-1))


def block_views(flat: Tensor, blocks: Blocks) -> List[Tensor]:
    r"""The :obj:`[end - start, width, D]` grid of every block of :obj:`blocks` out of their
    flat :obj:`[slots, D]` storage, as the views of one :func:`torch.split`, whose backward
    pass is one concatenation (a slice per block would add a gradient of the full size per
    block: quadratic in the atoms)."""
    sizes = [(b[1] - b[0]) * b[2] for b in blocks]
    if len(sizes) == 0:
        return []
    parts = torch.split(flat, sizes)
    return [part.view(b[1] - b[0], b[2], flat.size(-1)) for part, b in zip(parts, blocks)]


def row_views(rows: Tensor, blocks: Blocks) -> List[Tensor]:
    r"""The rows :obj:`start..end - 1` of every block of :obj:`blocks` out of a per-row tensor
    :obj:`[N, ...]`, as the views of one :func:`torch.split` (see :func:`block_views`)."""
    sizes = [b[1] - b[0] for b in blocks]
    if len(sizes) == 0:
        return []
    sizes.append(rows.size(0) - covered_rows(blocks))
    return list(torch.split(rows, sizes))[:-1]


def _largest_block(blocks: Blocks) -> int:
    return max([(b[1] - b[0]) * b[2] for b in blocks] + [0])


def covered_rows(blocks: Blocks) -> int:
    r"""The rows that :obj:`blocks` cover: the rows after the last block have no edges."""
    return blocks[-1][1] if len(blocks) > 0 else 0


def _gathered(table: Tensor, index: Tensor, blocks: Blocks) -> Iterator[Tuple[Block, Tensor]]:
    # (block, the rows of table at the block's slots of index as [rows, width, F]) for every
    # block, gathered into one reused buffer (valid until the next block).
    if len(blocks) == 0:
        return
    F = table.size(-1)
    buffer = table.new_empty((_largest_block(blocks), F))
    for block in blocks:
        start, end, width, offset = block
        slots = (end - start) * width
        yield block, torch.index_select(table, 0, index[offset:offset + slots],
                                        out=buffer[:slots]).view(end - start, width, F)


def _into_pair_gradients(grads: Iterable[Tuple[Block, Tensor]], grid: Tensor,
                         projected: Tensor, grad_grid: Optional[Tensor],
                         grad_projected: Optional[Tensor]) -> None:
    # The gradients of c = grid @ projected (per source block) for the gradient d of every
    # block of c, written into grad_grid [S, K] and grad_projected [N, K, F] (either None).
    for block, d in grads:
        start, end = block[0], block[1]
        if grad_grid is not None:
            torch.bmm(d, projected[start:end].transpose(1, 2), out=_ragged(grad_grid, block))
        if grad_projected is not None:
            torch.bmm(_ragged(grid, block).transpose(1, 2), d, out=grad_projected[start:end])


def _zero_uncovered(out: Tensor, blocks: Blocks) -> Tensor:
    # An empty per-row tensor with the rows that no block writes set to zero.
    out[covered_rows(blocks):].zero_()
    return out


class _AngularPairSum(torch.autograd.Function):
    # m_i = Y_i^T c[slots of i] with c = grid @ projected per neighbour, in blocks of atoms and
    # into preallocated buffers: of the per-slot [S, F] tensors only c is formed (and kept
    # for the backward pass). The backward pass is _AngularPairSumBackward.
    @staticmethod
    def forward(ctx, grid: Tensor, projected: Tensor, angular: Tensor, source_slot: Tensor,
                blocks_s: Blocks, blocks_r: Blocks) -> Tensor:
        N, F, C = projected.size(0), projected.size(-1), angular.size(-1)
        pair = grid.new_empty((grid.size(0), F))
        for block in blocks_s:
            torch.bmm(_ragged(grid, block), projected[block[0]:block[1]],
                      out=_ragged(pair, block))
        out = _zero_uncovered(grid.new_empty((N, C, F)), blocks_r)
        for block, gathered in _gathered(pair, source_slot, blocks_r):
            torch.bmm(_ragged(angular, block).transpose(1, 2), gathered,
                      out=out[block[0]:block[1]])
        ctx.save_for_backward(grid, projected, angular, source_slot, pair)
        ctx.blocks = (blocks_s, blocks_r)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grid, projected, angular, source_slot, pair = ctx.saved_tensors
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        grads = _AngularPairSumBackward.apply(grid, projected, angular, source_slot, pair,
                                              grad_out.contiguous(), ctx.blocks[0],
                                              ctx.blocks[1], *needs)
        return tuple(g if need else None for g, need in zip(grads, needs)) + (None, None, None)


class _AngularPairSumBackward(torch.autograd.Function):
    # The gradients of _AngularPairSum with respect to (grid, projected, angular), a block of
    # atoms at a time: grad_c = scatter of Y g from the receiver slots back to the source
    # slots, then grad_c projected^T and grid^T grad_c per neighbour. Differentiable (force
    # training) in blocks too; c (= grid projected, not a tracked input) enters its backward
    # pass through grid and projected explicitly.
    @staticmethod
    def forward(ctx, grid: Tensor, projected: Tensor, angular: Tensor, source_slot: Tensor,
                pair: Tensor, grad_out: Tensor, blocks_s: Blocks, blocks_r: Blocks,
                need_grid: bool, need_projected: bool, need_angular: bool):
        F = projected.size(-1)
        dummy = grid.new_zeros(())
        grad_pair = grid.new_zeros((grid.size(0), F))
        grad_angular = torch.empty_like(angular) if need_angular else dummy
        if len(blocks_r) > 0:
            rows = grid.new_empty((_largest_block(blocks_r), F))
            for block in blocks_r:
                start, end, width, offset = block
                slots = (end - start) * width
                g = grad_out[start:end]
                index = source_slot[offset:offset + slots]
                if need_angular:
                    gathered = torch.index_select(pair, 0, index, out=rows[:slots])
                    torch.bmm(gathered.view(end - start, width, F), g.transpose(1, 2),
                              out=_ragged(grad_angular, block))
                # The transpose graph: receiver slots back to the slots of their neighbours.
                grad_rows = torch.bmm(_ragged(angular, block), g,
                                      out=rows[:slots].view(end - start, width, F))
                grad_pair.index_add_(0, index, grad_rows.view(-1, F))
        grad_grid = torch.zeros_like(grid) if need_grid else dummy
        grad_projected = (_zero_uncovered(torch.empty_like(projected), blocks_s)
                          if need_projected else dummy)
        if need_grid or need_projected:
            _into_pair_gradients(((b, _ragged(grad_pair, b)) for b in blocks_s), grid, projected,
                                 grad_grid if need_grid else None,
                                 grad_projected if need_projected else None)
        ctx.save_for_backward(grid, projected, angular, source_slot, pair, grad_out)
        ctx.blocks = (blocks_s, blocks_r)
        ctx.needs = (need_grid, need_projected, need_angular)
        ctx.set_materialize_grads(False)  # an unused gradient comes as None, not zeros
        return grad_grid, grad_projected, grad_angular

    @staticmethod
    def backward(ctx, up_grid: Optional[Tensor], up_projected: Optional[Tensor],
                 up_angular: Optional[Tensor]):
        grid, projected, angular, source_slot, pair, grad_out = ctx.saved_tensors
        # an unneeded gradient is a 0-dimensional placeholder
        ups = [u if need and u is not None and u.dim() > 0 else None
               for u, need in zip((up_grid, up_projected, up_angular), ctx.needs)]
        wants = ctx.needs_input_grad
        blocks_s, blocks_r = ctx.blocks
        if torch.is_grad_enabled():  # third derivatives: the differentiable formulas
            grads = _differentiated(
                _plain_angular_pair_sum_backward(grid, projected, angular, source_slot,
                                                 grad_out, blocks_s, blocks_r), ups,
                [grid, projected, angular, grad_out], [wants[0], wants[1], wants[2], wants[5]])
        else:
            grads = _blocked_angular_pair_sum_double_backward(
                grid, projected, angular, source_slot, pair, grad_out, ups, wants, blocks_s,
                blocks_r)
        grad_grid, grad_projected, grad_angular, grad_grad_out = grads
        return (grad_grid, grad_projected, grad_angular, None, None, grad_grad_out, None, None,
                None, None, None)


def _blocked_angular_pair_sum_double_backward(
        grid: Tensor, projected: Tensor, angular: Tensor, source_slot: Tensor, pair: Tensor,
        grad_out: Tensor, ups: List[Optional[Tensor]], wants: Tuple[bool, ...],
        blocks_s: Blocks, blocks_r: Blocks) -> Tuple[Optional[Tensor], ...]:
    # With upstream gradients (uG, uP, uA) of (grad_grid, grad_projected, grad_angular) =
    # (Q P^T, G^T Q, gather(c) g^T), Q = scatter(Y g), c = G P:
    #   d grid      = Q uP^T + R P^T,      R = scatter(uA g)
    #   d projected = uG^T Q + G^T R
    #   d angular   = gather(X) g^T,       X = uG P + G uP
    #   d grad_out  = Y^T gather(X) + uA^T gather(c)
    up_grid, up_projected, up_angular = ups
    S, F = grid.size(0), projected.size(-1)
    want_grid, want_projected, want_angular, want_grad_out = wants[0], wants[1], wants[2], \
        wants[5]
    use_x = up_grid is not None or up_projected is not None
    need_q = (want_grid and up_projected is not None) or \
        (want_projected and up_grid is not None)
    need_r = up_angular is not None and (want_grid or want_projected)
    need_x = use_x and (want_angular or want_grad_out)
    grad_angular = torch.zeros_like(angular) if want_angular and need_x else None
    grad_grad_out = torch.zeros_like(grad_out) if want_grad_out and (
        need_x or up_angular is not None) else None
    x = None
    if need_x:
        x = grid.new_empty((S, F))
        for source in blocks_s:
            a, b = source[0], source[1]
            block = _ragged(x, source)
            if up_grid is not None:
                torch.bmm(_ragged(up_grid, source), projected[a:b], out=block)
                if up_projected is not None:
                    block.baddbmm_(_ragged(grid, source), up_projected[a:b])
            else:
                torch.bmm(_ragged(grid, source), up_projected[a:b], out=block)
    q = grid.new_zeros((S, F)) if need_q else None
    r = grid.new_zeros((S, F)) if need_r else None
    if len(blocks_r) > 0 and (
            x is not None or q is not None or r is not None or grad_grad_out is not None):
        rows = grid.new_empty((_largest_block(blocks_r), F))
        for receiver in blocks_r:
            start, end, width, offset = receiver
            slots = (end - start) * width
            g, y = grad_out[start:end], _ragged(angular, receiver)
            index = source_slot[offset:offset + slots]
            block = rows[:slots].view(end - start, width, F)
            if x is not None:
                torch.index_select(x, 0, index, out=block.view(-1, F))
                if grad_angular is not None:
                    torch.bmm(block, g.transpose(1, 2), out=_ragged(grad_angular, receiver))
                if grad_grad_out is not None:
                    grad_grad_out[start:end].baddbmm_(y.transpose(1, 2), block)
            if up_angular is not None and grad_grad_out is not None:
                torch.index_select(pair, 0, index, out=block.view(-1, F))
                grad_grad_out[start:end].baddbmm_(
                    _ragged(up_angular, receiver).transpose(1, 2), block)
            if q is not None:
                q.index_add_(0, index, torch.bmm(y, g, out=block).view(-1, F))
            if r is not None:
                r.index_add_(0, index, torch.bmm(_ragged(up_angular, receiver), g,
                                                 out=block).view(-1, F))
    grad_grid = torch.zeros_like(grid) if want_grid and (
        (q is not None and up_projected is not None) or r is not None) else None
    grad_projected = torch.zeros_like(projected) if want_projected and (
        (q is not None and up_grid is not None) or r is not None) else None
    if grad_grid is not None or grad_projected is not None:
        for source in blocks_s:
            a, b = source[0], source[1]
            q_block = None if q is None else _ragged(q, source)
            r_block = None if r is None else _ragged(r, source)
            if grad_grid is not None:
                out = _ragged(grad_grid, source)
                if q_block is not None and up_projected is not None:
                    out.baddbmm_(q_block, up_projected[a:b].transpose(1, 2))
                if r_block is not None:
                    out.baddbmm_(r_block, projected[a:b].transpose(1, 2))
            if grad_projected is not None:
                if q_block is not None and up_grid is not None:
                    grad_projected[a:b].baddbmm_(_ragged(up_grid, source).transpose(1, 2),
                                                 q_block)
                if r_block is not None:
                    grad_projected[a:b].baddbmm_(_ragged(grid, source).transpose(1, 2),
                                                 r_block)
    return grad_grid, grad_projected, grad_angular, grad_grad_out


def _differentiated(outputs: Tuple[Tensor, ...], ups: List[Optional[Tensor]],
                    inputs: List[Tensor], wanted: List[bool]) -> List[Optional[Tensor]]:
    # Third derivatives of the fused sums: the gradients of their plain backward formulas
    # (outputs, with upstream gradients ups, None where unused) with respect to the wanted
    # inputs, by autograd and themselves differentiable.
    pairs = [(o, u) for o, u in zip(outputs, ups) if u is not None]
    chosen = [k for k, (x, w) in enumerate(zip(inputs, wanted)) if w and x.requires_grad]
    result: List[Optional[Tensor]] = [None] * len(inputs)
    if pairs and chosen:
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[k] for k in chosen],
                                    [u for _, u in pairs], create_graph=True, allow_unused=True)
        for k, grad in zip(chosen, grads):
            result[k] = grad
    return result


def _plain_pairs(grid: Tensor, projected: Tensor, blocks: Blocks) -> Tensor:
    # c = grid @ projected per neighbour, block by block, [slots, F].
    F = projected.size(-1)
    parts = [torch.bmm(g, p).view(-1, F)
             for g, p in zip(block_views(grid, blocks), row_views(projected, blocks))]
    return torch.cat(parts) if len(parts) > 0 else grid.new_zeros((0, F))


def _plain_pair_gradients(grid: Tensor, projected: Tensor, grad_pair: Tensor,
                          blocks: Blocks) -> Tuple[Tensor, Tensor]:
    # The gradients of c = grid @ projected (per block) for the gradient grad_pair of c.
    N, K, F = projected.shape
    grids, grads = block_views(grid, blocks), block_views(grad_pair, blocks)
    projections = row_views(projected, blocks)
    grad_grid = [torch.bmm(d, p.transpose(1, 2)).view(-1, K)
                 for d, p in zip(grads, projections)]
    grad_projected = [torch.bmm(g.transpose(1, 2), d) for g, d in zip(grids, grads)]
    grad_projected.append(projected.new_zeros((N - covered_rows(blocks), K, F)))
    return (torch.cat(grad_grid) if len(grad_grid) > 0 else grid.new_zeros((0, K)),
            torch.cat(grad_projected))


def _plain_receiver_sum(angular: Tensor, rows: Tensor, blocks: Blocks,
                        num_nodes: int) -> Tensor:
    # Y^T rows per receiver, block by block, [N, C, F] in the receiver grid's row order.
    C, F = angular.size(-1), rows.size(-1)
    parts = [torch.bmm(y.transpose(1, 2), r)
             for y, r in zip(block_views(angular, blocks), block_views(rows, blocks))]
    parts.append(rows.new_zeros((num_nodes - covered_rows(blocks), C, F)))
    return torch.cat(parts)


def _plain_angular_pair_sum(grid: Tensor, projected: Tensor, angular: Tensor,
                            source_slot: Tensor, blocks_s: Blocks, blocks_r: Blocks) -> Tensor:
    rows = _plain_pairs(grid, projected, blocks_s).index_select(0, source_slot)
    return _plain_receiver_sum(angular, rows, blocks_r, projected.size(0))


def _plain_angular_pair_sum_backward(grid: Tensor, projected: Tensor, angular: Tensor,
                                     source_slot: Tensor, grad_out: Tensor, blocks_s: Blocks,
                                     blocks_r: Blocks) -> Tuple[Tensor, Tensor, Tensor]:
    C, F = angular.size(-1), projected.size(-1)
    rows = _plain_pairs(grid, projected, blocks_s).index_select(0, source_slot)
    ys, gs = block_views(angular, blocks_r), row_views(grad_out, blocks_r)
    grad_angular = [torch.bmm(r, g.transpose(1, 2)).view(-1, C)
                    for r, g in zip(block_views(rows, blocks_r), gs)]
    grad_rows = [torch.bmm(y, g).view(-1, F) for y, g in zip(ys, gs)]
    grad_pair = grid.new_zeros((grid.size(0), F))
    if len(grad_rows) > 0:
        grad_pair = grad_pair.index_add(0, source_slot, torch.cat(grad_rows))
    grad_grid, grad_projected = _plain_pair_gradients(grid, projected, grad_pair, blocks_s)
    return (grad_grid, grad_projected,
            torch.cat(grad_angular) if len(grad_angular) > 0 else torch.zeros_like(angular))


def angular_pair_sum(grid: Tensor, projected: Tensor, angular: Tensor, source_slot: Tensor,
                     blocks_s: Blocks, blocks_r: Blocks) -> Tensor:
    r"""HIP-NN-TS's neighbour sum :math:`m_i[c, g] = \sum_{j} Y_c(\hat{\mathbf{r}}_{ij})
    \sum_\nu s_\nu(r_{ij}) P_j[\nu, g]`: pair messages :math:`c = s\,P` per neighbour (source
    grid), gathered into the receiver grid and weighted by :math:`Y`.

    Args:
        grid (torch.Tensor): Sensitivities of the ragged source slots :obj:`[S, K]` (zero on
            padding).
        projected (torch.Tensor): :math:`P = V x` :obj:`[N, K, F]`, rows in the order of the
            source grid.
        angular (torch.Tensor): :math:`Y` of the ragged receiver slots :obj:`[R, C]` (zero on
            padding).
        source_slot (torch.Tensor): Source slot of every receiver slot :obj:`[R]`.
        blocks_s (List[Tuple[int, int, int, int]]): The source blocks
            :obj:`(start, end, width, offset)`.
        blocks_r (List[Tuple[int, int, int, int]]): The receiver blocks.

    Returns:
        torch.Tensor: :obj:`[N, C, F]`, rows in the order of the receiver grid.
    """
    if torch.jit.is_scripting():
        return _plain_angular_pair_sum(grid, projected, angular, source_slot, blocks_s,
                                       blocks_r)
    return _fused_angular_pair_sum(grid, projected, angular, source_slot, blocks_s, blocks_r)


@torch.jit.unused
def _fused_angular_pair_sum(grid: Tensor, projected: Tensor, angular: Tensor,
                            source_slot: Tensor, blocks_s: Blocks, blocks_r: Blocks) -> Tensor:
    # Autograd functions cannot be compiled by TorchScript, torch.compile or torch.export.
    if torch.compiler.is_compiling():
        return _plain_angular_pair_sum(grid, projected, angular, source_slot, blocks_s,
                                       blocks_r)
    return _AngularPairSum.apply(grid.contiguous(), projected.contiguous(),
                                 angular.contiguous(), source_slot, blocks_s, blocks_r)


class _PairSum(torch.autograd.Function):
    # m_i = sum over the source slots of i of c, c = grid_j @ projected_j per neighbour j, a
    # block of neighbours at a time into one reused buffer. Only the inputs are kept for the
    # backward pass: index_add_ keeps its whole source, every block of c ([S, F]).
    @staticmethod
    def forward(ctx, grid: Tensor, projected: Tensor, target: Tensor, blocks: Blocks) -> Tensor:
        N, F = projected.size(0), projected.size(-1)
        out = grid.new_zeros((N, F))
        if len(blocks) > 0:
            pair = grid.new_empty((_largest_block(blocks), F))
            for block in blocks:
                start, end, width, offset = block
                slots = (end - start) * width
                c = torch.bmm(_ragged(grid, block), projected[start:end],
                              out=pair[:slots].view(end - start, width, F))
                out.index_add_(0, target[offset:offset + slots], c.view(-1, F))
        ctx.save_for_backward(grid, projected, target)
        ctx.blocks = blocks
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grid, projected, target = ctx.saved_tensors
        need_grid, need_projected = ctx.needs_input_grad[:2]
        grad_grid, grad_projected = _PairSumBackward.apply(
            grid, projected, target, grad_out.contiguous(), ctx.blocks, need_grid,
            need_projected)
        return (grad_grid if need_grid else None,
                grad_projected if need_projected else None, None, None)


class _PairSumBackward(torch.autograd.Function):
    # The gradients of _PairSum, (g[target] projected^T, grid^T g[target]) per neighbour, with
    # g[target] gathered a block at a time; itself differentiable (force training) without
    # keeping more than its inputs.
    @staticmethod
    def forward(ctx, grid: Tensor, projected: Tensor, target: Tensor, grad_out: Tensor,
                blocks: Blocks, need_grid: bool, need_projected: bool):
        grad_grid = torch.empty_like(grid) if need_grid else grid.new_zeros(())
        grad_projected = (_zero_uncovered(torch.empty_like(projected), blocks) if need_projected
                          else grid.new_zeros(()))
        _into_pair_gradients(_gathered(grad_out, target, blocks), grid, projected,
                             grad_grid if need_grid else None,
                             grad_projected if need_projected else None)
        ctx.save_for_backward(grid, projected, target, grad_out)
        ctx.blocks = blocks
        ctx.needs = (need_grid, need_projected)
        ctx.set_materialize_grads(False)  # an unused gradient comes as None, not zeros
        return grad_grid, grad_projected

    @staticmethod
    def backward(ctx, up_grid: Optional[Tensor], up_projected: Optional[Tensor]):
        grid, projected, target, grad_out = ctx.saved_tensors
        need_grid, need_projected = ctx.needs
        use_grid = need_grid and up_grid is not None and up_grid.dim() > 0
        use_projected = need_projected and up_projected is not None and up_projected.dim() > 0
        wants = ctx.needs_input_grad
        blocks = ctx.blocks
        if torch.is_grad_enabled():  # third derivatives: the differentiable formulas
            grad_grid, grad_projected, grad_grad_out = _differentiated(
                _plain_pair_sum_backward(grid, projected, target, grad_out, blocks),
                [up_grid if use_grid else None, up_projected if use_projected else None],
                [grid, projected, grad_out], [wants[0], wants[1], wants[3]])
            return grad_grid, grad_projected, None, grad_grad_out, None, None, None
        F = projected.size(-1)
        grad_grid = torch.zeros_like(grid) if wants[0] and use_projected else None
        grad_projected = torch.zeros_like(projected) if wants[1] and use_grid else None
        grad_grad_out = torch.zeros_like(grad_out) if wants[3] else None
        if len(blocks) > 0 and (use_grid or use_projected):
            rows = grad_out.new_empty((_largest_block(blocks), F))
            for block in blocks:
                start, end, width, offset = block
                slots = (end - start) * width
                index = target[offset:offset + slots]
                if grad_grid is not None or grad_projected is not None:
                    gathered = torch.index_select(grad_out, 0, index, out=rows[:slots]).view(
                        end - start, width, F)
                    if grad_grid is not None:  # d/d grid of <up_P, grid^T g>
                        torch.bmm(gathered, up_projected[start:end].transpose(1, 2),
                                  out=_ragged(grad_grid, block))
                    if grad_projected is not None:  # d/d projected of <up_G, g P^T>
                        torch.bmm(_ragged(up_grid, block).transpose(1, 2), gathered,
                                  out=grad_projected[start:end])
                if grad_grad_out is not None:  # both terms are linear in g[target]
                    c = rows[:slots].view(end - start, width, F)
                    if use_grid:
                        torch.bmm(_ragged(up_grid, block), projected[start:end], out=c)
                        if use_projected:
                            c.baddbmm_(_ragged(grid, block), up_projected[start:end])
                    else:
                        torch.bmm(_ragged(grid, block), up_projected[start:end], out=c)
                    grad_grad_out.index_add_(0, index, c.view(-1, F))
        return grad_grid, grad_projected, None, grad_grad_out, None, None, None


def _plain_pair_sum(grid: Tensor, projected: Tensor, target: Tensor, blocks: Blocks) -> Tensor:
    N, F = projected.size(0), projected.size(-1)
    return projected.new_zeros((N, F)).index_add(0, target,
                                                 _plain_pairs(grid, projected, blocks))


def _plain_pair_sum_backward(grid: Tensor, projected: Tensor, target: Tensor,
                             grad_out: Tensor, blocks: Blocks) -> Tuple[Tensor, Tensor]:
    return _plain_pair_gradients(grid, projected, grad_out.index_select(0, target), blocks)


def pair_sum(grid: Tensor, projected: Tensor, target: Tensor, blocks: Blocks) -> Tensor:
    r"""HIP-NN's neighbour sum :math:`m_i[g] = \sum_{j} \sum_\nu s_\nu(r_{ij}) P_j[\nu, g]`:
    pair messages :math:`c = s\,P` per neighbour (source grid), added into their receivers.

    Args:
        grid (torch.Tensor): Sensitivities of the ragged source slots :obj:`[S, K]` (zero on
            padding).
        projected (torch.Tensor): :math:`P = V x` :obj:`[N, K, F]`, rows in the order of the
            source grid.
        target (torch.Tensor): Receiver atom of every source slot :obj:`[S]`.
        blocks (List[Tuple[int, int, int, int]]): The source blocks
            :obj:`(start, end, width, offset)`.

    Returns:
        torch.Tensor: :obj:`[N, F]`, rows in atom order.
    """
    if torch.jit.is_scripting():
        return _plain_pair_sum(grid, projected, target, blocks)
    return _fused_pair_sum(grid, projected, target, blocks)


@torch.jit.unused
def _fused_pair_sum(grid: Tensor, projected: Tensor, target: Tensor, blocks: Blocks) -> Tensor:
    # Autograd functions cannot be compiled by TorchScript, torch.compile or torch.export.
    if torch.compiler.is_compiling():
        return _plain_pair_sum(grid, projected, target, blocks)
    return _PairSum.apply(grid.contiguous(), projected.contiguous(), target, blocks)
