"""A tiny procedural world for the IF learning test: a coloured square (the subject: its colour) at a
position the text names (left / right) on a grey background, 8 x 8 px."""
import torch

from if_helpers import TEXT_DIM, TEXT_LEN

SIZE = 8


def position_texts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, TEXT_LEN, TEXT_DIM, generator=g)  # "on the left", "on the right"


def color_words(colors: torch.Tensor, seed=1) -> torch.Tensor:
    """Stand-in text tokens that name a colour (the base model learns to draw colours from words)."""
    w = torch.randn(3, TEXT_DIM, generator=torch.Generator().manual_seed(seed))
    return (colors @ w)[:, None, :].expand(-1, TEXT_LEN // 2, -1)


def prompt(texts, pos, colors=None):
    """Position words in the first half of the tokens; colour words (or the position again) in the second."""
    t = texts[pos].clone()
    if colors is not None:
        t[:, TEXT_LEN // 2:] = color_words(colors)
    return t


def render(colors: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """colors (B, 3) in [-1, 1], pos (B,) 0 = left, 1 = right -> images (B, 3, 16, 16)."""
    b = colors.shape[0]
    img = torch.full((b, 3, SIZE, SIZE), -0.5)
    for i in range(b):
        c0 = 0 if int(pos[i]) == 0 else 4
        img[i, :, 2:6, c0:c0 + 4] = colors[i][:, None, None]
    return img


def region(images: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean colour (B, 3) of the square's area at ``pos``."""
    out = []
    for i in range(images.shape[0]):
        c0 = 0 if int(pos[i]) == 0 else 4
        out.append(images[i, :, 3:5, c0 + 1:c0 + 3].mean(dim=(1, 2)))
    return torch.stack(out)


def random_colors(b, g):
    return torch.rand(b, 3, generator=g) * 1.6 - 0.8


def batch(b, g, texts, k=2):
    """Targets at one position, K exemplars of the same subject at the other one (not a copy task)."""
    from suti.context import Exemplars

    colors = random_colors(b, g)
    pos = torch.randint(0, 2, (b,), generator=g)
    ex_pos = 1 - pos
    x0 = render(colors, pos)
    ex_imgs = render(colors.repeat_interleave(k, 0), ex_pos.repeat_interleave(k, 0)).reshape(b, k, 3, SIZE, SIZE)
    ex = Exemplars(images=ex_imgs, text_emb=texts[ex_pos].unsqueeze(1).expand(b, k, TEXT_LEN, TEXT_DIM).clone(),
                   text_mask=torch.ones(b, k, TEXT_LEN, dtype=torch.bool), mask=torch.ones(b, k, dtype=torch.bool))
    return x0, prompt(texts, pos), torch.ones(b, TEXT_LEN, dtype=torch.bool), ex, colors, pos


def base_batch(b, g, texts):
    """Text-to-image pretraining: half the prompts name the colour."""
    colors = random_colors(b, g)
    pos = torch.randint(0, 2, (b,), generator=g)
    named = torch.rand(b, generator=g) < 0.5
    t = torch.where(named[:, None, None], prompt(texts, pos, colors), prompt(texts, pos))
    return render(colors, pos), t, torch.ones(b, TEXT_LEN, dtype=torch.bool)
