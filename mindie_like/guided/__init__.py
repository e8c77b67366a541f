"""mindie_like.guided"""
