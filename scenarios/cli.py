"""The `econalign` command line. Each command registers itself from the module that owns it
(`add_commands(commands)` in each module of OWNERS); errors map to exit codes here, once."""
from __future__ import annotations

import argparse
import importlib
import sys
from contextlib import nullcontext
from dataclasses import MISSING, fields

from agents.errors import InputError
from agents.llm.devices import DEVICES, DTYPES, check_names
from agents.records import folder_lock
from scenarios.report import write_report

OWNERS = ("scenarios.theory", "agents.llm.models", "scenarios.serve", "scenarios.evaluation",
          "finetune.dataset", "finetune.train", "finetune.pipeline", "scenarios.market", "scenarios.av",
          "scenarios.study", "simulation.viz_server", "scenarios.transfer", "scenarios.demo", "scenarios.report")
GROUPS = {"models": "prepare the embedded model (or a GGUF file) once",
          "games": "the canonical-games evaluation battery",
          "finetune": "synthetic data, LoRA training, before/after evaluation",
          "market": "repeated Bertrand markets (LLM, theory, Q-learning firms)",
          "av": "autonomous-vehicle traffic with brake-failure dilemmas (LLM and theory AVs)",
          "study": "batch parameter studies: a market scenario over a grid and seeds"}


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class Commands:
    """What a module registers its commands with: `add(name, run, help, group=...)` gives the
    command's parser, `flags(...)` generates flags from an options dataclass."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
        self.groups: dict = {}

    def add(self, name: str, run, help: str, group: str | None = None, out: str | None = None,
            report: bool = False, **kwargs) -> argparse.ArgumentParser:
        """`econalign [GROUP] NAME`, which calls run(args) and exits with what it returns. `out`:
        the argument naming the command's output folder, locked while it runs (a second run into
        it is refused); `report`: write the folder's report.html when the run succeeds."""
        if group is not None and group not in self.groups:
            self.groups[group] = self.commands.add_parser(group, help=GROUPS[group]).add_subparsers(
                dest=f"{group}_command", required=True, parser_class=Parser)
        command = (self.commands if group is None else self.groups[group]).add_parser(name, help=help, **kwargs)
        command.set_defaults(run=run, out_argument=out, report=report)
        return command

    @staticmethod
    def flags(parser, cls, helps: dict, names: dict | None = None) -> None:
        """One --flag per field of the dataclass `cls` named in `helps`, with the field's default
        and type (a bool: --flag / --no-flag, default the field's; the choices in the field's metadata);
        `names` renames flags (learning_rate -> lr)."""
        for f in fields(cls):
            if f.name not in helps:
                continue
            default = None if f.default is MISSING else f.default
            flag = "--" + (names or {}).get(f.name, f.name).replace("_", "-")
            if isinstance(default, bool):
                parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                    help=helps[f.name])
            else:
                parser.add_argument(flag, dest=f.name, type=str if default is None else type(default),
                                    default=default, choices=f.metadata.get("choices"),
                                    help=helps[f.name] + (f" (default {default})" if default is not None else ""))

    @staticmethod
    def placement(parser, default: str | None = "auto", where: str = "") -> None:
        """--device and --dtype of the in-process model (agents.llm.devices)."""
        def device(value: str) -> str:
            try:
                check_names(device=value)
            except InputError as err:
                raise argparse.ArgumentTypeError(str(err)) from None
            return value

        shown = f" (default {default})" if default else f" (default: {where})"
        parser.add_argument("--device", type=device, default=default, metavar="|".join(DEVICES),
                            help="where the in-process model runs: auto = a CUDA GPU if any, else the CPU" + shown)
        parser.add_argument("--dtype", choices=DTYPES, default=default,
                            help="its precision: auto = bfloat16 on a GPU, float32 on the CPU" + shown)

    def scenario_run(self, group: str, run, folder: str, examples: str) -> argparse.ArgumentParser:
        """`econalign GROUP run CONFIG --out DIR` for the scenario files in scenarios/FOLDER/."""
        command = self.add("run", run, f"run a scenario file (scenarios/{folder}/*.toml)", group=group, out="out",
                           report=True)
        command.add_argument("config", help=f"scenario TOML file, or a bundled scenario name ({examples})")
        command.add_argument("--out", required=True, help="folder for step data, manifest, decision log, plots")
        self.placement(command, None, "the scenario's [llm] device and dtype")
        return command


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="econalign", description="LLM agents with economic preferences in markets.")
    commands = Commands(parser)
    for owner in OWNERS:
        importlib.import_module(owner).add_commands(commands)
    return parser


def exit_code(err: BaseException) -> int | None:
    """The one mapping of errors to exit codes: the user's input (a file, value, model or adapter
    that is wrong: agents.errors.InputError; a path that cannot be read or written: OSError) 2; a
    backend, server or solver that failed (RuntimeError, a refused connection) 1; anything else
    is a bug (None: its traceback is shown)."""
    if isinstance(err, InputError):
        return 2
    if isinstance(err, (RuntimeError, ConnectionError, TimeoutError)):
        return 1
    if isinstance(err, OSError):
        return 2
    return None


def message(err: BaseException) -> str:
    """One line: an OSError as "what: path", anything else as its text."""
    if isinstance(err, OSError) and err.strerror:
        paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
        return f"{err.strerror}: {paths}" if paths else err.strerror
    return " ".join(str(err).split()) or type(err).__name__


def run_command(args) -> int:
    """The command, with its output folder locked, then its report. The lock (agents.records.folder_lock)
    refuses the folder while another process holds it or a folder around or inside it; the shared
    folders a command also writes (adapter registry, adapter, model cache) lock themselves."""
    folder = getattr(args, args.out_argument) if args.out_argument else None
    with folder_lock(folder) if folder else nullcontext():
        code = args.run(args)
        if code == 0 and args.report:
            print(f"report: {write_report(folder)} (open it in a browser)")
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except KeyboardInterrupt:
        print("econalign: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        code = exit_code(err)
        if code is None:
            raise
        print(f"econalign: error: {message(err)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
