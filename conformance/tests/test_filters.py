from __future__ import annotations

from pathlib import Path

import pytest

from wna16_conformance.filters import MAX_MULTIPLIER, FilterError, decide, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "f.toml"
    path.write_text(text)
    return path


def test_brackets_are_literal_and_stars_wild(tmp_path: Path) -> None:
    entries = load(write(tmp_path, '[[skip]]\nmatch = "numerics[w3g*"\nreason = "r"\n'))
    assert decide(entries, "b", "numerics[w3g32sym-fp16]").skip is not None
    assert decide(entries, "b", "edges[large-k-w3g128asym-fp16]").skip is None
    assert decide(entries, "b", "numerics[w4g32sym-fp16]").skip is None


def test_largest_multiplier_wins_and_backend_restriction(tmp_path: Path) -> None:
    text = (
        '[[tolerance]]\nmatch = "*bf16*"\nmultiplier = 2\nreason = "a"\n'
        '[[tolerance]]\nmatch = "numerics[*"\nmultiplier = 3\nreason = "b"\nbackend = "other"\n'
    )
    entries = load(write(tmp_path, text))
    assert decide(entries, "mine", "numerics[w4g32sym-bf16]").multiplier == 2
    assert decide(entries, "other", "numerics[w4g32sym-bf16]").multiplier == 3
    assert decide(entries, "mine", "numerics[w4g32sym-fp16]").multiplier == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f'[[tolerance]]\nmatch = "*"\nmultiplier = {MAX_MULTIPLIER + 0.5}\nreason = "r"\n', "multiplier"),
        ('[[tolerance]]\nmatch = "*"\nmultiplier = 0.5\nreason = "r"\n', "multiplier"),
        ('[[skip]]\nmatch = "*"\n', "reason"),
        ('[[skip]]\nmatch = ""\nreason = "r"\n', "match"),
        ('[[skip]]\nmatch = "*"\nreason = "r"\nmultiplier = 2\n', "unknown keys"),
        ('[[xfail]]\nmatch = "*"\nreason = "r"\n', "unknown tables"),
        ("[[skip]\n", "f.toml"),
    ],
)
def test_malformed_entries_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message) as info:
        load(write(tmp_path, text))
    assert "f.toml" in str(info.value)


def test_misspelt_filter_declaration_is_refused() -> None:
    """``conformance_filter`` is declared on ``Backend``; a misspelling is a TypeError, not silently ignored."""
    from wna16_reference import ReferenceBackend

    assert ReferenceBackend.conformance_filter is None
    with pytest.raises(TypeError, match="did you mean 'conformance_filter'"):
        type("Typo", (ReferenceBackend,), {"conformance_filters": "f.toml"})
