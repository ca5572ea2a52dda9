"""The trainer child process (imports torch): the one loop, the Recipe contract, strategies, recipes."""
