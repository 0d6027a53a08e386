"""A config file whose get_config returns a plain dict, not an ml_collections.ConfigDict."""


def get_config():
    """A dict: every stage refuses it in one line."""
    return {"seed": 0, "num_steps": 10}
