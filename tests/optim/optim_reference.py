"""Independent plain references for the optimizer tests (not the code under test).

Written from the equations of SPEC.md section 1 and from the description of the authors'
AdamB (rainbow-xiao/OLOR-AAAI-2024, OLOR/utils/AdamB.py): per-tensor Python, textbook
formulas, no foreach, no shared helpers with ``dualopt_mm.optim``.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor


def make_params(shapes: list[tuple[int, ...]], seed: int = 0,
                dtype: torch.dtype = torch.float64) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def clone_params(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone().requires_grad_(p.requires_grad) for p in params]


def mixed_review_groups(params: list[Tensor]) -> list[dict[str, Any]]:
    """Four groups over ``params``: finetune, scratch with its own lr, none, and finetune with
    its own level and no weight decay (the paths must agree across all of them at once)."""
    return [
        {'params': params[:3], 'k_max': 0.2, 'k_min': 0.05},
        {'params': params[3:5], 'mode': 'scratch', 'k_max': 0.1, 'lr': 3e-2},
        {'params': params[5:6], 'mode': 'none'},
        {'params': params[6:], 'k_max': 0.5, 'weight_decay': 0.0},
    ]


def make_grad(step: int, index: int, p: Tensor, seed: int = 1) -> Tensor:
    """Deterministic gradient of tensor ``index`` at ``step`` (same for every run)."""
    gen = torch.Generator().manual_seed(seed * 100_003 + step * 1009 + index)
    return torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def set_grads(params: list[Tensor], step: int, skip: Optional[set[int]] = None,
              seed: int = 1) -> None:
    for i, p in enumerate(params):
        p.grad = None if skip and i in skip else make_grad(step, i, p, seed)


def level(i: int, n_layers: int, k_max: float, k_min: float, gamma: float,
          reverse: bool = False) -> float:
    """SPEC: k_i = k_min + (k_max - k_min) (1 - i/N)^gamma, N = n_layers - 1."""
    if n_layers == 1:
        return k_max
    frac = i / (n_layers - 1)
    return k_min + (k_max - k_min) * ((frac if reverse else 1 - frac) ** gamma)


class DualOptReference:
    """The update of SPEC section 1, one tensor at a time, in textbook form.

    groups: dicts with 'params' and any of the optimizer's hyper-parameters (defaults below).
    algorithm: 'sgd', 'adam' (coupled L2) or 'adamw' (decoupled decay).
    """

    DEFAULTS: dict[str, Any] = dict(
        lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
        betas=(0.9, 0.999), eps=1e-8, mode='finetune', k_max=0.01, k_min=0.0, gamma=1.0,
        k_unit='base_lr', reverse=False, skip_1d=None, layer_id=None, num_layers=None)

    def __init__(self, groups: list[dict[str, Any]], algorithm: str) -> None:
        self.algorithm = algorithm
        self.groups = [{**self.DEFAULTS, **g} for g in groups]
        self.state: dict[int, dict[str, Any]] = {}
        for g in self.groups:
            g['base_lr'] = g.get('base_lr') or g['lr']
        # tensor-order index over reviewed tensors when layer_id is absent
        reviewed = [(gi, pi) for gi, g in enumerate(self.groups) for pi, p in
                    enumerate(g['params']) if self._reviewed(g, p)]
        self.index = {key: (n, len(reviewed)) for n, key in enumerate(reviewed)}

    @staticmethod
    def _reviewed(g: dict[str, Any], p: Tensor) -> bool:
        skip = g['skip_1d'] if g['skip_1d'] is not None else g['mode'] == 'scratch'
        return g['mode'] != 'none' and p.requires_grad and not (skip and p.dim() <= 1)

    def k(self, gi: int, pi: int) -> Optional[float]:
        g = self.groups[gi]
        if not self._reviewed(g, g['params'][pi]):
            return None
        if g['layer_id'] is not None:
            i, n = g['layer_id'], g['num_layers']
        else:
            i, n = self.index[(gi, pi)]
        return level(i, n, g['k_max'], g['k_min'], g['gamma'], g['reverse'])

    @torch.no_grad()
    def step(self) -> None:
        for gi, g in enumerate(self.groups):
            eta = g['lr']
            for pi, p in enumerate(g['params']):
                if p.grad is None:
                    continue
                st = self.state.setdefault(id(p), {'t': 0})
                k = self.k(gi, pi)
                if k is not None and g['mode'] == 'finetune' and 'theta0' not in st:
                    st['theta0'] = p.detach().clone()
                st['t'] += 1
                theta_hat = self._learning_step(g, p.detach().clone(), p.grad.clone(), st)
                if k is not None:
                    lam = eta * k if g['k_unit'] == 'absolute' else eta / g['base_lr'] * k
                    a = st['theta0'] if g['mode'] == 'finetune' else torch.zeros_like(p)
                    theta_hat = theta_hat - lam * (theta_hat - a)
                p.copy_(theta_hat)

    def _learning_step(self, g: dict[str, Any], theta: Tensor, grad: Tensor,
                       st: dict[str, Any]) -> Tensor:
        eta, wd, t = g['lr'], g['weight_decay'], st['t']
        if self.algorithm == 'sgd':
            grad = grad + wd * theta
            mu, tau = g['momentum'], g['dampening']
            if mu:
                st['b'] = grad if t == 1 else mu * st['b'] + (1 - tau) * grad
                grad = grad + mu * st['b'] if g['nesterov'] else st['b']
            return theta - eta * grad
        beta1, beta2 = g['betas']
        if self.algorithm == 'adamw':
            theta = theta * (1 - eta * wd)
        else:
            grad = grad + wd * theta
        st['m'] = beta1 * st.get('m', 0.0) + (1 - beta1) * grad
        st['v'] = beta2 * st.get('v', 0.0) + (1 - beta2) * grad * grad
        m_hat = st['m'] / (1 - beta1**t)
        v_hat = st['v'] / (1 - beta2**t)
        return theta - eta * m_hat / (v_hat.sqrt() + g['eps'])


class AdamBReference:
    """The authors' AdamB, from its description: per-group step count, level from the
    tensor's position i in its group, eps inside the base, displacement D = theta - theta_0
    tracked from construction. groups: dicts with 'params', 'lr', 'pretrained' and the
    back_level_max/back_level_min/back_pow of the paper."""

    def __init__(self, groups: list[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.groups = groups
        self.betas, self.eps = betas, eps
        self.state: dict[int, dict[str, Any]] = {}
        for g in groups:
            g['num'] = len(g['params']) - 1
            g['t'] = 0
            for i, p in enumerate(g['params']):
                self.state[id(p)] = {'m': torch.zeros_like(p), 'v': torch.zeros_like(p),
                                     'D': torch.zeros_like(p), 'i': i}

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        for g in self.groups:
            g['t'] += 1
            c1, c2 = 1 - b1 ** g['t'], 1 - b2 ** g['t']
            for p in g['params']:
                if p.grad is None:
                    continue
                s = self.state[id(p)]
                s['m'] = b1 * s['m'] + (1 - b1) * p.grad
                s['v'] = b2 * s['v'] + (1 - b2) * p.grad**2
                u = (s['m'] / c1) / (s['v'].sqrt() / math.sqrt(c2) + self.eps)
                if g['pretrained']:
                    k = g['k_min'] + (1 - (s['i'] / g['num'] + self.eps)) ** g['gamma'] * (
                        g['k_max'] - g['k_min'])
                    u = u * (1 - g['lr'] * k) + k * s['D']
                    s['D'] = s['D'] - g['lr'] * u
                p.sub_(g['lr'] * u)
