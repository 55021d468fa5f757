"""Atomic writes: a destination is either absent or complete."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ideal_components.utils import atomic_path, atomic_write_text, image_stem


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "first"  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]  # no temporary file left


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    target = tmp_path / "x.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.endswith(".nii.gz")
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), tmp)
    assert target.read_bytes()[:2] == b"\x1f\x8b"  # gzip, as nibabel writes for .nii.gz
    np.testing.assert_array_equal(np.asarray(nib.load(str(target)).dataobj), 1)


@pytest.mark.parametrize(
    "path, stem",
    [
        ("prepared/imagesTs/patient007_ED.nii.gz", "patient007_ED"),
        ("x.nii", "x"),
        ("a/b.MHA", "b"),
        ("c.nrrd", "c"),
        ("scan.v2.nii.gz", "scan.v2"),
        ("d.tif", "d.tif"),  # not an image extension this package writes or scores: kept
    ],
)
def test_image_stem_is_the_volume_id_every_writer_and_reader_uses(path, stem):
    assert image_stem(path) == stem
