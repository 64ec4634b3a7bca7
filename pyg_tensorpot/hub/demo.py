r"""An offline check of a pretrained model against DFT on a bundled molecule
(``pyg-tensorpot quickstart`` runs it)."""
import os.path as osp
from typing import Dict

import torch

from pyg_tensorpot.hub.config import model_dtype
from pyg_tensorpot.hub.remote import from_pretrained


def pretrained_demo(name: str = 'tensornet-ani1x', dimer: int = 0, reference: str = 'auto',
                    printer=print) -> Dict[str, float]:
    r"""Loads a pretrained model offline and compares it with DFT on a bundled molecule.

    The molecule is an S66x8 dimer of the COMP6 benchmark (wB97X/6-31G(d), the ANI-1x level of
    theory) shipped in ``tests/data`` of the source tree; where that file is not available (an
    installed wheel), 8 frames of the MD17 ethanol sample bundled with the package are used
    (PBE+vdW-TS, a different level of theory, so only a rough check).

    Args:
        name (str, optional): Registered model or folder. (default: ``"tensornet-ani1x"``)
        dimer (int, optional): S66x8 dimer index 0..65 (0: water dimer). (default: :obj:`0`)
        reference (str, optional): ``"s66x8"``, ``"md17"`` or ``"auto"`` (S66x8 if the file is
            there). (default: ``"auto"``)
        printer (Callable, optional): Where the lines go. (default: :func:`print`)

    Returns:
        Dict[str, float]: ``energy_mae_kcal_mol`` (energies relative to their mean over the
        8 conformations) and ``forces_mae_ev_per_angstrom``.
    """
    from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL, HARTREE_TO_EV
    model = from_pretrained(name)
    dtype = model_dtype(model)
    # the source tree: three folders above pyg_tensorpot/hub/demo.py
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    s66 = osp.join(root, 'tests', 'data', 'comp6', 's66x8_wb97x6-31gd.h5')
    if reference not in ('auto', 's66x8', 'md17'):
        raise ValueError(f"reference must be 'auto', 's66x8' or 'md17', got '{reference}'")
    if reference == 's66x8' and not osp.isfile(s66):
        raise FileNotFoundError(f"'{s66}' is missing (it is part of the source tree only)")
    if reference != 'md17' and osp.isfile(s66):
        import h5py
        from pyg_tensorpot.utils.elements import atomic_number
        with h5py.File(s66, 'r') as f:
            group = f[f's66x8/mol{dimer:02d}']
            z = torch.tensor([atomic_number(s.decode()) for s in group['species'][()]])
            pos = torch.from_numpy(group['coordinates'][()]).to(dtype)
            e_ref = torch.from_numpy(group['energies'][()]) * HARTREE_TO_EV
            f_ref = -torch.from_numpy(group['forces'][()]).double() * HARTREE_TO_EV
        num = z.numel()
        batch = torch.arange(8).repeat_interleave(num)
        energy, forces = model.energy_and_forces(z.repeat(8), pos.reshape(-1, 3), batch)
        energy = energy.double()
        rel_pred = (energy - energy.mean()) * EV_TO_KCAL_PER_MOL
        rel_ref = (e_ref - e_ref.mean()) * EV_TO_KCAL_PER_MOL
        printer(f'{name} on S66x8 dimer {dimer} ({num} atoms), vs wB97X/6-31G(d):')
        printer('  separation  E_rel model  E_rel DFT   (kcal/mol)')
        for k, scale in enumerate((0.90, 0.95, 1.00, 1.05, 1.10, 1.25, 1.50, 2.00)):
            printer(f'  {scale:9.2f}x  {rel_pred[k]:11.3f}  {rel_ref[k]:9.3f}')
        f_mae = (forces.double().reshape(8, num, 3) - f_ref).abs().mean().item()
        e_mae = (rel_pred - rel_ref).abs().mean().item()
        printer(f'  energy MAE {e_mae:.3f} kcal/mol, force MAE {f_mae:.4f} eV/A '
                f'(absolute energy at 1.00x: model {energy[2]:.3f} eV, DFT {e_ref[2]:.3f} eV)')
        return {'energy_mae_kcal_mol': e_mae, 'forces_mae_ev_per_angstrom': f_mae}
    from pyg_tensorpot.datasets import MD17EthanolSample
    frames = MD17EthanolSample(log=False)
    sample = [frames[i] for i in range(0, 2000, 250)]
    z = torch.cat([d.z for d in sample])
    pos = torch.cat([d.pos for d in sample]).to(dtype)
    batch = torch.arange(len(sample)).repeat_interleave(sample[0].z.numel())
    energy, forces = model.energy_and_forces(z, pos, batch)
    e_ref = torch.cat([d.energy.double().view(-1) for d in sample])
    f_ref = torch.cat([d.forces for d in sample]).double()
    rel_pred = (energy.double() - energy.double().mean()) * EV_TO_KCAL_PER_MOL
    rel_ref = (e_ref - e_ref.mean()) * EV_TO_KCAL_PER_MOL
    e_mae = (rel_pred - rel_ref).abs().mean().item()
    f_mae = (forces.double() - f_ref).abs().mean().item()
    printer(f'{name} on 8 MD17 ethanol frames (bundled), vs DFT PBE+vdW-TS -- a different '
            f'level of theory than the model\'s (wB97X/6-31G(d)):')
    printer(f'  relative-energy MAE {e_mae:.3f} kcal/mol, force MAE {f_mae:.4f} eV/A')
    return {'energy_mae_kcal_mol': e_mae, 'forces_mae_ev_per_angstrom': f_mae}

