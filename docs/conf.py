"""Sphinx configuration for shardloop's documentation (make docs)."""

import shardloop

project = "shardloop"
author = "the shardloop authors"
# The version comes from the installed package, which reads it from the
# engine's version header (make docs runs after make install).
release = version = shardloop.__version__

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"

html_theme = "furo"
html_title = f"shardloop {release}"
