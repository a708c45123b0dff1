"""``L2SPHook`` adds exactly α(θ − θ_0) to the gradients of the pretrained tensors (the gradient
of the L2-SP loss term), captures θ_0 at ``before_train``, keeps it across a checkpoint, and
``NormEvalHook`` keeps the backbone's batch norms in eval mode."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dualopt_mm.engine import L2SPHook, NormEvalHook


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _runner(model: nn.Module, resume: bool = False) -> SimpleNamespace:
    return SimpleNamespace(model=model, _resume=resume)


def test_registered() -> None:
    from mmengine.registry import HOOKS
    assert HOOKS.get('L2SPHook') is L2SPHook and HOOKS.get('NormEvalHook') is NormEvalHook


def test_gradient_is_task_gradient_plus_alpha_displacement() -> None:
    torch.manual_seed(0)
    model, ref = Toy().double(), Toy().double()
    ref.load_state_dict(model.state_dict())
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    hook = L2SPHook(alpha=0.3)
    hook.before_train(_runner(model))
    with torch.no_grad():                            # move away from θ_0
        for p in list(model.parameters()) + list(ref.parameters()):
            p.add_(0.1)
    x = torch.randn(5, 3, dtype=torch.float64)
    model(x).sum().backward()
    ref(x).sum().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        expected = q.grad.clone()
        if name.startswith('backbone.'):
            expected += 0.3 * (q.detach() - theta0[name])
        torch.testing.assert_close(p.grad, expected, rtol=0, atol=1e-12)
    # the same as differentiating the loss term α/2 ‖θ − θ_0‖² explicitly
    ref.zero_grad()
    penalty = sum(((q - theta0[n]) ** 2).sum() for n, q in ref.named_parameters()
                  if n.startswith('backbone.'))
    (ref(x).sum() + 0.3 / 2 * penalty).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12)
    hook.after_train(_runner(model))
    model.zero_grad()
    model(x).sum().backward()
    ref.zero_grad()
    ref(x).sum().backward()
    for p, q in zip(model.parameters(), ref.parameters()):   # hooks removed after training
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12)


def test_anchor_survives_checkpoint_and_resume() -> None:
    model = Toy()
    hook = L2SPHook(alpha=1.0)
    hook.before_train(_runner(model))
    checkpoint: dict = {}
    hook.before_save_checkpoint(_runner(model), checkpoint)
    saved = {n: a.clone() for n, a in checkpoint['l2sp_anchor'].items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)                                  # mid-training weights
    resumed = L2SPHook(alpha=1.0)
    resumed.after_load_checkpoint(_runner(model, resume=True), checkpoint)
    resumed.before_train(_runner(model, resume=True))
    assert set(resumed.anchors) == set(saved)
    for name, anchor in resumed.anchors.items():     # θ_0, not the mid-training weights
        torch.testing.assert_close(anchor, saved[name])


def test_refuses_negative_alpha() -> None:
    with pytest.raises(ValueError, match='-1'):
        L2SPHook(alpha=-1)


def test_norm_eval_hook_only_backbone_batch_norm() -> None:
    model = Toy()
    model.head = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
    model.train()
    NormEvalHook().before_train_iter(_runner(model), 0)
    assert not model.backbone[1].training and model.backbone[0].training
    assert model.head[1].training
