"""The rollout engine: vLLM, in-process, with in-place weight loading.

Design (vLLM 0.32):

* In-process engine. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` makes ``vllm.LLM`` run the engine core
  and a uni-process executor inside this process (no engine-core or worker subprocess). So no
  ``if __name__ == "__main__"`` guard is needed, an idle engine runs no thread and burns no CPU,
  and ``LLM.collective_rpc`` is a direct method call: ``load_weights`` hands the tensors to the
  model by reference (no pickling, no IPC copy).
* Weight loading: a worker extension (``rollout/vllm_extension.py``, passed as
  ``worker_extension_cls``) runs the model's own ``load_weights`` (HF names -> fused vLLM params)
  and, on CPU, re-packs the touched layers' oneDNN kernels (vLLM packs CPU linear weights into a
  kernel-private copy, so writing a parameter alone would not change generation). The prefix cache
  is reset afterwards. vLLM's ``weight_transfer`` engines (nccl, CUDA ipc, ...) move tensors between
  processes/GPUs; in-process there is nothing to transfer, so they would only add a hop.
* Logprobs: ``logprobs_mode="processed_logprobs"`` with ``SamplingParams(logprobs=0)`` returns, for
  every generated token, the logprob of the sampled token under the distribution the sampler
  actually drew from: log_softmax(logits / temperature), after top-p/top-k masking when those are
  set (with top_p=1, as in training, that is exactly log_softmax(logits / T)). With temperature 0
  (greedy) it is log_softmax(logits) of the argmax token. vLLM's default "raw_logprobs" would
  ignore the temperature.
* In-process side effects: like vLLM itself, the engine seeds the process-global torch / numpy /
  random generators with `seed` at start, and unseeded `generate` calls draw from torch's global
  generator (pass `seed=` for reproducible samples).
* CPU threads: in-process, vLLM's own OMP binding (done by its multiprocessing executor when it
  spawns a worker) does not apply, so the constructor sets torch's thread count itself (all allowed
  cores, or ``cpu_threads``) and stops vLLM from dropping it to 1 for serving.
* GPU: the launcher's placement plan (``rl/placement.py``) gives the engine its GPU
  (``CUDA_VISIBLE_DEVICES``), its share of that GPU's memory and a per-GPU start-up lock (see
  ``rl/devices.py``). CUDA graphs by default: ``load_weights`` copies into the same tensors, so
  captured graphs stay valid.
* Compiled by default on CPU too (vLLM's default; inductor's C++ kernels, ~1.3x faster generation
  for ~90 s at the first start on a machine, ~25 s at later ones), eager where no C++ compiler is
  found. Inductor does not freeze the weights, so in-place loads reach the compiled model
  (``tests/test_rollout_engine.py`` checks logprobs after a load on the default path).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EXTENSION_CLS = "rollout.vllm_extension.WeightSyncExtension"
log = logging.getLogger("rollout")


@dataclass
class Completion:
    token_ids: list[int]  # generated tokens (no prompt); a stop/EOS token that ended it is included
    logprobs: list[float]  # logprob of each token under the sampled (temperature-scaled) distribution
    text: str
    finish_reason: str  # "stop" or "length"


def parse_cpu_list(spec: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]."""
    cpus: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    if not cpus:
        raise ValueError(f"empty CPU list: {spec!r}")
    return sorted(set(cpus))


