"""The learner ranks' protocol: rank 0 broadcasts a command (and one int argument) before each
collective, the other ranks follow it. With one learner rank it costs nothing."""

from __future__ import annotations

from pathlib import Path

from learner.batch import TrainSample
from learner.distributed import broadcast_int, broadcast_samples, rank
from learner.trainer import Trainer

# Commands rank 0 broadcasts to the other learner ranks (each followed by one int argument).
STEP, CHECKPOINT, PUBLISH, FINISH, STOP = range(1, 6)


class Ranks:
    """Rank 0's side of the learner ranks' protocol; with one rank every call is a no-op."""

    def __init__(self, world_size: int):
        self.multi = world_size > 1

    def tell(self, command: int, argument: int = 0) -> None:
        if self.multi:
            broadcast_int(command)
            broadcast_int(argument)

    def send_samples(self, samples: list[TrainSample]) -> None:
        if self.multi:
            broadcast_samples(samples, TrainSample)


def follow(trainer: Trainer, run_dir: Path, model_path: str) -> int:
    """A learner rank other than 0: train on the batches rank 0 broadcasts, join its collectives."""
    while True:
        command, argument = broadcast_int(None), broadcast_int(None)
        if command == STEP:
            if trainer.train(broadcast_samples(None, TrainSample), step=argument) is not None:
                trainer.take_part_in_publication()
        elif command == PUBLISH:
            trainer.take_part_in_publication()
        elif command == CHECKPOINT:
            trainer.checkpoint(run_dir, argument, {}, model_path)
        elif command == FINISH:
            trainer.save_final(run_dir, model_path)
            return 0
        elif command == STOP:
            return argument
        else:
            raise RuntimeError(f"learner rank {rank()}: unknown command {command} from rank 0")
