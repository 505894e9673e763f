"""One rank of the 2-process CPU DDP test (launched by torch.distributed.run from test_ddp.py).

Usage: python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py CONFIG_JSON OUT_DIR
Trains the configured steps and writes this rank's final raw weights to OUT_DIR/rank<r>.safetensors.
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from suti.training import TrainConfig, Trainer


def main():
    cfg_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    trainer = Trainer(TrainConfig.from_dict(json.loads(cfg_path.read_text())))
    assert trainer.world == 2, f"expected 2 processes, got {trainer.world}"
    assert trainer.accelerator.distributed_type.value == "MULTI_CPU", trainer.accelerator.distributed_type
    assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 2, dist.get_backend()
    result = trainer.train()
    weights = {k: v.detach().contiguous() for k, v in trainer.stage.unet.state_dict().items()}
    save_file(weights, str(out / f"rank{trainer.rank}.safetensors"))
    (out / f"rank{trainer.rank}.json").write_text(json.dumps({"losses": trainer.losses, "result": result}))


if __name__ == "__main__":
    main()
