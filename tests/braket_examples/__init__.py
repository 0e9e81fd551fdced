"""Amazon Braket's hybrid-job examples (amazon-braket-examples), ported to qhybrid.

Each keeps its example's shape (decorator or script mode, the Braket calls it makes, what it
logs and saves); only the circuits are Qiskit ones, run on qhybrid devices.
"""
