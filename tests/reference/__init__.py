"""Builders for tiny checkpoints written by the reference libraries themselves.

Everything here runs the *reference* code (transformers, stable-audio-tools, diffusers) to produce
real files with real key names; our code is then tested against those files and those libraries.
"""
