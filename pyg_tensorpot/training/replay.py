r"""Replay while fine-tuning: the structures of a second dataset (e.g. the teacher-labelled
conformations a model was distilled on) join the training split of the first, so that a model
fine-tuned on a few new labels keeps what it learnt (``data.replay_dataset``). The replayed
structures are never in the validation or test parts, which stay those of the first dataset.
"""
from typing import Any, List, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Data

from pyg_tensorpot.training.config import ConfigError


def _keys(data) -> List[str]:
    keys = data.keys() if callable(getattr(data, 'keys', None)) else data.keys
    return sorted(keys)


def _dense_groups(groups: Tensor, offset: int) -> Tensor:
    # Group ids >= 0 renumbered 0, 1, ... (+ offset) in order of first value; -1 stays -1.
    out = torch.full_like(groups, -1)
    member = groups >= 0
    if bool(member.any()):
        _, inverse = torch.unique(groups[member], return_inverse=True)
        out[member] = inverse + offset
    return out


class ReplayMix(Dataset):
    r"""The training structures of an experiment followed by replayed structures of another
    dataset, each served with the attributes the two have in common (so that any mixture
    collates into one batch), plus the group of every structure under :obj:`group_key`.

    Groups of the two parts never share an id: the first part's groups are numbered
    :math:`0 \dots G_1 - 1`, the replayed ones (from their attribute :obj:`replay_group_key`)
    :math:`G_1 \dots G_1 + G_2 - 1`; a structure in no group keeps -1.

    Args:
        train (Sequence[Data]): The training structures.
        replay (Sequence[Data]): The replayed structures.
        group_key (str, optional): The group attribute of :obj:`train`
            (``data.group_key``), also the name of the groups served. (default: :obj:`None`)
        replay_group_key (str, optional): The group attribute of :obj:`replay`
            (``data.replay_group_key``); without it the replayed structures are in no group.
            (default: :obj:`None`)
        required (Sequence[str], optional): Attributes the replayed structures must carry where
            the training structures do (the energy, force and stress keys of the loss: an
            attribute missing from either part would be missing from the whole mixture).
            (default: :obj:`()`)
    """
    def __init__(self, train: Sequence[Data], replay: Sequence[Data],
                 group_key: Optional[str] = None, replay_group_key: Optional[str] = None,
                 required: Sequence[str] = ()):
        from pyg_tensorpot.training.data import structure_groups
        if len(train) == 0 or len(replay) == 0:
            raise ConfigError('data.replay_dataset: the training split and the replayed '
                              'structures must both be non-empty')
        first, second = _keys(train[0]), _keys(replay[0])
        missing = [k for k in required if k in first and k not in second]
        if missing:
            raise ConfigError(f'data.replay_dataset: the replayed structures have no {missing}, '
                              f'which the training structures carry (they have {second})')
        grouping = {group_key, replay_group_key} - {None}
        self.keys = [k for k in first if k in second and k not in grouping]
        self.train, self.replay = train, replay
        self.group_key = group_key
        self.num_train = len(train)
        if group_key is None:
            self.groups = None
        else:
            main = _dense_groups(structure_groups(train, group_key), 0)
            offset = int(main.max()) + 1 if main.numel() else 0
            other = (torch.full((len(replay), ), -1, dtype=torch.long)
                     if replay_group_key is None
                     else _dense_groups(structure_groups(replay, replay_group_key), offset))
            self.groups = torch.cat([main, other])

    def __len__(self) -> int:
        return self.num_train + len(self.replay)

    @property
    def num_replay(self) -> int:
        return len(self.replay)

    def __getitem__(self, index: int) -> Data:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f'structure {index} of {len(self)}')
        index %= len(self)
        source = (self.train[index] if index < self.num_train
                  else self.replay[index - self.num_train])
        out = Data(**{k: source[k] for k in self.keys})
        if self.groups is not None:
            out[self.group_key] = self.groups[index].view(1)
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.num_train} training + {self.num_replay} '
                f'replayed structures)')


def replay_subset(replay: Any, size: Optional[int], seed: int,
                  group_key: Optional[str] = None) -> Any:
    r"""The replayed structures: all of :obj:`replay`, or :obj:`size` of them drawn with
    :obj:`seed` (whole groups of :obj:`group_key`, so that a dissociation scan is replayed
    whole; then up to one group more).

    Raises:
        ConfigError: :obj:`size` exceeds the dataset.
    """
    from pyg_tensorpot.datasets import random_split
    from pyg_tensorpot.training.data import structure_groups
    if size is None or size == len(replay):
        return replay
    if size > len(replay):
        raise ConfigError(f'data.replay_size: {size} structures asked for, but '
                          f'{type(replay).__name__} has {len(replay)}')
    groups = None if group_key is None else structure_groups(replay, group_key).numpy()
    split = random_split(len(replay), int(size), 0, None, seed=seed, groups=groups)
    return replay[split['idx_train']]
