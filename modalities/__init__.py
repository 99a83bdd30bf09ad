"""Modality packages (image, audio, gesture, shape) built on :mod:`mmflow`.

Each subpackage depends on ``mmflow`` only and never imports another modality.
"""
