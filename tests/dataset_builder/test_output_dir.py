"""A failed first run must not lock output_dir: inputs are checked before the folder is claimed, and a work folder
in which nothing was finished counts as fresh."""
import json

import pytest

from db_helpers import planted_config

from dataset_builder import build_dataset, config_from_dict
from dataset_builder.config import ConfigError
from dataset_builder.inputs import InputError


def test_a_typo_in_the_inputs_does_not_claim_the_output_dir(planted, tmp_path):
    out = tmp_path / "out"
    typo = planted_config([planted["shards"][0].replace("shards", "shard")], out)
    with pytest.raises(InputError, match="shard/00000.tar"):
        build_dataset(config_from_dict(typo))
    assert not (out / "work" / "config.json").exists()
    stats = build_dataset(config_from_dict(planted_config(planted["shards"], out)))
    assert stats["counts"]["write"]["samples"] > 0


def test_a_work_folder_without_done_markers_is_fresh(planted, tmp_path):
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    # what a run killed (or failed) before finishing any unit leaves behind, from another config
    (out / "work" / "config.json").write_text(json.dumps({"fingerprint": "0" * 16, "config": {"k": 2}}))
    stats = build_dataset(config_from_dict(planted_config(planted["shards"], out)))
    assert stats["counts"]["write"]["samples"] > 0
    saved = json.loads((out / "work" / "config.json").read_text())
    assert saved["fingerprint"] == stats["config_fingerprint"]


def test_a_started_build_with_another_config_is_still_refused(planted, tmp_path):
    out = tmp_path / "out"
    (out / "work" / "ingest").mkdir(parents=True)
    (out / "work" / "config.json").write_text(json.dumps({"fingerprint": "0" * 16, "config": {"k": 2}}))
    (out / "work" / "ingest" / "00000.done.json").write_text(json.dumps({"records_out": 1, "counts": {}}))
    with pytest.raises(ConfigError, match="different config"):
        build_dataset(config_from_dict(planted_config(planted["shards"], out)))


def test_the_ray_backend_also_checks_inputs_first(planted, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    out = tmp_path / "out"
    typo = planted_config([planted["shards"][0].replace("shards", "shard")], out)
    with pytest.raises(InputError, match="shard/00000.tar"):
        build_dataset(config_from_dict(typo), backend="ray")  # fails before ray.init
    assert not (out / "work" / "config.json").exists()
