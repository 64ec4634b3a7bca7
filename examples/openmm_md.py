"""Langevin dynamics of ethanol in OpenMM with a pretrained model of the package.

The model is an OpenMM force (:func:`pyg_tensorpot.deploy.openmm.create_simulation`, an
:class:`openmm.PythonForce`), so OpenMM's integrators and reporters work as with any force
field: a ``LangevinMiddleIntegrator`` at ``--temperature`` runs ``--steps`` steps of
``--timestep`` fs from the first frame of the MD17 ethanol sample shipped with the package,
a ``StateDataReporter`` writes energies and temperature to ``log.csv`` and a ``PDBReporter``
the trajectory to ``trajectory.pdb`` in ``--output`` (every ``--interval`` steps). At the end
the potential energy OpenMM reports is compared with the model's own at the final positions.
The MD17 frame comes from a 500 K trajectory, so the molecule starts hotter than the bath and
cools over a few picoseconds at the default friction.

OpenMM's units are nm, kJ/mol and kJ/mol/nm; the model's Angstrom, eV and eV/A (1 eV =
96.485 kJ/mol); :func:`create_simulation` converts.

    python examples/openmm_md.py
    python examples/openmm_md.py --model hipnn-ts-ani1x --steps 2000 --dtype float32
"""
import argparse
import os

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='tensornet-ani1x',
                        help='pretrained name, Hub id or folder (default: tensornet-ani1x)')
    parser.add_argument('--dtype', choices=['float64', 'float32'], default='float64')
    parser.add_argument('--temperature', type=float, default=300.0, help='K (default: 300)')
    parser.add_argument('--friction', type=float, default=1.0, help='1/ps (default: 1)')
    parser.add_argument('--timestep', type=float, default=0.5, help='fs (default: 0.5)')
    parser.add_argument('--steps', type=int, default=200, help='Langevin steps (default: 200)')
    parser.add_argument('--interval', type=int, default=20, help='report interval (default: 20)')
    parser.add_argument('--platform', default='Reference',
                        help='OpenMM platform (default: Reference, double precision)')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='openmm_md_output', help='output folder')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import ase.io
    import openmm
    from openmm import app, unit

    import pyg_tensorpot
    from pyg_tensorpot.deploy.openmm import EV_TO_KJ_PER_MOL, create_simulation
    from pyg_tensorpot.hub import from_pretrained
    from pyg_tensorpot.models.properties import compute_properties

    model = from_pretrained(args.model).to(getattr(torch, args.dtype))
    atoms = ase.io.read(os.path.join(os.path.dirname(pyg_tensorpot.__file__), 'data',
                                     'md17_ethanol_sample_2000.extxyz'), index=0)
    integrator = openmm.LangevinMiddleIntegrator(args.temperature * unit.kelvin,
                                                 args.friction / unit.picosecond,
                                                 args.timestep * unit.femtoseconds)
    integrator.setRandomNumberSeed(args.seed)
    simulation = create_simulation(model, atoms.numbers, atoms.positions, integrator,
                                   platform=args.platform)
    simulation.context.setVelocitiesToTemperature(args.temperature * unit.kelvin, args.seed)

    os.makedirs(args.output, exist_ok=True)
    log = os.path.join(args.output, 'log.csv')
    trajectory = os.path.join(args.output, 'trajectory.pdb')
    with open(log, 'w') as handle:
        simulation.reporters.append(app.StateDataReporter(
            handle, args.interval, step=True, time=True, potentialEnergy=True,
            kineticEnergy=True, totalEnergy=True, temperature=True, speed=True))
        simulation.reporters.append(app.PDBReporter(trajectory, args.interval))
        simulation.step(args.steps)
        # Dropping the reporters finishes the PDB file (its END record) and flushes the log.
        simulation.reporters.clear()

    state = simulation.context.getState(getEnergy=True, getPositions=True)
    kj = unit.kilojoule_per_mole
    energy = state.getPotentialEnergy().value_in_unit(kj)
    positions = torch.tensor(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    reference = float(compute_properties(model, torch.tensor(atoms.numbers),
                                         positions)['energy'].sum()) * EV_TO_KJ_PER_MOL
    kinetic = state.getKineticEnergy().value_in_unit(kj)
    # Equipartition over 3N degrees of freedom (no constraints, no centre-of-mass motion
    # remover in this system): T = 2 KE / (3N R).
    temperature = 2 * kinetic / (3 * len(atoms) * unit.MOLAR_GAS_CONSTANT_R.value_in_unit(
        kj / unit.kelvin))
    print(f'{args.steps} Langevin steps of {args.timestep} fs ({args.model}, {args.dtype}, '
          f'{args.platform} platform)')
    print(f'final potential energy: OpenMM {energy:.6f} kJ/mol, model {reference:.6f} kJ/mol')
    print(f'final temperature: {temperature:.0f} K; log {log}, trajectory {trajectory}')
    return {'potential_energy_kj_mol': energy, 'model_energy_kj_mol': reference,
            'temperature_K': temperature, 'log': log, 'trajectory': trajectory}


if __name__ == '__main__':
    main()
