"""The supervisor's log of the control operations every worker has applied.

A replacement worker replays it to serve the same models and see the same shared-memory
regions as the others, so it must stay as short as the state it describes: an unregistration
is kept as the absence of the registrations it ends, not as one more entry. Region names are
one namespace over system and CUDA regions (as in one process), so a name registered as either
kind is refused for both whichever worker is asked.
"""

from __future__ import annotations

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
        if ends is None:
            self._entries.append({"op": op, "params": params})
            return
        name = params["name"]  # "" unregisters every region of that kind
        self._entries = [e for e in self._entries if e["op"] != ends
                         or (name and e["params"]["name"] != name)]
