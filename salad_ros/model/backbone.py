"""DINOv2 vision transformer (patch 14), written to load Meta's released weights unchanged.

Parameter names follow the DINOv2 checkpoints (``cls_token``, ``pos_embed``, ``mask_token``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}``,
``norm``) so that ``dinov2_vit*14_pretrain.pth`` and SALAD's ``backbone.model.*`` tensors load as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:  # xformers is optional and only used for CUDA tensors.
    from xformers.ops import memory_efficient_attention as _xformers_attention
except Exception:  # noqa: BLE001 - any import failure (missing, broken CUDA build) means "not available"
    _xformers_attention = None

PATCH_SIZE = 14
#: DINOv2 was trained at 518 px: its positional embedding covers a 37 x 37 patch grid.
POS_GRID = 37


@dataclass(frozen=True)
class ViTSpec:
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int = 0


BACKBONES: dict[str, ViTSpec] = {
    "dinov2_vits14": ViTSpec(384, 12, 6),
    "dinov2_vitb14": ViTSpec(768, 12, 12),
    "dinov2_vitl14": ViTSpec(1024, 24, 16),
    "dinov2_vits14_reg": ViTSpec(384, 12, 6, 4),
    "dinov2_vitb14_reg": ViTSpec(768, 12, 12, 4),
    "dinov2_vitl14_reg": ViTSpec(1024, 24, 16, 4),
}


def backbone_spec(name: str) -> ViTSpec:
    """The architecture of a named DINOv2 backbone; unknown names are a clear error."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}") from None


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, rows*cols, D], row-major grid


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        if _use_xformers(x):
            q, k, v = qkv.unbind(2)  # xformers wants [B, N, heads, head_dim]
            out = _xformers_attention(q, k, v)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, head_dim]
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.proj(out.reshape(b, n, d))


def _use_xformers(x: torch.Tensor) -> bool:
    # Exported graphs (ONNX/TensorRT) must contain only standard ops, so never route tracing through xformers.
    return (
        _xformers_attention is not None
        and x.is_cuda
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
    )


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as DINOv2 was trained with
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT returning the final-normalised token sequence ``[cls, registers..., patches...]``."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        d = spec.embed_dim
        self.embed_dim = d
        self.num_register_tokens = spec.num_register_tokens
        self.patch_embed = PatchEmbed(d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + POS_GRID * POS_GRID, d))
        # Unused at inference; kept so that released checkpoints load with strict key matching.
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        if spec.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_register_tokens, d))
        self.blocks = nn.ModuleList(Block(d, spec.num_heads) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.num_register_tokens:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def interpolated_pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        """Positional embedding for a ``rows x cols`` patch grid: ``[1, 1 + rows*cols, D]``.

        Bicubic, no antialias, with DINOv2's +0.1 offset in the scale factor (which avoids
        floating-point rounding choosing one patch fewer); the class position is kept as is.
        """
        if rows == POS_GRID and cols == POS_GRID:
            return self.pos_embed
        cls_pos = self.pos_embed[:, :1]
        grid = self.pos_embed[:, 1:].reshape(1, POS_GRID, POS_GRID, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid.float(),
            scale_factor=((rows + 0.1) / POS_GRID, (cols + 0.1) / POS_GRID),
            mode="bicubic",
            antialias=False,
        )
        if grid.shape[-2:] != (rows, cols):
            raise RuntimeError(f"positional embedding interpolated to {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([cls_pos, grid], dim=1)

    def prepare_tokens(self, images: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        """Patch-embed ``images`` and add class token, positional embedding and registers."""
        b = images.shape[0]
        rows, cols = grid_size(images.shape[2], images.shape[3])
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        if pos_embed is None:
            pos_embed = self.interpolated_pos_embed(rows, cols)
        x = x + pos_embed
        if self.num_register_tokens:
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        return x

    def forward(self, images: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        x = self.prepare_tokens(images, pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class DinoV2Backbone(nn.Module):
    """DINOv2 with only the last ``num_trainable_blocks`` blocks (and the final norm) trainable.

    Returns the class token ``[B, D]`` and the patch tokens as a feature map ``[B, D, rows, cols]``.
    """

    def __init__(self, name: str = "dinov2_vitb14", num_trainable_blocks: int = 4) -> None:
        super().__init__()
        spec = backbone_spec(name)
        if not 0 <= num_trainable_blocks <= spec.depth:
            raise ValueError(f"num_trainable_blocks must be in [0, {spec.depth}] for {name}, got {num_trainable_blocks}")
        self.name = name
        self.num_channels = spec.embed_dim
        self.num_trainable_blocks = num_trainable_blocks
        self.model = DinoVisionTransformer(spec)
        self._freeze()

    def _freeze(self) -> None:
        n_frozen = len(self.model.blocks) - self.num_trainable_blocks
        for p in self.model.parameters():
            p.requires_grad_(False)
        for blk in self.model.blocks[n_frozen:]:
            for p in blk.parameters():
                p.requires_grad_(True)
        for p in self.model.norm.parameters():
            p.requires_grad_(True)

    def forward(self, images: torch.Tensor, pos_embed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        vit = self.model
        n_frozen = len(vit.blocks) - self.num_trainable_blocks
        # The frozen part needs no autograd graph: saves most of the training memory.
        with torch.set_grad_enabled(torch.is_grad_enabled() and n_frozen == 0):
            x = vit.prepare_tokens(images, pos_embed)
            for blk in vit.blocks[:n_frozen]:
                x = blk(x)
        for blk in vit.blocks[n_frozen:]:
            x = blk(x)
        x = vit.norm(x)
        b, _, h, w = images.shape
        cls = x[:, 0]
        patches = x[:, 1 + vit.num_register_tokens:]
        fmap = patches.reshape(b, h // PATCH_SIZE, w // PATCH_SIZE, self.num_channels).permute(0, 3, 1, 2)
        return cls, fmap


def grid_size(height: int, width: int) -> tuple[int, int]:
    """Patch grid ``(rows, cols)`` for an input size (which must be a multiple of 14)."""
    if height % PATCH_SIZE or width % PATCH_SIZE:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {PATCH_SIZE}")
    return height // PATCH_SIZE, width // PATCH_SIZE


__all__ = ["BACKBONES", "DinoV2Backbone", "DinoVisionTransformer", "PATCH_SIZE", "ViTSpec", "backbone_spec", "grid_size"]
