"""Deployment into MD engines: TorchScript (:mod:`~pyg_tensorpot.deploy.scripted`),
:func:`torch.export` and the export dispatcher (:mod:`~pyg_tensorpot.deploy.export`), and one
module per engine (metatomic, OpenMM, LAMMPS, TorchSim), imported on demand."""
from pyg_tensorpot.deploy.scripted import ScriptablePotential, script_model

__all__ = ['ScriptablePotential', 'script_model']
