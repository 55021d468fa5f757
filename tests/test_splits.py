"""Tests of ideal_components.data.splits: published splits as data, seeded splits, label fractions."""

from __future__ import annotations

import pytest

from ideal_components.data.splits import fraction_key, parse_fractions, published_split, seeded_split, split_patients
from ideal_components.facts import PUBLISHED

ACDC_IDS = [f"patient{i:03d}" for i in range(1, 101)]
MMWHS_IDS = [f"mr_train_{i}" for i in range(1001, 1021)]


def _disjoint(split) -> None:
    sets = [set(split.training), set(split.validation), set(split.test)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    for ids in split.labeled.values():
        assert set(ids) <= sets[0] and ids


def test_published_acdc() -> None:
    s = published_split("acdc", ACDC_IDS)
    assert (len(s.training), len(s.validation), len(s.test)) == (78, 2, 20)
    assert s.validation == ["patient031", "patient071"]
    assert s.test[:4] == ["patient007", "patient008", "patient009", "patient010"] and "patient090" in s.test
    assert s.labeled["1.25"] == ["patient002"]
    assert s.labeled["2.5"] == ["patient042", "patient062"]
    assert s.labeled["10"] == sorted(f"patient{i:03d}" for i in (2, 22, 42, 62, 95, 3, 23, 43))
    assert s.labeled["100"] == s.training and s.source == "published" and s.unassigned == []
    _disjoint(s)
    assert set(s.training) | set(s.validation) | set(s.test) == set(ACDC_IDS)


def test_published_mmwhs() -> None:
    s = split_patients("mmwhs", MMWHS_IDS)
    assert s.source == "published"
    assert s.test == [f"mr_train_{i}" for i in range(1011, 1021)]
    assert s.validation == ["mr_train_1002", "mr_train_1005"]
    assert len(s.training) == 8
    assert s.labeled == {
        "10": ["mr_train_1003"],
        "20": ["mr_train_1001", "mr_train_1003"],
        "40": ["mr_train_1001", "mr_train_1003", "mr_train_1004", "mr_train_1006"],
        "100": s.training,
    }
    _disjoint(s)


def test_published_extra_patients_unassigned_and_missing_rejected() -> None:
    s = split_patients("acdc", ACDC_IDS + ["patient101", "patient150"])
    assert s.source == "published" and s.unassigned == ["patient101", "patient150"]
    with pytest.raises(ValueError, match="missing"):
        published_split("acdc", ACDC_IDS[:-1])
    assert split_patients("acdc", ACDC_IDS[:-1]).source == "seeded"


def test_published_redraw_nested_same_sizes() -> None:
    a = published_split("acdc", ACDC_IDS, seed=3)
    b = published_split("acdc", ACDC_IDS, seed=3)
    c = published_split("acdc", ACDC_IDS, seed=4)
    assert a == b and a.labeled != c.labeled and a.source == "published-redrawn"
    assert a.test == PUBLISHED["acdc"]["test"] and a.validation == PUBLISHED["acdc"]["validation"]
    sizes = {k: len(v) for k, v in a.labeled.items()}
    assert sizes == {"1.25": 1, "2.5": 2, "10": 8, "100": 78}
    assert set(a.labeled["1.25"]) <= set(a.labeled["2.5"]) <= set(a.labeled["10"]) <= set(a.labeled["100"])
    _disjoint(a)
    m = published_split("mmwhs", MMWHS_IDS, seed=0)
    assert {k: len(v) for k, v in m.labeled.items()} == {"10": 1, "20": 2, "40": 4, "100": 8}


def test_unknown_fraction() -> None:
    with pytest.raises(ValueError, match="no published acdc labelled set"):
        published_split("acdc", ACDC_IDS, fractions=[5])
    assert len(published_split("acdc", ACDC_IDS, seed=0, fractions=[5]).labeled["5"]) == 4
    for bad in (0, -1, 101, "abc"):
        with pytest.raises(ValueError, match="fraction"):
            seeded_split(ACDC_IDS[:10], "acdc", fractions=[bad])


@pytest.mark.parametrize("n", [3, 4, 5, 10, 20, 37, 100])
@pytest.mark.parametrize("dataset", ["acdc", "mmwhs"])
def test_seeded_split_sizes(n: int, dataset: str) -> None:
    ids = [f"p{i:03d}" for i in range(n)]
    s = seeded_split(ids, dataset, seed=1)
    assert min(len(s.training), len(s.validation), len(s.test)) >= 1
    assert sorted(s.training + s.validation + s.test) == ids
    _disjoint(s)
    keys = list(s.labeled)
    for small, large in zip(keys, keys[1:]):
        assert set(s.labeled[small]) <= set(s.labeled[large])
    for k, v in s.labeled.items():
        assert len(v) == max(1, int(float(k) / 100 * len(s.training) + 0.5))
    if dataset == "acdc" and n == 100:
        assert (len(s.test), len(s.validation), len(s.training)) == (20, 2, 78)
    if dataset == "mmwhs" and n == 20:
        assert (len(s.test), len(s.validation), len(s.training)) == (10, 2, 8)


def test_seeded_split_deterministic_and_order_free() -> None:
    ids = [f"p{i}" for i in range(30)]
    a = seeded_split(ids, "acdc", seed=7)
    b = seeded_split(list(reversed(ids)), "acdc", seed=7)
    assert a == b
    assert seeded_split(ids, "acdc", seed=8) != a
    assert seeded_split(ids, "acdc", seed=None) == seeded_split(ids, "acdc", seed=0)


def test_seeded_split_too_few() -> None:
    with pytest.raises(ValueError, match="at least 3 patients"):
        seeded_split(["a", "b"], "acdc")


def test_fraction_parsing() -> None:
    assert fraction_key(1.25) == "1.25" and fraction_key(10.0) == "10" and fraction_key("2.5") == "2.5"
    assert parse_fractions(None, "acdc") == ["1.25", "2.5", "10", "100"]
    assert parse_fractions("100,10", "mmwhs") == ["10", "100"]
    assert parse_fractions((20, 40), "mmwhs") == ["20", "40"] and parse_fractions(10, "mmwhs") == ["10"]
    with pytest.raises(ValueError, match="unknown dataset"):
        parse_fractions(None, "brats")
