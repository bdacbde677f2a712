"""The run engine: run lifecycle, DAG scheduling, artifacts and sidecars on disk."""
