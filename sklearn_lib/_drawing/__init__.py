"""_drawing"""
