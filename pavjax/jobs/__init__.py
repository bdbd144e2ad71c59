"""Jobs: one orchestration loop per module, each exposing `run(config, workdir)`."""
