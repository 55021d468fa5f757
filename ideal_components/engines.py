"""IDEAL's two training stages as MONAI :class:`~monai.engines.SupervisedTrainer` subclasses.

- :class:`ContrastivePretrainTrainer`: dense local (or global) contrastive pre-training of a
  :class:`~ideal_components.networks.DenseContrastiveNet` on two views of each image.
- :class:`CrossPseudoLabelTrainer`: cross-pseudo-label fine-tuning of a
  :class:`~ideal_components.networks.TwoBranchFlexibleUNet` on batches that mix labelled and unlabelled slices.

Only ``_iteration`` differs from SupervisedTrainer: the ignite events (``IterationEvents.FORWARD_COMPLETED``,
``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``), ``engine.state.output`` (a dict with
``"image"``, ``"loss"`` as a tensor, ...; set before ``MODEL_COMPLETED``), AMP and gradient accumulation follow
SupervisedTrainer, so MONAI / ignite handlers (StatsHandler, TensorBoardStatsHandler, CheckpointSaver,
ValidationHandler, LrScheduleHandler, EarlyStopHandler, ...) work unchanged. AMP uses ``torch.autocast`` on the
engine's device type (bfloat16 by default on CPU) and a ``GradScaler`` on CUDA only.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.utils import IgniteInfo, convert_to_tensor, min_version, optional_import
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from ideal_components.batchnorm import batch_norm_groups, convert_group_batch_norm, group_batch_norm_layers
from ideal_components.data.sampler import set_loader_epoch
from ideal_components.distributed import unwrap_network
from ideal_components.losses import pretext_accuracy

if TYPE_CHECKING:
    from ignite.engine import Engine, EventEnum, Events
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
    Metric, _ = optional_import("ignite.metrics", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Metric")
    EventEnum, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "EventEnum")

__all__ = [
    "ContrastivePretrainTrainer",
    "CrossPseudoLabelTrainer",
    "forward_both",
    "shift_image",
    "overlapping_features",
    "BATCH_STATISTICS",
    "default_amp",
]


def default_amp(device: torch.device | str) -> bool:
    """Whether the bundles train and infer with mixed precision (``amp``) by default on ``device``.

    - CPU (and other non-CUDA devices): no.
    - CUDA before Ampere (compute capability < 8): yes; their float32 convolutions have no tensor cores (reasoned,
      not measured).
    - CUDA from Ampere on: no; cuDNN already runs float32 convolutions on TF32 tensor cores, and AMP was not faster
      on the GPU measured (``benchmarks/results/gpu_options.md``; ``benchmarks/bench_gpu_options.py`` measures
      yours). ``--amp True`` turns it on.
    - ROCm (``torch.version.hip``): yes (not measured).

    Args:
        device: the device of the run, a ``torch.device`` or its string (``"cuda:1"``, ``"cpu"``).

    Example::

        >>> default_amp("cpu")
        False
    """
    device = torch.device(device)
    if device.type != "cuda":
        return False
    if torch.version.hip is not None:
        return True
    return torch.cuda.get_device_capability(device)[0] < 8


#: how :class:`CrossPseudoLabelTrainer` gives the labelled and the unlabelled slices their BatchNorm statistics
BATCH_STATISTICS = ("per_group", "separate_forwards", "joint")
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _accepts_kwarg(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def forward_both(network: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both branches' logits of a two-branch network, in a way that keeps DDP's gradient synchronisation.

    - If the bare network's ``forward`` accepts ``branch``: ``network(inputs, branch="both")`` (through the wrapper,
      so ``DistributedDataParallel`` sees the forward and all-reduces the gradients of both branches).
    - Else, for an unwrapped network with ``forward_both``: ``network.forward_both(inputs)``.
    - Else (a wrapped network without ``forward(x, branch=...)``): ``ValueError``, since calling
      ``network.module.forward_both`` would bypass DDP's gradient synchronisation.

    Args:
        network: the (possibly DDP-wrapped) two-branch network.
        inputs: ``(B, C, *spatial)``.

    Returns:
        ``(logits_a, logits_b)``.

    Example:
        >>> logits_a, logits_b = forward_both(TwoBranchFlexibleUNet(backbone="resnet10"), x)
    """
    bare = unwrap_network(network)
    if _accepts_kwarg(bare.forward, "branch"):
        out = network(inputs, branch="both")
    elif bare is network and callable(getattr(network, "forward_both", None)):
        out = network.forward_both(inputs)  # type: ignore[operator]
    elif callable(getattr(bare, "forward_both", None)):
        raise ValueError(
            f"{type(bare).__name__} is wrapped ({type(network).__name__}) and its forward has no `branch` argument: "
            "calling `.module.forward_both` would bypass the wrapper's gradient synchronisation. Give the network "
            "`forward(x, branch='both')`."
        )
    else:
        raise ValueError(
            f"{type(bare).__name__} has neither `forward(x, branch='both')` nor `forward_both(x)`; "
            "CrossPseudoLabelTrainer needs both branches' logits."
        )
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(f"the two-branch forward must return (logits_a, logits_b), got {type(out).__name__}.")
    return out[0], out[1]


