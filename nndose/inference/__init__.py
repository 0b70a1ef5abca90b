"""Sliding-window, mirrored, fold-ensembled dose prediction on raw cases (see predictor.DosePredictor)."""
