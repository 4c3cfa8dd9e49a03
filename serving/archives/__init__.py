"""TorchServe ``.mar`` archives: safe reading and extraction, materialised as Triton layout."""
