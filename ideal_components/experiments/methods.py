"""The methods a sweep compares: which bundle configs pre-train and fine-tune each one (:data:`METHODS`).

The pairs of methods that differ in one factor are compared in :mod:`.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodSpec", "METHODS"]


@dataclass(frozen=True)
class MethodSpec:
    """How one method runs: the bundle configs of its pre-training (``None``: none) and of its fine-tuning.

    ``pretrain_owner``: the method whose pre-training this one reuses (the same configs and overrides give the same
    encoder, so it runs once per seed, under ``<owner>/seed<k>/pretrain``); ``None``: its own.
    ``pretrain_decoder``: the configs of a second pre-training stage run in the same folder after the first (it reads
    ``models/pretrained_encoder.pt`` and writes ``models/pretrained_decoder.pt``, which fine-tuning loads with
    ``pretrained_decoder``); ``None``: none.
    """

    label: str
    pretrain: tuple[str, ...] | None
    finetune: tuple[str, ...]
    description: str = ""
    pretrain_owner: str | None = None
    pretrain_decoder: tuple[str, ...] | None = None


#: the methods a sweep knows, in table order
METHODS: dict[str, MethodSpec] = {
    "supervised": MethodSpec(
        "Supervised", None, ("train.json", "train_supervised.json"), "labelled slices only, random init"
    ),
    "global_cl": MethodSpec(
        "Global CL",
        ("pretrain.json", "pretrain_global.json"),
        ("train.json", "train_supervised.json"),
        "global contrastive pre-training, supervised fine-tuning",
    ),
    "global_cps": MethodSpec(
        "Global CL + CPS",
        ("pretrain.json", "pretrain_global.json"),
        ("train.json",),
        "global contrastive pre-training, cross-pseudo-label fine-tuning (ablation)",
        pretrain_owner="global_cl",
    ),
    "local_cl": MethodSpec(
        "Local CL",
        ("pretrain.json",),
        ("train.json", "train_supervised.json"),
        "IDEAL's dense local pre-training, supervised fine-tuning (ablation)",
        pretrain_owner="ideal",
    ),
    "ideal": MethodSpec(
        "IDEAL", ("pretrain.json",), ("train.json",), "dense local pre-training, cross-pseudo-label fine-tuning"
    ),
    "cps": MethodSpec("CPS", None, ("train.json",), "cross-pseudo-label fine-tuning, random init (ablation)"),
    "pcl": MethodSpec(
        "PCL + CPS",
        ("pretrain.json", "pretrain_pcl.json"),
        ("train.json",),
        "PCL's positional contrastive pre-training (Zeng et al. 2021), cross-pseudo-label fine-tuning",
    ),
    "pcl_sup": MethodSpec(
        "PCL",
        ("pretrain.json", "pretrain_pcl.json"),
        ("train.json", "train_supervised.json"),
        "PCL's positional contrastive pre-training, supervised fine-tuning (the rival as published)",
        pretrain_owner="pcl",
    ),
    "chaitanya": MethodSpec(
        "Chaitanya + CPS",
        ("pretrain.json", "pretrain_chaitanya.json"),
        ("train.json",),
        "Chaitanya et al.'s global (G^D) then decoder local pre-training (NeurIPS 2020), CPS fine-tuning",
        pretrain_decoder=("pretrain.json", "pretrain_chaitanya_decoder.json"),
    ),
    "chaitanya_sup": MethodSpec(
        "Chaitanya et al.",
        ("pretrain.json", "pretrain_chaitanya.json"),
        ("train.json", "train_supervised.json"),
        "Chaitanya et al.'s two-stage pre-training, supervised fine-tuning (the rival as published)",
        pretrain_owner="chaitanya",
        pretrain_decoder=("pretrain.json", "pretrain_chaitanya_decoder.json"),
    ),
}
