from pyg_tensorpot.utils.elements import MASSES, SYMBOLS, atomic_number, symbol
from pyg_tensorpot.utils.validation import check_atoms, check_min_distance

__all__ = ['MASSES', 'SYMBOLS', 'atomic_number', 'symbol', 'check_atoms', 'check_min_distance']
