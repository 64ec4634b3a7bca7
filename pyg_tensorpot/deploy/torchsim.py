r"""TorchSim: batched molecular dynamics of many systems at once with any potential of the
package (TensorNet, HIP-NN, HIP-NN-TS, an :class:`~pyg_tensorpot.models.Ensemble` or a model
composed from the package's layers).

:class:`TensorPotModel` is a TorchSim ``ModelInterface``: TorchSim's integrators, optimisers
and runners (``torch_sim.integrate``, ``torch_sim.optimize``, ``torch_sim.static``) call it with a
batched ``SimState`` holding every system's atoms, and it answers with the energy of every
system, the force on every atom and, on request, every system's stress, all computed in one
call of :func:`~pyg_tensorpot.models.properties.compute_properties` on the whole batch.

Conventions (checked against TorchSim's own Lennard-Jones model and its
``torch_sim.quantities.get_pressure``): TorchSim's *metal* units are eV, Angstrom, amu and eV/A^3
as ours; its stress is :math:`\boldsymbol{\sigma} = \frac{1}{V}\partial E/\partial
\boldsymbol{\varepsilon}`, ASE's sign (a compressed box has negative stress), as ours. TorchSim
stores the lattice vectors as the *columns* of ``state.cell`` (``state.row_vector_cell`` is its
transpose); the package's models take them as rows, so the wrapper passes
``state.row_vector_cell``. (TorchSim 0.3.0's ``LennardJonesModel`` itself returns forces and
stress twice the derivatives of its energy, as it counts both directions of its full neighbour
list, so the tests take only the sign from it, and magnitudes and triclinic cells from ASE's
Lennard-Jones.)

TorchSim is an optional dependency (``pip install torch-sim-atomistic``). This module is written
against torch-sim-atomistic 0.3.0 (the newest release for Python 3.11) and reads the state in a
way that also fits the 0.6 series (Python >= 3.12), whose ``SimState.pbc`` is a tensor of three
bools instead of one bool, whose ``forward`` receives only a ``SimState`` (0.3.0 also accepts a
plain dict), and whose per-system extras may carry a ``total_charge``; 0.6's integrators are
plain functions (``nve_init(state, model, kT=...)``, ``nve_step(state, model, dt=...)``) where
0.3.0 has factories (``nve(model, dt=..., kT=...)`` returning the init and update functions).
"""
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - exercised only without TorchSim
    raise ImportError(
        'pyg_tensorpot.deploy.torchsim needs TorchSim, which is not installed: pip install '
        "torch-sim-atomistic (0.3.0 for Python 3.11, 0.6 or later for Python >= 3.12)"
    ) from error

from pyg_tensorpot.models.properties import compute_properties, model_dtype
from pyg_tensorpot.nn.verlet import VerletList
from pyg_tensorpot.utils.devices import (
    inference_copy,
    load_model,
    model_device,
    resolve_device,
)

__all__ = ['TensorPotModel']


