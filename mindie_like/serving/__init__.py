"""mindie_like.serving: turns protocol requests into engine calls and engine outputs into protocol responses.

No HTTP, no torch. The HTTP handler does:

    try:
        if ChatServing.wants_stream(body):
            agen = chat.stream(body, request_id)
            first = await agen.__anext__()          # raises ValidationFailure before anything is sent
            ... prepare an SSE response, write `first`, then `async for chunk in agen: write(chunk)`
        else:
            return json_response(await chat.create(body, request_id))
    except ValidationFailure as e:
        return json_response(e.to_body(), status=e.status)
"""
from ..protocol.errors import ValidationFailure
from .chat import ChatServing
from .common import ServingOptions, defaults_from_generation_config, defaults_from_model_dir
from .completion import CompletionServing
from .generate import GenerateServing, GenerationResult, InflightRegistry, TokenEvent

__all__ = ["ChatServing", "CompletionServing", "GenerateServing", "GenerationResult", "InflightRegistry",
           "ServingOptions", "TokenEvent", "ValidationFailure",
           "defaults_from_generation_config", "defaults_from_model_dir"]
