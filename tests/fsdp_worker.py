"""Worker launched by tests/test_fsdp.py under ``torchrun --nproc_per_node 2``; not a test module.

``python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_worker.py WORKDIR``: every rank joins the default
gloo group, wraps the test CNN with FSDP2's ``fully_shard`` (the whole model; per module and then the model;
the whole model after a forward pass, when its parameters are whole tensors on freed storage) and records what
``HessianOperator.from_torch`` does with each in ``WORKDIR/rank<r>.json``: the exception type and message.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import hessop
from hessop.models.digits import SmallResNet, digits


def wrapped(how: str, mesh) -> torch.nn.Module:
    torch.manual_seed(0)
    model = SmallResNet(channels=2, hidden=8, batchnorm=False).double()
    if how == "per-module":
        for child in (model.conv1, model.conv2, model.fc1, model.fc2):
            fully_shard(child, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def main(workdir: Path) -> None:
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    x, y = digits(32)
    loss = torch.nn.CrossEntropyLoss()
    out = {}
    for how in ("whole", "per-module", "whole-after-forward", "per-module-params"):
        model = wrapped(how.removesuffix("-after-forward").removesuffix("-params"), mesh)
        if how.endswith("after-forward"):
            model(x)  # FSDP2 keeps the root's parameters unsharded after a forward (no backward yet)
        try:
            hessop.HessianOperator.from_torch(model, loss, (x, y),
                                              params="fc*" if how.endswith("params") else None)
            out[how] = {"type": None, "message": "accepted"}
        except Exception as e:  # noqa: BLE001 - recorded for the test to judge
            out[how] = {"type": type(e).__name__, "message": str(e)}
    (workdir / f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    main(Path(sys.argv[1]))
    dist.destroy_process_group()
