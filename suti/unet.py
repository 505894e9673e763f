"""Efficient U-Net (Imagen, Saharia et al. 2022, appendix B) with SuTI context attention.

Read top to bottom: embeddings, residual block, attention blocks, the down/up levels, the U-Net.

Efficient U-Net choices kept here:
- more residual blocks at low resolution (per-level ``num_res_blocks``);
- skip connections from the down stack are scaled by 1/sqrt(2);
- down-sampling happens *before* a level's convolutions and up-sampling *after* them (SR stages
  with ``downsample_first`` do it at every level, so no block runs at full resolution);
- text enters twice: cross-attention over token embeddings, and an attention-pooled vector
  added to the time embedding.

SuTI / Re-Imagen: ``context_attention`` levels add a cross-attention layer over exemplar features
produced by this same network's down stack and middle block (see ``suti.context``). Its output
projection is zero-initialised, so a text-to-image checkpoint converts to an identical model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig


# ----------------------------------------------------------------------------- embeddings
def sinusoidal_embedding(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Fourier features of a (B,) float tensor (continuous time or aug level in [0, 1])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class AttentionPool(nn.Module):
    """Attention pooling of text tokens into one vector (query = learned + mean token), masked."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        denom = mask.sum(1, keepdim=True).clamp(min=1).to(tokens.dtype)
        mean = (tokens * mask[..., None]).sum(1, keepdim=True) / denom[..., None]
        q = self.to_q(self.query + mean)
        k, v = self.to_kv(tokens).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out(out.transpose(1, 2).reshape(b, d))


# ----------------------------------------------------------------------------- residual block
class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, with a FiLM (scale, shift) from the conditioning embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


