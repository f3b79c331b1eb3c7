"""Conv2d layers' per-sample Gram matrices (rledger.persample.gram.conv_gram) against per-sample
autograd in float64, through both of its routes (materialized chunks, and the Gram identity over
patches), for strides, dilations and every padding mode."""

from __future__ import annotations

import pytest
import torch as th
from torch import nn

from rledger.persample import gram
from rledger.persample.gram import conv_gram, patches

CONFIGS = [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=2, padding=1),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=2, padding=1, padding_mode="circular", bias=False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_patches_reproduce_the_convolution(cfg):
    ly = nn.Conv2d(3, 5, **cfg).double()
    x = th.randn(4, 3, 9, 8, dtype=th.float64, generator=th.Generator().manual_seed(0))
    y = ly(x)
    bias = ly.bias.view(1, 5, 1, 1) if ly.bias is not None else 0.0
    th.testing.assert_close((ly.weight.view(5, -1) @ patches(ly, x)).view(y.shape) + bias, y)


@pytest.mark.parametrize("route", ["materialize", "ghost"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_conv_gram_matches_per_sample_autograd(cfg, route, monkeypatch):
    gen = th.Generator().manual_seed(1)
    ly = nn.Conv2d(3, 5, **cfg).double()
    b, k = 6, 3
    x = th.randn(b, 3, 9, 8, dtype=th.float64, generator=gen)
    out_shape = ly(x).shape
    # three "parts", each a fixed random linear function of the layer's output, per sample
    w = th.randn(k, *out_shape[1:], dtype=th.float64, generator=gen)
    uniform = route == "ghost"
    f = {
        n: (th.full_like(p, 0.3) if uniform else th.rand(p.shape, dtype=th.float64, generator=gen) + 0.1)
        for n, p in ly.named_parameters()
    }
    fac = {f"c.{n}": (v[None], v.square()[None]) for n, v in f.items()}
    # the route is forced: the cost rule picks it only for some shapes
    monkeypatch.setattr(gram, "CONV_CHUNK_ELEMENTS", 1)  # one sample per chunk: chunking is exercised
    if uniform:
        monkeypatch.setattr(gram, "_ghost_cheaper", lambda *a: True)
    d = {j: w[j].expand(b, *w[j].shape)[None] for j in range(k)}  # d f_j / d output, (S=1, B, ...)
    g1, gp2, gp00 = (
        th.zeros(b, k, k, dtype=th.float64),
        th.zeros(b, k, k, dtype=th.float64),
        th.zeros(b, dtype=th.float64),
    )
    conv_gram("c", ly, x, d, 0, [0, 1, 2], fac, g1, gp2, gp00)
    for i in range(b):
        grads = []
        for j in range(k):
            gs = th.autograd.grad((ly(x[i : i + 1])[0] * w[j]).sum(), list(ly.parameters()))
            grads.append(th.cat([g.flatten() for g in gs]))
        fl = th.cat([f[n].flatten() for n, _ in ly.named_parameters()])
        for a in range(k):
            for c in range(a, k):
                th.testing.assert_close(g1[i, a, c], grads[a] @ grads[c])
                th.testing.assert_close(gp2[i, a, c], (grads[a] * fl.square()) @ grads[c])
        th.testing.assert_close(gp00[i], (grads[0].square() * fl).sum())