class TensorPotModel(ModelInterface):
    r"""A TorchSim model around any potential of the package, for batched simulations of many
    systems (molecules or periodic cells of different sizes) in one ``SimState``.

    Energies, forces and stress come from
    :func:`~pyg_tensorpot.models.properties.compute_properties` on the whole batch, so they are
    the same as those of :class:`~pyg_tensorpot.calculator.TensorPotCalculator` for each system
    alone. The state must be either all molecules (``pbc`` False: the cell is ignored) or all
    periodic; stress needs periodic systems.

    The model is used as given when it already computes in :obj:`dtype` on :obj:`device` and is
    in evaluation mode; otherwise a converted copy is made (the caller's model is never
    modified), whose parameters are frozen since only derivatives with respect to positions and
    strain are taken.

    Args:
        model (torch.nn.Module or str or Sequence): The potential, a pretrained name such as
            :obj:`"tensornet-ani1x"` (or a Hub id / saved folder), or a list of them (an
            :class:`~pyg_tensorpot.models.Ensemble`, whose mean is simulated).
        device (str or torch.device, optional): Where the model and the simulation run.
            (default: :obj:`None`, the model's device, CPU for a name)
        dtype (torch.dtype, optional): The floating-point type of the simulation: TorchSim's
            state and the returned energies, forces and stress; the model is converted to it.
            Energies of molecules are thousands of eV (atom reference energies included), which
            float32 resolves to about 1e-3 eV only: use float64 to study energy conservation.
            (default: :obj:`None`, the model's dtype)
        compute_forces (bool, optional): Whether to return forces (every integrator needs
            them). (default: :obj:`True`)
        compute_stress (bool, optional): Whether to return stress, for NPT or cell relaxation
            of periodic systems. (default: :obj:`False`)
        skin (float, optional): Verlet skin in Angstrom
            (:class:`~pyg_tensorpot.nn.verlet.VerletList`): the neighbour candidates of the
            whole batch are searched at cutoff + skin and reused across steps until an atom
            has moved more than half the skin, or the cells, the periodic directions, the
            atoms or the systems change (a moving cell, as in NPT, builds every step; so does
            an atom wrapped back into its cell). Results are those of a fresh search.
            :obj:`0` searches at every call. Needs a model of the package (not an ensemble).
            Builds are counted in :obj:`model.verlet.num_builds`. (default: :obj:`0.0`)

    Example:
        >>> import torch_sim as ts
        >>> from ase.build import molecule
        >>> model = TensorPotModel('tensornet-ani1x', dtype=torch.float64)
        >>> state = ts.io.atoms_to_state([molecule('H2O'), molecule('CH4')],
        ...                              model.device, model.dtype)
        >>> out = model(state)
        >>> out['energy'].shape, out['forces'].shape
        (torch.Size([2]), torch.Size([8, 3]))
    """
    def __init__(
        self,
        model: Union[str, torch.nn.Module, Sequence[Any]],
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        compute_forces: bool = True,
        compute_stress: bool = False,
        skin: float = 0.0,
    ):
        super().__init__()
        if dtype is not None and (not isinstance(dtype, torch.dtype)
                                  or not dtype.is_floating_point):
            raise TypeError(f'dtype must be a floating-point torch dtype such as torch.float64 '
                            f'or torch.float32, got {dtype!r}')
        requested = None if device is None else resolve_device(device)
        module, owned = load_model(model, requested)
        current_dtype, current_device = model_dtype(module), model_device(module)
        self._dtype = current_dtype if dtype is None else dtype
        self._device = requested or current_device or torch.device('cpu')
        self.model = inference_copy(module, self._dtype, self._device, owned)
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self.verlet: Optional[VerletList] = VerletList.for_model(self.model, skin)
        self.skin = float(skin)
        # Radial cutoff: the memory per system grows with atoms times density (TorchSim's
        # autobatcher uses this to size batches).
        self._memory_scales_with = 'n_atoms_x_density'

    @property
    def compute_forces(self) -> bool:
        """Whether forces are returned."""
        return self._compute_forces

    @compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @property
    def compute_stress(self) -> bool:
        """Whether stress is returned."""
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    def _state_of(self, state: Any) -> Any:
        if isinstance(state, Mapping):
            # TorchSim 0.3.0 also passes plain dicts (StateDict); masses do not enter the
            # energy, so a dict without them is completed with 1 amu.
            values = dict(state)
            if 'positions' not in values:
                raise ValueError('the state needs positions (Angstrom, [n_atoms, 3])')
            values.setdefault('masses', torch.ones(values['positions'].shape[0],
                                                   dtype=values['positions'].dtype,
                                                   device=values['positions'].device))
            values.setdefault('pbc', False)
            return ts.SimState(**values)
        return state

    def forward(self, state: Any, **kwargs: Any) -> Dict[str, Tensor]:
        r"""Energies, forces and (with :obj:`compute_stress`) stress of every system of a
        batched TorchSim state.

        Args:
            state (torch_sim.SimState or dict): The systems: :obj:`positions` (Angstrom),
                :obj:`atomic_numbers`, :obj:`system_idx`, :obj:`cell` (lattice vectors as
                columns, TorchSim's convention) and :obj:`pbc`.
            **kwargs: Ignored (TorchSim passes integrator options to every model).

        Returns:
            dict: :obj:`"energy"` :obj:`[n_systems]` (eV), :obj:`"forces"` :obj:`[n_atoms, 3]`
            (eV/A) and :obj:`"stress"` :obj:`[n_systems, 3, 3]` (eV/A^3, ASE's and TorchSim's
            sign), in the wrapper's dtype.
        """
        state = self._state_of(state)
        positions, numbers = state.positions, state.atomic_numbers
        if numbers is None:
            raise ValueError('the state has no atomic_numbers: the potential needs the element '
                             'of every atom')
        if positions.device != self._device:
            raise ValueError(f'the state is on {positions.device} but the model is on '
                             f'{self._device}; create the state with device=model.device '
                             '(e.g. torch_sim.io.atoms_to_state(atoms, model.device, '
                             'model.dtype))')
        # The cell is per system, [n_systems, 3, 3], also for molecules (TorchSim validates
        # it), so it gives the number of systems without a device sync.
        cell_columns = state.cell.reshape(-1, 3, 3)
        num_systems = cell_columns.size(0)
        # One bool in TorchSim 0.3.0, three (one per lattice vector) in 0.6.
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool).to('cpu').reshape(-1)
        if pbc.numel() == 1:
            pbc = pbc.expand(3)
        periodic = bool(pbc.any())
        cell = cell_columns.mT if periodic else None
        if self._compute_stress and not periodic:
            raise ValueError('compute_stress=True, but the systems are not periodic (pbc is '
                             'False): stress is only defined for periodic cells; create the '
                             'model with compute_stress=False for molecules')
        properties: List[str] = ['energy']
        if self._compute_forces:
            properties.append('forces')
        if self._compute_stress:
            properties.append('stress')
        out = compute_properties(self.model, numbers, positions, batch=state.system_idx,
                                 cell=cell, pbc=pbc if periodic else None,
                                 total_charge=self._charges_of(state, num_systems),
                                 properties=properties, create_graph=False,
                                 num_graphs=num_systems, neighbors=self.verlet)
        return {key: out[key].to(self._dtype) for key in properties}

    @staticmethod
    def _charges_of(state: Any, num_systems: int) -> Optional[Tensor]:
        # TorchSim 0.6 keeps a per-system total charge among the state's extras; 0.3.0 has
        # none, and models that do not use the charge ignore it.
        for name in ('total_charge', 'charge'):
            try:
                value = getattr(state, name, None)
            except (AttributeError, KeyError):
                value = None
            if isinstance(value, Tensor) and value.numel() == num_systems:
                return value.reshape(-1)
        return None

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({type(self.model).__name__}, device={self._device}, '
                f'dtype={self._dtype}, compute_forces={self._compute_forces}, '
                f'compute_stress={self._compute_stress}, skin={self.skin})')
