"""sage_irp_ros: an on-board language model for ROS 2 robots, answering with IRP and scoring SNARC salience.

The core (configuration, model loading, the IRP engine, energies, SNARC, the memory store and the
probes) imports no ROS; the nodes in ``irp_node`` and ``diagnostics_node`` are thin adapters over it.
"""

__version__ = "0.1.0"
