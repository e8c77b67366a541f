"""mindie_like.chat: chat templates (sandboxed jinja2), tokenizer wrapper; the detokenizer lives beside them."""
from .template import ChatTemplate, messages_for_template, tools_for_template
from .tokenizer import Tokenizer

__all__ = ["ChatTemplate", "Tokenizer", "messages_for_template", "tools_for_template"]
