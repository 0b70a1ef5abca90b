"""Beam geometry (IEC 61217) and the divergent-beam rasterizer."""
