r"""Committees of potentials: the mean prediction and the members' disagreement."""
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor
from torch_geometric.data import Data

from pyg_tensorpot.models.properties import compute_properties, model_dtype


class Ensemble(torch.nn.Module):
    r"""A committee of :math:`M` potentials (as in TorchANI's ensembles or MACE committees),
    e.g. the same architecture trained from different seeds, or different models.

    Its energy is the members' mean,

    .. math::
        \bar{E} = \frac{1}{M}\sum_{m=1}^{M} E_m, \qquad
        s_E = \sqrt{\frac{1}{M-1}\sum_{m=1}^{M} (E_m - \bar{E})^2},

    so it follows the model contract (:meth:`forward` has every model's arguments) and every
    property of :func:`~pyg_tensorpot.compute_properties` is the mean of the members'. The
    spread :math:`s` (sample standard deviation over members) of energies, forces and stress
    comes from :meth:`compute`; it is large where the members disagree, e.g. far from their
    training data, which makes it a selection criterion for active learning.

    Args:
        models (Sequence[torch.nn.Module]): At least two potentials computing in one dtype.

    Example:
        >>> from pyg_tensorpot import Ensemble, from_pretrained
        >>> committee = Ensemble([from_pretrained('tensornet-ani1x'),
        ...                       from_pretrained('hipnn-ts-ani1x')])
        >>> out = committee.compute(z, pos, properties=['energy', 'forces'])
        >>> out['energy'], out['energy_std'], out['forces_std']
    """
    # Python-side conveniences, not part of the TorchScript module (torch.jit.script(ensemble)).
    __jit_unused_properties__ = ['dtype', 'cutoff']

    def __init__(self, models: Sequence[torch.nn.Module]):
        super().__init__()
        models = list(models)
        if len(models) < 2:
            raise ValueError(f'an ensemble needs at least two models, got {len(models)}')
        for k, model in enumerate(models):
            if not isinstance(model, torch.nn.Module):
                raise TypeError(f'member {k} is a {type(model).__name__}, not a torch module')
        dtypes = {model_dtype(model) for model in models}
        if len(dtypes) != 1:
            raise TypeError(f'the members compute in different dtypes {sorted(map(str, dtypes))};'
                            ' convert them to one (e.g. model.double())')
        self.models = torch.nn.ModuleList(models)

    @classmethod
    def from_pretrained(cls, names: Sequence[str], **kwargs) -> 'Ensemble':
        """An ensemble of registered names, Hub repositories or saved folders
        (:func:`~pyg_tensorpot.from_pretrained` for each, with :obj:`kwargs`)."""
        from pyg_tensorpot.hub import from_pretrained
        return cls([from_pretrained(name, **kwargs) for name in names])

    @property
    def dtype(self) -> torch.dtype:
        return model_dtype(self.models[0])

    @property
    def cutoff(self) -> float:
        """The largest cutoff of the members, in Angstrom."""
        return max(float(getattr(model, 'cutoff', 0.0)) for model in self.models)

    def __len__(self) -> int:
        return len(self.models)

    def forward(self, z: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                edge_index: Optional[Tensor] = None, cell: Optional[Tensor] = None,
                pbc: Optional[Union[bool, Tensor]] = None,
                total_charge: Optional[Tensor] = None,
                num_graphs: Optional[int] = None) -> Tensor:
        """The members' mean energy :obj:`[num_graphs]`; arguments as every model's."""
        # A loop (not a comprehension), so that TorchScript compiles it for every member.
        energies: List[Tensor] = []
        for model in self.models:
            energy = model(z, pos, batch, edge_index, cell, pbc, total_charge, num_graphs)
            energies.append(energy.reshape(-1))
        return torch.stack(energies).mean(0)

    def atomic_energies(self, z: Tensor, pos: Tensor, batch: Optional[Tensor] = None,
                        edge_index: Optional[Tensor] = None, cell: Optional[Tensor] = None,
                        pbc: Optional[Union[bool, Tensor]] = None,
                        total_charge: Optional[Tensor] = None,
                        num_graphs: Optional[int] = None) -> Tensor:
        """The members' mean per-atom energies :obj:`[num_atoms]` (every member must be an
        :class:`~pyg_tensorpot.models.AtomisticModel`)."""
        return torch.stack([
            model.atomic_energies(z, pos, batch, edge_index, cell, pbc, total_charge,
                                  num_graphs=num_graphs) for model in self.models
        ]).mean(0)

    def compute(self, z: Union[Tensor, Data], pos: Optional[Tensor] = None,
                batch: Optional[Tensor] = None, edge_index: Optional[Tensor] = None,
                cell: Optional[Tensor] = None, pbc: Optional[Union[bool, Tensor]] = None,
                total_charge: Optional[Tensor] = None,
                properties: Sequence[str] = ('energy', 'forces'),
                create_graph: Optional[bool] = None) -> Dict[str, Tensor]:
        r"""Every member's properties (:func:`~pyg_tensorpot.compute_properties`, same
        arguments), their mean under each property's name, the spread under
        :obj:`"<name>_std"`, and all members' values stacked under :obj:`"<name>_members"`
        (leading dimension :math:`M`).

        Shapes:
            - **energy**, **energy_std** :obj:`[B]`; **forces**, **forces_std**
              :obj:`[N, 3]`; **stress**, **stress_std** :obj:`[B, 3, 3]`; likewise for the
              other properties.
        """
        members: List[Dict[str, Tensor]] = [
            compute_properties(model, z, pos, batch, edge_index, cell, pbc, total_charge,
                               properties=properties, create_graph=create_graph)
            for model in self.models
        ]
        out: Dict[str, Tensor] = {}
        for key in members[0]:
            stacked = torch.stack([member[key] for member in members])
            out[key] = stacked.mean(0)
            out[f'{key}_std'] = stacked.std(0, unbiased=True)
            out[f'{key}_members'] = stacked
        return out

    def __repr__(self) -> str:
        names = ', '.join(type(model).__name__ for model in self.models)
        return f'{self.__class__.__name__}({len(self.models)} models: {names})'
