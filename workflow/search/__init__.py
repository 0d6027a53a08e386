"""Choosing hyperparameters and remedies.

range_test      the learning-rate range test
space           the search space: config keys with ranges, per-trial keys and group keys
random_search   coarse-to-fine random search of batched trials, recorded by Optuna
pruning         rung pruning: successive halving over the lanes of batched trial programs
remedies        the workflow's decision list: what to try for a verdict
"""
