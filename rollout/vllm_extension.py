"""A vLLM worker extension: load new weights into the live model in place, and read them back.

vLLM mixes this class into its worker (``LLM(worker_extension_cls="rollout.vllm_extension.
WeightSyncExtension")``), so ``self`` below is the vLLM worker and the methods are reached with
``LLM.collective_rpc("rl_load_weights", args=(named_tensors,))``. With the engine in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, uni-process executor) that call is a plain method call: the
tensors are passed by reference, never pickled or copied through a pipe.

Why not just ``model.load_weights``: on CPU, vLLM packs every linear layer's weight into a
oneDNN (or SGL) kernel-specific copy after loading and *deletes* the original parameter
(``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``); the kernel keeps its own copy, so
writing into a parameter changes nothing. We therefore (once) re-create each packed layer's
parameter with its original shape and weight loader, filled by reading the packed kernel back
(``kernel(I)`` = W^T, exact), keep it as the layer's master weight, let the model's own
``load_weights`` (which knows the HF -> vLLM name mapping and the fused qkv / gate_up shards) copy
the new tensors into it, and re-pack only the layers that were touched. On CUDA the parameters
are what the kernels read, so ``model.load_weights`` alone is enough.

Scope: unquantized models (the weights we train). Quantized layers are not supported here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# Rows of the identity fed through a packed kernel at once when reading a weight back.
_READBACK_CHUNK = 1024


def _is_cpu_packed(module: torch.nn.Module) -> bool:
    """True for layers whose matmul runs on a packed CPU kernel (``cpu_linear``) built from the weight."""
    return hasattr(module, "cpu_linear") and isinstance(getattr(module, "weight", None), torch.Tensor)


@torch.no_grad()
def _read_back_packed(module: torch.nn.Module, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The weight (N, K) a packed CPU kernel multiplies by: kernel(I_K) = I @ W^T = W^T."""
    n, k = shape
    out = torch.empty(n, k, dtype=dtype)
    for start in range(0, k, _READBACK_CHUNK):
        stop = min(k, start + _READBACK_CHUNK)
        eye = torch.zeros(stop - start, k, dtype=dtype)
        eye[:, start:stop].fill_diagonal_(1)
        out[:, start:stop].copy_(module.cpu_linear(eye, module.weight, None).t())
    return out


class WeightSyncExtension:
    """Methods added to vLLM's worker. Names carry an ``rl_`` prefix to avoid clashing with vLLM's."""

    # -- helpers ------------------------------------------------------------------------------

    def _rl_model(self) -> torch.nn.Module:
        return self.model_runner.get_model()

    def _rl_on_cpu(self) -> bool:
        from vllm.platforms import current_platform

        return current_platform.is_cpu()

    @torch.no_grad()
    def _rl_prepare_cpu(self) -> None:
        """Once: give every packed layer whose weight vLLM deleted a full master weight again."""
        if getattr(self, "_rl_prepared", False):
            return
        from vllm.model_executor.model_loader.reload.layerwise import get_layerwise_info
        from vllm.model_executor.model_loader.reload.meta import materialize_meta_tensor
        from vllm.model_executor.model_loader.reload.sanitize import restore_layer_refs

        for name, module in self._rl_model().named_modules():
            if not _is_cpu_packed(module) or module.weight.numel() > 0:
                continue
            meta = get_layerwise_info(module).restore_metadata[0].get("weight")
            if meta is None or meta.dim() != 2:
                raise RuntimeError(f"cannot restore the packed weight of {name}: no layout recorded by vLLM")
            # The recorded meta tensor keeps the parameter class and its attributes (weight_loader,
            # output_dim, ...), so the model's load_weights can shard into it exactly as at startup.
            master = materialize_meta_tensor(restore_layer_refs(meta, module))
            master.copy_(_read_back_packed(module, meta.shape, meta.dtype))
            module.register_parameter("weight", master)
        self._rl_prepared = True

    @torch.no_grad()
    def _rl_repack(self, module: torch.nn.Module) -> None:
        """Rebuild a layer's packed CPU kernel from its (master) weight, keeping the master."""
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(module, remove_weight=False)

    # -- RPC entry points --------------------------------------------------------------------

    def rl_prepare(self) -> None:
        """Do the one-time CPU preparation now (at engine start) rather than in the first load."""
        if self._rl_on_cpu():
            self._rl_prepare_cpu()

    @torch.no_grad()
    def rl_load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy Hugging Face-named tensors into the live model; return how many vLLM params changed."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.models.utils import _get_tied_embedding_params

        model = self._rl_model()
        on_cpu = self._rl_on_cpu()
        if on_cpu:
            self._rl_prepare_cpu()
        # Tied aliases (lm_head.weight of a tied model) would make vLLM's loader insist that the
        # canonical embedding is in the same call; the embedding itself carries the value.
        tied = getattr(self, "_rl_tied_aliases", None)
        if tied is None:
            tied = self._rl_tied_aliases = set(_get_tied_embedding_params(model))
        weights = [(n, t) for n, t in named_tensors if n not in tied]
        if not weights:
            return 0
        with set_current_vllm_config(self.vllm_config):
            loaded = model.load_weights(weights)
        if on_cpu:
            # Re-pack every layer whose weight was written, including layers that share it: a tied
            # lm_head is its own module with its own packed kernel around the embedding's weight.
            packed_by_param = getattr(self, "_rl_packed_by_param", None)
            if packed_by_param is None:
                packed_by_param = self._rl_packed_by_param = {}
                for module in model.modules():
                    if _is_cpu_packed(module):
                        packed_by_param.setdefault(id(module.weight), []).append(module)
            touched = {}
            for param_name in loaded or [n for n, _ in model.named_parameters()]:
                for module in packed_by_param.get(id(model.get_parameter(param_name)), ()):
                    touched[id(module)] = module
            for module in touched.values():
                self._rl_repack(module)
        return len(loaded or ())

    @torch.no_grad()
    def rl_parameters_snapshot(self) -> dict[str, torch.Tensor]:
        """CPU copies of the live parameters under vLLM's names; packed CPU weights are read back
        from the kernels themselves, so this shows what generation actually uses. A tied lm_head
        appears as its own entry (on CPU read from its own logits kernel)."""
        model = self._rl_model()
        on_cpu = self._rl_on_cpu()
        out: dict[str, torch.Tensor] = {}
        for module_name, module in model.named_modules():
            for pname, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{pname}" if module_name else pname
                if full in out:
                    continue
                if on_cpu and pname == "weight" and _is_cpu_packed(module):
                    shape = param.shape
                    if param.numel() == 0:  # vLLM dropped it: take the shape from its recorded layout
                        from vllm.model_executor.model_loader.reload.layerwise import (
                            get_layerwise_info,
                        )

                        shape = get_layerwise_info(module).restore_metadata[0]["weight"].shape
                    out[full] = _read_back_packed(module, shape, param.dtype)
                else:
                    out[full] = param.detach().to("cpu", copy=True)
        return out
