"""SuTI's in-context path attached to a diffusers ``UNet2DConditionModel`` (DeepFloyd IF) by hooks.

The U-Net itself is untouched: its weights, its forward code, its attention processors. Forward hooks
add a zero-initialised cross-attention over exemplar features (with a learned null key/value, the
project's ``suti.unet.Attention``) after chosen blocks:

    "down{i}"  after the last attention (or resnet) of down block i, before its downsampler, so the
               skip connection and the next block both see it
    "mid"      after the mid block
    "up{j}"    after the last attention (or resnet) of up block j, before its upsampler

Encoder reuse: the exemplars run through the U-Net's *own* forward (conv_in, time embedding, the text
embedding with each exemplar's own text, down blocks, mid block) at its cleanest timestep; the run
stops right after the mid block. The features a context layer reads are the exemplar's map at the
same resolution: its own position for down/mid layers, and down block ``n-1-j`` for up block j.

Until the new layers are trained, outputs are bitwise those of the stock U-Net (the output projection
is zero, and ``x + 0`` is ``x``).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..context import Exemplars
from ..unet import Attention, ProjectedContext

DEFAULT_PLACEMENT = ("down-1", "mid", "up0")  # lowest-resolution down block, mid block, first up block


class _StopAfterMid(Exception):
    """Ends the exemplar pass after the mid block (the up path is not part of the encoder)."""


def resolve_placement(unet, placement) -> tuple[str, ...]:
    """Normalise placement names ("down-1" -> "down3" for a 4-level U-Net) and check them."""
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    out = []
    for name in placement:
        m = re.fullmatch(r"(down|up)(-?\d+)|mid", str(name))
        if m is None:
            raise ValueError(f"context placement {name!r}: use 'down<i>', 'mid' or 'up<j>' (negative i counts back)")
        if name == "mid":
            if unet.mid_block is None:
                raise ValueError("context placement 'mid': this U-Net has no mid block")
            out.append("mid")
            continue
        kind, i = m.group(1), int(m.group(2))
        n = n_down if kind == "down" else n_up
        if not -n <= i < n:
            raise ValueError(f"context placement {name!r}: the U-Net has {n} {kind} blocks")
        out.append(f"{kind}{i % n}")
    if len(set(out)) != len(out):
        raise ValueError(f"context placement {tuple(placement)} names a block twice")
    return tuple(out)


def _hook_point(block) -> nn.Module:
    """The submodule whose output is the block's feature map before resampling."""
    attns = getattr(block, "attentions", None)
    return attns[-1] if attns is not None and len(attns) else block.resnets[-1]


