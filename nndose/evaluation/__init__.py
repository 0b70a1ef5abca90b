"""OpenKBP scores, DVH points, HI, CI, isodose Dice, per-structure MAE, plots."""
