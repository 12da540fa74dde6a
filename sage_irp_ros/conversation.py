"""Per-conversation history: the last ``memory.circular_buffer_size`` exchanges of each conversation.

Bounded twice: each conversation keeps a fixed number of exchanges, and only the most recently used
``memory.max_conversations`` conversations are kept, so a flood of new ids cannot grow memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque


class ConversationHistory:
    """Thread-safe map of conversation id -> recent (question, answer) pairs, oldest first."""

    def __init__(self, max_history: int = 5, max_conversations: int = 1000):
        self._max_history = max_history
        self._max_conversations = max_conversations
        self._items: OrderedDict[str, deque[tuple[str, str]]] = OrderedDict()
        self._lock = threading.Lock()

    def resize(self, max_history: int, max_conversations: int) -> None:
        """Apply new bounds at once: longer histories are cut to their newest turns, the least
        recently used conversations beyond ``max_conversations`` are dropped."""
        with self._lock:
            self._max_history, self._max_conversations = max_history, max_conversations
            for name, turns in list(self._items.items()):
                if max_history == 0:
                    del self._items[name]
                elif turns.maxlen != max_history:
                    self._items[name] = deque(turns, maxlen=max_history)
            while len(self._items) > self._max_conversations:
                self._items.popitem(last=False)

    def get(self, conversation: str) -> list[tuple[str, str]]:
        with self._lock:
            turns = self._items.get(conversation)
            return list(turns) if turns else []

    def add(self, conversation: str, question: str, answer: str) -> None:
        if self._max_history == 0:
            return
        with self._lock:
            turns = self._items.pop(conversation, None) or deque(maxlen=self._max_history)
            turns.append((question, answer))
            self._items[conversation] = turns
            while len(self._items) > self._max_conversations:
                self._items.popitem(last=False)

    def reset(self, conversation: str | None = None) -> int:
        """Forget one conversation, or all when ``conversation`` is None; returns how many were cleared."""
        with self._lock:
            if conversation is None:
                count = len(self._items)
                self._items.clear()
                return count
            return 1 if self._items.pop(conversation, None) is not None else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
