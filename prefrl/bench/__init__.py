"""Benchmarks behind ``prefrl bench …``: each measures its comparison in one run,
writes its results to a JSON file and ends with one JSON line."""
