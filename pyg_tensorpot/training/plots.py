r"""Learning curves, parity plots and error histograms (PNG, with matplotlib)."""
import csv
from typing import Dict, List, Optional

import numpy as np

from pyg_tensorpot.utils.files import atomic_open


def _pyplot():
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'pyg-tensorpot[train]' (or pip "
                          f"install matplotlib) ({error})") from None
    return plt


def save_figure(fig, path: str, dpi: int = 120, title: Optional[str] = None) -> str:
    """Lays out a matplotlib figure (with :obj:`title` above it) and saves it as PNG through a
    temporary file in the same folder and :func:`os.replace`
    (:func:`~pyg_tensorpot.utils.files.atomic_open`: a reader never sees half an image), then
    closes it.

    Args:
        fig (matplotlib.figure.Figure): The figure.
        path (str): The PNG file.
        dpi (int, optional): Resolution. (default: :obj:`120`)
        title (str, optional): Title of the whole figure. (default: :obj:`None`)

    Returns:
        str: :obj:`path`.
    """
    plt = _pyplot()
    try:
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with atomic_open(path) as f:
            fig.savefig(f, dpi=dpi, format='png')
    finally:
        plt.close(fig)
    return path


def read_metrics_csv(path: str) -> Dict[str, Dict[int, float]]:
    r"""Reads Lightning's ``metrics.csv`` into ``{metric: {epoch: value}}``. When a run was
    resumed, rows written after its last checkpoint appear twice; the later ones win."""
    series: Dict[str, Dict[int, float]] = {}
    with open(path, newline='') as f:
        for row in csv.DictReader(f):
            epoch = row.get('epoch')
            if epoch in (None, ''):
                continue
            epoch_i = int(float(epoch))
            for key, value in row.items():
                if key in ('epoch', 'step') or value in (None, ''):
                    continue
                if key.endswith('_step'):
                    continue
                series.setdefault(key, {})[epoch_i] = float(value)
    return series


def plot_learning_curves(metrics_csv: str, path: str, title: Optional[str] = None) -> str:
    """Training and validation loss, validation MAEs and learning rate per epoch (counted
    from 1)."""
    plt = _pyplot()
    series = read_metrics_csv(metrics_csv)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))

    def draw(ax, key: str, label: str, scale: float = 1.0) -> bool:
        values = series.get(key)
        if not values:
            return False
        epochs = sorted(values)
        ax.plot([e + 1 for e in epochs], [values[e] * scale for e in epochs], label=label)
        return True

    ax = axes[0]
    draw(ax, 'train_loss_epoch', 'training loss')
    draw(ax, 'val_loss', 'validation loss')
    ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.set_ylabel('loss')
    ax.legend()
    ax = axes[1]
    drawn = [draw(ax, 'val_energy_mae', 'energy MAE (meV)', 1e3),
             draw(ax, 'val_energy_per_atom_mae', 'energy/atom MAE (meV)', 1e3),
             draw(ax, 'val_forces_mae', 'force MAE (meV/Å)', 1e3)]
    if any(drawn):
        ax.set_yscale('log')
        ax.legend()
    ax.set_xlabel('epoch')
    ax.set_ylabel('validation error')
    ax = axes[2]
    if draw(ax, 'lr', 'learning rate'):
        ax.set_yscale('log')
    ax.set_xlabel('epoch')
    ax.set_ylabel('learning rate (end of epoch)')
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path, title=title)


def plot_parity(predictions: Dict[str, np.ndarray], path: str,
                title: Optional[str] = None, max_points: int = 20000) -> str:
    r"""Predicted against reference energies (per atom, shifted by the reference mean) and
    force components, with the MAE in the corner (data in eV and eV/Angstrom, plotted in meV)."""
    plt = _pyplot()
    panels: List[tuple] = []
    if 'energy_pred' in predictions:
        n = predictions['num_atoms'].astype(np.float64)
        ref = predictions['energy_true'] / n
        pred = predictions['energy_pred'] / n
        shift = ref.mean()
        panels.append(((ref - shift) * 1e3, (pred - shift) * 1e3,
                       'energy per atom − mean (meV)'))
    if 'forces_pred' in predictions:
        ref = predictions['forces_true'].reshape(-1)
        pred = predictions['forces_pred'].reshape(-1)
        if ref.size > max_points:
            pick = np.random.default_rng(0).choice(ref.size, max_points, replace=False)
            ref, pred = ref[pick], pred[pick]
        panels.append((ref * 1e3, pred * 1e3, 'force component (meV/Å)'))
    if not panels:
        raise ValueError('nothing to plot: no energies or forces were predicted')
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5), squeeze=False)
    for ax, (ref, pred, label) in zip(axes[0], panels):
        lo = float(min(ref.min(), pred.min()))
        hi = float(max(ref.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color='0.6', lw=1)
        ax.scatter(ref, pred, s=4, alpha=0.5)
        mae = float(np.abs(pred - ref).mean())
        ax.text(0.04, 0.94, f'MAE {mae:.2f}', transform=ax.transAxes, va='top')
        ax.set_xlabel(f'reference {label}')
        ax.set_ylabel(f'predicted {label}')
        ax.set_aspect('equal', adjustable='box')
    return save_figure(fig, path, title=title)


def plot_error_histogram(predictions: Dict[str, np.ndarray], path: str,
                         title: Optional[str] = None, bins: int = 60) -> str:
    r"""Histograms of the energy errors per atom and of the force-component errors
    (predicted minus reference, data in eV and eV/Angstrom, plotted in meV) with logarithmic
    counts, so that the rare large errors stay visible next to the bulk.

    Args:
        predictions (dict): Predictions of
            :func:`~pyg_tensorpot.training.inference.evaluate_model`.
        path (str): The PNG file.
        title (str, optional): Title of the figure. (default: :obj:`None`)
        bins (int, optional): Number of bins of each histogram. (default: :obj:`60`)
    """
    plt = _pyplot()
    panels: List[tuple] = []
    if 'energy_pred' in predictions and 'energy_true' in predictions:
        n = predictions['num_atoms'].astype(np.float64)
        diff = (predictions['energy_pred'] - predictions['energy_true']) / n
        panels.append((diff * 1e3, 'energy error per atom (meV)'))
    if 'forces_pred' in predictions and 'forces_true' in predictions:
        diff = (predictions['forces_pred'] - predictions['forces_true']).reshape(-1)
        panels.append((diff * 1e3, 'force-component error (meV/Å)'))
    panels = [(d[np.isfinite(d)], label) for d, label in panels]
    panels = [(d, label) for d, label in panels if d.size > 0]
    if not panels:
        raise ValueError('nothing to plot: no finite energy or force errors were predicted')
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (diff, label) in zip(axes[0], panels):
        # fewer bins for a few values, so that a small set is not a row of single counts
        ax.hist(diff, bins=int(min(bins, max(10, 2 * np.sqrt(diff.size)))), color='C0',
                log=True)
        ax.axvline(0.0, color='0.6', lw=1)
        ax.text(0.04, 0.94, f'MAE {np.abs(diff).mean():.2f}\n'
                f'RMSE {np.sqrt(np.square(diff).mean()):.2f}', transform=ax.transAxes,
                va='top')
        ax.set_xlabel(label)
        ax.set_ylabel('count')
    return save_figure(fig, path, title=title)
