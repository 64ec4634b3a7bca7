"""What the benchmark scripts share: the CPU they ran on, and the energy-conservation figures
of the NVE benchmarks (md_nve.py, engine_nve.py, openmm_nve.py), computed one way."""
import platform
from typing import Dict

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def drift_statistics(energy_per_atom_ev, time_ps) -> Dict[str, float]:
    """The energy conservation of an NVE run, from a least-squares line through the total
    energy per atom: drift (slope of the line, meV/atom/ps), fluctuation (standard deviation about
    the line, meV/atom), spread (max - min, meV/atom) and whether every value is finite, of a
    total energy per atom in eV sampled at :obj:`time_ps`."""
    energy = np.asarray(energy_per_atom_ev, dtype=np.float64)
    time_ps = np.asarray(time_ps, dtype=np.float64)
    slope, intercept = np.polyfit(time_ps, energy, 1)
    residual = energy - (slope * time_ps + intercept)
    return {'drift_mev_per_atom_per_ps': float(slope) * 1000,
            'fluctuation_mev_per_atom': float(residual.std()) * 1000,
            'max_minus_min_mev_per_atom': float(energy.max() - energy.min()) * 1000,
            'finite': bool(np.isfinite(energy).all())}
