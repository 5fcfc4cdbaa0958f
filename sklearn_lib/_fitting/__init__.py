"""_fitting"""