class _TwoStageTrainerBase(SupervisedTrainer):
    """Shared machinery: AMP on any device, gradient-accumulation flags, batch-sampler epochs, loss parts.

    Both trainers take :class:`~monai.engines.SupervisedTrainer`'s arguments, with its defaults, and pass them on
    unchanged: ``epoch_length``, ``non_blocking``, ``prepare_batch``, ``iteration_update``, ``inferer`` (unused by
    the iterations; kept so that bundles can define ``train#inferer``), ``postprocessing``, ``key_train_metric``,
    ``additional_metrics``, ``metric_cmp_fn``, ``train_handlers``, ``amp`` (``torch.autocast`` on the device type,
    a ``GradScaler`` on CUDA only), ``event_names``, ``event_to_attr``, ``decollate`` (default True as
    SupervisedTrainer: MONAI's ``from_engine(["loss"], first=True)`` reads the loss from the decollated list only;
    with False use ``"$lambda x: x['loss']"``), ``optim_set_to_none``, ``to_kwargs``, ``amp_kwargs`` (e.g.
    ``{"dtype": torch.bfloat16}``), ``accumulation_steps``, ``compile``. One default differs: ``compile_kwargs``
    is ``{"dynamic": False}`` (the batch shape is fixed; with dynamic shapes torch 2.13's inductor fails on MONAI's
    ResNet encoders).
    """

    def __init__(self, train_data_loader: Iterable | DataLoader, compile_kwargs: dict | None = None, **kwargs: Any):
        super().__init__(
            train_data_loader=train_data_loader,
            compile_kwargs={"dynamic": False} if compile_kwargs is None else compile_kwargs,
            **kwargs,
        )
        # MONAI's Workflow only sets the epoch of a DistributedSampler used as `sampler`; do it for batch samplers too
        if isinstance(train_data_loader, DataLoader):

            def _set_loader_epoch(engine: Engine) -> None:
                set_loader_epoch(train_data_loader, engine.state.epoch)

            self.add_event_handler(Events.EPOCH_STARTED, _set_loader_epoch)

    def run(self) -> None:  # type: ignore[override]
        """Run training; with ``amp`` a ``GradScaler`` is used on CUDA devices only (bfloat16 needs none)."""
        device = self.state.device
        device_type = device.type if isinstance(device, torch.device) else "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and device_type == "cuda" else None
        Workflow.run(self)

    def _autocast(self, engine: Any) -> Any:
        device = engine.state.device
        device_type = device.type if isinstance(device, torch.device) else "cuda"
        return torch.autocast(device_type, **engine.amp_kwargs) if engine.amp else contextlib.nullcontext()

    @staticmethod
    def _accumulation_flags(engine: Any) -> tuple[bool, bool]:
        acc = engine.accumulation_steps
        if acc <= 1:
            return True, True
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local_iter = (engine.state.iteration - 1) % epoch_length
            return local_iter % acc == 0, (local_iter + 1) % acc == 0 or (local_iter + 1) == epoch_length
        local_iter = engine.state.iteration - 1
        return local_iter % acc == 0, (local_iter + 1) % acc == 0

    def _backward_and_step(self, engine: Any, should_step: bool) -> bool:
        """Backward of ``output[LOSS]`` (scaled for accumulation / AMP), fire BACKWARD_COMPLETED, maybe step."""
        loss = engine.state.output[Keys.LOSS]
        acc = engine.accumulation_steps
        loss = loss / acc if acc > 1 else loss
        scaler = engine.scaler if engine.amp else None
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if scaler is not None:
                scaler.step(engine.optimizer)
                scaler.update()
            else:
                engine.optimizer.step()
        return should_step

    @staticmethod
    def _split_loss(result: Any, output: dict) -> torch.Tensor:
        """Put a loss (a tensor, or a dict with ``"loss"`` and parts) into ``output``; return the total loss."""
        if isinstance(result, Mapping):
            if "loss" not in result:
                raise ValueError(f"a loss returning a dict must have a 'loss' entry, got keys {sorted(result)}.")
            for k, v in result.items():
                if k != "loss":
                    output[k if str(k).startswith("loss") else f"loss_{k}"] = v
            result = result["loss"]
        if not isinstance(result, torch.Tensor):
            raise ValueError(f"the loss function must return a tensor (or a dict of tensors), got {type(result)}.")
        return result.mean()

    @staticmethod
    def _detach_losses(output: dict) -> None:
        for k, v in list(output.items()):
            if str(k).startswith(Keys.LOSS) and isinstance(v, torch.Tensor):
                output[k] = v.detach()


