"""``keep_largest_component``: the optional largest-connected-component post-processing of evaluation and inference."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import KeepLargestConnectedComponentd
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ["ideal_acdc", "ideal_mmwhs"]
# the post-processing list of each config that writes segmentations
POSTPROCESSING = {("train.json", "evaluate.json"): "validate#postprocessing", ("inference.json",): "postprocessing"}


def _parser(bundle: str, names: tuple[str, ...], keep: bool | None) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / n) for n in names])
    if keep is not None:
        parser["keep_largest_component"] = keep
    return parser


def _largest_component_index(parser: ConfigParser, list_id: str) -> int:
    targets = [t.get("_target_") for t in parser[f"{list_id}#transforms"]]
    assert targets.count("KeepLargestConnectedComponentd") == 1, targets
    index = targets.index("KeepLargestConnectedComponentd")
    after = parser[f"{list_id}#transforms#{index - 1}"]
    assert after.get("argmax") is True, "the component filter must follow the argmax (it needs class indices)"
    return index


def count_components(segmentation: np.ndarray, label: int) -> int:
    return ndimage.label(segmentation == label, structure=np.ones((3,) * segmentation.ndim))[1]


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("names", list(POSTPROCESSING))
def test_off_by_default_and_built_when_asked(bundle, names):
    list_id = POSTPROCESSING[names]
    default = _parser(bundle, names, None)
    assert default["keep_largest_component"] is False
    index = _largest_component_index(default, list_id)
    assert default.get_parsed_content(f"{list_id}#transforms#{index}") is None  # disabled: dropped from the list

    enabled = _parser(bundle, names, True)
    transform = enabled.get_parsed_content(f"{list_id}#transforms#{index}")
    assert isinstance(transform, KeepLargestConnectedComponentd)
    num_classes = enabled.get_parsed_content("num_classes")
    assert list(transform.converter.applied_labels) == list(range(1, num_classes))  # every structure, not background
    assert transform.converter.independent


@pytest.mark.parametrize("bundle", BUNDLES)
def test_keeps_the_largest_component_of_each_structure(bundle):
    parser = _parser(bundle, ("inference.json",), True)
    transform = parser.get_parsed_content(
        f"postprocessing#transforms#{_largest_component_index(parser, 'postprocessing')}"
    )
    pred = torch.zeros(1, 24, 24, 6, dtype=torch.long)
    pred[0, 2:10, 2:10, 1:5] = 1  # structure 1: a large blob ...
    pred[0, 20:22, 20:22, 1:2] = 1  # ... and a stray island far from it
    pred[0, 12:18, 2:8, 0:3] = 2  # structure 2: a blob ...
    pred[0, 14:16, 14:16, 4:6] = 2  # ... and a smaller island
    out = np.asarray(transform({"pred": pred})["pred"])[0]
    expected = np.asarray(pred[0]).copy()
    expected[20:22, 20:22, 1:2] = 0
    expected[14:16, 14:16, 4:6] = 0
    np.testing.assert_array_equal(out, expected)
    assert count_components(out, 1) == count_components(out, 2) == 1


@pytest.mark.slow
def test_bundle_runs_with_the_filter(tmp_path):
    """Real evaluation and inference runs with ``--keep_largest_component True`` (scikit-image, shapes, the writers).

    Whether the filter removes islands is the test above; a one-epoch model has none to remove.
    """
    from bundle_runs import TINY, check_segmentation, python_ok, run_bundle_ok

    raw, prepared, run = tmp_path / "raw", tmp_path / "prepared", tmp_path / "run"
    python_ok("-m", "ideal_components", "synth_acdc", str(raw), "--patients", "6", "--seed", "4")
    python_ok(
        "-m", "ideal_components", "prepare_acdc", str(raw), str(prepared), "--pixdim", "4.0", "--spatial_size", "64"
    )
    data, keep = ["--dataset_dir", str(prepared)], ["--keep_largest_component", "True"]
    run_bundle_ok("ideal_acdc", ["train.json"], run, *TINY, *data, "--max_epochs", "1", "--use_pretrained", "False")
    run_bundle_ok("ideal_acdc", ["train.json", "evaluate.json"], run, *TINY, *data, *keep)
    predictions = sorted((run / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert predictions and (run / "eval" / "metrics_summary.json").is_file()
    for path in predictions:
        seg = np.asarray(nib.load(str(path)).dataobj)
        assert all(count_components(seg, label) <= 1 for label in (1, 2, 3)), path.name

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    src = sorted((raw / "training" / "patient002").glob("patient002_frame??.nii.gz"))[0]
    (inputs / src.name).write_bytes(src.read_bytes())
    pixdim = ["--pixdim", "[4.0,4.0,-1]"]
    run_bundle_ok("ideal_acdc", ["inference.json"], run, *TINY, "--dataset_dir", str(inputs), *pixdim, *keep)
    output = run / "predictions" / src.name.replace(".nii.gz", "_seg.nii.gz")
    check_segmentation(output, src, 4)
    seg = np.asarray(nib.load(str(output)).dataobj)
    assert all(count_components(seg, label) <= 1 for label in (1, 2, 3))
