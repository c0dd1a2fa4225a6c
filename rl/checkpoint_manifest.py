"""A checkpoint's manifest: the size and sha256 of every file, written last, checked before anything is loaded.

    RUN/checkpoints/step-000004/manifest.json
        {"format": 1, "algorithm": "sha256", "files": {"deepspeed/mp_rank_00_model_states.pt": {"bytes": N, "sha256": "..."}, ...}}

A folder that differs from its manifest in any way (a file changed, missing, added, or a link) is
refused, and the error names the file. The manifest protects against corruption and against a
file swapped by mistake; it is no signature (whoever can write the folder can rewrite it), which is
why resume also never unpickles arbitrary objects (`learner.safe_load`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

MANIFEST_FILE = "manifest.json"
FORMAT = 1
CHUNK_BYTES = 8 * 2**20


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was asked for; the message says where it looked and what to do."""


class ManifestError(CheckpointError):
    """A checkpoint folder that does not match its manifest; `file` is the offending file (relative)."""

    def __init__(self, folder: Path, file: str, reason: str):
        super().__init__(f"{folder / file} {reason}")
        self.folder, self.file, self.reason = folder, file, reason


@dataclass(frozen=True)
class FileDigest:
    bytes: int
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Every plain file under `folder`, as sorted POSIX paths relative to it; a link is an error."""
    found = []
    for directory, subdirs, files in os.walk(folder, followlinks=False):
        for name in subdirs + files:
            path = Path(directory) / name
            if path.is_symlink():
                raise ManifestError(folder, path.relative_to(folder).as_posix(), "is a symbolic link; a checkpoint holds only plain files")
        found += [(Path(directory) / name).relative_to(folder).as_posix() for name in files]
    return sorted(name for name in found if name != MANIFEST_FILE)


def write_manifest(folder: Path) -> Path:
    """Hash every file of the (complete) checkpoint `folder` into its manifest.json, fsynced."""
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in folder_files(folder)}
    path = folder / MANIFEST_FILE
    with open(path, "w") as handle:
        json.dump({"format": FORMAT, "algorithm": "sha256", "files": files}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def read_manifest(folder: Path) -> dict[str, FileDigest]:
    """The manifest's entries; a missing or malformed manifest is a ManifestError."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(folder, MANIFEST_FILE, "is missing (a checkpoint written by an older version of rl has none): "
                            "the checkpoint cannot be verified, so it is not loaded")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("algorithm") != "sha256":
            raise ValueError(f"format {data.get('format')!r}, algorithm {data.get('algorithm')!r}")
        entries = {name: FileDigest(int(e["bytes"]), str(e["sha256"])) for name, e in data["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ManifestError(folder, MANIFEST_FILE, f"is not a valid manifest ({err})") from None
    for name in entries:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ManifestError(folder, MANIFEST_FILE, f"lists {name!r}, which is outside the checkpoint")
    return entries


def verify_manifest(folder: Path, hash_files: bool = True) -> dict[str, FileDigest]:
    """Check `folder` against its manifest: the same files, sizes and (with `hash_files`) sha256s.

    Returns the entries; the first difference, in file order, is a ManifestError naming the file.
    """
    entries = read_manifest(folder)
    on_disk = folder_files(folder)
    added, missing = sorted(set(on_disk) - set(entries)), sorted(set(entries) - set(on_disk))
    if added:
        raise ManifestError(folder, added[0], f"is not in {MANIFEST_FILE} (a file added after the checkpoint was written)")
    if missing:
        raise ManifestError(folder, missing[0], f"is missing (listed in {MANIFEST_FILE})")
    for name in on_disk:
        check_file(folder, name, entries[name], hash_files)
    return entries


def check_file(folder: Path, name: str, expected: FileDigest, hash_file: bool = True) -> None:
    """One file against its manifest entry: its size, and with `hash_file` its sha256."""
    size = (folder / name).stat().st_size
    if size != expected.bytes:
        raise ManifestError(folder, name, f"has {size} bytes, {MANIFEST_FILE} says {expected.bytes}: the file changed")
    if hash_file and file_sha256(folder / name) != expected.sha256:
        raise ManifestError(folder, name, f"does not match its sha256 in {MANIFEST_FILE}: the file changed")


def verified_bytes(folder: Path, name: str, entries: dict[str, FileDigest]) -> bytes:
    """The content of `name`, read once and checked against the manifest (so what is checked is what is used)."""
    if name not in entries:
        raise ManifestError(folder, name, f"is not in {MANIFEST_FILE}")
    data = (folder / name).read_bytes()
    if len(data) != entries[name].bytes or hashlib.sha256(data).hexdigest() != entries[name].sha256:
        raise ManifestError(folder, name, f"does not match its sha256 in {MANIFEST_FILE}: the file changed")
    return data
