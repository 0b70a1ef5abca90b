"""nndose: auto-configuring 3D radiotherapy dose prediction."""

__version__ = "0.1.0"
