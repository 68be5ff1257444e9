"""`xrstudy train CONFIG`: one cell from a YAML file of RunConfig fields."""

from __future__ import annotations

import argparse

from xrstudy.config import RunConfig


def cmd_train(args: argparse.Namespace) -> int:
    from xrstudy.training import resolve

    cfg = resolve.canonical(RunConfig.from_yaml(args.config))  # one run id per computation, however it is spelled
    from xrstudy.training import train  # torch: imported once the config is known to be valid

    result = train.run(cfg, resume=args.resume, checkpoint_every_steps=args.checkpoint_every)
    if result:
        shown = {k: round(v, 4) for k, v in result["metrics"].items() if isinstance(v, float)}
        print(f"{cfg.run_id}: {shown}")
    return 0
