"""Reading and writing the files nndose works with."""
