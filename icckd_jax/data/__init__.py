"""Data: the loaders of each source, the on-device pipeline, augmentation."""
