"""Training one method on the shared pipeline.

The Lightning module, its callbacks, checkpoints and interruption.
"""
