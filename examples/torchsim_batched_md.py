"""Batched molecular dynamics with TorchSim: 32 small molecules side by side, Langevin NVT.

``--molecules`` closed-shell molecules of ASE's G2 set made of C, H, N and O only (3 to 14
atoms, the elements of the pretrained ANI-1x models) run together in one TorchSim state, so
that every step is one call of the potential for all of them
(:class:`pyg_tensorpot.deploy.torchsim.TensorPotModel`). They are thermalised at
``--temperature`` with TorchSim's Langevin (BAOAB) integrator; the mean temperature of every
molecule over the second half of the run and the throughput are printed.

A molecule of N atoms has 3N degrees of freedom here (the thermostat also acts on its
translation and rotation), so its instantaneous temperature fluctuates by about
:math:`T\\sqrt{2/3N}`: the averages scatter around the target, more for the smallest.

    python examples/torchsim_batched_md.py
    python examples/torchsim_batched_md.py --model hipnn-ts-ani1x --steps 1000 --dtype float64

Needs TorchSim (``pip install torch-sim-atomistic``).
"""
import argparse
import time
from typing import List

import numpy as np
import torch


def g2_molecules(count: int) -> List:
    """:obj:`count` closed-shell C/H/N/O molecules of ASE's G2 set, of every size from 3 to 14
    atoms (evenly picked from the list sorted by size)."""
    from ase.collections import g2
    names = []
    for name in g2.names:
        atoms = g2[name]
        if (len(atoms) >= 3 and set(atoms.get_chemical_symbols()) <= set('CHNO')
                and not atoms.get_initial_magnetic_moments().any()):
            names.append((len(atoms), name))
    names.sort()
    if not 1 <= count <= len(names):
        raise ValueError(f'--molecules must be between 1 and {len(names)} (the closed-shell '
                         f'C/H/N/O molecules of G2), got {count}')
    picked = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [g2[names[i][1]] for i in picked]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--molecules', type=int, default=32)
    parser.add_argument('--model', default='tensornet-ani1x',
                        help='pretrained name, Hub id or folder (default: tensornet-ani1x)')
    # float32, the models' own precision, is about twice as fast on a CPU; the temperatures
    # do not need more (use float64 to study energy conservation).
    parser.add_argument('--dtype', choices=['float64', 'float32'], default='float32')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--temperature', type=float, default=300.0, help='K')
    parser.add_argument('--timestep', type=float, default=0.5, help='fs')
    parser.add_argument('--steps', type=int, default=300)
    parser.add_argument('--friction', type=float, default=20.0,
                        help='Langevin friction, 1/ps (default: 20, i.e. 1/(50 fs))')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error('--steps must be at least 1')
    if args.threads:
        torch.set_num_threads(args.threads)

    import torch_sim as ts

    from pyg_tensorpot.deploy.torchsim import TensorPotModel

    dtype = getattr(torch, args.dtype)
    model = TensorPotModel(args.model, device=args.device, dtype=dtype)
    molecules = g2_molecules(args.molecules)
    state = ts.io.atoms_to_state(molecules, model.device, model.dtype)
    # TorchSim's metal units: energies in eV, time in units of sqrt(amu A^2 / eV) (10.18 fs),
    # so MetalUnits.time is that unit's number per picosecond.
    units = ts.units.MetalUnits
    tensor = dict(dtype=dtype, device=model.device)
    kT = torch.tensor(args.temperature * units.temperature, **tensor)
    dt = torch.tensor(args.timestep * 1e-3 * units.time, **tensor)
    gamma = torch.tensor(args.friction / units.time, **tensor)
    # The Langevin noise is drawn from torch's global generator, the initial momenta from
    # the integrator's seed.
    torch.manual_seed(args.seed)
    init, step = ts.integrators.nvt_langevin(model, dt=dt, kT=kT, gamma=gamma, seed=args.seed)

    md = init(state)
    temperatures = []
    start = time.perf_counter()
    for _ in range(args.steps):
        md = step(md)
        temperatures.append(ts.quantities.calc_temperature(
            masses=md.masses, momenta=md.momenta, system_idx=md.system_idx))
    if model.device.type == 'cuda':
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    history = torch.stack(temperatures).cpu()
    mean = history[args.steps // 2:].mean(0)

    print(f'{len(molecules)} molecules ({state.n_atoms} atoms), {args.model}, {args.dtype}, '
          f'{args.steps} Langevin steps of {args.timestep} fs at {args.temperature:.0f} K')
    print(f'{"molecule":>22} {"atoms":>5} {"<T> (K), 2nd half":>18}')
    for atoms, value in zip(molecules, mean.tolist()):
        print(f'{atoms.get_chemical_formula():>22} {len(atoms):>5} {value:>18.0f}')
    overall = float(mean.mean())
    rate = args.steps / elapsed
    print(f'mean over molecules: {overall:.0f} K (target {args.temperature:.0f} K)')
    print(f'throughput: {rate:.1f} steps/s for all {len(molecules)} molecules = '
          f'{rate * len(molecules):.0f} molecule-steps/s = {rate * state.n_atoms:.0f} '
          f'atom-steps/s ({elapsed:.1f} s)')
    return {'temperatures': mean, 'mean_temperature': overall, 'steps_per_s': rate,
            'molecule_steps_per_s': rate * len(molecules), 'num_atoms': state.n_atoms,
            'potential_energy': md.energy.detach().cpu()}


if __name__ == '__main__':
    main()
