r"""C/H/N/O molecules for training sets that cover organic chemistry as ANI-1x does.

Two sources, both with a clear licence:

* **NCI**: the first 5,000 structures of the NCI/DTP Open Database (the US National Cancer
  Institute's compound collection, a US government work in the public domain), as shipped in
  RDKit's ``Data/NCI/first_5K.smi`` (RDKit: BSD-3-Clause). :func:`nci_molecules` keeps the
  neutral, closed-shell, single-fragment C/H/N/O ones (2,628 molecules of 1-60+ heavy atoms).
* **BRICS joins**: new molecules made by breaking those at their BRICS bonds (Degen et al.,
  ChemMedChem 3, 1503 (2008)) and joining random fragments again (:func:`brics_molecules`),
  which reaches 20-30 heavy atoms with drug-like connectivity and many molecules in no
  database.

Every molecule can be checked against an exclusion set of InChIKey connectivity blocks
(:class:`MoleculeFilter`), by default the 14 monomers of S66x8
(:data:`S66_MONOMER_SMILES`), so that S66x8 stays a clean test set.
"""
import functools
import os.path as osp
import random
from typing import Dict, Iterable, List, Optional, Sequence, Set

from pyg_tensorpot.utils.elements import symbol

#: The 14 distinct monomers of the S66 / S66x8 dimers (Řezáč, Riley, Hobza, J. Chem. Theory
#: Comput. 7, 2427 (2011)): water, methanol, methylamine, N-methylacetamide, uracil, pyridine,
#: acetic acid, acetamide, benzene, ethene, ethyne, pentane, neopentane, cyclopentane.
#: ``tests/test_sampling.py`` derives the same set from COMP6's S66x8 geometries.
S66_MONOMER_SMILES = (
    'O', 'CO', 'CN', 'CNC(C)=O', 'O=c1cc[nH]c(=O)[nH]1', 'c1ccncc1', 'CC(=O)O', 'CC(N)=O',
    'c1ccccc1', 'C=C', 'C#C', 'CCCCC', 'CC(C)(C)C', 'C1CCCC1',
)

#: Elements of the ANI-1x level of theory.
CHNO = frozenset({1, 6, 7, 8})


def _rdkit():
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:
        raise ImportError("molecule generation needs RDKit: pip install 'pyg-tensorpot[chem]'"
                          ) from error
    RDLogger.DisableLog('rdApp.*')
    return Chem


def skeleton_key(mol) -> str:
    """The connectivity block (first 14 characters) of the standard InChIKey of :obj:`mol`: the
    same for every stereoisomer, and for the tautomers the standard InChI merges."""
    Chem = _rdkit()
    key = Chem.MolToInchiKey(mol)
    if not key:
        raise ValueError(f'RDKit cannot compute an InChIKey of {Chem.MolToSmiles(mol)}')
    return key[:14]


def is_chno_closed_shell(mol, elements: Iterable[int] = CHNO) -> bool:
    """Whether :obj:`mol` is one neutral, closed-shell fragment of the given elements (formal
    charges are allowed when they cancel, as in nitro groups and N-oxides)."""
    Chem = _rdkit()
    allowed = set(elements)
    mol_h = Chem.AddHs(mol)
    if any(atom.GetAtomicNum() not in allowed for atom in mol_h.GetAtoms()):
        return False
    if any(atom.GetNumRadicalElectrons() or abs(atom.GetFormalCharge()) > 1
           for atom in mol_h.GetAtoms()):
        return False
    if Chem.GetFormalCharge(mol_h) != 0:
        return False
    return len(Chem.GetMolFrags(mol_h)) == 1


class MoleculeFilter:
    r"""Keeps molecules of allowed elements and size that are not in an exclusion set.

    Args:
        min_heavy (int, optional): Fewest heavy atoms. (default: :obj:`1`)
        max_heavy (int, optional): Most heavy atoms. (default: :obj:`30`)
        exclude_smiles (Sequence[str], optional): Molecules left out, compared by
            :func:`skeleton_key` (so stereoisomers of an excluded molecule are excluded too).
            (default: :data:`S66_MONOMER_SMILES`)
        elements (Iterable[int], optional): Allowed atomic numbers. (default: H, C, N, O)
    """
    def __init__(self, min_heavy: int = 1, max_heavy: int = 30,
                 exclude_smiles: Sequence[str] = S66_MONOMER_SMILES,
                 elements: Iterable[int] = CHNO):
        Chem = _rdkit()
        if not 1 <= min_heavy <= max_heavy:
            raise ValueError(f'need 1 <= min_heavy <= max_heavy, got {min_heavy} and '
                             f'{max_heavy}')
        self.min_heavy, self.max_heavy = min_heavy, max_heavy
        self.elements = frozenset(elements)
        self.excluded: Set[str] = set()
        for smiles in exclude_smiles:
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                raise ValueError(f'cannot parse the excluded SMILES {smiles!r}')
            self.excluded.add(skeleton_key(mol))

    def __call__(self, mol) -> bool:
        if mol is None or not self.min_heavy <= mol.GetNumHeavyAtoms() <= self.max_heavy:
            return False
        if not is_chno_closed_shell(mol, self.elements):
            return False
        return skeleton_key(mol) not in self.excluded


def nci_smiles_path() -> str:
    """Path of RDKit's copy of the first 5,000 NCI Open Database structures."""
    from rdkit import RDConfig
    path = osp.join(RDConfig.RDDataDir, 'NCI', 'first_5K.smi')
    if not osp.exists(path):
        raise FileNotFoundError(f"RDKit's NCI sample '{path}' is missing: this RDKit "
                                f"installation does not ship its Data folder")
    return path


