"""StableAdamW against torch-optimi's trajectories (tests/fixtures/stableadamw), and its selection in the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmbert.train.config import ConfigError, OptimizerSection, config_from_dict
from mmbert.train.optim import StableAdamW, build_optimizer

REF = json.loads((Path(__file__).parent / "fixtures" / "stableadamw" / "reference.json").read_text())


def _problem():
    # the generator's problem() and loss_fn(), without importing optimi (its module imports it at the top)
    g = torch.Generator().manual_seed(0)
    w, b, x, y = torch.randn(6, 4, generator=g), torch.randn(6, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, 6, generator=g)
    return w, b, x, y


@pytest.mark.parametrize("case", sorted(REF["cases"]))
def test_matches_torch_optimi(case):
    kw = dict(REF["cases"][case]["kwargs"])
    kw["betas"] = tuple(kw["betas"])
    w0, b0, x, y = _problem()
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = StableAdamW([w, b], lr=REF["lrs"][0], **kw)
    clipped = 0
    for s, expected in enumerate(REF["cases"][case]["trajectory"]):
        for grp in opt.param_groups:
            grp["lr"] = REF["lrs"][s]
        opt.zero_grad()
        (REF["grad_scale"][s] * ((x @ w.T + b - y) ** 2).mean()).backward()
        opt.step()
        rms = (w.grad.pow(2) / opt.state[w]["exp_avg_sq"].clamp_min(kw["eps"] ** 2)).mean().sqrt()
        clipped += int(rms > 1)
        for name, got in (("w", w), ("b", b)):
            diff = (got.detach() - torch.tensor(expected[name])).abs()
            assert diff.max() < 1e-6, f"{case} step {s} {name}: max diff {diff.max():.3g}, mean {diff.mean():.3g}"
    assert clipped >= 1, "the reference must exercise the update clipping"


def test_selected_by_the_config_and_decoupled_like_mmbert():
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer(model, OptimizerSection(name="decoupled_stableadamw", lr=8e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=8e-5))
    assert isinstance(opt, StableAdamW)
    assert all(g["decouple_lr"] and g["max_lr"] == 8e-4 for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [8e-5, 0.0]  # matrices only
    assert isinstance(build_optimizer(model, OptimizerSection()), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="optimizer.name"):
        config_from_dict({"optimizer": {"name": "lamb"}, "data": {"synthetic": True}, "phases": [{"name": "a", "steps": 1, "batch_tokens": 64}]})


def test_state_round_trip_continues_exactly():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 3)

    def run(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    oa = StableAdamW(a.parameters(), lr=1e-2, weight_decay=0.1, decouple_lr=True)
    run(a, oa, 6)
    ob = StableAdamW(b.parameters(), lr=1e-2, weight_decay=0.1, decouple_lr=True)
    run(b, ob, 3)
    sd = ob.state_dict()
    c = torch.nn.Linear(4, 3)
    c.load_state_dict(b.state_dict())
    oc = StableAdamW(c.parameters(), lr=1e-2, weight_decay=0.1, decouple_lr=True)
    oc.load_state_dict(sd)
    run(c, oc, 3)
    assert torch.equal(a.weight, c.weight) and torch.equal(a.bias, c.bias)
