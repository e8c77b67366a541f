"""mindie_like.server"""
