"""`xrstudy models import-paper`."""

from __future__ import annotations

import argparse
import json


def cmd_import_paper(args: argparse.Namespace) -> int:
    from xrstudy.training import paper_weights

    report = paper_weights.import_paper(args.file, args.arch, args.out)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    head = f"{report['head_classes']}-class pre-training head" if report["head_classes"] else "no head"
    print(
        f"{report['file']} (sha256 {report['sha256'][:12]}…): {report['tensors']} tensors in big_transfer "
        f"naming -> timm {report['arch']}, {report['backbone_parameters']:,} backbone parameters, {head}"
    )
    for entry in report["loaded"][:3] + [{"from": "...", "to": "...", "shape": []}] + report["loaded"][-2:]:
        print(f"  {entry['from']:<45} -> {entry['to']:<45} {tuple(entry['shape']) if entry['shape'] else ''}")
    print(f"wrote {report['out']}")
    return 0
