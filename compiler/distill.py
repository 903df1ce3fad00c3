"""Knowledge distillation (Hinton et al.): train a smaller student on the teacher's soft targets.

loss = alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, labels)
Without labels the loss is the soft-target term only. Training is seeded and single-batch-order
deterministic so two builds with the same seed give the same student (and the same bytes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from compiler.data import Dataset
from compiler.errors import CompileInputError
from compiler.loading import eval_mode, load_callable


@dataclass(frozen=True)
class DistillConfig:
    student: str  # module:function returning an untrained nn.Module
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 30
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3

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

    def to_dict(self) -> dict[str, Any]:
        return {"teacher_accuracy": self.teacher_accuracy, "student_accuracy": self.student_accuracy,
                "teacher_params": self.teacher_params, "student_params": self.student_params,
                "teacher_bytes_fp32": self.teacher_params * 4, "student_bytes_fp32": self.student_params * 4,
                "final_loss": round(self.final_loss, 6)}


def n_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _accuracy(model: Any, ds: Dataset | None) -> float | None:
    import torch

    if ds is None or ds.labels is None:
        return None
    with torch.no_grad():
        out = model(*(torch.from_numpy(v) for v in ds.inputs.values()))
    return round(float((out.argmax(-1).numpy() == ds.labels).mean()), 6)


def hinton_loss(student_logits: Any, teacher_logits: Any, labels: Any | None, temperature: float, alpha: float) -> Any:
    import torch.nn.functional as F

    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean") * (t * t)
    if labels is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def distill(teacher: Any, train: Dataset, cfg: DistillConfig, evaluation: Dataset | None = None,
            progress: bool = True) -> DistillResult:
    import torch

    if not 0.0 <= cfg.alpha <= 1.0 or cfg.temperature <= 0 or cfg.epochs < 1:
        raise CompileInputError("distillation needs 0 <= alpha <= 1, temperature > 0 and epochs >= 1")
    torch.manual_seed(cfg.seed)
    student = load_callable(cfg.student, "--distill")()
    if not isinstance(student, torch.nn.Module):
        raise CompileInputError(f"--distill {cfg.student!r} returned {type(student).__name__}, expected nn.Module")
    teacher = eval_mode(teacher)
    xs = [torch.from_numpy(np.ascontiguousarray(v)) for v in train.inputs.values()]
    labels = torch.from_numpy(train.labels.astype(np.int64)) if train.labels is not None else None
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
                                   None if labels is None else labels[idx], cfg.temperature, cfg.alpha)
                loss.backward()
                opt.step()
                loss_value = float(loss.detach())
            bar.advance(task)
    student.eval()
    return DistillResult(student, _accuracy(teacher, evaluation), _accuracy(student, evaluation),
                         n_params(teacher), n_params(student), loss_value)
