"""Stage 8, tables: what people read — leaderboards (Markdown, CSV, sortable HTML), reports with
plots, and the rich console rendering the CLI prints."""
