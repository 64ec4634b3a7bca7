"""Lazy import of PyTorch Lightning, an optional dependency (the ``train`` extra)."""

_HINT = ("training needs PyTorch Lightning and PyYAML: pip install 'pyg-tensorpot[train]' "
         "(or pip install 'lightning>=2.2' pyyaml)")


def require_lightning():
    """Returns :mod:`lightning.pytorch`, or raises an :class:`ImportError` that says how to
    install it."""
    try:
        import lightning.pytorch as pl
    except ImportError as error:
        raise ImportError(f'{_HINT} ({error})') from None
    return pl
