"""The subject world: procedural subjects, contexts that words can say, and a vector renderer.

A subject's identity is a composition of parts, a palette and a surface pattern (no words name it);
its context (scene, position, size, view, style, colour change, accessory) is said by a prompt.
Every picture is drawn in unit coordinates at a supersampled size and then downscaled, so a 32 px
and a 1024 px render are the same picture. Rendering is deterministic in (subject, context, seed).
"""
from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, fields

from PIL import Image, ImageChops, ImageDraw, ImageFilter

# ----------------------------------------------------------------------------- vocabulary
# Flat, well separated hues: a 32 px model must be able to tell them apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40), "orange": (247, 135, 20), "yellow": (250, 214, 30), "green": (46, 160, 67),
    "blue": (35, 85, 220), "purple": (128, 50, 180), "pink": (250, 130, 190), "brown": (120, 72, 36),
}
COLOUR_NAMES = tuple(COLOURS)
CLASSES = ("toy", "mug", "creature")
BODIES = ("round", "boxy", "pear")
PARTS = {"toy": ("round ears", "pointy ears", "long ears"),
         "mug": ("round handle", "square handle", "two handles"),
         "creature": ("two legs", "four legs", "tentacles")}
PATTERNS = ("plain", "stripes", "dots", "checks", "band")

# Context attributes: value -> prompt phrase. The first value is the default an unspecified
# attribute renders as.
SCENES = {"plain": "on a plain background", "beach": "on the beach", "snow": "in the snow", "jungle": "in the jungle",
          "city": "with a city in the background", "wooden floor": "on a wooden floor",
          "space": "in outer space"}
POSITIONS = {"center": "in the middle", "left": "on the left", "right": "on the right"}
SIZES = {"medium": "medium-sized", "small": "small", "big": "big"}
VIEWS = {"front": "seen from the front", "side": "seen from the side", "back": "seen from behind"}
STYLES = {"photo": "a photo of", "sketch": "a pencil sketch of", "watercolour": "a watercolour painting of"}
ACCESSORIES = {"none": "", "hat": "wearing a red hat", "sunglasses": "wearing sunglasses",
               "scarf": "wearing a blue scarf"}
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "scene": tuple(SCENES), "position": tuple(POSITIONS), "size": tuple(SIZES), "view": tuple(VIEWS),
    "style": tuple(STYLES), "colour": COLOUR_NAMES, "accessory": tuple(ACCESSORIES),
}
# Identity factors a judge reads from pixels. `primary` is left out: a colour change keeps the subject.
IDENTITY_FACTORS: dict[str, tuple[str, ...]] = {
    "cls": CLASSES, "body": BODIES, "parts": ("0", "1", "2"), "secondary": COLOUR_NAMES,
    "accent": COLOUR_NAMES, "pattern": PATTERNS,
}


@dataclass(frozen=True)
class Subject:
    """One subject: class, body shape, part style, a three-colour palette and a pattern."""

    cls: str
    body: str
    parts: int
    primary: str
    secondary: str
    accent: str
    pattern: str

    def __post_init__(self):
        checks = [("cls", self.cls, CLASSES), ("body", self.body, BODIES), ("parts", self.parts, (0, 1, 2)),
                  ("primary", self.primary, COLOUR_NAMES), ("secondary", self.secondary, COLOUR_NAMES),
                  ("accent", self.accent, COLOUR_NAMES), ("pattern", self.pattern, PATTERNS)]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"Subject.{name} must be one of {list(allowed)}, got {value!r}")

    @property
    def noun(self) -> str:
        return self.cls

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.body}-p{self.parts}-{self.primary}-{self.secondary}-{self.accent}-{self.pattern}"

    @property
    def identity_key(self) -> tuple:
        """What stays when the subject is recoloured (its primary colour changes)."""
        return (self.cls, self.body, self.parts, self.secondary, self.accent, self.pattern)

    def factors(self) -> dict[str, str]:
        return {"cls": self.cls, "body": self.body, "parts": str(self.parts), "secondary": self.secondary,
                "accent": self.accent, "pattern": self.pattern}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Subject":
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    @classmethod
    def from_id(cls, subject_id: str) -> "Subject":
        try:
            c, body, p, primary, secondary, accent, pattern = subject_id.split("-")
            return cls(c, body, int(p[1:]), primary, secondary, accent, pattern)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"not a world subject id: {subject_id!r} ({exc})") from exc


