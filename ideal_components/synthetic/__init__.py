"""Synthetic cardiac MRI phantoms written in the raw ACDC and MMWHS layouts, and their preview pictures.

The phantoms let the whole pipeline (preparation, pre-training, fine-tuning, evaluation, inference) run without the
real data sets, which need a registration to download. They are built with numpy, scipy.ndimage and nibabel only,
fully vectorised, and deterministic: the content of patient / volume ``i`` depends only on ``(seed, i)``, never on how
many cases are generated, so any subset of a larger set is byte-identical to the same cases generated alone.

- :mod:`.acdc`: ``synth_acdc``, short-axis cine stacks in the ACDC layout (standard and ``hard`` presets);
- :mod:`.mmwhs`: ``synth_mmwhs``, 3D whole-heart volumes in the MMWHS layout, stored in varied orientations;
- :mod:`.preview`: ``render_preview``, a PNG of a few cases with their label overlays.

Example::

    >>> from ideal_components.synthetic import render_preview, synth_acdc
    >>> render_preview(synth_acdc("/tmp/acdc", patients=4), "/tmp/acdc.png")  # doctest: +SKIP
"""

from __future__ import annotations

from .acdc import ACDC_DIFFICULTIES, acdc_patient_group, synth_acdc
from .mmwhs import MMWHS_ORIENTATIONS, synth_mmwhs
from .preview import render_preview

__all__ = [
    "ACDC_DIFFICULTIES",
    "MMWHS_ORIENTATIONS",
    "acdc_patient_group",
    "synth_acdc",
    "synth_mmwhs",
    "render_preview",
]
