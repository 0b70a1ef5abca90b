"""Dataset builders: OpenKBP conversion/export and the built-in phantom generator."""
