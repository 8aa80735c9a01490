"""How the checker tests judge a checker: a right answer gets ✓ and True, a wrong one ✗, its hint and an
AssertionError naming the mistake."""

import pytest


def passes(checker, answer, capsys) -> None:
    """The checker accepts `answer`, returns True and prints its ✓ verdict."""
    assert checker(answer) is True
    out = capsys.readouterr().out
    assert out.startswith(f"✓ {checker.name}:") and "✗" not in out


def fails(checker, answer, capsys, message: str) -> str:
    """The checker prints ✗ (and its hint, if it has one), then raises AssertionError matching `message`."""
    with pytest.raises(AssertionError, match=message) as error:
        checker(answer)
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {checker.name}:") and "✓" not in out
    assert ("Hint:" in out) == bool(checker.hint)
    return str(error.value)
