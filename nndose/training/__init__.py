"""Networks, losses, data loading, augmentation and trainers."""