def random_subject(rng: random.Random) -> Subject:
    primary, secondary, accent = rng.sample(COLOUR_NAMES, 3)
    return Subject(rng.choice(CLASSES), rng.choice(BODIES), rng.randrange(3), primary, secondary, accent,
                   rng.choice(PATTERNS))


@dataclass(frozen=True)
class Context:
    """Where and how a subject is drawn. None = unspecified (rendered as the attribute's default;
    colour None = the subject's own primary colour)."""

    scene: str | None = None
    position: str | None = None
    size: str | None = None
    view: str | None = None
    style: str | None = None
    colour: str | None = None
    accessory: str | None = None

    def __post_init__(self):
        for name, allowed in ATTRIBUTES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"Context.{name} must be one of {list(allowed)} or None, got {value!r}")

    def specified(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def resolved(self, subject: Subject) -> "Context":
        """Every attribute filled: defaults for the unspecified ones, the subject's colour for colour."""
        filled = {name: getattr(self, name) or values[0] for name, values in ATTRIBUTES.items()}
        filled["colour"] = self.colour or subject.primary
        return Context(**filled)


def random_context(rng: random.Random, p_specified: float = 0.6) -> Context:
    """A random context; each attribute is specified with probability p_specified (colour and
    accessory less often, so most renders keep the subject as it is)."""
    probs = {"scene": p_specified, "position": p_specified * 0.7, "size": p_specified * 0.7,
             "view": p_specified * 0.6, "style": p_specified * 0.4, "colour": p_specified * 0.25,
             "accessory": p_specified * 0.35}
    values = {k: (rng.choice(ATTRIBUTES[k]) if rng.random() < p else None) for k, p in probs.items()}
    if values["accessory"] == "none":
        values["accessory"] = None  # no words say "no accessory"; it is the unspecified default
    if values["view"] == "back" and values["accessory"] == "sunglasses":
        values["accessory"] = None  # sunglasses cannot be seen from behind
    return Context(**values)


# ----------------------------------------------------------------------------- prompts
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def prompt_for(noun: str, context: Context) -> str:
    """The prompt that says `context` about a subject called `noun` ("a small blue toy on the beach")."""
    adjectives = []
    if context.size and SIZES[context.size]:
        adjectives.append(SIZES[context.size])
    if context.colour:
        adjectives.append(context.colour)
    head = " ".join(adjectives + [noun])
    if context.style:
        text = f"{STYLES[context.style]} {_article(head)} {head}"
    else:
        text = f"{_article(head)} {head}"
    for phrase in (POSITIONS.get(context.position or ""), SCENES.get(context.scene or ""),
                   ACCESSORIES.get(context.accessory or ""), VIEWS.get(context.view or "")):
        if phrase:
            text += " " + phrase
    return text


_PARSE_RULES: list[tuple[str, str, str]] = [
    # (attribute, value, regex) checked in order; the first match of an attribute wins
    ("accessory", "hat", r"\bhat\b"), ("accessory", "sunglasses", r"\bsun ?glasses\b|\bglasses\b"),
    ("accessory", "scarf", r"\bscarf\b"),
    ("style", "sketch", r"\bsketch|\bpencil\b|\bdrawing\b"), ("style", "watercolour", r"\bwatercolou?r"),
    ("style", "photo", r"\bphoto\b"),
    ("view", "side", r"\bside\b|\bprofile\b"), ("view", "back", r"\bbehind\b|\bback\b"),
    ("view", "front", r"\bfront\b"),
    ("scene", "snow", r"\bsnow"), ("scene", "beach", r"\bbeach\b|\bsand"), ("scene", "jungle", r"\bjungle\b|\bforest\b"),
    ("scene", "city", r"\bcity\b|\bstreet\b"), ("scene", "wooden floor", r"\bwood(en)?\b|\bfloor\b"),
    ("scene", "space", r"\bspace\b|\bstars\b"), ("scene", "plain", r"\bplain\b"),
    ("position", "left", r"\bleft\b"), ("position", "right", r"\bright\b"),
    ("position", "center", r"\bmiddle\b|\bcent(er|re)\b"),
    ("size", "small", r"\bsmall\b|\btiny\b|\blittle\b"), ("size", "big", r"\bbig\b|\blarge\b|\bhuge\b|\bgiant\b"),
    ("size", "medium", r"\bmedium\b"),
]
# accessory phrases carry their own colour word ("a red hat"); strip them before reading the colour
_ACCESSORY_PHRASE = re.compile(r"\b(?:an?\s+)?(?:\w+\s+)?(?:hat|scarf|sun ?glasses|glasses)\b")


def parse_prompt(prompt: str) -> Context:
    """The context a prompt says, by keywords, whatever the subject noun ("a zorb toy, but blue").
    Words the world does not know are ignored: they leave their attribute unspecified."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    text = prompt.lower()
    values: dict[str, str] = {}
    for attribute, value, pattern in _PARSE_RULES:
        if attribute not in values and re.search(pattern, text):
            values[attribute] = value
    for word in re.findall(r"[a-z]+", _ACCESSORY_PHRASE.sub(" ", text)):
        if word in COLOURS:
            values["colour"] = word
            break
    return Context(**values)


# ----------------------------------------------------------------------------- rendering
INK = (35, 30, 40)
SIZE_HEIGHT = {"small": 0.44, "medium": 0.58, "big": 0.76}
GROUND_Y = 0.9


def _mix(a, b, t: float):
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


class _Canvas:
    """Draws in unit coordinates on a supersampled image."""

    def __init__(self, px: int, background=(255, 255, 255)):
        self.px = px
        self.image = Image.new("RGB", (px, px), background)
        self.draw = ImageDraw.Draw(self.image)

    def p(self, *xy: float) -> list[float]:
        return [v * self.px for v in xy]

    def w(self, width: float) -> int:
        return max(1, int(round(width * self.px)))

    def rect(self, box, fill, outline=None, width=0.0, radius=0.0):
        if radius > 0:
            self.draw.rounded_rectangle(self.p(*box), radius=radius * self.px, fill=fill,
                                        outline=outline, width=self.w(width) if outline else 0)
        else:
            self.draw.rectangle(self.p(*box), fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def ellipse(self, box, fill, outline=None, width=0.0):
        self.draw.ellipse(self.p(*box), fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def polygon(self, points, fill, outline=None, width=0.0):
        flat = [c * self.px for pt in points for c in pt]
        self.draw.polygon(flat, fill=fill, outline=outline, width=self.w(width) if outline else 0)

    def line(self, points, fill, width):
        self.draw.line([c * self.px for pt in points for c in pt], fill=fill, width=self.w(width))


def _draw_scene(cv: _Canvas, scene: str, rng: random.Random) -> None:
    if scene == "plain":
        cv.rect((0, 0, 1, 1), (238, 236, 232))
        cv.rect((0, 0.72, 1, 1), (222, 219, 214))
    elif scene == "beach":
        cv.rect((0, 0, 1, 0.55), (120, 200, 245))
        cv.rect((0, 0.42, 1, 0.58), (30, 120, 200))
        cv.rect((0, 0.58, 1, 1), (240, 214, 140))
        cv.ellipse((0.78, 0.06, 0.92, 0.2), (255, 236, 80))
    elif scene == "snow":
        cv.rect((0, 0, 1, 1), (176, 196, 214))
        cv.polygon([(0, 0.62), (0.25, 0.3), (0.5, 0.62)], (150, 165, 185))
        cv.polygon([(0.4, 0.62), (0.72, 0.22), (1.0, 0.62)], (140, 158, 180))
        cv.rect((0, 0.6, 1, 1), (250, 250, 252))
        for _ in range(14):
            x, y = rng.random(), rng.random() * 0.55
            cv.ellipse((x - 0.012, y - 0.012, x + 0.012, y + 0.012), (255, 255, 255))
    elif scene == "jungle":
        cv.rect((0, 0, 1, 1), (20, 80, 35))
        for _ in range(9):
            x, y = rng.random(), rng.random() * 0.7
            cv.ellipse((x - 0.13, y - 0.05, x + 0.13, y + 0.05), (70, 150, 50))
        cv.rect((0, 0.7, 1, 1), (60, 45, 25))
    elif scene == "city":
        cv.rect((0, 0, 1, 1), (250, 180, 110))
        x = 0.0
        while x < 1.0:
            bw, bh = 0.1 + rng.random() * 0.12, 0.25 + rng.random() * 0.4
            cv.rect((x, 0.72 - bh, x + bw, 0.72), (70, 72, 90))
            for wy in (0.72 - bh + 0.05, 0.72 - bh + 0.15):
                if wy < 0.66:
                    cv.rect((x + 0.02, wy, x + bw - 0.02, wy + 0.035), (255, 230, 120))
            x += bw + 0.02
        cv.rect((0, 0.72, 1, 1), (110, 110, 115))
    elif scene == "wooden floor":
        cv.rect((0, 0, 1, 0.55), (230, 220, 200))
        cv.rect((0, 0.55, 1, 1), (176, 112, 58))
        for y in (0.65, 0.77, 0.89):
            cv.line([(0, y), (1, y)], (120, 70, 30), 0.012)
    elif scene == "space":
        cv.rect((0, 0, 1, 1), (12, 12, 40))
        for _ in range(18):
            x, y = rng.random(), rng.random() * 0.7
            cv.ellipse((x - 0.008, y - 0.008, x + 0.008, y + 0.008), (255, 255, 230))
        cv.ellipse((0.05, 0.05, 0.3, 0.3), (200, 90, 60))
        cv.rect((0, 0.74, 1, 1), (120, 120, 130))
        cv.ellipse((0.2, 0.8, 0.35, 0.86), (90, 90, 100))
    else:  # Context validated the name; this is a programming error
        raise ValueError(f"unknown scene {scene!r}")


def _draw_body_shape(draw: ImageDraw.ImageDraw, px: int, shape: str, box, **style) -> None:
    x0, y0, x1, y1 = [v * px for v in box]
    if shape == "round":
        draw.ellipse((x0, y0, x1, y1), **style)
    elif shape == "boxy":
        draw.rounded_rectangle((x0, y0, x1, y1), radius=0.18 * (x1 - x0), **style)
    else:  # pear: narrow top, wide bottom
        w = x1 - x0
        draw.polygon([(x0 + 0.28 * w, y0), (x1 - 0.28 * w, y0), (x1, y1 - 0.12 * (y1 - y0)), (x1 - 0.1 * w, y1),
                      (x0 + 0.1 * w, y1), (x0, y1 - 0.12 * (y1 - y0))], **style)


def _body_mask(px: int, shape: str, box) -> Image.Image:
    mask = Image.new("L", (px, px), 0)
    _draw_body_shape(ImageDraw.Draw(mask), px, shape, box, fill=255)
    return mask


def _pattern_layer(px: int, pattern: str, box, base, accent) -> Image.Image:
    layer = Image.new("RGB", (px, px), base)
    cv = _Canvas.__new__(_Canvas)
    cv.px, cv.image, cv.draw = px, layer, ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if pattern == "stripes":  # three bold horizontal stripes
        for i in range(3):
            top = y0 + h * (0.18 + 0.27 * i)
            cv.rect((x0, top, x1, top + h * 0.13), accent)
    elif pattern == "dots":
        r = 0.16 * min(w, h)
        for fx, fy in ((0.3, 0.35), (0.7, 0.35), (0.5, 0.68)):
            cx, cy = x0 + fx * w, y0 + fy * h
            cv.ellipse((cx - r, cy - r, cx + r, cy + r), accent)
    elif pattern == "checks":
        n = 3
        for i in range(n):
            for j in range(n):
                if (i + j) % 2 == 0:
                    cv.rect((x0 + w * i / n, y0 + h * j / n, x0 + w * (i + 1) / n, y0 + h * (j + 1) / n), accent)
    elif pattern == "band":  # one wide vertical band down the middle
        cv.rect((x0 + 0.36 * w, y0, x0 + 0.64 * w, y1), accent)
    return layer


def _draw_subject(cv: _Canvas, subject: Subject, ctx: Context, jitter: tuple[float, float, float]) -> None:
    """ctx is resolved. jitter = (dx, dy, scale) in unit coordinates."""
    primary, secondary, accent = COLOURS[ctx.colour], COLOURS[subject.secondary], COLOURS[subject.accent]
    if ctx.view == "back":  # the back is in shade: a bold cue for the view
        primary, accent = _mix(primary, INK, 0.3), _mix(accent, INK, 0.3)
    h = SIZE_HEIGHT[ctx.size] * jitter[2]
    aspect = {"toy": 0.72, "mug": 0.8, "creature": 0.9}[subject.cls]
    w = h * aspect * (0.68 if ctx.view == "side" else 1.0)
    margin = 0.04 + (0.12 * h if subject.cls == "mug" else 0.06 * h)  # room for handles and ears
    span = max(0.0, 0.5 - w / 2 - margin)
    cx = {"center": 0.5, "left": 0.5 - span, "right": 0.5 + span}[ctx.position] + jitter[0]
    bottom = GROUND_Y + jitter[1]
    top = bottom - h
    ow = 0.012  # outline width
    # shadow
    cv.ellipse((cx - w * 0.6, bottom - 0.025, cx + w * 0.6, bottom + 0.025), _mix(INK, (128, 128, 128), 0.6))
    facing = 1  # side view faces right

    # --- class layout: body box, head box (toy), part boxes
    if subject.cls == "toy":
        head_h = h * 0.42
        body_box = (cx - w / 2, top + head_h * 0.85, cx + w / 2, bottom)
        head_w = w * (0.9 if ctx.view != "side" else 1.0)
        head_box = (cx - head_w / 2, top, cx + head_w / 2, top + head_h)
        face_box = head_box
    elif subject.cls == "mug":
        body_box = (cx - w / 2, top, cx + w / 2, bottom)
        head_box = None
        face_box = (body_box[0], top + h * 0.12, body_box[2], top + h * 0.55)
    else:
        leg_h = h * 0.26 if subject.parts != 2 else h * 0.22
        body_box = (cx - w / 2, top, cx + w / 2, bottom - leg_h)
        head_box = None
        face_box = (body_box[0], top, body_box[2], top + (bottom - leg_h - top) * 0.55)

    # --- parts behind the body
    if subject.cls == "toy":
        hx0, hy0, hx1, hy1 = head_box
        hw, hh = hx1 - hx0, hy1 - hy0
        ear_xs = [0.22, 0.78] if ctx.view != "side" else [0.35]
        for fx in ear_xs:
            ex = hx0 + fx * hw
            if subject.parts == 0:  # round ears
                r = 0.26 * hw
                cv.ellipse((ex - r, hy0 - r * 1.1, ex + r, hy0 + r * 0.9), secondary, INK, ow)
            elif subject.parts == 1:  # pointy ears
                cv.polygon([(ex - 0.22 * hw, hy0 + 0.2 * hh), (ex, hy0 - 0.55 * hh),
                            (ex + 0.22 * hw, hy0 + 0.2 * hh)], secondary, INK, ow)
            else:  # long ears
                cv.ellipse((ex - 0.13 * hw, hy0 - 0.85 * hh, ex + 0.13 * hw, hy0 + 0.3 * hh), secondary, INK, ow)
    elif subject.cls == "mug":
        bx0, by0, bx1, by1 = body_box
        bh = by1 - by0
        sides = {"front": [1], "side": [-1], "back": [-1]}[ctx.view]
        if subject.parts == 2:
            sides = [-1, 1] if ctx.view != "side" else [-1]
        for s in sides:
            edge = bx1 if s > 0 else bx0
            hw = 0.28 * (bx1 - bx0) / (0.68 if ctx.view == "side" else 1.0)
            box = (edge - hw, by0 + 0.22 * bh, edge + hw, by0 + 0.72 * bh)
            if subject.parts == 1:
                cv.rect(box, secondary, INK, ow)
                inner = (box[0] + 0.45 * hw, box[1] + 0.25 * bh * 0.5, box[2] - 0.45 * hw, box[3] - 0.25 * bh * 0.5)
                cv.rect(inner, _background_probe(cv, inner), None)
            else:
                cv.ellipse(box, secondary, INK, ow)
                inner = (box[0] + 0.45 * hw, box[1] + 0.12 * bh, box[2] - 0.45 * hw, box[3] - 0.12 * bh)
                cv.ellipse(inner, _background_probe(cv, inner), None)
    else:
        bx0, by0, bx1, by1 = body_box
        bw = bx1 - bx0
        if subject.parts == 0:
            legs = [0.3, 0.7] if ctx.view != "side" else [0.4, 0.6]
        elif subject.parts == 1:
            legs = [0.15, 0.38, 0.62, 0.85] if ctx.view != "side" else [0.2, 0.4, 0.6, 0.8]
        else:
            legs = [0.2, 0.4, 0.6, 0.8] if ctx.view != "side" else [0.3, 0.5, 0.7]
        for fx in legs:
            lx = bx0 + fx * bw
            if subject.parts == 2:  # tentacles: wavy triangles
                cv.polygon([(lx - 0.1 * bw, by1 - 0.05), (lx + 0.1 * bw, by1 - 0.05),
                            (lx + 0.14 * bw, bottom)], secondary, INK, ow)
            else:
                lw = 0.09 * bw if subject.parts == 1 else 0.15 * bw
                cv.rect((lx - lw, by1 - 0.05, lx + lw, bottom), secondary, INK, ow)

    # --- body with its pattern (and the toy's head, same palette)
    for box, shape in ([(body_box, subject.body)] + ([(head_box, "round")] if head_box else [])):
        mask = _body_mask(cv.px, shape, box)
        pattern = subject.pattern if box is body_box else "plain"
        cv.image.paste(_pattern_layer(cv.px, pattern, box, primary, accent), (0, 0), mask)
        _draw_body_shape(cv.draw, cv.px, shape, box, outline=INK, width=cv.w(ow))
    if subject.cls == "mug":  # rim
        bx0, by0, bx1, _ = body_box
        cv.ellipse((bx0 + 0.02 * w, by0 - 0.04, bx1 - 0.02 * w, by0 + 0.08), secondary, INK, ow)

    # --- face (or the back's tail)
    fx0, fy0, fx1, fy1 = face_box
    fw, fh = fx1 - fx0, fy1 - fy0
    eye_r = 0.1 * min(fw / (0.68 if ctx.view == "side" else 1), fh * 1.6)
    eye_y = fy0 + 0.5 * fh
    if ctx.view == "back":
        tcx, tcy = cx, (body_box[1] + body_box[3]) / 2
        r = 0.14 * (body_box[2] - body_box[0])
        cv.ellipse((tcx - r, tcy - r, tcx + r, tcy + r), secondary, INK, ow)
        eyes = []
    elif ctx.view == "side":
        eyes = [fx0 + (0.6 if facing > 0 else 0.4) * fw]
        nr = max(0.09 * fw, 0.025)  # a snout sticking out on the facing side
        nx = fx1 if facing > 0 else fx0
        cv.ellipse((nx - nr, eye_y + 0.2 * fh - nr, nx + nr, eye_y + 0.2 * fh + nr), secondary, INK, ow)
    else:
        eyes = [fx0 + 0.32 * fw, fx0 + 0.68 * fw]
    for ex in eyes:
        cv.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), (255, 255, 255), INK, ow * 0.8)
        pr = eye_r * 0.55
        cv.ellipse((ex - pr + eye_r * 0.2 * (ctx.view == "side"), eye_y - pr, ex + pr + eye_r * 0.2 * (ctx.view == "side"),
                    eye_y + pr), INK)

    # --- accessory
    # accessories are bold: they must show on a small subject at 32 px
    if ctx.accessory == "hat":
        top_box = head_box or body_box
        tx0, ty0, tx1, _ = top_box
        tw = tx1 - tx0
        hat_c = COLOURS["red"]
        cv.rect((tx0 + 0.2 * tw, ty0 - 0.02 - 0.6 * tw, tx1 - 0.2 * tw, ty0), hat_c, INK, ow)
        cv.rect((tx0 - 0.08 * tw, ty0 - 0.03, tx1 + 0.08 * tw, ty0 + 0.03), hat_c, INK, ow)
    elif ctx.accessory == "sunglasses" and eyes:
        band_h = max(eye_r * 2.6, 0.05)
        if len(eyes) == 2:
            gx0, gx1 = fx0 + 0.12 * fw, fx1 - 0.12 * fw
        else:
            gx0, gx1 = fx0 + 0.3 * fw, fx1 - 0.02 * fw
        cv.rect((gx0, eye_y - band_h / 2, gx1, eye_y + band_h / 2), (15, 15, 20), radius=band_h / 3)
        cv.line([(gx0 + 0.02, eye_y - band_h * 0.2), (gx1 - 0.02, eye_y - band_h * 0.2)], (230, 230, 235), 0.008)
    elif ctx.accessory == "scarf":
        scarf_c = COLOURS["blue"]
        sy = body_box[1] + 0.02 if subject.cls == "toy" else fy1 + 0.02
        sx0, sx1 = body_box[0] - 0.03, body_box[2] + 0.03
        cv.rect((sx0, sy - 0.045, sx1, sy + 0.045), scarf_c, INK, ow, radius=0.02)
        tail_x = cx + (0.2 if ctx.view != "back" else -0.2) * w
        cv.rect((tail_x - 0.04, sy, tail_x + 0.04, sy + 0.2), scarf_c, INK, ow)
        for y in (sy + 0.08, sy + 0.14):  # white stripes: a scarf, not a belt
            cv.rect((tail_x - 0.04, y, tail_x + 0.04, y + 0.025), (250, 250, 250))


def _background_probe(cv: _Canvas, box) -> tuple[int, int, int]:
    """The background colour behind a handle's hole (so the hole shows the scene)."""
    x = min(cv.px - 1, max(0, int((box[0] + box[2]) / 2 * cv.px)))
    y = min(cv.px - 1, max(0, int((box[1] + box[3]) / 2 * cv.px)))
    return cv.image.getpixel((x, y))


def _apply_style(image: Image.Image, style: str) -> Image.Image:
    px = image.width
    if style == "photo":
        return image
    if style == "sketch":  # graphite lines from a difference of blurs, on light paper tones
        grey = image.convert("L")
        blurred = grey.filter(ImageFilter.GaussianBlur(px * 0.012))
        lines = ImageChops.difference(grey, blurred).point(lambda v: min(255, v * 4))
        tone = grey.point(lambda v: 175 + v * 80 // 255)
        out = ImageChops.subtract(tone, lines)
        return Image.merge("RGB", (out, out, out.point(lambda v: max(0, v - 8))))
    if style == "watercolour":  # soft edges, pale washes, no ink
        soft = image.filter(ImageFilter.GaussianBlur(px * 0.009))
        paper = Image.new("RGB", image.size, (250, 246, 236))
        return Image.blend(soft, paper, 0.38)
    raise ValueError(f"unknown style {style!r}")


def render(subject: Subject, context: Context | None = None, size: int = 64, seed: int = 0,
           jitter: float = 0.0, supersample: int = 4) -> Image.Image:
    """Draw `subject` in `context` as a size x size RGB image.

    seed fixes the scene's details (leaves, stars, buildings) and, with jitter > 0, a small random
    offset and scale of the subject (jitter is the largest offset as a fraction of the picture).
    The drawing is made at size * supersample pixels (at most 4096) and box-filtered down.
    """
    if not isinstance(subject, Subject):
        raise TypeError(f"subject must be a Subject, got {type(subject).__name__}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    ctx = (context or Context()).resolved(subject)
    rng = random.Random(f"{seed}")
    px = min(4096, size * max(1, int(supersample)))
    cv = _Canvas(px)
    _draw_scene(cv, ctx.scene, rng)
    jit = (0.0, 0.0, 1.0)
    if jitter > 0:
        jit = (rng.uniform(-jitter, jitter), rng.uniform(-jitter, jitter) * 0.5, 1.0 + rng.uniform(-jitter, jitter))
    _draw_subject(cv, subject, ctx, jit)
    image = _apply_style(cv.image, ctx.style)
    return image.resize((size, size), Image.BOX) if px != size else image


def render_prompt(subject: Subject, prompt: str, size: int = 64, seed: int = 0, jitter: float = 0.0) -> Image.Image:
    """Render what `prompt` says about `subject` (keywords, see parse_prompt)."""
    return render(subject, parse_prompt(prompt), size=size, seed=seed, jitter=jitter)


def render_boilerplate(index: int, size: int = 128) -> Image.Image:
    """A site logo or banner (not a subject): a few fixed flat shapes per index, repeated across pages."""
    rng = random.Random(f"boilerplate:{index}")
    px = size * 4
    cv = _Canvas(px, background=tuple(rng.randrange(200, 256) for _ in range(3)))
    c1, c2 = rng.sample(list(COLOURS.values()), 2)
    if index % 2 == 0:  # logo: ring and bar
        cv.ellipse((0.15, 0.15, 0.85, 0.85), c1)
        cv.ellipse((0.3, 0.3, 0.7, 0.7), cv.image.getpixel((1, 1)))
        cv.rect((0.1, 0.45, 0.9, 0.55), c2)
    else:  # banner: diagonal stripes
        for i in range(-4, 8):
            x = i * 0.18
            cv.polygon([(x, 1), (x + 0.09, 1), (x + 0.5, 0), (x + 0.41, 0)], c1 if i % 2 else c2)
    return cv.image.resize((size, size), Image.BOX)


__all__ = ["COLOURS", "COLOUR_NAMES", "CLASSES", "BODIES", "PARTS", "PATTERNS", "ATTRIBUTES", "IDENTITY_FACTORS",
           "SCENES", "POSITIONS", "SIZES", "VIEWS", "STYLES", "ACCESSORIES", "Subject", "Context",
           "random_subject", "random_context", "prompt_for", "parse_prompt", "render", "render_prompt",
           "render_boilerplate"]
