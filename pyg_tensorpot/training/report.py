r"""Accuracy reports of an evaluated set: energy and force errors overall, per element and
per group of structures (a subset, a configuration type, ...), as a dictionary (for JSON) and
as a markdown document.

All errors are computed in float64 from the predictions of
:func:`~pyg_tensorpot.training.inference.evaluate_model`, in the units of the data (eV and
eV/Angstrom for this package's datasets); the tables add meV and kcal/mol.
"""
import json
import math
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from pyg_tensorpot.utils.elements import symbol
from pyg_tensorpot.utils.files import atomic_write_text
from pyg_tensorpot.utils.units import EV_TO_KCAL_PER_MOL

#: Per-structure attributes that name a group of structures, tried in this order when no
#: group key is asked for (COMP6 stores ``subset``; extended-XYZ training sets often carry
#: ``config_type``).
DEFAULT_GROUP_KEYS = ('subset', 'name', 'config_type')


def error_summary(diff: np.ndarray) -> Dict[str, float]:
    r"""MAE and RMSE of an array of errors (all entries, in float64).

    Args:
        diff (numpy.ndarray): Predicted minus reference values, any shape.

    Returns:
        dict: :obj:`mae`, :obj:`rmse` and :obj:`count` (number of entries); NaN errors for an
        empty array.
    """
    diff = np.asarray(diff, dtype=np.float64).reshape(-1)
    if diff.size == 0:
        return {'mae': math.nan, 'rmse': math.nan, 'count': 0}
    return {'mae': float(np.abs(diff).mean()), 'rmse': float(np.sqrt(np.square(diff).mean())),
            'count': int(diff.size)}


def _label_text(label: Any, names: Optional[Sequence[str]]) -> str:
    if isinstance(label, (np.floating, float)) and float(label).is_integer():
        label = int(label)
    if names is not None and isinstance(label, (int, np.integer)) and \
            0 <= int(label) < len(names):
        return str(names[int(label)])
    return str(label)


def _overall_errors(predictions: Dict[str, np.ndarray]) -> Dict[str, float]:
    """The metrics of :meth:`ErrorAccumulator.compute` (same keys) from the predictions."""
    num_atoms = predictions['num_atoms'].astype(np.float64)
    out: Dict[str, float] = {'num_structures': int(num_atoms.size),
                             'num_atoms': int(num_atoms.sum())}
    if 'energy_pred' in predictions and 'energy_true' in predictions:
        diff = predictions['energy_pred'] - predictions['energy_true']
        energy, per_atom = error_summary(diff), error_summary(diff / num_atoms)
        out.update(energy_mae=energy['mae'], energy_rmse=energy['rmse'],
                   energy_per_atom_mae=per_atom['mae'], energy_per_atom_rmse=per_atom['rmse'])
    if 'forces_pred' in predictions and 'forces_true' in predictions:
        forces = error_summary(predictions['forces_pred'] - predictions['forces_true'])
        out.update(forces_mae=forces['mae'], forces_rmse=forces['rmse'])
    return out


def _grouped_errors(predictions: Dict[str, np.ndarray], group: np.ndarray,
                    num_groups: int) -> List[Dict[str, float]]:
    """The metrics of :func:`_overall_errors` for every group at once (sums by
    :func:`numpy.bincount`, so that thousands of groups cost one pass)."""
    num_atoms = predictions['num_atoms'].astype(np.float64)

    def sums(values: np.ndarray, index: np.ndarray) -> np.ndarray:
        return np.bincount(index, weights=values, minlength=num_groups)

    structures = sums(np.ones_like(num_atoms), group)
    out = [{'num_structures': int(c), 'num_atoms': int(a)}
           for c, a in zip(structures, sums(num_atoms, group))]
    if 'energy_pred' in predictions and 'energy_true' in predictions:
        diff = predictions['energy_pred'] - predictions['energy_true']
        per_atom = diff / num_atoms
        columns = {'energy_mae': sums(np.abs(diff), group) / structures,
                   'energy_rmse': np.sqrt(sums(diff ** 2, group) / structures),
                   'energy_per_atom_mae': sums(np.abs(per_atom), group) / structures,
                   'energy_per_atom_rmse': np.sqrt(sums(per_atom ** 2, group) / structures)}
        for g, values in enumerate(out):
            values.update({k: float(v[g]) for k, v in columns.items()})
    if 'forces_pred' in predictions and 'forces_true' in predictions:
        diff = (predictions['forces_pred'] - predictions['forces_true']).reshape(-1, 3)
        atom_group = np.repeat(group, predictions['num_atoms'].astype(np.int64))
        components = 3.0 * sums(np.ones(diff.shape[0]), atom_group)
        with np.errstate(invalid='ignore', divide='ignore'):  # a group of 0 atoms: NaN
            columns = {'forces_mae': sums(np.abs(diff).sum(-1), atom_group) / components,
                       'forces_rmse': np.sqrt(sums((diff ** 2).sum(-1), atom_group)
                                              / components)}
        for g, values in enumerate(out):
            values.update({k: float(v[g]) for k, v in columns.items()})
    return out


