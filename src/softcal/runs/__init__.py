"""Run directories: the files a training run leaves, and how a run is opened again."""
