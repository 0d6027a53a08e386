"""What can be wrong, and the evidence: findings and the detectors that raise them.

findings        the Finding type, the registry of ids, and the one ranking of findings
checks/         sanity checks on one batch before training, one module per concern
overfit         overfit one batch
curves          reading a loss curve (up, explodes, oscillates, plateaus)
bias_variance   the decomposition against the goal
error_analysis  which classes and inputs the errors concentrate in
memory          out of memory: the estimate and the finding
"""
