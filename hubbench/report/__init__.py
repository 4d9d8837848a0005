"""Reading results back: plots, compare, gate and the HTML report. Nothing here runs a model.

Modules, in dependency order:
- `load`: find runs through hubbench.store, check the schema, cell identity and labels;
- `stats`, `noise`, `format`: the bootstrap over rounds, the noise sentinel's verdict, one
  spelling per number (the metrics themselves are columns of hubbench.schema);
- `runtable`, `export`: a run's rows as table cells, and as CSV / Markdown / JSON;
- `compare`, `gate`: run B over run A by cell; baseline and in-run ratio thresholds;
- `headline`: where each hub variant wins and loses against its baselines (the report's top);
- `style`, `series`, `fits`, `figure`, `plots`, `heatmap`: the figures (matplotlib, Agg);
- `html`: one self-contained page per run.
pandas and matplotlib are imported inside functions so that `hubbench --help` stays fast.
"""
