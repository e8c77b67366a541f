"""mindie_like.backend_atb"""
