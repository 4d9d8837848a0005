"""Reading results back: tables, compare, gate, figures and the HTML report. Nothing here runs a
model, and nothing here imports hubbench.run or hubbench.measure.

Modules, in dependency order:
- `load`, `format`: find runs through hubbench.store, check the schema, cell identity and labels;
  one spelling per number (the metrics themselves are columns of hubbench.schema);
- `peaks`, `ratios`, `noise`, `fits`, `seeds`: fractions over a peak; the ratio of two rows'
  metrics with its bootstrap interval (the statistics are hubbench.stats); the noise sentinel's
  verdict; scaling exponents and crossovers; quality rows pooled over seeds;
- `runtable`, `export`: a run's rows as table cells, and as CSV / Markdown / JSON;
- `compare`, `gate`: run B over run A by cell; baseline and in-run ratio thresholds;
- `series`, `headline`: rows as facets and styled series; where each hub variant wins and loses
  against its baselines (the report's top);
- `style`, `plots/`: colours and formatters; the figures, one module per kind, registered in
  plots/registry.py;
- `html`: one self-contained page per run.
pandas and matplotlib are imported inside functions so that `hubbench --help` stays fast.
"""
