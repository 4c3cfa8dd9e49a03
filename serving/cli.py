"""The ``capserve`` console script: ``capserve serve|train|export|models ...``.

Each subcommand replaces this process with ``python -m <package> ...`` (``os.execv``), so the
packages never import one another and each gets a clean interpreter.
"""

from __future__ import annotations

import os
import sys

COMMANDS: dict[str, tuple[list[str], str]] = {
    "serve": (["serving"], "run the inference server (python -m serving)"),
    "train": (["training"], "train a model (python -m training)"),
    "export": (["export"], "export checkpoints into the model store (python -m export)"),
    "models": (["export.defaults"], "build the default model store (python -m export.defaults)"),
}


def usage() -> str:
    lines = ["usage: capserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines.append("\n`capserve COMMAND --help` shows the options of a command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"capserve: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_args, _ = COMMANDS[command]
    os.execv(sys.executable, [sys.executable, "-m", *module_args, *rest])
    return 0  # not reached: execv replaces the process


if __name__ == "__main__":
    sys.exit(main())
