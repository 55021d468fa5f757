"""Tests of the representation probe (``python -m ideal_components probe``) on a tiny prepared phantom set."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ideal_components.experiments.probe import probe
from ideal_components.losses import pretext_accuracy

REPO = Path(__file__).resolve().parents[1]
# small and fast: resnet10 at 48x48, few slices and steps
FAST = dict(backbone="resnet10", steps=30, bn_slices=8, pretext_slices=4, max_train_slices=6, batch_size=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from ideal_components.data.acdc import prepare_acdc
    from ideal_components.synthetic import synth_acdc

    base = tmp_path_factory.mktemp("probe")
    synth_acdc(str(base / "raw"), patients=8, seed=1, progress=False)
    prepare_acdc(str(base / "raw"), str(base / "prepared"), pixdim=4.0, spatial_size=48)
    return base / "prepared"


def _run(prepared: Path, out: Path, encoder: str, baseline: str, **kwargs) -> dict:
    assert probe(str(prepared), encoder, baseline, out=str(out), **{**FAST, **kwargs}) == str(out)
    return json.loads(out.read_text())


def test_pretext_accuracy_references():
    torch.manual_seed(0)
    q = torch.randn(2, 8, 4, 4)
    assert pretext_accuracy(q, q).item() == 1.0
    assert pretext_accuracy(q, 3.0 * q + 0.0).item() == 1.0  # cosine similarity: the scale does not matter
    # key location n holds query location perm[n]: only the fixed points of perm are retrieved
    perm = torch.tensor([0, 1, 2, 3, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14])  # 4 fixed points of 16
    key = q.flatten(2)[..., perm].reshape(q.shape)
    assert pretext_accuracy(q, key).item() == pytest.approx(4 / 16)
    # one image identical (16 hits), the other permuted (4 hits): 20 of 32 locations
    assert pretext_accuracy(q, torch.stack([q[0], key[1]])).item() == pytest.approx(20 / 32)
    # ties are misses: constant features cannot be told apart; a single location is always retrieved
    assert pretext_accuracy(torch.ones(1, 3, 2, 2), torch.ones(1, 3, 2, 2)).item() == 0.0
    assert pretext_accuracy(torch.randn(3, 5, 1, 1), torch.randn(3, 5, 1, 1)).item() == 1.0
    assert pretext_accuracy(q, key).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        pretext_accuracy(q, q[:, :, :3])


def test_comparison_over_units():
    from ideal_components.experiments.probe import _comparison

    c = _comparison(np.array([0.6, 0.61, 0.62]), np.array([0.4, 0.4, 0.4]))
    assert c["mean_difference"] == pytest.approx(0.21) and c["ci95"][0] > 0  # every unit favours A, little spread
    assert c["sign_count"] == {"encoder_better": 3, "baseline_better": 0, "ties": 0}
    lo, hi = _comparison(np.array([0.5, 0.4, 0.6, 0.45]), np.array([0.45, 0.5, 0.55, 0.5]))["ci95"]
    assert lo < 0 < hi
    # t-interval over 3 units, 2 degrees of freedom: mean +- 4.303 * sd / sqrt(3)
    lo, hi = _comparison(np.array([1.0, 2.0, 3.0]), np.zeros(3))["ci95"]
    assert (lo, hi) == pytest.approx((2 - 4.3027 / 3**0.5, 2 + 4.3027 / 3**0.5), abs=1e-3)


@pytest.mark.parametrize("pair", [("random:0", "random:1"), ("random:2", "random:3"), ("random:4", "random:5")])
def test_random_vs_random(prepared, tmp_path, pair):
    """Random against random, three different pairs of seeds: with the labelled set as the unit (5 sets, the
    classifier seeds averaged within each) the interval contains 0. (The old bootstrap over 9 correlated
    (set, seed) pairs excluded 0 for random:2 vs random:3 on this data.)"""
    a, b = pair
    res = _run(prepared, tmp_path / "p.json", a, b, seeds="0,1", labeled_volumes=5, steps=40)
    assert set(res) >= {"encoder", "baseline", "mean_difference", "ci95", "pairs", "units", "independent_units"}
    assert (res["encoder"], res["baseline"], res["baselines"]) == (a, b, [b])
    pairs, units = res["pairs"], res["units"]
    assert res["independent_units"] == len(units) == 5 and len(pairs) == 10
    assert [p["seed"] for p in pairs] == [0, 1] * 5
    assert len({tuple(u["labeled"]) for u in units}) == 5 and all(len(u["labeled"]) == 1 for u in units)
    for p in pairs:
        assert 0.0 <= p["dice_encoder"] <= 1.0 and p["dice_baselines"] == [p["dice_baseline"]]
        assert p["difference"] == pytest.approx(p["dice_encoder"] - p["dice_baseline"])
    for i, u in enumerate(units):  # a unit is its set's seeds averaged
        assert u["difference"] == pytest.approx(np.mean([p["difference"] for p in pairs[2 * i : 2 * i + 2]]))
    diffs = [u["difference"] for u in units]
    assert len(set(diffs)) > 1 and any(d != 0 for d in diffs)  # not trivially null: the encoders differ
    assert res["mean_difference"] == pytest.approx(np.mean(diffs))
    lo, hi = res["ci95"]
    assert lo < hi and lo <= res["mean_difference"] <= hi and lo <= 0.0 <= hi, (pair, res["ci95"])
    assert sum(res["sign_count"].values()) == 5
    acc = res["pretext_accuracy_encoder_features"]
    assert 0.0 <= acc["encoder"] <= 1.0 and acc["baseline"] == acc["per_baseline"][b]
    assert res["settings"]["backbone"] == "resnet10" and res["settings"]["seeds"] == [0, 1]


def test_several_baselines(prepared, tmp_path):
    """A against the mean of several random encoders, and against each one, over the same labelled sets."""
    res = _run(prepared, tmp_path / "p.json", "random:0", "random:1,random:2,random:3", seeds="0,1", labeled_volumes=3)
    assert res["baselines"] == ["random:1", "random:2", "random:3"] and set(res["per_baseline"]) == set(
        res["baselines"]
    )
    for u_i, u in enumerate(res["units"]):
        per = [res["pairs"][2 * u_i + j]["dice_baselines"] for j in range(2)]
        assert u["dice_baseline"] == pytest.approx(np.mean(per))
    each = [c["mean_difference"] for c in res["per_baseline"].values()]
    assert res["mean_difference"] == pytest.approx(np.mean(each))
    assert all(len(c["ci95"]) == 2 and sum(c["sign_count"].values()) == 3 for c in res["per_baseline"].values())


def test_same_encoder_gives_zero_differences(prepared, tmp_path):
    res = _run(prepared, tmp_path / "p.json", "random:3", "random:3", seeds=(0, 1), labeled_volumes=2)
    assert [p["difference"] for p in res["pairs"]] == [0.0] * 4
    assert res["ci95"] == [0.0, 0.0] and res["sign_count"] == {"encoder_better": 0, "baseline_better": 0, "ties": 2}
    acc = res["pretext_accuracy_encoder_features"]
    assert acc["encoder"] == acc["baseline"]


def test_encoder_file(prepared, tmp_path):
    from ideal_components.encoders import save_encoder
    from ideal_components.networks import DenseContrastiveNet

    torch.manual_seed(7)  # the encoder is built first: the same weights as random:7
    net = DenseContrastiveNet(backbone="resnet10", momentum=0.0)
    for m in net.encoder.modules():  # pre-training's statistics: replaced by the probe's re-estimation
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
    path = save_encoder(net, str(tmp_path / "models" / "pretrained_encoder.pt"))
    res = _run(prepared, tmp_path / "p.json", path, "random:7", seeds=0, labeled_volumes=1)
    assert res["pairs"][0]["difference"] == 0.0 and res["encoder"] == path
    with pytest.raises(ValueError, match="pretrained_encoder.pt"):
        _run(prepared, tmp_path / "q.json", path, "random:0", seeds=0, labeled_volumes=1, backbone="resnet18")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        _run(prepared, tmp_path / "q.json", str(tmp_path / "missing.pt"), "random:0", seeds=0, labeled_volumes=1)
    assert not (tmp_path / "q.json").exists()


def test_bad_inputs(prepared, tmp_path):
    kw = dict(seeds=0, labeled_volumes=1)
    with pytest.raises(FileNotFoundError, match="datalist.json"):
        _run(tmp_path / "nowhere", tmp_path / "p.json", "random:0", "random:1", **kw)
    for bad in ("random:x", "random:", "random:-1"):
        with pytest.raises(ValueError, match="random:SEED"):
            _run(prepared, tmp_path / "p.json", bad, "random:1", **kw)
    with pytest.raises(ValueError, match="num_labeled=100"):
        _run(prepared, tmp_path / "p.json", "random:0", "random:1", seeds=0, num_labeled=100)
    with pytest.raises(ValueError, match="labeled_volumes=50"):
        _run(prepared, tmp_path / "p.json", "random:0", "random:1", seeds=0, labeled_volumes=50)
    with pytest.raises(ValueError, match="levels"):
        _run(prepared, tmp_path / "p.json", "random:0", "random:1", levels="0,7", **kw)
    with pytest.raises(ValueError, match="progress"):
        _run(prepared, tmp_path / "p.json", "random:0", "random:1", progress="maybe", **kw)
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    for key in ("test", "training"):
        datalist = json.loads((prepared / "datalist.json").read_text())
        datalist[key] = []
        (copy / "datalist.json").write_text(json.dumps(datalist))
        with pytest.raises(ValueError, match=f"datalist.json: the '{key}' list is empty"):
            _run(copy, tmp_path / "p.json", "random:0", "random:1", **kw)
    assert not (tmp_path / "p.json").exists()


@pytest.mark.slow
def test_cli(prepared, tmp_path):
    out = tmp_path / "probe.json"
    args = ["--dataset_dir", str(prepared), "--encoder", "random:0", "--baseline", "random:1", "--out", str(out)]
    args += ["--seeds", "0,1", "--labeled_volumes", "2", "--progress", "false"]
    args += [x for k, v in FAST.items() for x in (f"--{k}", str(v))]
    proc = subprocess.run(
        [sys.executable, "-m", "ideal_components", "probe", *args], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res["pairs"]) == 4 and len(res["ci95"]) == 2 and res["independent_units"] == 2
    lines = proc.stdout.splitlines()
    assert any(line.startswith("encoder A") and "random:0" in line for line in lines)
    assert any(line.startswith("baseline B") and "random:1" in line for line in lines)
    assert f"A - B (mean of 1 baseline(s), t over 2 labelled sets): {res['mean_difference']:+.4f}" in proc.stdout
    assert "ci95 [" in proc.stdout
    assert "ties" in proc.stdout and "probe:" not in proc.stderr  # no progress bar with --progress false


def test_cache_reuses_an_encoders_results(prepared, tmp_path, monkeypatch):
    """With ``cache_dir`` an encoder probed again on the same data and settings is read back, not re-fitted: the
    random baselines of several snapshots' probes are fitted once. Other settings, data or file bytes miss."""
    import ideal_components.experiments.probe as probe_module

    cache, kw = tmp_path / "cache", dict(seeds="0,1", labeled_volumes=2)
    first = _run(prepared, tmp_path / "a.json", "random:0", "random:1", cache_dir=str(cache), **kw)
    assert len(list(cache.glob("*.json"))) == 2
    loaded = []  # the encoders built (patched outside the functions whose source keys the cache)
    real_build = probe_module.build_flexunet_encoder
    monkeypatch.setattr(probe_module, "build_flexunet_encoder", lambda *a, **k: loaded.append(1) or real_build(*a, **k))
    second = _run(prepared, tmp_path / "b.json", "random:2", "random:1", cache_dir=str(cache), **kw)
    assert len(loaded) == 1  # random:2 only: the baseline came from the cache
    assert [p["dice_baseline"] for p in second["pairs"]] == [p["dice_baseline"] for p in first["pairs"]]
    uncached = _run(prepared, tmp_path / "c.json", "random:2", "random:1", **kw)
    assert [p["dice_baseline"] for p in uncached["pairs"]] == pytest.approx(
        [p["dice_baseline"] for p in first["pairs"]], abs=1e-6
    )
    # what is read is what is used: a doctored entry shows up in the report
    entry = next(f for f in cache.glob("random1-*.json"))
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "dice": [0.5] * len(data["dice"])}))
    doctored = _run(prepared, tmp_path / "d.json", "random:2", "random:1", cache_dir=str(cache), **kw)
    assert all(p["dice_baseline"] == 0.5 for p in doctored["pairs"])
    loaded.clear()
    _run(prepared, tmp_path / "e.json", "random:2", "random:1", cache_dir=str(cache), steps=31, **kw)
    assert len(loaded) == 2  # other settings: both fitted again

    from ideal_components.experiments.probe import _cache_key
    from ideal_components.experiments.probe import _cache_path as cache_path

    def _cache_path(cache_dir, spec, dataset_dir, settings):  # the shared part of the key, then the encoder's
        return cache_path(cache_dir, spec, _cache_key(cache_dir, dataset_dir, settings))

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"one"), b.write_bytes(b"two")
    key = dict(steps=1)
    assert _cache_path(None, "random:0", str(prepared), key) is None
    assert _cache_path(str(cache), str(a), str(prepared), key) != _cache_path(str(cache), str(b), str(prepared), key)
    b.write_bytes(b"one")
    assert _cache_path(str(cache), str(a), str(prepared), key) == _cache_path(str(cache), str(b), str(prepared), key)
    before = _cache_path(str(cache), "random:0", str(prepared), key)
    real_fit = probe_module._fit
    monkeypatch.setattr(probe_module, "_fit", lambda *args: real_fit(*args))  # other code: other figures may follow
    assert _cache_path(str(cache), "random:0", str(prepared), key) != before
