r"""Output heads: per-atom scalars, molecular dipole vectors and polarizability tensors.

The vector and tensor heads read the antisymmetric and symmetric parts of TensorNet's final
rank-2 features. For the O(3) network :math:`\operatorname{vec}(\mathbf{A})` transforms as a
polar vector (it is built from :math:`[\hat{\mathbf{r}}]_\times`, and a reflection flips both
its sign and its handedness), and :math:`\mathbf{S}` as a symmetric rank-2 tensor, so both heads
are equivariant by construction.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from pyg_tensorpot.nn.activations import activation_resolver
from pyg_tensorpot.nn.tensor_algebra import decompose, skew_to_vector
from pyg_tensorpot.utils.elements import MASSES


class ScalarHead(torch.nn.Module):
    r"""Per-atom scalar output (e.g. an atomic energy contribution)

    .. math::
        \varepsilon_i = \mathbf{w}_2^\top \sigma(\mathbf{W}_1 \mathbf{x}_i + \mathbf{b}_1)
        + b_2, \qquad \mathbf{W}_1 \in \mathbb{R}^{\lfloor H/2 \rfloor \times H},

    torchmd-net's ``Scalar`` head (Xavier-uniform weights and zero biases at initialisation).

    Args:
        in_channels (int): Number of invariant input features :math:`H`.
        activation (str or torch.nn.Module, optional): The activation :math:`\sigma`.
            (default: :obj:`"silu"`)

    Shapes:
        - **input:** :math:`(N, H)`
        - **output:** :math:`(N)`
    """
    def __init__(self, in_channels: int, activation: Union[str, torch.nn.Module] = 'silu'):
        super().__init__()
        self.in_channels = in_channels
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(in_channels, in_channels // 2),
            activation_resolver(activation),
            torch.nn.Linear(in_channels // 2, 1),
        )
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.mlp:
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x).squeeze(-1)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.in_channels})'


def _center_of_mass(z: Tensor, pos: Tensor, batch: Tensor, num_graphs: int,
                    table: Tensor) -> Tensor:
    # table: the masses of MASSES (a buffer: TorchScript cannot read module globals).
    masses = table.to(device=pos.device, dtype=pos.dtype)[z].unsqueeze(-1)
    total = scatter(masses, batch, 0, dim_size=num_graphs, reduce='sum')
    return scatter(masses * pos, batch, 0, dim_size=num_graphs, reduce='sum') / total


class TensorFeatureHead(torch.nn.Module):
    r"""What the heads on TensorNet's rank-2 features share: a :class:`ScalarHead` on the
    invariant features (the attribute :attr:`mlp_name`) and bias-free linear maps
    :math:`\mathbb{R}^H \to \mathbb{R}` of the tensor channels (the attributes
    :attr:`weight_names`), each reset in that order.

    Args:
        hidden_channels (int): Number of invariant features and tensor channels :math:`H`.
        activation (str or torch.nn.Module, optional): Activation of the :class:`ScalarHead`.
            (default: :obj:`"silu"`)
    """
    #: Attribute of the :class:`ScalarHead` (a key of the saved weights).
    mlp_name = 'mlp'
    #: Attributes of the channel weights (keys of the saved weights).
    weight_names: Tuple[str, ...] = ()

    def __init__(self, hidden_channels: int, activation: Union[str, torch.nn.Module] = 'silu'):
        super().__init__()
        self.hidden_channels = hidden_channels
        setattr(self, self.mlp_name, ScalarHead(hidden_channels, activation))
        for name in self.weight_names:
            setattr(self, name, torch.nn.Linear(hidden_channels, 1, bias=False))

    def reset_parameters(self):
        for module in self.children():
            module.reset_parameters()

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self.hidden_channels})'


class DipoleHead(TensorFeatureHead):
    r"""Molecular dipole **vector** from atomic charges and TensorNet's antisymmetric features

    .. math::
        \boldsymbol{\mu} = \sum_i q_i\,(\mathbf{r}_i - \mathbf{R}_\mathrm{com})
        + \sum_i \sum_h w_h \operatorname{vec}(\mathbf{A}_{i,h}),
        \qquad q_i = \tilde q_i - \frac{1}{n}\Big(\sum_{k} \tilde q_k - Q\Big),

    where :math:`\tilde q_i` comes from a :class:`ScalarHead` on the invariant features and the
    correction makes the charges add up to the molecule's total charge :math:`Q` (0 by default),
    which makes :math:`\boldsymbol{\mu}` independent of the origin for neutral molecules. Units
    are those of the training targets (e.g. e Angstrom).

    Args:
        hidden_channels, activation: See :class:`TensorFeatureHead` (the activation of the
            charge MLP :math:`\tilde q`; default :obj:`"silu"`).

    Shapes:
        - **input:** invariant features :math:`(N, H)`, tensor features :math:`(N, 3, 3, H)`,
          atomic numbers :math:`(N)`, positions :math:`(N, 3)`, batch :math:`(N)`
        - **output:** :math:`(B, 3)`
    """
    mlp_name = 'charge'
    weight_names = ('vector_weight', )

    def __init__(self, hidden_channels: int, activation: Union[str, torch.nn.Module] = 'silu'):
        super().__init__(hidden_channels, activation)
        self.register_buffer('masses', torch.tensor(MASSES, dtype=torch.float64),
                             persistent=False)
        self.reset_parameters()

    def forward(self, x: Tensor, tensor: Tensor, z: Tensor, pos: Tensor, batch: Tensor,
                num_graphs: int, total_charge: Optional[Tensor] = None) -> Tensor:
        charges = self.charge(x)
        ones = torch.ones_like(charges)
        count = scatter(ones, batch, 0, dim_size=num_graphs, reduce='sum')
        excess = scatter(charges, batch, 0, dim_size=num_graphs, reduce='sum')
        if total_charge is not None:
            excess = excess - total_charge.to(charges.dtype)
        charges = charges - (excess / count)[batch]
        center = _center_of_mass(z, pos, batch, num_graphs, self.masses)
        point = charges.unsqueeze(-1) * (pos - center[batch])
        _, antisymmetric, _ = decompose(tensor)
        atomic = self.vector_weight(skew_to_vector(antisymmetric)).squeeze(-1)
        return scatter(point + atomic, batch, 0, dim_size=num_graphs, reduce='sum')


class PolarizabilityHead(TensorFeatureHead):
    r"""Molecular polarizability **tensor** from TensorNet's scalar and symmetric features

    .. math::
        \boldsymbol{\alpha} = \sum_i \Big(\alpha^\mathrm{iso}_i + \sum_h a_h I_{i,h}\Big)
        \mathbf{1} + \sum_i \sum_h b_h\,\mathbf{S}_{i,h},

    with :math:`\alpha^\mathrm{iso}_i` from a :class:`ScalarHead` on the invariant features. The
    result is symmetric and transforms as :math:`\mathbf{R}\boldsymbol{\alpha}\mathbf{R}^\top`.

    Args:
        hidden_channels, activation: See :class:`TensorFeatureHead` (the activation of the
            isotropic MLP :math:`\alpha^\mathrm{iso}`; default :obj:`"silu"`).

    Shapes:
        - **input:** invariant features :math:`(N, H)`, tensor features :math:`(N, 3, 3, H)`,
          batch :math:`(N)`
        - **output:** :math:`(B, 3, 3)`
    """
    mlp_name = 'isotropic'
    weight_names = ('scalar_weight', 'symmetric_weight')

    def __init__(self, hidden_channels: int, activation: Union[str, torch.nn.Module] = 'silu'):
        super().__init__(hidden_channels, activation)
        self.reset_parameters()

    def forward(self, x: Tensor, tensor: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        scalar, _, symmetric = decompose(tensor)
        iso = self.isotropic(x) + self.scalar_weight(scalar).squeeze(-1)
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        atomic = iso[:, None, None] * eye + self.symmetric_weight(symmetric).squeeze(-1)
        return scatter(atomic, batch, 0, dim_size=num_graphs, reduce='sum')
