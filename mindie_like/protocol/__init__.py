"""mindie_like.protocol: OpenAI-compatible request/response models and MindIE-style validation errors."""
from .compat import (GenerateSpec, InferRequest, StopInferRequest, TgiRequest, TokenizerRequest, TritonRequest,
                     VllmRequest, parse_compat)
from .errors import (GENERATION_ERROR, INCOMPLETE_GENERATION, INPUT_VALIDATION_ERROR, SERVICE_UNAVAILABLE,
                     ValidationFailure)
from .requests import (ChatCompletionRequest, ChatMessage, CompletionRequest, ResponseFormat, Tool,
                       format_validation_error, parse_chat_request, parse_completion_request)
from .responses import (ChatCompletionChunk, ChatCompletionResponse, CompletionResponse, ErrorBody, Usage)

__all__ = [
    "GenerateSpec", "InferRequest", "StopInferRequest", "TgiRequest", "TokenizerRequest", "TritonRequest",
    "VllmRequest", "parse_compat",
    "ValidationFailure", "INPUT_VALIDATION_ERROR", "GENERATION_ERROR", "INCOMPLETE_GENERATION",
    "SERVICE_UNAVAILABLE", "ChatCompletionRequest", "ChatMessage", "CompletionRequest", "ResponseFormat", "Tool",
    "format_validation_error", "parse_chat_request", "parse_completion_request", "ChatCompletionChunk",
    "ChatCompletionResponse", "CompletionResponse", "ErrorBody", "Usage",
]
