"""Input pipelines: the resident (on-device) and streamed (Grain) paths, and their augmentation."""
