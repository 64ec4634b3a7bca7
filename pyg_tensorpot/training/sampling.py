r"""Deterministic, distributed and resumable data order.

The order of the training structures in epoch :math:`e` is a permutation drawn from a
generator seeded with ``(seed, e)``, independent of any global random state, so that

* a run resumed from a checkpoint sees exactly the batches an uninterrupted run would have
  seen, including a checkpoint written in the middle of an epoch
  (:class:`ResumableDataLoader` implements Lightning's ``state_dict``/``load_state_dict``
  protocol for data loaders);
* a DDP run over :math:`P` processes with local batch :math:`B/P` processes, at every step,
  the same :math:`B` structures as one process with batch :math:`B`: process :math:`p` takes
  positions :math:`p, p + P, p + 2P, \dots` of the permutation.

With groups (``data.group_key``), :class:`GroupBatchSampler` permutes whole groups instead
and deals them to a fixed number of batches, so that no group is ever split between batches.
"""
import heapq
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler
from torch_geometric.loader import DataLoader

from pyg_tensorpot.datasets.splits import group_units


class EpochOrder(Sampler):
    r"""What the resumable samplers share: the order of epoch :obj:`epoch` (:meth:`items`,
    drawn with :meth:`generator`, seeded with ``(seed, epoch)`` only), of which an iteration
    leaves out the first :obj:`skip` items (set when a run resumes in the middle of an epoch;
    reset when the epoch changes).

    Args:
        seed (int): Seed of the orders.
    """
    def __init__(self, seed: int):
        self.seed = int(seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the order of :obj:`epoch` (called by Lightning every epoch)."""
        if int(epoch) != self.epoch:
            self.skip = 0
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        """The generator of this epoch's order, independent of any global random state."""
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return generator

    def items(self) -> List[Any]:
        """The items of the current epoch, in order (before any skip)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        items = self.items()[self.skip:]
        self.skip = 0
        return iter(items)


class ResumableSampler(EpochOrder):
    r"""Samples :obj:`num_samples` indices in a per-epoch deterministic order, sharded over
    the processes of a distributed run.

    Args:
        num_samples (int): Size of the dataset.
        shuffle (bool, optional): Permute the indices every epoch. (default: :obj:`True`)
        seed (int, optional): Seed of the permutations. (default: :obj:`0`)
        num_replicas (int, optional): Number of processes. (default: :obj:`1`)
        rank (int, optional): This process. (default: :obj:`0`)
        drop_uneven (bool, optional): With several processes, leave out the last
            ``num_samples % num_replicas`` positions of each epoch's permutation so that every
            process gets the same number of samples (training); otherwise the shards differ by
            at most one (evaluation, where every structure must be seen exactly once).
            (default: :obj:`True`)
    """
    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_uneven: bool = True):
        if num_samples < 0:
            raise ValueError(f'num_samples must be non-negative, got {num_samples}')
        if not 0 <= rank < num_replicas:
            raise ValueError(f'rank must be in [0, {num_replicas}), got {rank}')
        super().__init__(seed)
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_uneven = drop_uneven

    def indices(self) -> List[int]:
        """This process's indices of the current epoch, in order (before any skip)."""
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator())
        else:
            order = torch.arange(self.num_samples)
        if self.num_replicas > 1:
            if self.drop_uneven:
                order = order[:self.num_samples - self.num_samples % self.num_replicas]
            order = order[self.rank::self.num_replicas]
        return order.tolist()

    items = indices

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.num_samples
        if self.drop_uneven:
            return self.num_samples // self.num_replicas
        return len(range(self.rank, self.num_samples, self.num_replicas))


class GroupBatchSampler(EpochOrder):
    r"""Batches in which every group of structures is whole (e.g. a dissociation scan, whose
    energies the loss compares with each other), in a per-epoch deterministic order.

    Every epoch, the units of :func:`~pyg_tensorpot.datasets.splits.group_units` (a group, or
    a structure in none) are permuted with the generator :class:`ResumableSampler` uses, and
    dealt in that order each to the batch holding the fewest structures so far (the first of
    them on a tie) among :math:`K = \min(\lceil N / B \rceil, \text{units})` batches. Every
    epoch thus has the same :math:`K` batches (Lightning counts them once), each of at most
    :math:`B` structures or up to one group more, and a resumed run sees the batches an
    uninterrupted one would (:obj:`skip` batches of the epoch are left out).

    Args:
        groups (array): The group of every structure :obj:`[N]` (-1 for none).
        batch_size (int): Structures per batch :math:`B`.
        seed (int, optional): Seed of the permutations. (default: :obj:`0`)
    """
    def __init__(self, groups: Union[Sequence[int], np.ndarray, Tensor], batch_size: int,
                 seed: int = 0):
        if int(batch_size) < 1:
            raise ValueError(f'batch_size must be positive, got {batch_size}')
        super().__init__(seed)
        self.units = group_units(groups)
        if not self.units:
            raise ValueError('GroupBatchSampler needs at least one structure')
        self.batch_size = int(batch_size)
        num = sum(len(unit) for unit in self.units)
        self.num_batches = min(math.ceil(num / self.batch_size), len(self.units))

    def batches(self) -> List[List[int]]:
        """The batches of the current epoch, in order (before any skip)."""
        order = torch.randperm(len(self.units), generator=self.generator()).tolist()
        batches: List[List[int]] = [[] for _ in range(self.num_batches)]
        lightest = [(0, k) for k in range(self.num_batches)]
        for u in order:
            size, k = heapq.heappop(lightest)
            batches[k].extend(self.units[u])
            heapq.heappush(lightest, (size + len(self.units[u]), k))
        return batches

    items = batches

    @property
    def sampler(self) -> 'GroupBatchSampler':
        """This sampler itself: Lightning calls :meth:`set_epoch` on the :obj:`sampler` of a
        loader's batch sampler, not on the batch sampler."""
        return self

    def __len__(self) -> int:
        return self.num_batches


