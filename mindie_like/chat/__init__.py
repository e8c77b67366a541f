"""mindie_like.chat"""
