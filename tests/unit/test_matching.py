"""Matching: which records of both sides are the same thing (exact keys, one to one)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.core.matching import match, tax_key


def test_tax_ids_match_however_they_are_written() -> None:
    for written in ("B12345678", "b-1234-5678", " B 12345678 ", "ES-B12345678", "es b.12345678"):
        assert tax_key(written) == "B12345678"
    assert tax_key("X1234567L") == "X1234567L"  # a NIE keeps its letter
    assert tax_key("ESX1234567L") == "X1234567L"
    assert tax_key("FR12345678901") == "FR12345678901"  # not a Spanish NIF behind the prefix
    assert tax_key("") is None and tax_key("  - ") is None and tax_key(None) is None
    assert tax_key(123) is None


def test_one_record_on_each_side_is_a_pair_several_are_ambiguous_the_rest_one_sided() -> None:
    found = match(
        [(1, "A"), (2, "B"), (3, "C"), (4, None), (5, "D")],
        [(10, "A"), (11, "B"), (12, "B"), (13, None), (14, "E")],
    )
    assert found.pairs == [(1, 10, "A")]
    assert found.ambiguous == [("B", [2], [11, 12])]
    assert sorted(found.erp_only, key=str) == sorted([(3, "C"), (4, None), (5, "D")], key=str)
    assert sorted(found.crm_only, key=str) == sorted([(13, None), (14, "E")], key=str)


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.sampled_from(["a", "b", "c", None])),
        unique_by=lambda r: r[0],
    ),
    st.lists(
        st.tuples(st.integers(0, 50), st.sampled_from(["a", "b", "c", None])),
        unique_by=lambda r: r[0],
    ),
)
def test_every_record_ends_in_exactly_one_place(
    erp: list[tuple[int, str | None]], crm: list[tuple[int, str | None]]
) -> None:
    found = match(erp, crm)
    erp_seen = [e for e, _, _ in found.pairs] + [i for _, ids, _ in found.ambiguous for i in ids]
    crm_seen = [c for _, c, _ in found.pairs] + [i for _, _, ids in found.ambiguous for i in ids]
    erp_seen += [i for i, _ in found.erp_only]
    crm_seen += [i for i, _ in found.crm_only]
    assert sorted(erp_seen) == sorted(i for i, _ in erp)
    assert sorted(crm_seen) == sorted(i for i, _ in crm)
    for _, e, c in found.ambiguous:
        assert e and c and len(e) + len(c) > 2
