"""IDEAL: dense local contrastive pre-training and cross-pseudo-label fine-tuning, as MONAI bundle components."""

__version__ = "0.1.0"
