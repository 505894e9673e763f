"""Colour subjects shared by the SuTI learning tests: held-out colours no training subject comes near."""
import torch

HELD_OUT = torch.tensor([[0.6, -0.4, -0.4], [-0.4, 0.5, -0.3], [-0.3, -0.4, 0.6],
                         [0.5, 0.5, -0.5], [-0.5, 0.4, 0.5], [0.1, -0.5, 0.3]])


def train_colours(n: int, g: torch.Generator, avoid: float | None = None) -> torch.Tensor:
    """Uniform colours in [-1, 1]^3, rejecting any within 0.2 (L-inf) of a held-out colour, and within 0.4
    of the grey level ``avoid`` (a background) when given."""
    out = []
    while len(out) < n:
        c = torch.rand(n, 3, generator=g) * 2 - 1
        far = (c[:, None] - HELD_OUT[None]).abs().amax(-1).min(1).values > 0.2
        if avoid is not None:
            far &= (c - avoid).abs().amax(-1) > 0.4
        out.extend(c[far])
    return torch.stack(out[:n])
