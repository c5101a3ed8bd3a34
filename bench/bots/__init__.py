"""The bots the benchmark runs: the same bot object serves the appliance and the baselines."""
