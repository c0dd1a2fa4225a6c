"""The `rl` command: `rl train`, `rl eval`, `rl rollout`, `rl config show`."""

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

    evaluate = commands.add_parser(
        "eval", help="evaluate a model or a finished run on a config's held-out sets (mean@k, pass@k, reward, length)"
    )
    evaluate.add_argument("target", metavar="MODEL_OR_RUN_DIR", help="a run folder (uses RUN/final), a Hugging Face folder, or a built-in model name")
    evaluate.add_argument("rest", nargs="*", metavar="[CONFIG] [key=value ...]",
                          help="the config whose held-out sets to use (default: the run's own) and dotted overrides, e.g. eval.samples=4 eval.temperature=0.6")
    evaluate.add_argument("--output", default=None, help="JSON results file (default: RUN/eval-TIME.json, or OUTPUT_DIR/eval-MODEL-TIME.json)")

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
            from envs.source import SourceError
            from rewards.registry import RewardConfigError
            from rl.launcher import train as run_train
            from rl.models import ModelError

            try:
                return run_train(load_config(args.config, args.overrides))
            except (ModelError, RewardConfigError, SourceError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        if args.command == "eval":
            from envs.source import SourceError
            from rewards.registry import RewardConfigError
            from rl.eval_command import EvalTargetError, run_eval
            from rl.models import ModelError

            config_path = args.rest[0] if args.rest and "=" not in args.rest[0] else None
            overrides = args.rest[1:] if config_path else args.rest
            try:
                run_eval(args.target, config_path, overrides, args.output)
                return 0
            except (ModelError, RewardConfigError, SourceError, EvalTargetError) as err:
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
