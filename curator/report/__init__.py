"""`curator report`: a static HTML page of what a run kept, dropped and why (see `curator.report.build`).

Modules: `data` (the DuckDB queries), `thresholds` (the thresholds in force), `plots`
(matplotlib SVG), `thumbs` (safe thumbnails), `payloads` (dropped items' images from the run's
inputs), `training` (training summaries), `page` (Jinja2 with autoescaping), `build` (the page),
`cli` (the subcommand). Entry points: `curator.report.build.write_report` / `build_report`.
Nothing heavy is imported here, so registering the subcommand keeps `curator --help` fast.
"""
