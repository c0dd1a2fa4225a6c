"""Resume never unpickles arbitrary objects: DeepSpeed's checkpoint files are read with `weights_only=True`.

DeepSpeed 0.19's `TorchCheckpointEngine.load` calls `torch.load(..., weights_only=False)`, so a
tampered `.pt` file in a run folder would run code at resume. Here, for the duration of a load:
- the engine's checkpoint engine is wrapped so that every file DeepSpeed reads is first checked
  against the manifest (size and sha256), then loaded with `weights_only=True`;
- `TORCH_FORCE_WEIGHTS_ONLY_LOAD=1` makes any other `torch.load` inside DeepSpeed (one that does not
  go through the checkpoint engine) weights-only as well;
- the few non-tensor types DeepSpeed's state holds are allow-listed (`ALLOWED_NAMES`), only inside
  that scope (`torch.serialization.safe_globals`), never process-wide.
`unsafe_globals` scans a file's pickle without running it, so that `rl train --resume` can refuse a
tampered file before any process starts.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

from rl.checkpoint_manifest import CheckpointError, FileDigest, ManifestError, check_file

FORCE_WEIGHTS_ONLY_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


# The non-tensor types DeepSpeed writes into its checkpoint files: plain data holders and an enum, none
# of which runs code when rebuilt. Measured on the tiny model, fp32: none at ZeRO 0; all three in the
# optimizer partitions at ZeRO 1; LossScaler and ZeroStageEnum at ZeRO 3. By name, so that the
# launcher's scan needs no DeepSpeed import; `allowed_globals` resolves them for a load.
ALLOWED_NAMES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def allowed_globals() -> list:
    """The objects of ALLOWED_NAMES."""
    found = []
    for name in ALLOWED_NAMES:
        module, _, attribute = name.rpartition(".")
        found.append(getattr(importlib.import_module(module), attribute))
    return found


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that holds something other than tensors and the allow-listed state."""


_allow_depth = 0  # torch's safe_globals removes its globals on exit, so nested scopes must not each enter one


@contextmanager
def allow_listed() -> Iterator[None]:
    """Within: the types of ALLOWED_NAMES may be rebuilt by weights-only loads (re-entrant)."""
    global _allow_depth
    with ExitStack() as stack:
        if _allow_depth == 0:
            stack.enter_context(torch.serialization.safe_globals(allowed_globals()))
        _allow_depth += 1
        try:
            yield
        finally:
            _allow_depth -= 1


def refusal(path: Path | str, err: Exception | str) -> UnsafeCheckpointError:
    """The one-line error for a file that names `err` (a weights-only load's error, or what the scan found)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    what = found.group(1) if found else (err if isinstance(err, str) else "an object that weights-only loading refuses")
    return UnsafeCheckpointError(
        f"{path} holds {what}, which is not tensor or optimizer state: it was not loaded (resume never unpickles "
        "arbitrary objects). The file was tampered with or is not from rl"
    )


def safe_torch_load(path: Path | str, map_location=None):
    """`torch.load` with `weights_only=True` and DeepSpeed's allow-listed types; anything else is refused."""
    with allow_listed():
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise refusal(path, err) from None


def unsafe_globals(path: Path) -> list[str]:
    """The globals (functions, classes) that `path`'s pickle names beyond torch's and ALLOWED_NAMES, found
    by reading its opcodes, without running it."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, KeyError) as err:  # not a torch zip file, or no data.pkl in it
        raise UnsafeCheckpointError(f"{path} is not a torch checkpoint file ({err}); it was not loaded") from None
    return sorted(set(found) - set(ALLOWED_NAMES))


class VerifiedLoads:
    """Stands in for an engine's DeepSpeed checkpoint engine: `load` checks the file against the manifest,
    then loads it weights-only; everything else (saving, writer ranks) goes to the wrapped one."""

    def __init__(self, inner, folder: Path, entries: dict[str, FileDigest]):
        self.inner, self.folder, self.entries = inner, folder.resolve(), entries

    def load(self, path: str, map_location=None):
        try:
            name = Path(path).resolve().relative_to(self.folder).as_posix()
        except ValueError:
            raise CheckpointError(f"DeepSpeed asked for {path}, which is outside the checkpoint {self.folder}") from None
        if name not in self.entries:
            raise ManifestError(self.folder, name, "is not in manifest.json")
        check_file(self.folder, name, self.entries[name])  # hashed just before it is read, on the rank that reads it
        return safe_torch_load(path, map_location)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@contextmanager
def safe_checkpoint_loads(engines: list, folder: Path, entries: dict[str, FileDigest]) -> Iterator[None]:
    """Within: the engines' checkpoint loads are verified and weights-only, and so is every other torch.load."""
    originals = [engine.checkpoint_engine for engine in engines]
    previous = os.environ.get(FORCE_WEIGHTS_ONLY_ENV)
    try:
        for engine, inner in zip(engines, originals):
            engine.checkpoint_engine = VerifiedLoads(inner, folder, entries)
        os.environ[FORCE_WEIGHTS_ONLY_ENV] = "1"
        with allow_listed():
            try:
                yield
            except pickle.UnpicklingError as err:  # a weights-only torch.load outside the checkpoint engine refused a file
                raise refusal(folder, err) from None
    finally:
        for engine, inner in zip(engines, originals):
            engine.checkpoint_engine = inner
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY_ENV, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY_ENV] = previous
