r"""DualOpt / OLOR optimizers: torch's SGD / Adam / AdamW, each followed by the review step.

This is the one place the method is written out; every other module and page refers here.
After its plain torch step (SGD, Adam, AdamW: the *learning step*) every reviewed tensor takes
the *review step*, in the "real-time" form of OLOR (AAAI 2024) and DualOpt: it acts on the
freshly updated :math:`\hat\theta`, not on :math:`\theta_t`.

.. math::
    \begin{aligned}
    \hat\theta      &= \theta_t - \eta_t u_t
        && \text{learning step of the base optimizer} \\
    \theta_{t+1}    &= \hat\theta - \lambda_{i,t} (\hat\theta - a)
        && \text{review step} \\
    \lambda_{i,t}   &= \eta_t k_i \;\; (\textit{k\_unit}=\text{'absolute'}), \quad
                       \lambda_{i,t} = (\eta_t / \eta_{base}) k_i \;\;
                       (\textit{k\_unit}=\text{'base\_lr'}) \\
    k_i             &= k_{min} + (k_{max} - k_{min}) \, s_i^{\gamma}, \quad
                       s_i = 1 - i/N \;\; (\text{or } i/N \text{ with } \textit{reverse}),
                       \quad N = \textit{num\_layers} - 1
    \end{aligned}

with :math:`\eta_t` the group's current ``lr``, :math:`\eta_{base}` its ``base_lr``,
:math:`u_t` the base optimizer's direction (SGD: the momentum buffer with torch's semantics;
Adam: :math:`\hat m_t / (\sqrt{\hat v_t} + \epsilon)` with the tensor's own step count),
:math:`i` the tensor's layer index (``layer_id``; 0 is the shallowest) and the anchor
:math:`a`: :math:`\theta_0`, the pretrained value (``mode='finetune'``, OLOR weight rollback),
or :math:`0` (``mode='scratch'``, DualOpt's real-time layer-wise weight decay); ``mode='none'``
is the plain torch step. A single layer (:math:`N = 0`) gets ``k_max``.

Algebraically the review is decoupled weight decay toward :math:`a` with a rescaled learning
step: :math:`\theta_{t+1} = \theta_t - \eta_t (1 - \lambda) u_t - \lambda (\theta_t - a)`.
:math:`\lambda = 1` pins the tensor to :math:`a`; :math:`\lambda > 1` overshoots and is
refused. With :math:`k = 0` each optimizer is torch's, bit for bit. The review lives inside
``step()``: a step skipped by ``torch.amp.GradScaler`` (inf/NaN gradients) skips it too.

Where each part lives: :mod:`~dualopt_mm.optim.hyperparams` (the hyper-parameters: names,
defaults, meaning, validation), :mod:`~dualopt_mm.optim.levels` (:math:`k_i`,
:math:`\lambda`), :mod:`~dualopt_mm.optim.review` (the review step, loop and foreach),
:mod:`~dualopt_mm.optim.foreach` (bucketing and chunking), :mod:`~dualopt_mm.optim.fused`
(the fused paths' chunks and review), :mod:`~dualopt_mm.optim.base` (the base class and
``step()``, which picks each tensor's path), :mod:`~dualopt_mm.optim.layer_levels` (levels
over the groups), :mod:`~dualopt_mm.optim.state` (anchors, checkpoint rules),
:mod:`~dualopt_mm.optim.sgd` / :mod:`~dualopt_mm.optim.adam` (the optimizer classes) and
:mod:`~dualopt_mm.optim.sgd_functional` / :mod:`~dualopt_mm.optim.adam_functional` (the
learning step then the review, as three functionals of one signature: the per-tensor loop,
the foreach twin, the fused path).

Plain PyTorch use needs nothing else (no mmengine)::

    from dualopt_mm.optim import DualOptAdamW
    optimizer = DualOptAdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
"""
from .adam import DualOptAdam, DualOptAdamW
from .base import DualOptOptimizer
from .hyperparams import REVIEW_DEFAULTS
from .levels import layer_level, review_weight
from .review import apply_review
from .sgd import DualOptSGD

__all__ = [
    'REVIEW_DEFAULTS',
    'DualOptAdam',
    'DualOptAdamW',
    'DualOptOptimizer',
    'DualOptSGD',
    'apply_review',
    'layer_level',
    'review_weight',
]
