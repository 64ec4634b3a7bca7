r"""Exponential moving average of a model's weights."""
import copy

import torch


class ExponentialMovingAverage(torch.nn.Module):
    r"""A copy of :obj:`model` whose parameters follow the trained ones as

    .. math::
        \bar\theta \leftarrow d_t\,\bar\theta + (1 - d_t)\,\theta, \qquad
        d_t = \min\!\left(d, \frac{1 + t}{10 + t}\right),

    after every optimiser step :math:`t` (the ramp keeps early averages from being dominated
    by the random initialisation). Buffers (reference energies, standardisation, radial-basis
    constants) are copied, not averaged, so they stay exact. The averaged model is the one that
    is validated, tested and exported; its parameters never require gradients. The state
    (averaged weights and step count) is part of :meth:`state_dict`, so training resumes
    exactly.

    Args:
        model (torch.nn.Module): The model being trained.
        decay (float, optional): :math:`d`, in :math:`[0, 1)`. (default: :obj:`0.999`)
    """
    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f'decay must be in [0, 1), got {decay}')
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """:math:`d_t` of the next update."""
        t = int(self.num_updates)
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Moves the average towards the weights of :obj:`model` (same architecture)."""
        weight = 1.0 - self.current_decay()
        averaged = list(self.module.parameters())
        current = list(model.parameters())
        if len(averaged) != len(current):
            raise ValueError('the model does not have the architecture of the averaged copy')
        for avg, param in zip(averaged, current):
            avg.lerp_(param.detach(), weight)
        for avg, buf in zip(self.module.buffers(), model.buffers()):
            avg.copy_(buf)
        self.num_updates += 1

    @torch.no_grad()
    def copy_from(self, model: torch.nn.Module) -> None:
        """Resets the average to the weights and buffers of :obj:`model`."""
        for avg, param in zip(self.module.parameters(), model.parameters()):
            avg.copy_(param)
        for avg, buf in zip(self.module.buffers(), model.buffers()):
            avg.copy_(buf)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def extra_repr(self) -> str:
        return f'decay={self.decay}'
