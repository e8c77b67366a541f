"""mindie_like: a MindIE-style LLM serving daemon."""
__version__ = "0.1.0"
