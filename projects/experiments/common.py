"""Shared pieces of the small-scale DualOpt experiments (``forgetting.py``, ``scratch.py``).

Everything here runs on the CPU in seconds: the data is scikit-learn's bundled *digits* set
(1797 grey 8x8 images of the digits 0-9, shipped inside the ``scikit-learn`` wheel, so nothing
is downloaded), the model is a five-layer CNN backbone plus a linear head, and training runs
mini-batches over tensors held in memory (no data loader).

Conventions shared by both tools:

* **Seeds.** A seed fixes the data split, the initialisation and the mini-batch order. Every
  method of one seed starts from the same weights and sees the same batches.
* **Statistics.** ``mean ± std`` over seeds, with the sample standard deviation (ddof = 1).
* **Drift** of a layer (weight and bias together) is the relative distance to the anchor
  θ_0, ``‖θ − θ_0‖ / ‖θ_0‖``, the quantity ``WeightRollbackHook`` logs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# data


@dataclass
class Split:
    """Images ``x`` (N, 1, 8, 8) in [0, 1] and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's bundled digits as float32 images (N, 1, 8, 8) in [0, 1] and labels.

    Raises:
        ImportError: scikit-learn is not installed (with the command that installs it).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'these experiments use scikit-learn\'s bundled digits data set: '
            '`python -m pip install scikit-learn`') from error
    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    return images, digits.target.astype(np.int64)


def split_per_class(labels: np.ndarray, classes: Sequence[int], counts: Sequence[Optional[int]],
                    rng: np.random.RandomState) -> List[np.ndarray]:
    """Split the indices of ``classes`` into consecutive parts with ``counts`` samples per class.

    A count of ``None`` takes all remaining samples of the class (only allowed last).

    Raises:
        ValueError: a class has fewer samples than the fixed counts ask for.
    """
    parts: List[List[int]] = [[] for _ in counts]
    for cls in classes:
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        fixed = sum(c for c in counts if c is not None)
        if fixed > len(idx):
            raise ValueError(f'class {cls} has {len(idx)} samples, the split asks for {fixed} '
                             f'(counts per class {list(counts)})')
        start = 0
        for k, count in enumerate(counts):
            stop = len(idx) if count is None else start + count
            parts[k].extend(idx[start:stop].tolist())
            start = stop
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def make_split(images: np.ndarray, labels: np.ndarray, index: np.ndarray,
               classes: Sequence[int]) -> Split:
    """The samples ``index``, labels re-numbered 0..len(classes)-1 in ``classes`` order."""
    remap = {c: i for i, c in enumerate(classes)}
    y = np.asarray([remap[int(v)] for v in labels[index]], dtype=np.int64)
    return Split(torch.from_numpy(images[index]), torch.from_numpy(y))


# ----------------------------------------------------------------------------------------------
# model


