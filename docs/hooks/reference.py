"""MkDocs hook (mkdocs.yml `hooks:`): adds the reference pages generated from the code
(scenarios.docs_keys: the scenario keys from the schemas; scenarios.docs_commands: the commands
from the CLI's parser) to every build, so they are never written by hand nor committed. A file at the same path in docs/
is replaced by the generated page."""
from __future__ import annotations

import logging

from mkdocs.structure.files import File, Files

from scenarios.docs_commands import commands_page
from scenarios.docs_keys import scenario_keys_page

PAGES = {"reference/scenario-keys.md": scenario_keys_page, "reference/commands.md": commands_page}
log = logging.getLogger("mkdocs.hooks.reference")


def on_files(files: Files, config) -> Files:
    for path, make in PAGES.items():
        written = files.get_file_from_path(path)
        if written is not None:
            log.info("%s is generated from the code: docs/%s is not used", path, path)
            files.remove(written)
        files.append(File.generated(config, path, content=make()))
    return files
