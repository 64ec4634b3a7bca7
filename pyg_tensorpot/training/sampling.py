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
"""
from typing import Any, Dict, Iterator, List

import torch
from torch.utils.data import Sampler
from torch_geometric.loader import DataLoader


class ResumableSampler(Sampler):
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
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_uneven = drop_uneven
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of :obj:`epoch` (called by Lightning every epoch)."""
        if int(epoch) != self.epoch:
            self.skip = 0
        self.epoch = int(epoch)

    def indices(self) -> List[int]:
        """This process's indices of the current epoch, in order (before any skip)."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        if self.num_replicas > 1:
            if self.drop_uneven:
                order = order[:self.num_samples - self.num_samples % self.num_replicas]
            order = order[self.rank::self.num_replicas]
        return order.tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.indices()[self.skip:]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return self.num_samples
        if self.drop_uneven:
            return self.num_samples // self.num_replicas
        return len(range(self.rank, self.num_samples, self.num_replicas))


class ResumableDataLoader(DataLoader):
    r"""A PyG :class:`~torch_geometric.loader.DataLoader` over a :class:`ResumableSampler`
    that Lightning can checkpoint and restore in the middle of an epoch.

    The training module reports every batch it starts (:meth:`mark_batch`); the state is the
    epoch and the number of batches started in it, and restoring it makes the next iteration
    skip those batches of that epoch's permutation.

    Args:
        dataset (Dataset): The structures.
        batch_size (int): Structures per batch (of this process).
        sampler (ResumableSampler): The order.
        **kwargs (optional): Further arguments of
            :class:`torch_geometric.loader.DataLoader` (e.g. :obj:`num_workers`).
    """
    def __init__(self, dataset, batch_size: int, sampler: ResumableSampler, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                         **kwargs)
        self._batches_started = 0
        self._epoch_marked = sampler.epoch

    def mark_batch(self, batch_idx: int) -> None:
        """Records that batch :obj:`batch_idx` (0-based, within the epoch) has started."""
        self._epoch_marked = self.sampler.epoch
        self._batches_started = int(batch_idx) + 1

    def state_dict(self) -> Dict[str, Any]:
        epoch, done = self._epoch_marked, self._batches_started
        if done >= len(self):  # the epoch is complete: resume at the start of the next one
            epoch, done = epoch + 1, 0
        return {'epoch': int(epoch), 'batches': int(done), 'seed': self.sampler.seed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state.get('seed', self.sampler.seed)) != self.sampler.seed:
            raise ValueError('the checkpoint was written with another data seed; resume with '
                             'the configuration of the interrupted run')
        self.sampler.set_epoch(int(state['epoch']))
        self.sampler.skip = int(state['batches']) * int(self.batch_size)
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
                    rank: int = 0, **kwargs) -> ResumableDataLoader:
    """The shuffled, resumable training loader of this process; :obj:`batch_size` is the
    global batch (it must be divisible by :obj:`num_replicas`)."""
    if batch_size % num_replicas:
        raise ValueError(f'data.batch_size ({batch_size}) must be divisible by the number of '
                         f'processes ({num_replicas}): it is the global batch')
    sampler = ResumableSampler(len(dataset), shuffle=True, seed=seed,
                               num_replicas=num_replicas, rank=rank, drop_uneven=True)
    return ResumableDataLoader(dataset, batch_size // num_replicas, sampler, **kwargs)

