"""The learning-rate schedule, the optimizer's parameter groups, and gradient clipping."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from lit_gpt_char.training.module import LitGPT
from lit_gpt_char.training.optim import Muon, OptimConfig, build_optimizer, native_bf16_matmuls, warmup_cosine

LR, MIN, WARM, DECAY = 1e-3, 1e-4, 10, 110


def test_warmup_is_linear_from_above_zero_to_lr():
    lrs = [warmup_cosine(s, LR, MIN, WARM, DECAY) for s in range(WARM + 1)]
    assert lrs[0] == pytest.approx(LR / (WARM + 1)) and lrs[0] > 0
    assert all(b - a == pytest.approx(LR / (WARM + 1)) for a, b in itertools.pairwise(lrs))
    assert lrs[WARM] == pytest.approx(LR)


def test_cosine_decays_to_min_lr_and_stays_there():
    mid = WARM + (DECAY - WARM) // 2
    assert warmup_cosine(mid, LR, MIN, WARM, DECAY) == pytest.approx((LR + MIN) / 2)
    after = [warmup_cosine(s, LR, MIN, WARM, DECAY) for s in range(WARM, DECAY + 50)]
    assert all(a >= b for a, b in itertools.pairwise(after))  # never rises after warmup
    assert after[DECAY - WARM] == MIN and after[-1] == MIN
    # A quarter of the way: the cosine, not a straight line.
    q = WARM + (DECAY - WARM) // 4
    assert warmup_cosine(q, LR, MIN, WARM, DECAY) == pytest.approx(MIN + 0.5 * (1 + math.cos(math.pi / 4)) * (LR - MIN))


def test_no_warmup_and_constant_lr():
    assert warmup_cosine(0, LR, MIN, 0, DECAY) == pytest.approx(LR)
    assert all(warmup_cosine(s, LR, LR, 0, 50) == pytest.approx(LR) for s in range(100))  # experiment=seed


def test_scheduler_follows_the_schedule_and_decays_over_the_run():
    """decay_steps null: the cosine ends at the run's last step."""
    w = torch.nn.Parameter(torch.zeros(2, 2))
    cfg = OptimConfig(algorithm="adamw", schedule="cosine", lr=LR, min_lr=MIN, warmup_steps=WARM)
    opt, sched = build_optimizer([("w", w)], {"w"}, cfg, total_steps=DECAY, fused=False)
    seen = []
    for _ in range(DECAY + 5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([warmup_cosine(s, LR, MIN, WARM, DECAY) for s in range(DECAY + 5)])
    _, sched = build_optimizer(
        [("w", w)],
        {"w"},
        OptimConfig(algorithm="adamw", schedule="cosine", lr=LR, min_lr=MIN, warmup_steps=WARM, decay_steps=60),
        total_steps=DECAY,
        fused=False,
    )
    assert sched.lr_lambdas[0](60) * LR == pytest.approx(MIN)  # an explicit decay_steps wins


def test_weight_decay_on_matrices_only():
    module = LitGPT(
        list("abcd"),
        {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 8, "bias": True},
        {"weight_decay": 0.3, "algorithm": "adamw"},
    )
    opt = module.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
    for name, p in module.model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(module.model.parameters()))