# query locations per image scored by the logged pretext accuracy (bounds its memory on fine maps)
_PRETEXT_QUERIES = 1024


def _as_list(maps: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One projection map, or one per level, as a list."""
    return list(maps) if isinstance(maps, (list, tuple)) else [maps]


def _draw_shift(max_shift: int, device: torch.device) -> tuple[int, int]:
    """A random ``(dy, dx)`` in ``[-max_shift, max_shift]`` feature cells (the global torch RNG: seeded by
    ``monai.utils.set_determinism``)."""
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
    return int(dy), int(dx)


def shift_image(x: torch.Tensor, shift: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Translate a batch of 2D images circularly by ``shift`` feature cells of size ``stride`` pixels.

    Content at pixel ``(y, x)`` moves to ``(y + dy * sy, x + dx * sx)`` (modulo the image size), so the feature at
    cell ``(i, j)`` of the original corresponds to cell ``(i + dy, j + dx)`` of the shifted image. Circular, so that
    the shifted view holds exactly the original's pixels: a filled band (zeros after the views' brightness offset)
    would stand out and tell the network the shift; the wrapped band is left out of the comparison
    (:func:`overlapping_features`).

    Args:
        x: ``(B, C, H, W)``.
        shift: ``(dy, dx)`` in feature cells.
        stride: the feature map's stride ``(sy, sx)`` in pixels.
    """
    return torch.roll(x, shifts=(shift[0] * stride[0], shift[1] * stride[1]), dims=(-2, -1))


def overlapping_features(q: torch.Tensor, k: torch.Tensor, shift: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The corresponding cells of query maps ``q`` and key maps ``k`` of views shifted by ``shift`` cells.

    ``q[..., i, j]`` corresponds to ``k[..., i + dy, j + dx]``; returns both maps cropped to the overlap so that
    location ``n`` of the two outputs corresponds (what :class:`~ideal_components.losses.LocalContrastiveLoss`
    expects).
    """
    dy, dx = shift
    if (dy, dx) == (0, 0):
        return q, k
    h, w = q.shape[-2:]
    q = q[..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    k = k[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    return q, k


class ContrastivePretrainTrainer(_TwoStageTrainerBase):
    """Contrastive pre-training on two views of each image, with an optional momentum key encoder.

    One iteration: ``x1, x2 = batch[view_keys[0]], batch[view_keys[1]]``; ``q = network(x1)`` (queries, with
    gradient); ``k = network.forward_key(x2)`` (keys, no gradient; on the bare module under DDP); ``loss =
    loss_function(q, k)``; backward; optimizer step; then, if the network has ``momentum > 0``,
    ``network.momentum_update()`` (EMA of the key encoder, after the step).

    A network that projects several encoder levels (``DenseContrastiveNet(feature_level=[-1, -2])``) returns one
    map per level: the loss is then the sum of ``loss_function`` over the levels, each on its own maps.

    ``engine.state.output``: ``{"image": x1, "image_view2": x2, "pred": q, "loss": loss, "pretext_accuracy": acc}``
    (``loss`` a detached scalar tensor; when the loss function returns a dict, its ``"loss"`` entry is the loss and
    the other entries are added as ``"loss_<name>"``; ``acc`` the top-1 positive retrieval of the batch,
    :func:`~ideal_components.losses.pretext_accuracy` on at most 1024 query locations per image, the mean over the
    levels; with several levels ``pred`` is the list of query maps and ``"loss_level<i>"`` /
    ``"pretext_accuracy_level<i>"`` hold each level's figures, in the network's level order); with
    ``decollate=True`` it becomes a list of per-item dicts after ``MODEL_COMPLETED`` (the scalars replicated in
    each).

    Args:
        device: the device to train on.
        max_epochs: number of epochs.
        train_data_loader: the data loader of dicts holding both views (``view_keys``).
        network: e.g. :class:`~ideal_components.networks.DenseContrastiveNet`; needs ``forward(x)`` (queries) and
            ``forward_key(x)`` (keys without gradient), optionally ``momentum`` and ``momentum_update()``.
        optimizer: the optimizer of the query parameters.
        loss_function: ``loss_function(q, k)`` -> scalar tensor (or a dict with ``"loss"``), e.g.
            :class:`~ideal_components.losses.LocalContrastiveLoss`.
        prepare_batch: ``None`` (default) takes the two views from the batch dict by ``view_keys``; otherwise a
            callable ``(batchdata, device, non_blocking, **to_kwargs) -> (x1, x2)``.
        view_keys: the batch keys of the two views.
        max_shift: translate the key view by a random whole number of feature cells in ``[-max_shift, max_shift]``
            (per iteration, both axes, circular so that no filled band gives the shift away; cells of the coarsest
            projected map) and compare only the overlapping cells. With views of identical geometry a network can
            match location *i* to location *i* from position alone (padding makes absolute position visible); the
            shift removes that shortcut while keeping exact correspondences. Default 2, as ``pretrain.json``
            (without the shift the pre-training learns position and fine-tuning from it collapses); ``0``: off.
        **kwargs: :class:`~monai.engines.SupervisedTrainer`'s other arguments, passed on with its defaults (one
            exception: ``compile_kwargs`` defaults to ``{"dynamic": False}``); see ``_TwoStageTrainerBase``.
            With ``accumulation_steps`` the momentum update follows each optimizer step; ``compile`` compiles the
            query forward (the key forward runs eagerly).

    Raises:
        ValueError: the network has no ``forward_key``; a view key is missing from a batch.

    Example::

        net = DenseContrastiveNet(backbone="resnet10", feature_level=-2, momentum=0.99)
        trainer = ContrastivePretrainTrainer(
            device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=net,
            optimizer=torch.optim.Adam(net.parameters(), 1e-4), loss_function=LocalContrastiveLoss(),
            train_handlers=[StatsHandler(output_transform=from_engine(["loss"], first=True))])
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        prepare_batch: Callable | None = None,
        view_keys: Sequence[str] = ("image", "image_view2"),
        max_shift: int = 2,
        **kwargs: Any,
    ) -> None:
        view_keys = tuple(view_keys)
        if int(max_shift) < 0:
            raise ValueError(f"max_shift must be >= 0 feature cells, got {max_shift}.")
        if len(view_keys) != 2:
            raise ValueError(f"view_keys must name exactly two batch keys, got {view_keys}.")
        if not callable(getattr(unwrap_network(network), "forward_key", None)):
            raise ValueError(
                f"{type(unwrap_network(network)).__name__} has no forward_key(x): ContrastivePretrainTrainer needs "
                "a network with query (forward) and key (forward_key) projections, e.g. DenseContrastiveNet."
            )
        self.view_keys = view_keys
        self.max_shift = int(max_shift)
        self.custom_prepare_batch = prepare_batch is not None
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            prepare_batch=default_prepare_batch if prepare_batch is None else prepare_batch,
            **kwargs,
        )

    @staticmethod
    def _prepare_views(engine: Any, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if engine.custom_prepare_batch:
            views = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
            if not isinstance(views, (tuple, list)) or len(views) < 2:
                raise ValueError("a custom prepare_batch of ContrastivePretrainTrainer must return (view1, view2).")
            return views[0], views[1]
        if not isinstance(batchdata, Mapping):
            raise ValueError(f"ContrastivePretrainTrainer expects dict batches with keys {engine.view_keys}.")
        missing = [k for k in engine.view_keys if k not in batchdata]
        if missing:
            raise ValueError(
                f"the batch has no {missing} (view_keys={engine.view_keys}); "
                f"keys present: {sorted(map(str, batchdata))}."
            )
        x1, x2 = (
            batchdata[k].to(device=engine.state.device, non_blocking=engine.non_blocking, **engine.to_kwargs)
            for k in engine.view_keys
        )
        return x1, x2

    def _iteration(self, engine: ContrastivePretrainTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One contrastive iteration (see the class docstring); returns ``engine.state.output``.

        Raises:
            ValueError: when ``batchdata`` is None or lacks a view.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x1, x2 = engine._prepare_views(engine, batchdata)
        bare = unwrap_network(engine.network)
        engine.state.output = {Keys.IMAGE: x1, engine.view_keys[1]: x2}
        should_zero_grad, should_step = engine._accumulation_flags(engine)

        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        with engine._autocast(engine):
            # plain tensors into the network: a MetaTensor would route every layer's operations through its
            # __torch_function__, and torch.compile needs plain tensors
            queries = _as_list(engine.network(convert_to_tensor(x1, track_meta=False)))
            # the shift is drawn in cells of the coarsest projected map, a whole number of cells at every level;
            # keep at least half of each axis overlapping there (a 2x2 map is never shifted)
            coarsest = min(queries, key=lambda t: t.shape[-1])
            limit = min(engine.max_shift, (min(coarsest.shape[-2:]) - 1) // 2)
            shift = _draw_shift(limit, x1.device) if limit > 0 else (0, 0)
            stride = (x1.shape[-2] // coarsest.shape[-2], x1.shape[-1] // coarsest.shape[-1])
            with torch.no_grad():
                x2 = convert_to_tensor(x2, track_meta=False)
                keys = _as_list(bare.forward_key(shift_image(x2, shift, stride) if shift != (0, 0) else x2))
            pairs = []
            for q, k in zip(queries, keys):
                ratio = (q.shape[-2] // coarsest.shape[-2], q.shape[-1] // coarsest.shape[-1])
                pairs.append(overlapping_features(q, k, (shift[0] * ratio[0], shift[1] * ratio[1])))
            engine.state.output[Keys.PRED] = pairs[0][0] if len(pairs) == 1 else [q for q, _ in pairs]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            # the multi-level loss is the sum of the levels' losses; parts are logged per level
            losses = [engine._split_loss(engine.loss_function(q, k.detach()), engine.state.output) for q, k in pairs]
            engine.state.output[Keys.LOSS] = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
            accuracy = [pretext_accuracy(q.detach(), k, max_queries=_PRETEXT_QUERIES) for q, k in pairs]
            engine.state.output["pretext_accuracy"] = (
                accuracy[0] if len(accuracy) == 1 else torch.stack(accuracy).mean()
            )
            if len(pairs) > 1:
                for i, (loss, acc) in enumerate(zip(losses, accuracy)):
                    engine.state.output[f"loss_level{i}"] = loss
                    engine.state.output[f"pretext_accuracy_level{i}"] = acc
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if engine._backward_and_step(engine, should_step) and float(getattr(bare, "momentum", 0.0) or 0.0) > 0:
            update = getattr(bare, "momentum_update", None)
            if callable(update):
                update()
        engine._detach_losses(engine.state.output)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class CrossPseudoLabelTrainer(_TwoStageTrainerBase):
    """Cross-pseudo-label fine-tuning of a two-branch segmentation network on mixed labelled/unlabelled batches.

    Batch dict: ``"image"`` ``(B, C, H, W)``, ``"label"`` ``(B, 1, H, W)`` (placeholders for unlabelled slices, see
    :class:`~ideal_components.transforms.EnsureLabeld`), ``labeled_key`` ``(B,)`` 0/1 flags (see
    :class:`~ideal_components.data.sampler.LabeledUnlabeledBatchSampler` for the batch composition).

    One iteration: ``logits_a, logits_b = forward_both(network, image)`` with each BatchNorm layer normalising
    the labelled and the unlabelled slices with their own statistics (``batch_statistics``), in batch order;
    ``parts = loss_function.compute(logits_a, logits_b, label, labeled, epoch=e)`` with the fractional epoch
    ``e = state.epoch - 1 + (iteration in epoch) / epoch_length`` (for ramp-ups); backward of ``parts["loss"]``;
    optimizer step. A loss without ``compute`` is called as ``loss_function(logits_a, logits_b, label, labeled)``
    (a tensor or a dict).

    ``engine.state.output``: ``{"image", "label", "labeled", "pred": logits_a, "pred_b": logits_b, "loss",
    "loss_supervised", "loss_cross_pseudo"}`` (+ ``"loss_<part>"`` for other parts), losses as detached tensors;
    with ``decollate=True`` it becomes a list of per-item dicts after ``MODEL_COMPLETED``.

    Distributed training: :func:`forward_both` calls
    ``network(x, branch="both")`` when the network's forward accepts ``branch``, so that DDP's forward (and so its
    gradient all-reduce) covers both branches; a DDP-wrapped network without it is refused.

    Args:
        device: the device to train on.
        max_epochs: number of epochs.
        train_data_loader: data loader of mixed batches, e.g. ``DataLoader(ds, batch_sampler=LabeledUnlabeled...)``.
        network: e.g. :class:`~ideal_components.networks.TwoBranchFlexibleUNet`.
        optimizer: the optimizer.
        loss_function: e.g. :class:`~ideal_components.losses.CrossPseudoLabelLoss`.
        labeled_key: batch key of the 0/1 flags.
        batch_statistics: how the labelled and the unlabelled slices get their BatchNorm batch statistics.
            With one joint forward the few labelled volumes, which fill half of every batch, bias the statistics
            and the test Dice collapses while the validation Dice looks fine (measured on the demo:
            ``docs/demo.md``). The options:

            - ``"per_group"`` (default): one forward of the whole batch; the network's BatchNorm layers are
              converted (in place, parameters and state dict unchanged) to
              :class:`~ideal_components.batchnorm.GroupBatchNorm2d`, which normalise each group on its own. The
              convolutions see the whole batch (what a GPU wants); outputs, loss and gradients equal
              ``"separate_forwards"`` to float rounding. The running statistics that inference uses are updated
              by the labelled, then the unlabelled group (see :mod:`ideal_components.batchnorm`).
            - ``"separate_forwards"``: the reference: one forward of the labelled and one of the unlabelled
              slices. Needed for normalisation layers that cannot be converted (e.g. ``SyncBatchNorm``).
            - ``"joint"``: one forward, statistics of the mixed batch (the biased behaviour; for ablations).

            A group of a single slice is normalised with the other group (BatchNorm may see one value per channel
            at the deepest level, which it refuses in training mode). The groups are read from the batch's flags
            on the host (the data loader's CPU tensor), so no device synchronisation is needed.
        **kwargs: :class:`~monai.engines.SupervisedTrainer`'s other arguments, passed on with its defaults (one
            exception: ``compile_kwargs`` defaults to ``{"dynamic": False}``); see ``_TwoStageTrainerBase``.

    Raises:
        ValueError: a batch without label or flags, or a network without a two-branch forward.

    Example::

        sampler = LabeledUnlabeledBatchSampler([d["labeled"] for d in items], batch_size=8, labeled_batch_size=4)
        loader = DataLoader(Dataset(items, transform), batch_sampler=sampler)
        net = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet10")
        trainer = CrossPseudoLabelTrainer(
            device=torch.device("cpu"), max_epochs=10, train_data_loader=loader, network=net,
            optimizer=torch.optim.Adam(net.parameters(), 1e-4), loss_function=CrossPseudoLabelLoss(rampup_epochs=5))
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        labeled_key: str = "labeled",
        batch_statistics: str = "per_group",
        **kwargs: Any,
    ) -> None:
        if batch_statistics not in BATCH_STATISTICS:
            raise ValueError(f"batch_statistics must be one of {BATCH_STATISTICS}, got {batch_statistics!r}.")
        bare = unwrap_network(network)
        self._group_layers: list[torch.nn.Module] = []
        if batch_statistics == "per_group":
            self._group_layers = group_batch_norm_layers(convert_group_batch_norm(bare))
            unconverted = [
                type(m).__name__ for m in bare.modules() if isinstance(m, _BATCH_NORMS) and m not in self._group_layers
            ]
            if unconverted:
                raise ValueError(
                    f"batch_statistics='per_group' cannot convert {sorted(set(unconverted))} layers of "
                    f"{type(bare).__name__}; use batch_statistics='separate_forwards'."
                )
        self.labeled_key = labeled_key
        self.batch_statistics = batch_statistics
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )

    @staticmethod
    def _forward_groups(engine: Any, inputs: torch.Tensor, labeled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches' logits in batch order, BatchNorm statistics per group (see ``batch_statistics``).

        ``labeled`` is the bool CPU tensor of flags: groups, orders and sizes are worked out on the host.
        """
        n_labeled = int(labeled.sum())
        # a group of one slice stays with the other group: BatchNorm may see a single value per channel at the
        # deepest level, which it refuses in training mode
        if engine.batch_statistics == "joint" or min(n_labeled, inputs.shape[0] - n_labeled) < 2:
            return forward_both(engine.network, inputs)
        lab_idx, unl_idx = torch.nonzero(labeled).flatten(), torch.nonzero(~labeled).flatten()
        in_order = n_labeled == 0 or int(lab_idx[-1]) == n_labeled - 1  # labelled slices first (the sampler's layout)
        if in_order:
            gather = restore = None
        else:
            gather = torch.cat([lab_idx, unl_idx]).to(inputs.device, non_blocking=True)
            restore = torch.argsort(torch.cat([lab_idx, unl_idx])).to(inputs.device, non_blocking=True)
        if engine.batch_statistics == "separate_forwards":
            lab_x = inputs[:n_labeled] if gather is None else inputs[gather[:n_labeled]]
            unl_x = inputs[n_labeled:] if gather is None else inputs[gather[n_labeled:]]
            lab_a, lab_b = forward_both(engine.network, lab_x)
            unl_a, unl_b = forward_both(engine.network, unl_x)
            logits_a, logits_b = torch.cat([lab_a, unl_a]), torch.cat([lab_b, unl_b])
        else:
            with batch_norm_groups(engine._group_layers, (n_labeled, inputs.shape[0] - n_labeled)):
                logits_a, logits_b = forward_both(engine.network, inputs if gather is None else inputs[gather])
        if restore is None:
            return logits_a, logits_b
        # back to batch order with a differentiable gather
        return logits_a[restore], logits_b[restore]

    @staticmethod
    def fractional_epoch(engine: Any) -> float:
        """``state.epoch - 1 + (iteration within the epoch) / epoch_length`` (``state.epoch - 1`` if unknown)."""
        epoch = float(engine.state.epoch - 1)
        length = engine.state.epoch_length
        if length:
            epoch += ((engine.state.iteration - 1) % length) / float(length)
        return epoch

    def _iteration(self, engine: CrossPseudoLabelTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One cross-pseudo-label iteration (see the class docstring); returns ``engine.state.output``.

        Raises:
            ValueError: when ``batchdata`` is None or lacks the label or the flags.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not isinstance(batchdata, Mapping) or engine.labeled_key not in batchdata:
            keys = sorted(map(str, batchdata)) if isinstance(batchdata, Mapping) else type(batchdata).__name__
            raise ValueError(
                f"CrossPseudoLabelTrainer needs dict batches with {engine.labeled_key!r} flags (see EnsureLabeld / "
                f"expand_to_slices); got {keys}."
            )
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if targets is None:
            raise ValueError("CrossPseudoLabelTrainer needs a 'label' in every batch (EnsureLabeld adds placeholders).")
        raw_flags = torch.as_tensor(batchdata[engine.labeled_key]).reshape(-1)
        # groups are worked out from the loader's CPU tensor (a copy from the device only if a loader put them there)
        labeled = raw_flags.cpu() > 0.5
        flags = raw_flags.to(engine.state.device, non_blocking=True)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, engine.labeled_key: flags}
        should_zero_grad, should_step = engine._accumulation_flags(engine)

        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        with engine._autocast(engine):
            plain = convert_to_tensor(inputs, track_meta=False)  # see ContrastivePretrainTrainer._iteration
            logits_a, logits_b = engine._forward_groups(engine, plain, labeled)
            engine.state.output[Keys.PRED] = logits_a
            engine.state.output["pred_b"] = logits_b
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            compute = getattr(engine.loss_function, "compute", None)
            if callable(compute):
                result = compute(logits_a, logits_b, targets, flags, epoch=engine.fractional_epoch(engine))
            else:
                result = engine.loss_function(logits_a, logits_b, targets, flags)
            engine.state.output[Keys.LOSS] = engine._split_loss(result, engine.state.output)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine._backward_and_step(engine, should_step)
        engine._detach_losses(engine.state.output)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
