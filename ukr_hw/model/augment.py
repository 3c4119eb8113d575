"""Label-preserving augmentation of whole batches, in plain torch (no torchvision), cheap on a CPU.

Every transform works on a ``(B, 1, 28, 28)`` float batch in [0, 1] (ink = 1) at once:

* **affine** — rotation (±15° at most: a rotated ``ь`` must stay ``ь``), shift, scale, shear; never a flip;
* **elastic** — a smooth random displacement field (random vectors on a coarse grid, upsampled bilinearly), folded
  into the same ``grid_sample`` call as the affine map, so both cost one resampling;
* **thickness** — thinner or bolder strokes: blend with a 3×3 max-pool dilation or ``-maxpool(-x)`` erosion;
* **noise** — a little Gaussian pixel noise.

Random erasing is deliberately absent: wiping a patch can remove the dots of ``ї`` or the tail of ``щ`` and change
the label. The ink-box features that the case head sees are scaled with the glyph and jittered a little.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

MAX_ROTATION_DEG = 15.0


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    rotation_deg: float = 10.0  #: uniform in ±this (capped at 15°)
    shift: float = 0.08  #: uniform in ±this, as a fraction of the half-width (0.08 ≈ ±1 px)
    scale_min: float = 0.88
    scale_max: float = 1.1
    shear_deg: float = 8.0  #: uniform in ±this
    elastic_alpha: float = 0.06  #: displacement std in normalised coordinates (1.0 = half the image)
    elastic_grid: int = 4  #: coarse grid size of the displacement field (smaller = smoother)
    elastic_prob: float = 0.5
    thickness_prob: float = 0.5  #: share of samples whose stroke width changes
    dilate_max: float = 1.0  #: strongest blend towards the dilated glyph
    erode_max: float = 0.5  #: strongest blend towards the eroded glyph
    noise_std: float = 0.03
    ink_jitter: float = 0.05  #: relative log-normal jitter of the ink-box features

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> AugmentConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(enabled=False)


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (hi - lo) + lo


def affine_theta(n: int, cfg: AugmentConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(n, 2, 3)`` matrices for ``F.affine_grid`` and the per-sample content scale they apply."""
    rot = math.radians(min(abs(cfg.rotation_deg), MAX_ROTATION_DEG))
    a = _uniform(n, -rot, rot, device)
    sh = math.tan(math.radians(abs(cfg.shear_deg)))
    shear = _uniform(n, -sh, sh, device)
    scale = _uniform(n, cfg.scale_min, cfg.scale_max, device)
    tx = _uniform(n, -cfg.shift, cfg.shift, device)
    ty = _uniform(n, -cfg.shift, cfg.shift, device)
    cos, sin = torch.cos(a), torch.sin(a)
    # Forward map of the content: scale · rotation · shear. affine_grid wants output→input, so invert it.
    fwd = torch.zeros(n, 2, 2, device=device)
    fwd[:, 0, 0], fwd[:, 0, 1] = cos, cos * shear - sin
    fwd[:, 1, 0], fwd[:, 1, 1] = sin, sin * shear + cos
    fwd = fwd * scale.view(n, 1, 1)
    inv = torch.linalg.inv(fwd)
    t = torch.stack([tx, ty], dim=1).unsqueeze(2)
    theta = torch.cat([inv, -inv @ t], dim=2)
    return theta, scale


def elastic_field(n: int, size: int, cfg: AugmentConfig, device: torch.device) -> torch.Tensor:
    """A smooth random displacement field ``(n, size, size, 2)`` in normalised coordinates."""
    g = max(2, int(cfg.elastic_grid))
    coarse = torch.randn(n, 2, g, g, device=device) * cfg.elastic_alpha
    on = (torch.rand(n, 1, 1, 1, device=device) < cfg.elastic_prob).float()
    field = F.interpolate(coarse * on, size=(size, size), mode="bicubic", align_corners=True)
    return field.permute(0, 2, 3, 1)


def change_thickness(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Blend each chosen sample towards its 3×3 dilation (bolder) or erosion (thinner)."""
    n = x.shape[0]
    chosen = torch.rand(n, device=x.device) < cfg.thickness_prob
    if not bool(chosen.any()):
        return x
    bolder = torch.rand(n, device=x.device) < 0.5
    amount = torch.rand(n, device=x.device)
    dil = F.max_pool2d(x, 3, stride=1, padding=1)
    ero = -F.max_pool2d(-x, 3, stride=1, padding=1)
    w_dil = (chosen & bolder).float() * amount * cfg.dilate_max
    w_ero = (chosen & ~bolder).float() * amount * cfg.erode_max
    w_dil, w_ero = w_dil.view(n, 1, 1, 1), w_ero.view(n, 1, 1, 1)
    return x + w_dil * (dil - x) + w_ero * (ero - x)


def augment_batch(x: torch.Tensor, ink: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch ``x`` (B,1,H,W) in [0,1] and its ink features ``ink`` (B,2); returns new tensors."""
    if not cfg.enabled or x.shape[0] == 0:
        return x, ink
    n, _, h, w = x.shape
    theta, scale = affine_theta(n, cfg, x.device)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if cfg.elastic_alpha > 0 and cfg.elastic_prob > 0:
        grid = grid + elastic_field(n, h, cfg, x.device)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.thickness_prob > 0:
        out = change_thickness(out, cfg)
    if cfg.noise_std > 0:
        out = out + torch.randn_like(out) * cfg.noise_std
    out = out.clamp_(0.0, 1.0)
    jitter = torch.exp(torch.randn_like(ink) * cfg.ink_jitter)
    ink_out = (ink * scale.view(n, 1) * jitter).clamp(0.0, 1.0)
    return out, ink_out