# ----------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Pre-norm attention over a feature map, residual. Keys/values come from the map itself
    (self-attention) or from a token sequence (cross-attention to text or to exemplar features).

    Cross-attention always sees one learned "null" key/value, so a fully masked condition (dropped
    text for classifier-free guidance, or no exemplars) is well defined.
    """

    def __init__(self, ch: int, head_dim: int, groups: int, kv_dim: int | None = None, zero_out: bool = False):
        super().__init__()
        self.heads = max(1, ch // head_dim)
        self.cross = kv_dim is not None
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.to_q = nn.Linear(ch, ch, bias=False)
        self.to_kv = nn.Linear(kv_dim if self.cross else ch, 2 * ch, bias=False)
        if self.cross:
            self.kv_norm = nn.LayerNorm(kv_dim)
            self.null_kv = nn.Parameter(torch.randn(1, 1, 2 * ch) * ch**-0.5)
        self.out = nn.Linear(ch, ch)
        if zero_out:
            zero_module(self.out)

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Keys and values (B, N, 2C) of a cross-attention token sequence. Split out so fixed tokens
        (exemplar features) are projected once per generation, not once per step."""
        return self.to_kv(self.kv_norm(tokens))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                kv: torch.Tensor | None = None):
        b, c, h, w = x.shape
        q_in = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.to_q(q_in)
        if self.cross:
            kv = self.project_tokens(tokens) if kv is None else kv
            kv = torch.cat([self.null_kv.to(kv.dtype).expand(b, -1, -1), kv], dim=1)
            mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)
            attn_mask = mask[:, None, None, :]
        else:
            kv = self.to_kv(q_in)
            attn_mask = None
        k, v = kv.chunk(2, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.out(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class ProjectedContext(dict):
    """Exemplar context after each context-attention layer's key/value projection:
    ``{layer name: (kv (B, N, 2C), mask (B, N))}``. What the U-Net blocks read."""


@dataclass
class Conditioning:
    """Everything a U-Net block reads besides the feature map."""

    emb: torch.Tensor  # (B, E) time (+ aug level) + pooled text
    text: torch.Tensor  # (B, L, cond_dim)
    text_mask: torch.Tensor  # (B, L) bool
    context: ProjectedContext | None = None


class Level(nn.Module):
    """Residual blocks then attention layers at one resolution (one DBlock or UBlock body)."""

    def __init__(self, cfg: UNetConfig, in_ch: int, ch: int, n_blocks: int, emb_dim: int, cond_dim: int,
                 self_attn: bool, cross_attn: bool, context_attn: bool, context_key: str, layer_name: str):
        super().__init__()
        g = cfg.num_groups
        self.blocks = nn.ModuleList(
            [ResBlock(in_ch if i == 0 else ch, ch, emb_dim, g, cfg.dropout) for i in range(n_blocks)]
        )
        self.self_attn = Attention(ch, cfg.head_dim, g) if self_attn else None
        self.cross_attn = Attention(ch, cfg.head_dim, g, kv_dim=cond_dim) if cross_attn else None
        # Exemplar features at this resolution have this level's channel count.
        self.context_attn = Attention(ch, cfg.head_dim, g, kv_dim=ch, zero_out=True) if context_attn else None
        self.context_key = context_key  # which exemplar feature map this level reads (shared by down/up)
        self.layer_name = layer_name  # this level's own name (down*/middle/up*): its projected keys/values

    def forward(self, x: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cond.emb)
        if self.self_attn is not None:
            x = self.self_attn(x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, cond.text, cond.text_mask)
        if self.context_attn is not None:
            if cond.context is None:
                # No exemplars: attend to the learned null key/value alone, which is exactly what training
                # sees for rows whose context was dropped, so "no subject" stays on a trained path.
                kv = x.new_zeros(x.shape[0], 0, 2 * x.shape[1])
                mask = torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
            else:
                kv, mask = cond.context[self.layer_name]
            x = self.context_attn(x, mask=mask, kv=kv)
        return x


# ----------------------------------------------------------------------------- the U-Net
class EfficientUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        chs = [cfg.base_channels * m for m in cfg.channel_mults]
        emb_dim = cfg.base_channels * cfg.time_embed_mult
        cond_dim = emb_dim

        self.time_mlp = nn.Sequential(nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.aug_mlp = (
            nn.Sequential(nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if cfg.lowres_cond else None
        )
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_embed_dim), nn.Linear(cfg.text_embed_dim, cond_dim))
        self.text_pool = AttentionPool(cond_dim, cfg.attention_pool_heads)
        self.null_pooled = nn.Parameter(torch.zeros(1, cond_dim))
        self.pooled_to_emb = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, emb_dim))

        in_ch = cfg.in_channels * (2 if cfg.lowres_cond else 1)
        self.init_conv = nn.Conv2d(in_ch, chs[0], 3, padding=1)

        # Down stack: DBlock = [downsample conv] -> res blocks -> attention.
        self.downsamples = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = chs[0]
        for i, ch in enumerate(chs):
            down = i > 0 or cfg.downsample_first
            self.downsamples.append(nn.Conv2d(prev, ch, 3, stride=2, padding=1) if down else nn.Identity())
            self.down.append(Level(cfg, ch, ch, cfg.num_res_blocks[i], emb_dim, cond_dim, cfg.self_attention[i],
                                   cfg.cross_attention[i], cfg.context_attention[i], f"level{i}", f"down{i}"))
            prev = ch

        low = cfg.num_levels - 1
        self.middle = Level(cfg, chs[-1], chs[-1], 2, emb_dim, cond_dim, cfg.middle_self_attention,
                            cfg.cross_attention[low], cfg.middle_context_attention, "middle", "middle")

        # Up stack: UBlock = concat scaled skip -> res blocks -> attention -> [upsample conv].
        self.up = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(cfg.num_levels)):
            ch = chs[i]
            self.up.append(Level(cfg, prev + ch, ch, cfg.num_res_blocks[i], emb_dim, cond_dim,
                                 cfg.self_attention[i], cfg.cross_attention[i], cfg.context_attention[i], f"level{i}",
                                 f"up{i}"))
            out = chs[i - 1] if i > 0 else ch
            up = i > 0 or cfg.downsample_first
            self.upsamples.append(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, padding=1))
                if up else nn.Identity()
            )
            prev = out

        self.out = nn.Sequential(nn.GroupNorm(min(cfg.num_groups, chs[0]), chs[0]), nn.SiLU(),
                                 zero_module(nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)))

    # -- conditioning ------------------------------------------------------------------------
    def conditioning(self, t, text_emb, text_mask, aug_level=None, context=None) -> Conditioning:
        cfg = self.config
        emb = self.time_mlp(sinusoidal_embedding(t, cfg.base_channels))
        if self.aug_mlp is not None:
            if aug_level is None:
                aug_level = torch.zeros_like(t)
            emb = emb + self.aug_mlp(sinusoidal_embedding(aug_level, cfg.base_channels))
        text_mask = text_mask.bool()
        text = self.text_proj(text_emb.to(emb.dtype))
        has_text = text_mask.any(dim=1, keepdim=True)
        # A row with no valid token (dropped text) uses the learned null vector.
        safe_mask = text_mask | ~has_text
        pooled = torch.where(has_text, self.text_pool(text, safe_mask), self.null_pooled.to(text.dtype))
        emb = emb + self.pooled_to_emb(pooled)
        return Conditioning(emb=emb, text=text, text_mask=text_mask, context=context)

    # -- the two halves --------------------------------------------------------------------------
    def _input(self, x, lowres):
        if self.config.lowres_cond:
            if lowres is None:
                raise ValueError("this super-resolution U-Net needs `lowres` (the upsampled low-res image)")
            x = torch.cat([x, lowres.to(x.dtype)], dim=1)
        return self.init_conv(x)

    def encode(self, h, cond: Conditioning):
        """Down stack and middle block over the stem output. Returns the middle output and the skips."""
        skips = []
        for downsample, level in zip(self.downsamples, self.down):
            h = level(downsample(h), cond)
            skips.append(h)
        h = self.middle(h, cond)
        return h, skips

    def decode(self, h, skips, cond: Conditioning):
        for level, upsample in zip(self.up, self.upsamples):
            h = torch.cat([h, skips.pop() * (2**-0.5)], dim=1)
            h = upsample(level(h, cond))
        return self.out(h)

    def forward(self, x, t, text_emb, text_mask, *, lowres=None, aug_level=None, context=None):
        """Predict eps or v for noisy images ``x`` (B,C,H,W) at continuous times ``t`` (B,) in [0, 1].

        ``context`` is exemplar features from ``suti.context.encode_exemplars``, or the same already
        through ``project_context`` (what the sampler's exemplar cache holds), or None.
        """
        if x.shape[-1] != self.config.image_size or x.shape[-2] != self.config.image_size:
            raise ValueError(f"U-Net built for {self.config.image_size}px input, got {tuple(x.shape[-2:])}")
        if context is not None and not isinstance(context, ProjectedContext):
            context = self.project_context(context)
        cond = self.conditioning(t, text_emb, text_mask, aug_level, context)
        h, skips = self.encode(self._input(x, lowres), cond)
        return self.decode(h, skips, cond)

    def project_context(self, features: dict) -> ProjectedContext:
        """``{level key: (tokens, mask)}`` (``suti.context.encode_exemplars``) -> per-layer keys/values."""
        out = ProjectedContext()
        for level in [*self.down, self.middle, *self.up]:
            if level.context_attn is not None:
                if level.context_key not in features:
                    raise KeyError(f"exemplar features lack {level.context_key!r} (have {sorted(features)})")
                tokens, mask = features[level.context_key]
                out[level.layer_name] = (level.context_attn.project_tokens(tokens), mask)
        return out

    def exemplar_features(self, images, t, text_emb, text_mask, *, lowres=None, aug_level=None):
        """Encoder reuse (Re-Imagen/SuTI): run exemplars through the down stack and middle block with
        their own text. Returns ``{level key: (B, C, h, w)}`` for the context levels."""
        cond = self.conditioning(t, text_emb, text_mask, aug_level, context=None)
        h, skips = self.encode(self._input(images, lowres), cond)
        feats = {}
        for i, on in enumerate(self.config.context_attention):
            if on:
                feats[f"level{i}"] = skips[i]
        if self.config.middle_context_attention:
            feats["middle"] = h
        return feats

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
