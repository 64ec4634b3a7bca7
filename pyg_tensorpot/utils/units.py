"""Unit conversions to this package's units: eV, Angstrom, eV/Angstrom.

CODATA 2018 values, as in ASE 3.22+ and torchani.
"""
#: 1 Hartree in eV.
HARTREE_TO_EV = 27.211386245988
#: 1 Bohr in Angstrom.
BOHR_TO_ANGSTROM = 0.529177210903
#: 1 kcal/mol in eV (4.184 kJ/mol / (N_A e)).
KCAL_PER_MOL_TO_EV = 4.184e3 / (6.02214076e23 * 1.602176634e-19)
#: 1 kJ/mol in eV.
KJ_PER_MOL_TO_EV = KCAL_PER_MOL_TO_EV / 4.184
#: 1 Hartree/Bohr in eV/Angstrom.
HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM = HARTREE_TO_EV / BOHR_TO_ANGSTROM
#: 1 eV in kcal/mol.
EV_TO_KCAL_PER_MOL = 1.0 / KCAL_PER_MOL_TO_EV
#: 1 Debye in e*Angstrom.
DEBYE_TO_E_ANGSTROM = 0.20819433622621247
