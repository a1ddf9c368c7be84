"""Ray Data entrypoints, one per batch job: `python -m data_jobs.<name> --help`."""
