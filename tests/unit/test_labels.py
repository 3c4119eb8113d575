import pytest

from ukr_hw import labels


def test_alphabet_order_and_size():
    assert labels.NUM_CLASSES == 43
    assert labels.SYMBOLS[:10] == tuple("0123456789")
    assert "".join(labels.LETTERS) == "абвгґдеєжзиіїйклмнопрстуфхцчшщьюя"
    assert labels.index_of("0") == 0 and labels.index_of("а") == 10 and labels.index_of("я") == 42


def test_case_rules():
    assert labels.case_target("7", True) == labels.CASE_NONE  # digits have no case, whatever the caller says
    assert labels.case_target("Ї", True) == labels.CASE_UPPER
    assert labels.case_target("ї", False) == labels.CASE_LOWER
    assert not labels.has_case("3") and labels.has_case("з")
    assert labels.display("ґ", True) == "Ґ" and labels.display("5", True) == "5"
    with pytest.raises(ValueError, match="needs is_uppercase"):
        labels.case_target("а", None)


def test_unknown_symbols_are_refused_with_a_hint():
    with pytest.raises(labels.UnknownSymbolError, match="Latin look-alikes"):
        labels.index_of("i")  # Latin i, not Ukrainian і
