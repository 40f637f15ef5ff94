"""Figures, tables and the self-contained HTML report. Kedro-free: a notebook can
call these on the tables the pipelines write."""
