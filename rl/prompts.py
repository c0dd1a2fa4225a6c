"""A task's prompt as the model sees it: its chat messages under the model's own chat template.

Shared by the rollout workers (which generate from the rendered ids) and the learner and `rl eval`
(which drop tasks whose prompt is too long before any is sampled), so both count the same tokens.
"""

from __future__ import annotations

from rl.wire import Task


def render_prompts(tokenizer, tasks: list[Task]) -> list[list[int]]:
    """Token ids of each task's messages under the tokenizer's chat template, ready for the reply."""
    prompts = []
    for task in tasks:
        ids = tokenizer.apply_chat_template([m.model_dump() for m in task.messages], add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids))
    return prompts


def prompt_lengths(tokenizer, tasks: list[Task], chunk: int = 1000) -> list[int]:
    """Prompt token counts, as `render_prompts` would make them, batched (about 0.3 ms a task)."""
    lengths = []
    for start in range(0, len(tasks), chunk):
        conversations = [[m.model_dump() for m in t.messages] for t in tasks[start:start + chunk]]
        texts = tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
        lengths.extend(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return lengths