def grads_after_clipping(clip: float | None, algorithm: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradients before, after) LitGPT.configure_gradient_clipping, flattened."""
    torch.manual_seed(0)
    module = LitGPT(list("abcd"), {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 8})
    module._trainer = SimpleNamespace(precision="32-true", strategy=None)
    x = torch.randint(0, 4, (4, 8))
    module(x, x)[1].mul(1000).backward()  # large gradients, so clipping bites
    before = torch.cat([p.grad.flatten() for p in module.parameters()]).clone()
    module.configure_gradient_clipping(None, clip, algorithm)
    return before, torch.cat([p.grad.flatten() for p in module.parameters()])


def test_clipping_by_norm_scales_the_whole_gradient_down_to_the_limit():
    before, after = grads_after_clipping(0.5, "norm")
    assert before.norm() > 0.5 and after.norm() == pytest.approx(0.5, rel=1e-4)
    assert torch.allclose(after, before * (after.norm() / before.norm()), atol=1e-7)  # same direction


def test_clipping_by_value_caps_each_element():
    before, after = grads_after_clipping(1e-3, "value")
    assert before.abs().max() > 1e-3 and after.abs().max() == pytest.approx(1e-3)
    small = before.abs() < 1e-3
    assert torch.equal(after[small], before[small])


@pytest.mark.parametrize("clip", [None, 0.0])
def test_no_clipping_leaves_gradients_alone(clip):
    before, after = grads_after_clipping(clip, None)
    assert torch.equal(before, after)


def test_wsd_holds_the_peak_then_warms_down_linearly():
    from lit_gpt_char.training.optim import warmup_stable_decay

    lrs = [warmup_stable_decay(s, LR, MIN, 10, 110, 0.2) for s in range(130)]
    assert lrs[:10] == pytest.approx([LR * (s + 1) / 11 for s in range(10)])
    assert all(v == LR for v in lrs[10:88])  # stable until the last 20% (22 of 110 steps)
    assert lrs[88] == LR and lrs[99] == pytest.approx(LR + (MIN - LR) * 11 / 22)
    assert all(a > b for a, b in itertools.pairwise(lrs[88:110])) and lrs[110:] == [MIN] * 20


def muon_module() -> LitGPT:
    return LitGPT(
        list("abcd"),
        {"n_layer": 2, "n_head": 2, "n_embd": 8, "block_size": 8, "bias": True, "tie_embeddings": False},
        {"algorithm": "muon", "muon_lr": 0.05, "lr": 0.01},
    )


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    module = muon_module()
    opt = module.configure_optimizers()["optimizer"]
    muon, adam = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    for name, p in module.model.named_parameters():
        assert (id(p) in in_muon) == (name.startswith("blocks.") and p.dim() == 2), name
    assert len(opt.param_groups) == len(muon.param_groups) + len(adam.param_groups)
    assert {g["initial_lr"] for g in muon.param_groups} == {0.05}  # the peaks the schedule scales
    assert {g["initial_lr"] for g in adam.param_groups} == {0.01}


def test_the_schedule_scales_both_optimizers_and_state_round_trips():
    torch.manual_seed(0)
    module = muon_module()
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    x = torch.randint(0, 4, (2, 8))
    for _ in range(3):
        module(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    factor = sched.lr_lambdas[0](3)
    assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * factor)
    assert opt.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.01 * factor)
    state = opt.state_dict()
    again = muon_module()
    opt2 = again.configure_optimizers()["optimizer"]
    again.load_state_dict(module.state_dict())
    opt2.load_state_dict(state)
    for a, b in zip(opt.optimizers, opt2.optimizers):
        for pa, pb in zip(
            [p for g in a.param_groups for p in g["params"]], [p for g in b.param_groups for p in g["params"]]
        ):
            assert all(
                torch.equal(a.state[pa][k], b.state[pb][k]) for k in a.state[pa] if torch.is_tensor(a.state[pa][k])
            )


def muon_steps(float32_ns: bool | None, steps: int = 3) -> tuple[list[torch.Tensor], dict]:
    """Three steps of Muon (ours with float32_ns, or torch's own when None) on the same weights and gradients."""
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(24, 40)), torch.nn.Parameter(torch.randn(40, 24))]
    kwargs = {"lr": 0.02, "momentum": 0.95, "weight_decay": 0.05}
    opt = torch.optim.Muon(weights, **kwargs) if float32_ns is None else Muon(weights, float32_ns=float32_ns, **kwargs)
    for i in range(steps):
        for w in weights:
            w.grad = torch.randn(w.shape, generator=torch.Generator().manual_seed(i))
        opt.step()
    return [w.detach().clone() for w in weights], opt.state_dict()


def test_muon_is_torchs_where_bf16_is_native_and_float32_where_it_is_emulated():
    torch_w, torch_state = muon_steps(None)
    ours_w, _ = muon_steps(False)
    assert all(torch.equal(a, b) for a, b in zip(torch_w, ours_w))  # torch's own step, untouched
    f32_w, f32_state = muon_steps(True)
    start, _ = muon_steps(None, steps=0)
    for a, b, w0 in zip(torch_w, f32_w, start):
        # the same update, computed in float32 instead of bf16: within bf16's error of torch's
        assert (a - b).abs().max() < 0.02 * (a - w0).abs().max()
        assert not torch.equal(a, b)
    # the state is torch's: one checkpoint resumes with either
    assert f32_state["param_groups"] == torch_state["param_groups"]
    assert f32_state["state"].keys() == torch_state["state"].keys()
    assert {k for s in f32_state["state"].values() for k in s} == {"momentum_buffer"}


def test_muon_float32_is_the_textbook_update():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 40))
    g = torch.randn(24, 40)
    w.grad = g.clone()
    w0 = w.detach().double().clone()
    Muon([w], float32_ns=True, lr=0.02, momentum=0.95, weight_decay=0.05).step()
    buf = 0.05 * g.double()  # the momentum buffer after one step from zero
    update = g.double().lerp(buf, 0.95)  # nesterov
    x = update / update.norm()
    a, b, c = torch.optim._muon.DEFAULT_A, torch.optim._muon.DEFAULT_B, torch.optim._muon.DEFAULT_C
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    want = w0 * (1 - 0.02 * 0.05) - 0.02 * math.sqrt(max(1, 24 / 40)) * x
    assert (w.detach().double() - want).abs().max() < 1e-5


def test_muon_picks_float32_by_the_machines_bf16():
    muon = muon_module().configure_optimizers()["optimizer"].optimizers[0]
    assert isinstance(muon, Muon) and muon.float32_ns == (not native_bf16_matmuls(torch.device("cpu")))
