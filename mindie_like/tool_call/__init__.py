"""mindie_like.tool_call"""
