"""mindie_like.protocol"""