def accuracy_report(predictions: Dict[str, np.ndarray],
                    metrics: Optional[Dict[str, float]] = None,
                    group_key: Optional[str] = None,
                    group_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    r"""Energy and force errors of one evaluated set: overall, per element (force
    components of the atoms of each element) and per group of structures (energies per
    structure and per atom, and the forces of their atoms).

    Args:
        predictions (dict): What :func:`~pyg_tensorpot.training.inference.evaluate_model`
            returns as predictions: :obj:`num_atoms` and :obj:`z`, and any of
            :obj:`energy_pred`/:obj:`energy_true`, :obj:`forces_pred`/:obj:`forces_true` and
            :obj:`group`.
        metrics (dict, optional): The overall metrics of
            :meth:`~pyg_tensorpot.training.metrics.ErrorAccumulator.compute`; computed from
            :obj:`predictions` when :obj:`None`. (default: :obj:`None`)
        group_key (str, optional): Name of the attribute the groups come from, for the
            report. (default: :obj:`None`)
        group_names (Sequence[str], optional): Names of integer group labels (label
            :math:`i` is :obj:`group_names[i]`, e.g. :obj:`COMP6.subsets`).
            (default: :obj:`None`)

    Returns:
        dict: :obj:`overall` (the keys of :meth:`ErrorAccumulator.compute` plus
        :obj:`num_atoms`), :obj:`per_element` (``{symbol: {z, num_atoms, forces_mae,
        forces_rmse}}`` in order of atomic number, empty without forces), :obj:`group_key`
        and :obj:`per_group` (``{label: metrics}`` in sorted order of the labels, empty
        without groups).

    Shapes:
        - **predictions** :obj:`num_atoms`, :obj:`energy_*`, :obj:`group`:
          :obj:`[num_structures]`; :obj:`z`: :obj:`[num_atoms_total]`; :obj:`forces_*`:
          :obj:`[num_atoms_total, 3]`.
    """
    if 'num_atoms' not in predictions:
        raise ValueError('the predictions have no num_atoms (atoms per structure): pass the '
                         'predictions of evaluate_model(..., keep_predictions=True)')
    num_atoms = predictions['num_atoms'].astype(np.int64)
    total_atoms = int(num_atoms.sum())
    z = predictions.get('z')
    if z is not None and z.shape[0] != total_atoms:
        raise ValueError(f'the predictions have {z.shape[0]} atomic numbers for '
                         f'{total_atoms} atoms in {num_atoms.size} structures')
    overall = _overall_errors(predictions)
    if metrics is not None:
        overall.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    report: Dict[str, Any] = {'overall': overall, 'per_element': {}, 'group_key': None,
                              'per_group': {}}
    has_forces = 'forces_pred' in predictions and 'forces_true' in predictions
    if z is not None and has_forces:
        diff = predictions['forces_pred'] - predictions['forces_true']
        for number in np.unique(z):
            mask = z == number
            forces = error_summary(diff[mask])
            report['per_element'][symbol(int(number))] = {
                'z': int(number), 'num_atoms': int(mask.sum()), 'forces_mae': forces['mae'],
                'forces_rmse': forces['rmse']}
    groups = predictions.get('group')
    if groups is not None:
        if groups.shape[0] != num_atoms.size:
            raise ValueError(f"{groups.shape[0]} group labels ('{group_key}') for "
                             f'{num_atoms.size} structures')
        report['group_key'] = group_key
        unique, inverse = np.unique(groups, return_inverse=True)
        names = [_label_text(label, group_names) for label in unique.tolist()]
        for label, values in zip(names, _grouped_errors(predictions, inverse.reshape(-1),
                                                        len(unique))):
            report['per_group'][label] = values
    return report


# ----------------------------------------------------------------------------- markdown
_QUANTITIES = (
    ('energy / structure', 'energy_mae', 'energy_rmse'),
    ('energy / atom', 'energy_per_atom_mae', 'energy_per_atom_rmse'),
    ('forces (per component)', 'forces_mae', 'forces_rmse'),
)
_UNIT_HEADER = ('eV(/Å)', 'meV(/Å)', 'kcal/mol(/Å)')


def format_value(value: float) -> List[str]:
    """A value in eV (or eV/Angstrom) as the three cells ``eV, meV, kcal/mol`` of the tables
    (the precision of :func:`~pyg_tensorpot.training.metrics.format_error_table`)."""
    if value is None or not math.isfinite(value):
        return ['n/a'] * 3
    return [f'{value:.5f}', f'{value * 1e3:.2f}', f'{value * EV_TO_KCAL_PER_MOL:.4f}']


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int
           ) -> List[str]:
    def cell(value: Any) -> str:
        return str(value).replace('|', '\\|').replace('\n', ' ')

    out = ['| ' + ' | '.join(cell(h) for h in header) + ' |',
           '|' + '|'.join('---' if i < text_columns else '---:'
                          for i in range(len(header))) + '|']
    out += ['| ' + ' | '.join(cell(c) for c in row) + ' |' for row in rows]
    return out


