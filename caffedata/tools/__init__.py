"""The dataset tools behind the command line: convert, mean, inspect, bench, demo."""
