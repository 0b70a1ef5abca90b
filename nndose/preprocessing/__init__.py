"""Turning a raw case into network-ready arrays, exactly as the plan says."""
