"""PyTorch in and out (``cryptflow[torch]``): a real model's ``state_dict()`` submitted as it is
and the mean returned as tensors of the same dtypes, shapes and device."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cryptflow  # noqa: E402
from conftest import admin, site  # noqa: E402


class Net(torch.nn.Module):
    """A small CNN with BatchNorm: float weights, running statistics, an int64 counter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def state(seed: int) -> dict:
    torch.manual_seed(seed)
    net = Net()
    net(torch.randn(8, 1, 8, 8))  # a training-mode pass moves the BatchNorm buffers
    sd = net.state_dict()
    sd["fc.bias"] = sd["fc.bias"].half()  # a float16 tensor, as mixed-precision models have
    sd["conv.bias"] = sd["conv.bias"].bfloat16()
    return {k: v / 4 if v.is_floating_point() else v for k, v in sd.items()}


def test_a_state_dict_goes_in_and_comes_out_as_tensors(stack):
    states = [state(1), state(2)]
    like = states[0]
    assert like["bn.num_batches_tracked"].dim() == 0
    admin(stack).create_round("py-torch", clients=["site-0", "site-1"], like=like, pass_integers=True)
    for i, sd in enumerate(states):
        r = site(stack, f"site-{i}").submit("py-torch", sd, pass_integers=True)
        assert r["clipped"] == 0
    reader = site(stack, "server-app")
    reader.wait_for_aggregate("py-torch", timeout=60)
    agg = reader.fetch_mean("py-torch", like=like)
    assert list(agg.mean) == list(like)
    for name, t in like.items():
        got = agg.mean[name]
        assert isinstance(got, torch.Tensor), name
        assert (got.shape, got.dtype, got.device) == (t.shape, t.dtype, t.device), name
        if not t.is_floating_point():
            assert torch.equal(got, t), name  # integer buffers copied through
            continue
        exact = sum(s[name].double() for s in states) / 2
        assert (got.double() - exact).abs().max().item() <= agg.max_abs_error, name
    # The mean loads into the model as it is.
    net = Net()
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in agg.mean.items()})


def test_tensors_that_are_not_on_the_cpu_are_refused_by_name(stack):
    admin(stack).create_round("py-torch-device", clients=["site-0", "site-1"], like={"w": np.zeros(3, np.float32)})
    off_cpu = torch.zeros(3, device="meta")  # any device but the CPU, as a CUDA tensor would be
    with pytest.raises(cryptflow.InputError, match="tensor `w` is on meta"):
        site(stack, "site-0").submit("py-torch-device", {"w": off_cpu})
    # Tensors that require gradients are taken as they are (no `.detach().numpy()` dance).
    p = torch.nn.Parameter(torch.full((3,), 0.5))
    site(stack, "site-0").submit("py-torch-device", {"w": p})


def test_an_integer_tensor_the_round_averaged_comes_back_rounded_not_truncated(stack):
    # A round that averaged an integer buffer (the strategy's integers="mean" sends its
    # increments as floats); read back with an int64 `like`, the mean is rounded to the nearest
    # integer in that dtype — before, PyTorch's `.to(int64)` truncated 2.9999998 to 2.
    admin(stack).create_round("py-torch-int", clients=["site-2", "site-3"],
                              like={"w": np.zeros(4, np.float32), "steps": np.zeros((), np.float64)}, clip=8.0)
    for i, steps in ((2, 3.0), (3, 4.0)):
        site(stack, f"site-{i}").submit("py-torch-int", {"w": np.zeros(4, np.float32), "steps": np.array(steps)})
    reader = site(stack, "server-app")
    reader.wait_for_aggregate("py-torch-int", timeout=60)
    for like_steps in (torch.tensor(0, dtype=torch.int64), np.array(0, np.int64)):
        got = reader.fetch_mean("py-torch-int", like={"w": torch.zeros(4), "steps": like_steps}).mean["steps"]
        as_int = int(got)
        assert as_int == 4 and tuple(got.shape) == (), got  # rint(3.5) = 4 (half to even)
        assert got.dtype in (torch.int64, np.int64), got.dtype
