"""Patient splits: the published ones (:data:`ideal_components.facts.PUBLISHED`, with their label fractions) where
the patient set allows, seeded splits in the same proportions for any other patient set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..facts import DEFAULT_FRACTIONS, PROPORTIONS, PUBLISHED

__all__ = ["Split", "fraction_key", "parse_fractions", "published_split", "seeded_split", "split_patients"]


@dataclass
class Split:
    """A patient-level split.

    Attributes:
        training, validation, test: sorted patient ids (disjoint).
        labeled: fraction key (``"1.25"``) -> sorted labelled patient ids (a subset of ``training``).
        source: ``"published"``, ``"published-redrawn"`` (published sets, labelled subsets redrawn with ``seed``)
            or ``"seeded"``.
        seed: the seed used for drawing (``None`` for the published split).
        unassigned: patients present but in no split (extra patients next to the complete published set).
    """

    training: list[str]
    validation: list[str]
    test: list[str]
    labeled: dict[str, list[str]]
    source: str
    seed: int | None = None
    unassigned: list[str] = field(default_factory=list)

    def unlabeled(self, fraction: str) -> list[str]:
        """Training patients that are not labelled for ``fraction``."""
        lab = set(self.labeled[fraction])
        return [p for p in self.training if p not in lab]

    def split_of(self, patient: str) -> str | None:
        """``"training"``, ``"validation"``, ``"test"`` or ``None`` for an unassigned patient."""
        for name in ("training", "validation", "test"):
            if patient in getattr(self, name):
                return name
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "training": list(self.training),
            "validation": list(self.validation),
            "test": list(self.test),
            "labeled": {k: list(v) for k, v in self.labeled.items()},
            "source": self.source,
            "seed": self.seed,
            "unassigned": list(self.unassigned),
        }


def fraction_key(fraction: float | str) -> str:
    """The datalist key string of a label fraction: ``1.25 -> "1.25"``, ``10.0 -> "10"``.

    Raises:
        ValueError: not a number in (0, 100].
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"label fraction {fraction!r} is not a number (percent of the training patients).") from None
    if not (0 < value <= 100) or not math.isfinite(value):
        raise ValueError(f"label fraction {fraction!r} must be a percentage in (0, 100].")
    return f"{value:g}"


def parse_fractions(fractions: Iterable[float | str] | float | str | None, dataset: str) -> list[str]:
    """Normalise the ``fractions`` argument (``None``, a number, ``"10,100"``, a sequence) to sorted key strings.

    Args:
        fractions: what the user gave; ``None`` means the dataset's :data:`DEFAULT_FRACTIONS`.
        dataset: ``"acdc"`` or ``"mmwhs"``.
    """
    if fractions is None:
        return list(DEFAULT_FRACTIONS[_dataset(dataset)])
    if isinstance(fractions, str):
        fractions = [f for f in fractions.replace(" ", "").split(",") if f]
    elif not isinstance(fractions, (list, tuple)):
        fractions = [fractions]
    keys = sorted({fraction_key(f) for f in fractions}, key=float)
    if not keys:
        raise ValueError("no label fraction given.")
    return keys


def _dataset(dataset: str) -> str:
    name = str(dataset).lower()
    if name not in PUBLISHED:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(PUBLISHED)}.")
    return name


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _nested_labeled(
    training: Sequence[str], sizes: dict[str, int], rng: np.random.Generator, context: str
) -> dict[str, list[str]]:
    """Labelled subsets as prefixes of one permutation of the training patients (so they are nested)."""
    order = [str(p) for p in rng.permutation(sorted(training))] if training else []
    out = {}
    for key, n in sizes.items():
        if n < 1 or not order:
            raise ValueError(f"{context}: label fraction {key} % yields no labelled patient ({len(order)} training).")
        out[key] = sorted(order[: min(n, len(order))])
    return out