class ResumableDataLoader(DataLoader):
    r"""A PyG :class:`~torch_geometric.loader.DataLoader` over a :class:`ResumableSampler` or
    a :class:`GroupBatchSampler` that Lightning can checkpoint and restore in the middle of an
    epoch.

    The training module reports every batch it starts (:meth:`mark_batch`); the state is the
    epoch and the number of batches started in it, and restoring it makes the next iteration
    skip those batches of that epoch's order.

    Args:
        dataset (Dataset): The structures.
        batch_size (int): Structures per batch (of this process); ignored with a
            :class:`GroupBatchSampler`, which makes the batches itself.
        sampler (EpochOrder): The order: a :class:`ResumableSampler` of structures, or a
            :class:`GroupBatchSampler` of batches.
        **kwargs (optional): Further arguments of
            :class:`torch_geometric.loader.DataLoader` (e.g. :obj:`num_workers`).
    """
    def __init__(self, dataset, batch_size: int, sampler: EpochOrder, **kwargs):
        if isinstance(sampler, GroupBatchSampler):
            super().__init__(dataset, batch_sampler=sampler, **kwargs)
            self._skip_per_batch = 1  # the group sampler skips whole batches
        else:
            super().__init__(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                             **kwargs)
            self._skip_per_batch = int(batch_size)  # the sampler skips structures
        self.order = sampler
        self._batches_started = 0
        self._epoch_marked = sampler.epoch

    def mark_batch(self, batch_idx: int) -> None:
        """Records that batch :obj:`batch_idx` (0-based, within the epoch) has started."""
        self._epoch_marked = self.order.epoch
        self._batches_started = int(batch_idx) + 1

    def state_dict(self) -> Dict[str, Any]:
        epoch, done = self._epoch_marked, self._batches_started
        if done >= len(self):  # the epoch is complete: resume at the start of the next one
            epoch, done = epoch + 1, 0
        return {'epoch': int(epoch), 'batches': int(done), 'seed': self.order.seed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state.get('seed', self.order.seed)) != self.order.seed:
            raise ValueError('the checkpoint was written with another data seed; resume with '
                             'the configuration of the interrupted run')
        self.order.set_epoch(int(state['epoch']))
        self.order.skip = int(state['batches']) * self._skip_per_batch
        self._epoch_marked = int(state['epoch'])
        self._batches_started = int(state['batches'])


def evaluation_loader(dataset, batch_size: int, num_replicas: int = 1, rank: int = 0,
                      **kwargs) -> DataLoader:
    """A loader over this process's share of :obj:`dataset`, in order, each structure seen
    exactly once over all processes."""
    sampler = ResumableSampler(len(dataset), shuffle=False, num_replicas=num_replicas,
                               rank=rank, drop_uneven=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      **kwargs)


def training_loader(dataset, batch_size: int, seed: int, num_replicas: int = 1,
                    rank: int = 0, groups: Optional[Union[np.ndarray, Tensor]] = None,
                    **kwargs) -> ResumableDataLoader:
    """The shuffled, resumable training loader of this process; :obj:`batch_size` is the
    global batch (it must be divisible by :obj:`num_replicas`). With :obj:`groups` (the group
    of every structure, -1 for none) its batches keep every group whole
    (:class:`GroupBatchSampler`, one process only)."""
    if groups is not None:
        if num_replicas > 1:
            raise ValueError(f'data.group_key: batches that keep every group whole run in one '
                             f'process, not {num_replicas}; train with trainer.devices: 1')
        return ResumableDataLoader(dataset, batch_size, GroupBatchSampler(groups, batch_size,
                                                                          seed), **kwargs)
    if batch_size % num_replicas:
        raise ValueError(f'data.batch_size ({batch_size}) must be divisible by the number of '
                         f'processes ({num_replicas}): it is the global batch')
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed,
                               num_replicas=num_replicas, rank=rank, drop_uneven=True)
    return ResumableDataLoader(dataset, batch_size // num_replicas, sampler, **kwargs)

