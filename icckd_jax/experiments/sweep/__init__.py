"""The sweep: settings x seeds of the pipeline, planned, probed and trained by workers."""
