"""The visual server's page assets, checked before `econalign viz` starts the server.

Solara's page (solara/server/templates/solara.html.j2) loads requirejs, the Vuetify app bundle
and Font Awesome through Solara's CDN proxy, which serves them from its cache folder
(`<prefix>/share/solara/cdn`) and otherwise fetches them from cdn.jsdelivr.net: on a machine
without internet the page stays blank. The `solara-assets` package of the viz extra puts them in
that folder; `missing_assets()` names every file the page would fail to load.
"""
from __future__ import annotations

import re
from pathlib import Path

_CDN_URL = re.compile(r"\{\{\s*cdn\s*\}\}(/[^\"'\s]+)")


def page_assets(production: bool = True) -> list[str]:
    """The files under the CDN folder that Solara's page loads (Vuetify 2 app, the production or
    development bundle, Font Awesome when enabled), read from the installed Solara's template."""
    import ipywidgets
    import solara.server
    import solara.server.settings as settings

    template = (Path(solara.server.__file__).parent / "templates" / "solara.html.j2").read_text()
    major = ipywidgets.__version__.split(".")[0]
    paths = []
    for path in _CDN_URL.findall(template):
        if "vuetify3-app" in path or "{{assets." in path:
            continue
        path = path.replace("{{ipywidget_major_version}}", major)
        if "{{" in path:
            continue
        if path.endswith(".js") and "solara-vuetify-app" in path and path.endswith(".min.js") != production:
            continue
        paths.append(path.lstrip("/"))
    if settings.assets.fontawesome_enabled:
        paths.append(settings.assets.fontawesome_path.lstrip("/"))
    return sorted(set(paths))


def cache_folder() -> Path:
    import solara.server.settings as settings

    return Path(settings.assets.proxy_cache_dir)


def missing_assets(folder: Path | None = None, production: bool = True) -> list[str]:
    """The page's files absent from Solara's CDN cache folder (empty: the page loads offline)."""
    folder = cache_folder() if folder is None else Path(folder)
    return [p for p in page_assets(production) if not (folder / p).is_file()]
