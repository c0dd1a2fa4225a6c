"""`python -m rollout.main --connect tcp://HOST:PORT`: one rollout worker process."""

import argparse

from rollout.worker import main as worker_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connect", required=True, help="the learner's address, tcp://HOST:PORT")
    parser.add_argument("--name", default=None, help="a name for this worker in the learner's log")
    parser.add_argument("--keys", default=None, help="CURVE keys folder made by `rl keys` (or DIR/NAME.key_secret)")
    args = parser.parse_args()
    worker_main(args.connect, args.name, curve_keys=args.keys)


if __name__ == "__main__":
    main()