class SmallCNN(nn.Module):
    """Five-layer backbone for 8x8 images: four 3x3 convolutions and one fully connected layer.

    ``conv1 → conv2 → pool → conv3 → pool → conv4 → fc`` (ReLU after each), 8x8 → 2x2, output
    ``feat_dim`` features. No normalisation layers, so every parameter is a learned weight or
    bias and drift is not mixed with running statistics. Blocks are listed shallow to deep by
    :meth:`blocks`; their index is the layer index i of the DualOpt depth ramp.
    """

    def __init__(self, width: int = 16, feat_dim: int = 128) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 4 * width, 3, padding=1)
        self.conv4 = nn.Conv2d(4 * width, 4 * width, 3, padding=1)
        self.fc = nn.Linear(4 * width * 2 * 2, feat_dim)
        self.feat_dim = feat_dim

    def blocks(self) -> List[Tuple[str, nn.Module]]:
        """The layers in depth order (shallowest first)."""
        return [('conv1', self.conv1), ('conv2', self.conv2), ('conv3', self.conv3),
                ('conv4', self.conv4), ('fc', self.fc)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        x = F.relu(self.conv4(x))
        return F.relu(self.fc(torch.flatten(x, 1)))


class Classifier(nn.Module):
    """``backbone`` (:class:`SmallCNN`) followed by a linear ``head``."""

    def __init__(self, num_classes: int, width: int = 16, feat_dim: int = 128) -> None:
        super().__init__()
        self.backbone = SmallCNN(width, feat_dim)
        self.head = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def backbone_block_names(model: Classifier) -> List[str]:
    """Block names as the hook logs them (``backbone.conv1`` ...), shallowest first."""
    return [f'backbone.{name}' for name, _ in model.backbone.blocks()]


def layer_drift(model: Classifier, anchor: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Relative drift ``‖θ − θ_0‖ / ‖θ_0‖`` of each backbone block and of the whole backbone.

    ``anchor`` maps parameter names (``backbone.conv1.weight`` ...) to θ_0. Keys of the result
    are the block names plus ``'all'``.
    """
    out: Dict[str, float] = {}
    total_diff = total_ref = 0.0
    for name, module in model.backbone.blocks():
        diff = ref = 0.0
        for pname, p in module.named_parameters():
            a = anchor[f'backbone.{name}.{pname}']
            diff += float((p.detach() - a).pow(2).sum())
            ref += float(a.pow(2).sum())
        out[f'backbone.{name}'] = math.sqrt(diff) / max(math.sqrt(ref), 1e-12)
        total_diff += diff
        total_ref += ref
    out['all'] = math.sqrt(total_diff) / max(math.sqrt(total_ref), 1e-12)
    return out


# ----------------------------------------------------------------------------------------------
# training and evaluation


def iterate_minibatches(n: int, batch_size: int,
                        generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield index tensors of one shuffled epoch (the last batch may be smaller)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Number of optimizer steps of one epoch over ``n`` samples."""
    return max(1, math.ceil(n / batch_size))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, data: Split, epochs: int,
          batch_size: int, generator: torch.Generator,
          extra_loss: Optional[Callable[[], torch.Tensor]] = None,
          cosine: bool = True) -> float:
    """Train ``model`` with cross-entropy (+ ``extra_loss()``) for ``epochs``; return the last loss.

    The learning rate follows a per-step cosine schedule from the groups' ``lr`` to 0 when
    ``cosine`` (torch's ``CosineAnnealingLR``, which also records ``initial_lr`` in each group).

    Raises:
        FloatingPointError: the loss became NaN or infinite.
    """
    total = epochs * steps_per_epoch(len(data), batch_size)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                 if cosine else None)
    model.train()
    loss_value = float('nan')
    for _ in range(epochs):
        for idx in iterate_minibatches(len(data), batch_size, generator):
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f'loss became {loss_value}')
    model.eval()
    return loss_value


@torch.no_grad()
def accuracy(model: nn.Module, data: Split) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    pred = model(data.x).argmax(1)
    return 100.0 * float((pred == data.y).float().mean())


@torch.no_grad()
def features(backbone: nn.Module, data: Split) -> np.ndarray:
    """Backbone features of a split as a float64 array (N, feat_dim)."""
    backbone.eval()
    return backbone(data.x).double().numpy()


def linear_probe_accuracy(backbone: nn.Module, fit: Split, evaluate: Split) -> float:
    """Fit a logistic-regression probe on frozen features of ``fit``; accuracy (%) on ``evaluate``.

    Features are standardised with the statistics of ``fit``; the probe is scikit-learn's
    L2-regularised ``LogisticRegression`` (C = 1, lbfgs), deterministic.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(features(backbone, fit), fit.y.numpy())
    return 100.0 * float(probe.score(features(backbone, evaluate), evaluate.y.numpy()))


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG; return a generator (same seed) for the mini-batch order."""
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


# ----------------------------------------------------------------------------------------------
# DualOpt import (written by another part of the package; fail with a clear message)


def import_dualopt() -> Any:
    """Return the ``dualopt_mm.optim`` module.

    Raises:
        ImportError: dualopt_mm is not importable (not installed, or the optimizers missing).
    """
    try:
        import dualopt_mm.optim as optim
    except ModuleNotFoundError as error:
        if error.name != 'dualopt_mm':
            raise
        # not installed: use the checkout this script lives in (<repo>/projects/experiments/)
        repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if not os.path.isfile(os.path.join(repo_root, 'dualopt_mm', '__init__.py')):
            raise ImportError('cannot import the DualOpt optimizers: dualopt_mm is not installed '
                              '(`pip install -e .` in the repository root)') from error
        sys.path.insert(0, repo_root)
        import dualopt_mm.optim as optim
    return optim


