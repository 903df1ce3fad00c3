"""Knowledge distillation (Hinton et al.): train a smaller student on the teacher's soft targets.

loss = alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, labels)
Without labels the loss is the soft-target term only. Training is seeded and single-batch-order
deterministic so two builds with the same seed give the same student (and the same bytes).

Slices (issue 14): when the training data carries `slices` (a group id per sample), each sample's
loss is weighted by n / (k * n_slice) (k slices), so every slice weighs the same in the loss
whatever its size (`slice_weighting = "balanced"`, the default; "none" turns it off). A minority
slice then shapes the student as much as the majority, which narrows its accuracy gap; the weights
and the student's per-slice accuracy are recorded in the distil pass's lineage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from compiler.data import Dataset
from compiler.errors import CompileInputError
from compiler.loading import eval_mode, load_callable

SLICE_WEIGHTING = ("balanced", "none")


@dataclass(frozen=True)
class DistillConfig:
    student: str  # module:function returning an untrained nn.Module
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 30
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    slice_weighting: str = "balanced"  # or "none"; applies only when the training data has slices

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DistillResult:
    student: Any
    teacher_accuracy: float | None
    student_accuracy: float | None
    teacher_params: int
    student_params: int
    final_loss: float
    slice_weights: dict[str, float] | None = None  # per-sample loss weight of each slice (None: unweighted)
    student_slice_accuracy: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"teacher_accuracy": self.teacher_accuracy, "student_accuracy": self.student_accuracy,
               "teacher_params": self.teacher_params, "student_params": self.student_params,
               "teacher_bytes_fp32": self.teacher_params * 4, "student_bytes_fp32": self.student_params * 4,
               "final_loss": round(self.final_loss, 6)}
        if self.slice_weights is not None:
            out["slice_weights"] = self.slice_weights
        if self.student_slice_accuracy is not None:
            out["student_slice_accuracy"] = self.student_slice_accuracy
        return out


def n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _correct(model: Any, ds: Dataset | None) -> np.ndarray | None:
    import torch

    if ds is None or ds.labels is None:
        return None
    with torch.no_grad():
        out = model(*(torch.from_numpy(v) for v in ds.inputs.values()))
    return out.argmax(-1).numpy() == ds.labels


def _accuracy(model: Any, ds: Dataset | None) -> float | None:
    ok = _correct(model, ds)
    return None if ok is None else round(float(ok.mean()), 6)


def slice_accuracy(model: Any, ds: Dataset | None) -> dict[str, float] | None:
    """Accuracy per slice of `ds` (None without labels or slices)."""
    ok = _correct(model, ds)
    if ok is None or ds is None or ds.slices is None:
        return None
    return {str(s): round(float(ok[ds.slices == s].mean()), 6) for s in np.unique(ds.slices)}


def balanced_weights(slices: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Per-sample weights n / (k * n_slice): each of the k slices sums to n / k."""
    values, inverse, counts = np.unique(slices, return_inverse=True, return_counts=True)
    per_slice = len(slices) / (len(values) * counts.astype(np.float64))
    return per_slice[inverse].astype(np.float32), {str(v): round(float(w), 6) for v, w in zip(values, per_slice,
                                                                                          strict=True)}


def hinton_loss(student_logits: Any, teacher_logits: Any, labels: Any | None, temperature: float, alpha: float,
                weights: Any | None = None) -> Any:
    """The distillation loss of one batch; `weights` (per sample) makes it a weighted mean."""
    import torch.nn.functional as F

    t = temperature
    log_s, p_t = F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1)
    if weights is None:
        soft = F.kl_div(log_s, p_t, reduction="batchmean") * (t * t)
        return soft if labels is None else alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)
    per = F.kl_div(log_s, p_t, reduction="none").sum(dim=-1) * (t * t)
    if labels is not None:
        per = alpha * per + (1 - alpha) * F.cross_entropy(student_logits, labels, reduction="none")
    return (per * weights).sum() / weights.sum()


def distill(teacher: Any, train: Dataset, cfg: DistillConfig, evaluation: Dataset | None = None,
            progress: bool = True) -> DistillResult:
    import torch

    if not 0.0 <= cfg.alpha <= 1.0 or cfg.temperature <= 0 or cfg.epochs < 1:
        raise CompileInputError("distillation needs 0 <= alpha <= 1, temperature > 0 and epochs >= 1")
    if cfg.slice_weighting not in SLICE_WEIGHTING:
        raise CompileInputError(f"distillation slice_weighting must be one of {', '.join(SLICE_WEIGHTING)}")
    torch.manual_seed(cfg.seed)
    student = load_callable(cfg.student, "--distill")()
    if not isinstance(student, torch.nn.Module):
        raise CompileInputError(f"--distill {cfg.student!r} returned {type(student).__name__}, expected nn.Module")
    teacher = eval_mode(teacher)
    xs = [torch.from_numpy(np.ascontiguousarray(v)) for v in train.inputs.values()]
    labels = torch.from_numpy(train.labels.astype(np.int64)) if train.labels is not None else None
    weights, slice_weights = None, None
    if cfg.slice_weighting == "balanced" and train.slices is not None:
        w, slice_weights = balanced_weights(np.asarray(train.slices))
        weights = torch.from_numpy(w)
    with torch.no_grad():
        teacher_logits = teacher(*xs)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_value = float("nan")
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("distilling", total=cfg.epochs)
        for _ in range(cfg.epochs):
            student.train()
            order = torch.randperm(train.n, generator=gen)
            for i in range(0, train.n, cfg.batch_size):
                idx = order[i:i + cfg.batch_size]
                opt.zero_grad()
                loss = hinton_loss(student(*(x[idx] for x in xs)), teacher_logits[idx],
                                   None if labels is None else labels[idx], cfg.temperature, cfg.alpha,
                                   None if weights is None else weights[idx])
                loss.backward()
                opt.step()
                loss_value = float(loss.detach())
            bar.advance(task)
    student.eval()
    return DistillResult(student, _accuracy(teacher, evaluation), _accuracy(student, evaluation),
                         n_params(teacher), n_params(student), loss_value, slice_weights,
                         slice_accuracy(student, evaluation))
