"""The pre-training iteration of the rivals (PCL, Chaitanya et al.): both views through one network, with gradient.

:class:`TwoViewContrastiveTrainer` is :class:`~ideal_components.engines.ContrastivePretrainTrainer` with another
iteration: SimCLR-style, the two views of the batch go through the same network in one forward (no key encoder,
no stop-gradient, BatchNorm statistics over both views), and the loss may read per-slice facts of the batch (slice
index, slice count, volume id) that the datalist carries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import convert_to_tensor
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from ideal_components.engines import ContrastivePretrainTrainer
from ideal_components.losses import pretext_accuracy

__all__ = ["TwoViewContrastiveTrainer"]


class TwoViewContrastiveTrainer(ContrastivePretrainTrainer):
    """Both views through ``network`` with gradient; ``loss_function(z1, z2, **batch facts)``.

    One iteration: ``z = network(cat([x1, x2]))``, ``z1, z2 = z[:B], z[B:]``; ``loss = loss_function(z1, z2,
    **{name: batch[key] for name, key in loss_inputs.items()})``; backward; optimizer step. ``engine.state.output``
    holds ``"image"``, ``"image_view2"``, ``"pred"`` (``z1``), ``"loss"`` and ``"pretext_accuracy"``: the loss's
    ``retrieval_accuracy`` with the same inputs when it has one, else
    :func:`~ideal_components.losses.pretext_accuracy` of the two maps.

    Args:
        loss_inputs: loss keyword -> batch key, e.g. ``{"slice_index": "slice", "num_slices": "num_slices",
            "volume": "id"}`` (the slice items of :func:`~ideal_components.data.slices.expand_to_slices` carry
            them); default none.
        max_shift: must be 0: the rivals compare pooled features or aligned views, never shifted ones.
        other arguments: as :class:`~ideal_components.engines.ContrastivePretrainTrainer`. A network with
            ``momentum > 0`` is refused (there is no key encoder here).

    Raises:
        ValueError: ``max_shift > 0``, a network with a momentum encoder, a batch without a ``loss_inputs`` key.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        loss_inputs: Mapping[str, str] | None = None,
        max_shift: int = 0,
        **kwargs: Any,
    ) -> None:
        if int(max_shift) != 0:
            raise ValueError(
                f"TwoViewContrastiveTrainer compares unshifted views: max_shift must be 0, got {max_shift}."
            )
        bare = getattr(network, "module", network)
        if float(getattr(bare, "momentum", 0.0) or 0.0) > 0:
            raise ValueError("TwoViewContrastiveTrainer trains one network on both views: set momentum to 0.")
        self.loss_inputs = dict(loss_inputs or {})
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            max_shift=0,
            **kwargs,
        )

    def _iteration(self, engine: TwoViewContrastiveTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x1, x2 = engine._prepare_views(engine, batchdata)
        missing = [key for key in engine.loss_inputs.values() if key not in batchdata]
        if missing:
            raise ValueError(f"the batch has no {missing} (loss_inputs); keys present: {sorted(map(str, batchdata))}.")
        facts = {name: batchdata[key] for name, key in engine.loss_inputs.items()}
        engine.state.output = {Keys.IMAGE: x1, engine.view_keys[1]: x2}
        should_zero_grad, should_step = engine._accumulation_flags(engine)
        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with engine._autocast(engine):
            b = x1.shape[0]
            both = torch.cat([convert_to_tensor(x1, track_meta=False), convert_to_tensor(x2, track_meta=False)])
            z = engine.network(both)
            z1, z2 = z[:b], z[b:]
            engine.state.output[Keys.PRED] = z1
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = engine._split_loss(
                engine.loss_function(z1, z2, **facts), engine.state.output
            )
            accuracy = getattr(engine.loss_function, "retrieval_accuracy", None)
            if callable(accuracy):
                engine.state.output["pretext_accuracy"] = accuracy(z1.detach(), z2.detach(), **facts)
            else:
                engine.state.output["pretext_accuracy"] = pretext_accuracy(z1.detach(), z2.detach(), 1024)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine._backward_and_step(engine, should_step)
        engine._detach_losses(engine.state.output)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
