"""The `rl` command: `rl train`, `rl rollout`, `rl config show`."""

from __future__ import annotations

import argparse
import sys

from rl.config import ConfigError, load_config, to_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rl", description="RL post-training: vLLM rollouts, a DeepSpeed learner, ZeroMQ between.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a policy from a YAML config (starts the learner and rollout workers)")
    train.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-6 rollout.num_workers=2")

    rollout = commands.add_parser("rollout", help="start one more rollout worker that joins a running learner")
    rollout.add_argument("--connect", required=True, help="the learner's address, tcp://HOST:PORT (printed in RUN/learner_address)")
    rollout.add_argument("--name", default=None, help="a name for this worker in the learner's log")

    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = config_commands.add_parser("show", help="print the resolved config (base + overrides) as YAML")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")

    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            print(to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "train":
            from rl.launcher import train as run_train
            from rl.models import ModelError
            from rewards.registry import RewardConfigError

            try:
                return run_train(load_config(args.config, args.overrides))
            except (ModelError, RewardConfigError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        if args.command == "rollout":
            from rollout.worker import main as worker_main

            worker_main(args.connect, args.name)
            return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
