"""`curator report`: a static HTML page of what a run kept, dropped and why (see `curator.report.build`).

Modules: `data` (the DuckDB queries), `thresholds` (the thresholds in force), `plots`
(matplotlib SVG), `thumbs` (safe thumbnails), `training` (training summaries), `page` (Jinja2
with autoescaping), `build` (the page; images a run did not store are read back from its inputs
by `curator.store.payloads`),
`cli` (the subcommand). Entry points: `curator.report.build.write_report` / `build_report`.
Nothing heavy is imported here, so registering the subcommand keeps `curator --help` fast.
"""
