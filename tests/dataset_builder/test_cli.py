import argparse
import json

import pytest
import yaml

from db_helpers import planted_config

from dataset_builder.cli import add_subparser, main
from dataset_builder.config import ConfigError, load_config


def test_add_subparser_wires_build_dataset(planted, tmp_path, capsys):
    cfg = planted_config(planted["shards"], "out")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    parser = argparse.ArgumentParser(prog="suti")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["build-dataset", "--config", str(cfg_path), "--no-progress"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] > 0 and summary["output_dir"] == str(tmp_path / "out")  # relative to the config
    assert (tmp_path / "out" / "manifest.json").exists()


def test_config_errors_name_the_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"inputs": [], "decode": {"max_pixel": 5}}))
    with pytest.raises(ConfigError, match=r"bad.json: decode: unknown key\(s\) decode\.max_pixel; valid keys"):
        load_config(bad)
    assert main(["build-dataset", "--config", str(bad)]) == 2
    assert "max_pixel" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "k.yaml").write_text("k: 3\ngroup: {min_cluster_size: 2}\n")
    with pytest.raises(ConfigError, match="min_cluster_size"):
        load_config(tmp_path / "k.yaml")


def test_example_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("build_dataset*.yaml"))
    assert files
    for f in files:
        load_config(f)


def test_path_like_values_resolve_against_the_config_folder(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "project" / "configs"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "models" / "blip").mkdir(parents=True)
    (cfg_dir / "weights.safetensors").write_bytes(b"")
    cfg = {"inputs": [{"type": "wit", "paths": ["../wit/a.tsv", "/abs/b.tsv"], "image_root": "../wit/images"}],
           "output_dir": "../out",
           "embedder": {"model": "local-dir:models/clip", "device": "cpu"},
           "captions": {"mode": "auto", "model": "models/blip"},            # exists here: a folder
           "prompts": {"generator": "text-generation", "model": "gpt2"},    # no such folder: a hub name
           "expert": {"type": "dreambooth", "kwargs": {"pipeline": "../checkpoints/t2i"}}}
    (cfg_dir / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)  # the working directory does not matter
    c = load_config(cfg_dir / "c.yaml")
    project = tmp_path / "project"
    assert c.inputs[0]["paths"] == [str(project / "wit" / "a.tsv"), "/abs/b.tsv"]
    assert c.inputs[0]["image_root"] == str(project / "wit" / "images")
    assert c.output_dir == str(project / "out")
    assert c.embedder.model == f"local-dir:{cfg_dir / 'models' / 'clip'}"
    assert c.captions.model == str(cfg_dir / "models" / "blip") and c.prompts.model == "gpt2"
    assert c.expert.kwargs["pipeline"] == str(project / "checkpoints" / "t2i")
    for pretrained, expected in [("weights.safetensors", str(cfg_dir / "weights.safetensors")),  # a file here
                                 ("laion2b_s34b_b79k", "laion2b_s34b_b79k")]:                  # a tag
        (cfg_dir / "d.yaml").write_text(yaml.safe_dump({"embedder": {"model": "ViT-B-32", "pretrained": pretrained}}))
        assert load_config(cfg_dir / "d.yaml").embedder.pretrained == expected


def test_the_planted_example_and_config_name_the_same_build(monkeypatch):
    """python examples/build_dataset_planted.py (from the repository root) then
    suti build-dataset --config configs/build_dataset_planted.yaml: one build, the second run a no-op."""
    import importlib.util
    from pathlib import Path

    from dataset_builder import config_from_dict
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("planted_example", root / "examples" / "build_dataset_planted.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # defines planted_config; builds only under __main__
    monkeypatch.chdir(root)
    from_example = config_from_dict(example.planted_config("planted_demo"))
    from_yaml = load_config(root / "configs" / "build_dataset_planted.yaml")
    assert from_example.fingerprint() == from_yaml.fingerprint()
    assert from_example.output_dir == from_yaml.output_dir == str(root / "planted_demo" / "icl")
