"""Dataset facts, in one place: label names and codes, pathology groups, published splits, published numbers.

Every other module imports these; none defines its own copy. Class indices are ``int`` everywhere (the datalist's
``preparation.label_names`` record writes them as strings, because JSON keys are strings: :func:`label_names_record`).

- **ACDC** (cine MRI, end-diastole / end-systole frames): classes 0 background, 1 RV cavity, 2 myocardium, 3 LV
  cavity, stored with those values; five pathology groups of 20 patients each.
- **MMWHS** (whole-heart MRI): raw label codes 205 ... 850 (:data:`MMWHS_CODES`) mapped in ascending order to the
  class indices 1 ... 7 (:data:`MMWHS_CLASS_NAMES`); any other value is background.
- **Splits** (:data:`PUBLISHED`) are those of Chaitanya et al. (``experiment_init/data_cfg_acdc.py`` /
  ``data_cfg_mmwhs.py`` in ``krishnabits001/domain_specific_cl``), which the IDEAL counts (ACDC 78/2/20, MMWHS
  8/2/10) match:

  - ACDC test: 007-010, 027-030, 047-050, 067-070, 087-090; validation: 031, 071 (the published pair 011/071 leaks
    011 into training); training: the remaining 78. Labelled: 1.25 % = 002; 2.5 % = 042, 062; 10 % = 002, 022,
    042, 062, 095, 003, 023, 043; 100 % = all training.
  - MMWHS test: 1011-1020; validation: 1002, 1005; training: the other 8. Labelled: 10 % = 1003; 20 % = 1001,
    1003; 40 % = 1001, 1003, 1004, 1006 (no published list: this is our documented choice); 100 % = all 8.

  Patient ids are the folder / file stems used by the preparation: ``patient001`` (ACDC), ``mr_train_1001`` (MMWHS).
- **Published numbers** (:data:`PAPER_RESULTS`, :data:`PAPER_BASELINES`): IDEAL's Table 1 (ICASSP 2023).

Example::

    >>> from ideal_components.facts import ACDC_CLASS_NAMES, MMWHS_CODES, PUBLISHED
    >>> ACDC_CLASS_NAMES[3], MMWHS_CODES[500], PUBLISHED["acdc"]["labeled"]["2.5"]
    ('LV cavity', 3, ['patient042', 'patient062'])
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "ACDC_CLASS_NAMES",
    "ACDC_GROUPS",
    "MMWHS_CODES",
    "MMWHS_CLASS_NAMES",
    "MMWHS_CODE_NAMES",
    "MMWHS_STRAY_CODES",
    "PUBLISHED",
    "PROPORTIONS",
    "DEFAULT_FRACTIONS",
    "PAPER_RESULTS",
    "PAPER_BASELINES",
    "label_names_record",
]

# ---- labels -----------------------------------------------------------------------------------------------------

ACDC_CLASS_NAMES: dict[int, str] = {0: "background", 1: "RV cavity", 2: "myocardium", 3: "LV cavity"}
"""ACDC class index (= stored label value) -> name."""

ACDC_GROUPS: tuple[str, ...] = ("DCM", "HCM", "MINF", "NOR", "RV")
"""ACDC's pathology groups (``Info.cfg``'s ``Group``)."""

MMWHS_CODES: dict[int, int] = {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
"""MMWHS raw label code -> class index (ascending order)."""

MMWHS_CLASS_NAMES: dict[int, str] = {
    0: "background",
    1: "LV myocardium",
    2: "left atrium",
    3: "LV blood cavity",
    4: "right atrium",
    5: "RV blood cavity",
    6: "ascending aorta",
    7: "pulmonary artery",
}
"""MMWHS class index -> name."""

MMWHS_CODE_NAMES: dict[int, str] = {code: MMWHS_CLASS_NAMES[index] for code, index in MMWHS_CODES.items()}
"""MMWHS raw label code -> name (the raw files' vocabulary)."""

MMWHS_STRAY_CODES: tuple[int, ...] = (421, 1, 244)
"""Values that occur in a few raw MMWHS label files besides the seven codes (mapped to background)."""


def label_names_record(names: Mapping[int, str]) -> dict[str, str]:
    """``{index: name}`` as the datalist's ``preparation.label_names`` writes it: ``{"0": "background", ...}``."""
    return {str(index): name for index, name in names.items()}


# ---- published splits ------------------------------------------------------------------------------------------


def _acdc(*numbers: int) -> list[str]:
    return [f"patient{n:03d}" for n in numbers]


def _mmwhs(*numbers: int) -> list[str]:
    return [f"mr_train_{n}" for n in numbers]


_ACDC_TEST = _acdc(*range(7, 11), *range(27, 31), *range(47, 51), *range(67, 71), *range(87, 91))
_ACDC_VAL = _acdc(31, 71)
_ACDC_TRAIN = [p for p in _acdc(*range(1, 101)) if p not in _ACDC_TEST and p not in _ACDC_VAL]
_MMWHS_TEST = _mmwhs(*range(1011, 1021))
_MMWHS_VAL = _mmwhs(1002, 1005)
_MMWHS_TRAIN = _mmwhs(1001, 1003, 1004, 1006, 1007, 1008, 1009, 1010)

PUBLISHED: dict[str, dict[str, Any]] = {
    "acdc": {
        "test": _ACDC_TEST,
        "validation": _ACDC_VAL,
        "training": _ACDC_TRAIN,
        "labeled": {
            "1.25": _acdc(2),
            "2.5": _acdc(42, 62),
            "10": _acdc(2, 22, 42, 62, 95, 3, 23, 43),
            "100": list(_ACDC_TRAIN),
        },
    },
    "mmwhs": {
        "test": _MMWHS_TEST,
        "validation": _MMWHS_VAL,
        "training": _MMWHS_TRAIN,
        "labeled": {
            "10": _mmwhs(1003),
            "20": _mmwhs(1001, 1003),
            "40": _mmwhs(1001, 1003, 1004, 1006),
            "100": list(_MMWHS_TRAIN),
        },
    },
}
"""The published splits, keyed by dataset then ``test`` / ``validation`` / ``training`` / ``labeled[fraction]``."""

PROPORTIONS: dict[str, tuple[float, float]] = {"acdc": (0.20, 0.02), "mmwhs": (0.50, 0.10)}
"""(test, validation) proportions of the published splits (ACDC 20/2/78 of 100, MMWHS 10/2/8 of 20)."""

DEFAULT_FRACTIONS: dict[str, tuple[str, ...]] = {
    "acdc": tuple(PUBLISHED["acdc"]["labeled"]),
    "mmwhs": tuple(PUBLISHED["mmwhs"]["labeled"]),
}
"""The label fractions (percent of the training patients) of each dataset, as datalist key strings."""

# ---- published numbers -----------------------------------------------------------------------------------------

PAPER_RESULTS: dict[str, dict[str, dict[str, float]]] = {
    "acdc": {
        "1.25": {"dice": 0.738, "hd": 2.409, "asd": 0.677},
        "2.5": {"dice": 0.846, "hd": 2.209, "asd": 0.614},
        "10": {"dice": 0.879, "hd": 2.094, "asd": 0.556},
        "100": {"dice": 0.882, "hd": 1.999, "asd": 0.489},
    },
    "mmwhs": {
        "10": {"dice": 0.626, "hd": 5.001, "asd": 2.397},
        "20": {"dice": 0.791, "hd": 3.499, "asd": 1.798},
        "40": {"dice": 0.815, "hd": 2.221, "asd": 1.355},
        "100": {"dice": 0.826, "hd": 2.183, "asd": 1.317},
    },
}
"""IDEAL's published test results (ICASSP 2023, Table 1): dataset -> label fraction (%) -> {dice, hd, asd}. The
paper's "HD" (about 2 on ACDC) is only plausible as HD95 in voxels (medpy without voxel spacing), so reports show it
in the HD95 row with a footnote; compare it with an evaluation in voxel units (``VolumeMetricsWriter(voxel_units=
True)``)."""

PAPER_BASELINES: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "global_cl": {
        "acdc": {"1.25": {"dice": 0.729}, "10": {"dice": 0.847}},
        "mmwhs": {"10": {"dice": 0.500}, "20": {"dice": 0.659}, "40": {"dice": 0.785}},
    },
    "chaitanya_sup": {
        "acdc": {"1.25": {"dice": 0.725}, "2.5": {"dice": 0.789}, "10": {"dice": 0.872}},
        "mmwhs": {"10": {"dice": 0.569}, "20": {"dice": 0.694}, "40": {"dice": 0.794}},
    },
    "pcl_sup": {"acdc": {"1.25": {"dice": 0.671}, "2.5": {"dice": 0.850}, "10": {"dice": 0.885}}},
}
"""Published DSC of the baselines in IDEAL's comparison table: method -> dataset -> fraction -> {dice}; entries
the table leaves out ("-") are absent. The rivals' numbers sit on the sweep methods that fine-tune them as
published (supervised): ``chaitanya_sup`` (Chaitanya et al., NeurIPS 2020) and ``pcl_sup`` (PCL, MICCAI 2021, no
MM-WHS entry). Each comes from its own code and protocol; PCL's 1.25 % entry is 2 labelled patients under 5-fold
cross-validation, not the fixed split."""
