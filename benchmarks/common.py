"""What the benchmark scripts share: the header of their JSON records (date, CPU, load), the
writing and reading of those records, and the energy-conservation figures of the NVE
benchmarks (md_nve.py, engine_nve.py, openmm_nve.py), computed one way."""
import datetime
import json
import os
import platform
import time
from typing import Any, Dict, Optional

import numpy as np
import torch

from pyg_tensorpot.utils.files import atomic_write_text


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


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')


def record_header(**fields: Any) -> Dict[str, Any]:
    """The start of a benchmark record: ``date`` (UTC), ``machine`` (CPU model),
    ``logical_cpus``, ``torch``, ``torch_threads`` and ``load_average_before`` (1, 5 and 15
    minutes: the other jobs of a shared machine), then :obj:`fields`."""
    return {'date': utc_now(), 'machine': cpu_model(), 'logical_cpus': os.cpu_count(),
            'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
            'load_average_before': list(os.getloadavg()), **fields}


def finish_record(record: Dict[str, Any], path: Optional[str] = None,
                  started: Optional[float] = None) -> Dict[str, Any]:
    """Adds ``load_average_after`` (and ``wall_s`` since :obj:`started`, a
    :func:`time.perf_counter` value) and writes the record to :obj:`path` atomically."""
    record['load_average_after'] = list(os.getloadavg())
    if started is not None:
        record['wall_s'] = time.perf_counter() - started
    if path:
        atomic_write_text(json.dumps(record, indent=2) + '\n', path)
    return record


def read_record(path: str) -> Dict[str, Any]:
    """A benchmark record written by :func:`finish_record` (for ``--render``)."""
    try:
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read the benchmark record '{path}': {error}") from error


def kept_rows(path: str, models) -> list:
    """The ``runs`` of an earlier record at :obj:`path` whose ``model`` is not in
    :obj:`models` (a run of only some models keeps the others' rows), each dated with that
    record's date and load where it predates per-row dates."""
    if not os.path.exists(path):
        return []
    old = read_record(path)
    rows = []
    for row in old.get('runs', []):
        if row['model'] not in models:
            row.setdefault('date', old.get('date'))
            row.setdefault('load_average', old.get('load_average_before'))
            rows.append(row)
    return rows


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
