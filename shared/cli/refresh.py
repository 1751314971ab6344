"""`refresh` and `convert`: RefreshModel's decision by hand, and model.pt to ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from shared.bundle.loader import load_bundle
from shared.cli.common import converting
from shared.core.settings import Settings
from shared.inference.factory import open_model


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from shared.refresh.policy import refresh_from_run_dir, refresh_model

    if args.run_dir:
        outcome = refresh_from_run_dir(settings, Path(args.run_dir), dry_run=args.dry_run)
    else:
        outcome = refresh_model(settings, dry_run=args.dry_run)
    metric = f"{outcome.metric['name']} {outcome.metric['value']:.4f}" if outcome.metric else "no metric"
    print(f"candidate {outcome.candidate} ({metric}); current {outcome.current or 'none'}")
    print(f"decision: {outcome.decision}")
    return 0


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    from shared.refresh.checkpoint import convert_checkpoint, find_checkpoint

    source = find_checkpoint(Path(args.model_pt))
    converting(source)
    out = convert_checkpoint(source, Path(args.out_dir))
    bundle = load_bundle(out)
    open_model(bundle, threads=settings.engine_threads or None)
    parity = (bundle.manifest or {}).get("source", {}).get("parity_max_rel_diff")
    print(
        f"converted {source} to {out}: {bundle.task}, {len(bundle.labels)} labels, "
        f"{bundle.preprocessing.resize}/{bundle.preprocessing.crop} px, opset {bundle.opset}, "
        f"ONNX vs PyTorch {parity:.1e} of the logits' scale; version {bundle.version}"
    )
    return 0


def register(commands: Any) -> None:
    """Add this module's subcommands to the parser's `commands` (argparse's subparsers)."""
    refresh = commands.add_parser(
        "refresh", help="find the best AutoML model of the labeling experiment and publish it (as RefreshModel does)"
    )
    refresh.add_argument("--dry-run", action="store_true", help="decide and print, publish nothing")
    refresh.add_argument("--run-dir", metavar="DIR", help="take a downloaded AutoML run folder instead of asking AML")
    refresh.set_defaults(handler=cmd_refresh)

    convert = commands.add_parser(
        "convert", help="convert an AutoML model.pt checkpoint to an ONNX bundle (needs torch)"
    )
    convert.add_argument(
        "model_pt", metavar="MODEL_PT", help="AutoML's model.pt (AutoML 1.25 or later), or the run folder holding it"
    )
    convert.add_argument("out_dir", metavar="OUT_DIR", help="bundle folder to write (model.onnx, labels.json, ...)")
    convert.set_defaults(handler=cmd_convert)
