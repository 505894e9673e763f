"""Checks a generation request from the page and says what is wrong in words a user can act on."""
from __future__ import annotations

import math
import secrets

from .jobs import FIT_MODES, GUIDANCE_MODES
from .settings import ServeSettings


class RequestError(ValueError):
    pass


def _number(payload: dict, key: str, kind, default, lo, hi, label: str):
    value = payload.get(key, default)
    if value is None or value == "":
        return default
    try:
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
    except (TypeError, ValueError):
        raise RequestError(f"{label} must be {'a whole number' if kind is int else 'a number'}, got {value!r}") from None
    if not lo <= value <= hi:
        raise RequestError(f"{label} must be between {lo} and {hi}, got {value}")
    return value


def parse_generation(payload, limits: ServeSettings) -> dict:
    """The checked settings of one request: prompt, subjects [(upload id, caption)], and sampling options."""
    if not isinstance(payload, dict):
        raise RequestError("the request must be a JSON object")
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("write a prompt: it says what to draw the subject doing, or where")
    prompt = prompt.strip()
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(f"the prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    subjects = payload.get("subjects") or []
    if not isinstance(subjects, list):
        raise RequestError("subjects must be a list of {upload, caption}")
    if len(subjects) > limits.max_photos:
        raise RequestError(f"give at most {limits.max_photos} subject photos, got {len(subjects)}")
    parsed_subjects = []
    for i, s in enumerate(subjects):
        if not isinstance(s, dict) or not isinstance(s.get("upload"), str):
            raise RequestError(f"subject {i + 1}: expected an uploaded photo id")
        caption = s.get("caption") or ""
        if not isinstance(caption, str):
            raise RequestError(f"subject {i + 1}: the caption must be text")
        caption = caption.strip()
        if len(caption) > limits.max_caption_chars:
            raise RequestError(f"subject {i + 1}: the caption is {len(caption)} characters; the limit is "
                               f"{limits.max_caption_chars}")
        parsed_subjects.append((s["upload"], caption))
    if len({u for u, _ in parsed_subjects}) != len(parsed_subjects):
        raise RequestError("the same photo is given twice; each subject photo counts once")
    mode = payload.get("guidance_mode") or "interleaved"
    if mode not in GUIDANCE_MODES:
        raise RequestError(f"guidance mode must be one of {', '.join(GUIDANCE_MODES)}, got {mode!r}")
    fit = payload.get("fit") or "center-crop"
    if fit not in FIT_MODES:
        raise RequestError(f"fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    seed = _number(payload, "seed", int, None, 0, 2**63 - 1, "seed")
    return dict(
        prompt=prompt, subjects=parsed_subjects, guidance_mode=mode, fit=fit,
        num_images=_number(payload, "num_images", int, 1, 1, limits.max_images, "number of images"),
        steps=_number(payload, "steps", int, limits.default_steps, 1, limits.max_steps, "steps"),
        guidance=_number(payload, "guidance", float, limits.default_guidance, 0.0, 50.0, "text guidance scale"),
        context_guidance=_number(payload, "context_guidance", float, None, 0.0, 50.0, "context guidance scale"),
        text_ratio=_number(payload, "text_ratio", float, 0.5, 0.0, 1.0, "text-guided share of steps"),
        seed=secrets.randbits(31) if seed is None else seed,  # chosen here so the PNGs can record it
    )
