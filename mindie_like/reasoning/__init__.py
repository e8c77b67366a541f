"""mindie_like.reasoning"""
