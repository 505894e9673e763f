"""Helpers of the suti serve tests: a tiny SuTI pipeline and photo-like renders of one subject."""
import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw


def build_tiny_suti(enc, sr: bool = True):
    from suti.pipeline import new_pipeline
    from suti.presets import preset

    torch.manual_seed(0)
    cfgs = [preset("tiny-base32", text_embed_dim=enc.dim, context=True, stage_name="base")]
    if sr:
        cfgs.append(preset("tiny-sr64", text_embed_dim=enc.dim, stage_name="sr64"))
    pipe = new_pipeline(enc, cfgs)
    for n, p in pipe.cascade.named_parameters():  # "trained": zero output layers would hide the exemplars
        if "out" in n and p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return pipe



def render_subject(index: int, size=(320, 240), mode="RGB", fmt="JPEG") -> bytes:
    """A photo-like render of one subject (a striped orange mug) in a different place each time."""
    rng = np.random.default_rng(index)
    w, h = size
    bg = tuple(int(v) for v in rng.integers(150, 240, 3))
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    d.rectangle((0, int(h * 0.7), w, h), fill=tuple(max(0, c - 60) for c in bg))  # a floor
    cx, cy, r = int(w * (0.3 + 0.2 * index)), int(h * 0.55), int(min(w, h) * 0.22)
    d.rounded_rectangle((cx - r, cy - r, cx + r, cy + r), radius=r // 3, fill=(245, 130, 20))
    for k in range(-r + 8, r, 16):
        d.line((cx - r + 4, cy + k, cx + r - 4, cy + k), fill=(120, 50, 10), width=5)
    d.arc((cx + r - 10, cy - r // 2, cx + r + r // 2, cy + r // 2), -90, 90, fill=(245, 130, 20), width=9)
    buf = io.BytesIO()
    im.convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def wait_done(client, job_id, limit_s=300):
    deadline = time.monotonic() + limit_s  # a guard against a hang, not a speed check
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("done", "error", "cancelled"):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish within {limit_s} s: {job}")


class GatedPipe:
    """The real pipeline, held at a gate before each call, so queue states can be observed exactly."""

    def __init__(self, pipe, fail_with=None):
        self.pipe, self.cascade, self.fail_with = pipe, pipe.cascade, fail_with
        self.gate, self.entered, self.prompts = threading.Event(), threading.Semaphore(0), []

    def __call__(self, prompt, **kw):
        self.prompts.append(prompt)
        self.entered.release()
        assert self.gate.wait(120), "test gate never opened"
        if self.fail_with is not None and prompt == "fail":
            raise self.fail_with
        return self.pipe(prompt, **kw)
