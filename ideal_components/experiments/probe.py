"""Representation probe: how much does a pre-trained encoder alone help segmentation, compared with another one?

The encoder is frozen; only its BatchNorm running statistics are re-estimated, the same way for every encoder (the
statistics reset, ``momentum=None``: a cumulative average over a fixed, evenly spaced set of ``bn_slices``
unlabelled training slices, in train mode without gradients, then eval mode). A per-pixel linear classifier (a 1x1
convolution on channel-standardised features, the standard deviations floored at a tenth of their mean: logistic
regression, Adam) is fitted on the concatenated ``levels`` of the encoder's feature maps (by default all five of a
ResNet, strides 2 to 32), each resized (bilinear) to a grid of ``1 / feature_stride`` of the slice size; its logits
are up-sampled (bilinear) to the slice size, which equals classifying bilinearly up-sampled features. The classifier
is fitted on the slices of ``num_labeled`` training volumes and scored by the test Dice (MONAI's ``compute_dice`` on
argmax predictions, foreground classes, an empty reference counts 1 for an empty prediction and 0 otherwise; mean
over the classes per volume, then over the ``test`` volumes). Slices are along the last axis, as in the bundles.

The encoder ``A`` is compared with one or several baseline encoders ``B`` (by default three random initialisations:
two random encoders can differ systematically, so one is not a null). Every (classifier seed, labelled set)
combination fits one classifier per encoder with the same seed (initialisation, slice sampling and mini-batch order)
on the same slices. The independent unit is the **labelled set**: the classifier seeds fit the same slices, so their
results are averaged within each set first. The report holds, per labelled set, ``A`` minus the mean of the
baselines, and their mean with a Student-t 95 % interval over the sets (``independent_units`` of them, ``n - 1``
degrees of freedom), the same against each baseline alone, the sign count over the sets, each encoder's mean Dice and
its pretext accuracy on the raw encoder features (``pretext_accuracy_encoder_features``:
:func:`~ideal_components.losses.pretext_accuracy` between the encoder's features of two photometric views of the same
slices, as ``pretrain.json`` draws them, the key view shifted by whole feature cells; pre-training's random affine is
left out: it is the same for both views, so it changes no correspondence). That is not the pretext accuracy that
pre-training logs (on the projection head's outputs, which the encoder file does not hold).

Command line (``--seeds 0,1,2``: python-fire reads comma-separated lists)::

    python -m ideal_components probe --dataset_dir PREPARED --encoder models/pretrained_encoder.pt \\
        --baseline random:0,random:1,random:2 --backbone resnet18 --seeds 0,1,2 --labeled_volumes 5 --out probe.json
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from monai.transforms import LoadImage
from monai.utils import convert_to_tensor
from torch import nn
from tqdm import tqdm

from ideal_components.encoders import build_flexunet_encoder, flexunet_encoder_channels, load_pretrained_encoder
from ideal_components.engines import overlapping_features, shift_image
from ideal_components.losses import pretext_accuracy
from ideal_components.utils import atomic_write_text, parse_bool, parse_pair

from .compare import t_interval

__all__ = ["probe"]


def _int_list(value: Any, name: str) -> list[int]:
    """``3``, ``"0,1 2"``, ``(0, 1)`` -> a list of distinct ints (order kept)."""
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    items = items if isinstance(items, (list, tuple)) else [items]
    out: list[int] = []
    for v in items:
        if isinstance(v, bool) or not str(v).strip().lstrip("-").isdigit():
            raise ValueError(f"{name} must be integers, got {value!r}.")
        out += [] if int(v) in out else [int(v)]
    if not out:
        raise ValueError(f"{name} is empty.")
    return out


def _load_encoder(spec: str, backbone: str, device: torch.device) -> nn.Module:
    """``random:SEED`` (``torch.manual_seed(SEED)``, then a fresh encoder) or a ``pretrained_encoder.pt`` file."""
    spec = str(spec)
    if spec.startswith("random:"):
        seed = spec[len("random:") :]
        if not seed.isdigit():
            raise ValueError(f"unknown encoder {spec!r}: write random:SEED with a non-negative integer SEED.")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            encoder = build_flexunet_encoder(backbone, in_channels=1)
        return encoder.to(device)
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"encoder file not found: {spec} (give a pretrained_encoder.pt or random:SEED).")
    holder = nn.Module()
    holder.encoder = build_flexunet_encoder(backbone, in_channels=1)
    try:
        load_pretrained_encoder(holder, spec, strict=True, required=True)
    except Exception as e:  # a foreign pickle, another backbone, no encoder keys: all name the file
        raise ValueError(f"encoder file {spec} does not load into a {backbone!r} encoder: {e}") from e
    return holder.encoder.to(device)


@torch.no_grad()
def _reestimate_batch_norm(encoder: nn.Module, slices: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Reset every BatchNorm's running statistics and average them (``momentum=None``) over ``slices``; eval mode."""
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    encoder.train()
    for chunk in slices.tensor_split(max(1, len(slices) // batch_size)):  # near-equal chunks: none of size 1
        encoder(chunk.to(device))
    encoder.eval()


@torch.no_grad()
def _features(encoder: nn.Module, x: torch.Tensor, levels: Sequence[int], stride: int, device: torch.device):
    """``(N, 1, H, W)`` slices -> ``(N, C, H // stride, W // stride)``: the ``levels`` resized and concatenated."""
    grid = (max(1, x.shape[-2] // stride), max(1, x.shape[-1] // stride))
    out = []
    for chunk in x.split(16):
        feats = encoder(chunk.to(device))
        out.append(torch.cat([F.interpolate(feats[i], size=grid, mode="bilinear") for i in levels], 1))
    return torch.cat(out)


@torch.no_grad()
def _pretext(encoder: nn.Module, slices: torch.Tensor, level: int, opts: dict, device: torch.device) -> float:
    """Mean :func:`pretext_accuracy` over ``slices`` (views and shifts drawn from a fixed seed: the same for all)."""
    g = torch.Generator().manual_seed(opts["pretext_seed"])
    correct = total = 0.0
    for x in slices.split(opts["batch_size"]):
        views = []
        for _ in range(2):  # RandScaleIntensity (x * (1 + f)), RandShiftIntensity (+ o), clipped to [0, 1]
            f = (torch.rand(len(x), 1, 1, 1, generator=g) * 2 - 1) * opts["contrast"]
            o = (torch.rand(len(x), 1, 1, 1, generator=g) * 2 - 1) * opts["brightness"]
            views.append((x * (1 + f) + o).clamp(0, 1).to(device))
        q = encoder(views[0])[level]
        limit = min(opts["max_shift"], (min(q.shape[-2:]) - 1) // 2)  # as ContrastivePretrainTrainer
        shift = tuple(torch.randint(-limit, limit + 1, (2,), generator=g).tolist()) if limit > 0 else (0, 0)
        stride = (x.shape[-2] // q.shape[-2], x.shape[-1] // q.shape[-1])
        q, k = overlapping_features(q, encoder(shift_image(views[1], shift, stride))[level], shift)
        n = q.shape[0] * q.shape[-2] * q.shape[-1]
        correct, total = correct + float(pretext_accuracy(q, k)) * n, total + n
    return correct / total


def _fit(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, opts: dict):
    """Logistic regression on standardised features (Adam, mini-batches of slices); returns the folded ``(W, b)``."""
    g = torch.Generator().manual_seed(seed)
    mean, std = feats.mean((0, 2, 3)), feats.std((0, 2, 3))
    std = std.clamp_min(0.1 * float(std.mean()) + 1e-6)  # a floor: near-constant channels must not blow up
    x = (feats - mean[:, None, None]) / std[:, None, None]
    w = (torch.randn(num_classes, feats.shape[1], 1, 1, generator=g) * 0.01).to(feats.device).requires_grad_()
    b = torch.zeros(num_classes, device=feats.device, requires_grad=True)
    optimizer, order, bs = torch.optim.Adam([w, b], lr=opts["lr"]), [], min(opts["batch_size"], len(x))
    for _ in range(opts["steps"]):
        order += torch.randperm(len(x), generator=g).tolist() if len(order) < bs else []
        idx, order = order[:bs], order[bs:]
        logits = F.interpolate(F.conv2d(x[idx], w, b), size=labels.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    w = w.detach().flatten(1) / std
    return w, b.detach() - w @ mean


def _volume(item: dict, key: str, size: tuple | None) -> torch.Tensor:
    """A prepared volume as slices: images ``(D, 1, H, W)`` float, labels ``(D, H, W)`` long (resized to ``size``)."""
    vol = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(item[key])
    vol = convert_to_tensor(vol, track_meta=False)  # a plain tensor: no MetaTensor bookkeeping per operation
    if vol.ndim != 4 or vol.shape[0] != 1:
        raise ValueError(f"{item[key]}: expected a single-channel 3D volume, got shape {tuple(vol.shape[1:])}.")
    x = vol.permute(3, 0, 1, 2).float()
    if size is not None and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="nearest" if key == "label" else "bilinear")
    return x[:, 0].round().long() if key == "label" else x


def _spaced(total: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct, evenly spaced indices in ``[0, total)``."""
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))


def _encoder_specs(value: Any, name: str) -> list[str]:
    """``"random:0,random:1"`` or a list of specs -> distinct specs, in order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    specs = []
    for v in items:
        v = str(v).strip()
        specs += [] if not v or v in specs else [v]
    if not specs:
        raise ValueError(f"{name} is empty: give an encoder file or random:SEED.")
    return specs


def _comparison(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """``A - B`` over the labelled sets (rows): the mean, its t-interval and the signs."""
    diffs = a - b
    return {
        "mean_difference": float(diffs.mean()),
        "ci95": [float(v) for v in t_interval(diffs)],
        "sign_count": {
            "encoder_better": int((diffs > 0).sum()),
            "baseline_better": int((diffs < 0).sum()),
            "ties": int((diffs == 0).sum()),
        },
    }


def probe(
    dataset_dir: str,
    encoder: str,
    baseline: Any = "random:0,random:1,random:2",
    backbone: str = "resnet18",
    out: str = "probe.json",
    seeds: Any = (0, 1, 2),
    labeled_volumes: int = 5,
    num_labeled: int = 1,
    levels: Any = (0, 1, 2, 3, 4),
    feature_stride: int = 4,
    max_train_slices: int = 64,
    bn_slices: int = 64,
    steps: int = 150,
    lr: float = 0.01,
    batch_size: int = 8,
    spatial_size: Any = None,
    pretext_level: int = -1,
    pretext_slices: int = 32,
    max_shift: int = 2,
    brightness: float = 0.3,
    contrast: float = 0.3,
    device: str = "cpu",
    progress: Any = False,
    cache_dir: str | None = None,
) -> str:
    """Compare encoder ``A`` with baseline encoders ``B`` by linear probing (see the module docstring); write ``out``.

    Args:
        dataset_dir: a prepared folder holding ``datalist.json`` (keys ``training`` and ``test``).
        encoder: ``A``: a ``pretrained_encoder.pt`` (loaded strictly) or ``random:SEED``.
        baseline: ``B``: one or several encoders of the same forms, comma-separated (default three random ones);
            ``A`` is compared with their mean and with each one.
        backbone: the FlexibleUNet backbone of both encoders.
        out: the JSON report (written atomically).
        seeds: classifier seeds (``0,1,2``); each seed and labelled set makes one pair, the seeds of a set are
            averaged (they fit the same slices: one independent unit per set).
        labeled_volumes: number of labelled sets, the independent units of the interval (5 or more): training
            volumes with a label file, sorted by id, sets starting at evenly spaced positions (distinct single
            volumes for ``num_labeled=1``).
        num_labeled: ``K``, the volumes per labelled set, consecutive in that order (the sets are disjoint while
            ``labeled_volumes * K`` does not exceed the volumes with a label).
        levels: the encoder levels to concatenate (ResNets: strides 2, 4, 8, 16, 32 for 0..4; all by default).
        feature_stride: the classifier's grid is ``1 / feature_stride`` of the slice size.
        max_train_slices: at most this many slices of a labelled set (drawn with the seed).
        bn_slices: unlabelled training slices (evenly spaced over all) for the BatchNorm statistics.
        steps: Adam steps of each classifier.
        lr: the classifier's learning rate.
        batch_size: slices per classifier step (and per BatchNorm / pretext batch).
        spatial_size: resize slices in-plane to this size (``None``: as prepared).
        pretext_level: the feature level of the pretext accuracy (``pretrain.json``'s ``feature_level``, -1; for
            several levels, the deepest).
        pretext_slices: slices (a subset of the BatchNorm slices) for the pretext accuracy.
        max_shift: the key view's shift in feature cells, at most, as in pre-training.
        brightness: photometric offset range of the views, as in pre-training.
        contrast: photometric scale range of the views, as in pre-training.
        device: torch device (``cpu``, ``cuda``).
        progress: show a tqdm progress bar.
        cache_dir: a folder where each encoder's per-pair Dice and pretext accuracy are stored and read back when the
            same encoder (the same ``random:SEED``, or a file with the same bytes) is probed again on the same
            datalist with the same settings (the key: a SHA-256 of all of them, torch's version and the probe's
            code). Several probes against the same random baselines then fit the baselines' classifiers once.
            ``None``: no cache.

    Returns:
        ``out``; its JSON holds ``mean_difference`` (A minus the baselines' mean, over the labelled sets), ``ci95``
        (t-interval over the sets), ``independent_units`` (the number of sets), ``sign_count`` (over the sets),
        ``per_baseline`` (the same three against each baseline), ``mean_dice``, ``pretext_accuracy_encoder_features``,
        ``units`` (per labelled set), ``pairs`` (``seed``, ``labeled``, ``dice_encoder``, ``dice_baseline``: the
        baselines' mean, ``dice_baselines``, ``difference``) and ``settings``.

    Example::

        python -m ideal_components probe --dataset_dir prepared --encoder models/pretrained_encoder.pt \\
            --baseline random:0,random:1,random:2 --backbone resnet18 --seeds 0,1,2 --labeled_volumes 5 --out probe.json
    """
    settings = {k: v for k, v in locals().items() if k not in ("encoder", "baseline", "out", "progress", "cache_dir")}
    baselines = _encoder_specs(baseline, "baseline")
    seeds, levels = _int_list(seeds, "seeds"), _int_list(levels, "levels")
    n_levels, dev = len(flexunet_encoder_channels(backbone)), torch.device(device)
    if any(s < 0 for s in seeds) or any(not -n_levels <= i < n_levels for i in levels + [int(pretext_level)]):
        raise ValueError(f"seeds must be >= 0 and levels in [{-n_levels}, {n_levels - 1}]: {seeds}, {levels}.")
    size = None if spatial_size in (None, "None", "none", "") else parse_pair(spatial_size, "spatial_size", int)
    settings.update(seeds=seeds, levels=levels, spatial_size=size, steps=int(steps), lr=float(lr), device=str(dev))
    settings.update(batch_size=int(batch_size), max_shift=int(max_shift), pretext_seed=0)
    show = parse_bool(progress, "progress")
    datalist, split = _read_datalist(dataset_dir)
    groups = _labeled_groups(split["training"], int(labeled_volumes), int(num_labeled), dataset_dir)
    # the same unlabelled slices for every encoder: evenly spaced over all training slices
    counts = [int(d["num_slices"]) for d in split["training"]]
    picks, offsets = _spaced(sum(counts), max(2, int(bn_slices))), np.cumsum([0] + counts)
    vol = np.searchsorted(offsets, picks, side="right") - 1  # the volume of each picked slice
    bn_x = torch.cat(
        [_volume(split["training"][v], "image", size)[picks[vol == v] - offsets[v]] for v in np.unique(vol)]
    )
    pretext_x = bn_x[_spaced(len(bn_x), max(1, int(pretext_slices)))]
    sets = [
        (torch.cat([_volume(d, "image", size) for d in g]), torch.cat([_volume(d, "label", size) for d in g]))
        for g in groups
    ]
    test = [(_volume(d, "image", size), _volume(d, "label", size)) for d in split["test"]]
    names = (datalist.get("preparation") or {}).get("label_names") or {}
    num_classes = max([len(names)] + [int(y.max()) + 1 for _, y in sets + test])
    settings.update(num_classes=num_classes, bn_slices=len(bn_x), pretext_slices=len(pretext_x))

    dice, pretext = {}, {}
    bar = tqdm(total=(1 + len(baselines)) * (len(sets) * len(seeds) + len(test)), desc="probe", disable=not show)
    labeled = [[d.get("id", d["image"]) for d in g] for g in groups]
    test_ids = [d.get("id", d["image"]) for d in split["test"]]
    cache_key = _cache_key(cache_dir, dataset_dir, {**settings, "labeled": labeled, "test_volumes": test_ids})
    for spec in dict.fromkeys([str(encoder), *baselines]):  # an encoder named twice is probed once
        cached = _cache_path(cache_dir, spec, cache_key)
        if cached and os.path.isfile(cached):
            with open(cached) as f:
                entry = json.load(f)
            pretext[spec], dice[spec] = float(entry["pretext"]), [float(v) for v in entry["dice"]]
            bar.update(len(sets) * len(seeds) + len(test))
            continue
        net = _load_encoder(spec, backbone, dev).requires_grad_(False)
        _reestimate_batch_norm(net, bn_x, settings["batch_size"], dev)
        pretext[spec] = _pretext(net, pretext_x, int(pretext_level), settings, dev)
        dice[spec] = _probe_dice(net, sets, test, seeds, levels, int(feature_stride), num_classes, settings, dev, bar)
        if cached:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            atomic_write_text(cached, json.dumps({"encoder": spec, "pretext": pretext[spec], "dice": dice[spec]}))
    bar.close()

    # (labelled set, seed) pairs; the seeds of a set are averaged: one unit per set
    shape = (len(sets), len(seeds))
    dice_a = np.asarray(dice[str(encoder)]).reshape(shape)
    dice_b = np.stack([np.asarray(dice[b]).reshape(shape) for b in baselines])  # (baselines, sets, seeds)
    pairs = [
        {
            "seed": s,
            "labeled": labeled[i],
            "dice_encoder": float(dice_a[i, j]),
            "dice_baseline": float(dice_b[:, i, j].mean()),
            "dice_baselines": [float(v) for v in dice_b[:, i, j]],
            "difference": float(dice_a[i, j] - dice_b[:, i, j].mean()),
        }
        for i in range(len(sets))
        for j, s in enumerate(seeds)
    ]
    unit_a, unit_b = dice_a.mean(1), dice_b.mean(2)  # (sets,), (baselines, sets)
    units = [
        {"labeled": labeled[i], "dice_encoder": float(unit_a[i]), "dice_baseline": float(unit_b[:, i].mean()),
         "difference": float(unit_a[i] - unit_b[:, i].mean())}
        for i in range(len(sets))
    ]  # fmt: skip
    result = {
        "encoder": str(encoder),
        "baseline": ",".join(baselines),
        "baselines": baselines,
        **_comparison(unit_a, unit_b.mean(0)),
        "independent_units": len(sets),
        "unit": "labelled set (classifier seeds averaged within it)",
        "per_baseline": {b: _comparison(unit_a, unit_b[k]) for k, b in enumerate(baselines)},
        "mean_dice": {"encoder": float(dice_a.mean()), "baseline": float(dice_b.mean())},
        "pretext_accuracy_encoder_features": {
            "encoder": pretext[str(encoder)],
            "baseline": float(np.mean([pretext[b] for b in baselines])),
            "per_baseline": {b: pretext[b] for b in baselines},
        },
        "units": units,
        "pairs": pairs,
        "settings": {**settings, "test_volumes": test_ids},
    }
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"probe ({backbone}, levels {levels}): {len(test)} test volumes, {len(sets)} labelled sets of "
          f"{num_labeled} (the units) x {len(seeds)} classifier seeds, {len(baselines)} baseline(s)")  # fmt: skip
    print(_result_table(result))
    return out


#: the functions whose code decides a probe's figures (their source is part of the cache key)
_RESULT_FUNCTIONS = ("_load_encoder", "_reestimate_batch_norm", "_features", "_pretext", "_fit", "_volume",
                     "_spaced", "_labeled_groups", "_probe_dice")  # fmt: skip


def _cache_key(cache_dir: str | None, dataset_dir: str, settings: dict[str, Any]) -> Any:
    """The part of the cache key every encoder of one probe shares (``None`` without a cache): a SHA-256 of the
    source of every function that computes a result (a change to the probe's code misses the old entries), the
    datalist (its path and bytes), the settings and torch's version."""
    if cache_dir in (None, "", "None", "none"):
        return None
    key = hashlib.sha256()
    for fn in _RESULT_FUNCTIONS:
        key.update(inspect.getsource(globals()[fn]).encode())
    datalist_file = os.path.abspath(os.path.join(dataset_dir, "datalist.json"))
    with open(datalist_file, "rb") as f:
        key.update(datalist_file.encode() + hashlib.sha256(f.read()).digest())
    key.update(json.dumps({**settings, "torch": torch.__version__}, sort_keys=True, default=str).encode())
    return key


def _cache_path(cache_dir: str | None, spec: str, shared_key: Any) -> str | None:
    """The cache file of one encoder's probe results (``None`` without a cache): ``shared_key`` (:func:`_cache_key`)
    extended with the encoder (``random:SEED``, or the bytes of its file)."""
    if shared_key is None:
        return None
    key = shared_key.copy()
    if spec.startswith("random:"):
        key.update(spec.encode())
    else:
        with open(spec, "rb") as f:
            key.update(hashlib.sha256(f.read()).digest())
    name = spec.replace("random:", "random") if spec.startswith("random:") else "file"
    return os.path.join(str(cache_dir), f"{name}-{key.hexdigest()[:20]}.json")


def _read_datalist(dataset_dir: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The datalist and its ``training`` / ``test`` items with absolute paths (both lists must be non-empty)."""
    datalist_file = os.path.join(dataset_dir, "datalist.json")
    if not os.path.isfile(datalist_file):
        raise FileNotFoundError(f"datalist not found: {datalist_file} (run prepare_acdc / prepare_mmwhs first).")
    with open(datalist_file) as f:
        datalist = json.load(f)
    split = {}
    for key in ("training", "test"):
        split[key] = [
            {**d, **{k: os.path.join(dataset_dir, d[k]) for k in ("image", "label") if d.get(k)}}
            for d in datalist.get(key) or []
        ]
        if not split[key]:
            raise ValueError(f"{datalist_file}: the {key!r} list is empty or missing.")
    return datalist, split


def _labeled_groups(training: list[dict[str, Any]], labeled_volumes: int, num_labeled: int, dataset_dir: str):
    """The labelled sets: training volumes with a label file, by id; sets of ``num_labeled`` consecutive volumes
    from ``labeled_volumes`` evenly spaced starts."""
    ids = sorted((str(d.get("id", d["image"])), i) for i, d in enumerate(training) if d.get("label") and
                 os.path.isfile(d["label"]))  # fmt: skip
    n, k = len(ids), num_labeled
    if not 1 <= k <= n or not 1 <= labeled_volumes <= n:
        raise ValueError(
            f"{os.path.join(dataset_dir, 'datalist.json')}: {n} training volumes have a label; cannot pick "
            f"labeled_volumes={labeled_volumes} distinct sets of num_labeled={num_labeled} volumes."
        )
    return [[training[ids[(i * n // labeled_volumes + j) % n][1]] for j in range(k)] for i in range(labeled_volumes)]


def _probe_dice(net, sets, test, seeds, levels, feature_stride, num_classes, settings, dev, bar) -> list[float]:
    """Fit one linear classifier per (labelled set, seed) on ``net``'s features and return each one's mean test
    Dice, in (set, seed) order."""
    weights, biases = [], []
    for x, y in sets:
        feats = _features(net, x, levels, feature_stride, dev)
        for seed in seeds:
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[
                : int(settings["max_train_slices"])
            ]
            keep = keep.sort().values
            w, b = _fit(feats[keep.to(dev)], y[keep].to(dev), num_classes, seed, settings)
            weights, biases = weights + [w], biases + [b]
            bar.update()
    w_all, b_all, per_volume = torch.cat(weights)[..., None, None], torch.cat(biases), []
    for x, y in test:  # every classifier at once: (D, M * K, h, w) logits, argmax -> (M, H, W, D)
        logits = F.conv2d(_features(net, x, levels, feature_stride, dev), w_all, b_all)
        logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear").unflatten(1, (len(weights), -1))
        pred = F.one_hot(logits.argmax(2).permute(1, 2, 3, 0), num_classes).permute(0, 4, 1, 2, 3).float()
        ref = F.one_hot(y.to(dev).permute(1, 2, 0), num_classes).permute(3, 0, 1, 2)[None].expand_as(pred)
        per_volume.append(compute_dice(pred, ref.float(), include_background=False, ignore_empty=False).mean(1))
        bar.update()
    return torch.stack(per_volume).mean(0).tolist()


def _result_table(result: dict[str, Any]) -> str:
    """The stdout table: each encoder's mean Dice and encoder-feature pretext accuracy, then A - B (the baselines'
    mean, then each baseline) with its t-interval over the labelled sets and the signs."""
    acc = result["pretext_accuracy_encoder_features"]

    def short(spec: str) -> str:
        return spec if len(spec) <= 40 else "..." + spec[-37:]

    mean_a = float(np.mean([u["dice_encoder"] for u in result["units"]]))
    lines = [f"{'':12} {'':<40} {'mean Dice':>9} {'pretext acc (encoder features)':>30}"]
    lines.append(f"{'encoder A':<12} {short(result['encoder']):<40} {mean_a:9.4f} {acc['encoder']:30.4f}")
    for b in result["baselines"]:
        mean_b = float(np.mean([p["dice_baselines"][result["baselines"].index(b)] for p in result["pairs"]]))
        lines.append(f"{'baseline B':<12} {short(b):<40} {mean_b:9.4f} {acc['per_baseline'][b]:30.4f}")

    def row(name: str, c: dict[str, Any]) -> str:
        sc, ci = c["sign_count"], c["ci95"]
        return (
            f"{name}: {c['mean_difference']:+.4f}  ci95 [{ci[0]:+.4f}, {ci[1]:+.4f}]  "
            f"A>B {sc['encoder_better']}  A<B {sc['baseline_better']}  ties {sc['ties']}"
        )

    n = result["independent_units"]
    lines.append(row(f"A - B (mean of {len(result['baselines'])} baseline(s), t over {n} labelled sets)", result))
    if len(result["baselines"]) > 1:
        lines += [row(f"A - {short(b)}", c) for b, c in result["per_baseline"].items()]
    return "\n".join(lines)
