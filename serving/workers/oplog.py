"""The supervisor's log of the control operations every worker has applied.

A replacement worker replays it to serve the same models and see the same shared-memory
regions as the others, so it must stay about as short as the state it describes: an
unregistration is kept as the absence of the registrations it ends, not as one more entry, and
an operation drops the earlier ones it overrides. Region names are one namespace over system
and CUDA regions (as in one process), so a name registered as either kind is refused for both
whichever worker is asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.errors import AlreadyExists, ServingError, shown

# Each registration, and the unregistration that ends it.
REGISTER = {"shm_register": "shm_unregister", "cuda_register": "cuda_unregister"}
UNREGISTER = {off: on for on, off in REGISTER.items()}

Entry = dict[str, Any]


class ControlLog:
    def __init__(self) -> None:
        self._entries: list[Entry] = []

    @property
    def entries(self) -> list[Entry]:
        return list(self._entries)

    def refusal(self, op: str, params: dict[str, Any]) -> ServingError | None:
        """Why ``op`` must not reach any worker (the same answer whichever worker was asked),
        or None."""
        if op in REGISTER and any(e["op"] in REGISTER and e["params"]["name"] == params["name"]
                                  for e in self._entries):
            return AlreadyExists(f"shared memory region '{shown(str(params['name']))}' "
                                 "already in manager")
        return None

    @staticmethod
    def undo(op: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The operation that takes back ``op`` on the workers that applied it, when one
        worker refused it: a load is unloaded everywhere, a scale goes back to the instance
        count the others had, a registration (of a name free everywhere) is unregistered."""
        if op == "load":
            return "unload", {"name": params["name"]}
        if op == "scale":
            return "scale", {**params, "instances": params["previous"]}
        if op in REGISTER:
            return REGISTER[op], {"name": params["name"]}
        return None

    def record(self, op: str, params: dict[str, Any]) -> None:
        ends = UNREGISTER.get(op)
        if ends is not None:
            name = params["name"]  # "" unregisters every region of that kind
            self._entries = [e for e in self._entries if e["op"] != ends
                             or (name and e["params"]["name"] != name)]
            return
        obsolete = self._made_obsolete_by(op, params)
        self._entries = [e for e in self._entries if not obsolete(e)]
        self._entries.append({"op": op, "params": params})

    def _made_obsolete_by(self, op: str, params: dict[str, Any]) -> Callable[[Entry], bool]:
        """Which earlier entries ``op`` makes pointless to replay, so that reloading a model
        every few minutes for months does not grow the log (nor a replacement's catch-up).
        A scale sets an absolute count and a default version replaces the one before; a load
        or unload rebuilds every version with the configured instances. Earlier loads and
        unloads go only while no default version of the model is logged: that entry needs
        the model loaded when it is replayed."""
        name = params["name"]

        def of_model(e: Entry, *ops: str) -> bool:
            return e["op"] in ops and e["params"]["name"] == name

        if op == "scale":
            return lambda e: of_model(e, "scale") and e["params"]["version"] == params["version"]
        if op == "set_default":
            return lambda e: of_model(e, "set_default")
        if op in ("load", "unload"):
            defaults = any(of_model(e, "set_default") for e in self._entries)
            dropped = ("scale",) if defaults else ("scale", "load", "unload")
            return lambda e: of_model(e, *dropped)
        return lambda e: False
