"""Apache Beam pipelines: the live scheduler, replay/evaluation and the archive."""
