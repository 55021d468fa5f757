"""GroupBatchNorm: one forward with per-group statistics equals one forward per group (outputs, loss, gradients,
running statistics), on the networks the bundles train."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import FlexibleUNet

from ideal_components.batchnorm import (
    GroupBatchNorm2d,
    _GroupBatchNormFunction,
    batch_norm_groups,
    convert_group_batch_norm,
    default_implementation,
    group_batch_norm_layers,
)
from ideal_components.losses import CrossPseudoLabelLoss
from ideal_components.networks import TwoBranchFlexibleUNet

TOL = 1e-5


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    # 1e-5 relative to the tensor's scale
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=TOL, atol=TOL * max(scale, 1e-12), msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize(
    "backbone,train,channels_last,implementation",
    [
        ("resnet18", True, False, "slices"),
        ("resnet18", False, False, "slices"),
        ("resnet50", True, False, "slices"),
        ("resnet50", False, False, "slices"),
        ("resnet18", True, True, "slices"),  # the bundles' default memory format
        ("resnet18", True, False, "concat"),
        ("resnet50", True, True, "concat"),
    ],
)
def test_one_forward_equals_one_forward_per_group(backbone, train, channels_last, implementation, monkeypatch):
    monkeypatch.setattr(GroupBatchNorm2d, "implementation", implementation)
    torch.manual_seed(0)
    ref = TwoBranchFlexibleUNet(out_channels=4, backbone=backbone)
    # non-trivial running statistics and affine parameters, so eval mode is a real check too
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    # float64: in float32 a convolution over a batch of 8 sums in another order than over batches of 3 and 5, and a
    # gradient that nearly cancels (a bias summed over 32k pixels) can differ by 3e-5 of its size for that reason
    # alone, with or without group statistics; float64 leaves only the method's own differences
    ref = ref.double()
    grouped = convert_group_batch_norm(copy.deepcopy(ref))
    ref.train(train), grouped.train(train)
    if channels_last:
        ref, grouped = ref.to(memory_format=torch.channels_last), grouped.to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 64, 64, dtype=torch.float64)
    label = torch.randint(0, 4, (8, 1, 64, 64))
    flags = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    loss_fn = CrossPseudoLabelLoss(dice_weight=1.0)

    lab_a, lab_b = ref.forward_both(x[:3])
    unl_a, unl_b = ref.forward_both(x[3:])
    exp_a, exp_b = torch.cat([lab_a, unl_a]), torch.cat([lab_b, unl_b])
    exp_loss = loss_fn(exp_a, exp_b, label, flags)
    exp_loss.backward()
    with batch_norm_groups(grouped, (3, 5)):
        got_a, got_b = grouped.forward_both(x)
    got_loss = loss_fn(got_a, got_b, label, flags)
    got_loss.backward()

    _close(got_a, exp_a, "logits_a")
    _close(got_b, exp_b, "logits_b")
    _close(got_loss, exp_loss, "loss")
    named_ref = dict(ref.named_parameters())
    for name, p in grouped.named_parameters():
        _close(p.grad, named_ref[name].grad, f"grad of {name}")
    for (name, b), b_ref in zip(grouped.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, b_ref, rtol=TOL, atol=TOL, msg=lambda m: f"buffer {name}: {m}")
    if train:  # the groups really were normalised separately: the joint statistics give other logits
        assert not torch.allclose(grouped.forward_both(x)[0][:3], got_a[:3], atol=1e-3)


def test_conversion_shares_parameters_and_keeps_the_state_dict():
    net = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet10")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    assert convert_group_batch_norm(net) is net
    layers = group_batch_norm_layers(net)
    assert layers and all(isinstance(m, GroupBatchNorm2d) for m in layers)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in net.modules())
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]  # the optimizer still trains them
    after = net.state_dict()
    assert list(after) == list(before)
    for k in before:
        torch.testing.assert_close(after[k], before[k])
    # strict load into a stock FlexibleUNet (what inference builds)
    plain = FlexibleUNet(1, 4, backbone="resnet10", upsample="deconv")
    plain.load_state_dict(net.branch_a.state_dict(), strict=True)
    # converting twice changes nothing; an optimizer step moves the converted layers' shared weights
    assert convert_group_batch_norm(net) is net and group_batch_norm_layers(net) == layers
    net.train()
    with batch_norm_groups(layers, (2, 2)):
        net.forward_both(torch.randn(4, 1, 32, 32))[0].sum().backward()
    w = layers[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(layers[0].weight, w)


def test_group_sizes_are_scoped_and_checked():
    bn = convert_group_batch_norm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    layer = bn[0]
    with batch_norm_groups(bn, [2, 2]):
        assert layer.group_sizes == (2, 2)
        with pytest.raises(ValueError, match=r"group sizes \(2, 2\) do not add up to the batch size 5"):
            bn(torch.randn(5, 3, 4, 4))
    assert layer.group_sizes is None
    with pytest.raises(ValueError, match="positive"):
        with batch_norm_groups(bn, (0, 4)):
            pass
    # the root module itself may be a BatchNorm; SyncBatchNorm (statistics across processes) is left alone
    assert isinstance(convert_group_batch_norm(torch.nn.BatchNorm2d(3)), GroupBatchNorm2d)
    sync = torch.nn.SyncBatchNorm(3)
    assert convert_group_batch_norm(sync) is sync


def test_unknown_implementation_is_refused(monkeypatch):
    net = convert_group_batch_norm(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))
    monkeypatch.setattr(GroupBatchNorm2d, "implementation", "fused")
    with batch_norm_groups(net, (2, 2)), pytest.raises(ValueError, match="'slices', 'concat' or None, got 'fused'"):
        net(torch.rand(4, 1, 8, 8))


def test_implementation_follows_the_device_unless_set(monkeypatch):
    assert default_implementation("cpu") == "slices"
    assert default_implementation("cuda") == "concat"  # measured faster there (benchmarks/results/gpu_options.md)
    net = convert_group_batch_norm(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))
    calls = []
    original = _GroupBatchNormFunction.apply
    monkeypatch.setattr(_GroupBatchNormFunction, "apply", lambda *a: calls.append(1) or original(*a))
    x = torch.rand(4, 1, 8, 8)
    with batch_norm_groups(net, (2, 2)):
        net(x)
        assert calls == [1]  # the CPU default: slices
        monkeypatch.setattr("ideal_components.batchnorm.default_implementation", lambda device_type: "concat")
        net(x)
        assert calls == [1]  # as on CUDA: the stock forward per group
        monkeypatch.setattr(GroupBatchNorm2d, "implementation", "slices")
        net(x)
        assert calls == [1, 1]  # a set implementation wins over the device's


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("implementation", ["slices", "concat"])
def test_cuda_one_forward_equals_one_forward_per_group(implementation, monkeypatch):
    """The same equality on CUDA (cuDNN's kernels for the reference, float32 with TF32 off so that only the method's
    differences remain), training mode, channels-last as the bundles."""
    monkeypatch.setattr(GroupBatchNorm2d, "implementation", implementation)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    ref = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet18").cuda().to(memory_format=torch.channels_last)
    grouped = convert_group_batch_norm(copy.deepcopy(ref))
    x = torch.randn(8, 1, 64, 64, device="cuda")
    lab_a, _ = ref.forward_both(x[:3])
    unl_a, _ = ref.forward_both(x[3:])
    expected = torch.cat([lab_a, unl_a])
    expected.square().mean().backward()
    with batch_norm_groups(grouped, (3, 5)):
        got, _ = grouped.forward_both(x)
    got.square().mean().backward()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    named_ref = dict(ref.named_parameters())
    for name, p in grouped.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, named_ref[name].grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")
