"""The task: softmax regression on the UCI handwritten digits (8×8 images, 10 classes), in
numpy — no GPU, deterministic. Each site holds one shard of the training set."""

from __future__ import annotations

import gzip

import numpy as np


def load(data_file: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, test x, test y) from the repository's `demo/data/digits.csv.gz`
    (64 pixel columns 0–16, then the label); x scaled to [0, 1], float32."""
    if not data_file:
        raise ValueError("run config `data-file` is empty: pass the path of demo/data/digits.csv.gz")
    with gzip.open(data_file, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x, y = rows[:, :-1] / 16.0, rows[:, -1].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def shard(x: np.ndarray, y: np.ndarray, site: int, sites: int) -> tuple[np.ndarray, np.ndarray]:
    """Site `site`'s shard: every `sites`-th example, plus a site-dependent skew (uneven sizes)."""
    idx = np.arange(site, len(x), sites)[: len(x) // sites - 40 * site]
    return x[idx], y[idx]


def initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    return {"w": (rng.standard_normal((64, 10)) * 0.01).astype(np.float32), "b": np.zeros(10, np.float32)}


def train(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, epochs: int = 5, lr: float = 0.5):
    """Full-batch gradient descent on the cross-entropy; returns new parameters."""
    w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * (x.T @ g)
        b -= lr * g.sum(axis=0)
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}


def accuracy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float(((x @ params["w"] + params["b"]).argmax(axis=1) == y).mean())
