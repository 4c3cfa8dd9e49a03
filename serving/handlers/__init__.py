"""Custom TorchServe handlers (``--allow-archive-code``), run in isolated handler processes.

``archive`` tells which archives need one and extracts them; ``process`` is the handler
process itself (TorchServe's ``ts`` package loads the handler, as TorchServe's own worker
does); ``pool`` keeps a model's handler processes, restarts one that dies or overruns its
``responseTimeout``, and feeds them batches from capserve's dynamic batcher.
"""
