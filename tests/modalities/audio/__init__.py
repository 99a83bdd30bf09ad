"""Tests of the audio modality."""
