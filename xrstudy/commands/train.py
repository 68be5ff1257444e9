"""`xrstudy train CONFIG`: one cell from a YAML file of RunConfig fields."""

from __future__ import annotations

import argparse
import os
import sys

from xrstudy.config import RunConfig


def cmd_train(args: argparse.Namespace) -> int:
    from xrstudy.training import resolve

    cfg = resolve.canonical(RunConfig.from_yaml(args.config))  # one run id per computation, however it is spelled
    if os.environ.get("RANK", "0") == "0":  # where to watch it, before it starts (rank 0 writes the history)
        print(
            f"{cfg.run_id}: training history in {cfg.run_dir / 'history.csv'}; "
            f"tensorboard --logdir {cfg.run_dir / 'tensorboard'}",
            file=sys.stderr,
        )
    from xrstudy.training import train  # torch: imported once the config is known to be valid

    result = train.run(cfg, resume=args.resume, checkpoint_every_steps=args.checkpoint_every)
    if result:
        shown = {k: round(v, 4) for k, v in result["metrics"].items() if isinstance(v, float)}
        print(f"{cfg.run_id}: {shown}")
    return 0
