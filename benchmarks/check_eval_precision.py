"""Evaluation runs in fp32 while training runs in bf16 (CUDA), with channels_last: one RESULT line.

    python benchmarks/check_eval_precision.py --device cuda      # benchmarks/gpu_suite.sh runs this
    python benchmarks/check_eval_precision.py --device cpu       # the CPU smoke: fp32 training, same checks

A tiny-or-R50x1 learner trains a few bf16 steps (fastai's MixedPrecision), then `predict` runs: the head's
output must be float32 in every evaluation batch, the logits must equal those of a learner without any
mixed precision (same weights), and fastai's own `get_preds` (which autocasts) must differ from them.
Prints `RESULT mode=eval_fp32 ok=1 ...` (ok=0 and the reason otherwise).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")

from xrstudy.config import RunConfig  # noqa: E402 - after the warning filter (fastai's import-time warnings)
from xrstudy.pixels.loaders import Augment, EvalLoader, Split  # noqa: E402
from xrstudy.training.learner import TrainSetup, fit, make_learner, predict  # noqa: E402
from xrstudy.training.models import create_model  # noqa: E402
from xrstudy.training.recipes import Schedule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="", help="default: resnetv2_50x1_bit on CUDA, resnetv2_tiny_bit on a CPU")
    parser.add_argument("--size", type=int, default=0, help="image side (default 128 on CUDA, 32 on a CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    arch = args.arch or ("resnetv2_50x1_bit" if cuda else "resnetv2_tiny_bit")
    size = args.size or (128 if cuda else 32)
    rng = np.random.default_rng(0)
    split = Split.of(rng.integers(0, 256, (48, size, size), dtype=np.uint8), torch.from_numpy(rng.integers(0, 5, 48)))
    setup = TrainSetup(
        multilabel=False,
        num_classes=5,
        schedule=Schedule(steps=3, warmup=1, decays=(), base_lr=0.001),
        per_device_batch=16,
        seed=0,
        augment=Augment(out_size=size, crop_fraction=0.9),
        eval_size=size,
        weight_decay=0.0,
        device=device,
        precision="bf16" if cuda else "fp32",
        channels_last=cuda,
    )
    learn = make_learner(create_model(RunConfig(target="demo", arch=arch), 5), split, setup)
    dtypes: list[torch.dtype] = []
    learn.model.get_classifier().register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    fit(learn)
    trained = sorted({str(d) for d in dtypes})
    dtypes.clear()
    logits, _ = predict(learn, split, 16, logits=True)
    evaluated = sorted({str(d) for d in dtypes})
    autocast, _ = learn.get_preds(dl=EvalLoader(split, 16, device), act=lambda x: x)
    fp32 = make_learner(learn.model, split, TrainSetup(**{**setup.__dict__, "precision": "fp32"}))
    plain, _ = predict(fp32, split, 16)
    probs, _ = predict(learn, split, 16)
    problems = []
    if evaluated != ["torch.float32"]:
        problems.append(f"evaluation ran in {evaluated}")
    if cuda and trained != ["torch.bfloat16"]:
        problems.append(f"training ran in {trained}, expected bf16")
    if not np.allclose(plain, probs, rtol=0, atol=1e-6):
        problems.append("predict differs from a learner without mixed precision")
    if cuda and np.array_equal(autocast.float().cpu().numpy(), logits):
        problems.append("fastai's get_preds gave fp32 logits too: the check proves nothing")
    if cuda and not learn.model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last):
        problems.append("the model lost channels_last")
    gap = float(np.abs(autocast.float().cpu().numpy() - logits).max())
    print(
        f"RESULT mode=eval_fp32 ok={int(not problems)} device={device.type} arch={arch} size={size} "
        f"train={','.join(trained)} eval={','.join(evaluated)} bf16_logit_gap={gap:.2e}"
        + (f" problems={'; '.join(problems)}" if problems else "")
    )


if __name__ == "__main__":
    main()
