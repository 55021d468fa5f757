"""``VolumeMetricsWriter``: the ignite handler that scores every test volume in a MONAI evaluator.

It computes :func:`~ideal_components.evaluation.metrics.multiclass_metrics` for every decollated ``{"pred",
"label"}`` item, and writes ``metrics_per_volume.csv`` and ``metrics_summary.json`` (atomically; gathered over the
ranks under DDP).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import IgniteInfo, min_version, optional_import

from ideal_components.distributed import get_world_size, is_main_process
from ideal_components.evaluation.metrics import (
    METRIC_NAMES,
    _check_convention,
    _class_names,
    _foreground_labels,
    aggregate,
    multiclass_metrics,
)
from ideal_components.utils import atomic_write_text, image_stem

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["VolumeMetricsWriter"]


class VolumeMetricsWriter:
    """Ignite handler computing per-volume, per-class metrics in a MONAI evaluator and writing CSV / JSON reports.

    On every ``ITERATION_COMPLETED`` it reads ``engine.state.output`` (after MONAI's decollation: a list of
    per-sample dicts; a batch-first dict is decollated here) and, for each sample, takes ``item[pred_key]`` and
    ``item[label_key]``, channel-first ``(C, H, W[, D])``: one channel is a label map, several channels (one-hot,
    probabilities or logits) are turned into a label map by argmax over the channel. The spacing comes from the
    label's affine (``monai.data.utils.affine_to_spacing``), else from the prediction's, else from a ``"pixdim"``
    meta entry; ``voxel_units=True`` ignores it and reports voxel units. The volume id is the file name (without
    extension) from ``meta["filename_or_obj"]``.

    On ``EPOCH_COMPLETED`` it writes atomically (temporary file + ``os.replace``):

    - ``<output_dir>/metrics_per_volume.csv``: one row per (volume, class);
    - ``<output_dir>/metrics_summary.json``: :func:`aggregate` of the rows plus the units, HD95 convention and
      empty-mask policy;

    and sets ``engine.state.metrics[metric_name]`` to the mean Dice (per volume mean over classes, then mean over
    volumes). Rows are reset on ``EPOCH_STARTED``. Under ``torch.distributed`` the rows of all ranks are gathered
    and only rank 0 writes the files.

    Args:
        output_dir: folder for the two files (created if needed).
        num_classes: classes including the background (foreground ``1..num_classes-1``); or give ``labels``.
        labels: foreground label values, alternative to ``num_classes``.
        class_names: foreground class names, see :func:`multiclass_metrics`.
        hd95_convention: ``"medpy"`` (default) or ``"monai"``.
        voxel_units: report distances in voxels instead of mm (the spacing is then ignored).
        connectivity: surface neighbourhood, see :func:`binary_metrics`.
        pred_key, label_key: keys of the prediction and the reference in each output item.
        metric_name: the ``engine.state.metrics`` key receiving the mean Dice.
        csv_name, summary_name: file names.
        output_transform: applied to ``engine.state.output`` before reading it.

    Example:
        >>> writer = VolumeMetricsWriter("eval", num_classes=4, class_names=["RV", "MYO", "LV"])
        >>> # evaluator = SupervisedEvaluator(..., postprocessing=AsDiscreted("pred", argmax=True),
        >>> #                                 val_handlers=[writer])  # or writer.attach(evaluator)
    """

    def __init__(
        self,
        output_dir: str,
        num_classes: int | None = None,
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] | Mapping[int, str] | None = None,
        hd95_convention: str = "medpy",
        voxel_units: bool = False,
        connectivity: int = 1,
        pred_key: str = "pred",
        label_key: str = "label",
        metric_name: str = "mean_dice",
        csv_name: str = "metrics_per_volume.csv",
        summary_name: str = "metrics_summary.json",
        output_transform: Callable[[Any], Any] = lambda x: x,
    ) -> None:
        self.output_dir = str(output_dir)
        self.labels = _foreground_labels(num_classes, labels)
        self.num_classes = num_classes
        self.class_names = _class_names(class_names, self.labels)
        self.hd95_convention = _check_convention(hd95_convention)
        self.voxel_units = bool(voxel_units)
        self.connectivity = connectivity
        self.pred_key = pred_key
        self.label_key = label_key
        self.metric_name = metric_name
        self.csv_name = csv_name
        self.summary_name = summary_name
        self.output_transform = output_transform
        self.rows: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}
        self.summary: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        """Register the handler's events on ``engine`` (a MONAI evaluator or any ignite engine)."""
        if not engine.has_event_handler(self.epoch_started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if not engine.has_event_handler(self.epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self) -> None:
        """Forget the rows collected so far."""
        self.rows = []
        self._ids = {}
        self.summary = None

    def epoch_started(self, engine: Engine) -> None:
        self.reset()

    # -- per sample ---------------------------------------------------------------------------------------------
    @staticmethod
    def _label_map(x: Any, name: str) -> np.ndarray:
        arr = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        if arr.ndim < 2:
            raise ValueError(f"{name} must be channel-first (C, H, W[, D]), got shape {tuple(arr.shape)}.")
        arr = arr[0] if arr.shape[0] == 1 else torch.argmax(arr, dim=0)
        return np.asarray(arr.numpy() if isinstance(arr, torch.Tensor) else arr)

    @staticmethod
    def _meta(x: Any) -> Mapping[str, Any]:
        meta = getattr(x, "meta", None)
        return meta if isinstance(meta, Mapping) else {}

    def _spacing(self, pred: Any, label: Any, spatial_ndim: int) -> list[float] | None:
        if self.voxel_units:
            return None
        from monai.data.utils import affine_to_spacing

        for x in (label, pred):
            affine = self._meta(x).get("affine", None)
            if affine is not None:
                return [float(s) for s in np.asarray(affine_to_spacing(torch.as_tensor(affine), r=spatial_ndim))]
        for x in (label, pred):
            pixdim = self._meta(x).get("pixdim", None)
            if pixdim is not None:
                pix = np.asarray(torch.as_tensor(pixdim).cpu()).ravel()
                return [float(s) for s in pix[1 : 1 + spatial_ndim]]
        raise ValueError(
            "cannot find the voxel spacing: neither the label nor the prediction carries an 'affine' or 'pixdim' "
            "meta entry (use MetaTensors, e.g. from LoadImaged) or set voxel_units=True."
        )

    def _unique_id(self, vid: str) -> str:
        k = self._ids.get(vid, 0)
        self._ids[vid] = k + 1
        return vid if k == 0 else f"{vid}#{k + 1}"

    def add_item(self, pred: Any, label: Any) -> list[dict[str, Any]]:
        """Compute and store the rows of one channel-first sample; returns them."""
        p, r = self._label_map(pred, self.pred_key), self._label_map(label, self.label_key)
        spacing = self._spacing(pred, label, p.ndim)
        filename = None
        for x in (label, pred):
            filename = self._meta(x).get("filename_or_obj", None)
            if filename:
                break
        vid = self._unique_id(image_stem(filename) if filename else f"volume_{len(self._ids)}")
        rows = multiclass_metrics(
            p,
            r,
            labels=self.labels,
            spacing=spacing,
            class_names=self.class_names,
            hd95_convention=self.hd95_convention,
            connectivity=self.connectivity,
        )
        sp_text = "x".join(f"{s:g}" for s in spacing) if spacing is not None else "voxel"
        for row in rows:
            row.update(volume=vid, filename=str(filename) if filename else "", spacing=sp_text)
        self.rows.extend(rows)
        return rows

    def iteration_completed(self, engine: Engine) -> None:
        output = self.output_transform(engine.state.output)
        if isinstance(output, Mapping):
            from monai.data import decollate_batch

            output = decollate_batch(output)
        for item in output:
            if self.pred_key not in item or self.label_key not in item:
                raise ValueError(
                    f"each output item needs {self.pred_key!r} and {self.label_key!r}, got keys {list(item.keys())}."
                )
            self.add_item(item[self.pred_key], item[self.label_key])

    # -- per epoch ----------------------------------------------------------------------------------------------
    def _gather_rows(self) -> tuple[list[dict[str, Any]], bool]:
        world = get_world_size()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, self.rows)
            return [row for part in gathered for row in part], is_main_process()
        return list(self.rows), True

    def csv_text(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """The CSV content for ``rows`` (empty-mask kind None is written as an empty cell)."""
        columns = ["volume", "filename", "class_index", "class_name", *METRIC_NAMES]
        columns += ["empty", "pred_voxels", "ref_voxels", "spacing", "units", "hd95_convention"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        units = "voxel" if self.voxel_units else "mm"
        for row in rows:
            w.writerow({**row, "units": units, "empty": row.get("empty") or ""})
        return buf.getvalue()

    def epoch_completed(self, engine: Engine) -> None:
        rows, is_writer = self._gather_rows()
        if not rows:
            warnings.warn("VolumeMetricsWriter: no samples were evaluated this epoch; nothing written.", stacklevel=2)
            return
        summary = self.write(rows, write_files=is_writer)
        engine.state.metrics[self.metric_name] = summary["metrics"]["dice"]["mean"]

    def write(
        self, rows: Sequence[Mapping[str, Any]], write_files: bool = True, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Summarise ``rows`` (:func:`aggregate` plus units, policies and ``extra`` entries), write the CSV and the
        JSON summary into ``output_dir`` when ``write_files``, and return the summary."""
        summary = aggregate(rows)
        summary.update(
            units="voxel" if self.voxel_units else "mm",
            hd95_convention=self.hd95_convention,
            connectivity=self.connectivity,
            empty_policy=(
                "both empty: dice 1, distances 0; one empty: dice 0, distances = volume diagonal "
                "sqrt(sum((shape*spacing)^2)); counted in every mean"
            ),
        )
        summary.update(extra or {})
        self.summary = summary
        if write_files:
            atomic_write_text(os.path.join(self.output_dir, self.csv_name), self.csv_text(rows))
            text = json.dumps(summary, indent=2, allow_nan=False)
            atomic_write_text(os.path.join(self.output_dir, self.summary_name), text + "\n")
        return summary

    def __call__(self, engine: Engine) -> None:
        """Alias of :meth:`epoch_completed`, for ``engine.add_event_handler(Events.EPOCH_COMPLETED, writer)``."""
        self.epoch_completed(engine)
