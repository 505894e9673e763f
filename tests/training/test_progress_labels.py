"""The training bar names the stage and the phase, and counts skipped samples and skipped steps apart."""
import shutil

from training_helpers import train_config
from training_helpers import corrupt_jpeg

from suti.training import TrainConfig, Trainer


def test_bar_shows_phase_and_both_skip_counts(tmp_path, tiny_t5, colours, capsys):
    data = tmp_path / "data"
    shutil.copytree(colours, data)
    (data / "torn.jpg").write_bytes(corrupt_jpeg())  # a sample the loader skips, with a warning
    (data / "torn.txt").write_text("a torn square")
    cfg = TrainConfig.from_dict(train_config(tmp_path, tiny_t5, str(data), steps=3, progress=True,
                                             data={"shuffle": False}))
    result = Trainer(cfg).train()
    err = capsys.readouterr().err
    assert "train base (text-to-image)" in err
    assert result["skipped_samples"] >= 1 and f"skipped_samples={result['skipped_samples']}" in err
    assert "skipped_steps=0" in err
