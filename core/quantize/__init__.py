"""Quantize: compressed variants of one model and their size, speed and quality, side by side."""