def _bind_process(cpus: list[int]) -> None:
    """Pin every existing thread of this process (and so the threads it starts later) to `cpus`."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            pass  # a thread that just ended


class RolloutEngine:
    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int = 1024,
        kv_cache_gib: float = 1.0,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float | None = None,
        gpu_memory_gib: float | None = None,
        cpu_threads: str | None = None,
    ):
        import torch

        from rl.devices import cpp_compiler, engine_memory_utilization, engine_start_lock, resolve_rollout_dtype
        from rl.placement import NO_COMPILER_NOTE, enforce_eager_for

        self.on_cuda = torch.cuda.is_available()
        # auto: float32 on CPU (this CPU has no bf16 hardware: fp32 is ~2.5x faster), bfloat16 from Ampere on, float16 before.
        dtype = resolve_rollout_dtype(dtype)
        self.dtype = dtype
        self.requested_eager = enforce_eager
        if enforce_eager is None:
            enforce_eager = enforce_eager_for(None, self.on_cuda, cpp_compiler())
            if enforce_eager:
                log.warning(NO_COMPILER_NOTE)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"

        extra: dict = {}
        restore_env: dict[str, str | None] = {}
        set_num_threads = torch.set_num_threads
        if not self.on_cuda:
            cpus = parse_cpu_list(cpu_threads) if cpu_threads else sorted(os.sched_getaffinity(0))
            # Used by vLLM only when it spawns its worker (multiprocessing forced on by the user).
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus)))
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            # vLLM 0.32's AOT compile cache fails to load under torch 2.13 ("'function' object has no
            # attribute 'finalize_loading'") and recompiles at every start (~90 s); its older path
            # reuses inductor's cache, so later starts cost ~25 s more than eager instead.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
            if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
                # Same effect as VLLM_CPU_KVCACHE_SPACE (which, when the user sets it, wins), but
                # that variable takes whole GiB only.
                extra["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
            if in_process:
                if cpu_threads:
                    _bind_process(cpus)
                set_num_threads(len(cpus))
                # With OMP_NUM_THREADS unset, vLLM's worker drops torch to 1 thread "for serving".
                restore_env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
                os.environ.setdefault("OMP_NUM_THREADS", str(len(cpus)))
            # vLLM's CPU platform puts tcmalloc and libgomp into LD_PRELOAD for the processes it
            # spawns; do not leak that into the processes our caller starts later.
            restore_env["LD_PRELOAD"] = os.environ.get("LD_PRELOAD")
        else:
            # The launcher's plan (its share of a GPU that other engines or the learner also use), else the config's.
            extra["gpu_memory_utilization"] = engine_memory_utilization(gpu_memory_utilization, gpu_memory_gib)

        import time

        from vllm import LLM

        t0 = time.perf_counter()
        try:
            with engine_start_lock():  # one engine at a time per GPU (see rl.devices)
                self.llm = LLM(
                    model=str(model_path),
                    dtype=dtype,
                    seed=seed,
                    max_model_len=max_model_len,
                    enforce_eager=enforce_eager,
                    worker_extension_cls=EXTENSION_CLS,
                    logprobs_mode="processed_logprobs",
                    enable_prefix_caching=True,
                    disable_log_stats=True,
                    **extra,
                )
        finally:
            for key, value in restore_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            # vLLM's CPU worker replaces torch.set_num_threads with a no-op for the whole process.
            torch.set_num_threads = set_num_threads
        self.in_process = in_process
        self.enforce_eager = enforce_eager
        self.max_model_len = max_model_len
        # One-time: restore full master weights behind vLLM's packed CPU kernels (see
        # vllm_extension.py), so that the first load_weights is as fast as the others.
        t1 = time.perf_counter()
        self.llm.collective_rpc("rl_prepare")
        self.timings = {"engine_start_s": time.perf_counter() - t0, "prepare_s": time.perf_counter() - t1}

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_tokens: int,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
    ) -> list[list[Completion]]:
        """One list of `n` completions per prompt, in prompt order."""
        from vllm import SamplingParams

        if not prompt_token_ids:
            return []
        greedy = temperature < 1e-5
        # vLLM refuses n > 1 for greedy requests: send n copies of the prompt instead (the prefix
        # cache shares their prefill).
        copies, per_request_n = (n, 1) if greedy else (1, n)
        requests, params = [], []
        for i, ids in enumerate(prompt_token_ids):
            for c in range(copies):
                requests.append({"prompt_token_ids": list(ids)})
                params.append(
                    SamplingParams(
                        n=per_request_n,
                        temperature=0.0 if greedy else temperature,
                        top_p=1.0 if greedy else top_p,
                        max_tokens=max_tokens,
                        # vLLM gives the k-th sample of a request seed + k: keep all distinct.
                        seed=None if seed is None else seed + (i * copies + c) * per_request_n,
                        stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
                        logprobs=0,  # just the sampled token's logprob
                        flat_logprobs=True,
                    )
                )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results: list[list[Completion]] = []
        for i in range(len(prompt_token_ids)):
            group: list[Completion] = []
            for request_output in outputs[i * copies : (i + 1) * copies]:
                for out in sorted(request_output.outputs, key=lambda o: o.index):
                    group.append(_completion(out))
            results.append(group)
        return results

    # -- weights ------------------------------------------------------------------------------

    def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the live engine, in place; callable with any subset (bucket)."""
        self.llm.collective_rpc("rl_load_weights", args=(named_tensors,))
        # Cached KV blocks were computed with the old weights.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("could not reset vLLM's prefix cache (requests still running?)")

    def parameters_snapshot(self) -> dict[str, torch.Tensor]:
        """CPU copies of the live parameters under vLLM's names (fused qkv_proj, gate_up_proj, ...)."""
        return self.llm.collective_rpc("rl_parameters_snapshot")[0]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:
            pass
        del llm
        import gc

        gc.collect()


def _completion(out) -> Completion:
    token_ids = list(out.token_ids)
    lp = out.logprobs
    if lp is None:
        raise RuntimeError("vLLM returned no logprobs")
    if hasattr(lp, "start_indices"):  # FlatLogprobs: the sampled token is the first entry per position
        starts = lp.start_indices
        logprobs = [lp.logprobs[starts[k]] for k in range(len(token_ids))]
        if any(lp.token_ids[starts[k]] != t for k, t in enumerate(token_ids)):
            raise RuntimeError("vLLM logprobs do not line up with the generated tokens")
    else:
        logprobs = [pos[t].logprob for pos, t in zip(lp, token_ids)]
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"{len(logprobs)} logprobs for {len(token_ids)} tokens")
    return Completion(token_ids=token_ids, logprobs=logprobs, text=out.text, finish_reason=str(out.finish_reason))
