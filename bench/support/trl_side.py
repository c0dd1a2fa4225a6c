"""TRL's side of `bench/vs_trl.py`; runs inside `.venv-trl` (TRL and its requirements, no project code).

Trains TRL's GRPOTrainer on the tasks vs_trl.py wrote (chat messages + reference answers, in the
order our learner draws them; no shuffling, so step k of both sides sees the same 8 prompts) and
writes the wall time of every optimizer step (a TrainerCallback, on_step_begin to on_step_end:
generation, rewards, forward/backward of 4 micro-batches, optimizer step) to a JSON file.

    .venv-trl/bin/python bench/support/trl_side.py --model DIR --tasks TASKS.json --steps 6 --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

BOXED = "\\boxed{"
NUMBER = re.compile(r"^[-+]?\d[\d,]*(\.\d+)?$")


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (nested braces allowed); None if absent or unclosed.

    The rule of rewards/boxed.py, written out again on purpose: this script runs in TRL's venv,
    which has none of the project's dependencies (importing `rewards` pulls in rl.wire)."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth = 1
    for i in range(start + len(BOXED), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + len(BOXED):i]
    return None


def as_number(text: str) -> float | None:
    cleaned = text.strip().strip("$").replace(" ", "")
    return float(cleaned.replace(",", "")) if NUMBER.match(cleaned) else None


def correctness(completions, answer, **_) -> list[float]:
    """The check of our `boxed_answer` reward: 1 if the last \\boxed{} holds the reference number."""
    scores = []
    for completion, reference in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        boxed = last_boxed(text)
        value = as_number(boxed) if boxed is not None else None
        scores.append(float(value is not None and value == as_number(reference)))
    return scores


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder (fp32 safetensors)")
    parser.add_argument("--tasks", required=True, help="JSON list of {prompt, answer, prompt_ids} from vs_trl.py")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps, the warm-up included")
    parser.add_argument("--out", required=True, help="JSON file for the per-step times")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default=None, help="the Trainer's output folder (default: a new temporary one)")
    return parser.parse_args()


def check_rendering(tokenizer, tasks: list[dict]) -> None:
    """Both sides must feed the model the same tokens: our worker's ids against TRL's tokenizer."""
    for task in tasks:
        ids = tokenizer.apply_chat_template(task["prompt"], add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)
        if ids != task["prompt_ids"]:
            raise SystemExit(f"error: task {task['task_id']}: TRL's chat-template rendering differs from ours")


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tasks = json.loads(Path(args.tasks).read_text())
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    check_rendering(tokenizer, tasks)
    dataset = datasets.Dataset.from_list([{"prompt": t["prompt"], "answer": t["answer"]} for t in tasks])

    records: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            records.append({"step": state.global_step, "seconds": time.perf_counter() - self.start})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if records and logs and "completions/mean_length" in logs:
                records[-1]["completion_len_mean"] = float(logs["completions/mean_length"])
                records[-1]["reward_mean"] = float(logs.get("reward", "nan"))
                records[-1]["trl_step_time"] = float(logs.get("step_time", "nan"))  # TRL's own timer, a cross-check

    batch = args.prompts * args.samples
    config = GRPOConfig(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="trl-grpo-"),
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,  # TRL's defaults: bf16 + checkpointing
        model_init_kwargs={"dtype": torch.float32},
        per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=batch // args.micro_batch,
        num_generations=args.samples, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, use_vllm=False,
        beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",  # our grpo preset
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.steps, shuffle_dataset=False, seed=0,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=args.model, reward_funcs=correctness, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
    Path(args.out).write_text(json.dumps({
        "steps": records, "trl": trl.__version__, "transformers": transformers.__version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }, indent=1))


if __name__ == "__main__":
    main()
