"""_routes"""
