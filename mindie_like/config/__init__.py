"""mindie_like.config"""
