"""The Responses API's `store`: the last N responses in memory (ServerConfig.responsesStoreSize), for
GET / DELETE /v1/responses/{id} and `previous_response_id`.

Each entry keeps the response object and the conversation as chat messages (its input after the earlier
responses' conversation, then its output), so a continuation does not walk a chain that eviction may have cut.
The message dicts are shared between entries, not copied: a chain of k responses costs k lists of references.
Nothing is written to disk; a restart forgets everything.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional


@dataclass
class StoredResponse:
    response: dict
    conversation: list[dict]        # chat messages: every turn so far, this response's output included


class ResponseStore:
    def __init__(self, capacity: int = 1000):
        self.capacity = max(0, int(capacity))
        self._items: "OrderedDict[str, StoredResponse]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response_id: str, response: dict, conversation: list[dict]) -> None:
        if self.capacity == 0:
            return
        self._items[response_id] = StoredResponse(response, conversation)
        self._items.move_to_end(response_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)      # the oldest goes first

    def get(self, response_id: str) -> Optional[StoredResponse]:
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        return self._items.pop(response_id, None) is not None
