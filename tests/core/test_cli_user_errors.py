"""What a new user met at the command line: every expected error is one line and exit status 2; retrieved
exemplars are shown and kept; the thread count has a sane default."""
import json

import pytest
import torch
from PIL import Image

from suti.cli import is_expected_error, main, thread_count
from suti.pipeline import new_pipeline
from suti.presets import preset

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def base_only(tmp_path_factory, tiny_text_encoder):
    """A text-to-image cascade with a base stage only, and a SuTI (context) one."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    enc = tiny_text_encoder
    for name, context in (("t2i", False), ("suti", True)):
        pipe = new_pipeline(enc, [preset("tiny-base32", text_embed_dim=enc.dim, context=context, stage_name="base")])
        for s in pipe.cascade.stages:  # as if trained (an all-zero output layer draws noise, with a warning)
            torch.nn.init.normal_(s.unet.out[-1].weight, std=0.05)
        pipe.save_pretrained(root / name)
    return root


def _error_lines(capsys, command):
    err = capsys.readouterr().err.splitlines()
    return [x for x in err if x.startswith(f"suti {command}:")]


def _run(capsys, argv):
    rc = main(argv)
    return rc, _error_lines(capsys, argv[0])


def test_stop_at_a_stage_the_checkpoint_lacks(base_only, tmp_path, capsys):
    rc, err = _run(capsys, ["sample", "--model", str(base_only / "t2i"), "--prompt", "a dog", "--stop-at", "sr256",
                            "--out", str(tmp_path / "g.png"), "--steps", "1"])
    assert rc == 2 and len(err) == 1 and "has no stage 'sr256'; its stages are base" in err[0]
    assert not (tmp_path / "g.png").exists()


def test_sample_writes_a_grid_when_arguments_are_good(base_only, tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["sample", "--model", str(base_only / "t2i"), "--prompt", "a dog", "--stop-at", "base",
                 "--out", str(out), "--steps", "1", "--num-images", "2"]) == 0
    with Image.open(out) as im:
        assert im.size[1] >= 32


@pytest.mark.parametrize("argv,words", [
    (["--prompt", "   "], "--prompt is empty"),
    (["--prompt", "a dog", "--steps", "0"], "--steps must be >= 1"),
    (["--prompt", "a dog", "--guidance", "nan"], "--guidance must be a finite number"),
    (["--prompt", "a dog", "--aug-level", "3"], "--aug-level must be in [0, 1]"),
])
def test_bad_sampling_arguments(base_only, tmp_path, capsys, argv, words):
    rc, err = _run(capsys, ["sample", "--model", str(base_only / "t2i"), "--out", str(tmp_path / "g.png"), *argv])
    assert rc == 2 and len(err) == 1 and words in err[0]


def test_generate_rejects_tiny_or_unreadable_exemplars_empty_prompt_and_orphan_captions(base_only, tmp_path, capsys):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "dot.png")
    Image.new("RGB", (40, 7), (255, 0, 0)).save(tmp_path / "strip.png")
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "ok.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    model = ["--model", str(base_only / "suti"), "--out", str(tmp_path / "g.png"), "--steps", "1"]
    cases = [
        (["--prompt", "a dog", "--subject", str(tmp_path / "dot.png")], "1x1 px is too small"),
        (["--prompt", "a dog", "--subject", str(tmp_path / "strip.png")], "40x7 px is too small"),
        (["--prompt", "a dog", "--subject", str(tmp_path / "notes.jpg")], "notes.jpg: cannot read it as an image"),
        (["--prompt", "a dog", "--subject", str(tmp_path / "missing.jpg")], "missing.jpg: cannot read it"),
        (["--prompt", "", "--subject", str(tmp_path / "ok.png")], "--prompt is empty"),
        (["--prompt", "a dog", "--subject-text", "my dog"], "no --subject images were given"),
        (["--prompt", "a dog", "--subject", str(tmp_path / "ok.png"), "--subject-text", " "], "a caption is empty"),
        (["--prompt", "a dog"], "generate needs --subject images"),
    ]
    for argv, words in cases:
        rc, err = _run(capsys, ["generate", *model, *argv])
        assert rc == 2 and len(err) == 1 and words in err[0], (argv, err)
    assert not (tmp_path / "g.png").exists()
    rc, err = _run(capsys, ["generate", *model, "--prompt", "a dog", "--subject", str(tmp_path / "ok.png"),
                            "--subject-text", "a red square"])
    assert rc == 0 and not err and (tmp_path / "g.png").is_file()


def test_damaged_checkpoint_files_are_one_line_errors(base_only, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(base_only / "t2i", bad)
    argv = ["sample", "--model", str(bad), "--prompt", "a dog", "--out", str(tmp_path / "g.png"), "--steps", "1"]
    cfg_path = bad / "base" / "config.json"
    good = json.loads(cfg_path.read_text())
    for doc, words in [("[1, 2]", "expected a mapping, got list"), ("null", "expected a mapping, got NoneType"),
                       (json.dumps({**good, "unet": {**good["unet"], "num_groups": 0}}), "num_groups must be >= 1"),
                       (json.dumps({**good, "unet": {**good["unet"], "base_channels": "wide"}}), "base_channels must be"),
                       (json.dumps({**good, "diffusion": {**good["diffusion"], "logsnr_min": float("nan")}}),
                        "logsnr_min must be a finite number")]:
        cfg_path.write_text(doc)
        rc, err = _run(capsys, argv)
        assert rc == 2 and len(err) == 1 and str(cfg_path) in err[0] and words in err[0], (doc, err)
    assert not (tmp_path / "g.png").exists()  # NaN log-SNR no longer draws an image
    cfg_path.write_text(json.dumps(good))
    (bad / "cascade.json").write_text("[\"base\"]")
    rc, err = _run(capsys, argv)
    assert rc == 2 and len(err) == 1 and "cascade.json" in err[0]


def test_retrieve_from_lists_and_keeps_the_exemplars(base_only, tmp_path, capsys):
    from retrieval import Embedder, PairsDatabase

    torch.manual_seed(0)
    clip_dir = Embedder.from_config(TINY_CLIP, name="tiny-clip-cli").save_pretrained(tmp_path / "clip")
    emb = Embedder.from_pretrained(f"local-dir:{clip_dir}")
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for name, rgb in {"red": (220, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 220)}.items():
        Image.new("RGB", (40, 36), rgb).save(pairs / f"{name}.jpg")
        (pairs / f"{name}.txt").write_text(f"a {name} square")
    PairsDatabase.build(tmp_path / "db", emb, image_folder=pairs, progress=False)
    out = tmp_path / "grid.png"
    assert main(["generate", "--model", str(base_only / "suti"), "--prompt", "a red square", "--retrieve-from",
                 str(tmp_path / "db"), "--k", "2", "--steps", "1", "--num-images", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    kept = json.loads((tmp_path / "grid.exemplars" / "exemplars.json").read_text())
    assert len(kept["exemplars"]) == 2 and kept["prompt"] == "a red square"
    for ex in kept["exemplars"]:
        assert ex["caption"] in printed and ex["file"] in printed and ex["caption"].startswith("a ")
        with Image.open(tmp_path / "grid.exemplars" / ex["file"]) as im:
            assert im.size == (40, 36)
    assert out.is_file()
    rc, err = _run(capsys, ["generate", "--model", str(base_only / "suti"), "--prompt", "a dog", "--retrieve-from",
                            str(tmp_path / "db"), "--subject-text", "my dog", "--out", str(out)])
    assert rc == 2 and "--retrieve-from brings its own captions" in err[0]


def test_thread_count_default_and_overrides(monkeypatch):
    monkeypatch.delenv("SUTI_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n, why = thread_count()
    assert 1 <= n <= 4 and why.startswith("min(4, ")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_count() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("SUTI_THREADS", "2")
    assert thread_count() == (2, "SUTI_THREADS")  # SUTI_THREADS wins over OMP_NUM_THREADS
    assert thread_count(5) == (5, "--threads")  # and --threads over both
    monkeypatch.setenv("SUTI_THREADS", "many")
    with pytest.raises(ValueError, match="SUTI_THREADS='many'"):
        thread_count()
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        thread_count(0)


def test_threads_option_is_applied_and_restored(base_only, tmp_path, monkeypatch):
    import suti.cli as cli

    seen = []
    monkeypatch.setattr(cli, "cmd_sample", lambda args: seen.append(torch.get_num_threads()))
    parser = cli.build_parser()  # built after the patch: `sample` runs the stand-in
    before = torch.get_num_threads()
    args = parser.parse_args(["sample", "--model", "m", "--prompt", "p", "--out", "o.png", "--threads", "2"])
    assert cli.run_command(args) == 0
    assert seen == [2] and torch.get_num_threads() == before


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback():
    from suti.training.trainer import TrainingDiverged

    assert is_expected_error(TrainingDiverged("x")) and is_expected_error(FileNotFoundError("x"))
    assert is_expected_error(torch.OutOfMemoryError("x")) and is_expected_error(MemoryError())
    assert not is_expected_error(KeyError("x")) and not is_expected_error(AttributeError("x"))