def _metric_rows(metrics: Dict[str, float], prefix: Sequence[Any] = ()) -> List[List[Any]]:
    rows = []
    for label, mae_key, rmse_key in _QUANTITIES:
        for metric, key in (('MAE', mae_key), ('RMSE', rmse_key)):
            if key in metrics:
                rows.append(list(prefix) + [label, metric] + format_value(metrics[key]))
    return rows


def format_markdown_report(report: Dict[str, Any], title: str,
                           plots: Sequence[str] = (), max_groups: int = 200) -> str:
    r"""The tables of :func:`accuracy_report` as a markdown document, with the errors in eV,
    meV and kcal/mol (forces per Angstrom).

    Args:
        report (dict): What :func:`accuracy_report` returns.
        title (str): The heading (model and evaluated set).
        plots (Sequence[str], optional): PNG files to show, relative to the report's folder.
            (default: :obj:`()`)
        max_groups (int, optional): Groups listed at most (the ones with most structures;
            all of them are in the report dictionary). (default: :obj:`200`)
    """
    overall = report['overall']
    lines = [f'# {title}', '']
    count = f"{int(overall.get('num_structures', 0)):,} structures"
    if 'num_atoms' in overall:
        count += f", {int(overall['num_atoms']):,} atoms"
    lines += [f'{count}. Errors are predicted minus reference; MAE is the mean absolute '
              f'error, RMSE the root-mean-square error; force errors are per Cartesian '
              f'component.', '']
    lines += ['## Overall', '']
    lines += _table(('quantity', 'metric') + _UNIT_HEADER, _metric_rows(overall), 2)
    if report.get('per_element'):
        lines += ['', '## Forces per element', '']
        rows = []
        for element, values in report['per_element'].items():
            for metric, key in (('MAE', 'forces_mae'), ('RMSE', 'forces_rmse')):
                rows.append([element, values['z'], f"{values['num_atoms']:,}", metric]
                            + format_value(values[key]))
        lines += _table(('element', 'Z', 'atoms', 'metric', 'eV/Å', 'meV/Å', 'kcal/mol/Å'),
                        rows, 1)
    if report.get('per_group'):
        lines += ['', f"## Per {report.get('group_key') or 'group'}", '']
        groups = list(report['per_group'].items())
        if len(groups) > max_groups:
            shown = set(sorted(range(len(groups)), key=lambda i: (
                -groups[i][1]['num_structures'], i))[:max_groups])
            lines += [f'The {max_groups} largest of {len(groups):,} groups (all of them are in '
                      f'evaluation.json).', '']
            groups = [g for i, g in enumerate(groups) if i in shown]
        rows = []
        for label, values in groups:
            rows += _metric_rows(values, (label, f"{values['num_structures']:,}"))
        lines += _table((report.get('group_key') or 'group', 'structures', 'quantity',
                         'metric') + _UNIT_HEADER, rows, 1)
    if plots:
        lines += ['', '## Plots', '']
        lines += [f'![{osp.splitext(osp.basename(p))[0]}]({p})' for p in plots]
    return '\n'.join(lines) + '\n'


# ----------------------------------------------------------------------------- files
def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_json_atomic(value: Any, path: str) -> str:
    """Writes :obj:`value` as JSON (NaN and infinities as :obj:`null`, which strict JSON
    readers accept) with :func:`~pyg_tensorpot.utils.files.atomic_write_text`.

    Args:
        value: Dictionaries, lists, strings and numbers (numpy scalars too).
        path (str): The file.

    Returns:
        str: :obj:`path`.
    """
    return atomic_write_text(json.dumps(_json_safe(value), indent=1) + '\n', path)
