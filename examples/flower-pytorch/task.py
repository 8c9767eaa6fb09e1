"""The task: a small CNN with BatchNorm on the UCI handwritten digits (8×8 images, 10 classes),
in PyTorch on the CPU, deterministic. Each site holds one shard of the training set."""

from __future__ import annotations

import gzip

import numpy as np
import torch


class Net(torch.nn.Module):
    """Conv → BatchNorm → ReLU → Linear: float weights, BatchNorm's running statistics (float
    buffers) and its `num_batches_tracked` (a 0-d int64 buffer). With `hidden > 0`, a hidden
    layer of that width before the output (`hidden = 3340`: about 10^6 parameters)."""

    def __init__(self, hidden: int = 0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        width = 8 * 6 * 6
        self.hidden = torch.nn.Linear(width, hidden) if hidden else None
        self.fc = torch.nn.Linear(hidden or width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).flatten(1)
        if self.hidden is not None:
            h = torch.relu(self.hidden(h))
        return self.fc(h)


def load(data_file: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, test x, test y) from the repository's `demo/data/digits.csv.gz`."""
    if not data_file:
        raise ValueError("run config `data-file` is empty: pass the path of demo/data/digits.csv.gz")
    with gzip.open(data_file, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x, y = rows[:, :-1].reshape(-1, 1, 8, 8) / 16.0, rows[:, -1].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = torch.from_numpy(x[order]), torch.from_numpy(y[order])
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def shard(x: torch.Tensor, y: torch.Tensor, site: int, sites: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Site `site`'s shard: every `sites`-th example, with uneven sizes."""
    idx = torch.arange(site, len(x), sites)[: len(x) // sites - 40 * site]
    return x[idx], y[idx]


def initial(hidden: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(42)
    return Net(hidden).state_dict()


def train(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, seed: int,
          epochs: int = 1, batch: int = 64, lr: float = 0.05) -> dict[str, torch.Tensor]:
    """Mini-batch SGD from `state`, batches in an order fixed by `seed`; the new state dict."""
    torch.manual_seed(seed)
    net = Net(width_of(state))
    net.load_state_dict(state)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.state_dict()


def width_of(state: dict[str, torch.Tensor]) -> int:
    """The hidden width of the model a state dict is of (0: none)."""
    return int(state["hidden.weight"].shape[0]) if "hidden.weight" in state else 0


def accuracy(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    net = Net(width_of(state))
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())
