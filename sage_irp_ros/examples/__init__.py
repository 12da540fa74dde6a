"""Runnable examples of using sage_irp_ros from other code (behaviour trees)."""
