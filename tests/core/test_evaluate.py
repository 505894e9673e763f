import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from suti.evaluate import evaluate, fill, read_dreambench
from suti.pipeline import new_pipeline
from suti.presets import preset

SHARED = Path(__file__).resolve().parents[3] / "shared" / "dreambench"


@pytest.mark.skipif(not (SHARED / "prompts_and_classes.txt").is_file(), reason="shared/dreambench not present")
def test_dreambench_prompts_parse():
    classes, prompts = read_dreambench(SHARED)
    assert classes["teapot"] == "teapot" and classes["dog"] == "dog" and len(classes) == 30
    assert len(prompts["object"]) == 25 and len(prompts["live"]) == 25
    assert fill(prompts["object"][14], "sks", "teapot") == "a sks teapot floating in an ocean of milk"


@pytest.mark.skipif(not (SHARED / "teapot").is_dir(), reason="shared/dreambench not present")
def test_evaluate_scores_real_subject(tmp_path, tiny_text_encoder):
    from retrieval import Embedder

    root = tmp_path / "bench"
    (root / "teapot").mkdir(parents=True)
    shutil.copy(SHARED / "prompts_and_classes.txt", root)
    for p in sorted((SHARED / "teapot").glob("*.jpg"))[:3]:
        Image.open(p).resize((64, 64)).save(root / "teapot" / p.name)
    torch.manual_seed(0)
    clip = Embedder.from_config({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                 "patch_size": 8, "head_width": 16},
                                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                              "layers": 1}}, name="tiny-eval")
    pipe = new_pipeline(tiny_text_encoder, [preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim, context=True,
                                                   stage_name="base")])
    res = evaluate(pipe, root, clip, prompts_per_subject=2, steps=1, grid_path=tmp_path / "grid.png")
    s = res["subjects"]["teapot"]
    assert s["prompts"] == 2 and -1 <= s["clip_i"] <= 1 and -1 <= s["clip_t"] <= 1 and s["dino"] is None
    assert (tmp_path / "grid.png").is_file()
    json.dumps(res)
    # The paper's baselines through the same protocol: fine-tuned per subject first, then prompted with the
    # learned identifier; CLIP-T still scores the plain prompt.
    for method in ("dreambooth", "textual_inversion"):
        res = evaluate(pipe, root, clip, prompts_per_subject=1, steps=1, method=method, baseline_steps=2)
        s = res["subjects"]["teapot"]
        assert res["method"] == method and s["setup_s"] > 0 and -1 <= s["clip_i"] <= 1
    assert "<teapot>" in pipe.token_embeddings
    with pytest.raises(ValueError, match="method"):
        evaluate(pipe, root, clip, method="imagic")


def test_cli_refuses_an_unverified_clip_scorer_unless_allowed(tmp_path, tiny_text_encoder, capsys):
    """A randomly initialised CLIP scored CLIP-I 0.92 beside the paper's 0.819 with no warning."""
    from retrieval import Embedder

    from suti.cli import main
    from suti.evaluate import clip_scorer_status

    root = tmp_path / "bench"
    (root / "teapot").mkdir(parents=True)
    (root / "prompts_and_classes.txt").write_text(
        "Classes\nsubject_name,class\nteapot,teapot\n\nObject Prompts\n"
        "prompt_list = [\n'a {0} {1} in the jungle'.format(unique_token, class_token),\n]\n")
    for i, rgb in enumerate([(200, 40, 40), (190, 50, 45)]):
        Image.new("RGB", (48, 40), rgb).save(root / "teapot" / f"{i:02d}.jpg")
    torch.manual_seed(0)
    clip = Embedder.from_config({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                 "patch_size": 8, "head_width": 16},
                                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                              "layers": 1}}, name="tiny-eval-cli")
    clip_dir = clip.save_pretrained(tmp_path / "clip")
    pipe = new_pipeline(tiny_text_encoder, [preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim, context=True,
                                                   stage_name="base")])
    pipe.save_pretrained(tmp_path / "ckpt")
    argv = ["evaluate", "--model", str(tmp_path / "ckpt"), "--dreambench", str(root), "--clip",
            f"local-dir:{clip_dir}", "--steps", "1", "--out", str(tmp_path / "eval.json")]
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("suti evaluate:")]
    assert len(err) == 1 and "random or untrained weights" in err[0] and "--allow-unverified-scorer" in err[0]
    assert not (tmp_path / "eval.json").exists()
    assert main(argv + ["--allow-unverified-scorer"]) == 0
    assert "not comparable with the paper" in capsys.readouterr().err
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["scorer"]["clip_known_pretrained"] is False and res["scorer"]["comparable_with_paper"] is False
    assert res["subjects"]["teapot"]["prompts"] == 1
    assert clip_scorer_status("ViT-B-32:openai")[0] and not clip_scorer_status("ViT-B-32:my-weights")[0]


def _tiny_vit_folder(folder: Path) -> Path:
    """A Hugging Face ViT folder (config, weights, image processor) as DinoScorer loads a DINO checkpoint."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                    patch_size=8)
    ViTModel(cfg).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.skipif(not (SHARED / "teapot").is_dir(), reason="shared/dreambench not present")
def test_dino_scores_real_photos_identity_is_one_and_the_oracle_beats_shuffled(tmp_path, tiny_text_encoder):
    from retrieval import Embedder

    from suti.evaluate import DinoScorer, real_image_anchors

    dino = DinoScorer(str(_tiny_vit_folder(tmp_path / "vit")))
    photo = SHARED / "teapot" / "00.jpg"
    e = dino.embed([photo, photo, SHARED / "dog" / "00.jpg"])
    assert float(e[0] @ e[1]) == pytest.approx(1.0, abs=1e-5)  # an identical pair scores 1
    assert float(e[0] @ e[2]) < 0.999

    root = tmp_path / "bench"
    root.mkdir()
    shutil.copy(SHARED / "prompts_and_classes.txt", root)
    names = ["backpack", "berry_bowl", "cat", "dog", "red_cartoon", "teapot", "vase"]
    for name in names:
        (root / name).mkdir()
        for p in sorted((SHARED / name).glob("*.jpg"))[:4]:
            Image.open(p).convert("RGB").resize((64, 64)).save(root / name / p.name)
    torch.manual_seed(0)
    clip = Embedder.from_config({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                 "patch_size": 8, "head_width": 16},
                                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                                              "layers": 1}}, name="tiny-eval-anchors")
    anchors = real_image_anchors(root, clip, dino)["overall"]
    # Photos of one subject are nearer each other than to another subject's, by both scorers.
    assert anchors["real_images_dino"] > anchors["shuffled_dino"] + 0.05, anchors
    assert anchors["real_images_clip_i"] > anchors["shuffled_clip_i"] + 0.02, anchors

    pipe = new_pipeline(tiny_text_encoder, [preset("tiny-base32", text_embed_dim=tiny_text_encoder.dim, context=True,
                                                   stage_name="base")])
    res = evaluate(pipe, root, clip, dino, subjects=["teapot", "dog"], prompts_per_subject=1, steps=1)
    assert res["overall"]["dino"] is not None and -1 <= res["subjects"]["teapot"]["dino"] <= 1
    measured = res["measured_anchors"]["overall"]
    assert measured["real_images_dino"] > measured["shuffled_dino"]
