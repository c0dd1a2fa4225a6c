"""`python -m learner.main --run-dir RUN --model-path PATH`: the learner process (started by `rl train`)."""

import argparse
import logging
from pathlib import Path

from learner.loop import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--model-path", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    run(args.run_dir, args.model_path)


if __name__ == "__main__":
    main()
