"""The 43-symbol alphabet and its case rules.

Order is fixed forever (a model's output index *is* this order): digits 0-9, then the 33 Ukrainian letters in
alphabetical order. Every letter has an upper- and a lowercase form; digits have no case, so their case target
is ``None`` (``CASE_NONE`` in arrays) and they take no part in the case loss or case metrics.
"""

from __future__ import annotations

DIGITS: tuple[str, ...] = tuple("0123456789")
LETTERS: tuple[str, ...] = tuple("абвгґдеєжзиіїйклмнопрстуфхцчшщьюя")
SYMBOLS: tuple[str, ...] = DIGITS + LETTERS
NUM_CLASSES = len(SYMBOLS)  # 43

#: Integer case targets as stored in arrays: 1 = uppercase, 0 = lowercase, -1 = no case (digits), -2 = a letter
#: whose case nobody labelled (CoMNIST): it trains and scores the symbol only. Case losses and metrics take
#: ``case >= 0``; symbol metrics tell letters from digits by the symbol (``y >= len(DIGITS)``), never by the case.
CASE_UPPER, CASE_LOWER, CASE_NONE, CASE_UNKNOWN = 1, 0, -1, -2

#: Pairs that differ by a small mark or look alike across alphabets; reported separately in evaluation.
LOOKALIKE_PAIRS: tuple[tuple[str, str], ...] = (
    ("г", "ґ"),
    ("і", "ї"),
    ("е", "є"),
    ("и", "й"),
    ("ш", "щ"),
    ("о", "0"),
    ("з", "3"),
)

_INDEX = {s: i for i, s in enumerate(SYMBOLS)}


class UnknownSymbolError(ValueError):
    """A symbol outside the 43-symbol alphabet."""


def normalize_symbol(symbol: str) -> str:
    """Map any spelling of a symbol (``"Ї"``, ``" ї "``, ``"7"``) to its canonical lowercase form."""
    s = str(symbol).strip().lower()
    if s not in _INDEX:
        raise UnknownSymbolError(
            f"{symbol!r} is not one of the 43 symbols (digits 0-9 and the Ukrainian letters "
            f"{''.join(LETTERS)}); check the label spelling (Latin look-alikes such as 'i' or 'e' are not allowed)."
        )
    return s


def index_of(symbol: str) -> int:
    """Class index of a symbol (case-insensitive)."""
    return _INDEX[normalize_symbol(symbol)]


def symbol_of(index: int) -> str:
    """The symbol (lowercase letter or digit) for a class index."""
    return SYMBOLS[int(index)]


def is_digit(symbol_or_index: str | int) -> bool:
    """True for 0-9: symbols without case."""
    s = symbol_of(symbol_or_index) if isinstance(symbol_or_index, int) else normalize_symbol(symbol_or_index)
    return s in DIGITS


def has_case(symbol_or_index: str | int) -> bool:
    """True when the symbol has an upper- and lowercase form (every letter, no digit)."""
    return not is_digit(symbol_or_index)


def case_target(symbol: str, is_uppercase: bool | None) -> int:
    """Integer case target for arrays: ``CASE_NONE`` for digits whatever ``is_uppercase`` says."""
    if is_digit(symbol):
        return CASE_NONE
    if is_uppercase is None:
        raise ValueError(f"letter {symbol!r} needs is_uppercase True/False; only digits have no case")
    return CASE_UPPER if is_uppercase else CASE_LOWER


def display(symbol: str, is_uppercase: bool | None) -> str:
    """How a person writes the symbol: ``display("ї", True) == "Ї"``; digits unchanged."""
    s = normalize_symbol(symbol)
    return s.upper() if is_uppercase and has_case(s) else s
