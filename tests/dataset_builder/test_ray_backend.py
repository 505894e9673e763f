"""The Ray backend writes the same bytes as the local backend on the same input."""
import pytest

from db_helpers import output_files, planted_config

from dataset_builder import build_dataset, config_from_dict

ray = pytest.importorskip("ray", reason="the ray extra is not installed")


@pytest.mark.ray
def test_ray_backend_equals_local_backend(planted, tmp_path):
    local = config_from_dict(planted_config(planted["shards"], tmp_path / "local"))
    distributed = config_from_dict(planted_config(planted["shards"], tmp_path / "ray"))
    build_dataset(local, backend="local")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        stats = build_dataset(distributed, backend="ray")
    finally:
        ray.shutdown()
    a, b = output_files(tmp_path / "local"), output_files(tmp_path / "ray")
    assert sorted(a) == sorted(b) and stats["counts"]["write"]["samples"] > 0
    for name in a:
        assert a[name] == b[name], f"{name} differs between the local and the ray backend"