def published_split(
    dataset: str, patient_ids: Iterable[str], seed: int | None = None, fractions: Iterable[float | str] | None = None
) -> Split:
    """The published split of ACDC (100 patients) or MMWHS (20 volumes).

    Args:
        dataset: ``"acdc"`` or ``"mmwhs"``.
        patient_ids: the patients present; every published id must be among them (extra ids end up in
            ``Split.unassigned``).
        seed: ``None`` for the published labelled subsets; an int redraws them (same sizes, nested: each smaller
            fraction's labelled patients are inside every larger one's), training/validation/test unchanged.
        fractions: label fractions to return (default: the dataset's published ones). Without ``seed`` only the
            published fractions are known; with ``seed`` any fraction in (0, 100] works
            (``n = max(1, round(f / 100 * n_train))``).

    Raises:
        ValueError: a published id is missing, or an unknown fraction is asked without ``seed``.

    Example::

        split = published_split("acdc", [f"patient{i:03d}" for i in range(1, 101)])
        split.labeled["1.25"]  # ['patient002']
    """
    name = _dataset(dataset)
    pub = PUBLISHED[name]
    ids = sorted({str(p) for p in patient_ids})
    missing = [p for p in pub["training"] + pub["validation"] + pub["test"] if p not in ids]
    if missing:
        raise ValueError(f"published {name} split needs every published patient; missing {missing[:10]}...")
    keys = parse_fractions(fractions, name)
    training = sorted(pub["training"])
    if seed is None:
        unknown = [k for k in keys if k not in pub["labeled"]]
        if unknown:
            raise ValueError(
                f"label fraction(s) {unknown} have no published {name} labelled set (known: {list(pub['labeled'])}); "
                "pass a seed to draw them."
            )
        labeled = {k: sorted(pub["labeled"][k]) for k in keys}
        source = "published"
    else:
        sizes = {
            k: len(pub["labeled"][k]) if k in pub["labeled"] else max(1, _round(float(k) / 100 * len(training)))
            for k in keys
        }
        labeled = _nested_labeled(training, sizes, np.random.default_rng(int(seed)), f"published {name} split")
        source = "published-redrawn"
    assigned = set(training) | set(pub["validation"]) | set(pub["test"])
    return Split(
        training=training,
        validation=sorted(pub["validation"]),
        test=sorted(pub["test"]),
        labeled=labeled,
        source=source,
        seed=None if seed is None else int(seed),
        unassigned=[p for p in ids if p not in assigned],
    )


def seeded_split(
    patient_ids: Iterable[str], dataset: str, seed: int | None = 0, fractions: Iterable[float | str] | None = None
) -> Split:
    """A reproducible split of any patient set in the published proportions.

    Test / validation / training get ACDC 20 / 2 / 78 % or MMWHS 50 / 10 / 40 % of the patients (rounded, at least
    one each); the labelled subset of fraction ``f`` has ``max(1, round(f / 100 * n_train))`` training patients,
    and the subsets are nested. The draw depends only on the sorted ids and ``seed`` (numpy ``default_rng``).

    Args:
        patient_ids: the patients (at least 3).
        dataset: ``"acdc"`` or ``"mmwhs"`` (proportions and default fractions).
        seed: random seed (``None`` means 0).
        fractions: label fractions in (0, 100] (default: the dataset's published ones).

    Raises:
        ValueError: fewer than 3 patients, duplicate-free ids empty, or a bad fraction.

    Example::

        split = seeded_split([f"patient{i:03d}" for i in range(1, 11)], "acdc", seed=0)
        len(split.test), len(split.validation), len(split.training)  # (2, 1, 7)
    """
    name = _dataset(dataset)
    ids = sorted({str(p) for p in patient_ids})
    n = len(ids)
    if n < 3:
        raise ValueError(f"a {name} split needs at least 3 patients (test, validation, training), got {n}: {ids}.")
    keys = parse_fractions(fractions, name)
    p_test, p_val = PROPORTIONS[name]
    n_test, n_val = max(1, _round(p_test * n)), max(1, _round(p_val * n))
    while n - n_test - n_val < 1:
        if n_test >= n_val and n_test > 1:
            n_test -= 1
        else:
            n_val -= 1
    seed = 0 if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    order = [str(p) for p in rng.permutation(ids)]
    test, validation, training = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    sizes = {k: max(1, _round(float(k) / 100 * len(training))) for k in keys}
    labeled = _nested_labeled(training, sizes, rng, f"seeded {name} split")
    return Split(
        training=sorted(training),
        validation=sorted(validation),
        test=sorted(test),
        labeled=labeled,
        source="seeded",
        seed=seed,
    )


def split_patients(
    dataset: str, patient_ids: Iterable[str], seed: int | None = None, fractions: Iterable[float | str] | None = None
) -> Split:
    """The published split when every published patient is present, a :func:`seeded_split` otherwise.

    Args:
        dataset: ``"acdc"`` or ``"mmwhs"``.
        patient_ids: the patients found.
        seed: ``None``: published labelled subsets (seeded split: seed 0); an int: redraw with it.
        fractions: label fractions (default: the dataset's published ones).

    Example::

        split = split_patients("mmwhs", [f"mr_train_{i}" for i in range(1001, 1021)])
        split.source  # 'published'
    """
    name = _dataset(dataset)
    ids = sorted({str(p) for p in patient_ids})
    pub = PUBLISHED[name]
    if set(pub["training"] + pub["validation"] + pub["test"]) <= set(ids):
        return published_split(name, ids, seed=seed, fractions=fractions)
    return seeded_split(ids, name, seed=seed, fractions=fractions)
