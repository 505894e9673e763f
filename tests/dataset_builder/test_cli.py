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
    with pytest.raises(ConfigError, match=r"bad.json\.decode: unknown key\(s\) \['max_pixel'\]"):
        load_config(bad)
    assert main(["build-dataset", "--config", str(bad)]) == 2
    assert "max_pixel" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not found"):
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
