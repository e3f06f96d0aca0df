"""`report.html`: one self-contained page per output folder, built with Jinja2 from the files the
run wrote (one source: the figures are its PNG files, the tables its CSV, Parquet and JSON records).

Figures are embedded as PNG data URIs and the style is inline, so the page opens from disk with no
network. The folder's kind comes from its manifest.json "job" (a study: study.json), the sections
of each kind from scenarios.report_sections. A file that a section needs and the folder lacks is
one line naming it (InputError, exit code 2), and no page is written. Sections marked optional
(the LLM runs of the main job, left out without adapters) are shown only when their files are there.

Every value is text, never markup: the template autoescapes all of it (scenario, study, policy and
adapter names, the folder's path, captions, manifest) and pandas escapes the table cells; a
Content-Security-Policy lets the page load nothing but its own data: images and run no script.

    econalign report DIR      # rebuild DIR/report.html
"""
from __future__ import annotations

import base64
import re
import shlex
import time
from pathlib import Path

import pandas as pd

from agents.errors import InputError
from agents.records import write_text
from scenarios.report_sections import KINDS, ReportSection, read_frame, read_record


def run_name(folder: Path, kind: str) -> str:
    """The scenario or study the folder holds (its folder name where the records name none)."""
    for record, key in (("summary.json", "scenario"), ("study.json", "name")):
        if (folder / record).exists():
            return str(read_record(folder / record).get(key, folder.name))
    return folder.resolve().name


def folder_kind(folder: Path) -> str:
    if (folder / "study.json").exists():
        return "study"
    if not (folder / "manifest.json").exists():
        raise InputError(f"report: {folder} holds no manifest.json or study.json (not an econalign output folder)")
    job = read_record(folder / "manifest.json").get("job")
    if job not in KINDS:
        raise InputError(f"report: {folder}/manifest.json names job {job!r}, which has no report")
    return job


# ------------------------------------------------------------------ the page
def table_html(frame: pd.DataFrame) -> str:
    """The frame as an HTML table whose cells and headers are escaped text (safe to insert)."""
    from markupsafe import Markup

    return Markup(frame.to_html(index=False, border=0, na_rep="", escape=True,
                                float_format=lambda v: f"{v:.4g}"))


def anchor(title: str) -> str:
    """A section's id and link target: lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def render(folder: Path, kind: str, title: str, lead: str, sections: list[ReportSection]) -> str:
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("scenarios", "templates"), autoescape=True)
    shown = []
    for section in sections:
        if section.optional and not all((folder / f).exists() for f in section.files()):
            continue
        figures = [{"file": f.file, "caption": f.caption, "src": "data:image/png;base64," +
                    base64.b64encode((folder / f.file).read_bytes()).decode()} for f in section.figures]
        tables = []
        for t in section.tables:
            frame = (t.read or read_frame)(folder / t.file)
            if t.columns:
                frame = frame[[c for c in t.columns if c in frame.columns]]
            tables.append({"file": t.file, "caption": t.caption, "html": table_html(frame)})
        shown.append({"title": section.title, "anchor": anchor(section.title),
                      "text": section.text, "figures": figures, "tables": tables,
                      "details": section.details, "details_title": "manifest"})
    return env.get_template("report.html.j2").render(
        title=title, lead=lead, kind=kind, folder=str(folder),
        rebuild=shlex.join(["econalign", "report", str(folder)]),      # safe to paste into a shell
        built=time.strftime("%Y-%m-%d %H:%M"), sections=shown)


def write_report(folder: str | Path) -> Path:
    """folder/report.html from the folder's files; InputError naming the first missing file."""
    folder = Path(folder)
    kind = folder_kind(folder)
    title, lead, build = KINDS[kind]
    sections = build(folder)
    if kind != "demo":
        title = f"{title}: {run_name(folder, kind)}"
    for section in sections:
        missing = [f for f in section.files() if not (folder / f).exists()]
        if missing and not section.optional:
            raise InputError(f"report: {folder / missing[0]} is missing (section {section.title!r}); "
                             "rerun the job that writes it")
    return write_text(folder / "report.html", render(folder, kind, title, lead, sections))


def run_report(args) -> int:
    """`econalign report DIR`: rebuild DIR/report.html."""
    print(f"report: {write_report(args.folder)}")
    return 0


def add_commands(commands) -> None:
    report = commands.add("report", run_report, "rebuild the HTML report of an output folder")
    report.add_argument("folder", help="a folder written by demo, market run, av run, study run, games eval "
                                       "or finetune evaluate")
