"""`python -m learner.main --run-dir RUN --model-path PATH`: the learner process (started by `rl train`)."""

import argparse
import sys
from pathlib import Path

from learner.checkpoint import CheckpointError
from learner.loop import run
from rl.console import say, setup_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in RUN/checkpoints")
    parser.add_argument("--resume-step", type=int, default=None, help="with --resume: the checkpoint of this step")
    args = parser.parse_args()
    setup_logging()
    try:
        code = run(args.run_dir, args.model_path, resume=args.resume, resume_step=args.resume_step)
    except CheckpointError as err:  # `rl train --resume` checks first; this is a checkpoint changed since then
        say(f"[rl] error: {err}", err=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