class IFContextUNet(nn.Module):
    """A diffusers U-Net plus SuTI context attention at ``placement``.

    ``forward(sample, timestep, encoder_hidden_states, class_labels=None, context=None)`` returns the
    U-Net's output tensor; ``context`` is a ``ProjectedContext`` (see ``project_context``) or None.
    """

    def __init__(self, unet, placement=DEFAULT_PLACEMENT, head_dim: int = 64, num_groups: int = 32):
        super().__init__()
        self.unet = unet
        self.placement = resolve_placement(unet, placement)
        chans = list(unet.config.block_out_channels)
        n = len(chans)
        self.context_attn = nn.ModuleDict()
        self.source = {}  # context layer -> exemplar feature it reads
        for name in self.placement:
            if name == "mid":
                ch, src = chans[-1], "mid"
            elif name.startswith("down"):
                ch, src = chans[int(name[4:])], name
            else:
                j = int(name[2:])
                ch, src = chans[n - 1 - j], f"down{n - 1 - j}"
            self.context_attn[name] = Attention(ch, head_dim, num_groups, kv_dim=ch, zero_out=True)
            self.source[name] = src
        # Hooks read this state: what the current forward should do at each hook point.
        self._context: ProjectedContext | None = None
        self._capture: dict | None = None
        self._handles = []
        points = {f"down{i}": _hook_point(b) for i, b in enumerate(unet.down_blocks)}
        points.update({f"up{j}": _hook_point(b) for j, b in enumerate(unet.up_blocks)})
        if unet.mid_block is not None:
            points["mid"] = unet.mid_block
        wanted = set(self.placement) | set(self.source.values())
        for name in sorted(wanted):
            self._handles.append(points[name].register_forward_hook(self._make_hook(name)))

    # -- hooks --------------------------------------------------------------------------------------
    def _make_hook(self, name: str):
        def hook(module, args, output):
            if self._capture is not None:  # exemplar pass: record, never modify
                if name in self._capture:
                    self._capture[name] = output
                if name == "mid":
                    raise _StopAfterMid
                return None
            if name in self.context_attn:
                return self._attend(name, output)
            return None

        return hook

    def _attend(self, name: str, x: torch.Tensor) -> torch.Tensor:
        layer = self.context_attn[name]
        if self._context is None:
            # No exemplars: the learned null key/value alone (what rows with dropped context train on).
            kv = x.new_zeros(x.shape[0], 0, 2 * x.shape[1])
            mask = torch.zeros(x.shape[0], 0, dtype=torch.bool, device=x.device)
        else:
            kv, mask = self._context[name]
        return layer(x, mask=mask, kv=kv.to(x.dtype))

    # -- the two passes -----------------------------------------------------------------------------
    def forward(self, sample, timestep, encoder_hidden_states, class_labels=None, context=None):
        # Set, not cleared afterwards: gradient checkpointing may re-run a hooked resnet during backward.
        self._context, self._capture = context, None
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels,
                         return_dict=False)[0]

    def encoder_features(self, sample, timestep, encoder_hidden_states, class_labels=None) -> dict:
        """Encoder reuse: the U-Net's own forward up to the mid block. Returns ``{source: (N, C, h, w)}``."""
        wanted = sorted(set(self.source.values()))
        self._capture = dict.fromkeys(wanted)
        try:
            self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels,
                      return_dict=False)
        except _StopAfterMid:
            pass
        finally:
            feats, self._capture = self._capture, None
        missing = [k for k, v in feats.items() if v is None]
        if missing:
            raise RuntimeError(f"exemplar pass did not reach {missing}")
        return feats

    def project_context(self, tokens: dict) -> ProjectedContext:
        """``{source: (tokens (B, N, C), mask (B, N))}`` -> each context layer's keys/values."""
        out = ProjectedContext()
        for name, layer in self.context_attn.items():
            tok, mask = tokens[self.source[name]]
            out[name] = (layer.project_tokens(tok), mask)
        return out

    @property
    def out(self):
        """The U-Net's output layers, as the project's U-Net exposes them (``pipeline.warn_if_untrained``)."""
        return (self.unet.conv_out,)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def context_parameters(self):
        return self.context_attn.parameters()

    def num_context_parameters(self) -> int:
        return sum(p.numel() for p in self.context_attn.parameters())


def flatten_exemplar_features(feats: dict, b: int, k: int, mask: torch.Tensor) -> dict:
    """(B*K, C, h, w) maps -> ``{source: (tokens (B, K*h*w, C), mask (B, K*h*w))}``; padded slots masked."""
    out = {}
    for key, f in feats.items():
        _, c, h, w = f.shape
        tokens = f.reshape(b, k, c, h * w).permute(0, 1, 3, 2).reshape(b, k * h * w, c)
        out[key] = (tokens, mask[:, :, None].expand(b, k, h * w).reshape(b, k * h * w))
    return out


class IFExemplarCache:
    """Exemplar keys/values for one generation: encoded and projected once, then shared by every step and
    guidance branch (``cache=True``); ``cache=False`` recomputes them per call. ``encode`` is a callable
    returning the flattened exemplar features (the stage knows the text and low-res handling)."""

    def __init__(self, model: IFContextUNet, encode, batch_rows: int, batch: int, cache: bool = True):
        if batch % batch_rows:
            raise ValueError(f"{batch_rows} exemplar rows cannot be spread over a batch of {batch}")
        self.model, self.encode, self.cache = model, encode, cache
        self.repeats = batch // batch_rows
        self._kv = None
        self.encode_calls = 0

    def projected(self) -> ProjectedContext:
        if self._kv is not None:
            return self._kv
        self.encode_calls += 1
        kv = self.model.project_context(self.encode())
        if self.repeats > 1:
            kv = ProjectedContext((n, (v.repeat_interleave(self.repeats, 0), m.repeat_interleave(self.repeats, 0)))
                                  for n, (v, m) in kv.items())
        if self.cache:
            self._kv = kv
        return kv


__all__ = ["DEFAULT_PLACEMENT", "Exemplars", "IFContextUNet", "IFExemplarCache", "resolve_placement",
           "flatten_exemplar_features"]
