"""`keyframes`: the videos of one Blob container to JPEG keyframes in another, for the search indexer."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from shared.cli.common import positive_int
from shared.core.settings import Settings


def seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {raw!r}")
    return value


class TerminalProgress:
    """A progress bar per video on stderr (seconds of the video decoded), only on a terminal."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.bar: Any = None
        self.position = 0.0

    def start(self, video: str, duration: float | None) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

        self.position = 0.0
        total = round(duration, 1) if duration else None
        self.bar = tqdm(total=total, file=self.err, unit="s", desc=video, leave=False, dynamic_ncols=True)

    def advance(self, seconds: float) -> None:
        if self.bar is not None and seconds > self.position:
            self.bar.update(round(seconds - self.position, 3))
            self.position = seconds

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def main_keyframes(
    args: argparse.Namespace,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The `keyframes` command: one line per video on stdout (written or skipped), one line per video that
    cannot be decoded on stderr, a summary line; status 1 when a video failed or the run could not go on."""
    from shared.video.frames import FrameOptions
    from shared.video.keyframes import KeyframeRun, KeyframesError, open_service

    env = os.environ if env is None else env
    out = out or sys.stdout
    err = err or sys.stderr
    options = FrameOptions(
        mode=args.mode, every_s=args.every, min_gap_s=args.min_gap or 0.0, max_frames=args.max_frames
    )
    connection_string = None
    if args.connection_string_env:
        if args.account_url:
            raise KeyframesError("give either --connection-string-env NAME or --account-url URL, not both")
        connection_string = env.get(args.connection_string_env, "").strip()
        if not connection_string:
            raise KeyframesError(
                f"environment variable {args.connection_string_env} is not set: put the storage account's connection "
                "string there (UseDevelopmentStorage=true for Azurite), or use --account-url"
            )
    service = open_service(
        connection_string=connection_string,
        account_url=args.account_url,
        client_id=env.get("AZURE_CLIENT_ID", "").strip() or None,
    )
    run = KeyframeRun(service, args.source_container, args.target_container, options)
    if run.check_containers():
        out.write(f"created container {args.target_container}\n")

    def report(outcome: Any) -> None:
        stream = err if outcome.status == "failed" else out
        stream.write(("error: " if outcome.status == "failed" else "") + outcome.message + "\n")
        stream.flush()

    progress = TerminalProgress(err) if err.isatty() else None
    outcomes = run.run(report, progress, checked=True)
    failed = sum(o.status == "failed" for o in outcomes)
    written = sum(o.status == "written" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    frames = sum(o.frames for o in outcomes if o.status == "written")
    if not outcomes:
        out.write(f"no videos in container {args.source_container}\n")
    else:
        out.write(
            f"{len(outcomes)} videos: {written} extracted ({frames} keyframes), {skipped} skipped, {failed} failed\n"
        )
    return 1 if failed else 0


def cmd_keyframes(args: argparse.Namespace, settings: Settings) -> int:
    return main_keyframes(args)


def register(commands: Any) -> None:
    """Add `keyframes` to the parser's `commands` (argparse's subparsers)."""
    from shared.video.frames import DEFAULT_MODE, MODES
    from shared.video.keyframes import DEFAULT_SOURCE, DEFAULT_TARGET

    parser = commands.add_parser(
        "keyframes", help="write JPEG keyframes of the videos in one Blob container into another, for the indexer"
    )
    parser.add_argument(
        "--source-container", default=DEFAULT_SOURCE, metavar="NAME", help=f"the videos ({DEFAULT_SOURCE})"
    )
    parser.add_argument(
        "--target-container",
        default=DEFAULT_TARGET,
        metavar="NAME",
        help=f"where the keyframes go, created when missing ({DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--connection-string-env",
        metavar="NAME",
        help="environment variable holding the storage connection string (UseDevelopmentStorage=true for Azurite)",
    )
    parser.add_argument(
        "--account-url",
        metavar="URL",
        help="https://<account>.blob.core.windows.net, signed in with DefaultAzureCredential (az login)",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULT_MODE,
        help="iframes: the video's key frames, only they are decoded (default); scenes: a frame at each cut; "
        "interval: one every --every seconds",
    )
    parser.add_argument("--every", type=seconds, metavar="SECONDS", help="with --mode interval: seconds between frames")
    parser.add_argument(
        "--min-gap", type=seconds, metavar="SECONDS", help="drop a keyframe closer than this to the one before (0)"
    )
    parser.add_argument("--max-frames", type=positive_int, metavar="N", help="at most N keyframes per video")
    parser.set_defaults(handler=cmd_keyframes)
