"""mindie_like.engine"""
