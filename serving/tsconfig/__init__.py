"""TorchServe's ``config.properties`` and KServe's storage layout, read into capserve settings.

``properties`` parses the file, ``config`` maps each key to a capserve setting (or ignores it
with a reason, or refuses it when it would weaken a safe default), ``layout`` finds the files of
a KServe storage root and prepares the model store the server then serves.
"""
