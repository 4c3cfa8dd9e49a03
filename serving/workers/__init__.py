"""Several serving processes behind one set of ports: the supervisor and its workers.

``supervisor`` runs in the process ``python -m serving`` starts when ``--workers`` is more than
one; ``worker`` is each serving process; ``channel`` is the control link between them.
"""

# Environment a supervisor sets for each worker it starts.
SETTINGS_ENV = "CAPSERVE_WORKER_SETTINGS"  # the Settings as JSON
SOCKET_ENV = "CAPSERVE_SUPERVISOR_SOCKET"  # the supervisor's control socket
BIND_FIRST_ENV = "CAPSERVE_WORKER_BIND_FIRST"  # "1": open listeners before loading the store
