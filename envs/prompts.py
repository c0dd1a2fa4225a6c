"""How a task's question becomes chat messages; the tokenizer's chat template does the rest.

Every generator and loader builds its tasks through `PromptStyle.messages`, so the system prompt
and the instruction suffix are configured in one place (`env.system_prompt`, `env.instruction`,
or per source). The worker renders the messages with the model's own chat template
(`apply_chat_template(..., add_generation_prompt=True)`); nothing here knows a model's format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rl.wire import ChatMessage


@dataclass(frozen=True)
class PromptStyle:
    """The fixed parts of every prompt of a source: an optional system message and an instruction."""

    system_prompt: str | None = None
    instruction: str = ""
    separator: str = "\n\n"  # between question and instruction; arithmetic keeps one line with " "

    def user_text(self, question: str) -> str:
        """The question, then the instruction (nothing when it is empty)."""
        question = question.strip()
        return f"{question}{self.separator}{self.instruction.strip()}" if self.instruction.strip() else question

    def messages(self, question: str, shots: Sequence[ChatMessage] = ()) -> list[ChatMessage]:
        """[system] + solved example turns + the user turn."""
        out = [ChatMessage(role="system", content=self.system_prompt)] if self.system_prompt else []
        out.extend(shots)
        out.append(ChatMessage(role="user", content=self.user_text(question)))
        return out