# ----------------------------------------------------------------------------------------------
# statistics, tables, files


def mean_std(values: Iterable[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float('nan'), float('nan')
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def fmt_pm(mean: float, std: float, digits: int = 2) -> str:
    """``'12.34 ± 0.56'``."""
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


def select_best(sweep: List[Dict[str, Any]], default: float,
                metric: str = 'down_val') -> Dict[str, Any]:
    """The sweep entry whose ``summary[metric]['mean']`` (a validation accuracy) is highest.

    Ties (common: the validation split is small) go to the default value when it is among the
    best, else to the first of them in grid order.
    """
    top = max(e['summary'][metric]['mean'] for e in sweep)
    tied = [e for e in sweep if e['summary'][metric]['mean'] >= top - 1e-9]
    return next((e for e in tied if e['value'] == default), tied[0])


def fmt_value(value: float) -> str:
    """Compact knob value (``0``, ``0.003``, ``10``)."""
    return f'{value:g}'


def paired_delta(values: Sequence[float], baseline: Optional[Sequence[float]],
                 digits: int = 2) -> str:
    """``mean ± std`` of the seed-by-seed differences ``values − baseline`` (``'—'`` if none).

    Both lists are in seed order; pairing removes the split-to-split variance that dominates
    the spread of each method's own accuracy.
    """
    if baseline is None or len(baseline) != len(values):
        return '—'
    return fmt_pm(*mean_std(v - b for v, b in zip(values, baseline)), digits=digits)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (first column left-aligned, the others right-aligned)."""
    align = [':--'] + ['--:'] * (len(header) - 1)
    lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join(align) + ' |']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON (NaN/inf are refused: results must be finite)."""
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write('\n')


def environment_info(threads: int) -> Dict[str, Any]:
    """Versions and threads, recorded with the results."""
    import platform

    info: Dict[str, Any] = {'python': platform.python_version(), 'torch': torch.__version__,
                            'numpy': np.__version__, 'torch_threads': threads,
                            'cpu_count': os.cpu_count()}
    try:
        import sklearn
        info['scikit_learn'] = sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    # what produced the numbers: commit (and local changes), all library versions, BLAS
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import provenance
    info['provenance'] = provenance.collect(threads)
    return info


def command_line() -> str:
    """The command that produced the results (script path relative to the working directory)."""
    import shlex

    return ' '.join(shlex.quote(a) for a in ['python', *sys.argv])


class Progress:
    """A progress bar over ``total`` runs: tqdm when installed, else a line every few percent."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.count = 0
        self.start = time.time()
        self._bar = None
        self._last_print = -1
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(total=total, desc=desc, unit='run', dynamic_ncols=True)

    def update(self, note: str = '') -> None:
        """Advance by one run; ``note`` is shown beside the bar."""
        self.count += 1
        if not self.enabled:
            return
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(1)
            return
        pct = int(100 * self.count / max(self.total, 1))
        if pct // 5 != self._last_print or self.count == self.total:
            self._last_print = pct // 5
            elapsed = time.time() - self.start
            print(f'{self.desc}: {self.count}/{self.total} ({pct}%) {elapsed:.0f}s {note}',
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()


# ----------------------------------------------------------------------------------------------
# command line and run skeleton (both tools)


def add_output_arguments(parser: argparse.ArgumentParser, out_dir: str) -> None:
    """Add ``--out-dir`` (default ``out_dir``), ``--seeds`` and ``--render`` /
    ``--update-doc``."""
    parser.add_argument('--out-dir', default=out_dir, help='output folder')
    parser.add_argument('--render', metavar='RESULTS_JSON',
                        help='print the tables of a results.json (committed copies: '
                             'docs/results/) and exit; no training')
    parser.add_argument('--update-doc', metavar='MARKDOWN',
                        help='with --render: replace the text between the markers '
                             '<!-- NAME:begin --> and <!-- NAME:end --> of this page')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4],
                        help='seeds (each one fixes split, init and batch order)')


def add_run_arguments(parser: argparse.ArgumentParser, method_order: Sequence[str]) -> None:
    """Add the model-size, method-selection and run-control options shared by both tools:
    ``--width``, ``--feat-dim``, ``--methods`` (choices ``method_order``), ``--no-sweep``,
    ``--threads``, ``--quick``, ``--no-progress``."""
    parser.add_argument('--width', type=int, default=16, help='channels of conv1')
    parser.add_argument('--feat-dim', type=int, default=128, help='backbone output features')
    parser.add_argument('--methods', nargs='+', choices=method_order, default=list(method_order))
    parser.add_argument('--no-sweep', action='store_true',
                        help='run each method at its default setting only (no tuning)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    parser.add_argument('--quick', action='store_true',
                        help='tiny configuration for tests (2 seeds, few epochs, no sweep)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


def prepare_run(args: argparse.Namespace, methods: Dict[str, Any]) -> Dict[str, Any]:
    """Set the torch threads, create ``args.out_dir`` and return the methods ``--methods``
    selects (each with ``grid`` and ``default``), cut to the default value under ``--no-sweep``.
    """
    if getattr(args, 'update_doc', None):
        raise SystemExit('--update-doc writes the tables of a results file: it needs '
                         '--render RESULTS_JSON (no training is run then)')
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    methods = {k: m for k, m in methods.items() if k in args.methods}
    if args.no_sweep:
        for m in methods.values():
            m.grid = [m.default]
    return methods


def method_result(method: Any, runs: List[Dict[str, Any]],
                  summarize: Callable[[List[Dict[str, Any]]], Dict[str, Any]], metric: str,
                  fields: Sequence[str] = ('key', 'label', 'knob')) -> Dict[str, Any]:
    """One method's entry of ``results.json``: its ``fields``, the grid, the summary of each
    grid value over the seeds (``runs`` with ``method`` and ``value``), the default and the
    value :func:`select_best` picks by ``metric``."""
    sweep = []
    for value in method.grid:
        value_runs = [r for r in runs if r['method'] == method.key and r['value'] == value]
        sweep.append({'value': value, 'summary': summarize(value_runs)})
    best = select_best(sweep, method.default, metric=metric)
    default = next(e for e in sweep if e['value'] == method.default)
    record = {name: getattr(method, name) for name in fields}
    record.update({'grid': list(method.grid), 'default_value': method.default,
                   'selected_value': best['value'], 'default': default['summary'],
                   'selected': best['summary'], 'sweep': sweep})
    return record


def write_results(out_dir: str, markdown: str, result: Dict[str, Any]) -> None:
    """Print ``markdown`` and write it to ``results.md``, ``result`` to ``results.json``."""
    print(markdown)
    with open(os.path.join(out_dir, 'results.md'), 'w', encoding='utf-8') as f:
        f.write(markdown + '\n')
    write_json(os.path.join(out_dir, 'results.json'), result)


def replace_marked_section(path: str, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in the page
    ``path`` by ``text`` (how the rendered results tables reach docs/experiments.md)."""
    begin, end = f'<!-- {name}:begin -->', f'<!-- {name}:end -->'
    with open(path, encoding='utf-8') as f:
        page = f.read()
    if begin not in page or end not in page:
        raise SystemExit(f'{path} has no {begin} ... {end} section')
    head, rest = page.split(begin, 1)
    tail = rest.split(end, 1)[1]
    with open(path, 'w', encoding='utf-8') as f:
        f.write(f'{head}{begin}\n{text.rstrip(chr(10))}\n{end}{tail}')


def render_results(path: str, render: Callable[[Dict[str, Any]], str], name: str,
                   update_doc: Optional[str] = None) -> str:
    """The tables of a results file, printed; with ``update_doc`` also written between the
    ``<!-- name:begin -->`` / ``<!-- name:end -->`` markers of that page (docs/experiments.md
    is generated this way, and a test checks it)."""
    with open(path, encoding='utf-8') as f:
        text = render(json.load(f)).rstrip('\n')
    # headings three levels down, to sit under the page's own sections
    text = '\n'.join('###' + line if line.startswith('#') else line for line in text.split('\n'))
    print(text)
    if update_doc:
        replace_marked_section(update_doc, name, text)
    return text
