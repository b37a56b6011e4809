"""Training benchmarks of gramian against Spark MLlib ALS and `implicit` (run: `make bench`)."""
