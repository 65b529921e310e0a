"""Experiment configs: `get_config(arg)` returns an `ml_collections.ConfigDict`.

They ship with the package as `tfmaml.configs`, so the CLI's default config
is there after `pip install`; the checkout's `configs/` links here, so
`--config=configs/<name>.py[:variant]` works from the repository root.
"""
