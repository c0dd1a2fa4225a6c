"""The `rl` command: `rl train`, `rl eval`, `rl report`, `rl rollout`, `rl keys`, `rl config show`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rl.config import ConfigError, load_config, to_yaml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rl", description="RL post-training: vLLM rollouts, a DeepSpeed learner, ZeroMQ between.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a policy from a YAML config (starts the learner and rollout workers)")
    train.add_argument("rest", nargs="*", metavar="CONFIG [key=value ...]",
                       help="YAML config (e.g. configs/quickstart.yaml) and dotted overrides, e.g. train.lr=2e-6 rollout.num_workers=2")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue RUN_DIR from its newest checkpoint (with its own config; overrides such as train.steps=40 still apply)")
    train.add_argument("--step", type=int, default=None, metavar="K",
                       help="with --resume: continue from the checkpoint of step K instead of the newest (later ones are set aside)")
    train.add_argument("--plan", action="store_true",
                       help="print which process runs where (devices, memory, dtypes, backends) and exit without starting anything")
    train.add_argument("-v", "--verbose", action="store_true",
                       help="show every line of every process (vLLM, DeepSpeed, ...) on the console, not only in RUN/logs/")

    export = commands.add_parser("export", help="write a Hugging Face folder from a run's checkpoint")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("out", metavar="OUT", help="new folder for the model (safetensors, config, tokenizer)")
    export.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest)")

    evaluate = commands.add_parser(
        "eval", help="evaluate a model or a finished run on a config's held-out sets (mean@k, pass@k, reward, length)"
    )
    evaluate.add_argument("target", metavar="MODEL_OR_RUN_DIR", help="a run folder (uses RUN/final), a Hugging Face folder, or a built-in model name")
    evaluate.add_argument("rest", nargs="*", metavar="[CONFIG] [key=value ...]",
                          help="the config whose held-out sets to use (default: the run's own) and dotted overrides, e.g. eval.samples=4 eval.temperature=0.6")
    evaluate.add_argument("--output", default=None, help="JSON results file (default: RUN/eval-TIME.json, or OUTPUT_DIR/eval-MODEL-TIME.json)")

    report = commands.add_parser("report", help="write a self-contained HTML report of a run (finished, stopped or running)")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--output", default=None, help="the HTML file (default: RUN_DIR/report.html)")

    rollout = commands.add_parser("rollout", help="start one more rollout worker that joins a running learner")
    rollout.add_argument("--connect", required=True, help="the learner's address, tcp://HOST:PORT (printed in RUN/learner_address)")
    rollout.add_argument("--name", default=None, help="a name for this worker in the learner's log")
    rollout.add_argument("--keys", default=None, metavar="DIR",
                         help="CURVE keys folder (made by `rl keys`; needs worker.key_secret and server.key), "
                              "or DIR/NAME.key_secret for a key added with --add-worker")

    keys = commands.add_parser("keys", help="make CURVE keys that encrypt and authenticate the learner-worker connections")
    keys.add_argument("directory", metavar="DIR", help="folder for the keys (created if missing)")
    keys.add_argument("--overwrite", action="store_true", help="replace existing keys (workers holding the old ones are refused)")
    keys.add_argument("--add-worker", default=None, metavar="NAME",
                      help="instead, add one more worker key pair NAME.key/NAME.key_secret to an existing DIR and authorize it")

    config = commands.add_parser("config", help="inspect configs")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = config_commands.add_parser("show", help="print the resolved config (base + overrides) as YAML")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*")

    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "train" or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # `rl train CONFIG --plan key=value`: overrides after an option
        args.rest += extra
    try:
        if args.command == "config":
            print(to_yaml(load_config(args.config, args.overrides)), end="")
            return 0
        if args.command == "train":
            from envs.source import SourceError
            from learner.checkpoint import CheckpointError
            from rewards.registry import RewardConfigError
            from rl.launcher import train as run_train
            from rl.models import ModelError
            from rl.placement import PlanError

            try:
                if args.step is not None and not args.resume:
                    raise ConfigError("--step K needs --resume RUN_DIR: rl train --resume RUN_DIR --step K")
                if args.resume:
                    if any("=" not in item for item in args.rest):
                        raise ConfigError("with --resume give only key=value overrides: the run's own config.yaml is used")
                    run_dir = Path(args.resume)
                    if not (run_dir / "config.yaml").is_file():
                        raise ConfigError(f"{run_dir} is not a run folder (it has no config.yaml)")
                    return run_train(load_config(run_dir / "config.yaml", args.rest), resume_dir=run_dir, plan_only=args.plan,
                                     resume_step=args.step, verbose=args.verbose)
                if not args.rest or "=" in args.rest[0]:
                    raise ConfigError("give a config file: rl train CONFIG [key=value ...] (or rl train --resume RUN_DIR)")
                return run_train(load_config(args.rest[0], args.rest[1:]), plan_only=args.plan, verbose=args.verbose)
            except (ModelError, RewardConfigError, SourceError, CheckpointError, PlanError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
        if args.command == "export":
            from learner.checkpoint import CheckpointError, export_checkpoint

            try:
                used = export_checkpoint(Path(args.run_dir), Path(args.out), args.step)
            except CheckpointError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            print(f"[rl] exported {used} to {args.out}")
            return 0
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
        if args.command == "report":
            return make_report(args.run_dir, args.output)
        if args.command == "rollout":
            from rl.security import SecurityError
            from rollout.worker import main as worker_main

            try:
                worker_main(args.connect, args.name, curve_keys=args.keys)
            except (PermissionError, TimeoutError, SecurityError) as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            return 0
        if args.command == "keys":
            return make_keys(args.directory, args.overwrite, args.add_worker)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


def make_report(run_dir: str, output: str | None) -> int:
    from rl.report import ReportError, write_report

    try:
        path = write_report(Path(run_dir), Path(output) if output else None)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[rl] report: {path}")
    return 0


def make_keys(directory: str, overwrite: bool, add_worker: str | None) -> int:
    from rl.security import SecurityError, add_worker_key, create_keys

    try:
        if add_worker:
            public, secret = add_worker_key(directory, add_worker, overwrite)
            folder = public.parent
            print(f"made worker key pair {public.name}, {secret.name} in {folder} and authorized it "
                  f"({folder / 'authorized_workers' / public.name}); a running learner accepts it from its next connection")
            print("on the worker's host, with that key file and server.key in one folder:")
            print(f"  rl rollout --connect tcp://HOST:PORT --keys DIR/{secret.name}")
            return 0
        paths = create_keys(directory, overwrite)
    except (SecurityError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    folder = paths.directory
    print(f"made CURVE keys in {folder}:")
    print("  server.key, server.key_secret   the learner's key pair (the secret stays on the learner's host)")
    print("  worker.key, worker.key_secret   a worker's key pair")
    print("  authorized_workers/worker.key   the public keys the learner admits (add more with --add-worker NAME)")
    print("learner (bind a reachable address and a fixed port):")
    print(f"  rl train CONFIG transport.curve_keys={folder} transport.host=0.0.0.0 transport.port=PORT")
    print("worker on another host (copy worker.key_secret and server.key there; worker.key is optional, server.key_secret never):")
    print(f"  rl rollout --connect tcp://HOST:PORT --keys {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
