"""Console entry points (thin wrappers; the work lives in the library modules)."""