def canonical(mol) -> str:
    """Canonical isomeric SMILES (the molecule's name in the pool)."""
    return _rdkit().MolToSmiles(mol)


def nci_molecules(keep: Optional[MoleculeFilter] = None) -> Dict[str, str]:
    """The NCI sample's molecules that :obj:`keep` accepts, ``{canonical SMILES: NCI id}``
    (the first entry of a duplicate is kept).

    Args:
        keep (MoleculeFilter, optional): The filter. (default: :obj:`MoleculeFilter()`)
    """
    Chem = _rdkit()
    keep = keep or MoleculeFilter()
    out: Dict[str, str] = {}
    with open(nci_smiles_path(), encoding='utf-8') as f:
        for line in f:
            fields = line.split()
            if not fields:
                continue
            mol = Chem.MolFromSmiles(fields[0])
            if keep(mol):
                out.setdefault(canonical(mol), f'nci-{fields[1] if len(fields) > 1 else "?"}')
    return out


def brics_fragments(smiles: Iterable[str], max_heavy: int = 12,
                    max_source_heavy: int = 30) -> List[str]:
    """The distinct BRICS fragments of the molecules with at least one attachment point
    (dummy atom), at most :obj:`max_heavy` heavy atoms each, sorted.

    Args:
        smiles (Iterable[str]): The molecules.
        max_heavy (int, optional): Largest fragment kept (heavy atoms). (default: :obj:`12`)
        max_source_heavy (int, optional): Larger molecules are not broken up (the number of
            BRICS fragment sets grows exponentially with the breakable bonds).
            (default: :obj:`30`)
    """
    Chem = _rdkit()
    from rdkit.Chem import BRICS
    fragments: Set[str] = set()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None or mol.GetNumHeavyAtoms() > max_source_heavy:
            continue
        for frag in BRICS.BRICSDecompose(mol):
            f = Chem.MolFromSmiles(frag)
            heavy = sum(1 for atom in f.GetAtoms() if atom.GetAtomicNum() > 0) if f else 0
            # a fragment without an attachment point (a molecule with no BRICS bond) joins
            # nothing
            if f is not None and '*' in frag and 0 < heavy <= max_heavy:
                fragments.add(frag)
    return sorted(fragments)


@functools.lru_cache(maxsize=1)
def _peroxide():
    return _rdkit().MolFromSmarts('[OX2]-[OX2]')


def brics_molecules(fragments: Sequence[str], count: int, keep: Optional[MoleculeFilter] = None,
                    pieces: int = 3, seed: int = 0, max_tries: int = 200) -> List[str]:
    r"""Up to :obj:`count` new molecules (canonical SMILES) from random sets of :obj:`pieces`
    BRICS fragments joined at compatible attachment points (:func:`rdkit.Chem.BRICS.BRICSBuild`,
    one product per draw), accepted by :obj:`keep` and distinct.

    Args:
        fragments (Sequence[str]): Fragments from :func:`brics_fragments`.
        count (int): Molecules wanted.
        keep (MoleculeFilter, optional): The filter. (default: :obj:`MoleculeFilter()`)
        pieces (int, optional): Fragments drawn per molecule (2 or more). (default: :obj:`3`)
        seed (int, optional): Seed of the draws. (default: :obj:`0`)
        max_tries (int, optional): Draws per wanted molecule before giving up.
            (default: :obj:`200`)
    """
    Chem = _rdkit()
    from rdkit.Chem import BRICS
    if pieces < 2:
        raise ValueError(f'joining needs at least 2 pieces, got {pieces}')
    if len(fragments) < pieces:
        raise ValueError(f'{len(fragments)} fragments are too few for {pieces} pieces')
    keep = keep or MoleculeFilter()
    rng = random.Random(seed)
    frags = [Chem.MolFromSmiles(f) for f in fragments]
    out: List[str] = []
    seen: Set[str] = set()
    for _ in range(count * max_tries):
        if len(out) >= count:
            break
        chosen = rng.sample(frags, pieces)
        # scrambleReagents draws from Python's global random state: the draw above is ours
        build = BRICS.BRICSBuild(chosen, scrambleReagents=False, maxDepth=pieces - 1)
        try:
            product = next(iter(build))
        except StopIteration:
            continue
        try:
            Chem.SanitizeMol(product)
        except Chem.rdchem.MolSanitizeException:  # a join RDKit cannot kekulise: draw again
            continue
        if any(atom.GetAtomicNum() == 0 for atom in product.GetAtoms()):
            continue
        product = Chem.MolFromSmiles(Chem.MolToSmiles(product))
        # BRICS can join two ether-type ends into a peroxide, chemistry no source has
        if product is None or product.HasSubstructMatch(_peroxide()) or not keep(product):
            continue
        smiles = canonical(product)
        if smiles not in seen:
            seen.add(smiles)
            out.append(smiles)
    return out


def formula(mol) -> str:
    """Hill formula of :obj:`mol` with its hydrogens, e.g. ``C6H6O``."""
    Chem = _rdkit()
    counts: Dict[str, int] = {}
    for atom in Chem.AddHs(mol).GetAtoms():
        name = symbol(atom.GetAtomicNum())
        counts[name] = counts.get(name, 0) + 1
    order = ['C', 'H'] + sorted(k for k in counts if k not in ('C', 'H'))
    return ''.join(f'{k}{counts[k] if counts[k] > 1 else ""}' for k in order if k in counts)
