r"""``pyg-tensorpot quickstart``: train a small TensorNet on the bundled real MD17 ethanol frames,
evaluate it and print the error table, in a few minutes on a laptop CPU."""
import os.path as osp
import time
from typing import Any, Dict, Optional

import torch

from pyg_tensorpot.training.config import TrainingConfig

#: The quickstart experiment: a small TensorNet (2 layers, 64 channels) on 950 training / 50
#: validation frames of the 2,000 bundled MD17 ethanol frames (PBE+vdW-TS; the remaining
#: 1,000 are the test set), the rMD17 protocol of TensorNet's paper (split seed 12345), with
#: forces weighted 100:1 against energies as the paper's effective rMD17 weighting. A fixed
#: number of epochs (no wall-clock limit) makes the run deterministic.
QUICKSTART_CONFIG: Dict[str, Any] = {
    'seed': 12345,
    'precision': 32,
    'model': {
        'name': 'TensorNet',
        'hidden_channels': 64,
        'num_layers': 2,
        'num_rbf': 32,
        'cutoff': 4.5,
    },
    'data': {
        'dataset': 'MD17EthanolSample',
        'batch_size': 32,
        'inference_batch_size': 100,
        'reference_energies': 'none',
        'standardize': True,
    },
    'loss': {'energy_weight': 1.0, 'force_weight': 100.0, 'type': 'mse'},
    'optim': {
        'lr': 2.0e-3,
        'warmup_steps': 100,
        'lr_factor': 0.8,
        'lr_patience': 5,
        'lr_min': 1.0e-6,
        'gradient_clip': 40.0,
        'ema_decay': 0.99,
    },
    'trainer': {
        'max_epochs': 25,
        'early_stopping_patience': 0,
        'accelerator': 'cpu',
        'log_every_n_steps': 10,
        'progress_bar': False,
        # small molecules gain little from intra-op threads, and a single thread keeps the
        # run fast on a shared machine (where busy cores make OpenMP threads wait)
        'num_threads': 1,
    },
}


def quickstart_config(out_dir: str = 'quickstart', max_epochs: Optional[int] = None
                      ) -> TrainingConfig:
    """The quickstart experiment writing to :obj:`out_dir` (see :data:`QUICKSTART_CONFIG`)."""
    values = dict(QUICKSTART_CONFIG, out_dir=out_dir)
    if max_epochs is not None:
        values['trainer'] = dict(values['trainer'], max_epochs=int(max_epochs))
    return TrainingConfig.from_dict(values)


def quickstart(out_dir: str = 'quickstart', max_epochs: Optional[int] = None,
               verbose: bool = True) -> Dict[str, Dict[str, float]]:
    r"""Trains the quickstart TensorNet, evaluates it on the 1,000 test frames, prints the
    error table and writes the learning curves and parity plots.

    Args:
        out_dir (str, optional): Output folder. (default: :obj:`"quickstart"`)
        max_epochs (int, optional): Override of the number of epochs. (default: :obj:`None`)
        verbose (bool, optional): Print progress and the table. (default: :obj:`True`)

    Returns:
        dict: The test metrics (eV, eV/Angstrom), by test-set name.
    """
    config = quickstart_config(out_dir, max_epochs)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.trainer.num_threads)
    try:
        return _train_and_evaluate(config, verbose)
    finally:
        torch.set_num_threads(threads)


def _train_and_evaluate(config: TrainingConfig, verbose: bool) -> Dict[str, Dict[str, float]]:
    from pyg_tensorpot.training.run import evaluate, train
    start = time.perf_counter()
    out_dir = config.out_dir
    if verbose:
        print(f'Training a small TensorNet on 950 real MD17 ethanol frames '
              f'({config.trainer.max_epochs} epochs on the CPU); output in {out_dir}/',
              flush=True)
    result = train(config, verbose=verbose, report=False)
    if verbose:
        print(f'trained in {time.perf_counter() - start:.0f} s; evaluating the weight average '
              f'of the best epoch on the 1,000 test frames', flush=True)
    metrics = evaluate(result.model_path, out_dir=out_dir, verbose=verbose)
    if verbose:
        print(f'model: {result.model_path}\nconfiguration: {osp.join(out_dir, "config.yaml")} '
              f'(train it again with: pyg-tensorpot train {osp.join(out_dir, "config.yaml")})',
              flush=True)
    # The pretrained general-purpose potential, loaded offline from the copy in the package.
    from pyg_tensorpot.hub import pretrained_demo
    if verbose:
        print('\nThe pretrained model: from_pretrained("tensornet-ani1x")', flush=True)
    metrics['pretrained tensornet-ani1x'] = pretrained_demo(
        'tensornet-ani1x', printer=print if verbose else (lambda *args, **kwargs: None))
    if verbose:
        print(f'total time: {time.perf_counter() - start:.0f} s', flush=True)
    return metrics
